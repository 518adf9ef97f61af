"""Yahoo: the JSON parsers, and YahooSource (yfinance underneath) against a local server serving hand-written
responses to yfinance through a RedirectingSession: cookie, crumb, chart, v7 quote and the price stream."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yfinance as yf
import yfinance.base as yf_base
from aiohttp import web
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve
from yfinance import exceptions as yf_errors
from yfinance.data import YfData

from producers.yahoo import (
    RedirectingSession,
    YahooSettings,
    YahooSource,
    encode_pricing,
    exchange_calendar,
    forming_bar_start,
    frame_to_bars,
    parse_chart,
    parse_quote_response,
    parse_stream_message,
    parse_tick,
    yfinance_session,
)
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
    assert b.metadata == {"adj_close": 416.97, "currency": "USD"}  # the chart's (London's GBp are pence)
    assert bars[1].metadata == {"adj_close": 412.05, "split": "2:1", "currency": "USD"}
    assert bars[2].metadata == {"adj_close": 417.0, "dividend": 0.83, "currency": "USD"}


def test_intraday_forming_bar_is_snapped_to_its_minute() -> None:
    bars = parse_chart(load("chart_msft_1m_live.json"), "MSFT")
    assert [int(b.timestamp.timestamp()) - T0 for b in bars] == [0, 60, 180]  # null minute 120 skipped
    assert all(b.interval == "1m" and b.item_id == "1m" for b in bars)
    assert bars[-1].close == 417.25 and bars[-1].timestamp.tzinfo is not None


def test_a_live_row_beside_its_own_bar_is_merged_into_it_not_put_in_its_place() -> None:
    """An hourly chart asked during the last hour: the 14:30 ET bar, then the live price stamped 15:00 (a
    half-hour off the grid), which belongs to that bar. yfinance merges the two; so does parse_chart."""
    doc = load("chart_msft_1m_live.json")
    result = doc["chart"]["result"][0]
    result["meta"]["dataGranularity"] = "1h"
    result["timestamp"] = [T0, T0 + 3600, T0 + 5400]
    result["indicators"]["quote"] = [{"open": [411.0, 411.5, 410.5], "high": [412.0, 413.0, 410.5],
                                      "low": [410.0, 411.0, 410.5], "close": [411.5, 412.8, 410.5],
                                      "volume": [1000, 2000, 0]}]
    first, second = parse_chart(doc, "MSFT")
    assert (first.open, first.close, first.volume) == (411.0, 411.5, 1000)
    assert second.timestamp == datetime.fromtimestamp(T0 + 3600, UTC)
    assert (second.open, second.high, second.low, second.close, second.volume) == (411.5, 413.0, 410.5, 410.5, 2000)
    # The same stamp twice on the grid is a repeat: the later row, volumes not added.
    result["timestamp"] = [T0, T0 + 3600, T0 + 3600]
    assert parse_chart(doc, "MSFT")[1].volume == 0
    # A yfinance frame that kept the live row apart (it leaves one alone on a round second with prepost) too.
    import pandas as pd

    index = pd.DatetimeIndex([pd.Timestamp(t, unit="s", tz="UTC") for t in (T0, T0 + 3600, T0 + 5400)])
    quote = result["indicators"]["quote"][0]
    df = pd.DataFrame({k.capitalize(): v for k, v in quote.items()}, index=index)
    assert [(b.low, b.close, b.volume) for b in frame_to_bars(df, "MSFT", "1h")] == [(410.0, 411.5, 1000),
                                                                                   (410.5, 410.5, 2000)]


def _chart(stamps: list[int], tz: str, exchange: str, interval: str) -> dict[str, Any]:
    """A chart of bars at `stamps`, opens 1, 2, 3, ... (so each bar is known by its open), volume 100 each."""
    n = len(stamps)
    quote = {"open": [1.0 + i for i in range(n)], "high": [2.0 + i for i in range(n)],
             "low": [0.5 + i for i in range(n)], "close": [1.5 + i for i in range(n)], "volume": [100] * n}
    return {"chart": {"error": None, "result": [{
        "meta": {"currency": "USD", "exchangeName": exchange, "exchangeTimezoneName": tz, "dataGranularity": interval},
        "timestamp": stamps, "indicators": {"quote": [quote]}}]}}


def _local(tz: str, *fields: int) -> int:
    return int(datetime(*fields, tzinfo=ZoneInfo(tz)).timestamp())  # type: ignore[misc]


def _clock(bars: list[Any], tz: str) -> list[tuple[str, float, Any]]:
    return [(b.timestamp.astimezone(ZoneInfo(tz)).strftime("%a %H:%M"), b.open, b.metadata.get("session"))
            for b in bars]


def test_intraday_bars_stay_where_stamped_across_dst_a_lunch_break_and_the_open() -> None:
    """One grid anchored at a response's first bar moved every bar after a DST change by 30 minutes (90m bars),
    the first bars after Hong Kong's lunch, and merged the 09:30 open into the 09:00 pre-market bar."""
    ny, hk = "America/New_York", "Asia/Hong_Kong"
    times = [(8, 9, 30), (8, 11, 0), (8, 15, 30), (11, 9, 30), (11, 11, 0), (11, 15, 30)]  # EST Friday, EDT Monday
    bars = parse_chart(_chart([_local(ny, 2024, 3, d, h, m) for d, h, m in times], ny, "NMS", "90m"), "IBM")
    assert _clock(bars, ny) == [("Fri 09:30", 1.0, "regular"), ("Fri 11:00", 2.0, "regular"),
                                ("Fri 15:30", 3.0, "regular"), ("Mon 09:30", 4.0, "regular"),
                                ("Mon 11:00", 5.0, "regular"), ("Mon 15:30", 6.0, "regular")]
    times = [(9, 30), (10, 30), (11, 30), (13, 0), (14, 0), (15, 0)]
    bars = parse_chart(_chart([_local(hk, 2024, 3, 8, h, m) for h, m in times], hk, "HKG", "1h"), "0700.HK")
    assert [c for c, _, _ in _clock(bars, hk)] == ["Fri 09:30", "Fri 10:30", "Fri 11:30", "Fri 13:00", "Fri 14:00",
                                                  "Fri 15:00"]
    times = [(8, 0), (9, 0), (9, 30), (10, 30), (15, 30), (16, 0)]
    bars = parse_chart(_chart([_local(ny, 2024, 3, 8, h, m) for h, m in times], ny, "NMS", "1h"), "AAPL")
    assert [(c, s) for c, _, s in _clock(bars, ny)] == [("Fri 08:00", "pre"), ("Fri 09:00", "pre"),
                                                        ("Fri 09:30", "regular"), ("Fri 10:30", "regular"),
                                                        ("Fri 15:30", "regular"), ("Fri 16:00", "post")]
    assert {b.volume for b in bars} == {100}  # none merged into another
    # yfinance's frame, the live path, the same way
    import pandas as pd

    stamps = [_local(ny, 2024, 3, d, h, m) for d, h, m in [(8, 9, 30), (8, 11, 0), (11, 9, 30), (11, 11, 0)]]
    df = pd.DataFrame({"Open": [1.0, 2.0, 3.0, 4.0], "High": [2.0] * 4, "Low": [0.5] * 4, "Close": [1.5] * 4,
                       "Volume": [100] * 4}, index=pd.DatetimeIndex([pd.Timestamp(t, unit="s", tz=ny) for t in stamps]))
    assert [c for c, _, _ in _clock(frame_to_bars(df, "IBM", "90m"), ny)] == ["Fri 09:30", "Fri 11:00", "Mon 09:30",
                                                                              "Mon 11:00"]


