"""The Python API's DataConnectorManager sees a provider whose every call fails as the worker does: counted in
`status()` with its redacted error and in `get_metrics()['failed_sources']`, restarted with back-off, and cleared
once a round goes well again (producers/base.py PollingSource)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pydantic import SecretStr

from producers.finnhub import FinnhubSource
from streams import DataConnectorManager, DataIngestionPipeline
from streams.config import FinnhubSettings

pytestmark = pytest.mark.timeout(30)  # without the fix a failing source is polled forever

KEY = "fk_SECRET_finnhub_1234567890"
NO_STACK = {"kafka": {"enabled": False}, "postgresql": {"enabled": False}}
UNKNOWN = json.loads((Path(__file__).parents[1] / "producers" / "fixtures" / "finnhub" /
                      "quote_unknown_symbol.json").read_text())


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith(("TICKFLOW_", "POSTGRES_", "KAFKA_", "PIPELINE_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield


async def eventually(condition: Callable[[], bool], steps: int = 2000) -> None:
    for _ in range(steps):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition never held")


def test_connector_manager_shows_a_provider_whose_every_call_fails() -> None:
    healthy = {"now": False}

    async def quote(request: web.Request) -> web.Response:
        if healthy["now"]:  # a valid empty answer (an all-zero quote): a good round with nothing new
            return web.json_response(UNKNOWN)
        return web.Response(status=500, text="<html>down</html>")

    async def main() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
        app = web.Application()
        app.router.add_get("/api/v1/quote", quote)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        settings = FinnhubSettings(symbols=["MSFT"], endpoints=["quote"], base_url=f"http://{host}:{port}",
                                   retry_attempts=1, request_timeout_seconds=2.0, rate_limit_calls=1000,
                                   interval_seconds=0.01, token_in="query")
        source = FinnhubSource(settings, api_key=SecretStr(KEY))
        pipeline = DataIngestionPipeline(NO_STACK)
        await pipeline.start()
        manager = DataConnectorManager(pipeline, sources=[source])
        manager.backoff_initial, manager.backoff_max = 0.01, 0.05
        try:
            await manager.start_data_collection()
            await eventually(lambda: manager.failures["finnhub"] >= 2)
            failing, failing_metrics = manager.status(), pipeline.get_metrics()
            healthy["now"] = True
            await eventually(lambda: manager.errors == {})
            return failing, failing_metrics, manager.status(), pipeline.get_metrics()
        finally:
            await manager.stop()
            pipeline.stop()
            await runner.cleanup()

    failing, failing_metrics, recovered, recovered_metrics = asyncio.run(main())
    st = failing["finnhub"]
    assert st["running"] and st["failures"] >= 2 and st["ingested"] == 0  # alive: restarted with back-off
    assert st["state"] == "failing"  # the word /health and the README use
    assert st["error"].startswith("SourceError: finnhub: the one call of the round failed; the last: SourceError: ")
    assert "HTTP 500" in st["error"] and KEY not in st["error"] and "token=" not in st["error"]
    assert failing_metrics["failed_sources"] == {"finnhub": st["error"]}
    # a good round (nothing new in it) clears the error; the count of past failures stays
    assert recovered["finnhub"]["error"] is None and recovered["finnhub"]["failures"] >= 2
    assert recovered["finnhub"]["state"] == "running"
    assert recovered_metrics["failed_sources"] == {}


async def test_an_enabled_source_without_its_key_is_in_status_and_failed_sources(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """It was logged once and absent from `status()` and `failed_sources`: the user saw nothing arrive and no
    reason anywhere they looked."""
    monkeypatch.delenv("FINNHUB_API_KEY", raising=False)
    pipeline = DataIngestionPipeline({**NO_STACK, "finnhub": {"enabled": True}})
    await pipeline.start()
    manager = DataConnectorManager(pipeline)
    try:
        await manager.start_data_collection()
        st = manager.status()["finnhub"]
        assert st["running"] is False and st["state"] == "failed" and "FINNHUB_API_KEY" in st["error"]
        assert "FINNHUB_API_KEY" in pipeline.get_metrics()["failed_sources"]["finnhub"]
    finally:
        await manager.stop()
        await pipeline.stop()


async def test_start_data_collection_and_stop_are_coroutines_create_task_takes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`asyncio.create_task(connectors.start_data_collection())` raised "a coroutine was expected": what it returns
    was awaitable, not a coroutine. The sources are started when it is called, awaited or not."""
    monkeypatch.delenv("FINNHUB_API_KEY", raising=False)
    pipeline = DataIngestionPipeline({**NO_STACK, "finnhub": {"enabled": True}})
    await pipeline.start()
    manager = DataConnectorManager(pipeline)
    try:
        assert await asyncio.create_task(manager.start_data_collection()) is None
        assert manager.status()["finnhub"]["state"] == "failed"  # started: without its key, failed at once
    finally:
        await asyncio.create_task(manager.stop())
        await asyncio.create_task(pipeline.stop())


async def test_a_sources_raw_records_are_judged_by_the_rules_not_dropped(tmp_path: Path) -> None:
    """The replay's rows it could not read (and the simulated feed's deliberately bad records) are bytes, not
    points: the Python API dropped them without a word while the replay said they went to the dead-letter topic.
    They are judged by the validate stage's rules now, counted and logged by rule."""
    from producers.replay import ReplaySource
    from streams.config import ReplaySettings

    (tmp_path / "AAPL.csv").write_text("Date,Open,High,Low,Close,Volume\n2024-01-02,1,2,0.5,1.5,10\n"
                                       "2024-13-45,1,2,0.5,1.5,10\n2024-01-03,1,2,0.5,1.6,10\n")
    pipeline = DataIngestionPipeline(NO_STACK)
    await pipeline.start()
    manager = DataConnectorManager(pipeline, sources=[ReplaySource(ReplaySettings(files=[str(tmp_path)]))])
    try:
        await manager.start_data_collection()
        await eventually(lambda: manager.ingested["replay"] + pipeline.local_counts["refused"] >= 3)
        m = pipeline.get_metrics()
        assert manager.ingested["replay"] == 2 and pipeline.local_counts["refused"] == 1
        assert m["rejected_by_rule"] == {"source.unreadable": 1} and m["rejected_points"] == 1
    finally:
        await manager.stop()
        pipeline.stop()
