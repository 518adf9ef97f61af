import asyncio

import orjson
import pytest

from streams import histogram
from streams.stages.metrics import MetricsDelta, PauseFence, SourceDelta, fold, summary, throughput


def delta(**kw: int) -> SourceDelta:
    return SourceDelta(**kw)


def test_histogram_percentiles() -> None:
    counts = histogram.empty()
    histogram.observe_many(counts, [1.0] * 50 + [8.0] * 45 + [45.0] * 5)
    assert histogram.percentile(counts, 0.5) <= 1.0
    assert 7.5 < histogram.percentile(counts, 0.95) <= 10
    assert 40 < histogram.percentile(counts, 0.99) <= 50
    assert histogram.percentile(histogram.empty(), 0.5) is None


def test_a_backlog_of_minutes_is_not_reported_as_one_minute() -> None:
    # After an outage rows land minutes late: their p99 must say minutes, not the old last bound (60 s).
    counts = histogram.empty()
    histogram.observe_many(counts, [420_000.0] * 100)  # 7 minutes
    assert 300_000 < histogram.percentile(counts, 0.99) <= 600_000
    histogram.observe_many(counts, [5 * 3_600_000.0] * 10_000)  # beyond the last bound: reported as it
    assert histogram.percentile(counts, 0.99) == 3_600_000


def test_fold_adds_counts_rules_and_latency() -> None:
    d1 = delta(processed=10, valid=9, rejected=1)
    d1.count_rule("schema.not_json")
    d2 = delta(written=9)
    d2.observe_latencies([5.0] * 9)
    v = fold(fold(None, d1, 100.0), d2, 100.5)
    assert (v["processed"], v["valid"], v["rejected"], v["written"]) == (10, 9, 1, 9)
    assert v["rules"] == {"schema.not_json": 1}
    s = summary({"sim": v}, 100.5, queue_size=3)
    assert s["total_processed"] == 10 and s["rejected_points"] == 1 and s["queue_size"] == 3
    assert s["avg_latency_ms"] == 5.0
    assert s["sources"]["sim"]["rejected_by_rule"] == {"schema.not_json": 1}


def test_delta_travels_as_the_same_json_objects_as_before() -> None:
    """The metrics topic's messages keep their shape ({source: {counters, rules, latency...}}), so a worker
    of the previous version folds them, and the table's values do not change."""
    d = MetricsDelta()
    d.of("sim").processed += 3
    d.of("sim").count_rule("price.missing")
    d.of("sim").count_anomaly("zscore")
    d.of("fh").observe_latencies([2.0, 4.0])
    wire = orjson.loads(d.to_json())
    assert set(wire) == {"sim", "fh"}
    assert wire["sim"]["processed"] == 3 and wire["sim"]["rules"] == {"price.missing": 1}
    assert wire["sim"]["anomalies"] == {"zscore": 1} and "anomalies" not in wire["fh"]
    assert wire["fh"]["latency_sum_ms"] == 6.0 and wire["fh"]["latency_n"] == 2 and sum(wire["fh"]["latency"]) == 2
    back = MetricsDelta.from_json(d.to_json())
    assert back == d
    d.drop("sim")
    assert set(d.sources) == {"fh"} and not MetricsDelta()


def test_throughput_over_window_and_decay() -> None:
    v = None
    for t in range(0, 21):
        v = fold(v, delta(written=100), 1000.0 + t)
    assert 95 <= throughput(v, 1020.0) <= 105
    assert throughput(v, 1040.0) == 0.0


def test_stage_is_stuck_only_with_partitions_lag_and_no_progress() -> None:
    from streams.settings import KafkaSettings
    from streams.stages.base import BatchStage

    class Fake(BatchStage):
        stage = "fake-stuck"

        def assignment(self):  # type: ignore[no-untyped-def]
            return {("t", 0)}

    s = Fake(kafka=KafkaSettings(), app_id="t", topics=["t"])
    s.started_at, s.last_batch_at = 1000.0, None
    assert not s.stuck(lag=10, now=1100.0, after=300)
    assert s.stuck(lag=10, now=1400.0, after=300)
    assert not s.stuck(lag=0, now=1400.0, after=300)
    s.last_batch_at = 1350.0
    assert not s.stuck(lag=10, now=1400.0, after=300)


# ------------------------------------------------------------------ this worker's counts, one send per interval


