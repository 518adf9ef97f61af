"""Alpha Vantage: intraday, daily, weekly and monthly bars, global quotes and NEWS_SENTIMENT, written to
raw.alpha_vantage with source "alpha_vantage".

- One endpoint, GET {base_url}/query?function=...&apikey=... The key is in the query string, so every
  URL and message goes through http.redact before it can reach a log line or an exception.
- Alpha Vantage answers throttling and errors with HTTP 200 and a body holding "Note" (per-minute
  limit), "Information" (daily limit, premium endpoint, bad key) or "Error Message" (bad call, unknown
  symbol; "Invalid inputs" for news of a ticker it does not know). check_payload recognises them before any
  parsing: throttling is AlphaVantageThrottled (retriable, and it ends the poll round, the remaining calls
  would be throttled too); "Error Message", premium, key problems and other messages are not retriable.
- Free tier: 5 calls/minute and 25/day (the day being the UTC date): a per-minute token bucket, and a daily
  count kept in a QuotaStore passed in as `quota_store` (producers/quota.py; the worker passes the Kafka one),
  so a restart or a new leader continues the day's count instead of spending the quota again.
- Timestamps: time-series keys are local to the Meta Data "Time Zone" (US/Eastern for equities; an offset such as
  FX's "GMT+8" is UTC+08:00, see time_zone), converted to UTC with zoneinfo; daily keys (a date) are stored at UTC
  midnight of that trading date, like every daily bar in tickflow. A weekly or monthly key is the last trading day
  in its period, which moves every day while the period forms: such a bar sits at its period's start (Monday, the
  1st; period_start), as Yahoo's and FRED's do, and keeps the provider's date in metadata["period_end"]. Global
  quote has only a trading day: stored at its UTC midnight, so a day's quote is one row that re-polls update. News
  time_published carries no zone; it is read as UTC (news_time_zone), which fits the recorded responses
  (pre-market "futures" stories at 13:xx).
- Adjustment: raw prices are stored. Intraday is requested with adjusted=false; DAILY_ADJUSTED's raw OHLC
  are the bar, its adjusted close, dividend and split coefficient go to metadata.
- FX and crypto (settings.fx_pairs / settings.crypto, "EUR/USD"): CURRENCY_EXCHANGE_RATE is a tick (bid/ask
  when given) at "Last Refreshed" in its "Time Zone"; FX_INTRADAY / _DAILY / _WEEKLY / _MONTHLY and
  DIGITAL_CURRENCY_DAILY / _WEEKLY / _MONTHLY are bars (no volume for FX; crypto in the market currency, the
  older "1a. open (CNY)" layout included), stored under the joined symbol ("EURUSD", "BTCUSD"); crypto days are
  UTC days.
- Sessions: US/Eastern intraday bars carry metadata["session"] from the NYSE calendar (streams/calendars.py,
  the one the detectors use): pre (04:00 to the open), regular (the open to the close, 13:00 on an early-close
  day), post (the close to 20:00, or to 17:00 after an early close), judged on the bar's start.
- Nothing is dropped in silence: a body of a shape no parser here reads (an exchange-rate body on the quote
  path, say) raises AlphaVantageUnexpected, logged once per function and cause and counted in
  `self.unexpected[function]`; an empty global quote (unknown symbol) is logged once per symbol and counted.
- A 200 that is a message: the call budget's words (a "Note", the daily limit's "Information") end the round
  and retry next round; a premium function is dropped; a refused key ends the round and is logged once; any
  other message ("Invalid inputs" for a ticker NEWS_SENTIMENT does not know) skips that call only, logged once.
- News: one item per configured symbol per article (tickers=SYMBOL), sentiment = overall_sentiment_score
  clipped to [-1, 1], that ticker's own score and relevance plus every ticker mentioned in metadata;
  item_id is a hash of the url.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import aiohttp
from pydantic import SecretStr

from producers.base import PollingSource, Record, SeenIds
from producers.http import RateLimiter, get_json, http_options, redact
from producers.quota import DailyQuota, MemoryQuotaStore, QuotaBlocked, QuotaSpent, QuotaStore, QuotaStoreUnavailable
from producers.sentiment import clip
from streams.calendars import trading_session
from streams.config import AlphaVantageSettings, Function
from streams.errors import ConfigError, SourceError
from streams.models import DataType, MarketDataPoint

logger = logging.getLogger(__name__)

SOURCE = "alpha_vantage"

FUNCTIONS: dict[str, str] = {
    "intraday": "TIME_SERIES_INTRADAY", "daily": "TIME_SERIES_DAILY", "daily_adjusted": "TIME_SERIES_DAILY_ADJUSTED",
    "global_quote": "GLOBAL_QUOTE", "news_sentiment": "NEWS_SENTIMENT",
    "currency_exchange_rate": "CURRENCY_EXCHANGE_RATE", "fx_intraday": "FX_INTRADAY", "fx_daily": "FX_DAILY",
    "digital_currency_daily": "DIGITAL_CURRENCY_DAILY",
    "weekly": "TIME_SERIES_WEEKLY", "weekly_adjusted": "TIME_SERIES_WEEKLY_ADJUSTED",
    "monthly": "TIME_SERIES_MONTHLY", "monthly_adjusted": "TIME_SERIES_MONTHLY_ADJUSTED",
    "fx_weekly": "FX_WEEKLY", "fx_monthly": "FX_MONTHLY",
    "digital_currency_weekly": "DIGITAL_CURRENCY_WEEKLY", "digital_currency_monthly": "DIGITAL_CURRENCY_MONTHLY",
}
# The bar series of a symbol's functions: function -> (the series' period, adjusted).
_SERIES: dict[str, tuple[str, bool]] = {
    "daily": ("daily", False), "daily_adjusted": ("daily", True), "weekly": ("weekly", False),
    "weekly_adjusted": ("weekly", True), "monthly": ("monthly", False), "monthly_adjusted": ("monthly", True),
}
# Alpha Vantage interval names -> the interval label stored on bars (as Yahoo and Finnhub bars).
INTERVALS: dict[str, str] = {
    "1min": "1m", "5min": "5m", "15min": "15m", "30min": "30m", "60min": "1h",
    "daily": "1d", "weekly": "1wk", "monthly": "1mo",
    "digital currency daily": "1d", "digital currency weekly": "1wk", "digital currency monthly": "1mo",
}
_EASTERN = ("US/Eastern", "America/New_York")
US_CALENDAR = "XNYS"  # the sessions of US/Eastern intraday bars (NYSE and Nasdaq keep the same hours)
_BAR_FIELDS = {"open": "open", "high": "high", "low": "low", "close": "close", "volume": "volume"}
_META_FIELDS = {"adjusted close": "adj_close", "dividend amount": "dividend", "split coefficient": "split_coefficient"}
# How Alpha Vantage words a 200 whose body is a message, not data. Only a message that speaks of the call budget
# is throttling; the key's refusal ends the round (every call would be refused); any other "Information" (the
# "Invalid inputs" NEWS_SENTIMENT answers for a ticker it does not know) refuses that one call only.
_THROTTLE_WORDS = ("call frequency", "rate limit", "requests per day", "per minute", "per day", "spreading out")
# check_payload's words for a body holding "Error Message" (the provider's explained refusal of one call).
_ERROR_MESSAGE = re.compile(r"Alpha Vantage \S+ error: ")
_KEY_WORDS = ("apikey is invalid", "invalid api key", "api key is invalid", "demo purposes", "**demo** api key",
              "claim your free api key", "apikey is missing", "api key is missing")


class AlphaVantageThrottled(SourceError):
    """A 200 whose body says the call budget is spent: retry later, not now."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retriable=True)


