"""The stages' consumer: aiokafka's, with its Fetch requests encoded and their responses decoded by hand.

Why: aiokafka encodes and decodes every request through its generic protocol schema, a Python generator per
field. A FetchRequest names every assigned partition and its response answers for each of them: over the
validate stage's 36 raw partitions, mostly idle, one round cost ~0.4 ms of codec alone, at every batch of
both stages (bench/README.md, session 23). Fetch v11 (the newest aiokafka 0.14 speaks, and what a Kafka 2.3+
broker answers) is encoded here with one struct call per partition and decoded with `unpack_from` over the
frame, without copying it; the bytes sent and the response built are the ones aiokafka's own codec gives
(tests/unit/streams/stages/test_fetch.py checks both against it). Every other version, and every other
request, goes through aiokafka unchanged; so does everything the fetcher does with the response.
"""

from __future__ import annotations

import struct
from io import BytesIO
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.consumer.fetcher import Fetcher
from aiokafka.protocol.fetch import FetchRequest, FetchRequest_v11, FetchResponse_v11

_HEAD = struct.Struct(">iiiibii")  # replica, max wait, min bytes, max bytes, isolation, session id, epoch
_PARTITION = struct.Struct(">iiqqi")  # partition, leader epoch, fetch offset, log start offset, max bytes
_I16, _I32 = struct.Struct(">h"), struct.Struct(">i")
_RESPONSE_HEAD = struct.Struct(">ihii")  # throttle ms, error code, session id, topic count
_PARTITION_HEAD = struct.Struct(">ihqqqi")  # partition, error, highwater, last stable, log start, aborted count
_ABORTED = struct.Struct(">qq")  # producer id, first offset
_PARTITION_TAIL = struct.Struct(">ii")  # preferred read replica, message set size


def _string(value: str | None) -> bytes:
    if value is None:
        return _I16.pack(-1)
    data = value.encode("utf-8")
    return _I16.pack(len(data)) + data


def _array_count(items: list[Any] | None) -> bytes:
    return _I32.pack(-1 if items is None else len(items))


class FetchResponseV11(FetchResponse_v11):
    """FetchResponse v11, decoded in one pass over the frame."""

    @classmethod
    def decode(cls, data: BytesIO | bytes) -> FetchResponse_v11:  # type: ignore[override]
        if isinstance(data, bytes):
            data = BytesIO(data)
        buf = data.getbuffer()
        try:
            pos = data.tell()
            throttle, error, session, topic_count = _RESPONSE_HEAD.unpack_from(buf, pos)
            pos += _RESPONSE_HEAD.size
            topics: list[tuple[str | None, list[tuple[Any, ...]]] | None] | None = None
            if topic_count >= 0:
                topics = []
                for _ in range(topic_count):
                    (size,) = _I16.unpack_from(buf, pos)
                    pos += 2
                    topic = None
                    if size >= 0:
                        topic = str(buf[pos:pos + size], "utf-8")
                        pos += size
                    (count,) = _I32.unpack_from(buf, pos)
                    pos += 4
                    partitions: list[tuple[Any, ...]] | None = None
                    if count >= 0:
                        partitions = []
                        for _ in range(count):
                            partition, perror, high, stable, start, aborted_count = _PARTITION_HEAD.unpack_from(
                                buf, pos)
                            pos += _PARTITION_HEAD.size
                            aborted: list[tuple[int, int]] | None = None
                            if aborted_count >= 0:
                                aborted = []
                                for _ in range(aborted_count):
                                    aborted.append(_ABORTED.unpack_from(buf, pos))
                                    pos += 16
                            replica, size = _PARTITION_TAIL.unpack_from(buf, pos)
                            pos += 8
                            records = None
                            if size >= 0:
                                records = bytes(buf[pos:pos + size])
                                pos += size
                            partitions.append((partition, perror, high, stable, start, aborted, replica, records))
                    topics.append((topic, partitions))
            data.seek(pos)
        finally:
            buf.release()
        return FetchResponse_v11(throttle, error, session, topics)


class FetchRequestV11(FetchRequest_v11):
    """FetchRequest v11, encoded in one pass."""

    RESPONSE_TYPE = FetchResponseV11

    def encode(self) -> bytes:
        d = self.__dict__
        parts = [_HEAD.pack(d["replica_id"], d["max_wait_time"], d["min_bytes"], d["max_bytes"],
                            d["isolation_level"], d["session_id"], d["session_epoch"])]
        topics = d["topics"]
        parts.append(_array_count(topics))
        for topic, partitions in topics or ():
            parts.append(_string(topic))
            parts.append(_array_count(partitions))
            pack = _PARTITION.pack
            parts.extend(pack(*p) for p in partitions or ())
        forgotten = d["forgotten_topics_data"]
        parts.append(_array_count(forgotten))
        for topic, partitions in forgotten or ():
            parts.append(_string(topic))
            parts.append(_array_count(partitions))
            parts.extend(_I32.pack(p) for p in partitions or ())
        parts.append(_string(d["rack_id"]))
        return b"".join(parts)


class FastFetchRequest(FetchRequest):
    """aiokafka's FetchRequest, built as `FetchRequestV11` when the broker speaks v11."""

    def build(self, request_struct_class: Any) -> Any:
        if request_struct_class is FetchRequest_v11:
            request_struct_class = FetchRequestV11
        return super().build(request_struct_class)


class FastFetcher(Fetcher):
    """aiokafka's Fetcher, its fetch requests made `FastFetchRequest`s."""

    def _get_actions_per_node(self, assignment: Any) -> Any:
        actions = super()._get_actions_per_node(assignment)
        for _, request in actions[0]:
            if type(request) is FetchRequest:
                request.__class__ = FastFetchRequest
        return actions


class StageConsumer(AIOKafkaConsumer):
    """An AIOKafkaConsumer that fetches through `FastFetcher`."""

    async def start(self) -> None:
        await super().start()
        # aiokafka builds its Fetcher inside start(); the records the first one may have fetched meanwhile were
        # not handed out (positions move only as getmany returns records), so the new one fetches them again.
        first = self._fetcher
        self._fetcher = FastFetcher(
            self._client, self._subscription, key_deserializer=self._key_deserializer,
            value_deserializer=self._value_deserializer, fetch_min_bytes=self._fetch_min_bytes,
            fetch_max_bytes=self._fetch_max_bytes, fetch_max_wait_ms=self._fetch_max_wait_ms,
            max_partition_fetch_bytes=self._max_partition_fetch_bytes, check_crcs=self._check_crcs,
            fetcher_timeout=self._consumer_timeout, retry_backoff_ms=self._retry_backoff_ms,
            auto_offset_reset=self._auto_offset_reset, isolation_level=self._isolation_level,
            client_rack=self._client_rack)
        await first.close()