def test_the_forming_row_goes_to_the_start_of_its_bar() -> None:
    """Yahoo stamps the forming bar with its last trade: after a lunch break it starts at the afternoon's open,
    as the day's first bar at the session's open."""
    ny, hk = "America/New_York", "Asia/Hong_Kong"
    stamps = [_local(hk, 2024, 3, 8, h, m) for h, m in ((9, 30), (10, 30), (11, 30))] + [_local(hk, 2024, 3, 8, 13, 10)]
    bars = parse_chart(_chart(stamps, hk, "HKG", "1h"), "0700.HK")
    assert _clock(bars, hk)[-1] == ("Fri 13:00", 4.0, "regular")
    stamps = [_local(ny, 2024, 3, 8, 14, 30), _local(ny, 2024, 3, 8, 15, 30), _local(ny, 2024, 3, 11, 9, 47)]
    bars = parse_chart(_chart(stamps, ny, "NMS", "1h"), "IBM")
    assert _clock(bars, ny)[-1] == ("Mon 09:30", 3.0, "regular")


@pytest.mark.parametrize(("name", "stamp", "prev", "step", "mic", "prepost", "start"), [
    ("post bar forming after the last regular one", "2024-03-08 16:20", "2024-03-08 15:30", 3600, "XNYS", True,
     "16:00"),
    ("post minute", "2024-03-08 16:00:27", "2024-03-08 15:59", 60, "XNYS", True, "16:00"),
    ("pre-market's first minute after the night", "2024-03-08 04:00:27", "2024-03-07 19:59", 60, "XNYS", True,
     "04:00"),
    ("the close's print on a regular chart", "2024-03-08 16:00:00", "2024-03-08 15:30", 3600, "XNYS", False,
     "15:30"),
    ("the closing auction's minute on a regular chart", "2024-03-08 16:00:27", "2024-03-08 15:59", 60, "XNYS",
     False, "15:59"),
    ("the day's first hour", "2024-03-11 09:47", "2024-03-08 15:30", 3600, "XNYS", False, "09:30"),
    ("pre-market hour", "2024-03-08 08:47", "2024-03-08 08:00", 3600, "XNYS", True, "08:00"),
    ("Hong Kong at the lunch break", "2024-03-08 12:00:00", "2024-03-08 11:55", 300, "XHKG", False, "11:55"),
])
def test_the_forming_row_at_the_edges_of_the_market_hours(name: str, stamp: str, prev: str, step: int, mic: str,
                                                          prepost: bool, start: str) -> None:
    tz = ZoneInfo("Asia/Hong_Kong" if mic == "XHKG" else "America/New_York")

    def at(text: str) -> int:
        return int(datetime.fromisoformat(text).replace(tzinfo=tz).timestamp())

    got = datetime.fromtimestamp(forming_bar_start(at(stamp), at(prev), step, mic, prepost=prepost), tz)
    assert got.strftime("%H:%M") == start, name


def test_tick_from_meta() -> None:
    [tick] = parse_tick(load("chart_msft_1m_live.json"), "MSFT")
    assert (tick.data_type, tick.price, tick.item_id, tick.source) == ("tick", 417.25, "quote", "yahoo")
    assert tick.timestamp == datetime.fromtimestamp(T0 + 207, UTC)
    assert (tick.high, tick.low) == (417.9, 411.06)
    assert tick.metadata["day_volume"] == 1523400 and tick.metadata["prev_close"] == 412.87
    assert tick.metadata["session"] == "regular"


def test_tick_falls_back_to_the_latest_bar() -> None:
    doc = load("chart_msft_1m_live.json")
    del doc["chart"]["result"][0]["meta"]["regularMarketPrice"]
    [tick] = parse_tick(doc, "MSFT")
    assert tick.price == 417.25 and tick.timestamp == datetime.fromtimestamp(T0 + 180, UTC)
    assert tick.metadata["session"] == "regular"  # 09:33 ET on a full session day


