"""deploy/grafana/tickflow.json and deploy/prometheus/alerts.yaml: both parse, have the shape Grafana and
Prometheus load, cover the alerts operations asked for, and use only metrics that /metrics really exports
(rendered by streams/web/prometheus.py from a table with every kind of value in it)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from streams.stages.metrics import SourceDelta, fold
from streams.web.prometheus import render

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "tickflow.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
METRIC = re.compile(r"\btickflow_[a-z0-9_]+\b")


def exported_series() -> set[str]:
    """Every sample name /metrics produces (counters' _total, histograms' _bucket/_sum/_count included)."""
    delta = SourceDelta(processed=10, valid=8, rejected=2, written=7, duplicates=1, rules={"schema.not_json": 2},
                        anomalies={"price.spike": 1})
    delta.observe_latencies([3.0, 40.0])
    values = {"simulated": fold(None, delta, 100.0)}
    sources = [{"source": "simulated", "kind": "SimulatedSource", "state": "running", "failures": 1}]
    stages = {"validate": {"commit_failures": 0, "replaced_consumers": 1}}
    text = render(values, {"raw.simulated": 3}, sources, now=101.0, stages=stages).decode()
    return {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in doc["panels"] for t in p["targets"]] + [
        v["definition"] for v in doc["templating"]["list"] if v.get("definition")]


def alert_rules() -> list[dict]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def test_the_fixture_exports_every_family() -> None:
    """The reference set itself: if a family were missing here, the checks below would prove nothing."""
    names = exported_series()
    for family in ("tickflow_points_processed_total", "tickflow_points_rejected_total", "tickflow_anomalies_total",
                   "tickflow_end_to_end_latency_seconds_bucket", "tickflow_consumer_lag", "tickflow_source_up",
                   "tickflow_source_failures_total", "tickflow_throughput_rows_per_second"):
        assert family in names


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_metric_used_is_exported(source: str) -> None:
    exprs = dashboard_exprs() if source == "dashboard" else [r["expr"] for r in alert_rules()]
    used = {m for e in exprs for m in METRIC.findall(e)}
    assert used, "no tickflow metric found: the extraction is broken"
    unknown = used - exported_series()
    assert not unknown, f"{source} uses metrics /metrics does not export: {sorted(unknown)}"


def test_dashboard_shape() -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"] and doc["title"] and isinstance(doc["schemaVersion"], int)
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids)) >= 8
    for p in doc["panels"]:
        assert p["title"] and p["datasource"]["type"] == "prometheus" and p["targets"]
        assert {"x", "y", "w", "h"} <= set(p["gridPos"])
        assert all(t["refId"] and t["expr"].count("(") == t["expr"].count(")") for t in p["targets"])
    variables = {v["name"] for v in doc["templating"]["list"]}
    for p in doc["panels"]:
        for t in p["targets"]:
            for var in re.findall(r"\$(\w+)", t["expr"]):
                assert var.startswith("__") or var in variables, (p["title"], var)


def test_alerts_cover_operations() -> None:
    rules = alert_rules()
    names = {r["alert"] for r in rules}
    for needed in ("TickflowConsumerLagHigh", "TickflowValidateStageStuck", "TickflowWriteStageStuck",
                   "TickflowRejectRatioHigh", "TickflowSourceFailing", "TickflowSinkRetrying"):
        assert needed in names
    for r in rules:
        assert r["expr"].count("(") == r["expr"].count(")"), r["alert"]
        assert r["labels"]["severity"] in {"warning", "critical"}
        assert r["annotations"]["summary"] and r["annotations"]["description"]
        assert "for" not in r or re.fullmatch(r"\d+[smh]", r["for"]), r["alert"]