class AlphaVantagePremium(SourceError):
    """The function is not in the key's plan (TIME_SERIES_DAILY_ADJUSTED on the free tier): stop asking."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retriable=False)


class AlphaVantageKeyRefused(SourceError):
    """The key itself is refused (invalid, missing, or the demo key on a real symbol): every call of the round
    would be, so the round ends; a configuration to fix, never retried as a throttle."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retriable=False)


class AlphaVantageRefused(SourceError):
    """A message instead of one call's data ("Invalid inputs"): that call fails, the round goes on."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retriable=False)


class AlphaVantageUnexpected(SourceError):
    """A 200 body of a shape no parser here reads: never turned into an empty result."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retriable=False)


class DailyLimitedRateLimiter(RateLimiter):
    """The per-minute bucket, after the day's quota (Alpha Vantage limits both). The quota counts every
    attempt in its store (producers/quota.py), so it survives a restart or a leader change; when it is spent,
    acquire raises QuotaSpent instead of waiting."""

    def __init__(self, calls: float, per_seconds: float, daily: DailyQuota, min_interval: float = 0.0) -> None:
        super().__init__(calls, per_seconds, min_interval)
        self.daily = daily

    async def acquire(self) -> None:
        await self.daily.take()
        await super().acquire()


# ---------------------------------------------------------------------------------------------- parsing


