"""The pipeline's metrics: this worker's own counters, and one cluster-wide Faust table written by one Faust
agent (record_metrics).

The stages hand each batch's MetricsDelta to `emit`, which costs no I/O: it is folded into this worker's own
counters (`local`, since the process started: GET /metrics exports them with a `worker` label, so summing
over pods is right) and merged into one pending delta that the `send_metrics` timer sends every
SEND_EVERY_SECONDS. Sending one message per batch was the self-test's latency problem: at 1,000 points/s the
stages run ~75 small batches a second each, and every one cost a Kafka send, a fetch by the agent, a fold and a
changelog write of the whole per-source value; on this 2-core machine under load that work queued in front of
the records (README, Operations).

Reads: the internal `<app id>-metrics` topic (the merged deltas of every worker). Writes: the
`pipeline_metrics` table (changelog-backed, so counts survive restarts and rebalances) and periodic snapshots
into PostgreSQL's data_quality_metrics. The topic has one partition, so one worker owns the whole table; the
web views on other workers proxy to it (app.table_route).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import faust
import orjson
from faust.types import TP

from streams import histogram
from streams.app import app, internal_topic_configs, settings
from streams.stages.base import stop_hooks
from streams.stages.db import writer as shared_writer

logger = logging.getLogger(__name__)

COUNTERS = ("processed", "valid", "rejected", "written", "duplicates")
RATE_WINDOW_SECONDS = 10.0
RECENT_ANOMALIES = 20
# How often a worker sends its merged deltas to the table: the table's (and /pipeline/metrics') delay.
SEND_EVERY_SECONDS = 0.5
TAG = "@"  # a message's (sender, sequence number); no source is named so (a Kafka topic name cannot hold "@")
SENDERS = "senders"  # in a table value: sender -> [its last folded sequence number, when]
SENDER_TTL = 7 * 86400.0

metrics_topic = app.topic(
    f"{settings.worker.app_id}-metrics",
    internal=True,
    partitions=1,
    key_type=bytes,
    value_type=bytes,
    key_serializer="raw",
    value_serializer="raw",
    config=internal_topic_configs(settings),
)
metrics_table = app.Table(
    "pipeline_metrics",
    default=None,
    partitions=1,
    schema=faust.Schema(key_serializer="json", value_serializer="json"),
    extra_topic_configs=internal_topic_configs(settings),
    help="Per-source counters, rejects by rule, latency histogram, throughput samples.",
)


@dataclass(slots=True)
class SourceDelta:
    """What one batch adds to one source's metrics. Sent as a JSON object (`to_dict`), folded into the table."""

    processed: int = 0
    valid: int = 0
    rejected: int = 0
    written: int = 0
    duplicates: int = 0
    rules: dict[str, int] = field(default_factory=dict)
    latency: list[int] = field(default_factory=histogram.empty)
    latency_sum_ms: float = 0.0
    latency_n: int = 0
    # The smallest and largest latency seen, which bound the histogram's interpolated percentiles.
    latency_min_ms: float | None = None
    latency_max_ms: float | None = None
    anomalies: dict[str, int] = field(default_factory=dict)
    recent: list[dict[str, Any]] = field(default_factory=list)

    def count_rule(self, rule: str) -> None:
        self.rules[rule] = self.rules.get(rule, 0) + 1

    def count_anomaly(self, detector: str) -> None:
        self.anomalies[detector] = self.anomalies.get(detector, 0) + 1

    def observe_latencies(self, ms: list[float]) -> None:
        histogram.observe_many(self.latency, ms)
        self.latency_sum_ms += sum(ms)
        self.latency_n += len(ms)
        self.latency_min_ms, self.latency_max_ms = histogram.extend_range(self.latency_min_ms, self.latency_max_ms, ms)

    def merge(self, other: SourceDelta) -> None:
        """Add another delta into this one (several batches sent as one message)."""
        for c in COUNTERS:
            setattr(self, c, getattr(self, c) + getattr(other, c))
        for rule, n in other.rules.items():
            self.rules[rule] = self.rules.get(rule, 0) + n
        for detector, n in other.anomalies.items():
            self.anomalies[detector] = self.anomalies.get(detector, 0) + n
        self.latency = histogram.merge(self.latency, other.latency)
        self.latency_sum_ms += other.latency_sum_ms
        self.latency_n += other.latency_n
        self.latency_min_ms, self.latency_max_ms = histogram.extend_range(
            self.latency_min_ms, self.latency_max_ms,
            [v for v in (other.latency_min_ms, other.latency_max_ms) if v is not None])
        self.recent = (self.recent + other.recent)[-RECENT_ANOMALIES:]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {c: getattr(self, c) for c in COUNTERS}
        d.update(rules=self.rules, latency=self.latency, latency_sum_ms=self.latency_sum_ms, latency_n=self.latency_n)
        if self.latency_max_ms is not None:
            d.update(latency_min_ms=self.latency_min_ms, latency_max_ms=self.latency_max_ms)
        if self.anomalies:
            d["anomalies"] = self.anomalies
        if self.recent:
            d["recent"] = self.recent
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SourceDelta:
        return cls(**{f: d[f] for f in cls.__dataclass_fields__ if f in d})


