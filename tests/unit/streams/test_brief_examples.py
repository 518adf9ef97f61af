"""The product brief's Python examples, called as it calls them (only the import lines differ), without a
broker or a database: the in-process pipeline (kafka.enabled false) with postgresql disabled, and the
Kafka client's metrics when no worker runs. tests/integration/test_api.py runs them against the stack."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from streams import ConfigurationManager, DataConnectorManager, DataIngestionPipeline, MarketDataPoint

NO_STACK = {"batch_size": 50, "batch_timeout": 60.0, "kafka": {"enabled": False}, "postgresql": {"enabled": False}}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    saved = dict(os.environ)
    for name in list(os.environ):
        if name.startswith(("TICKFLOW_", "POSTGRES_", "KAFKA_", "PIPELINE_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield
    os.environ.clear()
    os.environ.update(saved)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def point(price: float, symbol: str = "CUSTOM", seconds: int = 0) -> MarketDataPoint:
    return MarketDataPoint(symbol=symbol, timestamp=datetime.now(UTC) - timedelta(seconds=60 - seconds),
                           price=price, volume=1000, source="custom_feed", data_type="price",
                           metadata={"custom_field": "value"})


def check_pipeline_health(pipeline: DataIngestionPipeline) -> dict[str, Any]:
    """The brief's health check, as written there."""
    metrics = pipeline.get_metrics()
    if metrics['throughput_per_sec'] < 100:
        print("WARNING: Low throughput detected")
    if metrics['avg_latency_ms'] > 100:
        print("WARNING: High latency detected")
    total = metrics['total_processed']
    rejected = metrics['rejected_points']
    error_rate = rejected / total if total > 0 else 0
    if error_rate > 0.1:
        print(f"WARNING: High error rate: {error_rate:.1%}")
    return {'healthy': error_rate < 0.1 and metrics['avg_latency_ms'] < 100, 'metrics': metrics}


def print_metrics(metrics: dict[str, Any]) -> str:
    """The brief's metrics prints."""
    return "\n".join([
        f"Total processed: {metrics['total_processed']}",
        f"Valid points: {metrics['valid_points']}",
        f"Rejected points: {metrics['rejected_points']}",
        f"Throughput: {metrics['throughput_per_sec']:.1f} points/sec",
        f"Average latency: {metrics['avg_latency_ms']:.2f}ms",
        f"Queue size: {metrics['queue_size']}",
    ])


def test_custom_ingestion_in_process_with_a_bare_stop() -> None:
    seen: dict[str, Any] = {}

    async def ingest_custom_data() -> None:
        pipeline = DataIngestionPipeline(NO_STACK)
        await pipeline.start()
        seen["before"] = print_metrics(pipeline.get_metrics())
        seen["ok"] = await pipeline.ingest_data_point(point(123.45))
        seen["bad"] = await pipeline.ingest_data_point(point(-1.0))
        seen["pipeline"] = pipeline
        pipeline.stop()  # not awaited, as in the brief; the batch timeout (60 s) is not waited out

    asyncio.run(ingest_custom_data())
    assert seen["ok"] is True and seen["bad"] is False
    assert "Average latency: 0.00ms" in seen["before"] and "Total processed: 0" in seen["before"]
    m = seen["pipeline"].get_metrics()
    assert (m["total_processed"], m["valid_points"], m["rejected_points"]) == (2, 1, 1)
    assert m["rejected_by_rule"] == {"price.non_positive": 1}
    # the queued point went through the sink stage at stop (its latency was observed), not dropped
    assert sum(seen["pipeline"]._stats.latency_n.values()) == 1 and m["queue_size"] == 0
    health = check_pipeline_health(seen["pipeline"])
    assert health["healthy"] is False  # 1 of 2 rejected: the brief's 10% error rate check trips


