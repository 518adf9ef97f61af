"""Connectors against local servers: a round in which every call fails ends their fetch with a retriable
SourceError (producers/base.py PollingSource), which the supervisor shows as `failing`; a round with a good
call, a throttled round, or a round of symbols the provider says it does not know, is no failure."""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yfinance as yf
from aiohttp import web
from pydantic import SecretStr

from producers.alpha_vantage import AlphaVantageSource
from producers.base import ConnectionRun
from producers.finnhub import FinnhubSource, FinnhubTradeStream
from producers.fred import FredSource
from producers.stocktwits import StocktwitsSource
from producers.yahoo import YahooSource
from streams.config import AlphaVantageSettings, FinnhubSettings, FredSettings, StocktwitsSettings, YahooSettings
from streams.errors import SourceError
from streams.stages.produce import SourceSupervisor
from streams.stages.publish import Outgoing
from tests.unit.producers.conftest import Serve

pytestmark = pytest.mark.timeout(30)  # without the fix a failing source is polled forever

KEY = "fk_SECRET_finnhub_1234567890"
FIX = Path(__file__).parent / "fixtures"
REFUSED = "http://127.0.0.1:9"  # the discard port: nothing listens, every connection is refused


def answering(status: int, body: Any = None, *, by_symbol: dict[str, tuple[int, Any]] | None = None
              ) -> web.Application:
    """Every GET answered with `status` and `body` (JSON), or per `symbol` query parameter with by_symbol's."""

    async def handler(request: web.Request) -> web.Response:
        code, doc = (by_symbol or {}).get(request.query.get("symbol", ""), (status, body))
        return web.Response(status=code, text=json.dumps(doc) if doc is not None else "<html>down</html>",
                            content_type="application/json" if doc is not None else "text/html")

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handler)
    return app


def finnhub(base_url: str, **kw: Any) -> FinnhubSource:
    s = FinnhubSettings(**{"symbols": ["MSFT", "AAPL"], "endpoints": ["quote"], "base_url": base_url,
                           "retry_attempts": 2, "retry_base_delay": 0.01, "request_timeout_seconds": 2.0,
                           "rate_limit_calls": 1000, "interval_seconds": 0.01, "token_in": "query", **kw})
    return FinnhubSource(s, api_key=SecretStr(KEY))


async def first_round(source: Any) -> list[Any]:
    """The fetch's first batch (empty after a good round with nothing new), or its exception."""
    async with aiohttp.ClientSession() as session:
        gen = source.fetch(session)
        try:
            return list(await anext(gen))
        finally:
            await gen.aclose()


