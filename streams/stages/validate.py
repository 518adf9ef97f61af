"""Stage 2 — the validate stage (validate_ticks).

Reads: every raw.<source> topic in topics.yaml (bytes as the producer wrote them).
Writes: ticks.clean (canonical MarketDataPoint JSON, key = symbol) for valid records;
        ticks.rejected (original key, value, timestamp and headers + tickflow.* reason headers);
        ticks.anomalies (anomaly events) from the detectors (streams/anomalies/ via
        streams/stages/detect.py);
        a tick anomaly flags the clean record (`anomaly:<detector>`), or quarantines it to ticks.rejected
        (rule `anomaly.<detector>`) for the sources listed in validation.quarantine_sources; a verdict that
        comes one record later (details.follow_up) re-sends the record it names, flagged, as a newer revision
        when its kind is revisable (sinks/base.py REVISABLE_KINDS), and only as the anomaly event otherwise.

Bad data is caught per record and dead-lettered; nothing is dropped silently and the worker never dies
of a record. A source whose records are mostly rejected (a provider changed its format, a bad deploy) trips
its own circuit breaker: that source's partitions are paused, uncommitted, for a cool-down, and the other
sources go on (streams/rules.py SourceBreakers).

Delivery (kafka.exactly_once, default false): per batch and input partition, one Kafka transaction holds the
partition's outputs and its next offset (streams/stages/publish.py PartitionTransactions), so a consumer that
reads with isolation_level=read_committed (the write and archive stages do) sees each output exactly once, also
after a kill -9 anywhere in the batch. Each input partition has its own transactional producer, started (which
fences the partition's previous owner and ends its open transaction) before the partition's committed offset
is read. With exactly_once false: at-least-once, a batch's offsets committed after every output is
acknowledged (streams/stages/base.py says why this stage owns its commits); those acks come while the next batch
is fetched and validated, and its outputs are sent only after them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from sinks.base import REVISABLE_KINDS
from streams import contract, exactjson
from streams.app import app, settings
from streams.catalog import Catalog
from streams.errors import RejectedRecord
from streams.models import MarketDataPoint
from streams.rules import SourceBreakers, Validator
from streams.stages import metrics
from streams.stages.base import BatchStage, consumer_group, stage_service
from streams.stages.detect import AnomalyTracker, anomaly_state, event_for
from streams.stages.metrics import Emit, MetricsDelta, SourceDelta
from streams.stages.publish import Outgoing, PartitionTransactions, Rejection, Send, send_all
from streams.stages.topics import catalog

logger = logging.getLogger(__name__)

STAGE = "validate"
YIELD_EVERY = 200  # records between two pauses for the other tasks of the worker (the write stage first)


@functools.lru_cache(maxsize=256)
def _ingested_at(ms: int) -> datetime:
    """A producer timestamp as a datetime; records arrive in runs with the same millisecond, so remembered."""
    return datetime.fromtimestamp(ms / 1000.0, UTC)


def _published(kind: str, ms: int | None) -> tuple[float | None, list[tuple[str, bytes]]]:
    """streams/contract.py: a clean or anomaly record's Kafka timestamp is its event time, and it names its schema
    and content type in headers. Returns Outgoing's (timestamp, headers)."""
    return contract.outgoing_seconds(ms), contract.headers(kind)


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
        """One record's outputs (`route_run` of one record); `now`: the batch's wall clock."""
        return self.route_run([rec], source or self.source_of(rec.topic), delta, now)[0]

    def route_run(self, recs: Sequence[Any], source: str, delta: MetricsDelta, now: float | None = None
                  ) -> tuple[list[Outgoing], list[int]]:
        """A run of records of one source, in order -> their outputs, in order, and the positions in `recs` of
        the records dead-lettered for the source's circuit breaker (not the rows a producer could not read and sent
        as such, rule source.unreadable: they are counted, not judged). `now`: the batch's wall clock (for the
        detectors' liveness bookkeeping, and the clean records' future limit). What is the same for the whole
        run (the source's metrics, the counts, the settings) is done once: per record, one Python call fewer and
        no list of its own (bench/README.md, session 34)."""
        d = delta.of(source)
        d.processed += len(recs)
        check, anomalies = self.validator.check, self.anomalies
        clean_topic, event_time_ms, outgoing_seconds, headers = (
            self.clean_topic, contract.event_time_ms, contract.outgoing_seconds, contract.headers)
        out: list[Outgoing] = []
        rejected: list[int] = []
        unreadable: list[int] = []
        for i, rec in enumerate(recs):
            ms_in = rec.timestamp
            events: list[Outgoing] = []
            try:
                point = check(rec.value, source=source,
                              ingested_at=_ingested_at(ms_in) if ms_in and ms_in > 0 else None)
                quarantine: tuple[str, str] | None = None
                if anomalies is not None:
                    try:
                        found = anomalies.detect(point, now)
                    except Exception:  # a detector bug must not cost the record: pass it on unflagged, loudly
                        logger.exception("anomaly detectors failed on %s/%s", source, point.symbol)
                        d.count_rule("anomaly.internal_error")
                        found = []
                    if found:
                        events, quarantine = self.verdicts(found, point, source, d, now)
                if quarantine is None:
                    # `now` (the batch's clock) for the broker's future limit: a clean record is at most
                    # validation.future_tolerance_seconds ahead of it, the limit is 50 minutes ahead.
                    ms = event_time_ms(point.timestamp, now)
                    clean = Outgoing(clean_topic, point.symbol.encode(), point.to_json(), outgoing_seconds(ms),
                                     headers(contract.CLEAN))
                    if events:
                        out += events
                    out.append(clean)
                    continue
                (rule, error), exc_name = quarantine, "Anomaly"
            except RejectedRecord as rej:
                rule, error, exc_name = rej.rule, rej.reason, type(rej).__name__
            except Exception as exc:  # a bug in a rule must dead-letter the record, not kill the worker
                logger.exception("validator failed on %s[%d]@%d", rec.topic, rec.partition, rec.offset)
                rule, error, exc_name = "internal.error", repr(exc), type(exc).__name__
            rejected.append(i)
            if rule == "source.unreadable":  # the producer's own verdict, not this pipeline refusing good data
                unreadable.append(i)
            d.count_rule(rule)
            why = Rejection(STAGE, rule, error, exc_name, rec.topic, rec.partition, rec.offset, list(rec.headers or []))
            out += events
            out.append(Outgoing(self.rejected_topic, rec.key, rec.value,
                                ms_in / 1000.0 if ms_in and ms_in > 0 else None, why.headers()))
        d.rejected += len(rejected)
        d.valid += len(recs) - len(rejected)
        if unreadable:  # not the breaker's: a replayed file's thousands of rows it could not read (sent first) would
            # trip it at every batch, and the held partition never got past them (the source stayed paused for good)
            gone = set(unreadable)
            rejected = [i for i in rejected if i not in gone]
        return out, rejected

    def verdicts(self, found: list[Any], point: MarketDataPoint, source: str, d: SourceDelta,
                 now: float | None = None) -> tuple[list[Outgoing], tuple[str, str] | None]:
        """What the detectors found on a point: anomaly events to send, and (rule, reason) when the record is
        quarantined."""
        events: list[Outgoing] = []
        quarantine: tuple[str, str] | None = None
        for a in found:
            d.count_anomaly(a.detector)
            event = event_for(a, source)
            d.recent.append(
                {k: event[k] for k in ("detector", "symbol", "score", "threshold", "kind", "message", "detected_at")})
            events.append(Outgoing(self.anomalies_topic, point.symbol.encode(), exactjson.dumps(event, default=str),
                                   *_published(contract.ANOMALIES, contract.anomaly_time_ms(event, now))))
            if a.details.get("follow_up"):  # a verdict on an EARLIER record (confirmed by this one)
                if a.record.get("data_type") in REVISABLE_KINDS:  # its flagged copy is a newer revision
                    flag = "corporate_action.suspect" if a.kind == "corporate_action" else f"anomaly:{a.detector}"
                    rev = {**a.record, "flags": [*a.record.get("flags", ()), flag],
                           "ingested_at": _flagged_revision_time(a.record.get("ingested_at"))}
                    events.append(Outgoing(self.clean_topic, point.symbol.encode(), exactjson.dumps(rev),
                                           *_published(contract.CLEAN, contract.event_time_ms(rev["timestamp"], now))))
                # An immutable record (a tick, a trade) is not revised: the sink keeps its first write, so a copy
                # changes no row, and could be that first write. After a crash the detector state is ahead of the
                # committed offsets; the next owner would send the copy of a record it has not re-read yet, ahead
                # of an earlier, different version of the same key. The verdict is on ticks.anomalies.
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
            event = event_for(a, source)
            out.append(Outgoing(self.anomalies_topic, a.symbol.encode(), exactjson.dumps(event, default=str),
                                *_published(contract.ANOMALIES, contract.anomaly_time_ms(event, now))))
        return out, delta


