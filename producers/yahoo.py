"""Yahoo Finance through yfinance: live polling (a tick, plus the day's new bars), quotes, historical bars,
and optionally live prices from yfinance's streaming feed; written to raw.yahoo with source "yahoo".

- Why yfinance: since spring 2025 Yahoo answers clients that do not look like a browser at the TLS level
  with 429 "Too Many Requests". yfinance fixed it by impersonating a browser through curl_cffi (yfinance
  PRs #2430, #2452; issues #2422, #2472) and keeps up with Yahoo's cookie/crumb dance, so every Yahoo
  request goes through it. yfinance is blocking: its calls run in a bounded thread pool
  (settings.max_workers), never on the event loop, each after a token from the source's rate limiter.
- base_url: a Yahoo host leaves yfinance's URLs alone; any other URL gets a curl_cffi session that sends
  every Yahoo request (chart, quote, cookie, crumb) to that host with the same path and query, which is
  how tests and the selftest serve recorded responses locally.
- Bars: Ticker.history(auto_adjust=False, actions=True, repair=False): raw (split-adjusted, not
  dividend-adjusted) OHLC as Yahoo gives them; "Adj Close" -> metadata["adj_close"], the day's dividend
  and split -> metadata["dividend"] / ["split"], so the two series are never mixed.
- Timestamps: daily and longer bars at UTC midnight of the exchange-local trading date (yfinance indexes
  them at local midnight of that date); intraday bars at their start in UTC. The exchange timezone is the
  chart's meta.exchangeTimezoneName. The forming bar Yahoo stamps with its last trade goes on its bar's
  start; where Yahoo also sent that bar on the grid, the two are merged as yfinance merges them.
- Sessions: intraday bars (and a tick taken from a bar) carry metadata["session"] (pre, regular, post) from
  the exchange calendar (streams/calendars.py, the helper Alpha Vantage's bars use): the calendar is the
  chart's exchange code (meta.exchangeName, YAHOO_EXCHANGES), else the symbol's form, else NYSE. Charts are
  asked with settings.prepost: false (the default) gives regular-session bars only, true adds the pre- and
  post-market bars (live and history), sessions pre/regular/post; a bar outside every session has no session
  key. Quote and stream ticks keep the session Yahoo gives (marketState, market_hours).
- Tick: from the chart meta (regularMarketPrice at regularMarketTime; prev_close from previousClose, or
  chartPreviousClose on a range=1d chart only), or with tick_from="quote" from Ticker.info (the v7 quote):
  a pre/post-market price as its own tick with its session; bid/ask go on the tick of the session they
  are from (marketState), else into metadata as off_hours_bid/off_hours_ask.
- Null bars (no prices) are skipped and counted: one INFO line per response with the symbol and count.
- Streaming (settings.stream): yfinance.AsyncWebSocket; each decoded PricingData is a tick whose
  metadata["session"] comes from its market_hours; a dropped connection is reopened with backoff.
- Errors: Yahoo's explained refusals (unknown symbol) are not retriable; 429s, timeouts, connection
  errors and 5xx are retried with capped, jittered backoff; a payload of an unexpected shape logs one
  warning per cause and counts in `self.unexpected`, never an empty result in silence.
- The pure JSON parsers (parse_chart, parse_tick, parse_quote_response) read Yahoo's documented bodies
  directly: used to check recordings and by callers holding a chart body.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import time
import warnings
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import aiohttp
import yfinance as yf
from curl_cffi import requests as curl_requests
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_attempt,
    stop_never,
    wait_random_exponential,
)
from yfinance import exceptions as yf_errors
from yfinance.data import YfData

from producers.backoff import JitteredExponential
from producers.base import ConnectionRun, PollingSource, Record, RepeatedFailures
from producers.http import RateLimiter, redact
from streams.calendars import calendar, exchange_for, trading_session
from streams.config import Interval, YahooSettings
from streams.errors import SourceError
from streams.logs import quiet_repeats
from streams.models import DataType, MarketDataPoint

logger = logging.getLogger(__name__)

# yfinance's own use of a pandas API pandas 3 deprecates (sort_index(inplace=True)): a warning about its code, not
# the user's, printed on every worker's and self-test's output; nothing for a user to do.
warnings.filterwarnings("ignore", message=r"The inplace keyword in DataFrame\.sort_index is deprecated",
                        module=r"yfinance(\.|$)")

# yfinance's default (hide_exceptions=True) turns a failed request into a log line and an empty answer: a 5xx or a
# dropped connection while it looks up a symbol's timezone became YFTzMissingError ("possibly delisted"), so a
# backfill failed for good on a blip, and a failed Ticker.info an empty dict ("unexpected payload"). Raised, they
# reach _classify, which retries what is worth it. This is what yfinance's deprecation of raise_errors asks for.
yf.config.debug.hide_exceptions = False

SOURCE = "yahoo"
T = TypeVar("T")

_INTRADAY_SECONDS: dict[str, int] = {
    "1m": 60, "2m": 120, "5m": 300, "15m": 900, "30m": 1800, "60m": 3600, "90m": 5400, "1h": 3600,
}
# Yahoo refuses longer spans per request for intraday data (1m: 7 days; < 1h: 60 days; hourly: 730 days).
_MAX_SPAN: dict[str, timedelta] = {
    "1m": timedelta(days=7), "2m": timedelta(days=60), "5m": timedelta(days=60), "15m": timedelta(days=60),
    "30m": timedelta(days=60), "60m": timedelta(days=730), "90m": timedelta(days=60), "1h": timedelta(days=730),
}
# PricingData.market_hours (Yahoo's MarketHoursType); proto3 leaves 0 out of a message, so absent is 0.
MARKET_HOURS: dict[int, str] = {0: "pre", 1: "regular", 2: "post", 3: "extended"}
# Yahoo's exchange codes (chart meta exchangeName, quote "exchange") -> the exchange_calendars name.
YAHOO_EXCHANGES: dict[str, str] = {
    "NMS": "XNAS", "NGM": "XNAS", "NCM": "XNAS", "NAS": "XNAS", "NYQ": "XNYS", "ASE": "XASE", "PCX": "ARCX",
    "BTS": "BATS", "GER": "XETR", "FRA": "XFRA", "LSE": "XLON", "PAR": "XPAR", "AMS": "XAMS", "BRU": "XBRU",
    "MIL": "XMIL", "MCE": "XMAD", "EBS": "XSWX", "VIE": "XWBO", "STO": "XSTO", "CPH": "XCSE", "HEL": "XHEL",
    "OSL": "XOSL", "TOR": "XTSE", "VAN": "XTSX", "JPX": "XTKS", "HKG": "XHKG", "ASX": "XASX",
}
# v7 quote marketState -> session.
MARKET_STATE: dict[str, str] = {"PREPRE": "pre", "PRE": "pre", "REGULAR": "regular", "POST": "post",
                                "POSTPOST": "post", "CLOSED": "closed"}


class _Reopen(Exception):
    """The price stream ended (or never opened): tenacity waits, then the stream connects again."""


class YahooUnexpected(SourceError):
    """A Yahoo payload of a shape nothing here can read (logged once per cause, counted)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retriable=False)


