"""The metrics agent under Faust's test_context: deltas fold into the table, bad deltas are skipped."""

from __future__ import annotations

from streams.stages.metrics import MetricsDelta, SourceDelta, metrics_table, record_metrics


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
