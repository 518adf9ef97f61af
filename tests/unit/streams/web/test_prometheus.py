"""GET /metrics's text: parses as Prometheus exposition, counts match the table, histograms are cumulative."""

from __future__ import annotations

import math

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from streams import histogram
from streams.stages.metrics import SourceDelta, fold
from streams.web.prometheus import BOUNDS_SECONDS, render


def _values() -> dict[str, dict]:
    d1 = SourceDelta(processed=100, valid=97, rejected=3, rules={"schema.not_json": 2, "quote.crossed": 1})
    d2 = SourceDelta(written=90, duplicates=7)
    lat_ms = [0.3] * 10 + [4.0] * 50 + [80.0] * 25 + [70_000.0] * 5  # last ones land in the open bucket
    d2.observe_latencies(lat_ms)
    other = SourceDelta(processed=5, valid=5)
    return {"simulated": fold(fold(None, d1, 100.0), d2, 101.0), "finnhub": fold(None, other, 100.0)}


def _samples(text: str) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {}
    for fam in text_string_to_metric_families(text):
        out[fam.name] = list(fam.samples)
    return out


def _one(samples: list[Sample], name: str, **labels: str) -> float:
    found = [s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def test_counters_parse_and_match_the_table() -> None:
    sources = [{"source": "simulated", "kind": "SimulatedSource", "state": "running", "failures": 2},
               {"source": "finnhub", "kind": "FinnhubQuotes", "state": "failing", "failures": 5}]
    text = render(_values(), {"raw.simulated": 12, "ticks.clean": 0}, sources, now=101.0).decode()
    fams = _samples(text)
    assert _one(fams["tickflow_points_processed"], "tickflow_points_processed_total", source="simulated") == 100
    assert _one(fams["tickflow_points_processed"], "tickflow_points_processed_total", source="finnhub") == 5
    assert _one(fams["tickflow_points_valid"], "tickflow_points_valid_total", source="simulated") == 97
    rejected = fams["tickflow_points_rejected"]
    assert _one(rejected, "tickflow_points_rejected_total", source="simulated", rule="schema.not_json") == 2
    assert _one(rejected, "tickflow_points_rejected_total", source="simulated", rule="quote.crossed") == 1
    assert _one(fams["tickflow_rows_written"], "tickflow_rows_written_total", source="simulated") == 90
    assert _one(fams["tickflow_rows_duplicate"], "tickflow_rows_duplicate_total", source="simulated") == 7
    assert _one(fams["tickflow_consumer_lag"], "tickflow_consumer_lag", topic="raw.simulated") == 12
    assert _one(fams["tickflow_source_up"], "tickflow_source_up", source="simulated") == 1
    assert _one(fams["tickflow_source_up"], "tickflow_source_up", source="finnhub") == 0
    assert _one(fams["tickflow_source_failures"], "tickflow_source_failures_total", source="finnhub") == 5
    assert _one(fams["tickflow_throughput_rows_per_second"], "tickflow_throughput_rows_per_second",
                source="simulated") > 0


def test_latency_histogram_is_cumulative_in_seconds() -> None:
    values = _values()
    text = render(values, None, [], now=101.0).decode()
    samples = _samples(text)["tickflow_end_to_end_latency_seconds"]
    buckets = [s for s in samples if s.name.endswith("_bucket") and s.labels["source"] == "simulated"]
    assert len(buckets) == len(histogram.BOUNDS_MS)
    les = [float(s.labels["le"]) for s in buckets]
    assert les == list(BOUNDS_SECONDS) and les[-1] == math.inf and les[0] == 0.0005
    counts = [s.value for s in buckets]
    assert counts == sorted(counts), "buckets must be cumulative"
    assert _one(buckets, "tickflow_end_to_end_latency_seconds_bucket", source="simulated", le="0.005") == 60
    assert _one(buckets, "tickflow_end_to_end_latency_seconds_bucket", source="simulated", le="60.0") == 85
    n = values["simulated"]["latency_n"]
    assert counts[-1] == n == 90
    assert _one(samples, "tickflow_end_to_end_latency_seconds_count", source="simulated") == n
    assert math.isclose(_one(samples, "tickflow_end_to_end_latency_seconds_sum", source="simulated"),
                        values["simulated"]["latency_sum_ms"] / 1000.0)


def test_lag_failure_and_empty_table_still_render() -> None:
    fams = _samples(render({}, None, [], now=0.0).decode())
    assert fams["tickflow_consumer_lag"] == [] and fams["tickflow_points_processed"] == []


def test_provider_counters_per_source_and_endpoint() -> None:
    """The providers' unexpected-shape and unknown-symbol counters (SourceSupervisor.status()) reach /metrics;
    two kinds of one source add up under the source's name."""
    sources = [
        {"source": "finnhub", "kind": "FinnhubQuotes", "state": "running", "failures": 0,
         "unexpected": {"quote": 2, "stock/candle": 1}, "unknown_symbols": 3},
        {"source": "finnhub", "kind": "FinnhubCandles", "state": "running", "failures": 0,
         "unexpected": {"quote": 1}, "unknown_symbols": 4},
        {"source": "yahoo", "kind": "YahooSource", "state": "running", "failures": 0, "unexpected": {},
         "unknown_symbols": 0},
    ]
    fams = _samples(render({}, None, sources, now=1.0).decode())
    unexpected = fams["tickflow_source_unexpected"]
    assert _one(unexpected, "tickflow_source_unexpected_total", source="finnhub", endpoint="quote") == 3
    assert _one(unexpected, "tickflow_source_unexpected_total", source="finnhub", endpoint="stock/candle") == 1
    assert not [s for s in unexpected if s.labels.get("source") == "yahoo"]
    unknown = fams["tickflow_source_unknown_symbols"]
    assert _one(unknown, "tickflow_source_unknown_symbols_total", source="finnhub") == 7
    assert _one(unknown, "tickflow_source_unknown_symbols_total", source="yahoo") == 0


def test_supervisor_status_carries_the_providers_own_counters() -> None:
    """SourceSupervisor.status() reads the source's `unexpected` and `unknown` Counters, so /metrics shows them."""
    from collections import Counter

    from streams.stages.produce import SourceSupervisor

    class Feed:
        name = "fred"

        def __init__(self) -> None:
            self.unexpected: Counter[str] = Counter({"observations": 2})
            self.unknown: Counter[str] = Counter({"NOSUCH": 2, "TYPO": 1})

    async def send(*_: object) -> None:
        return None

    feed = Feed()
    sup = SourceSupervisor([feed], send=send, topic_for=lambda s: f"raw.{s}")  # type: ignore[list-item]
    sup._state(feed)  # type: ignore[arg-type]  # what running it records first
    feed.unexpected["series"] += 1
    (st,) = sup.status()
    assert st["unexpected"] == {"observations": 2, "series": 1} and st["unknown_symbols"] == 3
    fams = _samples(render({}, None, sup.status(), now=1.0).decode())
    assert _one(fams["tickflow_source_unexpected"], "tickflow_source_unexpected_total", source="fred",
                endpoint="series") == 1
    assert _one(fams["tickflow_source_unknown_symbols"], "tickflow_source_unknown_symbols_total", source="fred") == 3


# ------------------------------------------------------------------ per worker: every pod's counts sum to the cluster's


def test_every_series_names_its_worker() -> None:
    sources = [{"source": "simulated", "kind": "SimulatedSource", "state": "running", "failures": 0}]
    text = render(_values(), {"raw.simulated": 3}, sources, now=101.0, worker="10.0.0.7:6066").decode()
    samples = [s for fam in text_string_to_metric_families(text) for s in fam.samples]
    assert samples and all(s.labels.get("worker") == "10.0.0.7:6066" for s in samples)


def test_two_workers_sum_to_the_cluster_table() -> None:
    """Each worker exports what it counted itself (metrics.WorkerMetrics); summing a counter over the pods gives
    what the cluster-wide table (every worker's deltas folded together) holds, never twice as much."""
    from streams.stages.metrics import MetricsDelta, WorkerMetrics

    a, b, table = WorkerMetrics(), WorkerMetrics(), WorkerMetrics()
    for i in range(30):
        d = MetricsDelta()
        d.of("simulated").processed += 10 + i
        d.of("simulated").written += 9
        d.of("simulated").count_rule("schema.missing")
        d.of("simulated").observe_latencies([3.0] * 9)
        (a if i % 3 else b).add(d, 100.0 + i)  # the partitions are split unevenly
        table.add(d, 100.0 + i)
    texts = [render(w.values, None, [], now=130.0, worker=name).decode() for w, name in ((a, "w1"), (b, "w2"))]

    def total(name: str, **labels: str) -> float:
        return sum(s.value for text in texts for fam in text_string_to_metric_families(text) for s in fam.samples
                   if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))

    cluster = table.values["simulated"]
    assert total("tickflow_points_processed_total", source="simulated") == cluster["processed"] == 735
    assert total("tickflow_rows_written_total", source="simulated") == cluster["written"]
    assert total("tickflow_points_rejected_total", rule="schema.missing") == cluster["rules"]["schema.missing"]
    assert total("tickflow_end_to_end_latency_seconds_count", source="simulated") == cluster["latency_n"]
    assert 0 < total("tickflow_points_processed_total", worker="w2") < cluster["processed"]


def test_worker_label_is_the_advertised_address() -> None:
    from streams.web.prometheus import worker_label

    assert worker_label("http://10.0.0.7:6066") == "10.0.0.7:6066"
    assert worker_label("") != ""  # the host name, never an empty label


def test_each_stage_shows_its_refused_commits_and_replaced_consumers() -> None:
    stages = {"validate": {"commit_failures": 2, "replaced_consumers": 1, "batches": 9},
              "write": {"commit_failures": 0, "replaced_consumers": 0}}
    fams = _samples(render({}, None, [], now=1.0, worker="w:1", stages=stages).decode())
    assert _one(fams["tickflow_stage_commit_failures"], "tickflow_stage_commit_failures_total", stage="validate") == 2
    assert _one(fams["tickflow_stage_consumers_replaced"], "tickflow_stage_consumers_replaced_total",
                stage="validate") == 1
    assert _one(fams["tickflow_stage_consumers_replaced"], "tickflow_stage_consumers_replaced_total",
                stage="write") == 0
    assert all(s.labels["worker"] == "w:1" for s in fams["tickflow_stage_consumers_replaced"])