def test_awaited_stop_works_too_and_ingest_after_stop_is_refused() -> None:
    async def main() -> None:
        pipeline = DataIngestionPipeline(NO_STACK)
        await pipeline.start()
        assert await pipeline.ingest_data_point(point(10.0))
        await pipeline.stop()
        with pytest.raises(RuntimeError, match="start"):
            await pipeline.ingest_data_point(point(10.0))

    asyncio.run(main())


def test_in_process_runs_the_anomaly_detectors() -> None:
    async def main() -> dict[str, Any]:
        pipeline = DataIngestionPipeline(NO_STACK)
        await pipeline.start()
        for i in range(40):
            await pipeline.ingest_data_point(point(100.0 + (i % 3) * 0.01, seconds=i))
        await pipeline.ingest_data_point(point(180.0, seconds=45))  # an 80% jump: FINRA's bands say erroneous
        pipeline.stop()
        return pipeline.get_metrics()

    m = asyncio.run(main())
    assert m["valid_points"] == 41 and m["anomalies"], m


def test_metrics_without_a_worker_are_what_the_client_knows() -> None:
    pipeline = DataIngestionPipeline({"worker": {"web_port": free_port()}})  # Kafka mode, nobody listening
    m = pipeline.get_metrics()
    assert m["scope"] == "client" and "no worker metrics" in m["worker_error"]
    assert f"{m['avg_latency_ms']:.2f}" == "0.00" and m["total_processed"] == 0
    assert {"p50_latency_ms", "p95_latency_ms", "p99_latency_ms"} <= m.keys()  # the percentiles the table stores
    assert check_pipeline_health(pipeline)["healthy"] is True


async def eventually(condition: Callable[[], bool], steps: int = 2000) -> None:
    """Let the sources run until `condition` holds (fails instead of hanging when it never does)."""
    for _ in range(steps):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition never held")


class FailingSource:
    name = "broken"

    async def fetch(self, session: object) -> AsyncIterator[list[MarketDataPoint]]:
        raise ConnectionError("provider said no")
        yield []  # pragma: no cover


class GoodSource:
    name = "custom_feed"

    async def fetch(self, session: object) -> AsyncIterator[list[MarketDataPoint]]:
        for i in range(3):
            yield [point(50.0 + i, seconds=i)]
        await asyncio.Event().wait()  # a live feed: waits for more until cancelled


def test_connector_manager_shows_a_failing_source(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="streams.api")

    async def main() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        config = ConfigurationManager().get_config()
        config["kafka"]["enabled"] = False
        config["postgresql"]["enabled"] = False
        pipeline = DataIngestionPipeline(config)
        await pipeline.start()
        connector_manager = DataConnectorManager(pipeline, config, sources=[FailingSource(), GoodSource()])
        connector_manager.backoff_initial = 0.01
        await connector_manager.start_data_collection()
        await eventually(lambda: connector_manager.failures["broken"] >= 2
                         and connector_manager.ingested["custom_feed"] >= 3)
        status = connector_manager.status()
        metrics = pipeline.get_metrics()
        connector_manager.stop()
        pipeline.stop()
        return status, metrics, connector_manager.status()

    status, metrics, after = asyncio.run(main())
    assert status["broken"]["running"] and "provider said no" in status["broken"]["error"]
    assert status["broken"]["state"] == "failing"
    assert status["custom_feed"] == {"state": "running", "running": True, "ingested": 3, "failures": 0,
                                     "error": None}
    assert "provider said no" in metrics["failed_sources"]["broken"]
    assert any("source broken failed" in r.getMessage() for r in caplog.records)
    assert not after["custom_feed"]["running"] and not after["broken"]["running"]


def test_start_data_collection_needs_no_await() -> None:

    async def main() -> int:
        pipeline = DataIngestionPipeline(NO_STACK)
        await pipeline.start()
        manager = DataConnectorManager(pipeline, sources=[GoodSource()])
        manager.start_data_collection()  # not awaited: started anyway
        await eventually(lambda: manager.ingested["custom_feed"] >= 3)
        await manager.stop()
        pipeline.stop()
        return pipeline.get_metrics()["valid_points"]

    assert asyncio.run(main()) == 3
