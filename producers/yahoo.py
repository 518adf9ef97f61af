"""Yahoo Finance: live polling (latest price as a tick, plus the day's new bars) and historical bars,
written to raw.yahoo with source "yahoo".

- Talks to the chart endpoint yfinance itself uses, GET {base_url}/v8/finance/chart/{symbol}, directly
  with aiohttp: yfinance is blocking and owns its own HTTP session, this keeps the event loop free and
  lets tests point the source at a local server. Yahoo needs no key, but it answers 429 to clients
  without a browser-like User-Agent, so one is sent.
- Bars: chart.result[0].timestamp + indicators.quote[0] open/high/low/close/volume. Yahoo pads with
  null rows (halts, the forming minute, holidays): those are skipped. chart.error is a SourceError.
- Adjustment: Yahoo's OHLC are split-adjusted, not dividend-adjusted; that is what is stored.
  indicators.adjclose (split and dividend adjusted) goes to metadata["adj_close"] and the split and
  dividend events of a bar's day to metadata["split"] / metadata["dividend"], so the two are never
  mixed in one series.
- Timestamps: daily and longer bars come stamped with the session open, and the forming day with the
  last trade time; they are stored at UTC midnight of the exchange-local trading date (as yfinance
  does), so a re-poll maps onto the same natural key. Intraday bars keep Yahoo's epoch; the forming
  bar, stamped with the last trade time, is snapped back onto the bar grid.
- item_id is the bar interval ("1m", "1d", ...), "quote" for the tick.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import quote as urlquote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import aiohttp

from producers.base import PollingSource
from producers.http import RateLimiter, get_json, redact
from streams.config import Interval, YahooSettings
from streams.errors import SourceError
from streams.models import DataType, MarketDataPoint

logger = logging.getLogger(__name__)

SOURCE = "yahoo"

_INTRADAY_SECONDS: dict[str, int] = {
    "1m": 60, "2m": 120, "5m": 300, "15m": 900, "30m": 1800, "60m": 3600, "90m": 5400, "1h": 3600,
}
# Yahoo refuses longer spans per request for intraday data (1m: 7 days; < 1h: 60 days; hourly: 730 days).
_MAX_SPAN: dict[str, timedelta] = {
    "1m": timedelta(days=7), "2m": timedelta(days=60), "5m": timedelta(days=60), "15m": timedelta(days=60),
    "30m": timedelta(days=60), "60m": timedelta(days=730), "90m": timedelta(days=60), "1h": timedelta(days=730),
}
HEADERS: dict[str, str] = {
    "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36",
    "Accept": "application/json",
}


# ---------------------------------------------------------------------------------------------- parsing


def _num(values: list[Any] | None, i: int) -> float | None:
    if not values or i >= len(values) or values[i] is None:
        return None
    return float(values[i])


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


def chart_result(payload: Any, symbol: str) -> dict[str, Any] | None:
    """chart.result[0], None for an empty result; chart.error raises."""
    if not isinstance(payload, dict) or not isinstance(payload.get("chart"), dict):
        raise SourceError(f"unexpected Yahoo chart payload for {symbol}: {type(payload).__name__}")
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
        raise SourceError(f"unexpected Yahoo chart result for {symbol}")
    return result


def _events(result: Mapping[str, Any], kind: str) -> dict[int, Mapping[str, Any]]:
    raw = (result.get("events") or {}).get(kind) or {}
    out: dict[int, Mapping[str, Any]] = {}
    for value in raw.values():
        if isinstance(value, dict) and value.get("date") is not None:
            out[int(value["date"])] = value
    return out


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
    by_time: dict[datetime, MarketDataPoint] = {}
    skipped = 0
    for i, epoch in enumerate(stamps):
        o, h, lo, c = (_num(quote.get(k), i) for k in ("open", "high", "low", "close"))
        if epoch is None or o is None or h is None or lo is None or c is None:
            skipped += 1
            continue
        epoch = int(epoch)
        meta_row: dict[str, Any] = {}
        adj_close = _num(adj, i)
        if adj_close is not None:
            meta_row["adj_close"] = adj_close
        if step is None:
            ts = _trading_date(epoch, meta)
            day = ts.date()
            for when, ev in dividends.items():
                if _trading_date(when, meta).date() == day and ev.get("amount") is not None:
                    meta_row["dividend"] = float(ev["amount"])
            for when, ev in splits.items():
                if _trading_date(when, meta).date() == day:
                    meta_row["split"] = str(ev.get("splitRatio") or f"{ev.get('numerator')}:{ev.get('denominator')}")
        else:
            # Only the forming bar is off the grid (stamped with the last trade): snap it to its bar start.
            anchor = int(stamps[0]) if stamps[0] is not None else epoch
            epoch -= (epoch - anchor) % step
            ts = datetime.fromtimestamp(epoch, UTC)
        by_time[ts] = MarketDataPoint(
            symbol=sym, timestamp=ts, source=source, data_type=DataType.BAR, open=o, high=h, low=lo, close=c,
            volume=_num(quote.get("volume"), i), interval=interval, item_id=interval, metadata=meta_row,
        )
    if skipped:
        logger.debug("yahoo: %s: skipped %d null rows", sym, skipped)
    return [by_time[t] for t in sorted(by_time)]


def parse_tick(payload: Any, symbol: str, *, source: str = SOURCE) -> list[MarketDataPoint]:
    """meta.regularMarketPrice at meta.regularMarketTime as a tick; else the latest bar's close."""
    result = chart_result(payload, symbol)
    if result is None:
        return []
    meta = result.get("meta") or {}
    price, when = meta.get("regularMarketPrice"), meta.get("regularMarketTime")
    if price is None or when is None:
        bars = parse_chart(payload, symbol, source=source)
        if not bars:
            return []
        price, ts = bars[-1].close, bars[-1].timestamp
    else:
        ts = datetime.fromtimestamp(int(when), UTC)
    extra = {k: meta[src] for k, src in (
        ("currency", "currency"), ("exchange", "exchangeName"), ("day_volume", "regularMarketVolume"),
        ("prev_close", "chartPreviousClose")) if meta.get(src) is not None}
    day_high, day_low = meta.get("regularMarketDayHigh"), meta.get("regularMarketDayLow")
    return [MarketDataPoint(
        symbol=symbol.upper(), timestamp=ts, source=source, data_type=DataType.TICK, price=float(price),
        high=None if day_high is None else float(day_high), low=None if day_low is None else float(day_low),
        item_id="quote", metadata=extra,
    )]


