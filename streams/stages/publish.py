"""Sending from the stages: every message is awaited until the broker acknowledges it, and a failed send
is retried with capped backoff, so a stage never commits a source offset whose output is not durably in
Kafka. Also builds the dead-letter record (Kafka Connect's DLQ
headers are the model): original key, value and timestamp plus `tickflow.*` headers.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import InvalidProducerEpoch, MessageSizeTooLargeError, ProducerFenced
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    retry_if_exception_type,
    stop_never,
    wait_exponential,
    wait_fixed,
)

from streams import contract
from streams.app import app
from streams.errors import first_then_retrying
from streams.settings import KafkaSettings

logger = logging.getLogger(__name__)

HEADER_PREFIX = "tickflow."
# On a record `tickflow replay-dlq` sent back: "<partition>:<offset>" of the dead letter it came from.
REPLAYED_FROM = HEADER_PREFIX + "replayed_from"
MAX_ERROR_CHARS = 1000
TRUNCATE_TO = 64 * 1024
# Sends still not acknowledged after this long are logged, and again each time as long again: the producer retries
# them by itself for up to its request timeout (Faust's is 20 minutes) while the stage waits, which must not be
# silent.
ACK_WARN_SECONDS = 30.0


@dataclass(slots=True)
class Outgoing:
    topic: str
    key: bytes | None
    value: bytes | None
    timestamp: float | None = None  # seconds since the epoch; None lets the producer stamp it
    headers: list[tuple[str, bytes]] | None = None
    partition: int | None = None


# What the stages are given to send with (send_all in the worker, a list's append in a test).
Send = Callable[[Sequence[Outgoing]], Awaitable[None]]


@dataclass(slots=True)
class Rejection:
    """Why a record was refused, and where it came from."""

    stage: str
    rule: str
    error: str
    exception: str
    topic: str
    partition: int
    offset: int
    original_headers: list[tuple[str, bytes]] = field(default_factory=list)

    def headers(self) -> list[tuple[str, bytes]]:
        own = [
            ("source.topic", self.topic),
            ("source.partition", str(self.partition)),
            ("source.offset", str(self.offset)),
            ("stage", self.stage),
            ("rule", self.rule),
            ("error", self.error[:MAX_ERROR_CHARS]),
            ("exception.class", self.exception),
            ("time", f"{time.time():.6f}"),
            ("schema", _DEAD_LETTER_SCHEMA),
        ]
        # tickflow.replayed_from (set by `tickflow replay-dlq`) stays: the dead letter a refused replay came from,
        # so the next replay sends that one again, not both
        kept = [(k, v) for k, v in self.original_headers if not k.startswith(HEADER_PREFIX) or k == REPLAYED_FROM]
        return kept + [(HEADER_PREFIX + k, v.encode()) for k, v in own]


_DEAD_LETTER_SCHEMA = contract.schema_id(contract.REJECTED)  # tickflow.schema: ticks.rejected/v1 (its headers)


def _shrink(m: Outgoing) -> Outgoing:
    """A record larger than the broker takes can only go on truncated; the headers say so and how big it was."""
    size = len(m.value or b"")
    logger.error("%s: a %d-byte record exceeds the broker's limit; sending its first %d bytes", m.topic, size,
                 TRUNCATE_TO)
    headers = [*(m.headers or []), (HEADER_PREFIX + "value.truncated_from", str(size).encode())]
    return Outgoing(m.topic, m.key, (m.value or b"")[:TRUNCATE_TO], m.timestamp, headers, m.partition)


def _kafka_producer() -> AIOKafkaProducer | None:
    """The aiokafka producer inside Faust's (idempotent, acks=all: streams/app.py), once it has started."""
    return getattr(app.producer, "_producer", None)


class _PartitionOf:
    """Key -> partition with the producer's own partitioner (murmur2, as the Java client), remembered per
    topic and key: the keys are symbols, a small set, and hashing each record in Python was per-record work."""

    def __init__(self) -> None:
        self.cache: dict[tuple[str, bytes | None], int] = {}

    def __call__(self, producer: AIOKafkaProducer, m: Outgoing) -> int:
        if m.partition is not None:
            return m.partition
        hit = self.cache.get((m.topic, m.key))
        if hit is None:
            hit = producer._partition(m.topic, None, m.key, m.value, m.key, m.value)
            if m.key is not None:  # keyless records are spread, not pinned
                if len(self.cache) > 100_000:
                    self.cache.clear()
                self.cache[(m.topic, m.key)] = hit
        return hit


