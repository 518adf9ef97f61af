"""Stage 3 — the write stage (write_ticks).

Reads: ticks.clean. Writes: PostgreSQL market_data (through sinks.postgres: the records' own JSON, parsed by
the server, and an idempotent upsert), and ticks.rejected for the rare row the database refuses (stage `write`).

A batch's offsets are committed to Kafka only after its rows are (streams/stages/base.py). What an error means is
the error's `retriable` (streams/errors.py), never which except clause caught it: a retriable one (the database
down, read-only, a permission) is retried in place with capped exponential backoff and jitter (tenacity), the stage
fetching nothing meanwhile, so memory stays bounded by one batch plus the consumer's fetch buffer and it resumes
where it stopped; a refusal of the data is bisected down to the refused rows, which are dead-lettered.
"""

from __future__ import annotations

import asyncio
import logging
import operator
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import TopicPartition
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_never, wait_exponential, wait_random

from sinks.base import BatchWriter, WriteResult, write_bisecting
from sinks.postgres import row_from_json, row_origin
from streams.app import app, settings
from streams.errors import SinkError, TickflowError, first_then_retrying
from streams.redact import redact
from streams.settings import SinkSettings
from streams.stages import metrics
from streams.stages.base import BatchStage, stage_service
from streams.stages.db import writer as shared_writer
from streams.stages.metrics import Emit, MetricsDelta
from streams.stages.publish import Outgoing, Rejection, Send, send_all
from streams.stages.topics import clean_topic_name, rejected_topic_name

logger = logging.getLogger(__name__)

STAGE = "write"


def retriable(exc: BaseException) -> bool:
    """Only our errors that say so are retried; anything else is a bug or a refusal and comes back out."""
    return isinstance(exc, TickflowError) and exc.retriable


