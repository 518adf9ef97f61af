from streams import histogram
from streams.stages.metrics import fold, new_delta, summary, throughput


def delta(**kw: int) -> dict:
    d = new_delta()
    d.update(kw)
    return d


def test_histogram_percentiles() -> None:
    counts = histogram.empty()
    histogram.observe_many(counts, [1.0] * 50 + [8.0] * 45 + [45.0] * 5)
    assert histogram.percentile(counts, 0.5) <= 1.0
    assert 7.5 < histogram.percentile(counts, 0.95) <= 10
    assert 40 < histogram.percentile(counts, 0.99) <= 50
    assert histogram.percentile(histogram.empty(), 0.5) is None


def test_fold_adds_counts_rules_and_latency() -> None:
    d1 = delta(processed=10, valid=9, rejected=1)
    d1["rules"] = {"schema.not_json": 1}
    d2 = delta(written=9)
    histogram.observe_many(d2["latency"], [5.0] * 9)
    d2["latency_sum_ms"], d2["latency_n"] = 45.0, 9
    v = fold(fold(None, d1, 100.0), d2, 100.5)
    assert (v["processed"], v["valid"], v["rejected"], v["written"]) == (10, 9, 1, 9)
    assert v["rules"] == {"schema.not_json": 1}
    s = summary({"sim": v}, 100.5, queue_size=3)
    assert s["total_processed"] == 10 and s["rejected_points"] == 1 and s["queue_size"] == 3
    assert s["avg_latency_ms"] == 5.0
    assert s["sources"]["sim"]["rejected_by_rule"] == {"schema.not_json": 1}


def test_throughput_over_window_and_decay() -> None:
    v = None
    for t in range(0, 21):
        v = fold(v, delta(written=100), 1000.0 + t)
    assert 95 <= throughput(v, 1020.0) <= 105
    assert throughput(v, 1040.0) == 0.0


def test_stage_is_stuck_only_with_partitions_lag_and_no_progress() -> None:
    from streams.stages.base import BatchStage

    class Fake(BatchStage):
        stage = "fake-stuck"

        def assignment(self):  # type: ignore[no-untyped-def]
            return {("t", 0)}

    s = Fake.__new__(Fake)
    s.started_at, s.last_batch_at = 1000.0, None
    assert not s.stuck(lag=10, now=1100.0, after=300)
    assert s.stuck(lag=10, now=1400.0, after=300)
    assert not s.stuck(lag=0, now=1400.0, after=300)
    s.last_batch_at = 1350.0
    assert not s.stuck(lag=10, now=1400.0, after=300)
