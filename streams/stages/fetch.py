"""The stages' consumer: aiokafka's, with its fetch rounds done in fewer Python steps.

Why: a fetch round of aiokafka 0.14 walks every assigned partition four times in Python: twice to decide what to
fetch, once through its generic protocol schema each way (a generator per field), and once over the response.
Over the validate stage's 36 raw partitions, mostly idle, a round cost ~1.1 ms of CPU whatever it brought, at
every batch of both stages (bench/README.md, session 23). Here

- Fetch v11 (the newest aiokafka 0.14 speaks; a Kafka 2.3+ broker answers it) is encoded with one struct call
  per partition and decoded with `unpack_from` over the frame; the bytes and the response are the ones
  aiokafka's own codec gives (tests/unit/streams/stages/test_fetch.py checks both against it);
- `FastFetcher` decides and handles as aiokafka does, partition by partition in its order, from a table
  built once per assignment; a partition that brought nothing costs a few attribute writes. One decision
  differs: while a partition of a broker has records buffered, a fetch from that broker waits at most
  BUSY_FETCH_MAX_WAIT_MS for new records (session 29: +11.6% rows/s in drains);
- the records are handed out by `LeanPartitionRecords`: each ConsumerRecord built in the loop that reads its
  batch, and iterated without a Python `__next__` per record (paid twice per row, once per stage); each batch's
  CRC-32C is checked with the processor's CRC instruction (google-crc32c), ~15x faster than aiokafka's
  table-driven one.

The records, positions, resets, errors and offsets stay aiokafka's own objects; every other request and version
goes through aiokafka unchanged.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import struct
import time
from collections.abc import Iterator
from io import BytesIO
from typing import Any

import aiokafka.errors as Errors
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.consumer.fetcher import READ_COMMITTED, Fetcher, FetchResult, OffsetResetStrategy, PartitionRecords
from aiokafka.protocol.fetch import FetchRequest, FetchRequest_v11, FetchResponse_v11
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import ConsumerRecord

try:
    import google_crc32c

    _crc32c = google_crc32c.value if google_crc32c.implementation == "c" else None
except ImportError:  # pragma: no cover - a dependency; without it aiokafka's own check runs
    _crc32c = None

logger = logging.getLogger(__name__)

_HEAD = struct.Struct(">iiiibii")  # replica, max wait, min bytes, max bytes, isolation, session id, epoch
_PARTITION = struct.Struct(">iiqqi")  # partition, leader epoch, fetch offset, log start offset, max bytes
_I16, _I32 = struct.Struct(">h"), struct.Struct(">i")
_RESPONSE_HEAD = struct.Struct(">ihii")  # throttle ms, error code, session id, topic count
_PARTITION_HEAD = struct.Struct(">ihqqqi")  # partition, error, highwater, last stable, log start, aborted count
_ABORTED = struct.Struct(">qq")  # producer id, first offset
_PARTITION_TAIL = struct.Struct(">ii")  # preferred read replica, message set size
_U32 = struct.Struct(">I")
# The longest a fetch may wait at the broker for new records while a partition of its node still has records
# buffered here (bench/README.md, session 29). A fetch in flight holds its node: aiokafka sends the next one
# only after it returns, and a partition with records buffered is left out of it. So once that partition's
# records were handed out, its next fetch waited for the one in flight, on partitions with nothing new, to end:
# up to the consumer's fetch_max_wait_ms (the stages' 100 ms), every few batches of a backlog.
BUSY_FETCH_MAX_WAIT_MS = 5
# A record batch (magic 2): base offset (8), length (4), leader epoch (4), magic (1), CRC (4), then the bytes
# the CRC covers, from the attributes to the batch's end.
_BATCH_LENGTH_AT, _MAGIC_AT, _CRC_AT, _CRC_FROM = 8, 16, 17, 21


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


class LeanPartitionRecords(PartitionRecords):
    """aiokafka 0.14's PartitionRecords, each ConsumerRecord built in the loop that reads its batch (aiokafka calls
    a method per record for it). What is skipped, and where `next_fetch_offset` stands after each record handed
    out, are aiokafka's (tests/unit/streams/stages/test_fetch.py runs both over the same batches)."""

    def __iter__(self) -> Iterator[ConsumerRecord]:  # type: ignore[override]
        # FetchResult.getall's `for` then resumes the generator itself: no Python __next__ frame per record. It
        # stops at max_records and comes back later for the rest (the same generator); getone still uses
        # __next__, and a FetchResult drops its records once they are exhausted either way.
        records = self._records_iterator
        return records if records is not None else iter(())

    def __init__(self, *args: Any, message_set: bytes | None = None) -> None:
        super().__init__(*args)
        self._message_set = message_set  # the records' bytes (MemoryRecords keeps them out of reach)

    def _crc_ok(self, batch: Any, pos: int, end: int) -> bool:
        """The batch at message_set[pos:end] (the one MemoryRecords handed out) against its CRC."""
        data = self._message_set
        if _crc32c is None or data is None or data[pos + _MAGIC_AT] != 2:
            return bool(batch.validate_crc())
        return _crc32c(data[pos + _CRC_FROM:end]) == _U32.unpack_from(data, pos + _CRC_AT)[0]

    def _unpack_records(self) -> Iterator[ConsumerRecord]:  # type: ignore[override]
        if self._key_deserializer is not None or self._value_deserializer is not None:
            yield from super()._unpack_records()
            return
        tp = self._tp
        topic, partition = tp.topic, tp.partition
        records = self._records
        read_committed = self._isolation_level == READ_COMMITTED
        record_of = ConsumerRecord
        data, check_crcs = self._message_set, self._check_crcs
        pos = 0  # where MemoryRecords' next batch starts: its batches lie end to end from the first byte
        while records.has_next():
            batch = records.next_batch()
            end = pos + 12 + _I32.unpack_from(data, pos + _BATCH_LENGTH_AT)[0] if data is not None else 0
            if check_crcs and not self._crc_ok(batch, pos, end):
                raise Errors.CorruptRecordException(f"Invalid CRC - {tp}")
            pos = end
            if read_committed and batch.producer_id is not None:
                self._consume_aborted_up_to(batch.base_offset)
                if batch.is_control_batch and self._contains_abort_marker(batch):
                    self._aborted_producers.discard(batch.producer_id)
                if batch.is_transactional and batch.producer_id in self._aborted_producers:
                    self.next_fetch_offset = batch.next_offset
                    continue
            if batch.is_control_batch:
                self.next_fetch_offset = batch.next_offset
                continue
            low = self.next_fetch_offset  # only this generator moves it
            for record in batch:
                offset = record.offset
                if offset < low:  # a compressed batch fetched from before the position: already handed out
                    continue
                key, value = record.key, record.value
                out = record_of(topic, partition, offset, record.timestamp, record.timestamp_type, key, value,
                                record.checksum, -1 if key is None else len(key),
                                -1 if value is None else len(value), tuple(record.headers))
                self.next_fetch_offset = low = offset + 1
                yield out
            self.next_fetch_offset = batch.next_offset


