"""Finnhub: quotes, candles, company news and news sentiment over REST (FinnhubSource), and trades over
the websocket (FinnhubTradeStream). Both write raw.finnhub with source "finnhub". The `news` source
(NewsSentimentSource: Finnhub's company news scored with the lexicon, and its per-symbol news sentiment) is
Finnhub too and lives here, but writes raw.news with source "news".

- REST: GET /api/v1/quote, /api/v1/stock/candle, /api/v1/forex/candle, /api/v1/crypto/candle,
  /api/v1/company-news, /api/v1/news-sentiment. The token goes in the X-Finnhub-Token header by default
  (so it is in no URL at all), or as the `token` query parameter; either way it is redacted from every log
  line and exception.
- Forex and crypto candles: settings.forex_symbols ("OANDA:EUR_USD") and settings.crypto_symbols
  ("BINANCE:BTCUSDT"), stored under that symbol. Forex "volume" is a tick count (quotes, not traded
  units): it goes to metadata["tick_count"] and volume stays None. Crypto volume is the exchange's traded
  base-asset volume and is kept as volume.
- Timestamps: REST quote, candles and news are epoch seconds, websocket trades epoch milliseconds.
  Intraday candles keep their start instant. Daily, weekly and monthly candles are stored at UTC midnight
  of their trading date (`trading_date`), like Yahoo's and Alpha Vantage's daily bars, so the same day
  from two sources lines up; the provider's own start instant stays in metadata["period_start"].
- Unknown symbols ({"s": "no_data"} on candles, an all-zero quote) are logged once per symbol and counted
  in `FinnhubSource.unknown[symbol]`; payloads of a shape nothing here reads raise FinnhubUnexpected,
  logged once per endpoint and cause and counted in `FinnhubSource.unexpected[endpoint]`.
- Bad epochs (NaN, beyond datetime's years 1..9999, not a number: producers/base.py BadEpoch) skip only
  their item: a quote is then FinnhubUnexpected, a candle row, a news article or one trade of a websocket
  message is left out while the rest of the payload is kept. Each skip is counted in `unexpected[endpoint]`
  (websocket: `FinnhubTradeStream.unexpected["trade"]`) and warned once per endpoint and cause; never does
  one bad epoch end a poll round or a websocket connection.
- Candles are Finnhub's unadjusted prices (the endpoint has no adjustment switch for stocks): raw
  prices are what this source stores.
- Candles and news-sentiment are premium on the free tier: Finnhub answers 403 {"error": "You don't have
  access to this resource."}; that is a non-retriable FinnhubAccessDenied, and the source stops asking
  for that endpoint (or, when other symbols are answered, that symbol) for `denied_retry_seconds`.
- Free tier: 60 calls/minute, the default RateLimiter.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from typing import Any, Literal
from zoneinfo import ZoneInfo

import aiohttp
import orjson
from pydantic import SecretStr
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_never
from yarl import URL

from producers.backoff import JitteredExponential
from producers.base import (
    BadEpoch,
    ConnectionRun,
    PollingSource,
    Record,
    RepeatedFailures,
    SeenIds,
    Source,
    failure_cause,
    from_epoch,
)
from producers.http import DEFAULT_MAX_BYTES, DEFAULT_MAX_RETRY_AFTER, RateLimiter, get_json, http_options, redact
from producers.sentiment import score_missing
from streams.config import Endpoint, FinnhubSettings, NewsSettings
from streams.errors import ConfigError, SourceError
from streams.models import DataType, MarketDataPoint

logger = logging.getLogger(__name__)

SOURCE = "finnhub"

# Finnhub candle resolutions -> the interval label stored on bars.
RESOLUTIONS: dict[str, str] = {
    "1": "1m", "5": "5m", "15": "15m", "30": "30m", "60": "1h", "D": "1d", "W": "1wk", "M": "1mo",
}


CandleKind = Literal["stock", "forex", "crypto"]
CANDLE_PATHS: dict[str, str] = {
    "stock": "/api/v1/stock/candle", "forex": "/api/v1/forex/candle", "crypto": "/api/v1/crypto/candle",
}
DAILY_RESOLUTIONS = frozenset({"D", "W", "M"})
NEW_YORK = ZoneInfo("America/New_York")
FX_ROLL = dtime(17, 0)  # the FX trading day rolls at 17:00 New York


class FinnhubUnexpected(SourceError):
    """A payload of a shape nothing here can read. `cause` names the problem without the symbol, so the
    source warns once per endpoint and cause, and counts every occurrence."""

    def __init__(self, cause: str, detail: str = "") -> None:
        super().__init__(f"unexpected Finnhub payload: {cause}{f' ({detail})' if detail else ''}", retriable=False)
        self.cause = cause


class FinnhubAccessDenied(SourceError):
    """403: the endpoint is not in the key's plan. Retrying will not help."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retriable=False)


# ---------------------------------------------------------------------------------------------- parsing


# Causes of a skipped item (the keys of a parser's `skipped` counter): an item with a bad epoch is left out
# of the payload, the rest is kept.
QUOTE_EPOCH = "quote epoch out of range"
CANDLE_EPOCH = "candle epoch out of range"
NEWS_EPOCH = "news epoch out of range"
TRADE_EPOCH = "trade epoch out of range"


