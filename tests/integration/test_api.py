"""The brief's Python API against the local stack, and its example scripts end to end."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import UTC, datetime

from streams import ConfigurationManager, DataIngestionPipeline, MarketDataPoint
from tests.integration.conftest import ROOT, wait_until


def run_example(name: str, env: dict[str, str]) -> str:
    out = subprocess.run([sys.executable, f"examples/{name}.py"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


async def test_pipeline_api_and_examples(iso, workers, pg, tmp_path) -> None:
    import os

    env = {**os.environ, **iso.env, "TICKFLOW_CONFIG": str(tmp_path / "pipeline_config.yaml")}
    env.pop("TICKFLOW_SOURCES__SIMULATED__ENABLED")  # the worker runs no feed; the example runs its own
    w = workers()
    cfg = ConfigurationManager(tmp_path / "pipeline_config.yaml")
    for key, value in iso.env.items():  # the test's own topics, schema and group
        section, field = key.removeprefix("TICKFLOW_").lower().split("__", 1)
        if section != "sources":
            cfg.update_config(section, field, int(value) if value.isdigit() else value)
    cfg.update_config("worker", "web_port", w.port)
    pipeline = DataIngestionPipeline(cfg.settings())
    await pipeline.start()
    assert await pipeline.ingest_data_point(MarketDataPoint(
        symbol="MSFT", timestamp=datetime.now(UTC), price=410.2, volume=5, source="simulated", item_id="api-1"))
    assert not await pipeline.ingest_data_point(MarketDataPoint(
        symbol="MSFT", timestamp=datetime.now(UTC), price=0.0, source="simulated", item_id="api-2"))
    assert not await pipeline.ingest_data_point(MarketDataPoint(
        symbol="MSFT", timestamp=datetime.now(UTC), price=1.0, source="nowhere", item_id="api-3"))
    await pipeline.stop()

    assert "valid point accepted: True; negative price accepted: False" in run_example("basic", env)
    assert "accepted 3 of 3 bars" in run_example("custom_ingestion", env)
    out = run_example("multiple_sources", env)
    ingested = int(re.search(r"ingested (\d+)", out).group(1))
    assert "'simulated'" in out and ingested > 100

    expected = 1 + 1 + 3 + ingested

    async def landed() -> bool:
        try:
            return await pg.fetchval(f"SELECT count(*) FROM {iso.schema}.market_data") >= expected
        except Exception:
            return False

    await wait_until(landed, 90, f"{expected} rows from the API and the examples")

    def metrics() -> dict | None:
        m = pipeline.get_metrics()  # without a worker answering: the client's own counts, never an exception
        return m if m["scope"] == "cluster" and m["written_points"] >= expected else None

    m = await wait_until(metrics, 30, "the API's metrics to show the rows")
    for key in ("total_processed", "valid_points", "rejected_points", "throughput_per_sec", "avg_latency_ms",
                "p95_latency_ms", "queue_size"):
        assert key in m


async def test_retention_and_recent_data_endpoint(iso, workers, producer, pg) -> None:
    from datetime import timedelta

    from tests.integration.conftest import ensure_topics_for

    await ensure_topics_for(iso)
    now = datetime.now(UTC)
    for i in range(40):  # 20 rows 40 days old, 20 from the last minute
        ts = now - (timedelta(days=40) if i < 20 else timedelta(seconds=60 - i))
        p = MarketDataPoint(symbol="RET", timestamp=ts, price=50 + i, source="simulated", item_id=f"ret-{i}")
        await producer.send(iso.raw_topic(), p.to_json(), key=b"RET")
    await producer.flush()
    w = workers(TICKFLOW_SINK__DATA_RETENTION_DAYS="30", TICKFLOW_SINK__RETENTION_CHECK_SECONDS="2")

    async def only_recent_left() -> bool:
        try:
            table = f"{iso.schema}.market_data"
            n_old = await pg.fetchval(f"SELECT count(*) FROM {table} WHERE ts < now() - interval '30 days'")
            n_new = await pg.fetchval(f"SELECT count(*) FROM {table} WHERE ts >= now() - interval '1 day'")
        except Exception:
            return False
        return n_old == 0 and n_new == 20

    await wait_until(only_recent_left, 90, "old rows deleted and recent rows kept")
    # The old rows were written first, then deleted by retention; the table counts them all.
    await wait_until(lambda: (w.get("/pipeline/metrics")[1] or {}).get("written_points") == 40, 30, "40 written")
    status, body = w.get("/pipeline/data/RET?limit=5")
    assert status == 200 and len(body) == 5  # an array of rows, as the brief's frontend reads it
    stamps = [r["timestamp"] for r in body]
    assert stamps == sorted(stamps, reverse=True)
    assert body[0]["item_id"] == "ret-39" and body[0]["price"] == 89.0
    assert w.get("/pipeline/data/RET?limit=x")[0] == 400


async def test_brief_custom_ingestion_in_process_writes_postgres(iso, pg, monkeypatch) -> None:
    """The brief's custom ingestion (kafka disabled, postgresql enabled) with a bare stop(): the rows and the
    data_quality_metrics land in the test's own schema; no broker involved."""
    import asyncio

    for key, value in iso.env.items():
        monkeypatch.setenv(key, value)
    result: dict = {}

    async def ingest_custom_data() -> None:
        pipeline = DataIngestionPipeline({
            'batch_size': 50,
            'batch_timeout': 1.0,
            'kafka': {'enabled': False},
            'postgresql': {'enabled': True},
        })
        await pipeline.start()
        data_point = MarketDataPoint(
            symbol="CUSTOM",
            timestamp=datetime.now(UTC),
            price=123.45,
            volume=1000,
            source="custom_feed",
            data_type="price",
            metadata={"custom_field": "value"},
        )
        result["ok"] = await pipeline.ingest_data_point(data_point)
        result["again"] = await pipeline.ingest_data_point(data_point)  # the same natural key: one row
        result["bad"] = await pipeline.ingest_data_point(data_point.model_copy(update={"price": -5.0}))
        result["pipeline"] = pipeline
        # No Kafka offsets wait for a flush here: each write is durable when it returns (no asynchronous commit).
        result["synchronous_commit"] = pipeline._local.writer.settings.async_commit is False
        pipeline.stop()

    await asyncio.to_thread(asyncio.run, ingest_custom_data())
    assert (result["ok"], result["again"], result["bad"]) == (True, True, False)
    assert result["synchronous_commit"]
    rows = await pg.fetch(f"SELECT symbol, price, volume, source, data_type, metadata FROM {iso.schema}.market_data")
    assert [(r["symbol"], r["price"], r["volume"], r["source"], r["data_type"]) for r in rows] == [
        ("CUSTOM", 123.45, 1000, "custom_feed", "tick")]
    m = result["pipeline"].get_metrics()
    assert (m["valid_points"], m["written_points"], m["duplicate_points"], m["rejected_points"]) == (2, 1, 1, 1)
    q = await pg.fetchrow(f"SELECT source, processed, valid, rejected, written FROM {iso.schema}.data_quality_metrics")
    assert dict(q) == {"source": "custom_feed", "processed": 3, "valid": 2, "rejected": 1, "written": 1}