class WriteTicks(BatchStage):
    """write_ticks: ticks.clean -> PostgreSQL market_data. `writer` is any BatchWriter (the worker's shared
    PostgreSQL writer, a fake in a test); `sleep` is what the retries wait with."""

    stage = STAGE

    def __init__(self, *, writer: BatchWriter, send: Send, emit: Emit, sink: SinkSettings, rejected_topic: str,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.writer = writer
        self.send = send
        self.emit = emit
        self.sink = sink
        self.rejected_topic = rejected_topic
        self.sleep = sleep
        self.outage_attempts = 0  # failed attempts of the write in flight (0 when the database answers)
        self.last_outage: str | None = None

    async def durable(self) -> int:
        return await self.writer.durable()

    def _log_retry(self, state: RetryCallState) -> None:
        n = state.attempt_number
        self.outage_attempts = n
        exc = state.outcome.exception() if state.outcome is not None else None
        self.last_outage = redact(f"{type(exc).__name__}: {exc}")[:500]
        if n == 1 or n % 10 == 0:
            wait = state.next_action.sleep if state.next_action is not None else 0.0
            logger.warning("PostgreSQL unavailable (attempt %d): %s; retrying in %.1f s", n, self.last_outage, wait)

    async def write_with_retry(self, rows: list[Any]) -> WriteResult:
        """Write until it succeeds; only an error that is not retriable comes back out."""
        def retrying() -> AsyncRetrying:
            return AsyncRetrying(
                retry=retry_if_exception(retriable),
                wait=wait_exponential(multiplier=self.sink.retry_initial_seconds, max=self.sink.retry_max_seconds)
                + wait_random(0, self.sink.retry_initial_seconds),
                stop=stop_never,
                sleep=self.sleep,
                before_sleep=self._log_retry,
                reraise=True,
            )

        write = self.writer.write_json if self.writer.takes_json else self.writer.write
        result = await first_then_retrying(lambda: write(rows), retrying)
        self.outage_attempts, self.last_outage = 0, None
        return result

    async def write_isolating(self, rows: list[Any], events: list[Any]
                              ) -> tuple[WriteResult, list[tuple[Any, SinkError]]]:
        """Write rows; when the database refuses the batch for its data, bisect to find the bad rows (the events
        they came from, with the error)."""
        result, bad = await write_bisecting(self.write_with_retry, rows, operator.add, WriteResult(0, 0))
        return result, [(events[i], exc) for i, exc in bad]

    def _rejection(self, rec: Any, rule: str, exc: BaseException) -> Outgoing:
        why = Rejection(STAGE, rule, str(exc), type(exc).__name__, rec.topic, rec.partition, rec.offset,
                        list(rec.headers or []))
        ts = rec.timestamp / 1000.0 if rec.timestamp and rec.timestamp > 0 else None
        return Outgoing(self.rejected_topic, rec.key, rec.value, ts, why.headers())

    async def process(self, records: list[Any]) -> set[TopicPartition] | None:
        """Write the batch (bisecting around refused rows), dead-letter what cannot be written, and emit the
        batch's metrics. Returns only when every row is committed or dead-lettered."""
        if self.writer.takes_json:
            return await self._process_json(records)
        rows: list[tuple[Any, ...]] = []
        kept: list[Any] = []
        sources: list[str] = []
        ingested: list[float | None] = []
        dead: list[Outgoing] = []
        delta = MetricsDelta()
        for rec in records:
            try:
                row = row_from_json(rec.value)
            except Exception as exc:
                dead.append(self._rejection(rec, "write.decode", exc))
                delta.of("unknown").count_rule("write.decode")
                continue
            rows.append(row)
            kept.append(rec)
            src, ing = row_origin(row)
            sources.append(src)
            ingested.append(ing.timestamp() if ing is not None else None)
        result, bad = await self.write_isolating(rows, kept)
        committed_at = time.time()
        bad_ids = set()
        for rec, exc in bad:
            bad_ids.add(id(rec))
            dead.append(self._rejection(rec, "write.refused", exc))
        # Per-source latency: the milliseconds grouped by source first, then one histogram update per source.
        latencies: dict[str, list[float]] = defaultdict(list)
        for rec, src, ing in zip(kept, sources, ingested, strict=True):
            if bad_ids and id(rec) in bad_ids:
                delta.of(src).count_rule("write.refused")
                continue
            if ing is not None:
                latencies[src].append((committed_at - ing) * 1000.0)
        for src, ms in latencies.items():
            delta.of(src).observe_latencies(ms)
        self._count(delta, result)
        if dead:
            await self.send(dead)
        await self.emit(delta)
        return None

    async def _process_json(self, records: list[Any]) -> None:
        """process() for a writer that takes the records' JSON as it is (BatchWriter.takes_json): nothing is
        decoded here; each record's source and ingested_at come back in the write's result. Only a record
        the database refused is decoded, to name its source and tell a record that is not JSON (write.decode)
        from one the database would not store (write.refused)."""
        values: list[bytes] = []
        kept: list[Any] = []
        dead: list[Outgoing] = []
        delta = MetricsDelta()
        for rec in records:
            if not isinstance(rec.value, bytes) or not rec.value:
                dead.append(self._rejection(rec, "write.decode", ValueError("the record has no value")))
                delta.of("unknown").count_rule("write.decode")
                continue
            values.append(rec.value)
            kept.append(rec)
        result, bad = await self.write_isolating(values, kept)
        committed_at = time.time()
        for rec, exc in bad:
            try:
                src, rule = row_origin(row_from_json(rec.value))[0], "write.refused"
            except Exception:
                src, rule = "unknown", "write.decode"
            dead.append(self._rejection(rec, rule, exc))
            delta.of(src).count_rule(rule)
        for src, at in result.ingested_by_source.items():
            if at:
                delta.of(src).observe_latencies([(committed_at - t) * 1000.0 for t in at])
        self._count(delta, result)
        if dead:
            await self.send(dead)
        await self.emit(delta)
        return None

    @staticmethod
    def _count(delta: MetricsDelta, result: WriteResult) -> None:
        for src, n in result.written_by_source.items():  # inserted, or updated by a newer revision
            delta.of(src).written += n
        for src, n in result.duplicates_by_source.items():  # the sink's own count: re-sends, stale revisions
            delta.of(src).duplicates += n

    def status(self) -> dict[str, Any]:
        st = super().status()
        st["database_retries"] = self.outage_attempts
        st["database_error"] = self.last_outage
        return st


# The Faust wiring: this worker's write stage, on the worker's shared PostgreSQL writer.
stage = stage_service(app, WriteTicks(
    writer=shared_writer,
    send=send_all,
    emit=metrics.emit,
    sink=settings.sink,
    rejected_topic=rejected_topic_name,
    kafka=settings.kafka,
    app_id=settings.worker.app_id,
    topics=[clean_topic_name],
    max_records=settings.sink.batch_size,
    coordinator_patience=settings.worker.consumer_replace_after_seconds,
    commit_interval_ms=settings.worker.commit_interval_ms,
), enabled=STAGE in settings.worker.stages)
