"""Alpha Vantage's daily quota on the real broker: counted on the compacted quota topic (producers/quota.py),
so a restarted source, or another worker's source after a leader change, continues the day's count.

Each "worker" here is its own KafkaQuotaStore (its own producer and consumer, nothing shared in memory) and
its own AlphaVantageSource, polling a local stand-in for Alpha Vantage that counts the calls it gets; the last
test does the same with real workers (`python -m streams worker`), the first stopped and a second started."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web
from pydantic import SecretStr

from producers.alpha_vantage import AlphaVantageSource
from producers.quota import KafkaQuotaStore
from streams.config import AlphaVantageSettings
from tests.integration.conftest import Isolation, Worker, ensure_topics_for, wait_until
from tests.integration.test_topics import topic_configs

KEY = "AVQUOTAKEY0123456789"


def quote(symbol: str) -> dict[str, Any]:
    """A GLOBAL_QUOTE body as Alpha Vantage documents it."""
    return {"Global Quote": {
        "01. symbol": symbol, "02. open": "10.0", "03. high": "11.0", "04. low": "9.5", "05. price": "10.5",
        "06. volume": "1000", "07. latest trading day": "2026-12-01", "08. previous close": "10.1",
        "09. change": "0.4", "10. change percent": "3.96%"}}


async def start_fake(calls: list[str]) -> tuple[web.AppRunner, str]:
    async def query(request: web.Request) -> web.Response:
        calls.append(request.query["symbol"])
        return web.json_response(quote(request.query["symbol"]))

    app = web.Application()
    app.router.add_get("/query", query)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


def av_settings(base_url: str) -> AlphaVantageSettings:
    return AlphaVantageSettings(base_url=base_url, symbols=["IBM", "MSFT"], functions=["global_quote"],
                                daily_limit_calls=3, rate_limit_calls=1000, retry_attempts=1,
                                request_timeout_seconds=5.0)


async def test_the_days_count_survives_a_restart_and_a_new_leader(iso: Isolation) -> None:
    topic = f"tickflow.quota.it-{iso.tag}"
    calls: list[str] = []
    runner, base = await start_fake(calls)
    try:
        async with aiohttp.ClientSession() as session:
            first = KafkaQuotaStore(iso.bootstrap, topic)
            try:
                src = AlphaVantageSource(av_settings(base), api_key=SecretStr(KEY), quota_store=first)
                assert len(await src.poll_once(session)) == 2
            finally:
                await first.close()  # the worker stops (or loses the leadership)
            assert calls == ["IBM", "MSFT"]

            second = KafkaQuotaStore(iso.bootstrap, topic)  # a restarted worker, or the new leader
            try:
                src = AlphaVantageSource(av_settings(base), api_key=SecretStr(KEY), quota_store=second)
                got = await src.poll_once(session)
                assert [p.symbol for p in got] == ["IBM"]  # one call was left of the day's three
                assert await src.poll_once(session) == []
            finally:
                await second.close()
            assert calls == ["IBM", "MSFT", "IBM"]

        third = KafkaQuotaStore(iso.bootstrap, topic)
        try:
            assert await third.load("alpha_vantage", datetime.now(UTC).date()) == 3
        finally:
            await third.close()
    finally:
        await runner.cleanup()

    configs = await topic_configs(iso.bootstrap, [topic])
    assert configs[topic]["cleanup.policy"][0] == "compact,delete"


async def test_a_restarted_worker_does_not_spend_the_quota_again(iso: Isolation,
                                                                 workers: Callable[..., Worker]) -> None:
    await ensure_topics_for(iso)
    calls: list[str] = []
    runner, base = await start_fake(calls)
    prefix = "TICKFLOW_SOURCES__ALPHA_VANTAGE__"
    env = {"ALPHA_VANTAGE_API_KEY": KEY, prefix + "ENABLED": "true", prefix + "BASE_URL": base,
           prefix + "SYMBOLS": '["IBM", "MSFT", "AAPL"]', prefix + "FUNCTIONS": '["global_quote"]',
           prefix + "DAILY_LIMIT_CALLS": "2", prefix + "INTERVAL_SECONDS": "1", prefix + "RETRY_ATTEMPTS": "1"}
    try:
        first = workers("w1", **env)
        await wait_until(lambda: len(calls) >= 2, 90, "the first worker's two calls")
        await asyncio.sleep(3)  # three more rounds: the day's two calls are spent
        assert calls == ["IBM", "MSFT"]
        assert first.stop() is not None

        second = workers("w2", **env)

        def running() -> bool:
            _, health = second.get("/health")
            return isinstance(health, dict) and any(
                s["source"] == "alpha_vantage" and s["state"] == "running" for s in health.get("sources", []))

        await wait_until(running, 90, "the second worker's alpha_vantage source running")
        await wait_until(lambda: "are used up" in second.log_text(), 30, "the second worker saying the quota is spent")
        await asyncio.sleep(3)
        assert calls == ["IBM", "MSFT"]  # without the quota topic the new worker would spend two more
        assert KEY not in first.log_text() + second.log_text()
    finally:
        await runner.cleanup()