def chart(symbol: str, exchange: str, tz: str, stamps: list[int], interval: str = "5m") -> dict[str, Any]:
    """A chart body as Yahoo documents it (v8 /finance/chart), one bar per stamp."""
    n = len(stamps)
    return {"chart": {"error": None, "result": [{
        "meta": {"symbol": symbol, "exchangeName": exchange, "exchangeTimezoneName": tz, "dataGranularity": interval},
        "timestamp": stamps,
        "indicators": {"quote": [{"open": [1.0] * n, "high": [1.0] * n, "low": [1.0] * n, "close": [1.0] * n,
                                  "volume": [10] * n}]}}]}}


def et(text: str) -> int:
    return int(datetime.fromisoformat(f"{text}-05:00").timestamp())  # EST (November, December)


def test_intraday_bars_carry_their_session_from_the_exchange_calendar() -> None:
    # 2024-11-29 closed early (13:00 ET): 13:00-17:00 is the post-market; 2024-12-02 is a full day.
    stamps = [et("2024-11-29T08:00:00"), et("2024-11-29T12:55:00"), et("2024-11-29T13:00:00"),
              et("2024-11-29T16:55:00"), et("2024-12-02T09:25:00"), et("2024-12-02T09:30:00"),
              et("2024-12-02T16:00:00"), et("2024-12-02T19:55:00")]
    bars = parse_chart(chart("MSFT", "NMS", "America/New_York", stamps), "MSFT")
    assert [b.metadata.get("session") for b in bars] == [
        "pre", "regular", "post", "post", "pre", "regular", "post", "post"]
    assert all("session" not in b.metadata for b in parse_chart(load("chart_msft_1d.json"), "MSFT"))
    live = parse_chart(load("chart_msft_1m_live.json"), "MSFT")
    assert [b.metadata["session"] for b in live] == ["regular"] * 3


def test_session_calendar_follows_the_exchange_and_the_symbol() -> None:
    # XETRA (exchange code GER) opens 09:00 Berlin: 08:30 is before any session there, 10:00 is regular.
    cet = [int(datetime.fromisoformat(f"2024-12-02T{t}+01:00").timestamp()) for t in ("08:30:00", "10:00:00")]
    sap = parse_chart(chart("SAP.DE", "GER", "Europe/Berlin", cet), "SAP.DE")
    assert [b.metadata.get("session") for b in sap] == [None, "regular"]
    assert exchange_calendar("SAP.DE", {"exchangeName": "GER"}) == "XETR"
    assert exchange_calendar("IBM", {"exchangeName": "NYQ"}) == "XNYS"
    # Crypto trades around the clock: a Saturday bar is in the regular session.
    sat = int(datetime(2024, 11, 30, 3, 0, tzinfo=UTC).timestamp())
    [btc] = parse_chart(chart("BTC-USD", "CCC", "UTC", [sat]), "BTC-USD")
    assert btc.metadata["session"] == "regular"


def test_yfinance_frames_carry_the_session_too() -> None:
    import pandas as pd

    # a prepost chart (a pre-market bar in it) on an early-close day
    index = pd.DatetimeIndex([pd.Timestamp("2024-11-29 08:00", tz="America/New_York"),
                              pd.Timestamp("2024-11-29 12:55", tz="America/New_York"),
                              pd.Timestamp("2024-11-29 13:00", tz="America/New_York")])
    df = pd.DataFrame({"Open": [1.0] * 3, "High": [1.0] * 3, "Low": [1.0] * 3, "Close": [1.0] * 3,
                       "Volume": [5] * 3}, index=index)
    bars = frame_to_bars(df, "MSFT", "5m")
    assert [b.metadata.get("session") for b in bars] == ["pre", "regular", "post"]
    daily = frame_to_bars(df.iloc[1:2], "MSFT", "1d")
    assert "session" not in daily[0].metadata


def test_chart_error_and_empty_result() -> None:
    with pytest.raises(SourceError, match="No data found") as err:
        parse_chart(load("chart_not_found.json"), "NOPE")
    assert err.value.retriable is False
    assert parse_chart(load("chart_empty.json"), "MSFT") == []
    assert parse_tick({"chart": {"result": [], "error": None}}, "MSFT") == []
    with pytest.raises(SourceError):
        parse_chart({"finance": {"error": "x"}}, "MSFT")


def test_v7_quote_gives_regular_and_post_market_ticks() -> None:
    regular, post = parse_quote_response(load("quote_msft.json"))
    assert (regular.symbol, regular.price, regular.item_id) == ("MSFT", 417.0, "quote")
    # marketState POST: the book is the post-market's, on the post-market tick (see test_quote_book_*)
    assert (regular.bid, regular.ask, post.bid, post.ask) == (None, None, 416.9, 417.2)
    assert regular.timestamp == datetime.fromtimestamp(1732309201, UTC)
    assert regular.metadata["session"] == "regular" and regular.metadata["market_state"] == "POST"
    assert (post.price, post.timestamp, post.metadata["session"]) == (417.35, datetime.fromtimestamp(1732312800, UTC),
                                                                      "post")
    with pytest.raises(SourceError, match="unexpected Yahoo quote payload"):
        parse_quote_response({"chart": {}})
    with pytest.raises(SourceError, match="no regularMarketPrice"):
        parse_quote_response({"quoteResponse": {"result": [{"symbol": "MSFT"}], "error": None}})


