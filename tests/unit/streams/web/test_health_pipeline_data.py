"""GET /pipeline/data/<symbol>'s handler (streams/web/health.py RecentData) on a stand-in read pool: the limit's
bounds and the symbol's case, without Faust's web server or PostgreSQL."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from streams.app import app
from streams.web import health


class Reader:
    """The read pool's `recent`, over rows stored under these symbols (as market_data's exact match finds them)."""

    def __init__(self, *stored: str) -> None:
        self.stored = stored
        self.asked: list[tuple[str, int]] = []

    async def recent(self, symbol: str, limit: int) -> list[dict[str, Any]]:
        self.asked.append((symbol, limit))
        return [{"symbol": symbol, "price": 1.0}] * min(limit, 3) if symbol in self.stored else []


async def get(monkeypatch: pytest.MonkeyPatch, reader: Reader, symbol: str, **query: str) -> tuple[int, Any]:
    monkeypatch.setattr(health, "reader", reader)
    response = await health.RecentData(app, app.web).get(SimpleNamespace(query=query), symbol)  # type: ignore[arg-type]
    return response.status, orjson.loads(response.body)


@pytest.mark.parametrize("limit", ["0", "-1", "-500"])
async def test_a_limit_below_one_is_a_400_not_one_row(monkeypatch: pytest.MonkeyPatch, limit: str) -> None:
    reader = Reader("AAPL")
    status, body = await get(monkeypatch, reader, "AAPL", limit=limit)
    assert status == 400 and body["error"].startswith(f"limit must be at least 1 (got {int(limit)})")
    assert reader.asked == []


async def test_limits_in_range_are_kept_and_large_ones_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    reader = Reader("AAPL")
    assert len((await get(monkeypatch, reader, "AAPL", limit="1"))[1]) == 1
    await get(monkeypatch, reader, "AAPL", limit="100000")
    await get(monkeypatch, reader, "AAPL")
    assert reader.asked == [("AAPL", 1), ("AAPL", health.DATA_LIMIT), ("AAPL", 100)]
    assert (await get(monkeypatch, reader, "AAPL", limit="x"))[0] == 400


async def test_a_lower_case_symbol_finds_the_upper_case_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    reader = Reader("AAPL")
    status, body = await get(monkeypatch, reader, "aapl", limit="5")
    assert status == 200 and [r["symbol"] for r in body] == ["AAPL"] * 3
    assert reader.asked == [("aapl", 5), ("AAPL", 5)]  # each an exact match, on the (symbol, timestamp) index


async def test_a_symbol_stored_in_another_case_is_still_found_as_written(monkeypatch: pytest.MonkeyPatch) -> None:
    reader = Reader("custom", "CUSTOM")
    status, body = await get(monkeypatch, reader, "custom", limit="5")
    assert status == 200 and body[0]["symbol"] == "custom" and reader.asked == [("custom", 5)]
    reader = Reader("AAPL")
    status, body = await get(monkeypatch, reader, "AAPL", limit="5")  # already upper-case: one query
    assert len(body) == 3 and reader.asked == [("AAPL", 5)]
    status, body = await get(monkeypatch, Reader(), "nope")
    assert status == 200 and body == []


@pytest.mark.parametrize("symbol", ["AAPL\x00", " AAPL", "A" * 300, "a'b", "AAPL;DROP"])
async def test_a_symbol_validation_would_refuse_is_a_400_without_a_query(monkeypatch: pytest.MonkeyPatch,
                                                                        symbol: str) -> None:
    """It can have no row; a NUL byte (which PostgreSQL refuses in text) was answered 503 "database unavailable"."""
    reader = Reader("AAPL")
    status, body = await get(monkeypatch, reader, symbol, limit="5")
    assert status == 400 and "is not a symbol" in body["error"] and reader.asked == []


@pytest.mark.parametrize("symbol", ["EUR/USD", "BRK.B", "BTC-USD", "^GSPC", "EURUSD=X", "OANDA:EUR_USD"])
async def test_symbols_of_every_documented_form_are_looked_up(monkeypatch: pytest.MonkeyPatch, symbol: str) -> None:
    reader = Reader(symbol)
    status, body = await get(monkeypatch, reader, symbol, limit="2")
    assert status == 200 and len(body) == 2 and reader.asked == [(symbol, 2)]


def test_the_route_takes_a_symbol_with_a_slash() -> None:
    """`/pipeline/data/EUR/USD` as a client writes it unencoded (the brief's frontend: `/pipeline/data/${symbol}`)
    reaches the handler with the whole symbol, not a 404: the route the worker's web server registered."""
    (resource,) = [r for r in app.web.web_app.router.resources()  # type: ignore[attr-defined]
                   if r.canonical == "/pipeline/data/{symbol}"]
    assert resource._match("/pipeline/data/EUR/USD") == {"symbol": "EUR/USD"}
    assert resource._match("/pipeline/data/AAPL") == {"symbol": "AAPL"}
    assert resource._match("/pipeline/data/") is None