def test_merge_adds_every_part_of_a_delta() -> None:
    a = delta(processed=3, valid=2, rejected=1, written=2)
    a.count_rule("schema.missing")
    a.count_anomaly("spike")
    a.observe_latencies([1.0, 2.0])
    a.recent.append({"detector": "spike"})
    b = delta(processed=4, valid=4, written=3, duplicates=1)
    b.count_rule("schema.missing")
    b.count_rule("quote.crossed")
    b.observe_latencies([40.0])
    a.merge(b)
    assert (a.processed, a.valid, a.rejected, a.written, a.duplicates) == (7, 6, 1, 5, 1)
    assert a.rules == {"schema.missing": 2, "quote.crossed": 1} and a.anomalies == {"spike": 1}
    assert sum(a.latency) == a.latency_n == 3 and a.latency_sum_ms == 43.0
    assert a.recent == [{"detector": "spike"}]


def test_worker_metrics_counts_locally_and_sends_one_merged_delta() -> None:
    from streams.stages.metrics import WorkerMetrics, send_pending

    w = WorkerMetrics()
    for i in range(50):  # 50 batches of two sources
        d = MetricsDelta()
        d.of("simulated").processed += 10
        d.of("simulated").observe_latencies([5.0] * 10)
        d.of("finnhub").written += 1
        w.add(d, 100.0 + i * 0.01)
    assert w.values["simulated"]["processed"] == 500 and w.values["finnhub"]["written"] == 50
    assert w.values["simulated"]["latency_n"] == 500
    sent: list[bytes] = []

    async def send(raw: bytes) -> None:
        sent.append(raw)

    assert asyncio.run(send_pending(w, send)) is True
    assert len(sent) == 1
    got = MetricsDelta.from_json(sent[0])
    assert got.sources["simulated"].processed == 500 and got.sources["finnhub"].written == 50
    assert got.sources["simulated"].latency_n == 500
    assert asyncio.run(send_pending(w, send)) is False and len(sent) == 1  # nothing new: nothing sent
    assert w.values["simulated"]["processed"] == 500  # this worker's counts stay (they are not deltas)


def test_a_failed_send_keeps_the_counts_for_the_next() -> None:
    from streams.stages.metrics import WorkerMetrics, send_pending

    w = WorkerMetrics()
    d = MetricsDelta()
    d.of("simulated").processed = 7
    w.add(d, 1.0)

    async def broken(raw: bytes) -> None:
        raise RuntimeError("broker away")

    with pytest.raises(RuntimeError):
        asyncio.run(send_pending(w, broken))
    d2 = MetricsDelta()
    d2.of("simulated").processed = 3
    w.add(d2, 2.0)
    sent: list[bytes] = []

    async def send(raw: bytes) -> None:
        sent.append(raw)

    asyncio.run(send_pending(w, send))
    assert MetricsDelta.from_json(sent[0]).sources["simulated"].processed == 10


def test_emit_sends_nothing_per_batch() -> None:
    """The stages' emit is I/O-free: 200 batches cost no Kafka message until the timer sends one."""
    from streams.stages import metrics

    calls: list[bytes] = []
    worker = metrics.WorkerMetrics()

    async def fake_send(raw: bytes) -> None:
        calls.append(raw)

    async def run() -> None:
        for _ in range(200):
            d = MetricsDelta()
            d.of("simulated").processed += 5
            await metrics.emit(d, worker=worker)
        assert calls == []
        await metrics.flush(worker, fake_send)

    asyncio.run(run())
    assert len(calls) == 1 and MetricsDelta.from_json(calls[0]).sources["simulated"].processed == 1000
    assert worker.values["simulated"]["processed"] == 1000
    assert "simulated" not in metrics.local.values  # the process's own counters were left alone


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_pause_fence_refuses_the_generation_lost_in_a_pause_until_the_worker_rejoins() -> None:
    clock = _Clock()
    fence = PauseFence(30.0, clock)
    for _ in range(3):  # a live worker: ticks well inside the session timeout
        clock.now += 29.0
        assert fence.admits(4)
    clock.now += 31.0  # stood still past the session timeout: generation 4 is gone
    assert not fence.admits(4)
    clock.now += 0.1
    assert not fence.admits(4), "still the dead generation: refused until the worker rejoins"
    assert fence.admits(5)
    clock.now += 0.5
    assert fence.admits(5)


def test_pause_fence_blames_the_generation_before_the_pause_not_the_one_after() -> None:
    """A rejoin that completed before the first check after the pause: the new generation is live."""
    clock = _Clock()
    fence = PauseFence(30.0, clock)
    assert fence.admits(4)
    clock.now += 40.0
    assert fence.admits(5)
    assert fence.dead_generation == 4
    assert fence.admits(5)