def test_stream_message_session_from_market_hours() -> None:
    tick = parse_stream_message({"id": "MSFT", "price": 417.5, "time": "1732309201500", "market_hours": 2,
                                 "day_volume": "24814600", "exchange": "NMS"})
    assert (tick.symbol, tick.price, tick.item_id) == ("MSFT", 417.5, "stream")
    assert tick.timestamp == datetime.fromtimestamp(1732309201.5, UTC)
    assert tick.metadata["session"] == "post" and tick.metadata["day_volume"] == 24814600.0
    # proto3 leaves market_hours 0 (pre-market) out of the message
    assert parse_stream_message({"id": "MSFT", "price": 1.0, "time": "1"}).metadata["session"] == "pre"
    with pytest.raises(SourceError):
        parse_stream_message({"error": "bad base64", "raw_base64": "xx"})


def history_chart(**meta: Any) -> dict[str, Any]:
    """A daily chart asked by period1/period2 (range "" in its meta), as yfinance's history asks: Yahoo's meta then
    carries the live price and chartPreviousClose, the close before the chart's first bar."""
    body = chart("AAPL", "NMS", "America/New_York", [et("2020-09-01T09:30:00"), et("2020-09-02T09:30:00")], "1d")
    body["chart"]["result"][0]["meta"].update({
        "range": "", "regularMarketPrice": 250.5, "regularMarketTime": et("2025-02-19T16:00:00"),
        "chartPreviousClose": 125.25, **meta})
    return body


def test_prev_close_of_a_history_chart_is_not_its_chart_previous_close() -> None:
    [tick] = parse_tick(history_chart(), "AAPL")
    assert tick.price == 250.5 and "prev_close" not in tick.metadata  # 125.25 is the close of 2020-08-31
    [tick] = parse_tick(history_chart(previousClose=249.0, regularMarketPreviousClose=248.0), "AAPL")
    assert tick.metadata["prev_close"] == 249.0
    [tick] = parse_tick(history_chart(regularMarketPreviousClose=248.0), "AAPL")
    assert tick.metadata["prev_close"] == 248.0
    # On a range=1d chart the close before its first bar is the previous day's.
    [tick] = parse_tick(history_chart(range="1d"), "AAPL")
    assert tick.metadata["prev_close"] == 125.25


def test_null_bars_are_reported_at_info_once_per_response(caplog: pytest.LogCaptureFixture) -> None:
    import pandas as pd

    caplog.set_level(logging.INFO, logger="producers.yahoo")
    parse_chart(load("chart_msft_1m_live.json"), "MSFT")
    index = pd.DatetimeIndex([pd.Timestamp(f"2024-11-22 09:3{m}", tz="America/New_York") for m in range(4)])
    nan = float("nan")
    df = pd.DataFrame({"Open": [1.0, nan, nan, 0.0], "High": [1.0, nan, nan, 0.0], "Low": [1.0, nan, nan, 0.0],
                       "Close": [1.0, nan, 1.0, 0.0], "Volume": [5, 0, 0, 0]}, index=index)
    assert len(frame_to_bars(df, "MSFT", "1m")) == 1
    lines = [r for r in caplog.records if "null" in r.getMessage()]
    assert [(r.levelno, r.getMessage()) for r in lines] == [
        (logging.INFO, "yahoo: MSFT: skipped 1 null 1m bars in this response"),
        (logging.INFO, "yahoo: MSFT: skipped 3 null 1m bars in this response")]


def test_zero_prices_beside_a_volume_are_left_to_the_validator() -> None:
    import pandas as pd

    # Not a null bar (yfinance's keepna=False keeps it too): bad data, which the validator dead-letters.
    index = pd.DatetimeIndex([pd.Timestamp("2024-11-22 09:30", tz="America/New_York")])
    df = pd.DataFrame({"Open": [0.0], "High": [0.0], "Low": [0.0], "Close": [0.0], "Volume": [700]}, index=index)
    [bar] = frame_to_bars(df, "MSFT", "1m")
    assert (bar.open, bar.close, bar.volume) == (0.0, 0.0, 700.0)


QUOTE: dict[str, Any] = {
    "symbol": "MSFT", "exchange": "NMS", "regularMarketPrice": 420.0, "regularMarketTime": 1732309201,
    "bid": 419.5, "ask": 419.9, "bidSize": 2, "askSize": 3,
}
BOOK = (419.5, 419.9, 2.0, 3.0)


def book(point: Any) -> tuple[float | None, ...]:
    return (point.bid, point.ask, point.bid_size, point.ask_size)


def test_quote_book_is_the_regular_ticks_only_in_the_regular_session() -> None:
    [tick] = parse_quote_response({"quoteResponse": {"result": [{**QUOTE, "marketState": "REGULAR"}], "error": None}})
    assert book(tick) == BOOK and not any(k.startswith("off_hours") for k in tick.metadata)
    [tick] = parse_quote_response({"quoteResponse": {"result": [QUOTE], "error": None}})
    assert book(tick) == BOOK  # no marketState: nothing says the book is another session's


@pytest.mark.parametrize("state, session", [("POST", "post"), ("PRE", "pre")])
def test_quote_book_goes_on_the_extended_tick_of_its_session(state: str, session: str) -> None:
    extended = {f"{session}MarketPrice": 421.0, f"{session}MarketTime": 1732312800}
    regular, ext = parse_quote_response({"quoteResponse": {"result": [
        {**QUOTE, **extended, "marketState": state}], "error": None}})
    assert book(regular) == (None, None, None, None)
    assert ext.metadata["session"] == session and book(ext) == BOOK