@dataclass(slots=True)
class MetricsDelta:
    """One batch's metrics, per source: what validate, write and the stale-feed check send to the metrics
    stage (one message per batch, whatever the number of records)."""

    sources: dict[str, SourceDelta] = field(default_factory=dict)

    def of(self, source: str) -> SourceDelta:
        d = self.sources.get(source)
        if d is None:
            d = self.sources[source] = SourceDelta()
        return d

    def drop(self, source: str) -> None:
        """Forget a source's part (its records will be processed again, and counted then)."""
        self.sources.pop(source, None)

    def merge(self, other: MetricsDelta) -> None:
        for src, d in other.sources.items():
            self.of(src).merge(d)

    def __bool__(self) -> bool:
        return bool(self.sources)

    def to_json(self, tag: tuple[str, int] | None = None) -> bytes:
        """`tag`: (sender, sequence number), under the key TAG, so the table folds each message once."""
        doc: dict[str, Any] = {src: d.to_dict() for src, d in self.sources.items()}
        if tag is not None:
            doc[TAG] = list(tag)
        return orjson.dumps(doc)

    @classmethod
    def from_json(cls, raw: bytes) -> MetricsDelta:
        return cls({src: SourceDelta.from_dict(d) for src, d in orjson.loads(raw).items() if src != TAG})


Emit = Callable[[MetricsDelta], Awaitable[None]]


class WorkerMetrics:
    """This worker's share: `values` (per source, in the table's format: counts since this process started,
    what its /metrics exports) and `pending` (merged deltas not yet sent to the cluster table)."""

    def __init__(self) -> None:
        self.values: dict[str, dict[str, Any]] = {}
        self.pending = MetricsDelta()
        self.sender = uuid.uuid4().hex[:16]  # this process, in the tags of what it sends
        self.sent = 0  # the sequence number of its last message

    def add(self, delta: MetricsDelta, now: float) -> None:
        for src, d in delta.sources.items():
            self.values[src] = fold(self.values.get(src), d, now)
        self.pending.merge(delta)

    def take(self) -> MetricsDelta:
        out, self.pending = self.pending, MetricsDelta()
        return out

    def give_back(self, delta: MetricsDelta) -> None:
        """A send that failed: its counts go out with the next one instead of being lost."""
        delta.merge(self.pending)
        self.pending = delta


local = WorkerMetrics()