_partition_of = _PartitionOf()


async def _send_batched(producer: AIOKafkaProducer, messages: Sequence[Outgoing]) -> list[BaseException | None]:
    """One producer batch per topic-partition instead of one send (and one future) per record: the same
    records, order and idempotence, at a fraction of aiokafka's per-message cost. Records too big for a batch
    go the per-message way (where an oversize one is reported and shrunk)."""
    limit = producer._message_accumulator._batch_size
    for topic in {m.topic for m in messages}:
        await producer.client._wait_on_metadata(topic)  # returns at once when the topic is known
    groups: dict[tuple[str, int], list[int]] = {}
    single: list[int] = []
    for i, m in enumerate(messages):
        if len(m.value or b"") + len(m.key or b"") + 512 > limit:
            single.append(i)
        else:
            groups.setdefault((m.topic, _partition_of(producer, m)), []).append(i)
    waits: list[tuple[list[int], Any]] = []
    for (topic, partition), idx in groups.items():
        batch, members = producer.create_batch(), []
        for i in idx:
            m = messages[i]
            ts = int(m.timestamp * 1000) if m.timestamp else None  # the builder takes milliseconds
            if batch.append(key=m.key, value=m.value, timestamp=ts, headers=m.headers or []) is None:
                batch.close()
                waits.append((members, await producer.send_batch(batch, topic, partition=partition)))
                batch, members = producer.create_batch(), []
                batch.append(key=m.key, value=m.value, timestamp=ts, headers=m.headers or [])
            members.append(i)
        batch.close()
        waits.append((members, await producer.send_batch(batch, topic, partition=partition)))
    for i in single:
        m = messages[i]
        waits.append(([i], await producer.send(m.topic, m.value, key=m.key, partition=m.partition,
                                               timestamp_ms=int(m.timestamp * 1000) if m.timestamp else None,
                                               headers=m.headers)))
    out: list[BaseException | None] = [None] * len(messages)
    results = await _acknowledged([f for _, f in waits], len(messages))
    for (members, _), r in zip(waits, results, strict=True):
        if isinstance(r, BaseException):
            for i in members:
                out[i] = r
    return out


async def _acknowledged(futures: Sequence[Awaitable[Any]], count: int) -> list[Any]:
    """Every future's result or exception, in order; a wait past ACK_WARN_SECONDS is logged."""
    gathered = asyncio.gather(*futures, return_exceptions=True)
    waited = 0.0
    try:
        while True:
            done, _ = await asyncio.wait({gathered}, timeout=ACK_WARN_SECONDS)
            if done:
                return gathered.result()
            waited += ACK_WARN_SECONDS
            logger.warning("%d sends have waited %.0f s for the broker's acknowledgement (the producer retries them)",
                           count, waited)
    except asyncio.CancelledError:
        gathered.cancel()
        # A cancelled gather of return_exceptions=True finishes with CancelledError as its exception, which
        # nobody reads after a stop: asyncio would log it at ERROR ("exception was never retrieved") at every
        # clean shutdown.
        gathered.add_done_callback(_retrieve)
        raise


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


async def _send_each(messages: Sequence[Outgoing]) -> list[BaseException | None]:
    """Through Faust's producer, one send per record (before its aiokafka producer exists)."""
    futures, out = [], []
    for m in messages:
        try:
            futures.append(await app.producer.send(m.topic, m.key, m.value, m.partition, m.timestamp, m.headers))
        except Exception as exc:
            futures.append(None)
            out.append(exc)
            continue
        out.append(None)
    results = await _acknowledged([f for f in futures if f is not None], len(messages))
    it = iter(results)
    return [e if e is not None else (r if isinstance(r := next(it), BaseException) else None) for e in out]


# Sends the messages through a started aiokafka producer; one result per message (None: acknowledged).
SendBatched = Callable[[AIOKafkaProducer, Sequence[Outgoing]], Awaitable[list[BaseException | None]]]


class _Unacknowledged(Exception):
    """Some sends of a send_all attempt were not acknowledged: tenacity waits, then sends those again."""

    def __init__(self, count: int, first: BaseException) -> None:
        super().__init__(f"{count} sends not acknowledged ({first!r})")
        self.count = count
        self.first = first