@pytest.mark.parametrize("state, extended", [
    ("CLOSED", {"postMarketPrice": 421.0, "postMarketTime": 1732312800}),  # the book is overnight, not post's
    ("POSTPOST", {"postMarketPrice": 421.0, "postMarketTime": 1732312800}),
    ("POST", {}),  # no post-market tick to carry it
    ("CLOSED", {}),
])
def test_quote_book_outside_its_session_is_named_off_hours(state: str, extended: dict[str, Any]) -> None:
    ticks = parse_quote_response({"quoteResponse": {"result": [{**QUOTE, **extended, "marketState": state}],
                                                    "error": None}})
    assert all(book(t) == (None, None, None, None) for t in ticks)
    assert {k: v for k, v in ticks[-1].metadata.items() if k.startswith("off_hours")} == {
        "off_hours_bid": 419.5, "off_hours_ask": 419.9, "off_hours_bid_size": 2.0, "off_hours_ask_size": 3.0}
    assert ticks[-1].metadata["market_state"] == state
    assert not any(k.startswith("off_hours") for t in ticks[:-1] for k in t.metadata)


def test_session_redirects_only_yahoo_hosts() -> None:
    assert yfinance_session("https://query1.finance.yahoo.com") is None
    s = yfinance_session("http://127.0.0.1:9")
    assert isinstance(s, RedirectingSession)
    assert s.rewrite("https://query2.finance.yahoo.com/v8/finance/chart/MSFT?range=1d") == \
        "http://127.0.0.1:9/v8/finance/chart/MSFT?range=1d"
    assert s.rewrite("https://fc.yahoo.com") == "http://127.0.0.1:9/"
    assert s.rewrite("https://example.org/x") == "https://example.org/x"


# ---------------------------------------------------------------------------------------------- source


@pytest.fixture(scope="session", autouse=True)
def _yf_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """yfinance's timezone and cookie caches in a temporary folder, not the user's."""
    yf.set_tz_cache_location(str(tmp_path_factory.mktemp("yfinance")))


@pytest.fixture(autouse=True)
def _fresh_yfinance() -> None:
    """yfinance memoises past-range chart answers and the crumb process-wide: each test starts clean."""
    YfData.cache_get.cache_clear()
    YfData()._crumb = None
    YfData()._cookie = None


class FakeYahoo:
    """Everything yfinance asks Yahoo for, on one local server; per-symbol scripted failures first."""

    def __init__(self, failures: dict[str, list[int]] | None = None) -> None:
        self.charts: list[tuple[str, dict[str, str]]] = []
        self.quotes: list[dict[str, str]] = []
        self.agents: list[str] = []
        self.failures = failures or {}

    async def chart(self, request: web.Request) -> web.Response:
        symbol = request.match_info["symbol"]
        self.charts.append((symbol, dict(request.query)))
        self.agents.append(request.headers.get("User-Agent", ""))
        script = self.failures.get(symbol)
        if script:
            return web.Response(status=script.pop(0), text="<html>Will be back</html>")
        if symbol == "NOPE":
            return web.json_response(load("chart_not_found.json"), status=404)
        if symbol == "EMPTY":
            return web.json_response(load("chart_empty.json"))
        if symbol == "ODD":
            return web.json_response(load("chart_garbage.json"))
        name = "chart_msft_1d.json" if request.query.get("interval") == "1d" else "chart_msft_1m_live.json"
        return web.Response(body=(FIX / name).read_bytes(), content_type="application/json")

    async def quote(self, request: web.Request) -> web.Response:
        self.quotes.append(dict(request.query))
        return web.json_response(load("quote_msft.json"))

    async def summary(self, request: web.Request) -> web.Response:
        return web.json_response(load("quote_summary_msft.json"))

    async def timeseries(self, request: web.Request) -> web.Response:  # Ticker.info asks for trailingPegRatio
        return web.json_response(load("timeseries_msft_peg.json"))

    async def crumb(self, request: web.Request) -> web.Response:
        return web.Response(text="local-crumb")

    async def other(self, request: web.Request) -> web.Response:  # fc.yahoo.com's cookie page, consent pages
        return web.Response(text="ok")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v8/finance/chart/{symbol}", self.chart)
        app.router.add_get("/v7/finance/quote", self.quote)
        app.router.add_get("/v10/finance/quoteSummary/{symbol}", self.summary)
        app.router.add_get("/ws/fundamentals-timeseries/v1/finance/timeseries/{symbol}", self.timeseries)
        app.router.add_get("/v1/test/getcrumb", self.crumb)
        app.router.add_route("*", "/{tail:.*}", self.other)
        return app


def settings(base_url: str, **kw: Any) -> YahooSettings:
    defaults: dict[str, Any] = {"base_url": base_url, "retry_attempts": 3, "retry_base_delay": 0.01,
                                "request_timeout_seconds": 5.0, "rate_limit_calls": 1000, "interval_seconds": 0.01}
    return YahooSettings(**{**defaults, **kw})


async def test_live_poll_through_yfinance_sends_tick_and_new_bars_only(serve: Serve) -> None:
    fake = FakeYahoo()
    src = YahooSource(settings(await serve(fake.app()), symbols=["msft"]))
    first = await src.poll_once(None)
    second = await src.poll_once(None)
    assert [p.data_type for p in first] == ["tick", "bar", "bar", "bar"]
    assert all(p.source == "yahoo" and p.symbol == "MSFT" for p in first)
    assert first[0].price == 417.25 and first[0].timestamp == datetime.fromtimestamp(T0 + 207, UTC)
    # the forming minute (stamped T0+207) sits on its bar's start; the null minute is skipped
    assert [int(p.timestamp.timestamp()) - T0 for p in first[1:]] == [0, 60, 180]
    assert [(p.data_type, int(p.timestamp.timestamp()) - T0) for p in second] == [("bar", 180)]
    symbol, query = next((sym, q) for sym, q in fake.charts if q.get("interval") == "1m")
    assert symbol == "MSFT" and query["range"] == "1d"
    assert query["includePrePost"] == "false" and query["crumb"] == "local-crumb"  # yfinance's cookie/crumb flow
    assert "Chrome" in fake.agents[0]  # curl_cffi impersonating a browser


