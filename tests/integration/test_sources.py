"""Provider sources end to end: each connector runs against a local fake provider (serving the
repository's own fixtures) and the real broker and database, and its rows are found in PostgreSQL.
The fake keys never show up in the worker's log or in a dead-letter header."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from streams.tools.measure import read_topic
from tests.integration.conftest import ROOT, ensure_topics_for, wait_until

FIXTURES = Path(__file__).resolve().parents[1] / "unit" / "producers" / "fixtures"
KEYS = {
    "FRED_API_KEY": "fred-secret-key-0f9e8d",
    "FINNHUB_API_KEY": "finnhub-secret-key-7a6b5c",
    "TWITTER_BEARER_TOKEN": "bearer-secret-token-4d3c2b",
}


def fixture(path: str) -> web.Response:
    return web.json_response(json.loads((FIXTURES / path).read_text()))


async def chart(request: web.Request) -> web.Response:
    live = request.query.get("interval") == "1m"
    return fixture("yahoo/chart_msft_1m_live.json" if live else "yahoo/chart_msft_1d.json")


async def fred(request: web.Request) -> web.Response:
    return fixture("fred/observations_unrate.json")


async def finnhub(request: web.Request) -> web.Response:
    return fixture("finnhub/quote_msft.json")


async def tweets(request: web.Request) -> web.Response:
    if request.headers.get("Authorization") != f"Bearer {KEYS['TWITTER_BEARER_TOKEN']}":
        return fixture("social/unauthorized.json")
    page = "social/search_aapl_page2.json" if "pagination_token" in request.query else "social/search_aapl_page1.json"
    return fixture(page)


@pytest.fixture
async def fake_provider() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/v8/finance/chart/{symbol}", chart)
    app.router.add_get("/fred/series/observations", fred)
    app.router.add_get("/api/v1/quote", finnhub)
    app.router.add_get("/2/tweets/search/recent", tweets)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def rows_by_source(pg, schema: str) -> dict[tuple[str, str], int]:
    try:
        recs = await pg.fetch(f"SELECT source, data_type, count(*) AS n FROM {schema}.market_data GROUP BY 1, 2")
    except Exception:
        return {}
    return {(r["source"], r["data_type"]): r["n"] for r in recs}


async def test_each_source_kind_lands_in_postgres(iso, workers, pg, fake_provider) -> None:
    await ensure_topics_for(iso)
    env = {**KEYS}
    for name, symbols in (("yahoo", '["MSFT"]'), ("fred", None), ("finnhub", '["MSFT"]'), ("social", '["AAPL"]')):
        prefix = f"TICKFLOW_SOURCES__{name.upper()}__"
        env[prefix + "ENABLED"] = "true"
        env[prefix + "BASE_URL"] = fake_provider
        env[prefix + "INTERVAL_SECONDS"] = "3600"
        if symbols:
            env[prefix + "SYMBOLS"] = symbols
    env["TICKFLOW_SOURCES__FRED__SERIES"] = '["UNRATE"]'
    w = workers(**env)
    expected = {("yahoo", "bar"), ("fred", "economic"), ("finnhub", "tick"), ("social", "social")}

    async def landed() -> dict | None:
        got = await rows_by_source(pg, iso.schema)
        return got if expected <= set(got) else None

    got = await wait_until(landed, 120, f"rows from every source kind {sorted(expected)}")
    assert all(got[k] > 0 for k in expected)
    sample = await pg.fetchrow(
        f"SELECT symbol, value, realtime_start FROM {iso.schema}.market_data WHERE source = 'fred' LIMIT 1")
    assert sample["symbol"] == "UNRATE" and sample["realtime_start"] is not None
    tweet = await pg.fetchrow(f"SELECT text, url, sentiment FROM {iso.schema}.market_data WHERE source = 'social' "
                              "ORDER BY ts LIMIT 1")
    assert tweet["url"].startswith("https://x.com/i/web/status/") and -1 <= tweet["sentiment"] <= 1
    _, health = w.get("/health")
    assert {s["source"] for s in health["sources"] if s["state"] == "running" and s["sent"] > 0} >= {
        "yahoo", "fred", "finnhub", "social"}
    log = w.log_text()
    dead = await read_topic(iso.bootstrap, iso.topic("rejected"))
    headers = " ".join(v.decode(errors="replace") for r in dead for _, v in r.headers)
    for key in KEYS.values():
        assert key not in log and key not in headers


async def test_backfill_is_rate_limited_and_rerunnable(iso, workers, pg, fake_provider) -> None:
    await ensure_topics_for(iso)
    workers()
    env = {**os.environ, **iso.env, "TICKFLOW_SOURCES__YAHOO__BASE_URL": fake_provider}

    def backfill() -> str:
        out = subprocess.run([sys.executable, "-m", "streams", "backfill", "yahoo", "--symbols", "MSFT,AAPL",
                              "--start", "2024-11-01", "--end", "2024-11-25"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout

    first = await asyncio.to_thread(backfill)
    assert "backfilled" in first and "2/2" in first
    sent = int(re.search(r"backfilled ([\d,]+) points", first).group(1).replace(",", ""))  # type: ignore[union-attr]
    assert sent > 0

    async def count() -> int:
        got = await rows_by_source(pg, iso.schema)
        return got.get(("yahoo", "bar"), 0)

    async def all_landed() -> int:  # a first count can see one symbol's batch before the other's
        got = await count()
        return got if got >= sent else 0

    n = await wait_until(all_landed, 60, "every backfilled bar")
    await asyncio.to_thread(backfill)  # again: same natural keys, no new rows
    await asyncio.sleep(5)
    assert await count() == n