def test_pause_fence_first_call_has_nothing_to_judge() -> None:
    clock = _Clock()
    fence = PauseFence(30.0, clock)
    clock.now += 300.0  # a slow start-up is not a lost generation
    assert fence.admits(0)


def test_a_percentile_stays_within_the_latencies_seen() -> None:
    """100 rows of 1,057 ms interpolate to 1,500 ms in their 1-2 s bucket: a p50 above every row."""
    counts = histogram.empty()
    histogram.observe_many(counts, [1057.0] * 100)
    assert histogram.percentile(counts, 0.5) == 1500.0
    assert histogram.percentile(counts, 0.5, 1057.0, 1057.0) == 1057.0
    d = delta()
    d.observe_latencies([1057.0] * 99)
    other = delta()
    other.observe_latencies([12.0])
    d.merge(other)
    assert (d.latency_min_ms, d.latency_max_ms) == (12.0, 1057.0)
    v = fold(fold(None, delta(), 1.0), MetricsDelta.from_json(MetricsDelta({"sim": d}).to_json()).sources["sim"], 1.0)
    s = summary({"sim": v}, 1.0, queue_size=0)
    assert s["p50_latency_ms"] == s["p99_latency_ms"] == 1057.0 and s["sources"]["sim"]["p99_latency_ms"] == 1057.0


def test_the_brief_keys_are_numbers_before_the_first_row() -> None:
    """The brief's frontend formats them (`avg_latency_ms.toFixed(2)`); a source's own snapshot keeps null."""
    s = summary({"sim": fold(None, delta(processed=1, valid=1), 1.0)}, 1.0, queue_size=0)
    assert [s[k] for k in ("avg_latency_ms", "p50_latency_ms", "p95_latency_ms", "p99_latency_ms")] == [0.0] * 4
    assert s["sources"]["sim"]["p99_latency_ms"] is None


def test_latencies_counted_without_a_range_are_not_clamped_to_the_later_ones() -> None:
    """A table value folded before the range existed (or a delta from an older worker in a rolling upgrade):
    1,000 latencies of 5 s, then 10 of 12 ms with a range. Clamped to that range, p50 read 12 ms for good."""
    old = fold(None, delta(), 1.0)
    histogram.observe_many(old["latency"], [5000.0] * 1000)
    old["latency_sum_ms"], old["latency_n"] = 5_000_000.0, 1000
    for k in ("latency_min_ms", "latency_max_ms", "latency_range_n"):
        old.pop(k, None)
    new = delta()
    new.observe_latencies([12.0] * 10)
    v = fold(old, new, 2.0)
    s = summary({"sim": v}, 2.0, queue_size=0)
    assert s["p50_latency_ms"] > 2000 and s["sources"]["sim"]["p50_latency_ms"] > 2000
    fresh = fold(None, new, 2.0)  # every latency under the range: clamped
    assert summary({"sim": fresh}, 2.0, queue_size=0)["p99_latency_ms"] == 12.0


def test_a_message_read_again_after_a_rebalance_is_not_counted_twice() -> None:
    """The table's owner re-reads the messages after its last committed offset at a rebalance, though their folds
    are in the table's changelog already: a handover under load counted 1,743 more points than were written."""
    from streams.stages.metrics import SENDER_TTL, SENDERS, WorkerMetrics, fold_message, send_pending

    table: dict[str, dict] = {}
    a, b = WorkerMetrics(), WorkerMetrics()
    sent: list[bytes] = []

    async def send(raw: bytes) -> None:
        sent.append(raw)

    for i, w in enumerate((a, b, a, b)):
        d = MetricsDelta()
        d.of("simulated").processed = 10 + i
        w.add(d, 1.0)
        asyncio.run(send_pending(w, send))
    for raw in sent + sent[1:]:  # every message, then all but the first again
        table.update(fold_message(raw, table.get, 100.0))
    assert table["simulated"]["processed"] == 10 + 11 + 12 + 13
    assert table["simulated"][SENDERS] == {a.sender: [2, 100.0], b.sender: [2, 100.0]}
    # a message of an older worker (no tag) is folded, every time; a sender silent for SENDER_TTL is forgotten
    old = MetricsDelta()
    old.of("simulated").processed = 5
    table.update(fold_message(old.to_json(), table.get, 100.0 + SENDER_TTL + 1))
    assert table["simulated"]["processed"] == 51 and table["simulated"][SENDERS] == {}
    assert MetricsDelta.from_json(sent[0]).sources["simulated"].processed == 10  # the tag is no source