async def test_finnhub_answering_500_to_every_call_is_failing_in_the_supervisor(
        serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    source = finnhub(await serve(answering(500)))
    statuses: list[dict[str, Any]] = []

    async def sleep(seconds: float) -> None:  # the supervisor's backoff: look at /health's view, then stop
        statuses.append(h.status()[0])
        if len(statuses) == 2:
            raise asyncio.CancelledError

    async def send(messages: list[Outgoing]) -> None:
        raise AssertionError("nothing to send")

    h = SourceSupervisor([source], send=send, topic_for=lambda n: f"raw.{n}", sleep=sleep)
    caplog.set_level(logging.WARNING)
    with pytest.raises(asyncio.CancelledError):
        await h._run(source)
    first, second = statuses
    assert (first["state"], first["failures"], second["state"], second["failures"]) == ("failing", 1, "failing", 2)
    error = first["last_error"]
    assert error.startswith("SourceError: finnhub: all 2 calls of the round failed; the last: SourceError: ")
    assert "HTTP 500 from http://127.0.0.1:" in error and error.endswith("/api/v1/quote?...")
    assert KEY not in error and "token=" not in error  # the token was in the query string: never shown
    # the per-call warnings are as before
    assert "finnhub: quote for MSFT failed" in caplog.text and "finnhub: quote for AAPL failed" in caplog.text
    assert KEY not in caplog.text


async def test_finnhub_with_one_good_and_one_failing_symbol_delivers(serve: Serve) -> None:
    quote = json.loads((FIX / "finnhub" / "quote_msft.json").read_text())
    source = finnhub(await serve(answering(500, by_symbol={"MSFT": (200, quote)})))
    points = await first_round(source)
    assert [p.symbol for p in points] == ["MSFT"]


async def test_finnhub_unknown_symbols_only_are_answers_not_failures(serve: Serve) -> None:
    unknown = json.loads((FIX / "finnhub" / "quote_unknown_symbol.json").read_text())
    source = finnhub(await serve(answering(200, unknown)))
    assert await first_round(source) == []  # a good round with nothing in it, no error
    assert source.unknown == {"MSFT": 1, "AAPL": 1}


async def test_yahoo_with_every_connection_refused_fails_its_round() -> None:
    yf.set_tz_cache_location(tempfile.mkdtemp(prefix="yfinance-"))
    source = YahooSource(YahooSettings(base_url=REFUSED, symbols=["MSFT", "AAPL"], retry_attempts=2,
                                       retry_base_delay=0.01, request_timeout_seconds=2.0, interval_seconds=0.01))
    with pytest.raises(SourceError) as err:
        await first_round(source)
    assert err.value.retriable
    assert str(err.value).startswith("yahoo: all 2 calls of the round failed; the last: SourceError: ")
    assert "127.0.0.1" in str(err.value)


def alpha_vantage(base_url: str) -> AlphaVantageSource:
    s = AlphaVantageSettings(base_url=base_url, symbols=["IBM", "MSFT"], functions=["global_quote"],
                             retry_attempts=2, retry_base_delay=0.01, request_timeout_seconds=2.0,
                             rate_limit_calls=1000, daily_limit_calls=1000, interval_seconds=0.01)
    return AlphaVantageSource(s, api_key=SecretStr("AVKEYSECRET0123456789"))


async def test_alpha_vantage_throttled_round_is_not_a_failure(serve: Serve) -> None:
    note = {"Note": "Thank you for using Alpha Vantage! Our standard API call frequency is 5 calls per minute "
                    "and 25 calls per day."}
    assert await first_round(alpha_vantage(await serve(answering(200, note)))) == []


async def test_alpha_vantage_refused_key_and_server_errors_fail_the_round(serve: Serve) -> None:
    refused = {"Information": "the parameter apikey is invalid or missing. Please claim your free API key"}
    with pytest.raises(SourceError, match="the one call of the round failed; the last: AlphaVantageKeyRefused"):
        await first_round(alpha_vantage(await serve(answering(200, refused))))
    with pytest.raises(SourceError, match=r"all 2 calls of the round failed; .*HTTP 502") as err:
        await first_round(alpha_vantage(await serve(answering(502))))
    assert "AVKEYSECRET0123456789" not in str(err.value) and "apikey=" not in str(err.value)


async def test_fred_unknown_series_is_an_answer_and_refused_connections_a_failure(serve: Serve) -> None:
    def fred(base_url: str) -> FredSource:
        s = FredSettings(base_url=base_url, series=["NOPE1", "NOPE2"], retry_attempts=2, retry_base_delay=0.01,
                         request_timeout_seconds=2.0, rate_limit_calls=1000, interval_seconds=0.01)
        return FredSource(s, api_key=SecretStr("abcdef0123456789abcdef0123456789"))

    unknown = {"error_code": 400, "error_message": "Bad Request.  The series does not exist."}
    source = fred(await serve(answering(400, unknown)))
    assert await first_round(source) == [] and source.unknown == {"NOPE1": 1, "NOPE2": 1}
    with pytest.raises(SourceError, match="fred: all 2 calls of the round failed") as err:
        await first_round(fred(REFUSED))
    assert err.value.retriable and "abcdef0123456789abcdef0123456789" not in str(err.value)


async def test_stocktwits_unknown_symbols_are_answers_and_another_servers_404_a_failure(serve: Serve) -> None:
    def stocktwits(base_url: str) -> StocktwitsSource:
        s = StocktwitsSettings(base_url=base_url, symbols=["NOPE1", "NOPE2"], retry_attempts=2,
                               retry_base_delay=0.01, request_timeout_seconds=2.0, rate_limit_calls=1000,
                               interval_seconds=0.01)
        return StocktwitsSource(s, env={})

    not_found = {"response": {"status": 404}, "errors": [{"message": "Symbol not found"}]}
    for status in (404, 200):  # StockTwits' error body, on a 404 or inside a 200
        source = stocktwits(await serve(answering(status, not_found)))
        assert await first_round(source) == [] and source.unknown == {"symbol:NOPE1": 1, "symbol:NOPE2": 1}
    with pytest.raises(SourceError, match=r"stocktwits: all 2 calls of the round failed; .*HTTP 404"):
        await first_round(stocktwits(await serve(answering(404))))  # an HTML 404: a wrong base_url


@pytest.mark.parametrize("answer", ["refused", "error message"])
async def test_finnhub_websocket_failing_five_times_in_a_row_is_failing_in_the_supervisor(
        serve: Serve, answer: str) -> None:
    attempts = 0

    async def refuse(request: web.Request) -> web.StreamResponse:
        nonlocal attempts
        attempts += 1
        if answer == "refused":  # Finnhub's answer to a bad token: no upgrade
            return web.Response(status=401, text="Unauthorized")
        ws = web.WebSocketResponse()  # an error message, then the server closes: no sign the stream works
        await ws.prepare(request)
        await ws.send_str(json.dumps({"type": "error", "msg": "Subscribing to too many symbols"}))
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/", refuse)
    base = await serve(app)
    settings = FinnhubSettings(symbols=["AAPL"], ws_url=base.replace("http", "ws") + "/",
                               reconnect_base_seconds=0.01, reconnect_max_seconds=0.01)
    stream = FinnhubTradeStream(settings, api_key=SecretStr(KEY))
    statuses: list[dict[str, Any]] = []

    async def sleep(seconds: float) -> None:  # the supervisor's backoff: look at /health's view, then stop
        statuses.append(h.status()[0])
        raise asyncio.CancelledError

    async def send(messages: list[Outgoing]) -> None:
        raise AssertionError("nothing to send")

    h = SourceSupervisor([stream], send=send, topic_for=lambda n: f"raw.{n}", sleep=sleep)
    with pytest.raises(asyncio.CancelledError):
        await h._run(stream)
    [status] = statuses
    assert attempts == 5 and (status["state"], status["failures"]) == ("failing", 1)
    cause = "WSServerHandshakeError: 401" if answer == "refused" else "connection closed (CLOSE, code 1000)"
    assert status["last_error"].startswith(f"SourceError: finnhub ws: 5 connections in a row failed; the last: {cause}")
    assert KEY not in status["last_error"]


def test_a_connection_that_delivered_or_stayed_open_is_no_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr("producers.base.time.monotonic", lambda: now[0])
    run = ConnectionRun("feed", limit=2, steady_seconds=60.0)
    assert run.ended("refused") is None and run.failed == 1  # never opened
    run.opened()
    now[0] += 61.0  # a quiet feed the server closed after a minute: fine, the count starts again
    assert run.ended("closed") is None and run.failed == 0
    run.opened()
    run.delivered()
    assert run.ended("closed") is None and run.failed == 0
    run.opened()
    now[0] += 1.0
    assert run.ended("closed at once") is None
    err = run.ended("refused again")
    assert err is not None and err.retriable
    assert str(err) == "feed: 2 connections in a row failed; the last: refused again"
    assert run.failed == 0  # the supervisor restarts the stream: the count starts again


async def test_a_round_that_delivered_points_is_not_a_failed_round() -> None:
    """A round's points go on even when the only call it counted failed: the round was not the provider failing."""
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from producers.base import PollingSource
    from streams.models import MarketDataPoint

    point = MarketDataPoint(symbol="AAPL", timestamp=datetime(2024, 5, 1, tzinfo=UTC), source="fake", price=1.0)

    class OneGoodOneBad(PollingSource):
        name = "fake"
        settings = SimpleNamespace(interval_seconds=0.0)

        async def poll_once(self, session: Any) -> list[MarketDataPoint]:
            self.call_failed(SourceError("HTTP 500"))
            return [point]

    rounds = OneGoodOneBad().fetch(session=object())  # type: ignore[arg-type]
    assert await rounds.__anext__() == [point]
    await rounds.aclose()


async def test_rounds_start_every_interval_however_long_a_round_takes(monkeypatch: pytest.MonkeyPatch) -> None:
    """interval_seconds is from one round's start to the next: a round that took 4 s of a 10 s interval waits 6 s
    (waiting 10 s after it drifted the schedule by every round's own length)."""
    from types import SimpleNamespace

    from producers import base
    from producers.base import PollingSource

    clock = {"now": 100.0}
    monkeypatch.setattr(base.time, "monotonic", lambda: clock["now"])
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        clock["now"] += seconds

    monkeypatch.setattr(base.asyncio, "sleep", sleep)

    class Slow(PollingSource):
        name = "fake"
        settings = SimpleNamespace(interval_seconds=10.0)

        async def poll_once(self, session: Any) -> list[Any]:
            self.call_succeeded()
            clock["now"] += 4.0
            return []

    rounds = Slow().fetch(session=object())  # type: ignore[arg-type]
    for _ in range(3):
        assert await rounds.__anext__() == []
    await rounds.aclose()
    assert waits == [6.0, 6.0]
