"""Alpha Vantage parsing, its 200-with-an-error bodies, and AlphaVantageSource against a local aiohttp server."""

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
from pydantic import SecretStr

from producers.alpha_vantage import (
    AlphaVantageKeyRefused,
    AlphaVantagePremium,
    AlphaVantageRefused,
    AlphaVantageSettings,
    AlphaVantageSource,
    AlphaVantageThrottled,
    AlphaVantageUnexpected,
    DailyLimitedRateLimiter,
    check_payload,
    parse_exchange_rate,
    parse_global_quote,
    parse_news,
    parse_time_series,
    split_pair,
    url_id,
)
from producers.quota import DailyQuota, MemoryQuotaStore, QuotaSpent, QuotaStoreUnavailable
from streams.errors import ConfigError, SourceError
from tests.unit.producers.conftest import Serve

FIX = Path(__file__).parent / "fixtures" / "alpha_vantage"
KEY = "AVKEYSECRET0123456789"



def load(name: str) -> Any:
    return json.loads((FIX / name).read_text())




# ---------------------------------------------------------------------------------------------- parsers


def test_intraday_eastern_keys_become_utc_across_dst() -> None:
    bars = parse_time_series(load("intraday_ibm_5min.json"))
    assert [b.timestamp for b in bars] == [
        datetime(2024, 3, 8, 20, 55, tzinfo=UTC), datetime(2024, 3, 8, 21, 0, tzinfo=UTC),  # EST, UTC-5
        datetime(2024, 3, 11, 13, 30, tzinfo=UTC), datetime(2024, 3, 11, 13, 35, tzinfo=UTC),  # EDT, UTC-4
    ]
    b = bars[-1]
    assert (b.symbol, b.source, b.data_type, b.interval, b.item_id) == ("IBM", "alpha_vantage", "bar", "5m", "5m")
    assert (b.open, b.high, b.low, b.close, b.volume) == (195.9, 196.2, 195.5, 196.05, 48210.0)


def test_daily_adjusted_stores_raw_prices_and_events_in_metadata() -> None:
    bars = parse_time_series(load("daily_adjusted_ibm.json"), "IBM")
    assert [b.timestamp for b in bars] == [datetime(2024, 11, d, tzinfo=UTC) for d in (8, 11, 12)]
    assert bars[0].close == 416.0 and bars[0].metadata == {"adj_close": 206.35, "split_coefficient": 2.0}
    assert bars[1].close == 210.0 and bars[1].metadata == {"adj_close": 208.33, "dividend": 1.67}
    assert bars[2].metadata == {"adj_close": 211.45} and bars[2].interval == "1d"
    plain = parse_time_series(load("daily_ibm.json"), "IBM")
    assert [(b.close, b.metadata) for b in plain] == [(210.0, {}), (211.45, {})]


def test_global_quote_and_empty_quote() -> None:
    # The day's forming bar: a revision of the same row as TIME_SERIES_DAILY's bar for that day.
    [q] = parse_global_quote(load("global_quote_ibm.json"), "ibm")
    assert (q.symbol, q.data_type, q.interval, q.open, q.high, q.low, q.close, q.volume, q.item_id) == (
        "IBM", "bar", "1d", 210.0, 212.1, 209.0, 211.45, 3512004.0, "1d")
    assert q.timestamp == datetime(2024, 11, 12, tzinfo=UTC)
    assert q.metadata == {"prev_close": 210.0, "change": 1.45, "change_percent": 0.6905, "from": "global_quote"}
    assert parse_global_quote(load("global_quote_empty.json"), "NOPE") == []


def test_news_items_per_configured_symbol() -> None:
    items = parse_news(load("news_sentiment_ibm.json"), ["ibm"])
    assert [i.symbol for i in items] == ["IBM", "IBM"]
    a = items[0]
    assert (a.data_type, a.headline, a.url, a.sentiment) == (
        "news", "IBM beats on software revenue", "https://news.example.com/ibm-beats", 0.412)
    assert a.timestamp == datetime(2024, 11, 12, 21, 30, tzinfo=UTC)
    assert a.item_id == url_id("https://news.example.com/ibm-beats") and len(a.item_id) == 32
    assert a.metadata["ticker_sentiment_score"] == 0.51 and a.metadata["ticker_relevance"] == 0.95
    assert a.metadata["tickers"] == ["IBM", "MSFT"]
    assert a.metadata["ticker_sentiment"]["MSFT"] == {"score": -0.05, "relevance": 0.2, "label": "Neutral"}
    assert items[1].sentiment == -0.281