def _log_unacknowledged(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome is not None else None
    wait = state.next_action.sleep if state.next_action is not None else 0.0
    if isinstance(exc, _Unacknowledged):
        logger.warning("%d sends not acknowledged (%r); retrying in %.1f s", exc.count, exc.first, wait)


async def send_all(messages: Sequence[Outgoing], *, max_delay: float = 10.0,
                   producer: Callable[[], AIOKafkaProducer | None] = _kafka_producer,
                   send_batched: SendBatched | None = None,
                   send_each: Callable[[Sequence[Outgoing]], Awaitable[list[BaseException | None]]] | None = None,
                   sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> None:
    """Send all messages and wait for every ack; retry the failed ones (a record too big for the broker
    truncated first) until they are acked, 0.1 s doubling to `max_delay` with jitter. `producer` returns the
    started aiokafka producer (None: not yet, send through Faust's, `send_each`); the worker's by default."""
    batched = send_batched or _send_batched
    each = send_each or _send_each
    pending = list(messages)

    async def attempt() -> None:
        nonlocal pending
        current = producer()
        try:
            results = await (batched(current, pending) if current is not None else each(pending))
        except Exception as exc:  # before anything was queued (metadata, a closed producer): all again
            results = [exc] * len(pending)
        failed = [_shrink(m) if isinstance(r, MessageSizeTooLargeError) else m
                  for m, r in zip(pending, results, strict=True) if r is not None]
        if failed:
            first = next(r for r in results if r is not None)
            pending = failed
            raise _Unacknowledged(len(failed), first)

    def retrying() -> AsyncRetrying:
        return AsyncRetrying(retry=retry_if_exception_type(_Unacknowledged), stop=stop_never, sleep=sleep,
                             wait=_jittered(wait_exponential(multiplier=0.1, max=max_delay)),
                             before_sleep=_log_unacknowledged)

    await first_then_retrying(attempt, retrying)


# ------------------------------------------------------------------------------------------ exactly-once

# The producer is fenced: another one took this transactional id (the partition has a new owner), or its
# transaction outlived transaction_timeout_ms. Either way this process must not write for the partition again.
FENCED = (ProducerFenced, InvalidProducerEpoch)


def _transaction_retriable(exc: BaseException) -> bool:
    """Every error of a transaction is retried (aborted, then the same outputs again; a record too big for the
    broker is truncated first) but fencing, after which this producer must not write again. Only an Exception:
    tenacity also sees a CancelledError, which must end the retries."""
    return isinstance(exc, Exception) and not isinstance(exc, FENCED)


def _jittered(wait: Callable[[RetryCallState], float]) -> Callable[[RetryCallState], float]:
    """`wait` scaled by a random factor in [0.5, 1.5): transactions of many partitions that failed together
    do not retry in step."""
    return lambda state: wait(state) * (0.5 + random.random())


def transactional_id(group_id: str, tp: TopicPartition) -> str:
    """One id per input partition (Kafka Streams' EOS v1 scheme): whoever owns the partition next, a restarted
    worker or another one, starts a producer with the same id and so fences the zombie and aborts its open
    transaction. (The per-consumer KIP-447 scheme needs TxnOffsetCommit v3 with the group's generation;
    aiokafka 0.14 sends v0 with the group id only, so the broker could not fence a paused zombie by it.)"""
    return f"{group_id}-{tp.topic}-{tp.partition}"


class PartitionTransactions:
    """Exactly-once from a stage's input partitions into its output topics: per input partition, one
    transactional producer; per batch and partition, one transaction that holds the outputs and the
    partition's next offset (`send_offsets_to_transaction`), so outputs and offsets commit together or not
    at all, and read_committed consumers never see the outputs of a batch whose offsets did not commit."""

    def __init__(self, kafka: KafkaSettings, group_id: str, client_id: str = "tickflow", *,
                 send_batched: SendBatched | None = None) -> None:
        self.kafka = kafka
        self.group_id = group_id
        self.client_id = client_id
        self.send_batched = send_batched or _send_batched  # how a transaction's outputs are sent (tests)
        self.producers: dict[TopicPartition, AIOKafkaProducer] = {}
        self.fenced = 0
        self.aborted = 0

    def _producer(self, tp: TopicPartition) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self.kafka.bootstrap_servers,
            client_id=f"{self.client_id}-{tp.topic}-{tp.partition}",
            transactional_id=transactional_id(self.group_id, tp),
            transaction_timeout_ms=self.kafka.transaction_timeout_ms,
            enable_idempotence=True,
            acks="all",
            linger_ms=self.kafka.producer_linger_ms,
            max_batch_size=self.kafka.producer_max_batch_bytes,
            max_request_size=4 * 1024 * 1024 + 64 * 1024,  # as Faust's producer (streams/app.py)
            **self.kafka.client_kwargs(),
        )

    async def open(self, tps: set[TopicPartition]) -> None:
        """Start (init_transactions: fence the previous owner, finish its open transaction) a producer for
        every partition of `tps` that has none. Must complete before the partitions' committed offsets are read."""
        new = {tp: self._producer(tp) for tp in tps if tp not in self.producers}
        results = await asyncio.gather(*(p.start() for p in new.values()), return_exceptions=True)
        failed = [(tp, r) for (tp, p), r in zip(new.items(), results, strict=True) if isinstance(r, BaseException)]
        for tp, p in new.items():
            if all(tp != f for f, _ in failed):
                self.producers[tp] = p
        if failed:
            await asyncio.gather(*(new[tp].stop() for tp, _ in failed), return_exceptions=True)
            raise failed[0][1]

    async def close(self, tps: set[TopicPartition] | None = None) -> None:
        """Stop the producers of `tps` (all when None); an open transaction of theirs is aborted by the broker
        when the next owner fences it."""
        gone = [self.producers.pop(tp) for tp in list(self.producers) if tps is None or tp in tps]
        await asyncio.gather(*(p.stop() for p in gone), return_exceptions=True)

    async def commit(self, tp: TopicPartition, messages: Sequence[Outgoing], next_offset: int,
                     before_commit: Callable[[], None] = lambda: None, max_delay: float = 10.0) -> bool:
        """One transaction: `messages` and the offset `next_offset` of `tp` for the group. Retried whole (abort,
        then again, 0.1 s doubling to `max_delay` with jitter) until it commits; False, with nothing committed,
        when this producer is fenced (the partition has another owner, which reads the batch again)."""
        pending = list(messages)
        name = transactional_id(self.group_id, tp)

        def log_retry(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            wait = state.next_action.sleep if state.next_action is not None else 0.0
            logger.warning("%s: transaction failed (%r); aborted, retrying in %.1f s", name, exc, wait)

        retrying = AsyncRetrying(retry=retry_if_exception(_transaction_retriable), stop=stop_never, reraise=True,
                                 wait=_jittered(wait_exponential(multiplier=0.1, max=max_delay)),
                                 before_sleep=log_retry)
        try:
            async for attempt in retrying:
                with attempt:
                    producer = self.producers.get(tp)
                    if producer is None:
                        return False
                    try:
                        await producer.begin_transaction()
                        results = await self.send_batched(producer, pending) if pending else []
                        failed = [r for r in results if r is not None]
                        if failed:
                            pending = [_shrink(m) if isinstance(r, MessageSizeTooLargeError) else m
                                       for m, r in zip(pending, results, strict=True)]
                            raise failed[0]
                        await producer.send_offsets_to_transaction({tp: next_offset}, self.group_id)
                        before_commit()
                        await producer.commit_transaction()
                    except FENCED:
                        raise
                    except Exception:  # an outage, a send refused: abort, and the same outputs again
                        self.aborted += 1
                        if not await self._abort(tp, producer):
                            return False
                        raise
        except FENCED as exc:
            self.fenced += 1
            logger.warning("%s: transactional producer fenced (%r): the partition has a new owner; this batch is "
                           "not committed", name, exc)
            await self.close({tp})
            return False
        return True

    async def _abort(self, tp: TopicPartition, producer: AIOKafkaProducer) -> bool:
        """Abort the open transaction; a producer that cannot abort (a fatal state) is replaced by a new one
        with the same id (retried every second until it starts), which aborts it on the broker. False when
        fenced meanwhile."""
        name = transactional_id(self.group_id, tp)
        try:
            if producer._txn_manager is not None and producer._txn_manager.is_in_transaction():
                await producer.abort_transaction()
            return True
        except FENCED:
            self.fenced += 1
            await self.close({tp})
            return False
        except Exception as exc:
            logger.warning("%s: abort failed (%r); starting a new producer", name, exc)
        await self.close({tp})

        def log_retry(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            logger.warning("%s: producer not started (%r); retrying", name, exc)

        try:
            async for attempt in AsyncRetrying(retry=retry_if_exception(_transaction_retriable), stop=stop_never,
                                               wait=wait_fixed(1.0), before_sleep=log_retry, reraise=True):
                with attempt:
                    await self.open({tp})
        except FENCED:
            return False
        return True
