"""Finnhub REST and websocket against a local aiohttp server serving hand-written fixtures."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr

from producers.base import BadEpoch, from_epoch
from producers.finnhub import (
    CANDLE_EPOCH,
    NEWS_EPOCH,
    QUOTE_EPOCH,
    TRADE_EPOCH,
    FinnhubAccessDenied,
    FinnhubClient,
    FinnhubSettings,
    FinnhubSource,
    FinnhubTradeStream,
    FinnhubUnexpected,
    parse_candles,
    parse_company_news,
    parse_news_sentiment,
    parse_quote,
    parse_trades,
    sentiment_from_news_score,
    trading_date,
)
from streams.errors import ConfigError, SourceError
from tests.unit.producers.conftest import Serve

FIX = Path(__file__).parent / "fixtures" / "finnhub"
KEY = "fk_SECRET_finnhub_1234567890"


def load(name: str) -> Any:
    return json.loads((FIX / name).read_text())






class FakeFinnhub:
    """Answers (path, symbol) with a configured status/body; records every request it saw."""

    def __init__(self) -> None:
        self.responses: dict[tuple[str, str], tuple[int, bytes, dict[str, str], float]] = {}
        self.seen: list[tuple[str, dict[str, str], dict[str, str]]] = []

    def set(self, path: str, symbol: str, *, status: int = 200, body: bytes | str = b"",
            fixture: str | None = None, headers: dict[str, str] | None = None, delay: float = 0.0) -> None:
        data = (FIX / fixture).read_bytes() if fixture else body.encode() if isinstance(body, str) else body
        self.responses[(path, symbol)] = (status, data, headers or {}, delay)

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((request.path, dict(request.query), dict(request.headers)))
        status, body, headers, delay = self.responses.get(
            (request.path, request.query.get("symbol", "")), (404, b'{"error":"not found"}', {}, 0.0))
        if delay:
            await asyncio.sleep(delay)
        # An unfriendly provider: error bodies echo the request URL, token and all.
        body = body.replace(b"{url}", str(request.url).encode())
        return web.Response(status=status, body=body, headers=headers, content_type="application/json")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self.handle)
        return app

    def calls(self, path: str) -> int:
        return sum(1 for p, _, _ in self.seen if p == path)


def settings(base_url: str, **kw: Any) -> FinnhubSettings:
    defaults: dict[str, Any] = {
        "symbols": ["MSFT"], "base_url": base_url, "retry_attempts": 2, "retry_base_delay": 0.01,
        "request_timeout_seconds": 2.0, "rate_limit_calls": 1000, "interval_seconds": 0.01,
    }
    return FinnhubSettings(**{**defaults, **kw})


# ---------------------------------------------------------------------------------------------- parsers


def test_parse_quote_maps_fields_and_epoch_seconds() -> None:
    [p] = parse_quote(load("quote_msft.json"), "msft")
    assert (p.symbol, p.source, p.data_type, p.price) == ("MSFT", "finnhub", "tick", 415.5)
    assert p.timestamp == datetime(2024, 5, 31, 20, 0, tzinfo=UTC)
    assert (p.open, p.high, p.low) == (412.0, 417.0, 411.2)
    assert p.metadata == {"prev_close": 413.4, "change": 2.1, "change_percent": 0.508}


def test_parse_quote_unknown_symbol_is_empty_and_error_body_is_an_error() -> None:
    assert parse_quote(load("quote_unknown_symbol.json"), "NOPE") == []
    with pytest.raises(SourceError, match="don't have access"):
        parse_quote(load("error_no_access.json"), "MSFT")


def test_parse_candles_bars_and_no_data() -> None:
    bars = parse_candles(load("candle_msft_d.json"), "MSFT", "D")
    assert len(bars) == 3
    b = bars[1]
    assert (b.data_type, b.interval, b.item_id) == ("bar", "1d", "1d")
    assert (b.open, b.high, b.low, b.close, b.volume) == (425.0, 430.0, 423.1, 428.7, 18250000.0)
    assert b.timestamp == datetime(2024, 5, 28, tzinfo=UTC)
    assert parse_candles(load("candle_no_data.json"), "MSFT") == []


def test_parse_candles_rejects_ragged_arrays_and_bad_status() -> None:
    doc = load("candle_msft_d.json")
    doc["c"] = doc["c"][:2]
    with pytest.raises(SourceError, match="length"):
        parse_candles(doc, "MSFT")
    with pytest.raises(SourceError, match="status"):
        parse_candles({"s": "weird"}, "MSFT")


def test_parse_company_news() -> None:
    items = parse_company_news(load("company_news_msft.json"), "MSFT")
    assert [i.item_id for i in items] == ["120001", "120002"]  # the headline-less item is skipped
    first, second = items
    assert first.data_type == "news" and first.headline.startswith("Microsoft beats")
    assert first.url == "https://example.com/news/120001" and first.text == "Revenue rose on Azure demand."
    assert first.timestamp == datetime(2024, 5, 31, 17, 0, tzinfo=UTC)
    assert first.sentiment is None
    assert first.metadata["publisher"] == "Reuters"
    assert second.metadata["tickers"] == ["MSFT", "GOOGL"] and second.text is None


@pytest.mark.parametrize(("score", "expected"), [(0.0, -1.0), (0.5, 0.0), (1.0, 1.0), (0.25, -0.5), (1.2, 1.0)])
def test_sentiment_mapping(score: float, expected: float) -> None:
    assert sentiment_from_news_score(score) == pytest.approx(expected)


def test_parse_news_sentiment() -> None:
    now = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
    [p] = parse_news_sentiment(load("news_sentiment_msft.json"), "MSFT", now)
    assert (p.data_type, p.symbol, p.timestamp, p.item_id) == ("news", "MSFT", now, "news-sentiment:MSFT")
    assert p.sentiment == pytest.approx(-0.5)
    assert p.headline
    assert p.metadata["buzz"] == 1.25 and p.metadata["bullish_percent"] == 0.3
    assert p.metadata["bearish_percent"] == 0.7 and p.metadata["articles_in_last_week"] == 40
    assert parse_news_sentiment({}, "MSFT", now) == []


def test_parse_trades_millis_and_distinct_ids() -> None:
    trades = parse_trades(load("ws_trades.json"))
    assert [t.symbol for t in trades] == ["AAPL", "AAPL", "TSLA", "AAPL"]
    assert all(t.data_type == "trade" and t.source == "finnhub" for t in trades)
    assert trades[0].timestamp == datetime(2024, 5, 31, 16, 0, 0, 123000, tzinfo=UTC)
    assert (trades[2].price, trades[2].volume) == (178.02, 5.0)
    # Two identical prints in the same millisecond stay two records.
    assert trades[0].item_id != trades[1].item_id
    assert len({(t.symbol, t.timestamp, t.item_id) for t in trades}) == 4
    assert trades[0].metadata == {"conditions": ["1", "12"]} and trades[2].metadata == {}


def test_equal_prints_of_one_millisecond_in_two_messages_keep_two_keys() -> None:
    """Finnhub may send the prints of one millisecond in two messages: each stays a row of its own."""
    stream = FinnhubTradeStream(FinnhubSettings(symbols=["AAPL"]), api_key=SecretStr(KEY))
    print_ = {"s": "AAPL", "p": 189.5, "t": 1717171200123, "v": 1, "c": ["1"]}
    first = stream._handle(json.dumps({"type": "trade", "data": [print_]}))
    second = stream._handle(json.dumps({"type": "trade", "data": [print_, {**print_, "t": 1717171200124}]}))
    assert [p.item_id for p in first + second[:1]] == ["AAPL:1717171200123:189.5:1:0",
                                                       "AAPL:1717171200123:189.5:1:1"]
    assert first[0].natural_key() != second[0].natural_key()


def test_a_trade_message_sent_again_is_left_out_not_new_rows() -> None:
    """Finnhub has sent every trade message two or three times in a row (finnhubio/Finnhub-API#143, #158). With
    the count carried across messages, each copy's prints got new keys (":1", ":2"): rows of their own, the volume
    counted thrice. A byte-identical copy of a recent message is left out and counted."""
    stream = FinnhubTradeStream(FinnhubSettings(symbols=["AAPL"]), api_key=SecretStr(KEY))
    msg = json.dumps({"type": "trade", "data": [{"s": "AAPL", "p": 284.45, "t": 1586876152227, "v": 300}]})
    points = [p for _ in range(3) for p in stream._handle(msg)]
    assert [p.item_id for p in points] == ["AAPL:1586876152227:284.45:300:0"] and stream.resent == 2


def test_counts_of_a_delayed_feed_are_kept_by_trade_time_not_the_wall_clock() -> None:
    """Trades two minutes old when they arrive (a delayed listing, a clock ahead): pruned against the wall clock,
    every count went at each prune, and a millisecond's second print, in the next message, took the first's key."""
    stream = FinnhubTradeStream(FinnhubSettings(symbols=["AAPL"]), api_key=SecretStr(KEY))
    stream.PRINTS_PRUNE_SECONDS = 0.0
    t = int(time.time() * 1000) - 120_000
    trade = {"s": "AAPL", "p": 10.0, "t": t, "v": 100}
    first = stream._handle(json.dumps({"type": "trade", "data": [trade]}))
    second = stream._handle(json.dumps({"type": "trade", "data": [trade, {**trade, "p": 10.01}]}))
    assert [p.item_id[-2:] for p in first + second] == [":0", ":1", ":0"]
    stream._handle(json.dumps({"type": "trade", "data": [{**trade, "t": t + 61_000}]}))
    assert all(k[1] > t for k in stream._prints)  # a minute older than the symbol's newest trade: forgotten


def test_ws_zero_volume_crypto_and_fx_trades_are_kept() -> None:
    """Finnhub sends v=0 for some crypto and FX ticks; they are trades all the same."""
    stream = FinnhubTradeStream(FinnhubSettings(symbols=["BINANCE:BTCUSDT"]), api_key=SecretStr(KEY))
    points = stream._handle(json.dumps({"type": "trade", "data": [
        {"s": "BINANCE:BTCUSDT", "p": 67012.5, "t": 1717171200123, "v": 0},
        {"s": "OANDA:EUR_USD", "p": 1.0851, "t": 1717171200123, "v": 0, "c": None}]}))
    assert [(p.symbol, p.price, p.volume, p.metadata) for p in points] == [
        ("BINANCE:BTCUSDT", 67012.5, 0.0, {}), ("OANDA:EUR_USD", 1.0851, 0.0, {})]


def test_ws_unknown_message_type_is_counted_and_warned_once(caplog: pytest.LogCaptureFixture) -> None:
    stream = FinnhubTradeStream(FinnhubSettings(symbols=["AAPL"]), api_key=SecretStr(KEY))
    caplog.set_level(logging.WARNING)
    news = json.dumps({"type": "news", "data": [{"headline": "h", "datetime": 1717171200, "related": "AAPL"}]})
    for raw in (news, news, '{"type": "ping"}', '{"type": "error", "msg": "Subscribing to too many symbols"}'):
        assert stream._handle(raw) == []
    assert stream.ignored == {"news": 2}
    assert caplog.text.count("ignored a message of type 'news'") == 1
    assert "Subscribing to too many symbols" in caplog.text


def test_key_from_environment_only() -> None:
    assert FinnhubSettings().api_key({}) is None
    key = FinnhubSettings().api_key({"FINNHUB_API_KEY": KEY})
    assert isinstance(key, SecretStr) and key.get_secret_value() == KEY
    assert KEY not in repr(key)
    with pytest.raises(ConfigError):
        FinnhubSource(FinnhubSettings(), env={})


# ---------------------------------------------------------------------------------------------- REST


async def test_source_polls_all_endpoints_with_header_token(serve: Serve) -> None:
    fake = FakeFinnhub()
    fake.set("/api/v1/quote", "MSFT", fixture="quote_msft.json")
    fake.set("/api/v1/stock/candle", "MSFT", fixture="candle_msft_d.json")
    fake.set("/api/v1/company-news", "MSFT", fixture="company_news_msft.json")
    fake.set("/api/v1/news-sentiment", "MSFT", fixture="news_sentiment_msft.json")
    base = await serve(fake.app())
    src = FinnhubSource(settings(base, endpoints=["quote", "candle", "company_news", "news_sentiment"]),
                        api_key=SecretStr(KEY))
    now = datetime(2024, 6, 1, tzinfo=UTC)
    async with aiohttp.ClientSession() as session:
        first = await src.poll_once(session, now=now)
        second = await src.poll_once(session, now=now)
    kinds = [p.data_type for p in first]
    assert kinds == ["tick", "bar", "bar", "bar", "news", "news", "news"]
    assert all(p.source == "finnhub" and p.timestamp.tzinfo is not None for p in first)
    # The unchanged quote, older bars and seen articles are not produced again; the latest bar (it may
    # still be forming) and the sentiment snapshot are.
    assert [(p.item_id, p.timestamp.day) for p in second] == [("1d", 29), ("news-sentiment:MSFT", 1)]
    for _path, query, headers in fake.seen:
        assert headers["X-Finnhub-Token"] == KEY and "token" not in query
    candle_query = next(q for p, q, _ in fake.seen if p == "/api/v1/stock/candle")
    assert candle_query["resolution"] == "D" and int(candle_query["to"]) == int(now.timestamp())
    news_query = next(q for p, q, _ in fake.seen if p == "/api/v1/company-news")
    assert (news_query["from"], news_query["to"]) == ("2024-05-30", "2024-06-01")


async def test_403_is_not_retried_and_endpoint_is_dropped(serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeFinnhub()
    fake.set("/api/v1/quote", "MSFT", fixture="quote_msft.json")
    fake.set("/api/v1/stock/candle", "MSFT", status=403, fixture="error_no_access.json")
    base = await serve(fake.app())
    client = FinnhubClient(SecretStr(KEY), base_url=base, attempts=3, base_delay=0.01)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(FinnhubAccessDenied) as err:
            await client.candles(session, "MSFT", resolution="D", start=datetime(2024, 5, 1, tzinfo=UTC),
                                 end=datetime(2024, 6, 1, tzinfo=UTC))
        assert err.value.retriable is False and "don't have access" in str(err.value)
        assert fake.calls("/api/v1/stock/candle") == 1

        src = FinnhubSource(settings(base, endpoints=["quote", "candle"]), api_key=SecretStr(KEY))
        caplog.set_level(logging.WARNING)
        first = await src.poll_once(session)
        await src.poll_once(session)
    assert [p.data_type for p in first] == ["tick"]
    assert list(src.dropped) == ["candle"]
    assert fake.calls("/api/v1/stock/candle") == 2  # once by the client above, once by the source
    assert "not in this key's plan" in caplog.text


async def test_403_for_one_symbol_drops_that_symbol_not_the_endpoint(
        serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    """Finnhub's free plan answers /quote for US listings only: a foreign symbol's 403 must not stop MSFT."""
    fake = FakeFinnhub()
    fake.set("/api/v1/quote", "BMW.DE", status=403, fixture="error_no_access.json")
    fake.set("/api/v1/quote", "MSFT", fixture="quote_msft.json")
    src = FinnhubSource(settings(await serve(fake.app()), symbols=["BMW.DE", "MSFT"]), api_key=SecretStr(KEY))
    caplog.set_level(logging.WARNING)
    async with aiohttp.ClientSession() as session:
        first = await src.poll_once(session)
        await src.poll_once(session)
    assert [(p.symbol, p.data_type) for p in first] == [("MSFT", "tick")]
    assert src.dropped == {} and list(src.denied["quote"]) == ["BMW.DE"]
    assert [q["symbol"] for p, q, _ in fake.seen] == ["BMW.DE", "MSFT", "MSFT"]  # BMW.DE asked once
    assert "quote for BMW.DE is not in this key's plan" in caplog.text and KEY not in caplog.text


async def test_403_is_asked_again_after_the_cool_down(serve: Serve) -> None:
    """A key's plan can be upgraded while the worker runs: a refused symbol, and an endpoint refused for every
    symbol, are asked once more after denied_retry_seconds, not only after a restart."""
    fake = FakeFinnhub()
    fake.set("/api/v1/quote", "BMW.DE", status=403, fixture="error_no_access.json")
    fake.set("/api/v1/quote", "MSFT", fixture="quote_msft.json")
    fake.set("/api/v1/stock/candle", "MSFT", status=403, fixture="error_no_access.json")
    fake.set("/api/v1/stock/candle", "BMW.DE", status=403, fixture="error_no_access.json")
    src = FinnhubSource(settings(await serve(fake.app()), symbols=["BMW.DE", "MSFT"], endpoints=["quote", "candle"],
                                 denied_retry_seconds=3600), api_key=SecretStr(KEY))
    t0 = datetime(2024, 6, 3, 14, tzinfo=UTC)

    def asked() -> list[tuple[str, str]]:
        return [(p.rsplit("/", 1)[-1], q["symbol"]) for p, q, _ in fake.seen]

    async with aiohttp.ClientSession() as session:
        await src.poll_once(session, now=t0)
        assert asked() == [("quote", "BMW.DE"), ("quote", "MSFT"), ("candle", "BMW.DE"), ("candle", "MSFT")]
        assert list(src.dropped) == ["candle"]
        fake.seen.clear()
        await src.poll_once(session, now=t0 + timedelta(seconds=3599))
        assert asked() == [("quote", "MSFT")]
        fake.seen.clear()
        fake.set("/api/v1/stock/candle", "MSFT", fixture="candle_msft_d.json")  # the plan was upgraded
        await src.poll_once(session, now=t0 + timedelta(seconds=3600))
        assert asked() == [("quote", "BMW.DE"), ("quote", "MSFT"), ("candle", "BMW.DE"), ("candle", "MSFT")]
    assert src.dropped == {} and list(src.denied["candle"]) == ["BMW.DE"]  # MSFT answered: only BMW.DE refused


def hourly_rounds(src: FinnhubSource, fake: FakeFinnhub,
                  session: aiohttp.ClientSession) -> Callable[[int], Awaitable[list[str]]]:
    """A poll round `hours` after a fixed start, returning the symbols asked in it."""
    t0 = datetime(2024, 6, 3, 14, tzinfo=UTC)

    async def round_at(hours: int) -> list[str]:
        fake.seen.clear()
        await src.poll_once(session, now=t0 + timedelta(hours=hours))
        return [q["symbol"] for _, q, _ in fake.seen]

    return round_at


async def test_403s_for_every_symbol_of_an_endpoint_that_answered_keep_their_own_cool_downs(serve: Serve) -> None:
    """An endpoint that answered once is in the plan: symbols refused later are refused one by one (a listing the
    plan lost), each asked again denied_retry_seconds after its own 403, even once every symbol was refused."""
    fake = FakeFinnhub()
    for sym in ("AAPL", "MSFT"):
        fake.set("/api/v1/quote", sym, fixture="quote_msft.json")
    src = FinnhubSource(settings(await serve(fake.app()), symbols=["AAPL", "MSFT"], denied_retry_seconds=3 * 3600),
                        api_key=SecretStr(KEY))
    async with aiohttp.ClientSession() as session:
        round_at = hourly_rounds(src, fake, session)
        assert await round_at(0) == ["AAPL", "MSFT"]  # both answered
        fake.set("/api/v1/quote", "AAPL", status=403, fixture="error_no_access.json")
        assert await round_at(1) == ["AAPL", "MSFT"]  # AAPL refused at 1h
        fake.set("/api/v1/quote", "MSFT", status=403, fixture="error_no_access.json")
        assert await round_at(2) == ["MSFT"]  # MSFT refused at 2h: now every symbol was refused
        assert src.dropped == {}
        assert await round_at(4) == ["AAPL"]  # 3h after AAPL's 403, 2h after MSFT's


@pytest.mark.parametrize("symbols", [["MSFT", "AAPL"], ["AAPL", "MSFT"]])
async def test_a_403_past_its_cool_down_no_longer_counts_toward_dropping_the_endpoint(serve: Serve,
                                                                                      symbols: list[str]) -> None:
    """Once past its cool-down a refusal is forgotten: MSFT, refused 3h ago, is not "refused" when AAPL's 403 comes,
    whether MSFT was asked before it in that round (and failed, 500) or is asked after it. So the endpoint is not
    dropped: MSFT is asked in that round and the next. (Asked after AAPL, MSFT's stale 403 dropped the endpoint
    for another denied_retry_seconds.)"""
    fake = FakeFinnhub()
    fake.set("/api/v1/stock/candle", "MSFT", status=403, fixture="error_no_access.json")
    fake.set("/api/v1/stock/candle", "AAPL", status=500, body='{"error": "busy"}')
    src = FinnhubSource(settings(await serve(fake.app()), symbols=symbols, endpoints=["candle"],
                                 denied_retry_seconds=3 * 3600, retry_attempts=1), api_key=SecretStr(KEY))
    async with aiohttp.ClientSession() as session:
        round_at = hourly_rounds(src, fake, session)
        assert await round_at(0) == symbols  # MSFT refused, AAPL failed: not every symbol refused
        fake.set("/api/v1/stock/candle", "MSFT", status=500, body='{"error": "busy"}')
        fake.set("/api/v1/stock/candle", "AAPL", status=403, fixture="error_no_access.json")
        assert await round_at(3) == symbols  # MSFT's cool-down over: asked, fails; AAPL refused
        assert src.dropped == {}
        assert await round_at(4) == ["MSFT"]

async def test_200_error_payload_is_an_error_not_data(serve: Serve) -> None:
    fake = FakeFinnhub()
    fake.set("/api/v1/quote", "MSFT", body='{"error": "Invalid API key."}')
    base = await serve(fake.app())
    client = FinnhubClient(SecretStr(KEY), base_url=base, attempts=1)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(SourceError, match="Invalid API key"):
            await client.quote(session, "MSFT")


@pytest.mark.parametrize(("status", "headers"), [(401, {}), (429, {"Retry-After": "0"}), (500, {})])
async def test_token_never_in_errors_or_logs(serve: Serve, caplog: pytest.LogCaptureFixture, status: int,
                                             headers: dict[str, str]) -> None:
    fake = FakeFinnhub()
    fake.set("/api/v1/quote", "BAD", status=status, body='{"error": "denied for {url}"}', headers=headers)
    fake.set("/api/v1/quote", "MSFT", fixture="quote_msft.json")
    base = await serve(fake.app())
    caplog.set_level(logging.DEBUG)
    src = FinnhubSource(settings(base, symbols=["BAD", "MSFT"], token_in="query"), api_key=SecretStr(KEY))
    async with aiohttp.ClientSession() as session:
        points = await src.poll_once(session)
        with pytest.raises(SourceError) as err:
            await src.client.quote(session, "BAD")
    assert [p.symbol for p in points] == ["MSFT"]  # the failing symbol did not stop the other
    assert fake.seen[0][1]["token"] == KEY  # the token really was sent in the query
    assert "BAD" in caplog.text and "failed" in caplog.text
    assert KEY not in caplog.text
    assert KEY not in str(err.value) and KEY not in repr(err.value.args)
    assert str(status) in str(err.value)


async def test_truncated_and_slow_responses(serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeFinnhub()
    fake.set("/api/v1/quote", "TRUNC", body=(FIX / "quote_msft.json").read_bytes()[:30])
    fake.set("/api/v1/quote", "SLOW", fixture="quote_msft.json", delay=1.0)
    fake.set("/api/v1/quote", "MSFT", fixture="quote_msft.json")
    base = await serve(fake.app())
    src = FinnhubSource(settings(base, symbols=["TRUNC", "SLOW", "MSFT"], request_timeout_seconds=0.2),
                        api_key=SecretStr(KEY))
    caplog.set_level(logging.WARNING)
    async with aiohttp.ClientSession() as session:
        points = await src.poll_once(session)
    assert [p.symbol for p in points] == ["MSFT"]
    assert "not JSON" in caplog.text
    assert "gave up after 2 attempts" in caplog.text and "TimeoutError" in caplog.text
    assert KEY not in caplog.text


async def test_fetch_loop_yields_batches_and_keeps_polling(serve: Serve) -> None:
    fake = FakeFinnhub()
    fake.set("/api/v1/company-news", "MSFT", fixture="company_news_msft.json")
    fake.set("/api/v1/news-sentiment", "MSFT", fixture="news_sentiment_msft.json")
    base = await serve(fake.app())
    src = FinnhubSource(settings(base, endpoints=["company_news", "news_sentiment"]), api_key=SecretStr(KEY))
    async with aiohttp.ClientSession() as session:
        gen = src.fetch(session)
        first = await anext(gen)
        second = await anext(gen)
        await gen.aclose()
    assert len(first) == 3 and [p.item_id for p in second] == ["news-sentiment:MSFT"]
    assert fake.calls("/api/v1/company-news") == 2


# ---------------------------------------------------------------------------------------------- websocket


class FakeFinnhubWs:
    """A websocket server that runs one script per connection; records subscriptions per connection."""

    def __init__(self, scripts: list[Callable[[web.WebSocketResponse], Awaitable[None]]]) -> None:
        self.scripts = scripts
        self.subscriptions: list[list[str]] = []
        self.tokens: list[str] = []
        self.connections = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        n = self.connections
        self.connections += 1
        self.tokens.append(request.query.get("token", ""))
        script = self.scripts[min(n, len(self.scripts) - 1)]
        if script is REJECT:
            return web.Response(status=401, text=f"bad token for {request.url}")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        subs: list[str] = []
        self.subscriptions.append(subs)
        reader = asyncio.create_task(self._read(ws, subs))
        await script(ws)
        await reader  # until the client (or the script) closes the connection
        return ws

    @staticmethod
    async def _read(ws: web.WebSocketResponse, subs: list[str]) -> None:
        async for msg in ws:
            doc = json.loads(msg.data)
            if doc.get("type") == "subscribe":
                subs.append(doc["symbol"])

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self.handle)
        return app


async def REJECT(ws: web.WebSocketResponse) -> None:  # marker script: answer the handshake with 401
    raise AssertionError("not run")


async def wait_for_subscriptions(server: FakeFinnhubWs, n: int) -> None:
    for _ in range(200):
        if server.subscriptions and len(server.subscriptions[-1]) >= n:
            return
        await asyncio.sleep(0.01)


def trade_msg(*trades: tuple[str, float, int, float]) -> str:
    return json.dumps({"type": "trade", "data": [{"s": s, "p": p, "t": t, "v": v} for s, p, t, v in trades]})


def ws_settings(url: str, **kw: Any) -> FinnhubSettings:
    defaults: dict[str, Any] = {
        "symbols": ["aapl", "TSLA"], "ws_url": url, "ws_batch_size": 3, "ws_flush_seconds": 0.05,
        "reconnect_base_seconds": 0.01, "reconnect_max_seconds": 0.05, "ws_heartbeat_seconds": 5.0,
    }
    return FinnhubSettings(**{**defaults, **kw})


async def test_ws_subscribe_batch_ping_and_resubscribe_after_drop(serve: Serve) -> None:
    async def first(ws: web.WebSocketResponse) -> None:
        await wait_for_subscriptions(server, 2)
        await ws.send_str('{"type":"ping"}')
        await ws.send_str((FIX / "ws_trades.json").read_text())  # 4 trades >= batch size 3: flushed at once
        await ws.send_str(trade_msg(("AAPL", 190.0, 1717171201000, 1)))
        await asyncio.sleep(0.01)
        await ws.close()  # the provider drops the connection mid-stream

    async def second(ws: web.WebSocketResponse) -> None:
        await wait_for_subscriptions(server, 2)
        await ws.send_str('{"type":"ping"}')
        await ws.send_str(trade_msg(("TSLA", 180.0, 1717171202000, 3), ("AAPL", 190.5, 1717171202001, 7)))
        # stays open: only the time-based flush can deliver these two

    server = FakeFinnhubWs([first, second])
    base = await serve(server.app())
    stream = FinnhubTradeStream(ws_settings(base.replace("http", "ws") + "/"), api_key=SecretStr(KEY))
    batches: list[list[Any]] = []
    async with aiohttp.ClientSession() as session:
        gen = stream.fetch(session)
        async with asyncio.timeout(5):
            while sum(len(b) for b in batches) < 7:
                batches.append(await anext(gen))
        await gen.aclose()
    assert [len(b) for b in batches] == [4, 1, 2]
    assert server.subscriptions == [["AAPL", "TSLA"], ["AAPL", "TSLA"]]
    assert stream.connects == 2 and server.tokens == [KEY, KEY]
    assert batches[0][0].item_id == "AAPL:1717171200123:189.5:100:0"
    assert [(p.symbol, p.price) for p in batches[2]] == [("TSLA", 180.0), ("AAPL", 190.5)]
    assert all(p.data_type == "trade" and p.source == "finnhub" for b in batches for p in b)


async def test_ws_rejected_handshake_retries_without_leaking_token(serve: Serve,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    async def ok(ws: web.WebSocketResponse) -> None:
        await wait_for_subscriptions(server, 1)
        await ws.send_str(trade_msg(("AAPL", 190.0, 1717171201000, 1)))

    server = FakeFinnhubWs([REJECT, REJECT, ok])
    base = await serve(server.app())
    caplog.set_level(logging.DEBUG)
    stream = FinnhubTradeStream(ws_settings(base.replace("http", "ws") + "/", symbols=["AAPL"]),
                                api_key=SecretStr(KEY))
    async with aiohttp.ClientSession() as session:
        gen = stream.fetch(session)
        async with asyncio.timeout(5):
            batch = await anext(gen)
        await gen.aclose()
    assert [p.price for p in batch] == [190.0]
    assert server.connections == 3 and stream.connects == 1
    assert "401" in caplog.text
    assert KEY not in caplog.text


def test_backoff_is_capped_exponential_with_jitter() -> None:
    s = FinnhubSettings(reconnect_base_seconds=1.0, reconnect_max_seconds=8.0)
    stream = FinnhubTradeStream(s, api_key=SecretStr(KEY), rng=random.Random(1))
    for attempt, ceiling in [(0, 1.0), (1, 2.0), (2, 4.0), (3, 8.0), (10, 8.0)]:
        delays = [stream.backoff(attempt) for _ in range(50)]
        assert all(ceiling * 0.5 <= d < ceiling for d in delays)
        assert len(set(delays)) > 1  # jittered
    assert KEY not in str(stream.redact(str(stream.url())))


# ---------------------------------------------------------------------------------------------- forex, crypto, dates


def test_trading_date_rule_across_new_york_dst() -> None:
    # FX days start 17:00 New York: 22:00Z before the 2024-03-10 DST change, 21:00Z after; both are the next day.
    assert trading_date(datetime(2024, 3, 7, 22, tzinfo=UTC).timestamp()) == date(2024, 3, 8)
    assert trading_date(datetime(2024, 3, 10, 21, tzinfo=UTC).timestamp()) == date(2024, 3, 11)
    # 21:00Z before the change is 16:00 New York: still that day's session, not the next.
    assert trading_date(datetime(2024, 3, 7, 21, tzinfo=UTC).timestamp()) == date(2024, 3, 7)
    # Stocks start at New York midnight (05:00Z winter, 04:00Z summer); crypto and UTC-midnight feeds at 00:00Z.
    assert trading_date(datetime(2024, 3, 8, 5, tzinfo=UTC).timestamp()) == date(2024, 3, 8)
    assert trading_date(datetime(2024, 3, 11, 4, tzinfo=UTC).timestamp()) == date(2024, 3, 11)
    assert trading_date(datetime(2024, 11, 3, 0, tzinfo=UTC).timestamp()) == date(2024, 11, 3)
    assert trading_date(datetime(2024, 11, 4, 0, tzinfo=UTC).timestamp()) == date(2024, 11, 4)  # after DST end


def test_forex_daily_candles_at_trading_date_midnight_with_tick_count_not_volume() -> None:
    bars = parse_candles(load("forex_candle_eur_usd_d.json"), "OANDA:EUR_USD", "D", kind="forex")
    assert [b.timestamp for b in bars] == [datetime(2024, 3, d, tzinfo=UTC) for d in (8, 11, 12)]
    assert all(b.volume is None for b in bars)
    assert [b.metadata["tick_count"] for b in bars] == [101234, 3310, 95117]
    assert bars[1].metadata["period_start"] == "2024-03-10T21:00:00+00:00"
    assert (bars[0].symbol, bars[0].interval, bars[0].close) == ("OANDA:EUR_USD", "1d", 1.0947)


def test_stock_and_crypto_daily_candles_line_up_at_utc_midnight() -> None:
    stock = parse_candles(load("candle_aapl_d_dst.json"), "AAPL", "D")
    assert [b.timestamp for b in stock] == [datetime(2024, 3, d, tzinfo=UTC) for d in (8, 11, 12)]
    assert stock[0].volume == 76267041.0 and "tick_count" not in stock[0].metadata
    crypto = parse_candles(load("crypto_candle_btcusdt_d.json"), "BINANCE:BTCUSDT", "D", kind="crypto")
    assert [b.timestamp for b in crypto] == [datetime(2024, 11, d, tzinfo=UTC) for d in (1, 2, 3)]
    assert crypto[0].volume == 40301.24  # traded base-asset volume stays volume


def test_intraday_candles_keep_their_instant() -> None:
    bars = parse_candles(load("forex_candle_eur_usd_d.json"), "OANDA:EUR_USD", "60", kind="forex")
    assert bars[0].timestamp == datetime(2024, 3, 7, 22, tzinfo=UTC) and bars[0].interval == "1h"
    assert "period_start" not in bars[0].metadata and bars[0].metadata["tick_count"] == 101234


@pytest.mark.parametrize(("doc", "cause"), [
    ([1, 2], "not an object"),
    ({"s": "ok", "t": [1], "o": [1], "h": [1], "l": [1]}, "'c' is not an array"),
    ({"s": "ok", "t": [1], "o": ["x"], "h": [1], "l": [1], "c": [1]}, "non-numeric"),
    ({"s": "weird"}, "status"),
])
def test_unexpected_candle_shapes_raise_finnhub_unexpected(doc: Any, cause: str) -> None:
    with pytest.raises(FinnhubUnexpected, match=cause):
        parse_candles(doc, "MSFT")


def test_quote_without_price_fields_is_unexpected_not_unknown() -> None:
    with pytest.raises(FinnhubUnexpected, match="without c and t"):
        parse_quote(load("quote_no_fields.json"), "MSFT")


async def test_forex_and_crypto_candles_use_their_endpoints(serve: Serve) -> None:
    fake = FakeFinnhub()
    fake.set("/api/v1/forex/candle", "OANDA:EUR_USD", fixture="forex_candle_eur_usd_d.json")
    fake.set("/api/v1/crypto/candle", "BINANCE:BTCUSDT", fixture="crypto_candle_btcusdt_d.json")
    base = await serve(fake.app())
    src = FinnhubSource(settings(base, symbols=[], forex_symbols=["OANDA:EUR_USD"],
                                 crypto_symbols=["BINANCE:BTCUSDT"]), api_key=SecretStr(KEY))
    now = datetime(2024, 11, 4, tzinfo=UTC)
    async with aiohttp.ClientSession() as session:
        first = await src.poll_once(session, now=now)
        second = await src.poll_once(session, now=now)
    assert [p.symbol for p in first] == ["OANDA:EUR_USD"] * 3 + ["BINANCE:BTCUSDT"] * 3
    assert fake.calls("/api/v1/stock/candle") == 0
    assert fake.calls("/api/v1/forex/candle") == 2 and fake.calls("/api/v1/crypto/candle") == 2
    # Only each series' latest bar (it may still be forming) comes again.
    assert [(p.symbol, p.timestamp.day) for p in second] == [("OANDA:EUR_USD", 12), ("BINANCE:BTCUSDT", 3)]
    fx_query = next(q for p, q, _ in fake.seen if p == "/api/v1/forex/candle")
    assert fx_query["resolution"] == "D" and fx_query["symbol"] == "OANDA:EUR_USD"
    assert src.unknown == {} and src.unexpected == {}


async def test_unknown_symbols_are_warned_once_and_counted(serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeFinnhub()
    fake.set("/api/v1/quote", "NOPE", fixture="quote_unknown_symbol.json")
    fake.set("/api/v1/stock/candle", "NOPE", fixture="candle_no_data.json")
    fake.set("/api/v1/forex/candle", "OANDA:XXX_YYY", fixture="candle_no_data.json")
    fake.set("/api/v1/quote", "MSFT", fixture="quote_msft.json")
    base = await serve(fake.app())
    src = FinnhubSource(settings(base, symbols=["NOPE", "MSFT"], endpoints=["quote", "candle"],
                                 forex_symbols=["OANDA:XXX_YYY"]), api_key=SecretStr(KEY))
    caplog.set_level(logging.WARNING)
    async with aiohttp.ClientSession() as session:
        await src.poll_once(session)
        await src.poll_once(session)
    assert src.unknown == {"NOPE": 4, "OANDA:XXX_YYY": 2}
    assert caplog.text.count("unknown symbol?") == 2  # once per symbol
    assert "NOPE" in caplog.text and "OANDA:XXX_YYY" in caplog.text


async def test_unexpected_payloads_are_warned_once_per_cause_and_counted(
        serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeFinnhub()
    fake.set("/api/v1/quote", "AAA", body='["not", "a", "quote"]')
    fake.set("/api/v1/quote", "BBB", body='["still", "not"]')
    fake.set("/api/v1/quote", "CCC", fixture="quote_no_fields.json")
    fake.set("/api/v1/quote", "MSFT", fixture="quote_msft.json")
    base = await serve(fake.app())
    src = FinnhubSource(settings(base, symbols=["AAA", "BBB", "CCC", "MSFT"]), api_key=SecretStr(KEY))
    caplog.set_level(logging.WARNING)
    async with aiohttp.ClientSession() as session:
        points = await src.poll_once(session)
        await src.poll_once(session)
    assert [p.symbol for p in points] == ["MSFT"]
    assert src.unexpected == {"quote": 6}
    assert caplog.text.count("unexpected quote payload") == 2  # two causes: a list, an object without c/t
    assert src.unknown == {}


# ---------------------------------------------------------------------------------------------- bad epochs (issue 15)

BAD_EPOCHS = [1e20, -1e20, float("nan"), float("inf"), "abc", 253402300800]  # the last: year 10000


@pytest.mark.parametrize("value", [*BAD_EPOCHS, None, True, [1]])
@pytest.mark.parametrize("millis", [False, True])
def test_from_epoch_raises_one_clear_value_error(value: Any, millis: bool) -> None:
    if millis and value == 253402300800:
        value = 253402300800 * 1000
    with pytest.raises(BadEpoch) as info:
        from_epoch(value, millis=millis)
    assert isinstance(info.value, ValueError)
    assert from_epoch("1717171200") == datetime(2024, 5, 31, 16, 0, tzinfo=UTC)  # numeric strings still parse


def test_trading_date_at_datetimes_end_is_a_bad_epoch_not_an_overflow() -> None:
    # 9999-12-31 23:59:59Z is 18:59 in New York: after the 17:00 roll, so its trading day would be year 10000
    with pytest.raises(BadEpoch):
        trading_date(253402300799)


@pytest.mark.parametrize("t", BAD_EPOCHS)
def test_quote_with_a_bad_epoch_is_unexpected_with_its_own_cause(t: Any) -> None:
    doc = {**load("quote_msft.json"), "t": t}
    with pytest.raises(FinnhubUnexpected) as info:
        parse_quote(doc, "MSFT")
    assert info.value.cause == QUOTE_EPOCH


@pytest.mark.parametrize("t", BAD_EPOCHS)
@pytest.mark.parametrize("resolution", ["D", "60"])
def test_a_candle_row_with_a_bad_epoch_is_skipped_the_others_kept(t: Any, resolution: str) -> None:
    doc = load("candle_msft_d.json")
    doc["t"][1] = t
    skipped: Counter[str] = Counter()
    bars = parse_candles(doc, "MSFT", resolution, skipped=skipped)
    assert [b.close for b in bars] == [425.3, 422.6]
    assert skipped == {CANDLE_EPOCH: 1}


@pytest.mark.parametrize("t", BAD_EPOCHS)
def test_a_news_item_with_a_bad_epoch_is_skipped_the_others_kept(t: Any) -> None:
    doc = load("company_news_msft.json")
    doc[0]["datetime"] = t
    skipped: Counter[str] = Counter()
    items = parse_company_news(doc, "MSFT", skipped=skipped)
    assert [i.item_id for i in items] == ["120002"]
    assert skipped == {NEWS_EPOCH: 1}


@pytest.mark.parametrize("t", BAD_EPOCHS)
def test_a_trade_with_a_bad_epoch_is_skipped_the_others_kept(t: Any) -> None:
    doc = load("ws_trades.json")
    doc["data"][2]["t"] = t * 1000 if t == 253402300800 else t  # websocket epochs are milliseconds
    skipped: Counter[str] = Counter()
    trades = parse_trades(doc, skipped=skipped)
    assert [(p.symbol, p.price) for p in trades] == [("AAPL", 189.5), ("AAPL", 189.5), ("AAPL", 189.51)]
    assert skipped == {TRADE_EPOCH: 1}


async def test_bad_epochs_skip_their_items_not_the_round_and_are_counted_once_per_cause(
        serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeFinnhub()
    fake.set("/api/v1/quote", "AAA", body='{"c": 1.5, "t": 1e20}')
    fake.set("/api/v1/quote", "BBB", body='{"c": 2.5, "t": -1e20}')
    fake.set("/api/v1/quote", "MSFT", fixture="quote_msft.json")
    candles = load("candle_msft_d.json")
    candles["t"][0] = 1e20
    news = load("company_news_msft.json")
    news[1]["datetime"] = "not a time"
    for sym in ("AAA", "BBB", "MSFT"):
        fake.set("/api/v1/stock/candle", sym, body=json.dumps(candles))
        fake.set("/api/v1/company-news", sym, body=json.dumps(news))
    base = await serve(fake.app())
    src = FinnhubSource(settings(base, symbols=["AAA", "BBB", "MSFT"],
                                 endpoints=["quote", "candle", "company_news"]), api_key=SecretStr(KEY))
    caplog.set_level(logging.WARNING)
    async with aiohttp.ClientSession() as session:
        points = await src.poll_once(session, now=datetime(2024, 6, 1, tzinfo=UTC))
        await src.poll_once(session, now=datetime(2024, 6, 1, tzinfo=UTC))
    assert sorted((p.symbol, p.data_type) for p in points) == sorted(
        [("MSFT", "tick")] + [(s, "bar") for s in ("AAA", "BBB", "MSFT") for _ in range(2)]
        + [(s, "news") for s in ("AAA", "BBB", "MSFT")])
    assert src.unexpected == {"quote": 4, "candle": 6, "company_news": 6}
    assert src.unknown == {}
    assert caplog.text.count(QUOTE_EPOCH) == 1
    assert caplog.text.count(CANDLE_EPOCH) == 1
    assert caplog.text.count(NEWS_EPOCH) == 1
    assert KEY not in caplog.text


async def test_ws_bad_epoch_skips_one_trade_and_keeps_the_connection(
        serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    async def script(ws: web.WebSocketResponse) -> None:
        await wait_for_subscriptions(server, 2)
        await ws.send_str(trade_msg(("AAPL", 190.0, 1717171201000, 1), ("AAPL", 191.0, 10**20, 1),
                                    ("TSLA", 180.0, 1717171201001, 2)))
        await ws.send_str(trade_msg(("TSLA", 181.0, -(10**20), 1), ("AAPL", 192.0, 1717171201002, 3)))
        await ws.send_str(json.dumps({"type": "trade", "data": [{"s": "AAPL", "p": 1.0, "t": "soon", "v": 1}]}))

    server = FakeFinnhubWs([script])
    base = await serve(server.app())
    caplog.set_level(logging.WARNING)
    stream = FinnhubTradeStream(ws_settings(base.replace("http", "ws") + "/"), api_key=SecretStr(KEY))
    async with aiohttp.ClientSession() as session:
        gen = stream.fetch(session)
        async with asyncio.timeout(5):
            batch = await anext(gen)  # three good trades reach the batch size
        await gen.aclose()
    assert [(p.symbol, p.price) for p in batch] == [("AAPL", 190.0), ("TSLA", 180.0), ("AAPL", 192.0)]
    assert stream.connects == 1 and server.connections == 1
    assert stream.unexpected["trade"] >= 2
    assert caplog.text.count(TRADE_EPOCH) == 1
    assert "reconnecting" not in caplog.text and KEY not in caplog.text