def test_news_per_ticker_mentioned_time_zone_and_clipping() -> None:
    doc = load("news_sentiment_ibm.json")
    doc["feed"][0]["overall_sentiment_score"] = 1.7
    doc["feed"][1]["overall_sentiment_score"] = "-1.25"
    items = parse_news(doc, None, time_zone="US/Eastern")
    assert [(i.symbol, i.sentiment) for i in items] == [("IBM", 1.0), ("MSFT", 1.0), ("IBM", -1.0)]
    assert items[0].timestamp == datetime(2024, 11, 13, 2, 30, tzinfo=UTC)


@pytest.mark.parametrize("name,kind,retriable", [
    ("note_call_frequency.json", AlphaVantageThrottled, True),
    ("information_daily_limit.json", AlphaVantageThrottled, True),
    ("information_premium.json", AlphaVantagePremium, False),
    ("information_demo_key.json", AlphaVantageKeyRefused, False),
    ("information_invalid_inputs.json", AlphaVantageRefused, False),
    ("error_message.json", SourceError, False),
])
def test_error_bodies_are_never_parsed_as_data(name: str, kind: type[SourceError], retriable: bool) -> None:
    for parse in (lambda d: parse_time_series(d, "IBM"), lambda d: parse_global_quote(d, "IBM"), parse_news):
        with pytest.raises(kind) as err:
            parse(load(name))
        assert err.value.retriable is retriable
    check_payload({"Time Series (Daily)": {}}, "x")  # data passes


def test_key_from_environment_only() -> None:
    assert AlphaVantageSettings().api_key({}) is None
    key = AlphaVantageSettings().api_key({"ALPHA_VANTAGE_API_KEY": " k1 "})
    assert isinstance(key, SecretStr) and key.get_secret_value() == "k1" and "k1" not in repr(key)
    with pytest.raises(ConfigError):
        AlphaVantageSource(AlphaVantageSettings(), env={})


async def test_daily_limiter_refuses_after_the_day_budget() -> None:
    store = MemoryQuotaStore()
    limiter = DailyLimitedRateLimiter(100.0, 1.0, DailyQuota("alpha_vantage", 2, store))
    await limiter.acquire()
    await limiter.acquire()
    with pytest.raises(QuotaSpent):
        await asyncio.wait_for(limiter.acquire(), 0.1)
    assert list(store.counts.values()) == [2]


# ---------------------------------------------------------------------------------------------- source

FILES = {
    "TIME_SERIES_INTRADAY": "intraday_ibm_5min.json", "TIME_SERIES_DAILY": "daily_ibm.json",
    "TIME_SERIES_DAILY_ADJUSTED": "daily_adjusted_ibm.json", "GLOBAL_QUOTE": "global_quote_ibm.json",
    "NEWS_SENTIMENT": "news_sentiment_ibm.json", "CURRENCY_EXCHANGE_RATE": "currency_exchange_rate_usd_jpy.json",
    "FX_DAILY": "fx_daily_eurusd.json", "DIGITAL_CURRENCY_DAILY": "digital_currency_daily_btc_eur.json",
    "TIME_SERIES_WEEKLY": "weekly_ibm.json", "TIME_SERIES_WEEKLY_ADJUSTED": "weekly_adjusted_ibm.json",
    "TIME_SERIES_MONTHLY_ADJUSTED": "monthly_adjusted_ibm.json", "FX_WEEKLY": "fx_weekly_eurusd.json",
    "DIGITAL_CURRENCY_WEEKLY": "digital_currency_weekly_btc_eur.json",
}


class FakeAlphaVantage:
    """GET /query; `script[(function, symbol)]` lists answers (status, fixture or None, headers) given first."""

    def __init__(self, script: dict[tuple[str, str], list[tuple[int, str | None, dict[str, str]]]] | None = None):
        self.seen: list[dict[str, str]] = []
        self.script = script or {}

    async def query(self, request: web.Request) -> web.Response:
        q = dict(request.query)
        self.seen.append(q)
        function, symbol = q["function"], q.get("symbol") or q.get("tickers", "")
        steps = self.script.get((function, symbol))
        if steps:
            status, name, headers = steps.pop(0)
            if name is None:  # a careless error page that echoes the whole URL, key included
                return web.json_response({"message": f"denied: {request.url}"}, status=status, headers=headers)
            return web.Response(body=(FIX / name).read_bytes(), status=status, headers=headers,
                                content_type="application/json")
        return web.Response(body=(FIX / FILES[function]).read_bytes(), content_type="application/json")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/query", self.query)
        return app


def settings(base_url: str, **kw: Any) -> AlphaVantageSettings:
    defaults: dict[str, Any] = {"base_url": base_url, "retry_attempts": 3, "retry_base_delay": 0.01,
                                "request_timeout_seconds": 2.0, "rate_limit_calls": 1000, "daily_limit_calls": 1000,
                                "interval_seconds": 0.01}
    return AlphaVantageSettings(**{**defaults, **kw})