async def test_history_daily_through_yfinance(serve: Serve) -> None:
    fake = FakeYahoo()
    src = YahooSource(settings(await serve(fake.app())))
    daily = await src.history(None, "MSFT", date(2024, 11, 19), date(2024, 11, 21))
    assert [b.timestamp for b in daily] == [datetime(2024, 11, d, tzinfo=UTC) for d in (19, 21)]
    assert (daily[0].open, daily[0].high, daily[0].low, daily[0].close, daily[0].volume) == (
        413.11, 418.4, 412.1, 417.79, 18133500.0)
    assert daily[0].metadata == {"adj_close": 416.97, "currency": "USD"}
    assert daily[1].metadata == {"adj_close": 412.05, "split": "2:1", "currency": "USD"}
    history = [q for _, q in fake.charts if "period1" in q]
    assert len(history) == 1 and history[0]["interval"] == "1d"
    assert history[0]["period1"] == str(int(datetime(2024, 11, 19, tzinfo=UTC).timestamp()))
    assert history[0]["period2"] == str(int(datetime(2024, 11, 22, tzinfo=UTC).timestamp()))


async def test_history_intraday_in_chunks_of_yahoos_span(serve: Serve) -> None:
    fake = FakeYahoo()
    src = YahooSource(settings(await serve(fake.app())))
    bars = await src.history(None, "MSFT", datetime(2024, 11, 15, tzinfo=UTC), datetime(2024, 11, 25, tzinfo=UTC),
                             interval="1m")
    minute = [q for _, q in fake.charts if q.get("interval") == "1m"]
    assert len(minute) == 2  # 10 days of 1m bars: two requests of at most 7 days
    assert int(minute[0]["period2"]) - int(minute[0]["period1"]) == 7 * 86400
    assert minute[1]["period2"] == str(int(datetime(2024, 11, 25, tzinfo=UTC).timestamp()))
    assert [int(b.timestamp.timestamp()) - T0 for b in bars] == [0, 60, 180]


async def test_5xx_is_retried_then_succeeds(serve: Serve) -> None:
    fake = FakeYahoo({"MSFT": [500, 502]})  # yfinance itself re-asks once after a >= 400
    src = YahooSource(settings(await serve(fake.app())))
    bars = await src.history(None, "MSFT", date(2024, 11, 19), date(2024, 11, 22))
    assert len(bars) == 3
    assert len([q for _, q in fake.charts if "period1" in q]) == 3


