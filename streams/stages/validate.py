"""Stage 2 — the validate stage (validate_ticks).

Reads: every raw.<source> topic in topics.yaml (bytes as the producer wrote them).
Writes: ticks.clean (canonical MarketDataPoint JSON, key = symbol) for valid records;
        ticks.rejected (original key, value, timestamp and headers + tickflow.* reason headers);
        ticks.anomalies (anomaly events) from the detectors (streams/anomalies/ via
        streams/stages/detect.py);
        a tick anomaly flags the clean record (`anomaly:<detector>`), or quarantines it to ticks.rejected
        (rule `anomaly.<detector>`) for the sources listed in validation.quarantine_sources.

Bad data is caught per record and dead-lettered; nothing is dropped silently and the worker never dies
of a record. A source whose records are mostly rejected (a provider changed its format, a bad deploy) trips
its own circuit breaker: that source's partitions are paused, uncommitted, for a cool-down, and the other
sources go on (streams/rules.py SourceBreakers). A batch's source offsets are committed only after every
output of the batch is acknowledged by the broker (streams/stages/base.py says why this stage owns its commits).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import TopicPartition

from streams.app import app, settings
from streams.catalog import Catalog
from streams.errors import RejectedRecord
from streams.models import MarketDataPoint
from streams.rules import SourceBreakers, Validator
from streams.stages import metrics
from streams.stages.base import BatchStage, stage_service
from streams.stages.detect import AnomalyTracker, anomaly_state, event_for
from streams.stages.metrics import Emit, MetricsDelta, SourceDelta
from streams.stages.publish import Outgoing, Rejection, Send, send_all
from streams.stages.topics import catalog

logger = logging.getLogger(__name__)

STAGE = "validate"
YIELD_EVERY = 200  # records between two pauses for the other tasks of the worker (the write stage first)


@functools.lru_cache(maxsize=256)
def _ingested_at(ms: int) -> datetime:
    """A producer timestamp as a datetime; records arrive in runs with the same millisecond, so remembered."""
    return datetime.fromtimestamp(ms / 1000.0, UTC)


class Router:
    """One raw record -> its clean or dead-letter message, its anomaly events, and its part of the metrics
    delta. Plain Python: a test builds it from a Validator and a catalog, with or without an AnomalyTracker."""

    def __init__(self, validator: Validator, topics: Catalog, anomalies: AnomalyTracker | None = None,
                 quarantine: Iterable[str] = ()) -> None:
        self.validator = validator
        self.clean_topic = topics.one("clean").name
        self.rejected_topic = topics.one("rejected").name
        self.anomalies_topic = topics.one("anomalies").name
        self.source_of_topic = {t.name: t.source or "" for t in topics.by_role("raw")}
        self.anomalies = anomalies
        self.quarantine = set(quarantine)

    def source_of(self, topic: str) -> str:
        return self.source_of_topic.get(topic, topic)

    def route(self, rec: Any, delta: MetricsDelta, now: float | None = None, source: str | None = None
              ) -> list[Outgoing]:
        """`now`: the batch's wall clock (for the detectors' liveness bookkeeping)."""
        source = source or self.source_of(rec.topic)
        d = delta.of(source)
        d.processed += 1
        ts_seconds = rec.timestamp / 1000.0 if rec.timestamp and rec.timestamp > 0 else None
        events: list[Outgoing] = []
        try:
            ingested = _ingested_at(rec.timestamp) if ts_seconds else None
            point = self.validator.check(rec.value, source=source, ingested_at=ingested)
            quarantine: tuple[str, str] | None = None
            if self.anomalies is not None:
                events, quarantine = self.detect(point, source, d, now)
            if quarantine is None:
                d.valid += 1
                return [*events, Outgoing(self.clean_topic, point.symbol.encode(), point.to_json())]
            (rule, error), exc_name = quarantine, "Anomaly"
        except RejectedRecord as rej:
            rule, error, exc_name = rej.rule, rej.reason, type(rej).__name__
        except Exception as exc:  # a bug in a rule must dead-letter the record, not kill the worker
            logger.exception("validator failed on %s[%d]@%d", rec.topic, rec.partition, rec.offset)
            rule, error, exc_name = "internal.error", repr(exc), type(exc).__name__
        d.rejected += 1
        d.count_rule(rule)
        why = Rejection(STAGE, rule, error, exc_name, rec.topic, rec.partition, rec.offset, list(rec.headers or []))
        return [*events, Outgoing(self.rejected_topic, rec.key, rec.value, ts_seconds, why.headers())]

    def detect(self, point: MarketDataPoint, source: str, d: SourceDelta, now: float | None = None
               ) -> tuple[list[Outgoing], tuple[str, str] | None]:
        """Run the detectors: anomaly events to send, and (rule, reason) when the record is quarantined."""
        assert self.anomalies is not None
        try:
            found = self.anomalies.detect(point, now)
        except Exception:  # a detector bug must not cost the record: pass it on unflagged, loudly
            logger.exception("anomaly detectors failed on %s/%s", source, point.symbol)
            d.count_rule("anomaly.internal_error")
            return [], None
        events: list[Outgoing] = []
        quarantine: tuple[str, str] | None = None
        for a in found:
            d.count_anomaly(a.detector)
            event = event_for(a, source)
            d.recent.append(
                {k: event[k] for k in ("detector", "symbol", "score", "threshold", "kind", "message", "detected_at")})
            events.append(Outgoing(self.anomalies_topic, point.symbol.encode(), orjson.dumps(event, default=str)))
            if a.details.get("follow_up"):  # a verdict on an EARLIER bar (confirmed by this one): a newer revision
                rev = {**a.record, "flags": [*a.record.get("flags", ()), f"anomaly:{a.detector}"],
                       "ingested_at": datetime.now(UTC).isoformat()}  # of that bar's row, flagged
                events.append(Outgoing(self.clean_topic, point.symbol.encode(), orjson.dumps(rev)))
                continue
            if a.kind == "tick":
                point.flags.append(f"anomaly:{a.detector}")
                if source in self.quarantine and quarantine is None:
                    quarantine = (f"anomaly.{a.detector}", a.message)
            elif a.kind == "corporate_action":
                point.flags.append("corporate_action.suspect")
        return events, quarantine

    def stale_events(self, now: float | None = None) -> tuple[list[Outgoing], MetricsDelta]:
        """Stale feeds are feed-level events: on ticks.anomalies and in the metrics."""
        delta = MetricsDelta()
        if self.anomalies is None:
            return [], delta
        out = []
        for source, a in self.anomalies.check_stale(now):
            delta.of(source).count_anomaly(a.detector)
            out.append(Outgoing(self.anomalies_topic, a.symbol.encode(),
                                orjson.dumps(event_for(a, source), default=str)))
        return out, delta


class ValidateTicks(BatchStage):
    """validate_ticks: raw.* -> ticks.clean | ticks.rejected | ticks.anomalies."""

    stage = STAGE

    def __init__(self, *, router: Router, breakers: SourceBreakers, send: Send, emit: Emit, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.router = router
        self.breakers = breakers
        self.send = send
        self.emit = emit

    async def process(self, records: list[Any]) -> set[TopicPartition] | None:
        delta = MetricsDelta()
        router, breakers, rejected_topic = self.router, self.breakers, self.router.rejected_topic
        out_by_source: dict[str, list[Outgoing]] = {}
        now = time.time()
        topic: str | None = None
        for i, rec in enumerate(records):
            if i % YIELD_EVERY == 0 and i:
                # A batch is ~100 ms of CPU; without a pause the write stage (same event loop) waits that long at
                # each of its awaits, falls behind, and the committed-rows rate drops to half the validated rate.
                await asyncio.sleep(0)
            if rec.topic != topic:  # records come grouped by partition: look the source up once per run
                topic = rec.topic
                source = router.source_of(topic)
                breaker = breakers.breaker(source)
                out = out_by_source.setdefault(source, [])
            routed = router.route(rec, delta, now, source)
            breaker.record(routed[-1].topic == rejected_topic)
            out.extend(routed)
        for source in breakers.tripped():
            opened = breakers.trip(source, delta.of(source).rules)
            logger.critical(
                "circuit breaker: source %s: %d of its last %d records were rejected (limit %.0f%%); pausing its "
                "partitions for %.0f s instead of dead-lettering them (the other sources go on). Rules: %s",
                source, opened.rejected, opened.window, breakers.ratio * 100, breakers.cooldown,
                ", ".join(f"{k} {v}" for k, v in opened.rules.items()))
        held = {s for s in out_by_source if breakers.is_open(s)}
        for source in held:  # nothing of these is sent, counted or committed: it is read again after the pause
            delta.drop(source)
        if router.anomalies is not None:
            router.anomalies.save()
        await self.send([m for s, msgs in out_by_source.items() if s not in held for m in msgs])
        await self.emit(delta)
        if not held:
            return None
        return {TopicPartition(r.topic, r.partition) for r in records if router.source_of(r.topic) in held}

    def resumable(self) -> set[TopicPartition]:
        due = self.breakers.due()
        if not due:
            return set()
        logger.warning("circuit breaker: consuming %s again after the %.0f s cool-down", ", ".join(due),
                       self.breakers.cooldown)
        return {tp for tp in self.assignment() if self.router.source_of(tp.topic) in due}

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        # A partition of an open source that comes (back) to us stays paused until the cool-down ends.
        paused = {tp for tp in assigned if self.breakers.is_open(self.router.source_of(tp.topic))}
        if paused and self.consumer is not None:
            self.consumer.pause(*paused)

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        # The detector state of the symbols we may lose is saved while we still own them.
        if self.router.anomalies is not None:
            self.router.anomalies.save(force=True)
            self.router.anomalies.forget()

    async def check_stale(self, now: float | None = None) -> None:
        events, delta = self.router.stale_events(now)
        if events:
            await self.send(events)
            await self.emit(delta)

    def status(self) -> dict[str, Any]:
        now = self.breakers.clock()
        st = super().status()
        st["paused_sources"] = [
            {"source": o.source, "rejected": o.rejected, "window": o.window, "rules": o.rules,
             "resumes_in_seconds": round(max(0.0, self.breakers.cooldown - (now - o.opened_at)), 1)}
            for o in sorted(self.breakers.open.values(), key=lambda o: o.source)]
        anomalies = self.router.anomalies
        st["stale_feeds"] = list(anomalies.stale_feeds.values()) if anomalies is not None else []
        return st


# The Faust wiring: this worker's validate stage and its collaborators, built once from the settings.
_v = settings.validation
stage = stage_service(app, ValidateTicks(
    router=Router(
        Validator(_v),
        catalog,
        AnomalyTracker(settings.anomalies, _v.anomaly_state_flush_seconds, anomaly_state)
        if _v.detect_anomalies else None,
        _v.quarantine_sources),
    breakers=SourceBreakers(_v.circuit_breaker_ratio, _v.circuit_breaker_window, _v.circuit_breaker_cooldown_seconds),
    send=send_all,
    emit=metrics.emit,
    kafka=settings.kafka,
    app_id=settings.worker.app_id,
    topics=[t.name for t in catalog.by_role("raw")],
    max_records=_v.batch_size,
))


@app.timer(5.0, name="check_stale_feeds")
async def check_stale_feeds() -> None:
    await stage.check_stale()