def check_payload(doc: Any, what: str) -> dict[str, Any]:
    """Refuse Alpha Vantage's 200-with-an-error bodies before anything parses them as data."""
    if not isinstance(doc, dict):
        raise SourceError(f"unexpected Alpha Vantage {what} payload: {type(doc).__name__}")
    if "Error Message" in doc:
        text = str(doc["Error Message"])
        if any(w in text.lower() for w in _KEY_WORDS):  # "the parameter apikey is invalid or missing"
            raise AlphaVantageKeyRefused(f"Alpha Vantage {what}: the API key was refused: {text[:300]}")
        raise SourceError(f"Alpha Vantage {what} error: {text[:300]}", retriable=False)
    for field in ("Note", "Information"):
        if field in doc:
            text = str(doc[field])
            lowered = text.lower()
            # "Note" has only ever carried the per-minute limit; the daily limit's "Information" also names the
            # premium plans, so the budget's words are looked for first.
            if field == "Note" or any(w in lowered for w in _THROTTLE_WORDS):
                raise AlphaVantageThrottled(f"Alpha Vantage {what} throttled ({field}): {text[:300]}")
            if "premium" in lowered:
                raise AlphaVantagePremium(f"Alpha Vantage {what}: {text[:300]}")
            if any(w in lowered for w in _KEY_WORDS):
                raise AlphaVantageKeyRefused(f"Alpha Vantage {what}: the API key was refused: {text[:300]}")
            raise AlphaVantageRefused(f"Alpha Vantage {what}: {text[:300]}")
    return doc


def _field(key: str) -> str:
    """ "1. open" -> "open", "07. latest trading day" -> "latest trading day"."""
    return key.split(". ", 1)[1].strip().lower() if ". " in key else key.strip().lower()


def _fields(row: Mapping[str, Any]) -> dict[str, Any]:
    return {_field(k): v for k, v in row.items()}


def _float(value: Any) -> float | None:
    if value is None:
        return None
    text = str(value).strip().rstrip("%")
    if not text or text.lower() in ("none", "null", "nan", "-", "."):
        return None
    return float(text)


_OFFSET_ZONE = re.compile(r"^(?:GMT|UTC)\s*(?P<sign>[+-])\s*(?P<hours>\d{1,2})(?::?(?P<minutes>\d{2}))?$", re.I)


def time_zone(name: str) -> tzinfo | None:
    """A Meta Data "Time Zone": a tz database name ("US/Eastern", "UTC"), or an offset Alpha Vantage writes as
    "GMT+8" (its FX_DAILY/_WEEKLY/_MONTHLY answers did) read as UTC+08:00, not POSIX's reversed Etc/GMT+8.
    None for a name neither: ZoneInfo refused "GMT+8" with a KeyError that lost the whole response."""
    text = name.strip()
    if m := _OFFSET_ZONE.match(text):
        offset = timedelta(hours=int(m["hours"]), minutes=int(m["minutes"] or 0))
        return timezone(-offset if m["sign"] == "-" else offset)
    try:
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def parse_local(text: str, tz: tzinfo | None) -> datetime:
    """An Alpha Vantage key: a date -> UTC midnight of it (no zone needed); a local date-time -> UTC, which needs
    the response's zone (None: AlphaVantageUnexpected, never a guess)."""
    text = text.strip()
    if len(text) == 10:
        d = date.fromisoformat(text)
        return datetime(d.year, d.month, d.day, tzinfo=UTC)
    if tz is None:
        raise AlphaVantageUnexpected(f"Alpha Vantage time {text!r} in a time zone not understood")
    return datetime.fromisoformat(text).replace(tzinfo=tz).astimezone(UTC)


_INTRADAY = {"1m", "5m", "15m", "30m", "1h"}
# history()'s interval -> the series that holds it.
_HISTORY_PERIODS = {"1d": "daily", "daily": "daily", "1wk": "weekly", "weekly": "weekly", "1mo": "monthly",
                    "monthly": "monthly"}
_INTERVAL_OF = {"weekly": "1wk", "monthly": "1mo"}


def _market_fields(row: dict[str, Any], market: str) -> dict[str, Any]:
    """DIGITAL_CURRENCY_* rows: "open" as is, or the older "open (usd)" of the requested market."""
    out = dict(row)
    for name in ("open", "high", "low", "close"):
        if name not in out and f"{name} ({market})" in out:
            out[name] = out[f"{name} ({market})"]
    return out


def period_start(day: datetime, interval: str) -> datetime:
    """A weekly or monthly bar's key is the last trading day in it, so the forming period's key moves every day;
    its start (Monday, the 1st) does not, and is where Yahoo and FRED put such a bar."""
    if interval == "1wk":
        return day - timedelta(days=day.weekday())
    if interval == "1mo":
        return day.replace(day=1)
    return day