def _skip(skipped: Counter[str] | None, cause: str, exc: BaseException) -> None:
    """Count one item left out. Without a counter (a parser called on its own) the skip is logged instead."""
    if skipped is None:
        logger.warning("finnhub: skipped one item (%s): %s", cause, exc)
    else:
        skipped[cause] += 1


def _num(value: Any) -> float | None:
    return None if value is None else float(value)


def _expect_dict(doc: Any, what: str) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise FinnhubUnexpected(f"{what} payload is a {type(doc).__name__}, not an object")
    if doc.get("error"):
        raise SourceError(f"Finnhub {what} error: {str(doc['error'])[:300]}")
    return doc


def trading_date(seconds: float) -> date:
    """The trading date of a daily (weekly, monthly) Finnhub candle that starts at epoch `seconds`.

    Rule: take the start in New York time; a start at or after 17:00 New York belongs to the next calendar
    day (the FX convention: the trading day for date D runs 17:00 New York on D-1 to 17:00 on D), else to
    its own New York date. So:
    - forex (OANDA): 21:00Z in New York summer time, 22:00Z in winter time -> 17:00 New York -> next day;
    - stocks: 04:00Z (summer) / 05:00Z (winter) = midnight New York -> that day;
    - crypto (BINANCE): 00:00Z = 19:00/20:00 New York the evening before -> the UTC date, as exchanges count.
    A start at UTC midnight (some feeds) also maps onto its UTC date. DST is New York's, from the tz database.
    """
    try:
        local = from_epoch(seconds).astimezone(NEW_YORK)
        day = local.date()
        return day + timedelta(days=1) if local.time() >= FX_ROLL else day
    except OverflowError as exc:  # within a day of datetime's limits: no New York date, or no next day
        raise BadEpoch(f"epoch {seconds!r} has no trading date: {exc}") from None


def parse_quote(doc: Any, symbol: str, *, source: str = SOURCE) -> list[MarketDataPoint]:
    """/quote -> one tick (price = c at t). An unknown symbol comes back as all zeros: [] (the source counts
    it); a body without c and t is FinnhubUnexpected."""
    d = _expect_dict(doc, "quote")
    if "c" not in d or "t" not in d:
        raise FinnhubUnexpected("quote without c and t", f"keys {sorted(d)[:8]}")
    try:
        price, stamp = float(d["c"] or 0), d["t"] or 0
        meta = {k: float(d[src]) for k, src in (("prev_close", "pc"), ("change", "d"), ("change_percent", "dp"))
                if d.get(src) is not None}
        o, h, lo = _num(d.get("o")), _num(d.get("h")), _num(d.get("l"))
    except (TypeError, ValueError):
        raise FinnhubUnexpected("quote with non-numeric fields") from None
    if not stamp or not price:
        return []
    try:
        ts = from_epoch(stamp)
    except BadEpoch as exc:
        raise FinnhubUnexpected(QUOTE_EPOCH, str(exc)) from None
    return [MarketDataPoint(
        symbol=symbol.upper(), timestamp=ts, source=source, data_type=DataType.TICK,
        price=price, open=o or None, high=h or None, low=lo or None, item_id="quote", metadata=meta,
    )]


def parse_candles(doc: Any, symbol: str, resolution: str = "D", *, kind: CandleKind = "stock",
                  source: str = SOURCE, skipped: Counter[str] | None = None) -> list[MarketDataPoint]:
    """/{stock,forex,crypto}/candle -> bars; {"s": "no_data"} is [] (the source counts it as an unknown symbol).

    Daily and longer candles sit at UTC midnight of `trading_date`; forex volume is a tick count, kept as
    metadata["tick_count"] with volume None. A row with a bad epoch is left out (counted in `skipped`)."""
    d = _expect_dict(doc, "candle")
    status = d.get("s")
    if status == "no_data":
        return []
    if status != "ok":
        raise FinnhubUnexpected(f"candle status {str(status)[:40]!r}")
    cols: dict[str, list[Any]] = {}
    for k in ("t", "o", "h", "l", "c", "v"):
        v = d.get(k)
        if v is None and k == "v":
            v = []
        if not isinstance(v, list):
            raise FinnhubUnexpected(f"candle field {k!r} is not an array")
        cols[k] = v
    n = len(cols["t"])
    if any(len(v) != n for k, v in cols.items() if k != "v") or (cols["v"] and len(cols["v"]) != n):
        raise FinnhubUnexpected("candle arrays differ in length")
    interval = RESOLUTIONS.get(resolution, resolution)
    daily = resolution in DAILY_RESOLUTIONS
    out = []
    try:
        for i in range(n):
            meta: dict[str, Any] = {}
            try:
                start = from_epoch(cols["t"][i])
                if daily:
                    day = trading_date(cols["t"][i])
                    ts = datetime(day.year, day.month, day.day, tzinfo=UTC)
                    meta["period_start"] = start.isoformat()
                else:
                    ts = start
            except BadEpoch as exc:
                _skip(skipped, CANDLE_EPOCH, exc)
                continue
            volume = _num(cols["v"][i]) if cols["v"] else None
            if kind == "forex":
                if volume is not None:
                    meta["tick_count"] = int(volume)
                volume = None
            out.append(MarketDataPoint(
                symbol=symbol.upper(), timestamp=ts, source=source, data_type=DataType.BAR,
                open=float(cols["o"][i]), high=float(cols["h"][i]), low=float(cols["l"][i]),
                close=float(cols["c"][i]), volume=volume, interval=interval, item_id=interval, metadata=meta,
            ))
    except (TypeError, ValueError):
        raise FinnhubUnexpected("candle with non-numeric values") from None
    return out