# ---------------------------------------------------------------------------------------------- JSON parsing


def _num(values: Any, i: int | None = None) -> float | None:
    value = values
    if i is not None:
        if not isinstance(values, list) or i >= len(values):
            return None
        value = values[i]
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else out


def _exchange_tz(meta: Mapping[str, Any]) -> ZoneInfo | None:
    name = meta.get("exchangeTimezoneName")
    if isinstance(name, str) and name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            return None
    return None


def _trading_date(epoch: int, meta: Mapping[str, Any]) -> datetime:
    """The exchange-local date of a daily bar, as UTC midnight."""
    tz = _exchange_tz(meta)
    if tz is not None:
        d = datetime.fromtimestamp(epoch, tz).date()
    else:
        d = datetime.fromtimestamp(epoch + int(meta.get("gmtoffset") or 0), UTC).date()
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


def exchange_calendar(symbol: str, meta: Mapping[str, Any] | None = None) -> str | None:
    """The exchange calendar of a Yahoo symbol: its exchange code (chart meta exchangeName, quote exchange),
    else its form (.DE, =X, -USD, ...; streams/calendars.py), else NYSE."""
    code = str((meta or {}).get("exchangeName") or (meta or {}).get("exchange") or "").upper()
    mic = YAHOO_EXCHANGES.get(code)
    return exchange_for(symbol, metadata={"exchange": mic} if mic else None)


def session_at(ts: datetime, calendar_name: str | None) -> str | None:
    """pre, regular or post at `ts` on the exchange calendar (the helper Alpha Vantage's bars use too)."""
    return trading_session(ts.timestamp(), calendar_name)


def chart_result(payload: Any, symbol: str) -> dict[str, Any] | None:
    """chart.result[0], None for an empty result; chart.error raises."""
    if not isinstance(payload, dict) or not isinstance(payload.get("chart"), dict):
        raise YahooUnexpected(f"unexpected Yahoo chart payload for {symbol}: {type(payload).__name__}")
    chart = payload["chart"]
    error = chart.get("error")
    if error:
        if isinstance(error, dict):
            text = f"{error.get('code', '')}: {error.get('description', '')}"
        else:
            text = str(error)
        raise SourceError(f"Yahoo chart error for {symbol}: {text[:300]}", retriable=False)
    results = chart.get("result")
    if not results:
        return None
    result = results[0]
    if not isinstance(result, dict):
        raise YahooUnexpected(f"unexpected Yahoo chart result for {symbol}")
    return result


def _events(result: Mapping[str, Any], kind: str) -> dict[int, Mapping[str, Any]]:
    raw = (result.get("events") or {}).get(kind) or {}
    out: dict[int, Mapping[str, Any]] = {}
    for value in raw.values():
        if isinstance(value, dict) and value.get("date") is not None:
            out[int(value["date"])] = value
    return out


def _split_text(ev: Mapping[str, Any]) -> str:
    return str(ev.get("splitRatio") or f"{ev.get('numerator')}:{ev.get('denominator')}")


def _stamp(stamps: Sequence[Any], i: int) -> int | None:
    return int(stamps[i]) if i >= 0 and stamps[i] is not None else None


def forming_bar_start(epoch: int, prev: int | None, step: int, calendar_name: str | None, *,
                      prepost: bool = False) -> int:
    """The start of the bar a response's last row belongs to. Yahoo stamps the forming bar with its last trade
    (14:47 in a 14:30 hourly bar, 09:33:27 in a minute bar, 16:00:00 for the last regular bar after the close):
    - in the span of the market's hours the row before it is in, within two steps of it: on that row's grid. A
      stamp at or after the close (or a lunch break) belongs to the span's last bar, unless the chart has
      extended hours (`prepost`), whose bars start there;
    - in a span of its own (the day's first bar, the first after a lunch break): on the grid of its open;
    - in extended hours: on the row before's grid when that one is in them too and within two steps, else on the
      clock's (04:00, 16:00 and so on: extended-hours bars start there).
    Every other row is a bar start as stamped: the grid moves with sessions, DST and a 09:30 open after on-the-hour
    pre-market bars, so one anchor for a whole response misplaced whole days of bars."""
    cal = calendar(calendar_name)
    near = prev is not None and 0 < epoch - prev < 2 * step
    if cal is None or cal.always_open:
        return prev + (epoch - prev) // step * step if near else epoch  # type: ignore[operator]
    if near and not prepost and cal.session_of(epoch) is None and (was := cal.session_of(prev)) is not None:  # type: ignore[arg-type]
        tail = min(epoch, int(cal.closes[was])) - 1  # after the close: the span's last bar (its closing print)
        return prev + (tail - prev) // step * step  # type: ignore[operator]
    span = cal.session_of(epoch)
    if span is not None:
        if near and cal.session_of(prev) == span:  # type: ignore[arg-type]
            return prev + (epoch - prev) // step * step  # type: ignore[operator]
        opened = int(cal.opens[span])
        return opened + (epoch - opened) // step * step
    if near and cal.session_of(prev) is None:  # type: ignore[arg-type]
        return prev + (epoch - prev) // step * step  # type: ignore[operator]
    if 3600 % step == 0 or step % 3600 == 0:
        return epoch - epoch % step
    return epoch


