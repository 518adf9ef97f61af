"""The metrics agent under Faust's test_context: deltas fold into the table, bad deltas are skipped."""

from __future__ import annotations

from streams.stages import metrics
from streams.stages.metrics import MetricsDelta, PauseFence, SourceDelta, metrics_table, record_metrics


async def test_record_metrics_folds_deltas_into_the_table() -> None:
    d = SourceDelta(processed=5, valid=4, rejected=1, rules={"schema.missing": 1})
    async with record_metrics.test_context() as agent:
        await agent.put(key=b"batch", value=MetricsDelta({"simulated": d}).to_json())
        await agent.put(key=b"batch", value=b"{broken json")
        await agent.put(key=b"batch", value=MetricsDelta({"simulated": d, "other": d}).to_json())
        v = metrics_table["simulated"]
        assert (v["processed"], v["valid"], v["rejected"]) == (10, 8, 2)
        assert v["rules"] == {"schema.missing": 2}
        assert metrics_table["other"]["processed"] == 5


async def test_a_worker_woken_past_the_session_timeout_does_not_write_its_stale_table(monkeypatch) -> None:
    """The deltas a zombie had fetched before its pause are the new owner's to fold (its commits are refused)."""
    clock = [0.0]
    fence = PauseFence(30.0, lambda: clock[0])
    monkeypatch.setattr(metrics, "pause_fence", fence)
    d = SourceDelta(processed=5, valid=5)
    async with record_metrics.test_context() as agent:
        await agent.put(key=b"batch", value=MetricsDelta({"paused": d}).to_json())
        clock[0] += 45.0  # SIGSTOPped past the session timeout, same generation on waking
        await agent.put(key=b"batch", value=MetricsDelta({"paused": d}).to_json())
        assert metrics_table["paused"]["processed"] == 5
        monkeypatch.setattr(metrics.app, "consumer_generation_id", metrics.app.consumer_generation_id + 1)
        await agent.put(key=b"batch", value=MetricsDelta({"paused": d}).to_json())  # rejoined
        assert metrics_table["paused"]["processed"] == 10


def test_a_tag_an_older_owner_took_for_a_source_is_not_listed(monkeypatch) -> None:
    """In a rolling upgrade an older worker owning the table reads a message's tag ("@") as a source and keeps an
    empty value for it: /pipeline/metrics and the stored snapshots leave it out."""
    table = {metrics.TAG: {**SourceDelta().to_dict(), "samples": []},
             "listed": {**SourceDelta(processed=3).to_dict(), "samples": []}}
    monkeypatch.setattr(metrics, "metrics_table", table)
    assert list(metrics.table_values()) == ["listed"] and metrics.table_values()["listed"]["processed"] == 3
