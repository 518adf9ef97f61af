"""Stage 4 — the archive stage (archive_events).

Reads: ticks.anomalies and ticks.rejected. Writes: PostgreSQL anomaly_events and dead_letters (through
sinks.postgres write_anomalies / write_dead_letters: INSERT ... ON CONFLICT DO NOTHING on each table's natural
key), so "what was flagged or refused yesterday, for AAPL" is a SQL query and not only a topic to replay.

Same contract as the write stage: a batch's offsets are committed only after its rows commit (BatchStage), so
a crash or a rebalance replays the batch and the natural keys make the replay a no-op. An outage (a retriable
SinkError) is retried in place with capped backoff; a batch the database refuses for its data (after the NUL
rule nothing should) is bisected to the refused rows, which are logged, counted in /health and skipped: they
stay on their topic for its retention, and they never hold the stage back.
"""

from __future__ import annotations

import asyncio
import logging
import operator
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from aiokafka import TopicPartition
from tenacity import AsyncRetrying, retry_if_exception, stop_never, wait_exponential, wait_random

from sinks.base import write_bisecting
from sinks.postgres import anomaly_row, dead_letter_row
from streams import exactjson
from streams.app import app, settings
from streams.errors import TickflowError
from streams.settings import SinkSettings
from streams.stages.base import BatchStage, stage_service
from streams.stages.db import writer as shared_writer
from streams.stages.topics import anomalies_topic_name, rejected_topic_name, source_of_topic

logger = logging.getLogger(__name__)

STAGE = "archive"
Rows = Sequence[tuple[Any, ...]]


class EventSink(Protocol):
    async def write_anomalies(self, rows: Rows) -> int: ...

    async def write_dead_letters(self, rows: Rows) -> int: ...

    async def durable(self) -> int:
        """sinks/base.py BatchWriter.durable."""
        ...


def _retriable(exc: BaseException) -> bool:
    return isinstance(exc, TickflowError) and exc.retriable


class ArchiveEvents(BatchStage):
    """archive_events: ticks.anomalies -> anomaly_events, ticks.rejected -> dead_letters. `sink` is anything
    with write_anomalies / write_dead_letters (the worker's shared PostgreSQL writer, or a test's own)."""

    stage = STAGE

    def __init__(self, *, sink: EventSink, sink_settings: SinkSettings, anomalies_topic: str, rejected_topic: str,
                 source_of_topic: Mapping[str, str],
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, **kwargs: Any) -> None:
        super().__init__(topics=[anomalies_topic, rejected_topic], **kwargs)
        self.sink = sink
        self.sink_settings = sink_settings
        self.anomalies_topic = anomalies_topic
        self.rejected_topic = rejected_topic
        self.source_of_topic = dict(source_of_topic)
        self.sleep = sleep
        self.stored = {"anomaly_events": 0, "dead_letters": 0}
        self.skipped = 0  # records that could not be decoded or that the database refused (logged)

    def rows_of(self, records: list[Any]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """The batch's anomaly_events rows and dead_letters rows; an undecodable event is logged and skipped."""
        anomalies: list[tuple[Any, ...]] = []
        dead: list[tuple[Any, ...]] = []
        for rec in records:
            try:
                if rec.topic == self.anomalies_topic:
                    anomalies.append(anomaly_row(exactjson.loads(rec.value, free=("record", "metadata"))))
                else:
                    dead.append(dead_letter_row(
                        topic=rec.topic, partition=rec.partition, offset=rec.offset, key=rec.key, value=rec.value,
                        timestamp_ms=rec.timestamp, headers=list(rec.headers or ()),
                        source_of_topic=self.source_of_topic))
            except Exception as exc:
                self.skipped += 1
                logger.error("%s: %s[%d]@%d is not an event this stage can store (%r); skipped", self.stage,
                             rec.topic, rec.partition, rec.offset, exc)
        return anomalies, dead

    async def _with_retry(self, write: Callable[[Rows], Awaitable[int]], rows: Rows) -> int:
        """Write until it succeeds; only an error that is not retriable (the data) comes back out."""
        retrying = AsyncRetrying(
            retry=retry_if_exception(_retriable),
            wait=wait_exponential(multiplier=self.sink_settings.retry_initial_seconds,
                                  max=self.sink_settings.retry_max_seconds)
            + wait_random(0, self.sink_settings.retry_initial_seconds),
            stop=stop_never, sleep=self.sleep, reraise=True,
            before_sleep=lambda st: logger.warning("%s: PostgreSQL unavailable (attempt %d): %r", self.stage,
                                                   st.attempt_number,
                                                   st.outcome.exception() if st.outcome else None),
        )
        n = 0
        async for attempt in retrying:
            with attempt:
                n = await write(rows)
        return n

    async def write_isolating(self, write: Callable[[Rows], Awaitable[int]], rows: Rows) -> int:
        """Write rows; when the database refuses the batch for its data, bisect and skip the refused rows."""
        if not rows:
            return 0
        n, bad = await write_bisecting(lambda part: self._with_retry(write, part), list(rows), operator.add, 0)
        for _, exc in bad:
            self.skipped += 1
            logger.error("%s: the database refused a row (%s); skipped (still on its topic)", self.stage, exc)
        return n

    async def process(self, records: list[Any]) -> set[TopicPartition] | None:
        anomalies, dead = self.rows_of(records)
        self.stored["anomaly_events"] += await self.write_isolating(self.sink.write_anomalies, anomalies)
        self.stored["dead_letters"] += await self.write_isolating(self.sink.write_dead_letters, dead)
        return None

    async def durable(self) -> int:
        return await self.sink.durable()

    def status(self) -> dict[str, Any]:
        st = super().status()
        st["stored"] = dict(self.stored)
        st["skipped"] = self.skipped
        return st


class _SharedSink:
    """The worker's one PostgreSQL writer (streams/stages/db.py), started on first use."""

    async def write_anomalies(self, rows: Rows) -> int:
        return await (await shared_writer.get()).write_anomalies(rows)

    async def write_dead_letters(self, rows: Rows) -> int:
        return await (await shared_writer.get()).write_dead_letters(rows)

    async def durable(self) -> int:
        return await shared_writer.durable()


# The Faust wiring: this worker's archive stage, on the worker's shared PostgreSQL writer.
stage = stage_service(app, ArchiveEvents(
    sink=_SharedSink(),
    sink_settings=settings.sink,
    anomalies_topic=anomalies_topic_name,
    rejected_topic=rejected_topic_name,
    source_of_topic=source_of_topic,
    kafka=settings.kafka,
    app_id=settings.worker.app_id,
    max_records=settings.sink.batch_size,
    coordinator_patience=settings.worker.consumer_replace_after_seconds,
    commit_interval_ms=settings.worker.commit_interval_ms,
), enabled=STAGE in settings.worker.stages)
