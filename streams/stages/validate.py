"""Stage 2 — validate_ticks.

Reads: every raw.<source> topic in topics.yaml (bytes as the producer wrote them).
Writes: ticks.clean (canonical MarketDataPoint JSON, key = symbol) for valid records;
        ticks.rejected (original key, value, timestamp and headers + tickflow.* reason headers);
        ticks.anomalies (anomaly events) from the detectors (streams/anomalies/ via
        streams/stages/detect.py);
        a tick anomaly flags the clean record (`anomaly:<detector>`), or quarantines it to ticks.rejected
        (rule `anomaly.<detector>`) for the sources listed in validation.quarantine_sources.

Bad data is caught per record and dead-lettered; nothing is dropped silently and the worker never dies
of a record. A batch's source offsets are committed only after every output of the batch is acknowledged
by the broker (streams/stages/base.py says why this stage owns its commits).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import TopicPartition

from streams.app import app, settings
from streams.errors import CircuitOpen, RejectedRecord
from streams.models import MarketDataPoint
from streams.rules import CircuitBreaker, Validator
from streams.stages import metrics
from streams.stages.base import BatchStage, stage_service
from streams.stages.detect import event_for
from streams.stages.detect import stage as anomaly_stage
from streams.stages.publish import Outgoing, Rejection, send_all
from streams.stages.topics import anomalies_topic_name, catalog, clean_topic_name, rejected_topic_name, source_of_topic

logger = logging.getLogger(__name__)

STAGE = "validate"
YIELD_EVERY = 200  # records between two pauses for the other tasks of the worker (the write stage first)
DETECT = settings.validation.detect_anomalies
QUARANTINE = set(settings.validation.quarantine_sources)


@functools.lru_cache(maxsize=256)
def _ingested_at(ms: int) -> datetime:
    """A producer timestamp as a datetime; records arrive in runs with the same millisecond, so remembered."""
    return datetime.fromtimestamp(ms / 1000.0, UTC)


def route(validator: Validator, rec: Any, deltas: dict[str, dict[str, Any]], now: float | None = None
          ) -> list[Outgoing]:
    """One raw record -> its clean or dead-letter message, its anomaly events, and its metrics delta.
    `now`: the batch's wall clock (for the detectors' liveness bookkeeping)."""
    source = source_of_topic.get(rec.topic, rec.topic)
    d = deltas[source]
    d["processed"] += 1
    ts_seconds = rec.timestamp / 1000.0 if rec.timestamp and rec.timestamp > 0 else None
    events: list[Outgoing] = []
    try:
        ingested = _ingested_at(rec.timestamp) if ts_seconds else None
        point = validator.check(rec.value, source=source, ingested_at=ingested)
        quarantine: tuple[str, str] | None = None
        if DETECT:
            events, quarantine = detect(point, source, d, now)
        if quarantine is None:
            d["valid"] += 1
            return [*events, Outgoing(clean_topic_name, point.symbol.encode(), point.to_json())]
        (rule, error), exc_name = quarantine, "Anomaly"
    except RejectedRecord as rej:
        rule, error, exc_name = rej.rule, rej.reason, type(rej).__name__
    except Exception as exc:  # a bug in a rule must dead-letter the record, not kill the worker
        logger.exception("validator failed on %s[%d]@%d", rec.topic, rec.partition, rec.offset)
        rule, error, exc_name = "internal.error", repr(exc), type(exc).__name__
    d["rejected"] += 1
    d["rules"][rule] = d["rules"].get(rule, 0) + 1
    why = Rejection(STAGE, rule, error, exc_name, rec.topic, rec.partition, rec.offset, list(rec.headers or []))
    return [*events, Outgoing(rejected_topic_name, rec.key, rec.value, ts_seconds, why.headers())]


def detect(point: MarketDataPoint, source: str, d: dict[str, Any], now: float | None = None
           ) -> tuple[list[Outgoing], tuple[str, str] | None]:
    """Run the detectors: anomaly events to send, and (rule, reason) when the record is quarantined."""
    try:
        found = anomaly_stage.detect(point, now)
    except Exception:  # a detector bug must not cost the record: pass it on unflagged, loudly
        logger.exception("anomaly detectors failed on %s/%s", source, point.symbol)
        d["rules"]["anomaly.internal_error"] = d["rules"].get("anomaly.internal_error", 0) + 1
        return [], None
    events: list[Outgoing] = []
    quarantine: tuple[str, str] | None = None
    for a in found:
        by = d.setdefault("anomalies", {})
        by[a.detector] = by.get(a.detector, 0) + 1
        event = event_for(a, source)
        d.setdefault("recent", []).append(
            {k: event[k] for k in ("detector", "symbol", "score", "threshold", "kind", "message", "detected_at")})
        events.append(Outgoing(anomalies_topic_name, point.symbol.encode(), orjson.dumps(event, default=str)))
        if a.kind == "tick":
            point.flags.append(f"anomaly:{a.detector}")
            if source in QUARANTINE and quarantine is None:
                quarantine = (f"anomaly.{a.detector}", a.message)
        elif a.kind == "corporate_action":
            point.flags.append("corporate_action.suspect")
    return events, quarantine


@app.timer(5.0, name="check_stale_feeds")
async def check_stale_feeds() -> None:
    """Stale feeds are feed-level events: on ticks.anomalies, in the metrics and in /health."""
    if not DETECT:
        return
    found = anomaly_stage.check_stale()
    if not found:
        return
    deltas: dict[str, dict[str, Any]] = defaultdict(metrics.new_delta)
    out = []
    for source, a in found:
        by = deltas[source].setdefault("anomalies", {})
        by[a.detector] = by.get(a.detector, 0) + 1
        out.append(Outgoing(anomalies_topic_name, a.symbol.encode(), orjson.dumps(event_for(a, source), default=str)))
    await send_all(out)
    await metrics.emit(deltas)


@stage_service
class ValidateTicks(BatchStage):
    """validate_ticks: raw.* -> ticks.clean | ticks.rejected | ticks.anomalies."""

    stage = STAGE
    topics = tuple(t.name for t in catalog.by_role("raw"))
    max_records = settings.validation.batch_size

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.validator = Validator(settings.validation)
        v = settings.validation
        self.breaker = CircuitBreaker(v.circuit_breaker_ratio, v.circuit_breaker_window)

    async def process(self, records: list[Any]) -> None:
        deltas: dict[str, dict[str, Any]] = defaultdict(metrics.new_delta)
        outgoing = []
        now = time.time()
        for i, rec in enumerate(records):
            if i % YIELD_EVERY == 0 and i:
                # A batch is ~100 ms of CPU; without a pause the write stage (same event loop) waits that long at
                # each of its awaits, falls behind, and the committed-rows rate drops to half the validated rate.
                await asyncio.sleep(0)
            routed = route(self.validator, rec, deltas, now)
            self.breaker.record(routed[-1].topic == rejected_topic_name)
            outgoing.extend(routed)
        if self.breaker.tripped:
            # Nothing of this batch is sent or committed: the records wait in their raw topic for the fix.
            raise CircuitOpen(
                f"circuit breaker: {self.breaker.rejected} of the last {self.breaker.window} records were rejected "
                f"(limit {self.breaker.ratio:.0%}); stopping instead of dead-lettering everything. Rules: "
                + ", ".join(f"{k} {v}" for d in deltas.values() for k, v in d["rules"].items()))
        if DETECT:
            anomaly_stage.save()
        await send_all(outgoing)
        await metrics.emit(deltas)

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        # The detector state of the symbols we may lose is saved while we still own them.
        if DETECT:
            anomaly_stage.save(force=True)
            anomaly_stage.forget()