def has_extended_hours(stamps: Sequence[int | None], calendar_name: str | None) -> bool:
    """Whether a chart holds pre- or post-market bars: a row but the last (which may be a live row after the
    close) outside the market's hours."""
    cal = calendar(calendar_name)
    if cal is None or cal.always_open:
        return False
    return any(t is not None and cal.session_of(int(t)) is None for t in stamps[:-1])


def _put_bar(by_time: dict[datetime, MarketDataPoint], bar: MarketDataPoint, *, snapped: bool) -> None:
    """A bar into its slot. A row snapped onto a bar start already taken is Yahoo's forming bar (stamped with
    its last trade) beside the bar it belongs to: merged into it as yfinance merges it (the first open, the
    highest high, the lowest low, the newer close, the volumes added), never put in its place, which lost the
    bar's own range and volume. Any other repeat of a stamp replaces the earlier row (Yahoo's duplicate)."""
    old = by_time.get(bar.timestamp)
    if old is None or not snapped:
        by_time[bar.timestamp] = bar
        return
    volume = None if old.volume is None and bar.volume is None else (old.volume or 0.0) + (bar.volume or 0.0)
    by_time[bar.timestamp] = old.model_copy(update={
        "high": max(x for x in (old.high, bar.high) if x is not None),
        "low": min(x for x in (old.low, bar.low) if x is not None),
        "close": bar.close, "volume": volume, "metadata": {**old.metadata, **bar.metadata}})


def parse_chart(payload: Any, symbol: str, interval: str | None = None, *,
                source: str = SOURCE) -> list[MarketDataPoint]:
    """A chart response -> bars, oldest first, null rows skipped (see the module docstring for timestamps)."""
    result = chart_result(payload, symbol)
    if result is None:
        return []
    meta = result.get("meta") or {}
    interval = interval or str(meta.get("dataGranularity") or "1d")
    stamps = result.get("timestamp") or []
    indicators = result.get("indicators") or {}
    quote = (indicators.get("quote") or [{}])[0] or {}
    adj = ((indicators.get("adjclose") or [{}])[0] or {}).get("adjclose")
    dividends, splits = _events(result, "dividends"), _events(result, "splits")
    step = _INTRADAY_SECONDS.get(interval)
    sym = symbol.upper()
    cal = exchange_calendar(sym, meta) if step is not None else None
    by_time: dict[datetime, MarketDataPoint] = {}
    skipped = 0
    for i, epoch in enumerate(stamps):
        o, h, lo, c = (_num(quote.get(k), i) for k in ("open", "high", "low", "close"))
        if epoch is None or o is None or h is None or lo is None or c is None:
            skipped += 1
            continue
        epoch = int(epoch)
        meta_row: dict[str, Any] = {"currency": meta["currency"]} if meta.get("currency") else {}
        adj_close = _num(adj, i)
        if adj_close is not None:
            meta_row["adj_close"] = adj_close
        snapped = False
        if step is None:
            ts = _trading_date(epoch, meta)
            day = ts.date()
            for when, ev in dividends.items():
                if _trading_date(when, meta).date() == day and ev.get("amount") is not None:
                    meta_row["dividend"] = float(ev["amount"])
            for when, ev in splits.items():
                if _trading_date(when, meta).date() == day:
                    meta_row["split"] = _split_text(ev)
        else:
            start = forming_bar_start(epoch, _stamp(stamps, i - 1), step, cal,
                                      prepost=has_extended_hours(stamps, cal)) if i == len(stamps) - 1 else epoch
            snapped, epoch = start != epoch, start
            ts = datetime.fromtimestamp(epoch, UTC)
            if (session := session_at(ts, cal)) is not None:
                meta_row["session"] = session
        _put_bar(by_time, MarketDataPoint(
            symbol=sym, timestamp=ts, source=source, data_type=DataType.BAR, open=o, high=h, low=lo, close=c,
            volume=_num(quote.get("volume"), i), interval=interval, item_id=interval, metadata=meta_row,
        ), snapped=snapped)
    if skipped:  # Yahoo sends a bar without prices for a minute or day without trades
        logger.info("yahoo: %s: skipped %d null %s bars in this response", sym, skipped, interval)
    return [by_time[t] for t in sorted(by_time)]


def _epoch(value: Any) -> datetime | None:
    """An epoch in seconds, or a datetime/pandas Timestamp (yfinance formats some meta fields), as UTC."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    try:
        return datetime.fromtimestamp(int(value), UTC)
    except (TypeError, ValueError, OverflowError):
        return None


def _prev_close(meta: Mapping[str, Any]) -> float | None:
    """The previous trading day's close from a chart meta, None when the meta does not say it.
    chartPreviousClose is the close before the chart's first bar: the previous day's only on a range=1d chart
    (on a history chart it is the close before its start, months before the tick)."""
    for key in ("previousClose", "regularMarketPreviousClose"):
        if (value := _num(meta.get(key))) is not None:
            return value
    return _num(meta.get("chartPreviousClose")) if meta.get("range") == "1d" else None


def tick_from_meta(meta: Mapping[str, Any], symbol: str, *, source: str = SOURCE) -> MarketDataPoint | None:
    """A chart's meta: regularMarketPrice at regularMarketTime as a tick; None if either is missing."""
    price, ts = _num(meta.get("regularMarketPrice")), _epoch(meta.get("regularMarketTime"))
    if price is None or ts is None:
        return None
    extra = {k: meta[src] for k, src in (
        ("currency", "currency"), ("exchange", "exchangeName"), ("day_volume", "regularMarketVolume"))
        if meta.get(src) is not None}
    if (prev_close := _prev_close(meta)) is not None:
        extra["prev_close"] = prev_close
    extra["session"] = "regular"
    return MarketDataPoint(
        symbol=symbol.upper(), timestamp=ts, source=source, data_type=DataType.TICK, price=price,
        high=_num(meta.get("regularMarketDayHigh")), low=_num(meta.get("regularMarketDayLow")),
        item_id="quote", metadata=extra,
    )