def parse_time_series(doc: Any, symbol: str | None = None, *, source: str = SOURCE) -> list[MarketDataPoint]:
    """TIME_SERIES_* (and FX_*, DIGITAL_CURRENCY_*) -> bars, oldest first. Weekly and monthly bars sit at their
    period's start (period_start), the provider's date in metadata["period_end"]."""
    d = check_payload(doc, "time series")
    meta = _fields(d.get("Meta Data") or {})
    # "Time Series (5min)", "Time Series FX (Daily)", "Weekly Time Series", "Monthly Adjusted Time Series"
    series_key = next((k for k in d if "Time Series" in k), None)
    if series_key is None:
        raise AlphaVantageUnexpected(f"Alpha Vantage time series for {symbol} has no 'Time Series' object "
                                     f"(keys: {sorted(d)[:6]})")
    tz = time_zone(str(meta.get("time zone") or "US/Eastern"))
    if "(" in series_key:
        label = series_key[series_key.find("(") + 1:series_key.rfind(")")].lower()
    else:
        label = series_key.split()[0].lower() if series_key.split()[0] in ("Daily", "Weekly", "Monthly") else ""
    interval = INTERVALS.get(str(meta.get("interval") or label), str(meta.get("interval") or label or "1d"))
    market = str(meta.get("market code") or "").lower()
    sessions = interval in _INTRADAY and str(meta.get("time zone") or "US/Eastern") in _EASTERN
    if meta.get("from symbol") and meta.get("to symbol"):
        sym = f"{meta['from symbol']}{meta['to symbol']}"
    elif meta.get("digital currency code") and market:
        sym = f"{meta['digital currency code']}{market.upper()}"
    else:
        sym = str(symbol or meta.get("symbol") or "")
    if not sym:
        raise SourceError("Alpha Vantage time series without a symbol")
    out: list[MarketDataPoint] = []
    skipped = 0
    fields: list[str] = []  # a row's field names, to say what an unreadable layout holds
    for key, raw in (d.get(series_key) or {}).items():
        row = _market_fields(_fields(raw), market) if market else _fields(raw)
        fields = sorted(row)
        try:
            values = {dst: _float(row.get(src)) for src, dst in _BAR_FIELDS.items()}
            extra = {dst: v for src, dst in _META_FIELDS.items() if (v := _float(row.get(src))) is not None}
            ts = parse_local(key, tz)
        except ValueError:
            skipped += 1
            continue
        if any(values[k] is None for k in ("open", "high", "low", "close")):
            skipped += 1
            continue
        if extra.get("dividend") == 0.0:
            del extra["dividend"]
        if extra.get("split_coefficient") == 1.0:
            del extra["split_coefficient"]
        if sessions and (session := trading_session(ts.timestamp(), US_CALENDAR)) is not None:
            extra["session"] = session
        if interval in ("1wk", "1mo"):
            extra["period_end"] = ts.date().isoformat()
            ts = period_start(ts, interval)
        out.append(MarketDataPoint(symbol=sym.upper(), timestamp=ts, source=source, data_type=DataType.BAR,
                                   interval=interval, item_id=interval, metadata=extra, **values))
    if skipped and not out:  # rows of a layout nothing here reads ("1a. price (CNY)"): seen, not an empty series
        raise AlphaVantageUnexpected(f"Alpha Vantage time series for {sym}: none of {skipped} rows has a time and "
                                     f"open/high/low/close (fields: {fields[:6]})")
    if skipped:
        logger.info("alpha_vantage: %s: skipped %d rows without a time or OHLC", sym, skipped)
    out.sort(key=lambda p: p.timestamp)
    return out


def parse_global_quote(doc: Any, symbol: str, *, source: str = SOURCE) -> list[MarketDataPoint]:
    """GLOBAL_QUOTE -> the trading day's forming daily bar (close = the latest price) at its UTC midnight, so
    each re-poll is a newer revision of the same row as TIME_SERIES_DAILY's bar for that day (sinks/ keeps the
    newest). Without open/high/low it is a tick at that midnight. An empty quote (unknown symbol) -> []."""
    d = check_payload(doc, "global quote")
    if not isinstance(d.get("Global Quote"), dict):
        raise AlphaVantageUnexpected(f"Alpha Vantage global quote for {symbol} has no 'Global Quote' object "
                                     f"(keys: {sorted(d)[:6]})")
    q = _fields(d["Global Quote"])
    price, day = _float(q.get("price")), q.get("latest trading day")
    if price is None or not day:
        return []
    d0 = date.fromisoformat(str(day))
    extra: dict[str, Any] = {
        dst: v for src, dst in (("previous close", "prev_close"), ("change", "change"),
                                ("change percent", "change_percent"))
        if (v := _float(q.get(src))) is not None}
    extra["from"] = "global_quote"
    ts = datetime(d0.year, d0.month, d0.day, tzinfo=UTC)
    sym = str(q.get("symbol") or symbol).upper()
    o, h, lo, vol = _float(q.get("open")), _float(q.get("high")), _float(q.get("low")), _float(q.get("volume"))
    if o is not None and h is not None and lo is not None:
        return [MarketDataPoint(symbol=sym, timestamp=ts, source=source, data_type=DataType.BAR, interval="1d",
                                item_id="1d", open=o, high=h, low=lo, close=price, volume=vol, metadata=extra)]
    if vol is not None:
        extra["day_volume"] = vol
    return [MarketDataPoint(symbol=sym, timestamp=ts, source=source, data_type=DataType.TICK, price=price,
                            item_id="global_quote", metadata=extra)]