def parse_company_news(doc: Any, symbol: str, *, source: str = SOURCE,
                       skipped: Counter[str] | None = None) -> list[MarketDataPoint]:
    """/company-news -> news items (Finnhub gives no per-article score; sentiment stays empty here). An article
    with a bad epoch is left out (counted in `skipped`)."""
    if not isinstance(doc, list):
        raise FinnhubUnexpected(f"company-news payload is a {type(doc).__name__}, not an array")
    out = []
    for a in doc:
        if not isinstance(a, dict) or not a.get("headline") or not a.get("datetime"):
            continue
        try:
            ts = from_epoch(a["datetime"])
        except BadEpoch as exc:
            _skip(skipped, NEWS_EPOCH, exc)
            continue
        related = [t.strip().upper() for t in str(a.get("related") or "").split(",") if t.strip()]
        meta = {"tickers": related or [symbol.upper()]}
        for key, name in (("source", "publisher"), ("category", "category"), ("image", "image")):
            if a.get(key):
                meta[name] = a[key]
        out.append(MarketDataPoint(
            symbol=symbol.upper(), timestamp=ts, source=source, data_type=DataType.NEWS,
            headline=a["headline"], text=a.get("summary") or None, url=a.get("url") or None,
            item_id=str(a.get("id") or a.get("url") or a["headline"])[:256], metadata=meta,
        ))
    return out


def sentiment_from_news_score(score: float) -> float:
    """Finnhub's companyNewsScore is in [0, 1] with 0.5 neutral; map it linearly to [-1, 1]: 2*s - 1."""
    return max(-1.0, min(1.0, 2.0 * float(score) - 1.0))


_NEWS_SENTIMENT_FIELDS = frozenset({"companyNewsScore", "buzz", "sentiment", "symbol", "sectorAverageBullishPercent",
                                    "sectorAverageNewsScore"})


def parse_news_sentiment(doc: Any, symbol: str, now: datetime, *, source: str = SOURCE) -> list[MarketDataPoint]:
    """/news-sentiment -> one news item per symbol, stamped with the poll time (Finnhub gives none)."""
    d = _expect_dict(doc, "news-sentiment")
    if d and not d.keys() & _NEWS_SENTIMENT_FIELDS:  # {} is Finnhub's answer for a symbol it has nothing on
        raise FinnhubUnexpected("news-sentiment payload has none of its fields", f"keys: {sorted(d)[:6]}")
    score = d.get("companyNewsScore")
    if score is None:  # a symbol Finnhub has no score for: its fields, all empty
        return []
    sym = str(d.get("symbol") or symbol).upper()
    buzz = d.get("buzz") or {}
    senti = d.get("sentiment") or {}
    meta: dict[str, Any] = {
        "tickers": [sym],
        "company_news_score": score,
        "buzz": buzz.get("buzz"),
        "articles_in_last_week": buzz.get("articlesInLastWeek"),
        "weekly_average": buzz.get("weeklyAverage"),
        "bullish_percent": senti.get("bullishPercent"),
        "bearish_percent": senti.get("bearishPercent"),
        "sector_average_bullish_percent": d.get("sectorAverageBullishPercent"),
        "sector_average_news_score": d.get("sectorAverageNewsScore"),
        "sentiment_method": "finnhub_company_news_score",
    }
    return [MarketDataPoint(
        symbol=sym, timestamp=now, source=source, data_type=DataType.NEWS,
        headline=f"Finnhub news sentiment for {sym}", sentiment=sentiment_from_news_score(score),
        item_id=f"news-sentiment:{sym}", metadata={k: v for k, v in meta.items() if v is not None},
    )]


def parse_trades(doc: Any, *, source: str = SOURCE, skipped: Counter[str] | None = None,
                 seen: Counter[tuple[Any, ...]] | None = None) -> list[MarketDataPoint]:
    """A websocket {"type": "trade", "data": [...]} message -> trade points.

    item_id = "s:t:p:v:n", n counting identical (s, t, p, v) trades, so two equal prints in one millisecond
    stay two rows (the natural key has no other field to tell them apart). `seen` carries that count from
    message to message (FinnhubTradeStream passes its own): Finnhub may send the prints of one millisecond in
    two messages, and a count starting again at 0 would give the second the first one's key, a row lost in
    the sink's ON CONFLICT DO NOTHING. Without it the count is the message's own. A trade with a bad epoch is
    left out (counted in `skipped`); the others of the message are kept.
    """
    d = _expect_dict(doc, "trade")
    out = []
    seen = Counter() if seen is None else seen
    for trade in d.get("data") or []:
        if not isinstance(trade, dict) or not trade.get("s") or trade.get("p") is None or trade.get("t") is None:
            continue
        try:
            ts = from_epoch(trade["t"], millis=True)
        except BadEpoch as exc:
            _skip(skipped, TRADE_EPOCH, exc)
            continue
        s, t, p, v = str(trade["s"]), int(trade["t"]), trade["p"], trade.get("v")
        n = seen[(s, t, p, v)]
        seen[(s, t, p, v)] += 1
        meta = {"conditions": trade["c"]} if trade.get("c") else {}
        out.append(MarketDataPoint(
            symbol=s.upper(), timestamp=ts, source=source,
            data_type=DataType.TRADE, price=float(p), volume=_num(v), item_id=f"{s}:{t}:{p}:{v}:{n}",
            metadata=meta,
        ))
    return out