def parse_tick(payload: Any, symbol: str, *, source: str = SOURCE) -> list[MarketDataPoint]:
    """meta.regularMarketPrice at meta.regularMarketTime as a tick; else the latest bar's close."""
    result = chart_result(payload, symbol)
    if result is None:
        return []
    tick = tick_from_meta(result.get("meta") or {}, symbol, source=source)
    if tick is not None:
        return [tick]
    bars = parse_chart(payload, symbol, source=source)
    if not bars:
        return []
    meta = result.get("meta") or {}
    extra = {k: meta[src] for k, src in (("currency", "currency"), ("exchange", "exchangeName"))
             if meta.get(src) is not None}
    if (session := session_at(bars[-1].timestamp, exchange_calendar(symbol, meta))) is not None:
        extra["session"] = session
    return [MarketDataPoint(symbol=symbol.upper(), timestamp=bars[-1].timestamp, source=source,
                            data_type=DataType.TICK, price=bars[-1].close, item_id="quote", metadata=extra)]


def parse_quote(info: Mapping[str, Any], symbol: str, *, source: str = SOURCE) -> list[MarketDataPoint]:
    """One v7 quote (or yfinance's Ticker.info, which merges it in) -> the regular-market tick, plus the
    pre- or post-market price as its own tick when it is newer. bid/ask go on the regular tick in marketState
    REGULAR, on the pre/post tick in PRE/POST, else in the newest tick's metadata as off_hours_*. No price or
    time -> YahooUnexpected."""
    sym = str(info.get("symbol") or symbol).upper()
    price, ts = _num(info.get("regularMarketPrice")), _epoch(info.get("regularMarketTime"))
    if price is None or ts is None:
        raise YahooUnexpected(f"Yahoo quote for {sym} has no regularMarketPrice/regularMarketTime")
    state = str(info.get("marketState") or "")
    common = {k: info[src] for k, src in (
        ("currency", "currency"), ("exchange", "exchange"), ("quote_type", "quoteType"),
        ("exchange_tz", "exchangeTimezoneName")) if info.get(src) is not None}
    if state:
        common["market_state"] = state
    regular = {**common, "session": "regular"}
    for key, src in (("day_volume", "regularMarketVolume"), ("prev_close", "regularMarketPreviousClose"),
                     ("change", "regularMarketChange"), ("change_percent", "regularMarketChangePercent")):
        if (v := _num(info.get(src))) is not None:
            regular[key] = v
    out = [MarketDataPoint(
        symbol=sym, timestamp=ts, source=source, data_type=DataType.TICK, price=price,
        open=_num(info.get("regularMarketOpen")), high=_num(info.get("regularMarketDayHigh")),
        low=_num(info.get("regularMarketDayLow")), item_id="quote", metadata=regular,
    )]
    for session in ("pre", "post"):
        p, t = _num(info.get(f"{session}MarketPrice")), _epoch(info.get(f"{session}MarketTime"))
        if p is not None and t is not None and t > ts:
            out.append(MarketDataPoint(symbol=sym, timestamp=t, source=source, data_type=DataType.TICK, price=p,
                                       item_id="quote", metadata={**common, "session": session}))
    book = {"bid": _num(info.get("bid")) or None, "ask": _num(info.get("ask")) or None,
            "bid_size": _num(info.get("bidSize")), "ask_size": _num(info.get("askSize"))}
    # bid/ask are the book when the quote was taken: outside REGULAR (PRE, POST, CLOSED, ...) an extended-hours
    # or overnight one, not the regular close's. It goes on the tick of its own session (the pre/post tick in
    # PRE/POST), else into the newest tick's metadata as off_hours_*. No marketState: nothing says it is not
    # the regular book, kept as before.
    if state in ("REGULAR", ""):
        home: int | None = 0
    else:
        home = next((i for i, tick in enumerate(out) if i and tick.metadata["session"].upper() == state), None)
    if home is not None:
        out[home] = out[home].model_copy(update=book)
    else:
        newest = max(out, key=lambda tick: tick.timestamp)
        newest.metadata.update({f"off_hours_{k}": v for k, v in book.items() if v is not None})
    return out


def parse_quote_response(payload: Any, *, source: str = SOURCE) -> list[MarketDataPoint]:
    """A v7 /finance/quote body (quoteResponse.result[]) -> ticks; quoteResponse.error raises."""
    body = payload.get("quoteResponse") if isinstance(payload, dict) else None
    if not isinstance(body, dict) or not isinstance(body.get("result"), list):
        raise YahooUnexpected(f"unexpected Yahoo quote payload: {str(payload)[:200]}")
    if body.get("error"):
        raise SourceError(f"Yahoo quote error: {str(body['error'])[:300]}", retriable=False)
    out: list[MarketDataPoint] = []
    for item in body["result"]:
        if isinstance(item, dict):
            out.extend(parse_quote(item, str(item.get("symbol") or "")))
    return out