def _as_utc(value: date | datetime, *, end: bool = False) -> datetime:
    """A datetime (naive = UTC) as is; a date as UTC midnight, the day after for an inclusive end."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    d = value + timedelta(days=1) if end else value
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


# ---------------------------------------------------------------------------------------------- source


class YahooSource(PollingSource):
    """Polls every symbol's chart once per interval; `history` loads a date range for backfills."""

    name = SOURCE

    def __init__(self, settings: YahooSettings) -> None:
        self.settings = settings
        self.base_url = settings.base_url.rstrip("/")
        self.limiter = RateLimiter(settings.rate_limit_calls, settings.rate_limit_per_seconds)
        self._last_tick: dict[str, datetime] = {}
        self._last_bar: dict[str, datetime] = {}

    async def chart(self, session: aiohttp.ClientSession, symbol: str, params: Mapping[str, Any]) -> Any:
        s = self.settings
        url = f"{self.base_url}/v8/finance/chart/{urlquote(symbol, safe='')}"
        return await get_json(session, url, params=params, headers=HEADERS, limiter=self.limiter,
                               attempts=s.retry_attempts, base_delay=s.retry_base_delay,
                               timeout=s.request_timeout_seconds)

    async def latest(self, session: aiohttp.ClientSession, symbol: str) -> list[MarketDataPoint]:
        """The tick if it moved since the last poll, plus bars from the last one sent (it may have grown)."""
        s = self.settings
        doc = await self.chart(session, symbol, {"range": s.live_range, "interval": s.live_interval,
                                                 "includePrePost": "false"})
        out: list[MarketDataPoint] = []
        for tick in parse_tick(doc, symbol):
            if self._last_tick.get(symbol) != tick.timestamp:
                self._last_tick[symbol] = tick.timestamp
                out.append(tick)
        if s.bars:
            last = self._last_bar.get(symbol)
            bars = [b for b in parse_chart(doc, symbol, s.live_interval) if last is None or b.timestamp >= last]
            if bars:
                self._last_bar[symbol] = bars[-1].timestamp
            out.extend(bars)
        return out

    async def history(self, session: aiohttp.ClientSession, symbol: str, start: date | datetime,
                      end: date | datetime, interval: Interval = "1d") -> list[MarketDataPoint]:
        """Bars in [start, end) (a date `end` is inclusive), in as many requests as Yahoo's span limits need."""
        begin, stop = _as_utc(start), _as_utc(end, end=True)
        span = _MAX_SPAN.get(interval, stop - begin + timedelta(days=1))
        by_time: dict[datetime, MarketDataPoint] = {}
        cursor = begin
        while cursor < stop:
            upto = min(stop, cursor + span)
            params = {"period1": int(cursor.timestamp()), "period2": int(upto.timestamp()), "interval": interval,
                      "events": "div|split", "includePrePost": "false"}
            for bar in parse_chart(await self.chart(session, symbol, params), symbol, interval):
                if begin <= bar.timestamp < stop:
                    by_time[bar.timestamp] = bar
            cursor = upto
        return [by_time[t] for t in sorted(by_time)]

    async def poll_once(self, session: aiohttp.ClientSession) -> list[MarketDataPoint]:
        out: list[MarketDataPoint] = []
        for symbol in (x.upper() for x in self.settings.symbols):
            try:
                out.extend(await self.latest(session, symbol))
            except (SourceError, ValueError, TypeError, KeyError, IndexError) as exc:
                logger.warning("yahoo: %s failed: %s", symbol, redact(f"{type(exc).__name__}: {exc}"))
        return out