# ---------------------------------------------------------------------------------------------- REST


class FinnhubClient:
    """Finnhub REST calls: one rate limiter, the token attached and redacted, payloads parsed."""

    def __init__(self, api_key: SecretStr, *, base_url: str = "https://finnhub.io", calls: float = 60.0,
                 per_seconds: float = 60.0, timeout: float = 20.0, attempts: int = 5, base_delay: float = 0.5,
                 token_in: Literal["header", "query"] = "header", max_bytes: int = DEFAULT_MAX_BYTES,
                 max_retry_after: float = DEFAULT_MAX_RETRY_AFTER, min_interval: float = 0.0) -> None:
        self.api_key = api_key
        self.base_url = base_url.rstrip("/")
        self.limiter = RateLimiter(calls, per_seconds, min_interval)
        self.timeout = timeout
        self.attempts = attempts
        self.base_delay = base_delay
        self.token_in = token_in
        self.max_bytes = max_bytes
        self.max_retry_after = max_retry_after

    def redact(self, text: str) -> str:
        return redact(text, [self.api_key])

    @staticmethod
    def is_access_denied(exc: BaseException) -> bool:
        return isinstance(exc, FinnhubAccessDenied)

    async def get(self, session: aiohttp.ClientSession, path: str, params: Mapping[str, Any]) -> Any:
        params = dict(params)
        headers: dict[str, str] = {}
        if self.token_in == "query":
            params["token"] = self.api_key.get_secret_value()
        else:
            headers["X-Finnhub-Token"] = self.api_key.get_secret_value()
        try:
            doc = await get_json(session, f"{self.base_url}{path}", params=params, headers=headers,
                                 secrets=[self.api_key], limiter=self.limiter, attempts=self.attempts,
                                 base_delay=self.base_delay, timeout=self.timeout, max_bytes=self.max_bytes,
                                 max_retry_after=self.max_retry_after)
        except SourceError as exc:
            message = self.redact(str(exc))
            if not exc.retriable and message.startswith("HTTP 403"):
                raise FinnhubAccessDenied(message) from None
            raise SourceError(message, retriable=exc.retriable) from None
        if isinstance(doc, dict) and doc.get("error"):
            raise SourceError(f"Finnhub {path}: {self.redact(str(doc['error']))[:300]}")
        return doc

    async def quote(self, session: aiohttp.ClientSession, symbol: str, *,
                    source: str = SOURCE) -> list[MarketDataPoint]:
        return parse_quote(await self.get(session, "/api/v1/quote", {"symbol": symbol}), symbol, source=source)

    async def candles(self, session: aiohttp.ClientSession, symbol: str, *, resolution: str, start: datetime,
                      end: datetime, kind: CandleKind = "stock", source: str = SOURCE,
                      skipped: Counter[str] | None = None) -> list[MarketDataPoint]:
        """Candles of a stock, forex ("OANDA:EUR_USD") or crypto ("BINANCE:BTCUSDT") symbol."""
        params = {"symbol": symbol, "resolution": resolution,
                  "from": int(start.timestamp()), "to": int(end.timestamp())}
        doc = await self.get(session, CANDLE_PATHS[kind], params)
        return parse_candles(doc, symbol, resolution, kind=kind, source=source, skipped=skipped)

    async def company_news(self, session: aiohttp.ClientSession, symbol: str, *, now: datetime, days: int,
                           source: str = SOURCE, skipped: Counter[str] | None = None) -> list[MarketDataPoint]:
        params = {"symbol": symbol, "from": (now - timedelta(days=days)).date().isoformat(),
                  "to": now.date().isoformat()}
        return parse_company_news(await self.get(session, "/api/v1/company-news", params), symbol, source=source,
                                  skipped=skipped)

    async def news_sentiment(self, session: aiohttp.ClientSession, symbol: str, *, now: datetime,
                             source: str = SOURCE) -> list[MarketDataPoint]:
        doc = await self.get(session, "/api/v1/news-sentiment", {"symbol": symbol})
        return parse_news_sentiment(doc, symbol, now, source=source)


def _require_key(api_key: SecretStr | None, env: Mapping[str, str] | None) -> SecretStr:
    key = api_key or FinnhubSettings.model_construct().api_key(env)
    if key is None:
        raise ConfigError(f"the finnhub source needs {' or '.join(FinnhubSettings.key_env)} in the environment")
    return key


class _Counted:
    """`unexpected[endpoint]` and the once-per-cause warnings shared by the REST sources and the websocket."""

    unexpected: Counter[str]
    _warned: set[str]

    def _init_counted(self) -> None:
        self.unexpected = Counter()  # per endpoint: payloads or items of a shape nothing could read
        self._warned = set()

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message, *args)

    def _count_skips(self, endpoint: str, symbol: str, skipped: Counter[str]) -> None:
        """Items a parser left out (a bad epoch...): counted in unexpected[endpoint], warned once per cause."""
        for cause, n in skipped.items():
            self.unexpected[endpoint] += n
            self._warn_once(f"{endpoint}|{cause}", "finnhub: skipped %d %s item(s) for %s: %s (counted in "
                            "unexpected[%r], not warned again for this cause)", n, endpoint, symbol, cause, endpoint)