def parse_stream_message(msg: Mapping[str, Any], *, source: str = SOURCE) -> MarketDataPoint:
    """One decoded PricingData (yfinance's AsyncWebSocket hands it as a dict) -> a tick."""
    if "error" in msg and "id" not in msg:
        raise YahooUnexpected(f"undecodable Yahoo stream message: {str(msg.get('error'))[:200]}")
    sym, price, when = msg.get("id"), _num(msg.get("price")), msg.get("time")
    if not sym or price is None or when is None:
        raise YahooUnexpected(f"Yahoo stream message without id/price/time: {sorted(msg)}")
    ts = datetime.fromtimestamp(int(when) / 1000.0, UTC)  # PricingData.time is epoch milliseconds
    extra: dict[str, Any] = {"session": MARKET_HOURS.get(int(msg.get("market_hours") or 0), "unknown")}
    for key, src in (("currency", "currency"), ("exchange", "exchange"), ("day_volume", "day_volume"),
                     ("change_percent", "change_percent"), ("prev_close", "previous_close")):
        if msg.get(src) not in (None, ""):
            extra[key] = _num(msg[src]) if key in ("day_volume", "change_percent", "prev_close") else msg[src]
    return MarketDataPoint(
        symbol=str(sym).upper(), timestamp=ts, source=source, data_type=DataType.TICK, price=price,
        volume=_num(msg.get("last_size")), bid=_num(msg.get("bid")) or None, ask=_num(msg.get("ask")) or None,
        high=_num(msg.get("day_high")), low=_num(msg.get("day_low")), item_id="stream", metadata=extra,
    )


# ---------------------------------------------------------------------------------------------- yfinance frames


def frame_to_bars(df: Any, symbol: str, interval: str, *, source: str = SOURCE,
                  calendar_name: str | None = None, currency: str | None = None) -> list[MarketDataPoint]:
    """A yfinance history DataFrame (auto_adjust=False, actions=True) -> bars, oldest first; intraday bars carry
    their session on `calendar_name` (default: the symbol's, see exchange_calendar), every bar the chart's
    `currency` (London's GBp are pence, not pounds)."""
    if df is None or len(df) == 0:
        return []
    missing = {"Open", "High", "Low", "Close"} - set(df.columns)
    if missing:
        raise YahooUnexpected(f"yfinance history for {symbol} lacks columns {sorted(missing)}")
    step = _INTRADAY_SECONDS.get(interval)
    sym = symbol.upper()
    cal = (calendar_name or exchange_calendar(sym)) if step is not None else None
    by_time: dict[datetime, MarketDataPoint] = {}
    prev: int | None = None
    skipped = 0
    last = len(df) - 1
    for n, (stamp, row) in enumerate(df.iterrows()):
        o, h, lo, c = (_num(row.get(k)) for k in ("Open", "High", "Low", "Close"))
        local = stamp.to_pydatetime()
        epoch = int(local.timestamp())
        before, prev = prev, epoch  # the previous row's stamp, a null row's too (it holds its place on the grid)
        # A missing price, or every number of the row 0 (the rows yfinance's keepna=False drops: prices,
        # volume, dividends, splits): a null bar. Zero prices beside a volume are bad data, left to the
        # validator (price.non_positive) and the dead-letter topic.
        if o is None or h is None or lo is None or c is None or not any(
                (o, h, lo, c, *(_num(row.get(k)) for k in ("Volume", "Dividends", "Stock Splits")))):
            skipped += 1
            continue
        snapped = False
        if step is None:
            # yfinance indexes daily+ bars at local midnight of the exchange's trading date.
            ts = datetime(local.year, local.month, local.day, tzinfo=UTC)
        else:
            start = (forming_bar_start(epoch, before, step, cal, prepost=has_extended_hours(
                [int(t.timestamp()) for t in df.index], cal)) if n == last else epoch)
            snapped, epoch = start != epoch, start
            ts = datetime.fromtimestamp(epoch, UTC)
        extra: dict[str, Any] = {"currency": currency} if currency else {}
        if (adj := _num(row.get("Adj Close"))) is not None:
            extra["adj_close"] = adj
        if (div := _num(row.get("Dividends"))):
            extra["dividend"] = div
        if (split := _num(row.get("Stock Splits"))):
            extra["split"] = f"{split:g}:1" if split >= 1 else f"1:{1 / split:g}"
        if step is not None and (session := session_at(ts, cal)) is not None:
            extra["session"] = session
        _put_bar(by_time, MarketDataPoint(
            symbol=sym, timestamp=ts, source=source, data_type=DataType.BAR, open=o, high=h, low=lo, close=c,
            volume=_num(row.get("Volume")), interval=interval, item_id=interval, metadata=extra,
        ), snapped=snapped)
    if skipped:
        logger.info("yahoo: %s: skipped %d null %s bars in this response", sym, skipped, interval)
    return [by_time[t] for t in sorted(by_time)]


_META_KEYS = ("exchangeTimezoneName", "instrumentType", "currency", "exchangeName", "regularMarketPrice",
              "regularMarketTime", "regularMarketVolume", "regularMarketDayHigh", "regularMarketDayLow",
              "chartPreviousClose", "previousClose", "regularMarketPreviousClose", "range")


def _chart_meta(ticker: Any) -> dict[str, Any]:
    """The chart meta yfinance kept from its last history call. Only plain keys are read: its lazy
    "tradingPeriods" would cost another request."""
    md = ticker.get_history_metadata() or {}
    return {k: md[k] for k in _META_KEYS if k in md and md[k] is not None}


