"""Stage 3 — write_ticks.

Reads: ticks.clean. Writes: PostgreSQL market_data (through sinks.postgres, COPY + idempotent upsert),
and ticks.rejected for the rare row the database refuses (stage `write`).

A batch from take_events() is written in one transaction; Faust acks its events (and so later
commits their offsets) only when this loop body ends, which happens only after the rows committed.
A database outage is retried in place with capped exponential backoff and jitter: the loop does not
pull more records meanwhile, so Faust's bounded stream buffer fills and fetching pauses. No database
error may escape the loop: Faust would ack the buffered events and they would be lost.
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
from streams import histogram, metrics
from streams.app import app, settings
from streams.db import ensure_writer
from streams.errors import SinkError, SinkUnavailable
from streams.publish import Outgoing, Rejection, send_all
from streams.topics import clean_topic, rejected_topic_name

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


def _rejection(event: Any, rule: str, exc: BaseException) -> Outgoing:
    msg = event.message
    why = Rejection(STAGE, rule, str(exc), type(exc).__name__, msg.topic, msg.partition, msg.offset)
    return Outgoing(rejected_topic_name, event.key, event.value, msg.timestamp or None, why.headers())


@app.agent(clean_topic, name="write_ticks", concurrency=1)
async def write_ticks(stream: Any) -> None:
    batch_size, within = settings.sink.batch_size, settings.sink.batch_within_seconds
    async for events in stream.take_events(batch_size, within=within):
        rows: list[tuple[Any, ...]] = []
        kept: list[Any] = []
        sources: list[str] = []
        ingested: list[float | None] = []
        dead: list[Outgoing] = []
        deltas: dict[str, dict[str, Any]] = defaultdict(metrics.new_delta)
        for ev in events:
            try:
                rec = orjson.loads(ev.value)
                row = row_from_record(rec)
            except Exception as exc:
                dead.append(_rejection(ev, "write.decode", exc))
                deltas["unknown"]["rules"]["write.decode"] = deltas["unknown"]["rules"].get("write.decode", 0) + 1
                continue
            rows.append(row)
            kept.append(ev)
            sources.append(row[0])
            ing = row[-1]
            ingested.append(ing.timestamp() if ing is not None else None)
        result, bad = await write_isolating(rows, kept)
        committed_at = time.time()
        bad_ids = set()
        for ev, exc in bad:
            bad_ids.add(id(ev))
            dead.append(_rejection(ev, "write.refused", exc))
        for ev, src, ing in zip(kept, sources, ingested, strict=True):
            if id(ev) in bad_ids:
                deltas[src]["rules"]["write.refused"] = deltas[src]["rules"].get("write.refused", 0) + 1
                continue
            d = deltas[src]
            if ing is not None:
                ms = (committed_at - ing) * 1000.0
                histogram.observe_many(d["latency"], (ms,))
                d["latency_sum_ms"] += ms
                d["latency_n"] += 1
        for src, n in result.inserted_by_source.items():
            deltas[src]["written"] += n
        for ev, src in zip(kept, sources, strict=True):
            if id(ev) not in bad_ids:
                deltas[src]["duplicates"] += 1
        for src, n in result.inserted_by_source.items():
            deltas[src]["duplicates"] -= n
        if dead:
            await send_all(dead)
        await metrics.emit(deltas)