class FinnhubSource(_Counted, PollingSource):
    """Polls the configured REST endpoints for every stock symbol, and candles for every forex and crypto
    symbol, once per interval. Unknown symbols and unexpected payloads are logged once and counted:
    `unknown[symbol]`, `unexpected[endpoint]` (endpoint: quote, candle, forex_candle, crypto_candle,
    company_news, news_sentiment)."""

    name = SOURCE

    def __init__(self, settings: FinnhubSettings, api_key: SecretStr | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.api_key = _require_key(api_key, env)
        self.client = FinnhubClient(
            self.api_key, base_url=settings.base_url, calls=settings.rate_limit_calls,
            per_seconds=settings.rate_limit_per_seconds, min_interval=settings.rate_limit_delay,
            token_in=settings.token_in, **http_options(settings),
        )
        self.endpoints: list[Endpoint] = list(dict.fromkeys(settings.endpoints))
        self.candle_kinds: list[CandleKind] = [k for k, syms in (("forex", settings.forex_symbols),
                                                                 ("crypto", settings.crypto_symbols)) if syms]
        self._last_quote: dict[str, datetime] = {}
        self._last_bar: dict[tuple[str, str], datetime] = {}
        self._news_window: dict[str, set[str]] = {}
        self.unknown: Counter[str] = Counter()  # per symbol: no_data candles, all-zero quotes
        # Per endpoint: the symbols Finnhub refused with 403 (a foreign listing on a US-only plan) and when (epoch
        # seconds), not asked again for denied_retry_seconds (a plan upgraded meanwhile is then seen without a
        # restart); the endpoints every symbol was refused for, and when; and the endpoints that answered at least
        # once (a 403 then is about the symbol, not the plan).
        self.denied: dict[str, dict[str, float]] = {}
        self.dropped: dict[str, float] = {}
        self._answered: set[str] = set()
        self.failures = RepeatedFailures(logger)  # per endpoint and symbol: warned per cause, not every round
        self._init_counted()

    def redact(self, text: str) -> str:
        return self.client.redact(text)

    def _unknown(self, endpoint: str, symbol: str) -> None:
        self.unknown[symbol] += 1
        self._warn_once(f"unknown|{symbol}", "finnhub: %s for %s came back empty (no_data or an all-zero quote): "
                        "unknown symbol? Counted in unknown[%r], not warned again", endpoint, symbol, symbol)

    async def _candles(self, session: aiohttp.ClientSession, kind: CandleKind, symbol: str,
                       now: datetime, skipped: Counter[str]) -> list[MarketDataPoint]:
        s = self.settings
        start = now - timedelta(days=s.candle_lookback_days)
        bars = await self.client.candles(session, symbol, resolution=s.candle_resolution, start=start, end=now,
                                         kind=kind, skipped=skipped)
        if not bars and not skipped:
            self._unknown(f"{kind} candles", symbol)
            return []
        # Older bars of the window were sent by an earlier poll; the latest may still be forming.
        last = self._last_bar.get((kind, symbol))
        bars = [b for b in bars if last is None or b.timestamp >= last]
        if bars:
            self._last_bar[(kind, symbol)] = max(b.timestamp for b in bars)
        return bars

    async def _poll(self, session: aiohttp.ClientSession, endpoint: Endpoint, symbol: str,
                    now: datetime, skipped: Counter[str]) -> list[MarketDataPoint]:
        s = self.settings
        if endpoint == "quote":
            points = await self.client.quote(session, symbol)
            if not points:
                self._unknown("quote", symbol)
                return []
            if self._last_quote.get(symbol) == points[0].timestamp:
                return []  # market closed: the same quote again
            self._last_quote[symbol] = points[0].timestamp
            return points
        if endpoint == "candle":
            return await self._candles(session, "stock", symbol, now, skipped)
        if endpoint == "company_news":
            points = await self.client.company_news(session, symbol, now=now, days=s.news_lookback_days,
                                                    skipped=skipped)
            previous = self._news_window.get(symbol, set())
            self._news_window[symbol] = {p.item_id for p in points}
            return [p for p in points if p.item_id not in previous]
        return await self.client.news_sentiment(session, symbol, now=now)

    def _denied(self, endpoint: str, symbol: str, exc: FinnhubAccessDenied, now: float) -> None:
        """A 403 is about one symbol (Finnhub's free plan has /quote for US listings only: "BMW.DE" is refused
        while "AAPL" is answered), not the endpoint: only that symbol is not asked again. The endpoint is
        dropped once every one of its symbols was refused and none ever answered (a premium endpoint). Either
        is asked again after denied_retry_seconds: a key's plan can change while the worker runs."""
        denied = self.denied.setdefault(endpoint, {})
        denied[symbol] = now
        wait = self.settings.denied_retry_seconds
        # only refusals still inside their cool-down: an older one is forgotten (`_refused`), though its symbol may
        # come after this one in the round and not have been asked again yet
        current = {s for s, at in denied.items() if now - at < wait}
        if endpoint in self._answered or not {s for e, s in self._calls() if e == endpoint} <= current:
            logger.warning("finnhub: %s for %s is not in this key's plan, not asking again for %gs: %s",
                           endpoint, symbol, wait, self.client.redact(str(exc)))
            return
        logger.warning("finnhub: %s is not in this key's plan (refused for every symbol), not asking again for "
                       "%gs: %s", endpoint, wait, self.client.redact(str(exc)))
        self.dropped[endpoint] = now

    def _refused(self, endpoint: str, symbol: str, now: float) -> bool:
        """Is this call still inside its cool-down after a 403? Once past it, the refusal is forgotten."""
        wait = self.settings.denied_retry_seconds
        if (at := self.dropped.get(endpoint)) is not None:
            if now - at < wait:
                return True
            del self.dropped[endpoint]
            self.denied.pop(endpoint, None)
            return False
        denied = self.denied.get(endpoint)
        if denied is None or (at := denied.get(symbol)) is None:
            return False
        if now - at < wait:
            return True
        del denied[symbol]
        return False

    def _calls(self) -> list[tuple[str, str]]:
        """(endpoint, symbol) for one round: stock endpoints first, then forex and crypto candles."""
        stocks = list(dict.fromkeys(x.upper() for x in self.settings.symbols))
        calls = [(str(e), sym) for e in self.endpoints for sym in stocks]
        for kind in self.candle_kinds:
            syms = self.settings.forex_symbols if kind == "forex" else self.settings.crypto_symbols
            calls += [(f"{kind}_candle", sym) for sym in dict.fromkeys(x.upper() for x in syms)]
        return calls

    async def poll_once(self, session: aiohttp.ClientSession, now: datetime | None = None) -> list[MarketDataPoint]:
        """One round over every endpoint and symbol; a failure is logged and skips only that call."""
        now = now or datetime.now(UTC).replace(microsecond=0)
        out: list[MarketDataPoint] = []
        clock = now.timestamp()
        for endpoint, symbol in self._calls():
            kind = endpoint.removesuffix("_candle")
            if self._refused(endpoint, symbol, clock):
                continue  # refused lately (not in the key's plan, or not for this symbol)
            skipped: Counter[str] = Counter()
            try:
                if kind in ("forex", "crypto"):
                    out.extend(await self._candles(session, kind, symbol, now, skipped))  # type: ignore[arg-type]
                else:
                    out.extend(await self._poll(session, endpoint, symbol, now, skipped))  # type: ignore[arg-type]
                self.call_succeeded()  # an unknown symbol (no_data, an all-zero quote) too: answered, counted
                self._answered.add(endpoint)
                self.failures.succeeded(f"{endpoint}|{symbol}")
            except FinnhubAccessDenied as exc:  # not in the plan: dropped, neither a failure nor a success
                self._denied(endpoint, symbol, exc, clock)
            except FinnhubUnexpected as exc:
                self.unexpected[endpoint] += 1
                self._warn_once(f"{endpoint}|{exc.cause}", "finnhub: unexpected %s payload for %s (counted in "
                                "unexpected[%r], not warned again for this cause): %s", endpoint, symbol, endpoint,
                                self.client.redact(str(exc)))
                self.call_failed(exc)
            except (SourceError, ValueError, TypeError, KeyError, OverflowError) as exc:
                cause = self.client.redact(f"{type(exc).__name__}: {exc}")
                self.failures.failed(f"{endpoint}|{symbol}", cause, "finnhub: %s for %s failed: %s", endpoint, symbol,
                                     cause)
                self.call_failed(exc)
            finally:
                self._count_skips(endpoint, symbol, skipped)
        return out


# ---------------------------------------------------------------------------------------------- websocket


class _Reconnect(Exception):
    """A websocket connection ended (or never opened): tenacity waits, then the stream connects again."""


class FinnhubTradeStream(_Counted, Source):
    """Trades from wss://ws.finnhub.io: subscribe per symbol, batch, reconnect and resubscribe forever.

    Batches are flushed at ws_batch_size trades or ws_flush_seconds after the first buffered trade,
    whichever comes first. Reconnecting is tenacity's loop: each connection is an attempt that ends in
    `_Reconnect`, waiting min(max, base * 2**attempt) scaled by a jitter in [0.5, 1); the attempt count
    resets once a connection delivers a message. `sleep` and `rng` are injectable (tests). Five failed
    connections in a row (a refused token: Finnhub answers the handshake with 401) end the fetch with a retriable
    SourceError (producers.base.ConnectionRun), so /health shows the stream `failing` and why.
    """

    name = SOURCE
    PRINTS_WINDOW_MS = 60_000  # trade time a print's count is kept: Finnhub sends a trade within seconds
    PRINTS_PRUNE_SECONDS = 10.0
    RESENT_WINDOW = 256  # trade messages remembered to tell a message sent again from new prints

    def __init__(self, settings: FinnhubSettings, api_key: SecretStr | None = None,
                 env: Mapping[str, str] | None = None, *, rng: random.Random | None = None,
                 sleep: Callable[[float], Awaitable[Any]] | None = None) -> None:
        self.settings = settings
        self.api_key = _require_key(api_key, env)
        self.symbols: list[str] = list(dict.fromkeys(s.upper() for s in settings.symbols))
        self.rng = rng or random.Random()
        self.sleep = sleep or asyncio.sleep
        self.wait = JitteredExponential(settings.reconnect_base_seconds, settings.reconnect_max_seconds, self.rng)
        self.connects = 0
        self.connections = ConnectionRun("finnhub ws")
        self._init_counted()  # unexpected["trade"]: trades left out of a message (a bad epoch)
        self.ignored: Counter[str] = Counter()  # per message type nothing here reads ("news", a new one, ...)
        self._prints: Counter[tuple[Any, ...]] = Counter()  # (s, t, p, v) -> prints so far (parse_trades)
        self._prints_pruned = time.monotonic()
        # Digests of the latest trade messages: Finnhub has sent every message two or three times in a row
        # (finnhubio/Finnhub-API#143, #158); counted across messages, a copy's prints got new keys, rows of their
        # own. A message identical to a recent one is that copy, left out (counted in resent).
        self._recent = SeenIds(self.RESENT_WINDOW)
        self.resent = 0

    def url(self) -> URL:
        return URL(self.settings.ws_url).update_query(token=self.api_key.get_secret_value())

    def redact(self, text: str) -> str:
        return redact(text, [self.api_key])

    def backoff(self, attempt: int) -> float:
        """The wait after the `attempt`-th failed connection in a row (0-based)."""
        state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = attempt + 1
        return self.wait(state)

    @staticmethod
    def _log_reconnect(state: RetryCallState) -> None:
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        logger.info("finnhub ws: reconnecting in %.2f s (attempt %d)", wait, state.attempt_number)

    def _handle(self, raw: str | bytes) -> list[MarketDataPoint]:
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            logger.warning("finnhub ws: message is not JSON: %r", self.redact(str(raw)[:200]))
            return []
        kind = doc.get("type") if isinstance(doc, dict) else None
        if kind != "error":  # an error message is no sign that the connection works
            self.connections.delivered()
        if kind == "trade":
            if self._seen_message(raw):
                self.resent += 1
                self._warn_once("resent", "finnhub ws: a trade message identical to a recent one, left out as sent "
                                "again (counted in resent, not warned again)")
                return []
            skipped: Counter[str] = Counter()
            try:
                return parse_trades(doc, skipped=skipped, seen=self._prints)
            except (SourceError, ValueError, TypeError, OverflowError) as exc:
                logger.warning("finnhub ws: bad trade message: %s", self.redact(str(exc)))
            finally:
                self._count_skips("trade", "the websocket", skipped)
                self._forget_old_prints()
        elif kind == "error":
            logger.warning("finnhub ws: server error: %s", self.redact(str(doc.get("msg"))[:300]))
        elif kind != "ping":
            # Not a silent DEBUG line: a message type this stream cannot read may carry data (Finnhub's "news").
            name = str(kind)[:40]
            self.ignored[name] += 1
            self._warn_once(f"ignored|{name}", "finnhub ws: ignored a message of type %r (counted in ignored[%r], "
                            "not warned again for this type): %s", name, name, self.redact(str(raw)[:200]))
        return []

    def _seen_message(self, raw: str | bytes) -> bool:
        """Whether this trade message is byte-identical to one of the last RESENT_WINDOW (and remember it)."""
        return not self._recent.add(hashlib.blake2b(raw.encode() if isinstance(raw, str) else raw,
                                                    digest_size=16).hexdigest())

    def _forget_old_prints(self) -> None:
        """Bound `_prints`: every PRINTS_PRUNE_SECONDS, the counts of a symbol's trades over a minute older than its
        newest trade go. Trade time, not the wall clock: a delayed feed's trades (or a clock ahead) would have
        every count forgotten at each prune, and a millisecond's prints split around it would share a key."""
        now = time.monotonic()
        if now - self._prints_pruned < self.PRINTS_PRUNE_SECONDS:
            return
        self._prints_pruned = now
        newest: dict[Any, int] = {}
        for k in self._prints:
            if k[1] > newest.get(k[0], k[1] - 1):
                newest[k[0]] = k[1]
        for key in [k for k in self._prints if k[1] < newest[k[0]] - self.PRINTS_WINDOW_MS]:
            del self._prints[key]

    async def fetch(self, session: aiohttp.ClientSession | None = None) -> AsyncIterator[list[Record]]:
        own = session is None
        session = session or aiohttp.ClientSession()
        s = self.settings
        buffer: list[MarketDataPoint] = []
        first_at = 0.0
        # Only _Reconnect is retried: GeneratorExit (aclose) and CancelledError, which the attempt's context
        # records like any exception, are raised again by the next iteration and end the stream.
        retrying = AsyncRetrying(stop=stop_never, wait=self.wait, sleep=self.sleep, before_sleep=self._log_reconnect,
                                 retry=retry_if_exception_type(_Reconnect))
        try:
            async for attempt in retrying:
                with attempt:
                    cause = "the connection closed"
                    try:
                        async with session.ws_connect(self.url(), heartbeat=s.ws_heartbeat_seconds or None) as ws:
                            self.connects += 1
                            self.connections.opened()
                            for symbol in self.symbols:
                                await ws.send_str(orjson.dumps({"type": "subscribe", "symbol": symbol}).decode())
                            logger.info("finnhub ws: connected (#%d), subscribed to %d symbols",
                                        self.connects, len(self.symbols))
                            while True:
                                wait = (first_at + s.ws_flush_seconds - time.monotonic()) if buffer else None
                                if wait is not None and wait <= 0:
                                    yield buffer
                                    buffer = []
                                    continue
                                try:
                                    msg = await ws.receive(timeout=wait)
                                except TimeoutError:
                                    continue  # the flush deadline: loop round and yield
                                if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                                    attempt.retry_state.attempt_number = 1  # alive: the next wait is the shortest
                                    points = self._handle(msg.data)
                                    if points and not buffer:
                                        first_at = time.monotonic()
                                    buffer.extend(points)
                                    if len(buffer) >= s.ws_batch_size:
                                        yield buffer
                                        buffer = []
                                elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                                                  aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                                    cause = f"connection closed ({msg.type.name}, code {ws.close_code})"
                                    logger.warning("finnhub ws: %s", cause)
                                    break
                    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                        cause = self.redact(f"{type(exc).__name__}: {exc}")
                        logger.warning("finnhub ws: %s", cause)
                    if buffer:
                        yield buffer
                        buffer = []
                    failing = self.connections.ended(cause)
                    if failing is not None:
                        raise failing
                    raise _Reconnect
        finally:
            if own:
                await session.close()


class NewsSentimentSource(_Counted, PollingSource):
    """Finnhub articles (scored with the lexicon, Finnhub gives no per-article score) plus Finnhub's own
    per-symbol news sentiment, as news items with source "news". Articles left out for a bad epoch are
    counted in `unexpected["company_news"]`; a failed call in `errors[endpoint]` (company_news, news_sentiment),
    and in `unexpected[endpoint]` too when the payload was of a shape nothing reads. Each failure is warned
    once per endpoint and cause (producers.base.failure_cause), its repeats logged at DEBUG."""

    name = "news"

    def __init__(self, settings: NewsSettings, api_key: SecretStr | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        key = api_key or settings.api_key(env)
        if key is None:
            raise ConfigError(f"the news source needs {' or '.join(settings.key_env)} in the environment")
        self.settings = settings
        self.client = FinnhubClient(
            key, base_url=settings.base_url, calls=settings.rate_limit_calls,
            per_seconds=settings.rate_limit_per_seconds, min_interval=settings.rate_limit_delay,
            **http_options(settings),
        )
        self.seen = SeenIds()
        self.sentiment_enabled = settings.sentiment
        self.sentiment_denied_at: float | None = None  # when Finnhub last refused news-sentiment (403), epoch seconds
        self._init_counted()
        self.errors: Counter[str] = Counter()  # per endpoint: failed calls (HTTP errors, timeouts, odd payloads)

    def redact(self, text: str) -> str:
        return self.client.redact(text)

    def _failed(self, endpoint: str, symbol: str, exc: BaseException) -> None:
        """A failed call: counted in errors[endpoint] (a payload of an unexpected shape also in
        unexpected[endpoint]); warned once per endpoint and cause, repeats at DEBUG."""
        self.errors[endpoint] += 1
        if isinstance(exc, FinnhubUnexpected) or not isinstance(exc, SourceError):
            self.unexpected[endpoint] += 1
        what = "company news" if endpoint == "company_news" else "sentiment"
        text = self.client.redact(f"{type(exc).__name__}: {exc}")
        key = f"failed|{endpoint}|{self.client.redact(failure_cause(exc, symbol))}"
        if key in self._warned:
            logger.debug("news: %s for %s failed again: %s", what, symbol, text)
            return
        self._warn_once(key, "news: %s for %s failed: %s (counted in errors[%r]; not warned again for this cause)",
                        what, symbol, text, endpoint)

    async def poll_once(self, session: aiohttp.ClientSession, now: datetime | None = None) -> list[MarketDataPoint]:
        now = now or datetime.now(UTC).replace(microsecond=0)
        out: list[MarketDataPoint] = []
        denied = self.sentiment_denied_at
        if denied is not None and now.timestamp() - denied >= self.settings.denied_retry_seconds:
            self.sentiment_enabled, self.sentiment_denied_at = True, None  # asked again: the plan may have changed
        for symbol in (s.upper() for s in self.settings.symbols):
            skipped: Counter[str] = Counter()
            try:
                news = await self.client.company_news(session, symbol, now=now, days=self.settings.lookback_days,
                                                      source=self.name, skipped=skipped)
                out.extend(self.seen.new(score_missing(news)))
                self.call_succeeded()
            except (SourceError, ValueError, TypeError, KeyError, OverflowError) as exc:
                self._failed("company_news", symbol, exc)
                self.call_failed(exc)
            finally:
                self._count_skips("company_news", symbol, skipped)
            if not self.sentiment_enabled:
                continue
            try:
                out.extend(await self.client.news_sentiment(session, symbol, now=now, source=self.name))
                self.call_succeeded()
            except SourceError as exc:
                if self.client.is_access_denied(exc):  # not in the plan: neither a failure nor a success
                    logger.warning("news: Finnhub news-sentiment is not in this plan; writing articles only, asking "
                                   "again in %gs", self.settings.denied_retry_seconds)
                    self.sentiment_enabled, self.sentiment_denied_at = False, now.timestamp()
                else:
                    self._failed("news_sentiment", symbol, exc)
                    self.call_failed(exc)
            except (ValueError, TypeError, KeyError, OverflowError) as exc:
                self._failed("news_sentiment", symbol, exc)
                self.call_failed(exc)
        return out