class PauseFence:
    """Whether this worker may still write the table, judged from the event loop's own clock.

    A worker whose loop stood still for longer than the group's session timeout (SIGSTOP, a frozen VM, a stalled
    host) sent no heartbeat meanwhile, so the broker has already given its partitions to another member; but it
    learns that only at its next heartbeat. In between, its agent went on folding the deltas it had fetched
    before the pause into its stale copy of the table and wrote them to the changelog, after the new owner's
    newer values; whoever restored the table next (the woken worker, given the partition back) took that stale
    value as the last word and the counts went back (CI: the sink's duplicate count fell from over 93 to 11 in
    test_paused_worker_does_not_lose_or_double_rows). The deltas it skips are not lost: its commits are
    refused too, so the partition's owner reads them. The generation the worker was in before the pause is the
    dead one; a new generation (the worker rejoined) is admitted again."""

    def __init__(self, session_timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.session_timeout = session_timeout
        self._clock = clock
        self._seen_at = clock()
        self._seen_generation: int | None = None
        self.dead_generation: int | None = None

    def admits(self, generation: int) -> bool:
        """Called by each table write and by a timer: False while `generation` is one the worker lost in a pause."""
        now = self._clock()
        if now - self._seen_at > self.session_timeout and self._seen_generation is not None:
            if self.dead_generation != self._seen_generation:
                logger.warning("the event loop stood still %.1f s, past the group's %.0f s session timeout: "
                               "generation %d is lost, the metrics table is not written until the worker "
                               "rejoins", now - self._seen_at, self.session_timeout, self._seen_generation)
            self.dead_generation = self._seen_generation
        self._seen_at, self._seen_generation = now, generation
        return generation != self.dead_generation


pause_fence = PauseFence(app.conf.broker_session_timeout)


async def emit(delta: MetricsDelta, *, worker: WorkerMetrics | None = None) -> None:
    """Count one batch's delta in this worker (`worker`: this process's `local` unless given) and queue it for
    the table; no I/O (send_metrics sends)."""
    if delta:
        (worker or local).add(delta, time.time())


async def send_pending(worker: WorkerMetrics, send: Callable[[bytes], Awaitable[Any]]) -> bool:
    """Send a worker's merged pending delta as one message; on failure keep it for the next try."""
    delta = worker.take()
    if not delta:
        return False
    worker.sent += 1
    try:
        await send(delta.to_json((worker.sender, worker.sent)))
    except Exception:
        worker.give_back(delta)
        raise
    return True


def fold(current: dict[str, Any] | None, delta: SourceDelta, now: float) -> dict[str, Any]:
    """Add a delta to a table value (a plain dict: the table's changelog format). Pure, so it is tested
    without Faust."""
    cur = current or {**SourceDelta().to_dict(), "samples": []}
    out: dict[str, Any] = {c: cur.get(c, 0) + getattr(delta, c) for c in COUNTERS}
    rules = dict(cur.get("rules", {}))
    for rule, n in delta.rules.items():
        rules[rule] = rules.get(rule, 0) + n
    out["rules"] = rules
    out["latency"] = histogram.merge(cur.get("latency", histogram.empty()), delta.latency)
    out["latency_sum_ms"] = cur.get("latency_sum_ms", 0.0) + delta.latency_sum_ms
    out["latency_n"] = cur.get("latency_n", 0) + delta.latency_n
    least, most = histogram.extend_range(
        cur.get("latency_min_ms"), cur.get("latency_max_ms"),
        [v for v in (delta.latency_min_ms, delta.latency_max_ms) if v is not None])
    if most is not None:
        out["latency_min_ms"], out["latency_max_ms"] = least, most
    # How many of the counted latencies the range covers: a value folded by an older version (or a delta from an
    # older worker, in a rolling upgrade) counted some without one, and those may lie outside it.
    out["latency_range_n"] = cur.get("latency_range_n", 0) + (delta.latency_n if delta.latency_max_ms is not None
                                                               else 0)
    samples = [s for s in cur.get("samples", []) if now - s[0] <= 6 * RATE_WINDOW_SECONDS]
    if not samples or now - samples[-1][0] >= 1.0:
        samples.append([now, out["written"]])
    else:
        samples[-1] = [samples[-1][0], out["written"]]
    out["samples"] = samples
    anomalies = dict(cur.get("anomalies", {}))
    for detector, n in delta.anomalies.items():
        anomalies[detector] = anomalies.get(detector, 0) + n
    out["anomalies"] = anomalies
    out["recent"] = (cur.get("recent", []) + delta.recent)[-RECENT_ANOMALIES:]
    return out


def throughput(value: dict[str, Any], now: float) -> float:
    """Rows written per second over the last RATE_WINDOW_SECONDS (decays to 0 when writes stop)."""
    samples = value.get("samples") or []
    if not samples:
        return 0.0
    start = now - RATE_WINDOW_SECONDS
    base = samples[0]
    for s in samples:
        if s[0] <= start:
            base = s
    written_now = value.get("written", 0)
    span = max(now - base[0], 1.0)
    return max(0.0, (written_now - base[1]) / span)


def snapshot(value: dict[str, Any], now: float) -> dict[str, Any]:
    lat = value.get("latency", histogram.empty())
    n = value.get("latency_n", 0)
    least, most = _range(value)
    return {
        **{c: value.get(c, 0) for c in COUNTERS},
        "rejected_by_rule": dict(value.get("rules", {})),
        "anomalies_by_detector": dict(value.get("anomalies", {})),
        "throughput_per_sec": round(throughput(value, now), 3),
        "avg_latency_ms": round(value.get("latency_sum_ms", 0.0) / n, 3) if n else None,
        "p50_latency_ms": _round(histogram.percentile(lat, 0.50, least, most)),
        "p95_latency_ms": _round(histogram.percentile(lat, 0.95, least, most)),
        "p99_latency_ms": _round(histogram.percentile(lat, 0.99, least, most)),
    }


def _range(value: dict[str, Any]) -> tuple[float | None, float | None]:
    """The smallest and largest latency of a table value, when they bound every latency it counted."""
    if value.get("latency_range_n", 0) != value.get("latency_n", 0):
        return None, None
    return value.get("latency_min_ms"), value.get("latency_max_ms")


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def summary(values: dict[str, dict[str, Any]], now: float, queue_size: int | None) -> dict[str, Any]:
    """The brief's keys over all sources, plus the per-source snapshots."""
    per_source = {src: snapshot(v, now) for src, v in sorted(values.items())}
    total_lat = histogram.empty()
    lat_sum, lat_n = 0.0, 0
    least: float | None = None
    most: float | None = None
    bounded = True  # every source's range covers all its latencies
    for v in values.values():
        total_lat = histogram.merge(total_lat, v.get("latency", histogram.empty()))
        lat_sum += v.get("latency_sum_ms", 0.0)
        lat_n += v.get("latency_n", 0)
        lo, hi = _range(v)
        bounded &= hi is not None or not v.get("latency_n", 0)
        least, most = histogram.extend_range(least, most, [x for x in (lo, hi) if x is not None])
    if not bounded:
        least = most = None
    tot = {c: sum(s[c] for s in per_source.values()) for c in COUNTERS}
    return {
        "total_processed": tot["processed"],
        "valid_points": tot["valid"],
        "rejected_points": tot["rejected"],
        "written_points": tot["written"],
        "duplicate_points": tot["duplicates"],
        "throughput_per_sec": round(sum(s["throughput_per_sec"] for s in per_source.values()), 3),
        # 0.0 before the first row, as get_metrics() gives them: the brief's frontend formats them as numbers
        # (`avg_latency_ms.toFixed(2)`); the per-source snapshots below (and the stored rows) keep null there.
        "avg_latency_ms": round(lat_sum / lat_n, 3) if lat_n else 0.0,
        "p50_latency_ms": _round(histogram.percentile(total_lat, 0.50, least, most)) or 0.0,
        "p95_latency_ms": _round(histogram.percentile(total_lat, 0.95, least, most)) or 0.0,
        "p99_latency_ms": _round(histogram.percentile(total_lat, 0.99, least, most)) or 0.0,
        "queue_size": queue_size,
        "anomalies_by_detector": {src: s["anomalies_by_detector"] for src, s in per_source.items()},
        "recent_anomalies": sorted((a for v in values.values() for a in v.get("recent", [])),
                                   key=lambda a: a.get("detected_at", 0))[-RECENT_ANOMALIES:],
        "sources": per_source,
    }


def fold_message(raw: bytes, get: Callable[[str], dict[str, Any] | None], now: float) -> dict[str, dict[str, Any]]:
    """One message of the metrics topic -> the table's new values (per source). A message is read again after a
    rebalance (its offset not yet committed, the folds of it already in the table's changelog): the per-source
    value keeps each sender's last sequence number (SENDERS), and a message not newer than it is not folded
    again (a handover under load counted 1,743 more points than were written). Senders silent for SENDER_TTL
    seconds are forgotten. A message without a tag (an older worker's, in a rolling upgrade) is folded."""
    doc = orjson.loads(raw)
    tag = doc.pop(TAG, None)
    out: dict[str, dict[str, Any]] = {}
    for source, d in doc.items():
        current = get(source)
        senders = dict((current or {}).get(SENDERS) or {})
        if tag is not None:
            sender, seq = str(tag[0]), int(tag[1])
            if sender in senders and senders[sender][0] >= seq:
                continue  # folded before the rebalance
            senders[sender] = [seq, now]
        value = fold(current, SourceDelta.from_dict(d), now)
        value[SENDERS] = {k: v for k, v in senders.items() if now - v[1] <= SENDER_TTL}
        out[source] = value
    return out


@app.agent(metrics_topic, concurrency=1)
async def record_metrics(stream: Any) -> None:
    """The only writer of metrics_table."""
    async for raw in stream:
        if not pause_fence.admits(app.consumer_generation_id):
            continue  # a zombie's copy: the partition's new owner folds this delta
        try:
            for source, value in fold_message(raw, metrics_table.get, time.time()).items():
                metrics_table[source] = value
        except Exception:  # a malformed delta must not stop the metrics
            logger.exception("dropping malformed metrics message %r", raw[:200])


async def _to_topic(raw: bytes) -> None:
    await metrics_topic.send(key=b"batch", value=raw)


async def flush(worker: WorkerMetrics | None = None, send: Callable[[bytes], Awaitable[Any]] = _to_topic) -> None:
    """A worker's merged deltas (`local` unless given) to the table as one message, by `send` (the metrics
    topic, on the idempotent producer, unless given)."""
    try:
        await send_pending(worker or local, send)
    except Exception as exc:  # kept for the next interval
        logger.warning("could not send metrics (kept for the next try): %r", exc)


@app.timer(SEND_EVERY_SECONDS, name="send_metrics")
async def send_metrics() -> None:
    pause_fence.admits(app.consumer_generation_id)  # the fence's clock, also when no delta arrives
    await flush()


@app.on_before_shutdown.connect
async def _flush_on_stop(sender: object = None, **kwargs: object) -> None:
    """A graceful stop sends what the last interval counted, rather than losing up to SEND_EVERY_SECONDS of it."""
    await flush()


# ... and again when each batch stage has stopped: its last batch finishes after on_before_shutdown.
stop_hooks.append(flush)


def table_values() -> dict[str, dict[str, Any]]:
    """The table's sources and their values. Not TAG: an older worker owning the table during a rolling upgrade
    reads a message's tag as a source of that name, and keeps an empty value for it."""
    return {k: v for k, v in metrics_table.items() if v and k != TAG}


def owns_table() -> bool:
    """Whether this worker holds the table's one partition (exactly one worker does, outside a rebalance)."""
    return TP(metrics_table.changelog_topic.get_topic_name(), 0) in app.assignor.assigned_actives()


@app.timer(settings.worker.metrics_flush_seconds, name="store_metrics")
async def store_metrics() -> None:
    """Snapshot the table into data_quality_metrics. Only the worker that owns the table's one partition
    holds its values (no standbys). owns_table() is this worker's own view, though: a worker woken from a
    pause (SIGSTOP, a frozen VM) still believes it owns the table until its consumer rejoins, and meanwhile
    stored its stale counts between the new owner's, so the newest snapshot could go back (measured: three
    such rows in one run of test_paused_worker_does_not_lose_or_double_rows). The write is fenced: a
    snapshot behind the newest stored one of this app is not stored (sinks/postgres.py write_metrics)."""
    owner = owns_table() and pause_fence.admits(app.consumer_generation_id)
    values = table_values() if owner else {}
    if not values:
        return
    now = time.time()
    try:
        writer = await shared_writer.get()
        stale = await writer.write_metrics(f"{app.conf.id}@{app.conf.canonical_url}",
                                           {k: snapshot(v, now) for k, v in values.items()}, cluster=app.conf.id)
    except Exception as exc:  # the database may be down; the table keeps counting
        logger.warning("could not store metrics snapshot: %r", exc)
        return
    if stale:
        logger.info("metrics snapshot not stored for %s: behind the newest one another worker stored (this "
                    "worker's copy of the table is stale: it was paused, or a rebalance is moving the table)",
                    ", ".join(sorted(stale)))
