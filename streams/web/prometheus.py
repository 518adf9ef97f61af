"""GET /metrics: this worker's metrics in Prometheus text exposition (prometheus-client), for scraping every pod.

Every series carries a `worker` label (the worker's advertised host:port) and counts what THIS worker did:
the counters and the latency histogram come from its own counts since the process started
(streams/stages/metrics.py `local`; a restart starts them at 0, which rate() and increase() handle), so
`sum(rate(tickflow_rows_written_total[5m]))` over the pods is the cluster's rate and nothing is counted twice.
The cluster-wide totals, kept across restarts in the changelog-backed table, stay on GET /pipeline/metrics.

Consumer lag is the stage groups' lag read from the cluster; only the worker that owns the metrics table
exports it, so a sum over pods counts it once. Source health (tickflow_source_*) comes from this worker's
supervisor (sources run on the group's leader only). A custom collector yields the families from one scrape's
inputs: nothing lives in prometheus-client's global registry.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from streams import histogram
from streams.app import app
from streams.stages import metrics
from streams.stages.base import stages
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


class WorkerCollector(Collector):
    """Yields metric families from one scrape's inputs (`values`: this worker's own counts per source, in the
    metrics table's format); holds no state between scrapes."""

    def __init__(self, values: dict[str, dict[str, Any]], lag: dict[str, int] | None,
                 sources: list[dict[str, Any]], now: float, worker: str,
                 stages: dict[str, dict[str, Any]] | None = None) -> None:
        self.values = values
        self.lag = lag
        self.sources = sources
        self.stages = stages or {}
        self.now = now
        self.worker = worker

    def collect(self) -> Iterator[Metric]:
        w = self.worker
        items = sorted(self.values.items())
        for key, name, doc in _COUNTERS:
            fam = CounterMetricFamily(name, f"{doc} By this worker.", labels=["worker", "source"])
            for src, v in items:
                fam.add_metric([w, src], float(v.get(key, 0)))
            yield fam

        rejected = CounterMetricFamily("tickflow_points_rejected",
                                       "Records dead-lettered by this worker, by the rule they broke.",
                                       labels=["worker", "source", "rule"])
        anomalies = CounterMetricFamily("tickflow_anomalies", "Anomalies detected by this worker, by detector.",
                                        labels=["worker", "source", "detector"])
        latency = HistogramMetricFamily("tickflow_end_to_end_latency_seconds",
                                        "Producer timestamp to row committed in PostgreSQL, of this worker's rows.",
                                        labels=["worker", "source"])
        rate = GaugeMetricFamily("tickflow_throughput_rows_per_second",
                                 f"Rows this worker wrote per second over the last {metrics.RATE_WINDOW_SECONDS:g} s.",
                                 labels=["worker", "source"])
        for src, v in items:
            for rule, n in sorted(v.get("rules", {}).items()):
                rejected.add_metric([w, src, rule], float(n))
            for detector, n in sorted((v.get("anomalies") or {}).items()):
                anomalies.add_metric([w, src, detector], float(n))
            counts = v.get("latency") or histogram.empty()
            if len(counts) == len(BOUNDS_SECONDS):  # a value from another bucket layout is skipped, not mislabelled
                latency.add_metric([w, src], latency_buckets(counts), v.get("latency_sum_ms", 0.0) / 1000.0)
            rate.add_metric([w, src], metrics.throughput(v, self.now))
        yield rejected
        yield anomalies
        yield latency
        yield rate

        lag = GaugeMetricFamily("tickflow_consumer_lag",
                                "Messages not yet committed by the stages' groups, per topic (cluster-wide, "
                                "exported by one worker only).", labels=["worker", "topic"])
        for topic, n in sorted((self.lag or {}).items()):
            lag.add_metric([w, topic], float(n))
        yield lag

        up = GaugeMetricFamily("tickflow_source_up", "1 when the source is running, 0 when idle or failing.",
                               labels=["worker", "source", "kind"])
        failures = CounterMetricFamily("tickflow_source_failures", "Times the source failed and was restarted.",
                                       labels=["worker", "source", "kind"])
        unexpected = CounterMetricFamily("tickflow_source_unexpected",
                                         "Provider payloads of a shape nothing could read, per endpoint.",
                                         labels=["worker", "source", "endpoint"])
        unknown = CounterMetricFamily("tickflow_source_unknown_symbols",
                                      "Provider answers saying a configured symbol or series does not exist.",
                                      labels=["worker", "source"])
        per_endpoint: dict[tuple[str, str], float] = {}
        per_source: dict[str, float] = {}
        for st in sorted(self.sources, key=lambda s: (str(s.get("source")), str(s.get("kind")))):
            name = str(st.get("source"))
            labels = [w, name, str(st.get("kind"))]
            up.add_metric(labels, 1.0 if st.get("state") == "running" else 0.0)
            failures.add_metric(labels, float(st.get("failures", 0)))
            for endpoint, n in (st.get("unexpected") or {}).items():  # one source may run as several kinds
                per_endpoint[(name, str(endpoint))] = per_endpoint.get((name, str(endpoint)), 0.0) + float(n)
            if "unknown_symbols" in st:
                per_source[name] = per_source.get(name, 0.0) + float(st["unknown_symbols"])
        for (name, endpoint), n in sorted(per_endpoint.items()):
            unexpected.add_metric([w, name, endpoint], n)
        for name, n in sorted(per_source.items()):
            unknown.add_metric([w, name], n)
        yield up
        yield failures
        yield unexpected
        yield unknown

        commits = CounterMetricFamily("tickflow_stage_commit_failures",
                                      "Offset commits of the stage refused or lost (its records are read again).",
                                      labels=["worker", "stage"])
        replaced = CounterMetricFamily("tickflow_stage_consumers_replaced",
                                       "Times the stage replaced its consumer, whose group had no coordinator for "
                                       "worker.consumer_replace_after_seconds.", labels=["worker", "stage"])
        for name, st in sorted(self.stages.items()):
            commits.add_metric([w, name], float(st.get("commit_failures", 0)))
            replaced.add_metric([w, name], float(st.get("replaced_consumers", 0)))
        yield commits
        yield replaced


def render(values: dict[str, dict[str, Any]], lag: dict[str, int] | None, sources: list[dict[str, Any]],
           now: float, worker: str = "", stages: dict[str, dict[str, Any]] | None = None) -> bytes:
    """The exposition text for one scrape. Pure (a fresh registry each time), so it is tested without Faust.
    `stages`: each batch stage's `status()`, by stage name."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkerCollector(values, lag, sources, now, worker, stages))
    return generate_latest(registry)


def worker_label(canonical_url: str) -> str:
    """This worker's name in the `worker` label: its advertised host:port (unique per pod), else the host name."""
    return urlsplit(canonical_url).netloc or socket.gethostname()


async def _lag() -> dict[str, int] | None:
    try:
        return await lag_reader.lag_by_topic()
    except Exception as exc:  # lag is informative; a scrape must not fail for it
        logger.warning("could not read consumer lag: %r", exc)
        return None


@app.page("/metrics")
class PrometheusMetrics(View):
    async def get(self, request: Request) -> Response:
        """Answered by this worker itself (never routed to the table's owner): every pod is scraped."""
        lag = await _lag() if metrics.owns_table() else None
        body = render(dict(metrics.local.values), lag, supervisor.status(), time.time(),
                      worker_label(str(app.conf.canonical_url)), {name: st.status() for name, st in stages.items()})
        # aiohttp refuses a charset inside content_type=, so the full header goes in headers=.
        return self.bytes(body, headers={"Content-Type": CONTENT_TYPE_LATEST})