def _flagged_revision_time(ingested_at: Any) -> str:
    """The revision time of a flagged copy of an earlier bar: one microsecond after the version it flags, so it
    replaces that version in the sink (the newer revision wins) but not a later revision of the same bar that the
    provider published meanwhile (its ingested_at is later still); with the clock's time the flagged copy would
    win over that later revision and bring back the older values."""
    if isinstance(ingested_at, str):
        try:
            ingested_at = datetime.fromisoformat(ingested_at)
        except ValueError:
            ingested_at = None
    if not isinstance(ingested_at, datetime):
        return datetime.now(UTC).isoformat()  # the version's time is unknown: the sink takes the flagged copy
    if ingested_at.tzinfo is None:
        ingested_at = ingested_at.replace(tzinfo=UTC)
    return (ingested_at + timedelta(microseconds=1)).isoformat()


class ValidateTicks(BatchStage):
    """validate_ticks: raw.* -> ticks.clean | ticks.rejected | ticks.anomalies."""

    stage = STAGE

    def __init__(self, *, router: Router, breakers: SourceBreakers, send: Send, emit: Emit,
                 transactions: PartitionTransactions | None = None, **kwargs: Any) -> None:
        """`transactions`: exactly-once (outputs and offsets in one transaction per input partition); None:
        at-least-once through `send`."""
        super().__init__(**kwargs)
        self.router = router
        self.breakers = breakers
        self.send = send
        self.emit = emit
        self.transactions = transactions
        self._outputs: dict[TopicPartition, list[Outgoing]] = {}

    async def process(self, records: list[Any]) -> set[TopicPartition] | None:
        runs: dict[TopicPartition, list[Any]] = {}
        for rec in records:
            runs.setdefault(TopicPartition(rec.topic, rec.partition), []).append(rec)
        return await self.process_batch(runs)

    async def process_batch(self, batch: dict[TopicPartition, list[Any]]) -> set[TopicPartition] | None:
        """The batch as the consumer hands it, partition by partition (in order): each partition's records are
        routed as runs (`Router.route_run`)."""
        delta = MetricsDelta()
        router, breakers = self.router, self.breakers
        out_by_tp: dict[TopicPartition, list[Outgoing]] = {}
        now = time.time()
        started = time.perf_counter()
        budget, total = YIELD_EVERY, 0
        for tp in sorted(batch):
            recs = batch[tp]
            source = router.source_of(tp.topic)
            breaker = breakers.breaker(source)
            out = out_by_tp.setdefault(tp, [])
            done = 0
            while done < len(recs):
                if budget == 0:
                    # A batch is ~100 ms of CPU; without a pause the write stage (same event loop) waits that long
                    # at each of its awaits, falls behind, and the committed-rows rate drops to half the validated
                    # rate.
                    await asyncio.sleep(0)
                    budget = YIELD_EVERY
                run = recs[done:done + budget]
                done += len(run)
                budget -= len(run)
                routed, rejected = router.route_run(run, source, delta, now)
                breaker.record_run(len(run), rejected)
                out += routed
            total += len(recs)
        self.observe_cost(time.perf_counter() - started, total)
        for source in breakers.tripped():
            opened = breakers.trip(source, delta.of(source).rules)
            logger.critical(
                "circuit breaker: source %s: %d of its last %d records were rejected (limit %.0f%%); pausing its "
                "partitions for %.0f s instead of dead-lettering them (the other sources go on). Rules of the batch "
                "that tripped it: %s",
                source, opened.rejected, opened.window, breakers.ratio * 100, breakers.cooldown,
                ", ".join(f"{k} {v}" for k, v in opened.rules.items()))
        held = {s for s in {router.source_of(tp.topic) for tp in out_by_tp} if breakers.is_open(s)}
        for source in held:  # nothing of these is sent, counted or committed: it is read again after the pause
            delta.drop(source)
        held_tps = {tp for tp in out_by_tp if router.source_of(tp.topic) in held}
        if router.anomalies is not None:
            router.anomalies.save()
        if self.transactions is None:
            # The acks come while the next batch is fetched and validated (BatchStage.send_behind): a drain no
            # longer stands still for each batch's round trip to the brokers.
            messages = [m for tp, msgs in out_by_tp.items() if tp not in held_tps for m in msgs]
            await self.settle()
            if messages:
                self.send_behind(self.send(messages))
        else:  # sent in the partitions' transactions, with their offsets (commit_offsets)
            self._outputs = {tp: msgs for tp, msgs in out_by_tp.items() if tp not in held_tps}
        await self.emit(delta)
        return held_tps or None

    async def commit_offsets(self, consumer: AIOKafkaConsumer, batch: dict[TopicPartition, list[Any]],
                             offsets: dict[TopicPartition, int]) -> None:
        """Exactly-once: per input partition, its outputs and next offset in one transaction (in parallel). A
        partition whose transaction did not commit (fenced, or no producer) is rewound to the batch's first record
        and claimed again (a new producer fences whoever wrote for it; its committed offset is read again)."""
        if self.transactions is None:
            await super().commit_offsets(consumer, batch, offsets)
            return
        outputs, self._outputs = self._outputs, {}
        txns = self.transactions
        tps = sorted(offsets)
        done = await asyncio.gather(*(txns.commit(tp, outputs.get(tp, []), offsets[tp], self._before_commit)
                                      for tp in tps))
        lost = {tp for tp, ok in zip(tps, done, strict=True) if not ok} & self.assignment()
        if lost:
            self.commit_failures += len(lost)
            for tp in lost:
                consumer.seek(tp, batch[tp][0].offset)
            await self.claim(lost)

    def _before_commit(self) -> None:
        self.reach_fault(f"{self.stage}.before_offset_commit")

    async def claim(self, tps: set[TopicPartition]) -> None:
        """Become the only writer for `tps`: a new transactional producer per partition (fencing the previous
        owner, whose open transaction the broker ends), THEN their committed offsets, read again (aiokafka read
        them as the assignment came, perhaps before a zombie's last transaction ended): each becomes the
        partition's floor, and whatever was fetched below it is dropped, never processed.

        No seek to that offset: the fetcher starts at the offset aiokafka read, which is never above it, so the
        floor alone skips what the zombie committed since. A seek did harm: a batch fetched while this ran (the
        fetcher starts on assignment, before the listener returns) was processed, then the seek moved the
        position back under it and the same records were read and sent again, a second committed copy (a
        dead letter twice in the exactly-once kill -9 test, about one run in three)."""
        consumer, txns = self.consumer, self.transactions
        if consumer is None or txns is None or not tps:
            return
        await txns.close(tps)
        try:
            await txns.open(tps)
            committed = await asyncio.gather(*(consumer.committed(tp) for tp in sorted(tps)))
        except Exception as exc:  # a partition without a producer is claimed again after its next batch
            logger.warning("%s: could not claim %d partitions (%r); retrying with their next batch", self.stage,
                           len(tps), exc)
            await txns.close(tps)
            await asyncio.sleep(1.0)
            return
        for tp, offset in zip(sorted(tps), committed, strict=True):
            if offset is None:
                self.floor.pop(tp, None)
            else:
                self.floor[tp] = offset

    def resumable(self) -> set[TopicPartition]:
        due = self.breakers.due()
        if not due:
            return set()
        logger.warning("circuit breaker: consuming %s again after the %.0f s cool-down", ", ".join(due),
                       self.breakers.cooldown)
        return {tp for tp in self.assignment() if self.router.source_of(tp.topic) in due}

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        if self.transactions is not None:
            async with self.batch_lock:  # no batch of these partitions before their producers fenced the old owner
                await self.claim(assigned)
        # A partition of an open source that comes (back) to us stays paused until the cool-down ends.
        paused = {tp for tp in assigned if self.breakers.is_open(self.router.source_of(tp.topic))}
        if paused and self.consumer is not None:
            self.consumer.pause(*paused)

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        # The detector state of the symbols we may lose is saved while we still own them.
        if self.router.anomalies is not None:
            self.router.anomalies.save(force=True)
            self.router.anomalies.forget()
        if self.transactions is not None:  # the next owner's producers fence these anyway; close ours cleanly
            await self.transactions.close(revoked)
        for tp in revoked:
            self.floor.pop(tp, None)

    async def on_stop(self) -> None:
        await super().on_stop()
        if self.transactions is not None:
            await self.transactions.close()

    async def check_stale(self, now: float | None = None) -> None:
        events, delta = self.router.stale_events(now)
        if events:
            await self.send(events)
            await self.emit(delta)

    def status(self) -> dict[str, Any]:
        now = self.breakers.clock()
        st = super().status()
        txns = self.transactions
        st["exactly_once"] = txns is not None
        if txns is not None:
            st["transactions"] = {"producers": len(txns.producers), "fenced": txns.fenced, "aborted": txns.aborted}
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
    transactions=PartitionTransactions(settings.kafka, consumer_group(settings.worker.app_id, STAGE),
                                       f"tickflow-{STAGE}") if settings.kafka.exactly_once else None,
    kafka=settings.kafka,
    app_id=settings.worker.app_id,
    topics=[t.name for t in catalog.by_role("raw")],
    max_records=_v.batch_size,
    latency_budget_ms=_v.batch_latency_budget_ms,
    coordinator_patience=settings.worker.consumer_replace_after_seconds,
    commit_interval_ms=settings.worker.commit_interval_ms,
), enabled=STAGE in settings.worker.stages)


@app.timer(5.0, name="check_stale_feeds")
async def check_stale_feeds() -> None:
    await stage.check_stale()