async def test_poll_all_functions(serve: Serve) -> None:
    fake = FakeAlphaVantage()
    s = settings(await serve(fake.app()), symbols=["ibm"],
                 functions=["intraday", "daily", "daily_adjusted", "global_quote", "news_sentiment"])
    src = AlphaVantageSource(s, api_key=SecretStr(KEY))
    async with aiohttp.ClientSession() as session:
        first = await src.poll_once(session)
        second = await src.poll_once(session)
    kinds = [(p.data_type, p.item_id if p.data_type != "news" else "-") for p in first]
    assert kinds == [("bar", "5m")] * 4 + [("bar", "1d")] * 5 + [("bar", "1d")] + [("news", "-")] * 2
    assert all(p.source == "alpha_vantage" and p.symbol == "IBM" for p in first)
    # Unchanged quote and seen news are not repeated; each bar series re-sends only its latest bar.
    assert [(p.data_type, p.item_id) for p in second] == [("bar", "5m"), ("bar", "1d"), ("bar", "1d")]
    intraday = next(q for q in fake.seen if q["function"] == "TIME_SERIES_INTRADAY")
    assert intraday == {"function": "TIME_SERIES_INTRADAY", "symbol": "IBM", "interval": "5min",
                        "outputsize": "compact", "adjusted": "false", "apikey": KEY}
    news = next(q for q in fake.seen if q["function"] == "NEWS_SENTIMENT")
    assert news["tickers"] == "IBM" and news["sort"] == "LATEST" and news["limit"] == "50"


@pytest.mark.parametrize("status,headers", [(429, {"Retry-After": "0"}), (500, {})])
async def test_retry_then_success(serve: Serve, status: int, headers: dict[str, str]) -> None:
    fake = FakeAlphaVantage({("GLOBAL_QUOTE", "IBM"): [(status, "error_message.json", headers)]})
    src = AlphaVantageSource(settings(await serve(fake.app())), api_key=SecretStr(KEY))
    async with aiohttp.ClientSession() as session:
        [q] = await src.global_quote(session, "IBM")
    assert q.close == 211.45 and len(fake.seen) == 2


