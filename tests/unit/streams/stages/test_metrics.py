import orjson

from streams import histogram
from streams.stages.metrics import MetricsDelta, SourceDelta, fold, summary, throughput


def delta(**kw: int) -> SourceDelta:
    return SourceDelta(**kw)


def test_histogram_percentiles() -> None:
    counts = histogram.empty()
    histogram.observe_many(counts, [1.0] * 50 + [8.0] * 45 + [45.0] * 5)
    assert histogram.percentile(counts, 0.5) <= 1.0
    assert 7.5 < histogram.percentile(counts, 0.95) <= 10
    assert 40 < histogram.percentile(counts, 0.99) <= 50
    assert histogram.percentile(histogram.empty(), 0.5) is None


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
