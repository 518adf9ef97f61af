"""Incremental fetch sessions (KIP-227) for the stages' aiokafka consumers.

Why: aiokafka 0.14 speaks FetchRequest v7-v11 but always sends a sessionless full fetch, so every request
names every assigned partition and every response answers for each of them, encoded and decoded in Python.
The validate stage has 36 raw partitions, most of them idle; a fetch round over them cost ~0.5 ms of the
worker's one thread, at each batch (bench/README.md, session 22). With a session the broker remembers the
partitions and their fetch offsets: a request names only the partitions whose offset changed since the last
one (and the ones to forget), and a response carries only the partitions with something new.

The client half, as the Java consumer's FetchSessionHandler keeps it, one session per broker:

- the first request of a session is a full one (session id 0, epoch 0); the broker answers with the session's
  id, or 0 when it keeps no session for us (its cache full): then every request stays a full one;
- each later request (the session's id, the next epoch) names the partitions whose fetch offset or size
  changed, or that are new, and forgets those no longer fetched (paused, or waiting to be consumed);
- a session error, a failed or cancelled round trip, or a new assignment starts a new session with a full
  request. The broker ends a session it no longer hears from by itself.

`SessionConsumer` is an AIOKafkaConsumer whose fetcher does this; nothing else of aiokafka changes: positions,
the records, read_committed and the offsets are its own.
"""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.consumer.fetcher import Fetcher
from aiokafka.protocol.fetch import FetchRequest

FIRST_VERSION = 7  # the FetchRequest version that has sessions
_MAX_EPOCH = 2**31 - 1

Partitions = dict[TopicPartition, tuple[int, int]]  # partition -> (fetch offset, max bytes)


class FetchSession:
    """What one broker's session holds for us, and the next request's part of it."""

    def __init__(self) -> None:
        self.id = 0
        self.epoch = 0
        self.partitions: Partitions = {}
        self.assignment: Any = None
        self.full_requests = 0
        self.incremental_requests = 0

    def reset(self) -> None:
        self.id, self.epoch, self.partitions = 0, 0, {}

    def plan(self, assignment: Any, wanted: Partitions) -> tuple[int, int, Partitions, list[TopicPartition]]:
        """(session id, epoch, partitions to send, partitions to forget) of a request that fetches `wanted`."""
        if assignment is not self.assignment:  # partitions moved: what the old session holds means nothing
            self.reset()
            self.assignment = assignment
        if self.id == 0:
            return 0, 0, dict(wanted), []
        send = {tp: v for tp, v in wanted.items() if self.partitions.get(tp) != v}
        return self.id, self.epoch, send, [tp for tp in self.partitions if tp not in wanted]

    def answered(self, request: SessionFetchRequest, response: Any) -> None:
        """A response came: the broker's session is now what the request asked for, or it is gone."""
        if request.version < FIRST_VERSION or response.error_code != 0:
            self.reset()
        elif request.session_id == 0:
            self.full_requests += 1
            if response.session_id:
                self.id, self.epoch, self.partitions = response.session_id, 1, dict(request.wanted)
            else:  # no session kept for us (the broker's cache is full): the next request is a full one again
                self.reset()
        elif response.session_id == request.session_id:
            self.epoch = request.epoch % _MAX_EPOCH + 1
            self.partitions = dict(request.wanted)
            self.incremental_requests += 1
        else:
            self.reset()


class SessionFetchRequest(FetchRequest):
    """A FetchRequest of a session: `topics` (what aiokafka reads the answers' offsets from) names every
    partition fetched, the request sent names only `send` and `forget`."""

    def __init__(self, base: FetchRequest, session: FetchSession, assignment: Any) -> None:
        super().__init__(base._max_wait_ms, base._min_bytes, base._max_bytes, base._isolation_level, base.topics,
                         rack_id=base._rack_id)
        self.session = session
        self.wanted: Partitions = {TopicPartition(topic, p): (offset, max_bytes)
                                   for topic, parts in base.topics for p, offset, max_bytes in parts}
        self.session_id, self.epoch, self.send, self.forget = session.plan(assignment, self.wanted)
        self.version = -1

    def build(self, request_struct_class: Any) -> Any:
        self.version = request_struct_class.API_VERSION
        if self.version < FIRST_VERSION:  # a broker without sessions: the full request, as aiokafka sends it
            return super().build(request_struct_class)
        by_topic: dict[str, list[tuple[int, int, int]]] = {}
        for tp, (offset, max_bytes) in self.send.items():
            by_topic.setdefault(tp.topic, []).append((tp.partition, offset, max_bytes))
        every = self._topics
        self._topics = list(by_topic.items())
        try:
            struct = super().build(request_struct_class)
        finally:
            self._topics = every
        forgotten: dict[str, list[int]] = {}
        for tp in self.forget:
            forgotten.setdefault(tp.topic, []).append(tp.partition)
        struct.__dict__.update(session_id=self.session_id, session_epoch=self.epoch,
                               forgotten_topics_data=list(forgotten.items()))
        return struct


class _SessionClient:
    """The consumer's client, with each session fetch's round trip reported to its session."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def send(self, node_id: int, request: Any, **kwargs: Any) -> Any:
        if not isinstance(request, SessionFetchRequest):
            return await self._client.send(node_id, request, **kwargs)
        try:
            response = await self._client.send(node_id, request, **kwargs)
        except BaseException:  # failed or cancelled: whether the broker moved the session on is unknown
            request.session.reset()
            raise
        request.session.answered(request, response)
        return response


class SessionFetcher(Fetcher):
    """aiokafka's Fetcher, its requests made session requests (one session per broker)."""

    def __init__(self, client: Any, subscriptions: Any, **kwargs: Any) -> None:
        super().__init__(client, subscriptions, **kwargs)
        self._client = _SessionClient(client)  # before the fetch routine, started above, first runs
        self.sessions: dict[int, FetchSession] = {}

    def _get_actions_per_node(self, assignment: Any) -> Any:
        requests, *rest = super()._get_actions_per_node(assignment)
        requests = [(node_id, SessionFetchRequest(req, self.sessions.setdefault(node_id, FetchSession()),
                                                  assignment))
                    for node_id, req in requests]
        return (requests, *rest)


class SessionConsumer(AIOKafkaConsumer):
    """An AIOKafkaConsumer that fetches through sessions (`SessionFetcher`)."""

    async def start(self) -> None:
        await super().start()
        # aiokafka builds its Fetcher inside start(); the records the first one may have fetched meanwhile were
        # not handed out (positions move only as getmany returns records), so the new one fetches them again.
        first = self._fetcher
        self._fetcher = SessionFetcher(
            self._client, self._subscription, key_deserializer=self._key_deserializer,
            value_deserializer=self._value_deserializer, fetch_min_bytes=self._fetch_min_bytes,
            fetch_max_bytes=self._fetch_max_bytes, fetch_max_wait_ms=self._fetch_max_wait_ms,
            max_partition_fetch_bytes=self._max_partition_fetch_bytes, check_crcs=self._check_crcs,
            fetcher_timeout=self._consumer_timeout, retry_backoff_ms=self._retry_backoff_ms,
            auto_offset_reset=self._auto_offset_reset, isolation_level=self._isolation_level,
            client_rack=self._client_rack)
        await first.close()

    def fetch_sessions(self) -> dict[int, FetchSession]:
        fetcher = self._fetcher
        return fetcher.sessions if isinstance(fetcher, SessionFetcher) else {}