async def test_throttle_body_ends_the_round_and_is_logged_redacted(
        serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeAlphaVantage({("GLOBAL_QUOTE", "IBM"): [(200, "note_call_frequency.json", {})]})
    src = AlphaVantageSource(settings(await serve(fake.app()), symbols=["IBM", "MSFT"]), api_key=SecretStr(KEY))
    caplog.set_level(logging.DEBUG)
    async with aiohttp.ClientSession() as session:
        assert await src.poll_once(session) == []
        assert [p.symbol for p in await src.poll_once(session)] == ["IBM", "IBM"]  # MSFT answered with IBM's file
    assert [q["symbol"] for q in fake.seen] == ["IBM", "IBM", "MSFT"]  # MSFT was not asked in the throttled round
    assert "throttled at global_quote for IBM" in caplog.text
    assert KEY not in caplog.text


async def test_a_refused_call_skips_that_call_only_and_warns_once(
        serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    # NEWS_SENTIMENT answers "Invalid inputs" for a ticker it does not know: not the call budget, so the round
    # goes on to the other symbol and function instead of ending at the first symbol every round.
    refused = [(200, "information_invalid_inputs.json", {})] * 2
    fake = FakeAlphaVantage({("NEWS_SENTIMENT", "BRK.B"): list(refused)})
    src = AlphaVantageSource(settings(await serve(fake.app()), symbols=["BRK.B", "IBM"],
                                      functions=["news_sentiment", "global_quote"]), api_key=SecretStr(KEY))
    caplog.set_level(logging.WARNING)
    async with aiohttp.ClientSession() as session:
        first = await src.poll_once(session)
        await src.poll_once(session)
    asked = [(q["function"], q.get("tickers") or q.get("symbol")) for q in fake.seen]
    assert asked[:4] == [("NEWS_SENTIMENT", "BRK.B"), ("NEWS_SENTIMENT", "IBM"), ("GLOBAL_QUOTE", "BRK.B"),
                         ("GLOBAL_QUOTE", "IBM")]
    assert {p.data_type for p in first} == {"news", "bar"}
    assert caplog.text.count("news_sentiment for BRK.B refused") == 1
    assert KEY not in caplog.text


@pytest.mark.parametrize("body", ["information_demo_key.json", "error_message_invalid_key.json"])
async def test_a_refused_key_ends_the_round_and_is_warned_once(
        serve: Serve, caplog: pytest.LogCaptureFixture, body: str) -> None:
    """The demo key's "Information", and the "Error Message" a wrong or missing key gets: every call would be
    refused alike, so the round ends (it was counted answered, and the day's calls were spent on every symbol)."""
    fake = FakeAlphaVantage({("GLOBAL_QUOTE", "IBM"): [(200, body, {})] * 2})
    src = AlphaVantageSource(settings(await serve(fake.app()), symbols=["IBM", "MSFT"]), api_key=SecretStr(KEY))
    caplog.set_level(logging.WARNING)
    async with aiohttp.ClientSession() as session:
        assert await src.poll_once(session) == []
        assert await src.poll_once(session) == []
    assert [q["symbol"] for q in fake.seen] == ["IBM", "IBM"]  # MSFT is never asked with a refused key
    assert caplog.text.count("the API key was refused") == 1 and "throttled" not in caplog.text
    assert src._failed_round() is not None  # the source shows failing, not answered


async def test_premium_function_is_dropped_and_others_continue(
        serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeAlphaVantage({("TIME_SERIES_DAILY_ADJUSTED", "IBM"): [(200, "information_premium.json", {})]})
    src = AlphaVantageSource(settings(await serve(fake.app()), symbols=["IBM", "MSFT"],
                                      functions=["daily_adjusted", "global_quote"]), api_key=SecretStr(KEY))
    caplog.set_level(logging.WARNING)
    async with aiohttp.ClientSession() as session:
        points = await src.poll_once(session)
    assert [q["function"] for q in fake.seen] == ["TIME_SERIES_DAILY_ADJUSTED", "GLOBAL_QUOTE", "GLOBAL_QUOTE"]
    assert src.functions == ["global_quote"] and [p.data_type for p in points] == ["bar", "bar"]
    assert "not in this key's plan" in caplog.text


@pytest.mark.parametrize("step", [
    (200, "error_message.json", {}), (401, None, {}), (429, None, {"Retry-After": "0"}), (500, None, {}),
])
async def test_key_never_in_errors_or_logs(serve: Serve, caplog: pytest.LogCaptureFixture,
                                           step: tuple[int, str | None, dict[str, str]]) -> None:
    fake = FakeAlphaVantage({("TIME_SERIES_INTRADAY", "BAD"): [step] * 6})
    src = AlphaVantageSource(settings(await serve(fake.app()), symbols=["BAD", "IBM"], functions=["intraday"]),
                             api_key=SecretStr(KEY))
    caplog.set_level(logging.DEBUG)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(SourceError) as err:
            await src.intraday(session, "BAD")
        points = await src.poll_once(session)
    assert fake.seen[0]["apikey"] == KEY  # it was sent...
    assert KEY not in str(err.value) and KEY not in caplog.text  # ...and never shown
    assert err.value.retriable is (step[0] in (429, 500))
    assert {p.symbol for p in points} == {"IBM"}
    assert "intraday for BAD failed" in caplog.text
    if step[0] == 401:
        assert "apikey=***" in str(err.value)


async def test_history_daily_filter_and_intraday_months(serve: Serve) -> None:
    fake = FakeAlphaVantage()
    src = AlphaVantageSource(settings(await serve(fake.app())), api_key=SecretStr(KEY))
    async with aiohttp.ClientSession() as session:
        daily = await src.history(session, "IBM", date(2024, 11, 12), date(2024, 11, 12))
        minute = await src.history(session, "IBM", datetime(2024, 2, 20, tzinfo=UTC),
                                   datetime(2024, 3, 11, 13, 35, tzinfo=UTC), interval="5min")
    assert [b.timestamp for b in daily] == [datetime(2024, 11, 12, tzinfo=UTC)]
    assert fake.seen[0]["outputsize"] == "full" and fake.seen[0]["function"] == "TIME_SERIES_DAILY"
    assert [q.get("month") for q in fake.seen[1:]] == ["2024-02", "2024-03"]
    # Both months answered with the same fixture: no duplicates, and the end is exclusive.
    assert [b.timestamp.hour * 60 + b.timestamp.minute for b in minute] == [20 * 60 + 55, 21 * 60, 13 * 60 + 30]


async def test_history_of_weekly_bars_asks_the_weekly_series(serve: Serve) -> None:
    fake = FakeAlphaVantage()
    src = AlphaVantageSource(settings(await serve(fake.app())), api_key=SecretStr(KEY))
    async with aiohttp.ClientSession() as session:
        weeks = await src.history(session, "IBM", date(2024, 11, 20), date(2024, 11, 24), interval="1wk")
    # the week begun before the start (Monday the 18th) is in; the forming week (its Monday, the 25th, is after
    # the end) is left out
    assert [(b.timestamp.day, b.interval) for b in weeks] == [(18, "1wk")]
    assert fake.seen == [{"function": "TIME_SERIES_WEEKLY", "symbol": "IBM", "apikey": KEY}]


def test_weekly_and_monthly_bars_sit_at_their_periods_start() -> None:
    """A weekly key is the last trading day of its week, and the forming week's moves every day (2024-11-26, then
    2024-11-27): keyed on it, each poll would store a new bar for the same week beside the stale one."""
    weekly = parse_time_series(load("weekly_adjusted_ibm.json"), "IBM")
    assert [(b.timestamp, b.metadata["period_end"]) for b in weekly] == [
        (datetime(2024, 11, 4, tzinfo=UTC), "2024-11-08"), (datetime(2024, 11, 11, tzinfo=UTC), "2024-11-15"),
        (datetime(2024, 11, 18, tzinfo=UTC), "2024-11-22"), (datetime(2024, 11, 25, tzinfo=UTC), "2024-11-27")]
    assert {(b.interval, b.item_id) for b in weekly} == {("1wk", "1wk")}
    assert weekly[0].metadata == {"adj_close": 212.05, "period_end": "2024-11-08"}
    assert (weekly[1].metadata["dividend"], weekly[1].close, weekly[1].volume) == (1.67, 204.99, 19434218.0)
    forming = parse_time_series(load("weekly_ibm.json"), "IBM")
    assert (forming[-1].timestamp, forming[-1].metadata) == (weekly[-1].timestamp, {"period_end": "2024-11-26"})
    monthly = parse_time_series(load("monthly_adjusted_ibm.json"), "IBM")
    assert [(b.timestamp, b.interval, b.metadata["period_end"]) for b in monthly] == [
        (datetime(2024, 10, 1, tzinfo=UTC), "1mo", "2024-10-31"),
        (datetime(2024, 11, 1, tzinfo=UTC), "1mo", "2024-11-27")]
    fx = parse_time_series(load("fx_weekly_eurusd.json"))
    assert [(b.symbol, b.timestamp.day, b.interval, b.close) for b in fx] == [
        ("EURUSD", 18, "1wk", 1.0417), ("EURUSD", 25, "1wk", 1.0492)]
    btc = parse_time_series(load("digital_currency_weekly_btc_eur.json"))  # crypto weeks end on Sunday
    assert [(b.symbol, b.timestamp.day, b.interval, b.volume) for b in btc] == [
        ("BTCEUR", 18, "1wk", 2210.4051), ("BTCEUR", 25, "1wk", 530.112)]


async def test_poll_weekly_and_monthly_series(serve: Serve) -> None:
    fake = FakeAlphaVantage()
    s = settings(await serve(fake.app()), symbols=["IBM"], functions=["weekly_adjusted", "monthly_adjusted"],
                 fx_pairs=["EUR/USD"], fx_functions=["fx_weekly"], crypto=["BTC/EUR"],
                 crypto_functions=["digital_currency_weekly"])
    src = AlphaVantageSource(s, api_key=SecretStr(KEY))
    async with aiohttp.ClientSession() as session:
        first = await src.poll_once(session)
        second = await src.poll_once(session)
    assert [(p.symbol, p.interval) for p in first] == (
        [("IBM", "1wk")] * 4 + [("IBM", "1mo")] * 2 + [("EURUSD", "1wk")] * 2 + [("BTCEUR", "1wk")] * 2)
    # each series re-sends its forming period only, at the same timestamp as before
    assert [(p.symbol, p.interval, p.timestamp.day) for p in second] == [
        ("IBM", "1wk", 25), ("IBM", "1mo", 1), ("EURUSD", "1wk", 25), ("BTCEUR", "1wk", 25)]
    assert [q["function"] for q in fake.seen[:4]] == [
        "TIME_SERIES_WEEKLY_ADJUSTED", "TIME_SERIES_MONTHLY_ADJUSTED", "FX_WEEKLY", "DIGITAL_CURRENCY_WEEKLY"]
    assert [sorted(q) for q in fake.seen[:4]] == [["apikey", "function", "symbol"]] * 2 + [
        ["apikey", "from_symbol", "function", "to_symbol"], ["apikey", "function", "market", "symbol"]]


# ---------------------------------------------------------------------------------------------- FX, crypto, sessions


def test_exchange_rate_is_a_tick_with_bid_and_ask() -> None:
    [t] = parse_exchange_rate(load("currency_exchange_rate_usd_jpy.json"))
    assert (t.symbol, t.data_type, t.price, t.bid, t.ask, t.item_id) == (
        "USDJPY", "tick", 154.712, 154.708, 154.716, "exchange_rate")
    assert t.timestamp == datetime(2024, 11, 22, 15, 4, 1, tzinfo=UTC)
    assert t.metadata == {"from_name": "United States Dollar", "to_name": "Japanese Yen"}


def test_exchange_rate_body_on_the_quote_path_is_refused_not_empty() -> None:
    with pytest.raises(AlphaVantageUnexpected, match="no 'Global Quote' object"):
        parse_global_quote(load("currency_exchange_rate_usd_jpy.json"), "USDJPY")
    with pytest.raises(AlphaVantageUnexpected, match="no 'Realtime Currency Exchange Rate'"):
        parse_exchange_rate(load("global_quote_ibm.json"))
    with pytest.raises(AlphaVantageUnexpected, match="no 'Time Series' object"):
        parse_time_series(load("currency_exchange_rate_usd_jpy.json"), "EURUSD")


def test_fx_daily_and_digital_currency_daily_bars() -> None:
    fx = parse_time_series(load("fx_daily_eurusd.json"))
    assert [(b.symbol, b.timestamp.day, b.interval, b.close, b.volume) for b in fx] == [
        ("EURUSD", 21, "1d", 1.0472, None), ("EURUSD", 22, "1d", 1.0379, None)]
    assert fx[0].timestamp == datetime(2024, 11, 21, tzinfo=UTC) and "session" not in fx[0].metadata
    btc = parse_time_series(load("digital_currency_daily_btc_eur.json"))
    assert [(b.symbol, b.timestamp, b.interval, b.open, b.close, b.volume) for b in btc] == [
        ("BTCEUR", datetime(2024, 11, 21, tzinfo=UTC), "1d", 87520.0, 93410.1, 402.55106),
        ("BTCEUR", datetime(2024, 11, 22, tzinfo=UTC), "1d", 93410.1, 94102.5, 161.2384)]
    # the older layout: one column per currency, "1a. open (CNY)" / "1b. open (USD)"
    old = {"Meta Data": {"2. Digital Currency Code": "BTC", "4. Market Code": "CNY", "7. Time Zone": "UTC"},
           "Time Series (Digital Currency Daily)": {"2019-03-01": {
               "1a. open (CNY)": "25000.0", "1b. open (USD)": "3800.0", "2a. high (CNY)": "25500.0",
               "2b. high (USD)": "3850.0", "3a. low (CNY)": "24800.0", "3b. low (USD)": "3780.0",
               "4a. close (CNY)": "25400.0", "4b. close (USD)": "3830.0", "5. volume": "9000.5",
               "6. market cap (USD)": "34000000.0"}}}
    [b] = parse_time_series(old)
    assert (b.symbol, b.open, b.high, b.low, b.close, b.volume) == ("BTCCNY", 25000.0, 25500.0, 24800.0, 25400.0,
                                                                    9000.5)


def _fx(zone: str, series: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """An FX body whose Meta Data names its time zone `zone`, one bar (all prices 1.1) per key."""
    bar = {"1. open": "1.1", "2. high": "1.1", "3. low": "1.1", "4. close": "1.1"}
    return {"Meta Data": {"2. From Symbol": "EUR", "3. To Symbol": "USD", "5. Time Zone": zone},
            series: {k: dict(bar) for k in keys}}


def test_a_time_zone_written_as_an_offset_keeps_the_bars() -> None:
    """Alpha Vantage's FX_DAILY/_WEEKLY/_MONTHLY answers have said "Time Zone": "GMT+8", which ZoneInfo does not
    know: the KeyError lost every bar of the response. An offset is read as UTC+08:00; a date key needs no zone."""
    [week] = parse_time_series(_fx("GMT+8", "Time Series FX (Weekly)", ("2019-02-22",)))
    assert (week.symbol, week.interval, week.timestamp) == ("EURUSD", "1wk", datetime(2019, 2, 18, tzinfo=UTC))
    assert week.metadata == {"period_end": "2019-02-22"}
    [minute] = parse_time_series(_fx("GMT+8", "Time Series FX (5min)", ("2019-02-22 02:45:00",)))
    assert minute.timestamp == datetime(2019, 2, 21, 18, 45, tzinfo=UTC)
    [day] = parse_time_series(_fx("Mars/Olympus_Mons", "Time Series FX (Daily)", ("2019-02-22",)))
    assert day.timestamp == datetime(2019, 2, 22, tzinfo=UTC)
    with pytest.raises(AlphaVantageUnexpected, match="time zone"):  # a clock time in it cannot be placed
        parse_time_series(_fx("Mars/Olympus_Mons", "Time Series FX (5min)", ("2019-02-22 02:45:00",)))


def test_rows_of_a_layout_without_ohlc_are_unexpected_not_an_empty_series() -> None:
    """Alpha Vantage's crypto intraday rows carry "1a. price (CNY)", no open/high/low/close: every row skipped
    came back as [], an answered call with no bars and no warning."""
    doc = {"Meta Data": {"2. Digital Currency Code": "BTC", "4. Market Code": "CNY", "8. Time Zone": "UTC"},
           "Time Series (Digital Currency Intraday)": {"2017-12-20 19:30:00": {
               "1a. price (CNY)": "123574.46", "1b. price (USD)": "18780.03", "2. volume": "1.19"}}}
    with pytest.raises(AlphaVantageUnexpected, match="none of 1 rows"):
        parse_time_series(doc)


def test_intraday_bars_carry_their_us_session() -> None:
    doc = {"Meta Data": {"2. Symbol": "IBM", "4. Interval": "5min", "6. Time Zone": "US/Eastern"},
           "Time Series (5min)": {k: {"1. open": "1", "2. high": "1", "3. low": "1", "4. close": "1", "5. volume": "1"}
                                  for k in ("2024-03-11 04:00:00", "2024-03-11 09:25:00", "2024-03-11 09:30:00",
                                            "2024-03-11 15:55:00", "2024-03-11 16:00:00", "2024-03-11 19:55:00")}}
    bars = parse_time_series(doc)
    assert [b.metadata.get("session") for b in bars] == ["pre", "pre", "regular", "regular", "post", "post"]
    assert bars[2].timestamp == datetime(2024, 3, 11, 13, 30, tzinfo=UTC)  # 09:30 EDT
    assert all("session" not in b.metadata for b in parse_time_series(load("daily_ibm.json")))


def test_intraday_sessions_follow_the_exchange_calendar_on_an_early_close() -> None:
    """2024-11-29 (the day after Thanksgiving) closed at 13:00 ET: 13:00-17:00 is the post-market, not the
    regular session a fixed 09:30-16:00 clock would say."""
    keys = ("2024-11-29 09:30:00", "2024-11-29 12:55:00", "2024-11-29 13:00:00", "2024-11-29 15:55:00",
            "2024-11-29 16:55:00")
    doc = {"Meta Data": {"2. Symbol": "IBM", "4. Interval": "5min", "6. Time Zone": "US/Eastern"},
           "Time Series (5min)": {k: {"1. open": "1", "2. high": "1", "3. low": "1", "4. close": "1", "5. volume": "1"}
                                  for k in keys}}
    bars = parse_time_series(doc)
    assert [b.metadata.get("session") for b in bars] == ["regular", "regular", "post", "post", "post"]


def test_pairs_are_read_or_refused() -> None:
    assert split_pair("eur/usd") == ("EUR", "USD") and split_pair("BTCUSD") == ("BTC", "USD")
    with pytest.raises(ConfigError):
        split_pair("EURO")


async def test_poll_fx_pairs_and_crypto(serve: Serve) -> None:
    fake = FakeAlphaVantage()
    s = settings(await serve(fake.app()), symbols=[], fx_pairs=["USD/JPY"], crypto=["BTC/EUR"],
                 fx_functions=["currency_exchange_rate", "fx_daily"],
                 crypto_functions=["digital_currency_daily"])
    src = AlphaVantageSource(s, api_key=SecretStr(KEY))
    async with aiohttp.ClientSession() as session:
        first = await src.poll_once(session)
        second = await src.poll_once(session)
    assert [(p.symbol, p.data_type) for p in first] == [("USDJPY", "tick"), ("EURUSD", "bar"), ("EURUSD", "bar"),
                                                        ("BTCEUR", "bar"), ("BTCEUR", "bar")]
    assert [(p.symbol, p.timestamp.day) for p in second] == [("EURUSD", 22), ("BTCEUR", 22)]  # unchanged rate: none
    by_function = {q["function"]: q for q in fake.seen}
    assert by_function["CURRENCY_EXCHANGE_RATE"]["from_currency"] == "USD"
    assert by_function["CURRENCY_EXCHANGE_RATE"]["to_currency"] == "JPY"
    assert (by_function["FX_DAILY"]["from_symbol"], by_function["FX_DAILY"]["to_symbol"]) == ("USD", "JPY")
    assert (by_function["DIGITAL_CURRENCY_DAILY"]["symbol"], by_function["DIGITAL_CURRENCY_DAILY"]["market"]) == (
        "BTC", "EUR")


async def test_odd_body_and_unknown_symbol_are_warned_once_and_counted(
        serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeAlphaVantage({("GLOBAL_QUOTE", "USDJPY"): [(200, "currency_exchange_rate_usd_jpy.json", {})] * 2,
                             ("GLOBAL_QUOTE", "NOPE"): [(200, "global_quote_empty.json", {})] * 2})
    src = AlphaVantageSource(settings(await serve(fake.app()), symbols=["USDJPY", "NOPE", "IBM"]),
                             api_key=SecretStr(KEY))
    caplog.set_level(logging.WARNING)
    async with aiohttp.ClientSession() as session:
        first = await src.poll_once(session)
        await src.poll_once(session)
    assert [p.symbol for p in first] == ["IBM"]
    assert src.unexpected["global_quote"] == 2 and src.unknown["NOPE"] == 2
    odd = [r for r in caplog.records if "unexpected global_quote body" in r.getMessage()]
    unknown = [r for r in caplog.records if "GLOBAL_QUOTE for NOPE is empty" in r.getMessage()]
    assert len(odd) == 1 and "USDJPY" in odd[0].getMessage() and len(unknown) == 1
    assert KEY not in caplog.text


# ---------------------------------------------------------------------------------------------- daily quota


async def test_a_restarted_source_continues_the_days_count(serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    """The quota is counted in the store it is given: a new source (a restart) on the same store may make only
    what is left of the day's calls, then makes none and says so once."""
    fake = FakeAlphaVantage()
    base = await serve(fake.app())
    store = MemoryQuotaStore()
    s = settings(base, symbols=["ibm", "msft"], functions=["global_quote"], daily_limit_calls=3)
    async with aiohttp.ClientSession() as session:
        first = AlphaVantageSource(s, api_key=SecretStr(KEY), quota_store=store)
        await first.poll_once(session)
        assert len(fake.seen) == 2 and list(store.counts.values()) == [2]
        restarted = AlphaVantageSource(s, api_key=SecretStr(KEY), quota_store=store)
        caplog.set_level(logging.WARNING, logger="producers.alpha_vantage")
        await restarted.poll_once(session)
        await restarted.poll_once(session)
    assert len(fake.seen) == 3  # one call left for the restarted source, then none
    assert list(store.counts.values()) == [3]
    spent = [r for r in caplog.records if "used up" in r.getMessage()]
    assert len(spent) == 1 and KEY not in caplog.text


async def test_a_new_leader_reads_the_count_again(serve: Serve) -> None:
    """A source that starts leading again (fetch) reloads the count another worker saved meanwhile."""
    fake = FakeAlphaVantage()
    base = await serve(fake.app())
    store = MemoryQuotaStore()
    s = settings(base, symbols=["ibm"], functions=["global_quote"], daily_limit_calls=2, interval_seconds=0.01)
    src = AlphaVantageSource(s, api_key=SecretStr(KEY), quota_store=store)
    async with aiohttp.ClientSession() as session:
        await src.poll_once(session)
        assert len(fake.seen) == 1
        day = src.quota.day
        assert day is not None
        await store.save("alpha_vantage", day, 2)  # the other worker, leading meanwhile, used the rest
        batches = src.fetch(session)
        task = asyncio.ensure_future(batches.__anext__())
        await asyncio.sleep(0.2)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await batches.aclose()
    assert len(fake.seen) == 1


async def test_a_store_that_cannot_count_lets_no_call_out(serve: Serve) -> None:
    """The store failing is the source failing (retriable: the supervisor restarts it), never an uncounted call."""

    class Down(MemoryQuotaStore):
        async def load(self, provider: str, day: date) -> int:
            raise OSError("broker unreachable")

    fake = FakeAlphaVantage()
    s = settings(await serve(fake.app()), symbols=["ibm"], functions=["global_quote"])
    src = AlphaVantageSource(s, api_key=SecretStr(KEY), quota_store=Down())
    async with aiohttp.ClientSession() as session:
        with pytest.raises(QuotaStoreUnavailable, match="broker unreachable") as err:
            await src.poll_once(session)
    assert err.value.retriable and fake.seen == []


async def test_the_sections_response_cap_applies(serve: Serve) -> None:
    """max_response_bytes reaches get_json: the 2.3 kB news body is over a 1 kB cap (the 32 MiB default is not)."""
    fake = FakeAlphaVantage()
    src = AlphaVantageSource(settings(await serve(fake.app()), max_response_bytes=1024), api_key=SecretStr(KEY))
    async with aiohttp.ClientSession() as session:
        with pytest.raises(SourceError, match="over the 1024-byte cap") as err:
            await src.news(session, "IBM")
    assert not err.value.retriable and len(fake.seen) == 1


async def test_the_sections_retry_after_cap_applies(serve: Serve) -> None:
    """max_retry_after_seconds reaches get_json: a 429 asking for 60 s waits the configured 0 s, not 60."""
    fake = FakeAlphaVantage({("GLOBAL_QUOTE", "IBM"): [(429, None, {"Retry-After": "60"})]})
    src = AlphaVantageSource(settings(await serve(fake.app()), max_retry_after_seconds=0), api_key=SecretStr(KEY))
    async with aiohttp.ClientSession() as session:
        [q] = await asyncio.wait_for(src.global_quote(session, "IBM"), 10)
    assert q.close == 211.45 and len(fake.seen) == 2
