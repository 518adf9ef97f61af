"""GET /metrics: the pipeline's metrics in Prometheus text exposition (prometheus-client).

The numbers are not kept in prometheus-client's global counters: they already live in the
changelog-backed metrics table (streams/stages/metrics.py), summed over every worker. A custom collector reads
the table's values at scrape time and yields metric families from them, so nothing is counted twice and a
restarted worker reports the same totals as before.

Like /pipeline/metrics, the request is routed to the worker that owns the metrics table, so every worker
answers with the same cluster-wide counters: scrape one address (the web Service), or aggregate with
max() rather than sum() across pods. Consumer lag is the group's, read from the cluster. Source health
(tickflow_source_*) comes from the answering worker's supervisor; sources run on the group's leader only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from streams import histogram
from streams.app import app
from streams.stages import metrics
from streams.stages.produce import supervisor
from streams.web.health import lag_reader

logger = logging.getLogger(__name__)

# Upper bounds in seconds (Prometheus' base unit), from the table's millisecond buckets.
BOUNDS_SECONDS: tuple[float, ...] = tuple(b / 1000.0 for b in histogram.BOUNDS_MS)

_COUNTERS = (
    ("processed", "tickflow_points_processed", "Records read from the raw topics by validate_ticks."),
    ("valid", "tickflow_points_valid", "Records that passed validation and went to the clean topic."),
    ("written", "tickflow_rows_written", "Rows committed to PostgreSQL's market_data."),
    ("duplicates", "tickflow_rows_duplicate", "Rows skipped because their natural key was already stored."),
)


def latency_buckets(counts: list[int]) -> list[tuple[str, float]]:
    """Per-bucket counts -> Prometheus' cumulative (le, count) pairs, ending with +Inf."""
    out: list[tuple[str, float]] = []
    seen = 0
    for bound, c in zip(BOUNDS_SECONDS, counts, strict=True):
        seen += c
        out.append((floatToGoString(bound), float(seen)))
    return out


class TableCollector(Collector):
    """Yields metric families from one scrape's inputs; holds no state between scrapes."""

    def __init__(self, values: dict[str, dict[str, Any]], lag: dict[str, int] | None,
                 sources: list[dict[str, Any]], now: float) -> None:
        self.values = values
        self.lag = lag
        self.sources = sources
        self.now = now

    def collect(self) -> Iterator[Metric]:
        items = sorted(self.values.items())
        for key, name, doc in _COUNTERS:
            fam = CounterMetricFamily(name, doc, labels=["source"])
            for src, v in items:
                fam.add_metric([src], float(v.get(key, 0)))
            yield fam

        rejected = CounterMetricFamily("tickflow_points_rejected", "Records dead-lettered, by the rule they broke.",
                                       labels=["source", "rule"])
        anomalies = CounterMetricFamily("tickflow_anomalies", "Anomalies detected, by detector.",
                                        labels=["source", "detector"])
        latency = HistogramMetricFamily("tickflow_end_to_end_latency_seconds",
                                        "Producer timestamp to row committed in PostgreSQL.", labels=["source"])
        rate = GaugeMetricFamily("tickflow_throughput_rows_per_second",
                                 f"Rows written per second over the last {metrics.RATE_WINDOW_SECONDS:g} s.",
                                 labels=["source"])
        for src, v in items:
            for rule, n in sorted(v.get("rules", {}).items()):
                rejected.add_metric([src, rule], float(n))
            for detector, n in sorted((v.get("anomalies") or {}).items()):
                anomalies.add_metric([src, detector], float(n))
            counts = v.get("latency") or histogram.empty()
            if len(counts) == len(BOUNDS_SECONDS):  # a value from another bucket layout is skipped, not mislabelled
                latency.add_metric([src], latency_buckets(counts), v.get("latency_sum_ms", 0.0) / 1000.0)
            rate.add_metric([src], metrics.throughput(v, self.now))
        yield rejected
        yield anomalies
        yield latency
        yield rate

        lag = GaugeMetricFamily("tickflow_consumer_lag", "Messages not yet committed by the group, per topic.",
                                labels=["topic"])
        for topic, n in sorted((self.lag or {}).items()):
            lag.add_metric([topic], float(n))
        yield lag

        up = GaugeMetricFamily("tickflow_source_up", "1 when the source is running, 0 when idle or failing.",
                               labels=["source", "kind"])
        failures = CounterMetricFamily("tickflow_source_failures", "Times the source failed and was restarted.",
                                       labels=["source", "kind"])
        unexpected = CounterMetricFamily("tickflow_source_unexpected",
                                         "Provider payloads of a shape nothing could read, per endpoint.",
                                         labels=["source", "endpoint"])
        unknown = CounterMetricFamily("tickflow_source_unknown_symbols",
                                      "Provider answers saying a configured symbol or series does not exist.",
                                      labels=["source"])
        per_endpoint: dict[tuple[str, str], float] = {}
        per_source: dict[str, float] = {}
        for st in sorted(self.sources, key=lambda s: (str(s.get("source")), str(s.get("kind")))):
            name = str(st.get("source"))
            labels = [name, str(st.get("kind"))]
            up.add_metric(labels, 1.0 if st.get("state") == "running" else 0.0)
            failures.add_metric(labels, float(st.get("failures", 0)))
            for endpoint, n in (st.get("unexpected") or {}).items():  # one source may run as several kinds
                per_endpoint[(name, str(endpoint))] = per_endpoint.get((name, str(endpoint)), 0.0) + float(n)
            if "unknown_symbols" in st:
                per_source[name] = per_source.get(name, 0.0) + float(st["unknown_symbols"])
        for (name, endpoint), n in sorted(per_endpoint.items()):
            unexpected.add_metric([name, endpoint], n)
        for name, n in sorted(per_source.items()):
            unknown.add_metric([name], n)
        yield up
        yield failures
        yield unexpected
        yield unknown


def render(values: dict[str, dict[str, Any]], lag: dict[str, int] | None, sources: list[dict[str, Any]],
           now: float) -> bytes:
    """The exposition text for one scrape. Pure (a fresh registry each time), so it is tested without Faust."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TableCollector(values, lag, sources, now))
    return generate_latest(registry)


async def _lag() -> dict[str, int] | None:
    try:
        return await lag_reader.lag_by_topic()
    except Exception as exc:  # lag is informative; a scrape must not fail for it
        logger.warning("could not read consumer lag: %r", exc)
        return None


@app.page("/metrics")
class PrometheusMetrics(View):
    @app.table_route(table=metrics.metrics_table, exact_key="all")
    async def get(self, request: Request) -> Response:
        values = {k: v for k, v in metrics.metrics_table.items() if v}
        body = render(values, await _lag(), supervisor.status(), time.time())
        # aiohttp refuses a charset inside content_type=, so the full header goes in headers=.
        return self.bytes(body, headers={"Content-Type": CONTENT_TYPE_LATEST})