def parse_exchange_rate(doc: Any, *, source: str = SOURCE) -> list[MarketDataPoint]:
    """CURRENCY_EXCHANGE_RATE -> one tick for FROMTO at "Last Refreshed" (in its "Time Zone"), bid/ask if given."""
    d = check_payload(doc, "exchange rate")
    body = d.get("Realtime Currency Exchange Rate")
    if not isinstance(body, dict):
        raise AlphaVantageUnexpected(f"Alpha Vantage exchange rate has no 'Realtime Currency Exchange Rate' "
                                     f"object (keys: {sorted(d)[:6]})")
    r = _fields(body)
    base, quote = r.get("from_currency code"), r.get("to_currency code")
    price, when = _float(r.get("exchange rate")), r.get("last refreshed")
    if not base or not quote or price is None or not when:
        raise AlphaVantageUnexpected(f"Alpha Vantage exchange rate without codes, rate or time: {sorted(r)}")
    ts = parse_local(str(when), time_zone(str(r.get("time zone") or "UTC")))
    meta = {k: r[src] for k, src in (("from_name", "from_currency name"), ("to_name", "to_currency name"))
            if r.get(src)}
    return [MarketDataPoint(
        symbol=f"{base}{quote}".upper(), timestamp=ts, source=source, data_type=DataType.TICK, price=price,
        bid=_float(r.get("bid price")), ask=_float(r.get("ask price")), item_id="exchange_rate", metadata=meta,
    )]


def split_pair(pair: str) -> tuple[str, str]:
    """ "EUR/USD", "EUR-USD" or "EURUSD" -> ("EUR", "USD")."""
    text = pair.strip().upper()
    for sep in ("/", "-", ":"):
        if sep in text:
            a, b = (x.strip() for x in text.split(sep, 1))
            if a and b:
                return a, b
    if len(text) == 6 and text.isalpha():
        return text[:3], text[3:]
    raise ConfigError(f"alpha_vantage: {pair!r} is not a currency pair (write it as 'EUR/USD')")


def url_id(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:32]


def parse_news(doc: Any, symbols: Iterable[str] | None = None, *, time_zone: str = "UTC",
               source: str = SOURCE) -> list[MarketDataPoint]:
    """NEWS_SENTIMENT -> news items: one per article and requested symbol (None: per ticker mentioned)."""
    d = check_payload(doc, "news sentiment")
    feed = d.get("feed")
    if not isinstance(feed, list):
        raise SourceError("Alpha Vantage news sentiment has no feed")
    tz = ZoneInfo(time_zone)
    wanted = None if symbols is None else [s.upper() for s in symbols]
    out: list[MarketDataPoint] = []
    for article in feed:
        url, title, published = article.get("url"), article.get("title"), article.get("time_published")
        if not url or not title or not published:
            continue
        try:
            ts = datetime.strptime(str(published), "%Y%m%dT%H%M%S").replace(tzinfo=tz).astimezone(UTC)
        except ValueError:
            continue
        tickers = {str(t.get("ticker", "")).upper(): t for t in article.get("ticker_sentiment") or []
                   if t.get("ticker")}
        overall = _float(article.get("overall_sentiment_score"))
        for sym in (wanted if wanted is not None else list(tickers)):
            mine = tickers.get(sym, {})
            meta: dict[str, Any] = {
                "provider_source": article.get("source"),
                "overall_sentiment_label": article.get("overall_sentiment_label"),
                "tickers": sorted(tickers),
                "ticker_sentiment": {
                    t: {"score": _float(v.get("ticker_sentiment_score")), "relevance": _float(v.get("relevance_score")),
                        "label": v.get("ticker_sentiment_label")} for t, v in tickers.items()},
            }
            if mine:
                meta["ticker_sentiment_score"] = _float(mine.get("ticker_sentiment_score"))
                meta["ticker_relevance"] = _float(mine.get("relevance_score"))
            out.append(MarketDataPoint(
                symbol=sym, timestamp=ts, source=source, data_type=DataType.NEWS, headline=str(title),
                text=article.get("summary") or None, url=str(url)[:2048],
                sentiment=None if overall is None else clip(overall), item_id=url_id(str(url)),
                metadata={k: v for k, v in meta.items() if v is not None},
            ))
    return out