class FastFetcher(Fetcher):
    """aiokafka 0.14's Fetcher with its two per-partition walks of every fetch round done in fewer steps: which
    partitions to fetch (`_get_actions_per_node`, twice a round) and the response's partitions
    (`_proc_fetch_request`). Partitions are looked up by topic and number in a table built once per assignment
    instead of a TopicPartition built and hashed for each; a partition that brought neither records nor an error
    (most of the validate stage's, most of the time) costs a few attribute writes. The decisions are aiokafka's,
    in its order: what it fetches, skips, resets or reports is unchanged (tests/integration/test_stage_fetch.py),
    and its requests are `FastFetchRequest`s."""

    _table_of: Any = None
    _table: dict[str, dict[int, tuple[TopicPartition, Any]]]

    def _states(self, assignment: Any) -> dict[str, dict[int, tuple[TopicPartition, Any]]]:
        """topic -> partition -> (TopicPartition, its state), for this assignment (a new one on a rebalance)."""
        if self._table_of is not assignment:
            table: dict[str, dict[int, tuple[TopicPartition, Any]]] = {}
            for tp in assignment.tps:
                table.setdefault(tp.topic, {})[tp.partition] = (tp, assignment.state_value(tp))
            self._table, self._table_of = table, assignment
        return self._table

    def _get_actions_per_node(self, assignment: Any) -> Any:
        fetchable: dict[Any, list[tuple[TopicPartition, int]]] = collections.defaultdict(list)
        awaiting_reset: dict[Any, list[TopicPartition]] = collections.defaultdict(list)
        backoff_by_nodes: dict[Any, list[float]] = collections.defaultdict(list)
        resume_futures = []
        invalid_metadata = False
        buffered_nodes: set[Any] = set()
        records, in_flight = self._records, self._in_flight
        partitions_of = self._client.cluster._partitions
        preferred = self._preferred_read_replica
        for topic, by_number in self._states(assignment).items():
            leaders = partitions_of.get(topic)
            for number, (tp, tp_state) in by_number.items():
                if preferred:  # KIP-392 (a client rack): aiokafka's own choice of replica
                    node_id = self._select_read_replica(tp)
                else:
                    meta = leaders.get(number) if leaders is not None else None
                    node_id = meta.leader if meta is not None else None
                if tp in records:
                    buffered_nodes.add(node_id)
                    backoff = records[tp].calculate_backoff()
                    if backoff:
                        backoff_by_nodes[node_id].append(backoff)
                elif node_id in in_flight:
                    continue
                elif node_id is None or node_id == -1:
                    invalid_metadata = True
                elif not tp_state.has_valid_position:
                    leader_id = self._client.cluster.leader_for_partition(tp)
                    if leader_id is None or leader_id == -1:
                        invalid_metadata = True
                    else:
                        awaiting_reset[leader_id].append(tp)
                elif tp_state.paused:
                    resume_futures.append(tp_state.resume_fut)
                else:
                    fetchable[node_id].append((tp, tp_state.position))
        fetch_requests = []
        for node_id, partition_data in fetchable.items():
            if node_id in backoff_by_nodes or node_id in awaiting_reset:
                continue
            random.shuffle(partition_data)  # as aiokafka: no partition is always first in a response
            by_topics: dict[str, list[tuple[int, int, int]]] = collections.defaultdict(list)
            for tp, position in partition_data:
                by_topics[tp.topic].append((tp.partition, position, self._max_partition_fetch_bytes))
            max_wait = self._fetch_max_wait_ms
            if node_id in buffered_nodes:
                max_wait = min(max_wait, BUSY_FETCH_MAX_WAIT_MS)
            fetch_requests.append((node_id, FastFetchRequest(
                max_wait, self._fetch_min_bytes, self._fetch_max_bytes, self._isolation_level,
                list(by_topics.items()), rack_id=self._client_rack or "")))
        backoff = min(map(max, backoff_by_nodes.values())) if backoff_by_nodes else self._fetcher_timeout
        return fetch_requests, awaiting_reset, backoff, invalid_metadata, resume_futures

    async def _proc_fetch_request(self, assignment: Any, node_id: int, request: Any) -> bool:
        try:
            response = await self._client.send(node_id, request)
        except Errors.KafkaError as err:
            logger.error("Failed fetch messages from %s: %s", node_id, err)
            self._invalidate_preferred_read_replica_for_node(node_id, request)
            await asyncio.sleep(self._retry_backoff)
            return False
        except asyncio.CancelledError:  # close() or the partitions were unassigned: no longer of interest
            return False
        if not assignment.active:
            return False
        version = response.API_VERSION
        # A partition's fields after its high watermark: v4 [lso, aborted, records]; v5-v10 [lso, log start,
        # aborted, records]; v11 [lso, log start, aborted, preferred replica, records].
        aborted_at = 2 if version >= 5 else 1
        table = self._states(assignment)
        fetched = {topic: {p: offset for p, offset, _ in partitions} for topic, partitions in request.topics}
        now_ms = int(1000 * time.time())
        rack_aware = bool(self._client_rack) and version >= 11
        needs_wakeup = False
        for topic, partitions in response.topics:
            states, offsets = table.get(topic, {}), fetched.get(topic, {})
            for partition, error_code, highwater, *part in partitions:
                entry = states.get(partition)
                fetch_offset = offsets.get(partition)
                if entry is None or fetch_offset is None:
                    continue  # not asked for in this assignment (aiokafka would fail on it; the broker never sends it)
                tp, tp_state = entry
                if not tp_state.has_valid_position or tp_state.position != fetch_offset:
                    continue  # the position moved (a seek) while the fetch was out: its answer is stale
                message_set = part[-1]
                if error_code == 0:
                    tp_state.highwater = highwater
                    tp_state.lso = part[0] if version >= 4 else None
                    tp_state.timestamp = now_ms
                    if rack_aware:
                        self._update_preferred_read_replica(tp, part[3])
                    if not message_set:  # nothing new: the common case, done
                        continue
                aborted = part[aborted_at] if version >= 4 else None
                if self._partition_answer(assignment, tp, tp_state, fetch_offset, error_code, aborted, message_set):
                    needs_wakeup = True
        return needs_wakeup

    def _partition_answer(self, assignment: Any, tp: TopicPartition, tp_state: Any, fetch_offset: int,
                          error_code: int, aborted_transactions: Any, message_set: bytes | None) -> bool:
        """A partition's records, or its error, as aiokafka 0.14 handles them; True when the consumer has
        something new to hand out (records, or an error to raise)."""
        error_type = Errors.for_code(error_code)
        if error_type is Errors.NoError:
            records = MemoryRecords(message_set)
            if records.has_next():
                self._records[tp] = FetchResult(
                    tp, assignment=assignment, backoff=self._prefetch_backoff,
                    partition_records=LeanPartitionRecords(
                        tp, records, aborted_transactions, fetch_offset, self._key_deserializer,
                        self._value_deserializer, self._check_crcs, self._isolation_level,
                        message_set=message_set))
                return True
            if records.size_in_bytes() > 0:  # one record larger than the fetch size: it can never be returned
                self._set_error(tp, Errors.RecordTooLargeError(
                    "There are some messages at [Partition=Offset]: %s=%s whose size is larger than the fetch "
                    "size %s and hence cannot be ever returned. Increase the fetch size, or decrease the maximum "
                    "message size the broker will allow.", tp, fetch_offset, self._max_partition_fetch_bytes))
                tp_state.consumed_to(tp_state.position + 1)
                return True
            return False
        self._preferred_read_replica.pop(tp, None)
        if error_type in (Errors.NotLeaderForPartitionError, Errors.UnknownTopicOrPartitionError):
            self._client.force_metadata_update()
        elif error_type is Errors.OffsetOutOfRangeError:
            logger.info("Fetch offset %s is out of range for partition %s, resetting offset", fetch_offset, tp)
            if self._default_reset_strategy != OffsetResetStrategy.NONE:
                tp_state.await_reset(self._default_reset_strategy)
            else:
                self._set_error(tp, Errors.OffsetOutOfRangeError({tp: fetch_offset}))
                return True
        elif error_type is Errors.TopicAuthorizationFailedError:
            logger.warning("Not authorized to read from topic %s.", tp.topic)
            self._set_error(tp, Errors.TopicAuthorizationFailedError(tp.topic))
            return True
        else:
            logger.warning("Unexpected error while fetching data: %s", error_type.__name__)
        return False


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
