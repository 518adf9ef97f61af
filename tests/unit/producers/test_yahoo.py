"""Yahoo chart parsing and YahooSource against a local aiohttp server serving hand-written chart responses."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from producers.yahoo import YahooSettings, YahooSource, parse_chart, parse_tick
from streams.errors import SourceError
from tests.unit.producers.conftest import Serve

FIX = Path(__file__).parent / "fixtures" / "yahoo"
T0 = 1732285800  # 2024-11-22 14:30 UTC, the live fixture's first minute



def load(name: str) -> Any:
    return json.loads((FIX / name).read_text())




# ---------------------------------------------------------------------------------------------- parsers


def test_daily_bars_skip_nulls_and_sit_on_the_trading_date() -> None:
    bars = parse_chart(load("chart_msft_1d.json"), "msft")
    assert [b.timestamp for b in bars] == [datetime(2024, 11, d, tzinfo=UTC) for d in (19, 21, 22)]
    b = bars[0]
    assert (b.symbol, b.source, b.data_type, b.interval, b.item_id) == ("MSFT", "yahoo", "bar", "1d", "1d")
    assert (b.open, b.high, b.low, b.close, b.volume) == (413.11, 418.4, 412.1, 417.79, 18133500.0)
    assert b.metadata == {"adj_close": 416.97}
    assert bars[1].metadata == {"adj_close": 412.05, "split": "2:1"}
    assert bars[2].metadata == {"adj_close": 417.0, "dividend": 0.83}


def test_intraday_forming_bar_is_snapped_to_its_minute() -> None:
    bars = parse_chart(load("chart_msft_1m_live.json"), "MSFT")
    assert [int(b.timestamp.timestamp()) - T0 for b in bars] == [0, 60, 180]  # null minute 120 skipped
    assert all(b.interval == "1m" and b.item_id == "1m" for b in bars)
    assert bars[-1].close == 417.25 and bars[-1].timestamp.tzinfo is not None


def test_tick_from_meta() -> None:
    [tick] = parse_tick(load("chart_msft_1m_live.json"), "MSFT")
    assert (tick.data_type, tick.price, tick.item_id, tick.source) == ("tick", 417.25, "quote", "yahoo")
    assert tick.timestamp == datetime.fromtimestamp(T0 + 207, UTC)
    assert (tick.high, tick.low) == (417.9, 411.06)
    assert tick.metadata["day_volume"] == 1523400 and tick.metadata["prev_close"] == 412.87


def test_tick_falls_back_to_the_latest_bar() -> None:
    doc = load("chart_msft_1m_live.json")
    del doc["chart"]["result"][0]["meta"]["regularMarketPrice"]
    [tick] = parse_tick(doc, "MSFT")
    assert tick.price == 417.25 and tick.timestamp == datetime.fromtimestamp(T0 + 180, UTC)


def test_chart_error_and_empty_result() -> None:
    with pytest.raises(SourceError, match="No data found") as err:
        parse_chart(load("chart_not_found.json"), "NOPE")
    assert err.value.retriable is False
    assert parse_chart(load("chart_empty.json"), "MSFT") == []
    assert parse_tick({"chart": {"result": [], "error": None}}, "MSFT") == []
    with pytest.raises(SourceError):
        parse_chart({"finance": {"error": "x"}}, "MSFT")


# ---------------------------------------------------------------------------------------------- source


class FakeYahoo:
    """Serves the fixtures; per-symbol scripted failures before the real answer."""

    def __init__(self, failures: dict[str, list[tuple[int, dict[str, str]]]] | None = None) -> None:
        self.seen: list[tuple[str, dict[str, str], str]] = []
        self.failures = failures or {}

    async def chart(self, request: web.Request) -> web.Response:
        symbol = request.match_info["symbol"]
        self.seen.append((symbol, dict(request.query), request.headers.get("User-Agent", "")))
        script = self.failures.get(symbol)
        if script:
            status, headers = script.pop(0)
            return web.json_response({"finance": {"error": {"code": "x"}}}, status=status, headers=headers)
        if symbol == "NOPE":
            return web.json_response(load("chart_not_found.json"), status=404)
        if symbol == "TRUNC":
            return web.Response(body=(FIX / "chart_msft_1d.json").read_bytes()[:60], content_type="application/json")
        if symbol == "SLOW":
            await asyncio.sleep(1.0)
        if symbol == "EMPTY":
            return web.json_response(load("chart_empty.json"))
        name = "chart_msft_1d.json" if request.query.get("interval") == "1d" else "chart_msft_1m_live.json"
        return web.Response(body=(FIX / name).read_bytes(), content_type="application/json")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v8/finance/chart/{symbol}", self.chart)
        return app


def settings(base_url: str, **kw: Any) -> YahooSettings:
    defaults: dict[str, Any] = {"base_url": base_url, "retry_attempts": 3, "retry_base_delay": 0.01,
                                "request_timeout_seconds": 2.0, "rate_limit_calls": 1000, "interval_seconds": 0.01}
    return YahooSettings(**{**defaults, **kw})


async def test_live_poll_sends_tick_and_new_bars_only(serve: Serve) -> None:
    fake = FakeYahoo()
    src = YahooSource(settings(await serve(fake.app()), symbols=["msft"]))
    async with aiohttp.ClientSession() as session:
        first = await src.poll_once(session)
        second = await src.poll_once(session)
    assert [p.data_type for p in first] == ["tick", "bar", "bar", "bar"]
    assert all(p.source == "yahoo" and p.symbol == "MSFT" for p in first)
    # Same tick time: no tick; only the last (possibly forming) bar again.
    assert [(p.data_type, int(p.timestamp.timestamp()) - T0) for p in second] == [("bar", 180)]
    symbol, query, agent = fake.seen[0]
    assert symbol == "MSFT" and query["range"] == "1d" and query["interval"] == "1m"
    assert agent.startswith("Mozilla/")


async def test_history_params_and_intraday_chunks(serve: Serve) -> None:
    fake = FakeYahoo()
    src = YahooSource(settings(await serve(fake.app())))
    async with aiohttp.ClientSession() as session:
        daily = await src.history(session, "MSFT", date(2024, 11, 19), date(2024, 11, 21))
        await src.history(session, "MSFT", datetime(2024, 11, 1, tzinfo=UTC), datetime(2024, 11, 11, tzinfo=UTC),
                          interval="1m")
    assert [b.timestamp.day for b in daily] == [19, 21]  # the 22nd is outside the inclusive end date
    q = fake.seen[0][1]
    assert q["period1"] == str(int(datetime(2024, 11, 19, tzinfo=UTC).timestamp()))
    assert q["period2"] == str(int(datetime(2024, 11, 22, tzinfo=UTC).timestamp()))
    assert q["interval"] == "1d" and q["events"] == "div|split"
    minute = [q for _, q, _ in fake.seen[1:]]
    assert len(minute) == 2  # 10 days of 1m bars: two requests of at most 7 days
    assert int(minute[0]["period2"]) - int(minute[0]["period1"]) == 7 * 86400
    assert minute[1]["period2"] == str(int(datetime(2024, 11, 11, tzinfo=UTC).timestamp()))


@pytest.mark.parametrize("status,headers", [(429, {"Retry-After": "0"}), (500, {})])
async def test_retries_then_success(serve: Serve, status: int, headers: dict[str, str]) -> None:
    fake = FakeYahoo({"MSFT": [(status, headers)]})
    src = YahooSource(settings(await serve(fake.app())))
    async with aiohttp.ClientSession() as session:
        bars = await src.history(session, "MSFT", date(2024, 11, 19), date(2024, 11, 22))
    assert len(bars) == 3 and len(fake.seen) == 2


async def test_failing_symbol_is_logged_and_others_continue(serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeYahoo({"AAPL": [(500, {})] * 3})
    src = YahooSource(settings(await serve(fake.app()), symbols=["NOPE", "AAPL", "MSFT"]))
    caplog.set_level(logging.WARNING)
    async with aiohttp.ClientSession() as session:
        points = await src.poll_once(session)
    assert {p.symbol for p in points} == {"MSFT"}
    assert "yahoo: NOPE failed" in caplog.text and "404" in caplog.text
    assert "yahoo: AAPL failed" in caplog.text and "gave up after 3 attempts" in caplog.text


@pytest.mark.parametrize("symbol,message", [("TRUNC", "not JSON"), ("SLOW", "TimeoutError"), ("EMPTY", None)])
async def test_truncated_slow_and_empty_answers(serve: Serve, caplog: pytest.LogCaptureFixture, symbol: str,
                                                message: str | None) -> None:
    src = YahooSource(settings(await serve(FakeYahoo().app()), symbols=[symbol, "MSFT"], retry_attempts=2,
                               request_timeout_seconds=0.2))
    caplog.set_level(logging.WARNING)
    async with aiohttp.ClientSession() as session:
        points = await src.poll_once(session)
    assert {p.symbol for p in points} == {"MSFT"}
    if message:
        assert f"yahoo: {symbol} failed" in caplog.text and message in caplog.text
    else:
        assert "failed" not in caplog.text


async def test_fetch_yields_and_repeats(serve: Serve) -> None:
    src = YahooSource(settings(await serve(FakeYahoo().app()), symbols=["MSFT"]))
    async with aiohttp.ClientSession() as session:
        gen = src.fetch(session)
        batches = [await anext(gen), await anext(gen)]
        await gen.aclose()
    assert [len(b) for b in batches] == [4, 1]
