"""Stage 3 — write_ticks.

Reads: ticks.clean. Writes: PostgreSQL market_data (through sinks.postgres, COPY + idempotent upsert),
and ticks.rejected for the rare row the database refuses (stage `write`).

A batch is written in one transaction, and its offsets are committed to Kafka only after that
transaction commits (streams/stages/base.py). A database outage is retried in place with capped exponential
backoff and jitter: the stage fetches nothing meanwhile, so memory stays bounded by one batch plus the
consumer's fetch buffer, and it resumes where it stopped when the database returns.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import defaultdict
from typing import Any

import orjson

from sinks.base import WriteResult
from sinks.postgres import row_from_record
from streams import histogram
from streams.app import settings
from streams.errors import SinkError, SinkUnavailable
from streams.stages import metrics
from streams.stages.base import BatchStage, stage_service
from streams.stages.db import ensure_writer
from streams.stages.publish import Outgoing, Rejection, send_all
from streams.stages.topics import clean_topic_name, rejected_topic_name

logger = logging.getLogger(__name__)

STAGE = "write"


async def write_with_retry(rows: list[tuple[Any, ...]]) -> WriteResult:
    """Write until it succeeds; only a data error (SinkError, not retriable) comes back out."""
    delay = settings.sink.retry_initial_seconds
    failures = 0
    while True:
        try:
            writer = await ensure_writer()
            return await writer.write(rows)
        except SinkUnavailable as exc:
            failures += 1
            if failures == 1 or failures % 10 == 0:
                logger.warning("PostgreSQL unavailable (attempt %d): %s; retrying in %.1f s", failures, exc, delay)
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, settings.sink.retry_max_seconds)


async def write_isolating(
    rows: list[tuple[Any, ...]], events: list[Any]
) -> tuple[WriteResult, list[tuple[Any, SinkError]]]:
    """Write rows; when the database refuses the batch for its data, bisect to find the bad rows."""
    try:
        return await write_with_retry(rows), []
    except SinkError as exc:
        if len(rows) == 1:
            return WriteResult(0, 0), [(events[0], exc)]
    mid = len(rows) // 2
    left, bad_left = await write_isolating(rows[:mid], events[:mid])
    right, bad_right = await write_isolating(rows[mid:], events[mid:])
    by_source = dict(left.inserted_by_source)
    for src, n in right.inserted_by_source.items():
        by_source[src] = by_source.get(src, 0) + n
    merged = WriteResult(left.inserted + right.inserted, left.duplicates + right.duplicates, by_source)
    return merged, bad_left + bad_right


def _rejection(rec: Any, rule: str, exc: BaseException) -> Outgoing:
    why = Rejection(STAGE, rule, str(exc), type(exc).__name__, rec.topic, rec.partition, rec.offset)
    ts = rec.timestamp / 1000.0 if rec.timestamp and rec.timestamp > 0 else None
    return Outgoing(rejected_topic_name, rec.key, rec.value, ts, why.headers())


async def write_batch(records: list[Any]) -> None:
    """Decode, write in one transaction (bisecting around refused rows), dead-letter what cannot be written,
    and emit the batch's metrics. Returns only when every row is committed or dead-lettered."""
    rows: list[tuple[Any, ...]] = []
    kept: list[Any] = []
    sources: list[str] = []
    ingested: list[float | None] = []
    dead: list[Outgoing] = []
    deltas: dict[str, dict[str, Any]] = defaultdict(metrics.new_delta)
    for rec in records:
        try:
            row = row_from_record(orjson.loads(rec.value))
        except Exception as exc:
            dead.append(_rejection(rec, "write.decode", exc))
            rules = deltas["unknown"]["rules"]
            rules["write.decode"] = rules.get("write.decode", 0) + 1
            continue
        rows.append(row)
        kept.append(rec)
        sources.append(row[0])
        ing = row[-1]
        ingested.append(ing.timestamp() if ing is not None else None)
    result, bad = await write_isolating(rows, kept)
    committed_at = time.time()
    bad_ids = set()
    for rec, exc in bad:
        bad_ids.add(id(rec))
        dead.append(_rejection(rec, "write.refused", exc))
    # Per-source latency: the milliseconds grouped by source first, then one histogram update per source.
    latencies: dict[str, list[float]] = defaultdict(list)
    for rec, src, ing in zip(kept, sources, ingested, strict=True):
        if bad_ids and id(rec) in bad_ids:
            rules = deltas[src]["rules"]
            rules["write.refused"] = rules.get("write.refused", 0) + 1
            continue
        deltas[src]["duplicates"] += 1  # corrected below by what was inserted
        if ing is not None:
            latencies[src].append((committed_at - ing) * 1000.0)
    for src, ms in latencies.items():
        d = deltas[src]
        histogram.observe_many(d["latency"], ms)
        d["latency_sum_ms"] += sum(ms)
        d["latency_n"] += len(ms)
    for src, n in result.inserted_by_source.items():
        deltas[src]["written"] += n
        deltas[src]["duplicates"] -= n
    if dead:
        await send_all(dead)
    await metrics.emit(deltas)


@stage_service
class WriteTicks(BatchStage):
    """write_ticks: ticks.clean -> PostgreSQL market_data."""

    stage = STAGE
    topics = (clean_topic_name,)
    max_records = settings.sink.batch_size

    async def process(self, records: list[Any]) -> None:
        await write_batch(records)