async def test_unknown_symbol_and_exhausted_retries_are_logged_others_continue(
        serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeYahoo({"AAPL": [500] * 20})
    src = YahooSource(settings(await serve(fake.app()), symbols=["NOPE", "AAPL", "MSFT"], retry_attempts=2))
    caplog.set_level(logging.WARNING)
    points = await src.poll_once(None)
    assert {p.symbol for p in points} == {"MSFT"}
    assert "yahoo: NOPE failed" in caplog.text and "No data found, symbol may be delisted" in caplog.text
    assert "yahoo: AAPL failed" in caplog.text and "gave up after 2 attempts" in caplog.text


async def test_a_symbol_failing_round_after_round_is_warned_once_per_cause_not_each_round(
        serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    """An outage of two symbols polled every 10 s was 12 warnings a minute (/health says the source is failing all
    along): a failure is warned when its cause changes, every 5 minutes while it lasts, and again after a success."""
    fake = FakeYahoo({"AAPL": [500] * 40})
    src = YahooSource(settings(await serve(fake.app()), symbols=["AAPL"], retry_attempts=1))
    caplog.set_level(logging.WARNING)
    for _ in range(3):
        await src.poll_once(None)
    assert len([r for r in caplog.records if "yahoo: AAPL failed" in r.getMessage()]) == 1
    src.failures.last["AAPL"] = (src.failures.last["AAPL"][0], -1e9)  # five minutes on
    await src.poll_once(None)
    assert len([r for r in caplog.records if "yahoo: AAPL failed" in r.getMessage()]) == 2


async def test_an_unknown_symbol_is_counted_each_round_and_warned_once(
        serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    """A delisted symbol in the list is a configuration matter: one warning, a count /health shows, not a line a
    round for as long as the worker runs."""
    src = YahooSource(settings(await serve(FakeYahoo().app()), symbols=["NOPE", "MSFT"]))
    caplog.set_level(logging.WARNING)
    for _ in range(3):
        await src.poll_once(None)
    assert src.unknown == {"NOPE": 3}
    warned = [r.getMessage() for r in caplog.records if "NOPE" in r.getMessage()]
    assert len(warned) == 1 and "counted in unknown['NOPE']" in warned[0]


async def test_empty_range_is_logged_and_odd_payload_warned_once_and_counted(
        serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    src = YahooSource(settings(await serve(FakeYahoo().app()), symbols=["EMPTY", "ODD"]))
    caplog.set_level(logging.INFO)
    assert await src.poll_once(None) == []
    assert await src.poll_once(None) == []
    assert "EMPTY: no 1m bars in this range" in caplog.text
    assert src.unexpected["chart"] == 2
    warned = [r for r in caplog.records if "unexpected chart payload" in r.getMessage()]
    assert len(warned) == 1 and "ODD" in warned[0].getMessage()


async def test_tick_from_the_v7_quote(serve: Serve) -> None:
    fake = FakeYahoo()
    src = YahooSource(settings(await serve(fake.app()), symbols=["MSFT"], tick_from="quote", bars=False))
    ticks = await src.poll_once(None)
    assert [(t.price, t.metadata["session"]) for t in ticks] == [(417.0, "regular"), (417.35, "post")]
    src._last_tick.clear()
    assert len(await src.poll_once(None)) == 2 and not src.unexpected  # and the next poll too
    assert (ticks[0].bid, ticks[1].bid, ticks[1].ask) == (None, 416.9, 417.2)  # marketState POST
    assert fake.quotes and fake.quotes[0]["symbols"] == "MSFT"
    assert await src.poll_once(None) == []  # nothing moved


async def test_fetch_yields_and_repeats(serve: Serve) -> None:
    src = YahooSource(settings(await serve(FakeYahoo().app()), symbols=["MSFT"]))
    gen = src.fetch(None)
    batches = [await anext(gen), await anext(gen)]
    await gen.aclose()
    assert [len(b) for b in batches] == [4, 1]


async def test_stream_through_yfinance_websocket_reconnects() -> None:
    subscribed: list[Any] = []
    prices = iter([417.1, 417.2, 417.3])

    async def handler(conn: ServerConnection) -> None:
        subscribed.append(json.loads(await conn.recv()))
        for _ in range(2 if len(subscribed) == 1 else 1):
            msg = encode_pricing({"id": "MSFT", "price": next(prices), "time": 1732309201000 + len(subscribed),
                                  "market_hours": 1})
            await conn.send(json.dumps({"type": "pricing", "message": msg}))
        await conn.send(json.dumps({"type": "pricing", "message": "not-protobuf!"}))
        await conn.close()  # the feed drops: the source must reopen it

    async with ws_serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        src = YahooSource(settings("http://127.0.0.1:9", symbols=["msft"], stream=True,
                                   ws_url=f"ws://127.0.0.1:{port}", ws_flush_seconds=0.05,
                                   reconnect_base_seconds=0.01))
        gen = src.fetch(None)
        got: list[Any] = []
        while len(got) < 3:
            got.extend(await asyncio.wait_for(anext(gen), 10))
        await gen.aclose()
    assert [p.price for p in got] == pytest.approx([417.1, 417.2, 417.3])
    assert all(p.symbol == "MSFT" and p.metadata["session"] == "regular" for p in got)
    assert len(subscribed) == 2 and subscribed[0] == {"subscribe": ["MSFT"]}
    assert src.unexpected["stream"] >= 1


async def test_no_backoff_after_the_last_attempt() -> None:
    """Between attempts there is a wait; after the last failed one there is nothing left to wait for."""
    src = YahooSource(settings("http://127.0.0.1:9", retry_attempts=3))
    waits: list[float] = []
    calls = 0

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    def fails() -> None:
        nonlocal calls
        calls += 1
        raise TimeoutError("no answer")

    src.sleep = sleep
    with pytest.raises(SourceError, match="gave up after 3 attempts") as err:
        await src._call("chart", "MSFT", fails)
    assert err.value.retriable and calls == 3 and len(waits) == 2


async def test_quote_is_bounded_by_request_timeout_seconds(serve: Serve) -> None:
    """Ticker.info takes no timeout of its own (yfinance waits 30 s per request): each attempt of the quote path
    is bounded by request_timeout_seconds, a retriable failure like any timeout."""

    asked, release = asyncio.Event(), asyncio.Event()

    class SlowSummary(FakeYahoo):
        async def summary(self, request: web.Request) -> web.Response:
            asked.set()
            await release.wait()  # no answer until the test has its error: only our bound can end the call
            return await super().summary(request)

    src = YahooSource(settings(await serve(SlowSummary().app()), request_timeout_seconds=0.5, retry_attempts=1))
    try:
        with pytest.raises(SourceError, match=r"request_timeout_seconds=0\.5") as err:
            await asyncio.wait_for(src.quote("MSFT"), 20)  # a safety net for a missing bound, not the assert
        # The request reached the server, which never answered: the error is the attempt's own bound.
        assert err.value.retriable and asked.is_set() and not release.is_set()
    finally:
        release.set()
        src.pool.shutdown(wait=False)


async def test_prepost_asks_for_extended_hours_bars_and_they_carry_their_session(serve: Serve) -> None:
    """settings.prepost reaches the chart requests (live and history); Yahoo's pre- and post-market bars then come
    out with sessions pre/regular/post (2024-11-22: 08:00, 09:30 and 16:30 ET)."""
    pre, regular, post = T0 - 5400, T0, T0 + 25200

    class Extended(FakeYahoo):
        async def chart(self, request: web.Request) -> web.Response:
            if request.query.get("interval") != "1m" or request.query.get("includePrePost") != "true":
                return await super().chart(request)
            self.charts.append((request.match_info["symbol"], dict(request.query)))
            body = load("chart_msft_1m_live.json")
            result = body["chart"]["result"][0]
            result["timestamp"] = [pre, regular, post]
            result["meta"]["regularMarketTime"] = regular + 30
            result["indicators"]["quote"][0] = {k: v[:2] + v[3:] for k, v in result["indicators"]["quote"][0].items()}
            return web.json_response(body)

    fake = Extended()
    src = YahooSource(settings(await serve(fake.app()), symbols=["MSFT"], prepost=True))
    points = await src.poll_once(None)
    bars = [p for p in points if p.data_type == "bar"]
    assert [(int(b.timestamp.timestamp()), b.metadata["session"]) for b in bars] == [
        (pre, "pre"), (regular, "regular"), (post, "post")]
    await src.history(None, "MSFT", datetime(2024, 11, 22, tzinfo=UTC), datetime(2024, 11, 23, tzinfo=UTC),
                      interval="1m")
    minute = [q for _, q in fake.charts if q.get("interval") == "1m"]
    assert [q["includePrePost"] for q in minute] == ["true", "true"] and "period1" in minute[1]


async def test_a_refused_call_is_not_retried() -> None:
    """The error's `retriable` decides: a non-retriable failure comes out at once, as itself."""
    src = YahooSource(settings("http://127.0.0.1:9", retry_attempts=5))
    calls = 0

    def refused() -> None:
        nonlocal calls
        calls += 1
        raise yf_errors.YFTzMissingError("ZZZZ")

    with pytest.raises(SourceError, match="knows no timezone") as err:
        await src._call("chart", "ZZZZ", refused)
    assert not err.value.retriable and calls == 1


async def test_stream_reconnect_waits_double_to_the_cap_with_jitter_then_the_fifth_failure_ends_it() -> None:
    """A stream that cannot open waits reconnect_base_seconds, doubling to reconnect_max_seconds, each scaled by a
    jitter in [0.5, 1) (Finnhub's reconnect wait), before opening again; the fifth failure in a row ends the
    stream with a retriable error, which the supervisor shows as `failing` with its cause."""

    class Down:
        async def subscribe(self, symbols: list[str]) -> None:
            raise OSError("connection refused")

        async def close(self) -> None:
            pass

    src = YahooSource(settings("http://127.0.0.1:9", symbols=["MSFT"], stream=True, reconnect_base_seconds=1.0,
                               reconnect_max_seconds=4.0))
    src.websocket_factory = lambda url: Down()
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    src.sleep = sleep
    with pytest.raises(SourceError) as err:
        await anext(src.stream())
    assert err.value.retriable
    assert str(err.value) == "yahoo stream: 5 connections in a row failed; the last: OSError: connection refused"
    nominal = [1.0, 2.0, 4.0, 4.0]
    assert all(0.5 * n <= w < n for w, n in zip(waits, nominal, strict=True)), waits


async def test_live_tick_prev_close_from_previous_close_and_null_bars_reported(
        serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    """yfinance hands on the chart meta's previousClose and range; Yahoo's null minute reaches frame_to_bars, which
    reports it (yfinance's keepna=False would have dropped it unseen)."""

    class FiveDays(FakeYahoo):
        async def chart(self, request: web.Request) -> web.Response:
            if request.query.get("range") != "5d":
                return await super().chart(request)
            body = load("chart_msft_1m_live.json")
            body["chart"]["result"][0]["meta"].update(range="5d", chartPreviousClose=400.0, previousClose=412.87)
            return web.json_response(body)

    src = YahooSource(settings(await serve(FiveDays().app()), symbols=["MSFT"], live_range="5d"))
    caplog.set_level(logging.INFO, logger="producers.yahoo")
    tick, *bars = await src.poll_once(None)
    assert tick.data_type == "tick" and tick.metadata["prev_close"] == 412.87
    assert len(bars) == 3
    assert [r.getMessage() for r in caplog.records if "null" in r.getMessage()] == [
        "yahoo: MSFT: skipped 1 null 1m bars in this response"]


async def test_a_failed_timezone_lookup_is_retried_an_unknown_symbol_is_not(
        serve: Serve, monkeypatch: pytest.MonkeyPatch) -> None:
    """yfinance looks up a backfill symbol's timezone first; a 5xx there is a blip to retry, not "delisted"."""
    monkeypatch.setattr(yf_base, "_tz_info_fetch_ctr", 2)  # yfinance's Ticker.info fallback, spent per process
    fake = FakeYahoo({"ZZZQ": [500, 502]})  # yfinance re-asks once itself: the first attempt fails whole
    src = YahooSource(settings(await serve(fake.app())))
    bars = await src.history(None, "ZZZQ", date(2024, 11, 19), date(2024, 11, 22))
    assert len(bars) == 3
    # Yahoo's answer for an unknown symbol, through the timezone lookup or the chart (yfinance's timezone cache
    # decides which asks first): a refusal either way, never retried
    with pytest.raises(SourceError, match=r"no timezone for NOPE|Yahoo refused NOPE") as err:
        await src.history(None, "NOPE", date(2024, 11, 19), date(2024, 11, 22))
    assert err.value.retriable is False
    assert len([s for s, _ in fake.charts if s == "NOPE"]) <= 2  # one attempt (yfinance re-asks a 4xx once)


def test_a_request_without_an_answer_is_a_network_failure_to_retry() -> None:
    """curl_cffi's error for a DNS failure or a refused connection carries a response of status 0: it read as
    "HTTP 0 for AAPL", not retried, and the symbol's round was lost for good."""
    from types import SimpleNamespace

    from curl_cffi import requests as curl_requests

    dns = curl_requests.RequestsError("Could not resolve host: query2.finance.yahoo.com", 6,
                                      SimpleNamespace(status_code=0))
    err = YahooSource._classify(dns, "AAPL")
    assert err.retriable is True and "HTTP 0" not in str(err) and "Could not resolve host" in str(err)
    served = curl_requests.RequestsError("HTTP Error 503", 22, SimpleNamespace(status_code=503))
    assert str(YahooSource._classify(served, "AAPL")).startswith("HTTP 503 for AAPL")


async def test_tick_from_the_v7_quote_when_quote_summary_is_refused(serve: Serve) -> None:
    """Ticker.info asks quoteSummary first; Yahoo answers it 404 for a symbol without fundamentals and in outages of
    that service. With yfinance's hide_exceptions off that 404 failed the whole call, though the v7 quote has the
    price (with it on, yfinance went on to the v7 quote)."""

    class NoSummary(FakeYahoo):
        async def summary(self, request: web.Request) -> web.Response:
            return web.json_response({"quoteSummary": {"result": None, "error": {
                "code": "Not Found", "description": "No fundamentals data found for any of the summaryTypes"}}},
                status=404)

    fake = NoSummary()
    src = YahooSource(settings(await serve(fake.app()), symbols=["MSFT"], tick_from="quote", bars=False))
    ticks = await src.poll_once(None)
    assert [(t.price, t.metadata["session"]) for t in ticks] == [(417.0, "regular"), (417.35, "post")]
    src._last_tick.clear()
    assert len(await src.poll_once(None)) == 2 and not src.unexpected  # and the next poll too