def _as_utc(value: date | datetime, *, end: bool = False) -> datetime:
    """A datetime (naive = UTC) as is; a date as UTC midnight, the day after for an inclusive end."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    d = value + timedelta(days=1) if end else value
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


# ---------------------------------------------------------------------------------------------- sessions


def _is_yahoo(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    return host == "yahoo.com" or host.endswith(".yahoo.com")


class RedirectingSession(curl_requests.Session):  # type: ignore[misc]
    """A browser-impersonating curl_cffi session that sends yfinance's Yahoo requests to another host
    (same path and query): a mirror, or a local server of recorded responses."""

    def __init__(self, base_url: str) -> None:
        super().__init__(impersonate="chrome")
        self.base_url = base_url.rstrip("/")

    def rewrite(self, url: str) -> str:
        if not _is_yahoo(url):
            return url
        parts = urlsplit(url)
        return f"{self.base_url}{parts.path or '/'}" + (f"?{parts.query}" if parts.query else "")

    def request(self, method: Any, url: str, *args: Any, **kwargs: Any) -> Any:
        return super().request(method, self.rewrite(url), *args, **kwargs)


def yfinance_session(base_url: str) -> curl_requests.Session | None:
    """None (yfinance's own session) for a Yahoo base URL, else a RedirectingSession to it."""
    return None if _is_yahoo(base_url) else RedirectingSession(base_url)


# ---------------------------------------------------------------------------------------------- source


class YahooSource(PollingSource):
    """Polls every symbol through yfinance once per interval (or streams, settings.stream); `history` loads
    a date range for backfills."""

    name = SOURCE

    def __init__(self, settings: YahooSettings, *, session: Any | None = None,
                 websocket_factory: Callable[[str], Any] | None = None) -> None:
        self.settings = settings
        quiet_repeats("yfinance")  # an outage: yfinance's own warning at every attempt (60 lines in 75 s)
        if settings.cache_dir:
            yf.set_tz_cache_location(settings.cache_dir)
        self.session = session if session is not None else yfinance_session(settings.base_url)
        self.limiter = RateLimiter.of(settings)
        self.pool = ThreadPoolExecutor(max_workers=settings.max_workers, thread_name_prefix="yfinance")
        self.websocket_factory = websocket_factory or (lambda url: yf.AsyncWebSocket(url=url, verbose=False))
        self.unexpected: Counter[str] = Counter()  # per endpoint: payloads of a shape nothing could read
        self.unknown: Counter[str] = Counter()  # per symbol: Yahoo's explained refusals (delisted, no data)
        self._warned: set[str] = set()
        self.failures = RepeatedFailures(logger)  # per symbol: warned per cause, not every round
        self._tickers: dict[str, Any] = {}
        self._last_tick: dict[tuple[str, str], datetime] = {}
        self._last_bar: dict[str, datetime] = {}
        self.sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep  # backoff and reconnect waits (tests)
        self.yields_every_round = not settings.stream  # the price stream has no rounds (producers/base.py)
        self.connections = ConnectionRun("yahoo stream")  # the stream's failed connections in a row

    # -------------------------------------------------------------------------------- plumbing

    def ticker(self, symbol: str) -> Any:
        """One yf.Ticker per symbol (it keeps the symbol's exchange timezone)."""
        sym = symbol.upper()
        if sym not in self._tickers:
            self._tickers[sym] = yf.Ticker(sym, session=self.session)
        return self._tickers[sym]

    def _unexpected(self, endpoint: str, cause: str) -> None:
        """Count a payload of an unexpected shape; one warning per endpoint and cause."""
        self.unexpected[endpoint] += 1
        key = f"{endpoint}|{cause}"
        if key not in self._warned:
            self._warned.add(key)
            logger.warning("yahoo: unexpected %s payload (counted in unexpected[%r], not warned again): %s",
                           endpoint, endpoint, redact(cause))

    @staticmethod
    def _classify(exc: BaseException, symbol: str) -> SourceError:
        """yfinance's and curl_cffi's exceptions -> SourceError with the right `retriable`."""
        text = redact(f"{type(exc).__name__}: {exc}")[:400]
        if isinstance(exc, SourceError):
            return exc
        if isinstance(exc, yf_errors.YFRateLimitError):
            return SourceError(f"429 Too Many Requests for {symbol}", retriable=True)
        if isinstance(exc, yf_errors.YFPricesMissingError) and exc.yahoo_reason:
            return SourceError(f"Yahoo refused {symbol}: {exc.yahoo_reason}", retriable=False)
        if isinstance(exc, yf_errors.YFTzMissingError):
            return SourceError(f"Yahoo knows no timezone for {symbol} (unknown or delisted symbol)",
                               retriable=False)
        response = getattr(exc, "response", None)
        status = getattr(response, "status_code", None)
        # curl_cffi gives a request that got no answer (a DNS failure, a refused connection) a response of status 0:
        # a network failure to retry (below), not "HTTP 0", refused for good.
        if isinstance(status, int) and status > 0:
            return SourceError(f"HTTP {status} for {symbol}: {text}", retriable=status == 429 or status >= 500)
        if isinstance(exc, ValueError) and ("JSON" in text or "Expecting" in text):
            return SourceError(f"Yahoo answer for {symbol} is not JSON: {text}", retriable=True)
        if isinstance(exc, (curl_requests.RequestsError, OSError, TimeoutError)):
            return SourceError(f"{text} for {symbol}", retriable=True)
        return YahooUnexpected(f"yfinance failed on {symbol}'s payload: {text}")

    async def _call(self, endpoint: str, symbol: str, fn: Callable[[], T], *, timeout: float | None = None) -> T:
        """Run a blocking yfinance call in the pool, inside the rate limit, retrying what is worth it. `timeout`
        bounds each attempt (time queued for a pool thread included), for calls that take no timeout of their own
        (Ticker.info): the attempt fails as a retriable TimeoutError; its thread ends on yfinance's own timeout."""
        s = self.settings
        loop = asyncio.get_running_loop()

        async def attempt() -> T:
            await self.limiter.acquire()
            try:
                future = loop.run_in_executor(self.pool, fn)
                if timeout is None:
                    return await future
                try:
                    return await asyncio.wait_for(future, timeout)
                except TimeoutError:
                    raise TimeoutError(f"no answer within request_timeout_seconds={timeout:g}") from None
            except Exception as exc:  # yfinance raises many kinds; _classify sorts them
                err = self._classify(exc, symbol)
                # yfinance memoises past-range chart answers (failed ones too) and a Ticker keeps the timezone
                # it failed to get: forget both, so a retry or the next poll really asks again.
                self._tickers.pop(symbol.upper(), None)
                YfData.cache_get.cache_clear()
                if isinstance(err, YahooUnexpected):
                    self._unexpected(endpoint, str(err))
                raise err from None

        # The error's `retriable` decides; the wait before retry n is random in [0, min(30, base x 2^(n-1))],
        # and none follows the last attempt.
        retrying = AsyncRetrying(stop=stop_after_attempt(s.retry_attempts), sleep=self.sleep, reraise=True,
                                 wait=wait_random_exponential(multiplier=s.retry_base_delay, max=30.0),
                                 retry=retry_if_exception(lambda e: isinstance(e, SourceError) and e.retriable))
        try:
            return await retrying(attempt)
        except SourceError as exc:
            if not exc.retriable:
                raise
            raise SourceError(f"gave up after {s.retry_attempts} attempts: {exc}", retriable=True) from None

    def _history_blocking(self, symbol: str, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        """Ticker.history plus the chart meta it came with; no data with a chart meta -> an empty frame, no
        data and no meta (not a chart body) -> YahooUnexpected."""
        t = self.ticker(symbol)
        try:
            # keepna=True: Yahoo's null bars reach frame_to_bars, which counts and reports them (yfinance's
            # keepna=False would drop them unseen).
            df = t.history(auto_adjust=False, back_adjust=False, repair=False, keepna=True,
                           timeout=self.settings.request_timeout_seconds, **kwargs)
        except yf_errors.YFPricesMissingError as exc:
            if exc.yahoo_reason:
                raise
            meta = _chart_meta(t)
            if not meta.get("exchangeTimezoneName"):
                raise YahooUnexpected(f"Yahoo chart answer for {symbol} is not a chart: {exc}") from None
            return None, meta
        return df, _chart_meta(t)

    # -------------------------------------------------------------------------------- endpoints

    def _info_blocking(self, symbol: str) -> dict[str, Any]:
        """Ticker.info; when its first request, quoteSummary (fundamentals), is refused, the v7 quote alone, which
        holds every field parse_quote reads. Yahoo answers quoteSummary 404 for a symbol without those modules
        and in its outages of that service (download working, info not: yfinance #1732, #1753); with
        hide_exceptions off (module top) yfinance raises there instead of going on to the v7 quote."""
        t = self.ticker(symbol)
        try:
            return dict(t.info or {})
        except curl_requests.exceptions.HTTPError:  # yfinance's HTTPError (yfinance._http)
            self._tickers.pop(symbol.upper(), None)  # its info is marked fetched: the next poll asks again
            doc = t._data.get_raw_json("https://query1.finance.yahoo.com/v7/finance/quote",
                                       params={"symbols": symbol.upper(), "formatted": "false"})
            result = ((doc or {}).get("quoteResponse") or {}).get("result") or []
            if not result:
                raise
            return dict(result[0])

    async def quote(self, symbol: str) -> list[MarketDataPoint]:
        """Ticker.info (yfinance's quoteSummary + v7 quote) -> ticks. Ticker.info takes no timeout (yfinance asks
        with its own 30 s per request): each attempt is bounded by request_timeout_seconds here instead."""
        info = await self._call("quote", symbol, lambda: self._info_blocking(symbol),
                                timeout=self.settings.request_timeout_seconds)
        try:
            return parse_quote(info, symbol)
        except YahooUnexpected as exc:
            self._unexpected("quote", str(exc))
            raise

    async def chart(self, symbol: str, interval: str, **kwargs: Any) -> tuple[list[MarketDataPoint], dict[str, Any]]:
        """Bars and the chart meta for one history request."""
        df, meta = await self._call("chart", symbol,
                                    lambda: self._history_blocking(symbol, interval=interval, **kwargs))
        bars = frame_to_bars(df, symbol, interval, calendar_name=exchange_calendar(symbol, meta),
                             currency=meta.get("currency"))
        if not bars:
            logger.info("yahoo: %s: no %s bars in this range", symbol.upper(), interval)
        return bars, meta

    async def latest(self, session: aiohttp.ClientSession | None, symbol: str) -> list[MarketDataPoint]:
        """The tick if it moved since the last poll, plus bars from the last one sent (it may have grown)."""
        s = self.settings
        bars: list[MarketDataPoint] = []
        meta: dict[str, Any] = {}
        if s.bars or s.tick_from == "chart":
            bars, meta = await self.chart(symbol, s.live_interval, period=s.live_range, actions=False,
                                          prepost=s.prepost)
        if s.tick_from == "quote":
            ticks = await self.quote(symbol)
        else:
            tick = tick_from_meta(meta, symbol)
            if tick is None and bars:
                session = bars[-1].metadata.get("session") or session_at(bars[-1].timestamp,
                                                                        exchange_calendar(symbol, meta))
                tick = MarketDataPoint(symbol=symbol.upper(), timestamp=bars[-1].timestamp, source=SOURCE,
                                       data_type=DataType.TICK, price=bars[-1].close, item_id="quote",
                                       metadata={"session": session} if session else {})
            ticks = [tick] if tick is not None else []
        out: list[MarketDataPoint] = []
        for tick in ticks:
            key = (symbol, str(tick.metadata.get("session")))
            if self._last_tick.get(key) != tick.timestamp:
                self._last_tick[key] = tick.timestamp
                out.append(tick)
        if s.bars:
            last = self._last_bar.get(symbol)
            bars = [b for b in bars if last is None or b.timestamp >= last]
            if bars:
                self._last_bar[symbol] = bars[-1].timestamp
            out.extend(bars)
        return out

    async def history(self, session: aiohttp.ClientSession | None, symbol: str, start: date | datetime,
                      end: date | datetime, interval: Interval = "1d") -> list[MarketDataPoint]:
        """Bars in [start, end) (a date `end` is inclusive), in as many requests as Yahoo's span limits need.
        `session` is unused (yfinance owns its HTTP) and kept for the backfill contract."""
        begin, stop = _as_utc(start), _as_utc(end, end=True)
        span = _MAX_SPAN.get(interval, stop - begin + timedelta(days=1))
        by_time: dict[datetime, MarketDataPoint] = {}
        cursor = begin
        while cursor < stop:
            upto = min(stop, cursor + span)
            bars, _ = await self.chart(symbol, interval, start=cursor, end=upto, actions=True,
                                       prepost=self.settings.prepost)
            for bar in bars:
                if begin <= bar.timestamp < stop:
                    by_time[bar.timestamp] = bar
            cursor = upto
        return [by_time[t] for t in sorted(by_time)]

    async def poll_once(self, session: aiohttp.ClientSession | None = None) -> list[MarketDataPoint]:
        """Every symbol at once (the pool bounds the threads); a failing symbol is logged, the others go on."""
        symbols = list(dict.fromkeys(x.upper() for x in self.settings.symbols))
        results = await asyncio.gather(*(self.latest(session, sym) for sym in symbols), return_exceptions=True)
        out: list[MarketDataPoint] = []
        for sym, res in zip(symbols, results, strict=True):
            if isinstance(res, BaseException):
                if not isinstance(res, Exception):
                    raise res
                # Yahoo's explained refusal of a symbol (_classify: "Yahoo refused SYM: no data found, symbol may
                # be delisted") is an answer, the provider works (PollingSource.call_succeeded): counted per
                # symbol and warned once, not at every round; anything else, a missing timezone included
                # (yfinance reports a failed request that way too), a failure, warned each time.
                if isinstance(res, SourceError) and str(res).startswith(f"Yahoo refused {sym}:"):
                    self.unknown[sym] += 1
                    if f"unknown|{sym}" not in self._warned:
                        self._warned.add(f"unknown|{sym}")
                        logger.warning("yahoo: %s failed: %s (counted in unknown[%r], not warned again)", sym,
                                       redact(str(res)), sym)
                    self.call_succeeded()
                else:
                    cause = redact(f"{type(res).__name__}: {res}")
                    self.failures.failed(sym, cause, "yahoo: %s failed: %s", sym, cause)
                    self.call_failed(res)
            else:
                self.call_succeeded()
                self.failures.succeeded(sym)  # a failure after this one is news again
                out.extend(res)
        return out

    # -------------------------------------------------------------------------------- streaming

    async def fetch(self, session: aiohttp.ClientSession | None = None) -> AsyncIterator[list[Record]]:
        if not self.settings.stream:
            async for batch in super().fetch(session):
                yield batch
            return
        async for batch in self.stream():
            yield batch

    async def stream(self) -> AsyncIterator[list[Record]]:
        """yfinance.AsyncWebSocket -> batches of ticks; reconnects with capped backoff when the feed drops.

        yfinance connects, subscribes (and re-subscribes every 15 s) and decodes; the messages are read
        here rather than through its listen(), which keeps reading a closed socket instead of reopening it."""
        s = self.settings
        symbols = list(dict.fromkeys(x.upper() for x in s.symbols))
        # Reconnecting is tenacity's loop, with Finnhub's wait: each connection is an attempt that ends in
        # `_Reopen`; a delivered batch resets the count, so the next wait is the shortest again.
        retrying = AsyncRetrying(stop=stop_never, retry=retry_if_exception_type(_Reopen), sleep=self.sleep,
                                 wait=JitteredExponential(s.reconnect_base_seconds, s.reconnect_max_seconds))
        async for attempt in retrying:
            with attempt:
                queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
                ws = self.websocket_factory(s.ws_url)
                reader: asyncio.Task[None] | None = None
                cause = "the stream closed"
                try:
                    await ws.subscribe(symbols)
                    self.connections.opened()
                    reader = asyncio.create_task(self._read(ws, queue))
                    while not (reader.done() and queue.empty()):
                        batch = await self._drain(queue, reader)
                        if batch:
                            attempt.retry_state.attempt_number = 1
                            self.connections.delivered()
                            yield batch
                    if reader.exception() is not None:
                        cause = f"stream dropped: {redact(repr(reader.exception()))}"
                        logger.warning("yahoo: %s", cause)
                    else:
                        cause = "stream closed by the server"
                        logger.warning("yahoo: %s, reconnecting", cause)
                except (OSError, TimeoutError, ValueError) as exc:
                    cause = redact(f"{type(exc).__name__}: {exc}")
                    logger.warning("yahoo: stream failed: %s", cause)
                finally:
                    if reader is not None and not reader.done():
                        reader.cancel()
                        await asyncio.gather(reader, return_exceptions=True)
                    try:
                        await ws.close()
                    except Exception as exc:  # a broken socket may fail to close; reconnect anyway
                        logger.debug("yahoo: closing the stream: %s", exc)
                failing = self.connections.ended(cause)  # five failed in a row: /health shows it failing
                if failing is not None:
                    raise failing
                raise _Reopen

    @staticmethod
    async def _read(ws: Any, queue: asyncio.Queue[dict[str, Any]]) -> None:
        """The open connection's frames, decoded by yfinance, onto the queue; returns when it closes."""
        async for raw in ws._ws:
            try:
                doc = json.loads(raw)
                queue.put_nowait(ws._decode_message(doc.get("message", "")))
            except Exception as exc:  # protobuf's DecodeError is no ValueError: one bad frame, not the connection
                queue.put_nowait({"error": f"{type(exc).__name__}: {exc}"})

    async def _drain(self, queue: asyncio.Queue[dict[str, Any]], reader: asyncio.Task[None]) -> list[Record]:
        """Up to ws_batch_size ticks, waiting at most ws_flush_seconds."""
        s = self.settings
        out: list[Record] = []
        deadline = time.monotonic() + s.ws_flush_seconds
        while len(out) < s.ws_batch_size:
            timeout = deadline - time.monotonic()
            if timeout <= 0 or (queue.empty() and reader.done()):
                break
            try:
                msg = await asyncio.wait_for(queue.get(), timeout)
            except TimeoutError:
                break
            try:
                out.append(parse_stream_message(msg))
            except (YahooUnexpected, ValueError, TypeError) as exc:
                self._unexpected("stream", str(exc))
        return out


def encode_pricing(fields: Mapping[str, Any]) -> str:
    """A PricingData message as the stream sends it (base64 protobuf): for local feeds and tests."""
    from yfinance.pricing_pb2 import PricingData

    return base64.b64encode(PricingData(**fields).SerializeToString()).decode()