# ---------------------------------------------------------------------------------------------- source


class AlphaVantageSource(PollingSource):
    """Polls the configured functions for every symbol once per interval, inside both rate limits."""

    name = SOURCE

    def __init__(self, settings: AlphaVantageSettings, api_key: SecretStr | None = None,
                 env: Mapping[str, str] | None = None, *, quota_store: QuotaStore | None = None) -> None:
        key = api_key or settings.api_key(env)
        if key is None:
            raise ConfigError(f"the alpha_vantage source needs {' or '.join(settings.key_env)} in the environment")
        self.settings = settings
        self.api_key = key
        self.base_url = settings.base_url.rstrip("/")
        # The day's calls are counted in `quota_store` (the worker passes a Kafka-backed one, so the count
        # survives a restart or a leader change); without one, in this process only.
        self.quota = DailyQuota(SOURCE, settings.daily_limit_calls, quota_store or MemoryQuotaStore())
        self.limiter = DailyLimitedRateLimiter(settings.rate_limit_calls, settings.rate_limit_per_seconds,
                                               self.quota, settings.rate_limit_delay)
        self.functions: list[Function] = list(dict.fromkeys(settings.functions))
        self._last_bar: dict[tuple[str, str], datetime] = {}
        self._last_quote: dict[str, tuple[Any, ...]] = {}
        self.seen = SeenIds()
        self.fx_pairs = [split_pair(p) for p in settings.fx_pairs]
        self.crypto = [split_pair(p) for p in settings.crypto]
        self.unexpected: Counter[str] = Counter()  # per function: bodies of a shape nothing could read
        self.unknown: Counter[str] = Counter()  # per symbol: empty answers (unknown symbol)
        self._warned: set[str] = set()
        self._dropped: set[str] = set()  # functions not in the key's plan: not asked again

    def redact(self, text: str) -> str:
        return redact(text, [self.api_key])

    async def fetch(self, session: aiohttp.ClientSession | None = None) -> AsyncIterator[list[Record]]:
        """Every start (this worker became the leader, or a restart) reads the day's count from the store again."""
        self.quota.forget()
        async for batch in super().fetch(session):
            yield batch

    async def query(self, session: aiohttp.ClientSession, function: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """One call, checked for the error bodies; every message redacted."""
        s = self.settings
        try:
            doc = await get_json(
                session, f"{self.base_url}/query",
                params={"function": function, **params, "apikey": self.api_key.get_secret_value()},
                secrets=[self.api_key], limiter=self.limiter, **http_options(s),
            )
            return check_payload(doc, function)
        except QuotaBlocked:
            raise
        except (AlphaVantageThrottled, AlphaVantagePremium, AlphaVantageKeyRefused, AlphaVantageRefused) as exc:
            raise type(exc)(self.redact(str(exc))) from None
        except SourceError as exc:
            raise SourceError(self.redact(str(exc)), retriable=exc.retriable) from None

    async def intraday(self, session: aiohttp.ClientSession, symbol: str, *, interval: str | None = None,
                       month: str | None = None, outputsize: str | None = None) -> list[MarketDataPoint]:
        params = {"symbol": symbol, "interval": interval or self.settings.intraday_interval,
                  "outputsize": outputsize or self.settings.outputsize, "adjusted": "false"}
        if month:
            params["month"] = month
        return parse_time_series(await self.query(session, FUNCTIONS["intraday"], params), symbol)

    async def daily(self, session: aiohttp.ClientSession, symbol: str, *, adjusted: bool = False,
                    outputsize: str | None = None, period: str = "daily") -> list[MarketDataPoint]:
        """TIME_SERIES_DAILY (period "weekly", "monthly": those series, which always hold the whole history)."""
        function = FUNCTIONS[f"{period}_adjusted" if adjusted else period]
        params = {"symbol": symbol}
        if period == "daily":
            params["outputsize"] = outputsize or self.settings.outputsize
        return parse_time_series(await self.query(session, function, params), symbol)

    async def global_quote(self, session: aiohttp.ClientSession, symbol: str) -> list[MarketDataPoint]:
        return parse_global_quote(await self.query(session, FUNCTIONS["global_quote"], {"symbol": symbol}), symbol)

    async def exchange_rate(self, session: aiohttp.ClientSession, base: str, quote: str) -> list[MarketDataPoint]:
        doc = await self.query(session, FUNCTIONS["currency_exchange_rate"],
                               {"from_currency": base, "to_currency": quote})
        return parse_exchange_rate(doc)

    async def fx_series(self, session: aiohttp.ClientSession, base: str, quote: str, *, intraday: bool,
                        interval: str | None = None, outputsize: str | None = None,
                        period: str = "daily") -> list[MarketDataPoint]:
        """FX_INTRADAY, or FX_DAILY (period "weekly", "monthly": FX_WEEKLY, FX_MONTHLY, which take no outputsize)."""
        params = {"from_symbol": base, "to_symbol": quote}
        if intraday or period == "daily":
            params["outputsize"] = outputsize or self.settings.outputsize
        if intraday:
            params["interval"] = interval or self.settings.intraday_interval
        doc = await self.query(session, FUNCTIONS["fx_intraday" if intraday else f"fx_{period}"], params)
        return parse_time_series(doc, f"{base}{quote}")

    async def crypto_daily(self, session: aiohttp.ClientSession, base: str, market: str,
                           period: str = "daily") -> list[MarketDataPoint]:
        doc = await self.query(session, FUNCTIONS[f"digital_currency_{period}"], {"symbol": base, "market": market})
        return parse_time_series(doc, f"{base}{market}")

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message, *args)

    async def news(self, session: aiohttp.ClientSession, symbol: str) -> list[MarketDataPoint]:
        params = {"tickers": symbol, "sort": "LATEST", "limit": self.settings.news_limit}
        doc = await self.query(session, FUNCTIONS["news_sentiment"], params)
        return parse_news(doc, [symbol], time_zone=self.settings.news_time_zone)

    async def history(self, session: aiohttp.ClientSession, symbol: str, start: date | datetime,
                      end: date | datetime, interval: str = "1d") -> list[MarketDataPoint]:
        """Bars with start <= timestamp < end (a date `end` inclusive): daily, weekly or monthly (interval 1d, 1wk,
        1mo) from the full series, intraday month by month (interval "1min".."60min")."""
        begin = start if isinstance(start, datetime) else datetime(start.year, start.month, start.day, tzinfo=UTC)
        if isinstance(end, datetime):
            stop = end
        else:
            stop = datetime(end.year, end.month, end.day, tzinfo=UTC) + timedelta(days=1)
        begin, stop = (t.replace(tzinfo=UTC) if t.tzinfo is None else t for t in (begin, stop))
        if interval in _HISTORY_PERIODS:
            bars = await self.daily(session, symbol, outputsize="full", period=_HISTORY_PERIODS[interval])
        else:
            bars = []
            year, month = begin.year, begin.month
            while (year, month) <= (stop.year, stop.month):
                bars.extend(await self.intraday(session, symbol, interval=interval, month=f"{year:04d}-{month:02d}",
                                                outputsize="full"))
                year, month = (year + 1, 1) if month == 12 else (year, month + 1)
        first = period_start(begin, interval if interval in ("1wk", "1mo") else _INTERVAL_OF.get(interval, ""))
        by_time = {b.timestamp: b for b in bars if first <= b.timestamp < stop}  # a week or month begun: in
        return [by_time[t] for t in sorted(by_time)]

    async def _poll(self, session: aiohttp.ClientSession, function: Function, symbol: str) -> list[MarketDataPoint]:
        if function == "global_quote":
            points = await self.global_quote(session, symbol)
            if not points:
                self.unknown[symbol] += 1
                self._warn_once(f"unknown|{symbol}", "alpha_vantage: GLOBAL_QUOTE for %s is empty: unknown symbol? "
                                "(counted, not warned again)", symbol)
                return []
            sig = tuple((p.timestamp, p.price, p.close, p.high, p.low, p.volume, p.metadata.get("day_volume"))
                        for p in points)
            if not points or self._last_quote.get(symbol) == sig:
                return []
            self._last_quote[symbol] = sig
            return points
        if function == "news_sentiment":
            return self.seen.new(await self.news(session, symbol))
        if function == "intraday":
            bars = await self.intraday(session, symbol)
        else:
            period, adjusted = _SERIES[function]
            bars = await self.daily(session, symbol, adjusted=adjusted, period=period)
        # Older bars of the window were sent already; the latest may still be forming, so it is re-sent.
        last = self._last_bar.get((function, symbol))
        bars = [b for b in bars if last is None or b.timestamp >= last]
        if bars:
            self._last_bar[(function, symbol)] = bars[-1].timestamp
        return bars

    def _new_bars(self, key: tuple[str, str], bars: list[MarketDataPoint]) -> list[MarketDataPoint]:
        """Older bars of the window were sent already; the latest may still be forming, so it is re-sent."""
        last = self._last_bar.get(key)
        bars = [b for b in bars if last is None or b.timestamp >= last]
        if bars:
            self._last_bar[key] = bars[-1].timestamp
        return bars

    async def _poll_pair(self, session: aiohttp.ClientSession, function: str, base: str,
                         quote: str) -> list[MarketDataPoint]:
        sym = f"{base}{quote}"
        if function == "currency_exchange_rate":
            points = await self.exchange_rate(session, base, quote)
            sig = tuple((p.timestamp, p.price) for p in points)
            if self._last_quote.get(sym) == sig:
                return []
            self._last_quote[sym] = sig
            return points
        if function.startswith("digital_currency_"):
            bars = await self.crypto_daily(session, base, quote, function.removeprefix("digital_currency_"))
        else:
            bars = await self.fx_series(session, base, quote, intraday=function == "fx_intraday",
                                        period=function.removeprefix("fx_"))
        return self._new_bars((function, sym), bars)

    def _calls(self) -> list[tuple[str, str, str | None]]:
        """(function, symbol or base, quote currency or None) for one round."""
        calls: list[tuple[str, str, str | None]] = [
            (f, sym, None) for f in self.functions for sym in dict.fromkeys(x.upper() for x in self.settings.symbols)]
        calls += [(f, a, b) for f in dict.fromkeys(self.settings.fx_functions) for a, b in self.fx_pairs]
        calls += [(f, a, b) for f in dict.fromkeys(self.settings.crypto_functions) for a, b in self.crypto]
        return calls

    async def poll_once(self, session: aiohttp.ClientSession) -> list[MarketDataPoint]:
        """One round; a failing call is logged and skipped, a throttled one ends the round. Each call is reported
        to the round's count (PollingSource.call_failed / call_succeeded): throttling, a spent quota and a
        premium function are neither; a refused key is a failure (every call would be refused)."""
        out: list[MarketDataPoint] = []
        dropped = self._dropped
        for function, symbol, quote in self._calls():
            if function in dropped or (quote is None and function not in self.functions):
                continue
            what = symbol if quote is None else f"{symbol}/{quote}"
            try:
                if quote is None:
                    out.extend(await self._poll(session, function, symbol))  # type: ignore[arg-type]
                else:
                    out.extend(await self._poll_pair(session, function, symbol, quote))
                self.call_succeeded()  # an empty GLOBAL_QUOTE (unknown symbol) too: counted in unknown, answered
            except AlphaVantageUnexpected as exc:
                self.unexpected[function] += 1
                text = self.redact(str(exc))
                self._warn_once(f"{function}|{text}", "alpha_vantage: unexpected %s body for %s (counted in "
                                "unexpected[%r], not warned again): %s", function, what, function, text)
                self.call_failed(exc)
            except AlphaVantagePremium as exc:
                logger.warning("alpha_vantage: %s is not in this key's plan, not asking again: %s",
                               function, self.redact(str(exc)))
                dropped.add(function)
                if function in self.functions:
                    self.functions.remove(function)  # type: ignore[arg-type]
            except QuotaStoreUnavailable:
                raise  # the supervisor shows the source failing and restarts it with backoff; no uncounted call
            except QuotaSpent as exc:
                day = self.quota.day.isoformat() if self.quota.day else "today"
                self._warn_once(f"quota|{day}", "alpha_vantage: no calls this round: %s (not warned again today)",
                                exc)
                return out
            except AlphaVantageThrottled as exc:
                logger.warning("alpha_vantage: throttled at %s for %s, ending this round: %s",
                               function, what, self.redact(str(exc)))
                return out
            except AlphaVantageKeyRefused as exc:
                self._warn_once(f"key|{exc}", "alpha_vantage: %s; ending this round, and every round until the "
                                "key (ALPHA_VANTAGE_API_KEY) is fixed (not warned again)", self.redact(str(exc)))
                self.call_failed(exc)
                return out
            except AlphaVantageRefused as exc:
                self._warn_once(f"refused|{function}|{what}|{exc}", "alpha_vantage: %s for %s refused, skipped "
                                "(not warned again): %s", function, what, self.redact(str(exc)))
                self.call_succeeded()  # "Invalid inputs" for a ticker it does not know: explained, answered
            except (SourceError, ValueError, TypeError, KeyError) as exc:
                logger.warning("alpha_vantage: %s for %s failed: %s", function, what,
                               self.redact(f"{type(exc).__name__}: {exc}"))
                # check_payload's "Error Message" body ("Invalid API call", Alpha Vantage's answer for a symbol it
                # does not know) is an explained answer; anything else (HTTP, network, not JSON) a failure.
                if isinstance(exc, SourceError) and _ERROR_MESSAGE.match(str(exc)):
                    self.call_succeeded()
                else:
                    self.call_failed(exc)
        return out
