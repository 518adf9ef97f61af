"""File replay: CSV bar files pushed through the pipeline as if they were arriving now, written to
raw.replay with source "replay", so history goes through the same validation as live data.

Formats (detected from the header):
- yfinance, flat: Date|Datetime,Open,High,Low,Close[,Adj Close],Volume (what older yfinance and
  pandas' to_csv of one ticker write).
- yfinance >= 0.2.51, three header rows: "Price,Close,High,..." / "Ticker,AAPL,AAPL,..." / "Date,,,";
  several tickers in one file are several symbols.
- Alpha Vantage datatype=csv: timestamp,open,high,low,close[,adjusted_close],volume[,dividend_amount,
  split_coefficient], newest first; its intraday times are naive US/Eastern (`time_zone`).
- Other bar files by their column names: a symbol column (symbol, ticker, or name as in the Kaggle S&P 500 file)
  gives each row its symbol (several symbols in one file stay apart: read as one series they were mixed and
  collided on the natural key); "Close/Last" (Nasdaq's downloads) or "Last" is the close; prices may carry "$"
  and thousands separators; a separate Time column (Date,Time,...: MetaTrader, Kibot) is joined to the date;
  times may be epoch seconds or milliseconds (exchange kline dumps), YYYYMMDD, or D/M/Y or M/D/Y (which one the
  file's own dates tell: a first part above 12 is a day; never told, month first, with a warning); columns may be
  separated by ";" (then "," is the decimal mark) or a tab.
- Investing.com's downloads: "Price" beside an Open is the close, volumes 62.38M/1.2K/3.05B, dates "Jun 03, 2024"
  (months by name, NSE's 02-Jan-2024 too). A Time column holding the whole instant ("2024-01-02 09:30:00") is it.
- Dukascopy's "Gmt time" is UTC, its "Local time" carries "GMT+0100"; polygon's flat files (window_start,
  sip_timestamp: epoch ns); CryptoDataDownload's title line and "unix" column; CoinMarketCap's timeOpen; epoch
  seconds written as floats (pandas); a zone name after the time (Interactive Brokers).
- No header: Binance's kline dumps, told by their close time (open + interval - 1); any other header-less file is
  refused, as its columns cannot be told.
A file with a price column (or a Close or Last alone) and no open is a tick file: each row a trade
(DateTime,Price[,Volume]); no size column, trades with volume None. Such a file of dates alone (Date,Close: daily
closes) is close-only daily bars (open = high = low = close, metadata close_only). Bid/ask quote files are
refused, saying so.
A file none of whose rows can be read is an error naming its header, not an empty replay.
Timestamps become UTC. Rows whose times are all local midnights (daily and longer; midnight as written or in the
configured zone, as Alpaca's 05:00 UTC daily bars) are stored at UTC midnight of their date, as every daily bar in
tickflow. Close is the file's Close; "Adj Close" and
adjusted_close go to metadata["adj_close"], never into the bar (a yfinance >= 0.2.51 file with
auto_adjust=True has an adjusted Close already: the file does not say so, the user does).
The interval (item_id) is inferred from the smallest gap between rows unless configured.

Speed: 1 = the gaps between rows in real time, 10 = ten times faster, 0 = as fast as possible.
Files: each entry of `files` is a file, a folder (its *.csv files) or a glob pattern; one source replays
them all, merged into one timeline. A file's symbol: the mapping (`symbols`: file name or stem -> symbol),
else the configured `symbol` (for one-ticker files), else the file's Ticker row, else the file's name
(AAPL.csv -> AAPL, SAP.DE.csv -> SAP.DE): leave `symbol` unset to replay a folder of per-symbol files.
"""

from __future__ import annotations

import asyncio
import csv
import functools
import glob
import io
import itertools
import logging
import re
import time
import zoneinfo
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp

from producers.base import Record, Source
from streams.config import ReplaySettings
from streams.errors import ConfigError
from streams.models import DataType, MarketDataPoint

logger = logging.getLogger(__name__)

SOURCE = "replay"

# Preferred in this order: "unix" (CryptoDataDownload's epoch beside its naive UTC "date"), CoinMarketCap's timeOpen
# before its snapshot "timestamp"; Dukascopy's "Gmt time"/"Local time"; polygon's window_start and sip_timestamp.
_DATE_NAMES = ("unix", "date", "datetime", "timeopen", "time open", "timestamp", "time", "open time", "date time",
               "time key", "gmt time", "local time", "window start", "sip timestamp", "participant timestamp")
_SYMBOL_NAMES = ("symbol", "ticker", "name")
_BAR_FIELDS = {"open": "open", "high": "high", "low": "low", "close": "close", "volume": "volume", "vol": "volume",
               "vol.": "volume"}
# A file with a price and no open: trades (a tick file: DateTime,Price,Volume)
_TRADE_FIELDS = {"price": "price", "volume": "volume", "vol": "volume", "vol.": "volume", "size": "volume",
                 "qty": "volume", "quantity": "volume"}
_CLOSE_ALIASES = ("close/last", "last", "close price")  # a close under another name, when there is no "close"
# D/M/Y or M/D/Y with "/"; "." (MetaTrader's 2024.01.02, Europe's 02.01.2024: day first unless told otherwise)
_SLASH_DATE = re.compile(r"^(\d{1,4})([/.])(\d{1,2})\2(\d{1,4})(?:[ T](.+))?$")
# A number that can only be read with "," as its decimal mark ("185,50", "1.234,5", "0,1234") or only with "."
# ("272.5000000", "1,234.5"); three digits after the one mark ("1,234", "1.234") could be thousands, and say nothing.
_COMPACT_TIME = re.compile(r"^(19\d\d|20\d\d)(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])([01]\d|2[0-3])([0-5]\d)([0-5]\d)?$")
_DECIMAL_COMMA = re.compile(r"\d,(?:\d{1,2}|\d{4,})$|\.\d{3},\d+$")
_DECIMAL_POINT = re.compile(r"\d\.(?:\d{1,2}|\d{4,})$|,\d{3}\.\d+$")
_MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
           "november", "december")
# A month by its name: Investing.com's "Dec 06, 2024", NSE's "02-Jan-2024", "2 Jan 2024"; a time may follow
_NAMED_DATE = re.compile(r"^(?:([A-Za-z]{3,9})\.?\s+(\d{1,2}),?\s+(\d{4})"
                         r"|(\d{1,2})[-\s]([A-Za-z]{3,9})\.?[-\s](\d{4}|\d{2}))(?:,?[ T](.+))?$")
# An explicit offset written as a zone: Dukascopy's "Local time" ends in "GMT+0100"; "UTC" or "GMT" alone is +00:00
_GMT_SUFFIX = re.compile(r"\s*(?:GMT|UTC)\s*(?:([+-])(\d{1,2}):?(\d{2})?)?$", re.IGNORECASE)
# A zone's name after the time (Interactive Brokers' "20240102 09:30:00 US/Eastern")
_ZONE_SUFFIX = re.compile(r"^(.*\d) ([A-Za-z]+(?:/[A-Za-z_+-]+)+)$")
# A cell holding a date and a time ("2024-01-02 09:30:00"): a Time column that has the date too
_DATED = re.compile(r"^\d{1,4}([-/.])\d{1,2}\1\d{1,4}[ T]\d")
_FLOAT_EPOCH = re.compile(r"^\d{9,10}\.\d+$")  # epoch seconds as pandas writes a float column: 1325412060.0
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SUFFIXES = {"K": 3, "M": 6, "B": 9, "T": 12}  # Investing.com's volumes: 62.38M, 1.2K, 3.05B
# Binance's kline dumps (data.binance.vision) have no header: these are their documented columns
_BINANCE_KLINE = ("open time", "open", "high", "low", "close", "volume", "close time", "quote volume", "trades",
                  "taker buy base volume", "taker buy quote volume", "ignore")
_META_FIELDS = {
    "adj close": "adj_close", "adjusted close": "adj_close", "dividends": "dividend", "dividend amount": "dividend",
    "stock splits": "split", "split coefficient": "split_coefficient",
}
_NO_EVENT = {"dividend": 0.0, "split": 0.0, "split_coefficient": 1.0}
_INTRADAY = {60: "1m", 120: "2m", 300: "5m", 900: "15m", 1800: "30m", 3600: "1h", 5400: "90m"}
_DAILY = {1: "1d", 7: "1wk", 28: "1mo", 29: "1mo", 30: "1mo", 31: "1mo", 90: "3mo", 91: "3mo", 92: "3mo"}


class NoSymbol(ValueError):
    """A file with no Ticker row, and no symbol given for it."""


def _norm(name: str) -> str:
    return " ".join(name.strip().strip("<>").lower().replace("_", " ").split())


def _float(text: str, decimal_comma: bool = False, suffix: bool = False) -> float | None:
    """A cell's number; `suffix`: a volume may be written 62.38M (Investing.com), read exactly (62380000, not
    62380000.00000001 as 62.38 * 1e6 is)."""
    s = text.strip().lstrip("$").replace("\u00a0", "").replace(" ", "")
    if not s or s.lower() in ("nan", "null", "none", "-"):
        return None
    # "1,234.5" (thousands) in a comma-separated file (the field was quoted); "1.234,5" where ";" separates
    s = s.replace(".", "").replace(",", ".") if decimal_comma else s.replace(",", "")
    if suffix and len(s) > 1 and (power := _SUFFIXES.get(s[-1].upper())) is not None:
        float(s[:-1])  # a ValueError for what is no number, as without a suffix
        return float(Decimal(s[:-1]).scaleb(power))
    return float(s)


def _year(text: str) -> int:
    """A year of four digits, or of two as strptime's %y reads them (69-99: 1900s; 00-68: 2000s): the Wall Street
    Journal's 01/02/24 is 2024, not the year 24."""
    y = int(text)
    return y if len(text) != 2 else y + (2000 if y < 69 else 1900)


def _month(name: str) -> int:
    """A month's number from its English name or abbreviation (Jun, Sept, June)."""
    low = name.lower()
    for i, full in enumerate(_MONTHS, 1):
        if full.startswith(low) and len(low) >= 3:
            return i
    raise ValueError(f"no month {name!r}")


def _binance_klines(rows: Sequence[Sequence[str]]) -> bool:
    """Whether header-less rows are Binance klines, told by their signature rather than guessed: 12 columns, open
    and close time epoch ms or us of one length, every close time a whole number of seconds after its open time,
    less one unit (open + interval - 1). Another header-less file's columns cannot be told: it is refused."""
    for r in rows:
        if len(r) != 12 or not (r[0].isdigit() and r[6].isdigit() and len(r[0]) == len(r[6]) in (13, 16)):
            return False
        span = int(r[6]) - int(r[0]) + 1
        if span <= 0 or span % (1000 if len(r[0]) == 13 else 1_000_000):
            return False
    return bool(rows)


def _is_data(row: Sequence[str]) -> bool:
    """Whether a first row is data rather than a header: no cell with a word in it, and a number (MetaTrader 4's,
    Kraken's, FirstRate's, histdata's exports have no header)."""
    cells = [c.strip() for c in row if c.strip()]
    return bool(cells) and not any(re.search(r"[A-Za-z]{2}", c) for c in cells) and any(
        c[:1].isdigit() for c in cells)


def _day_first(values: Sequence[str]) -> bool:
    """Whether a file's D/M/Y-or-M/D/Y dates put the day first: a first part above 12 says so, a second part above
    12 says the month is first; a file that never says is read month first (US), with a warning, unless its dates
    are dotted (02.01.2024: day first wherever dots are written). Every row is looked at: an intraday file's first
    hundreds of rows are one day, which may well be the 1st to the 12th."""
    firsts, seconds = [], []
    dotted = False
    for v in values:
        m = _SLASH_DATE.match(v.strip())
        if m and len(m[1]) <= 2:
            firsts.append(int(m[1]))
            seconds.append(int(m[3]))
            dotted = dotted or m[2] == "."
    if any(f > 12 for f in firsts):
        return True
    if any(x > 12 for x in seconds):
        return False
    if dotted:
        return True
    if firsts:
        logger.warning("replay: dates such as %r could be day or month first; read month first (M/D/Y)",
                       values[0])
    return False


def _decimal_comma(body: Sequence[Sequence[str]], columns: Sequence[int], delimiter: str) -> bool:
    """Whether a file's numbers are written with a decimal comma, told by its prices: some that only read so and
    none that only read with a decimal point (a ";" file of Finam's 272.5000000 has points, a tab file may have
    commas); a file whose prices never tell, by its separator (";": a comma)."""
    comma = point = False
    for r in body:
        for i in columns:
            if i < len(r) and (cell := r[i].strip()):
                comma = comma or _DECIMAL_COMMA.search(cell) is not None
                point = point or _DECIMAL_POINT.search(cell) is not None
        if comma and point:
            break
    return comma if comma != point else delimiter == ";"


def _day_start(dt: datetime, tz: ZoneInfo) -> tuple[datetime, bool]:
    """(dt, whether it starts a day): a midnight as written, or in the file's zone, returned in that zone so its
    date is the day's (Alpaca's and polygon's daily bars are stamped 05:00 UTC, New York's midnight)."""
    if (dt.hour, dt.minute, dt.second, dt.microsecond) == (0, 0, 0, 0):
        return dt, True
    local = dt.astimezone(tz)
    if (local.hour, local.minute, local.second, local.microsecond) == (0, 0, 0, 0):
        return local, True
    return dt, False


def _parse_time(text: str, tz: ZoneInfo, day_first: bool = False) -> tuple[datetime, bool]:
    """(aware datetime, whether it is a plain date or a local midnight)."""
    s = " ".join(text.split())  # Interactive Brokers writes two spaces between date and time
    if (g := _GMT_SUFFIX.search(s)) and g.start() > 0:
        s = s[:g.start()] + (f"{g[1]}{int(g[2]):02d}:{g[3] or '00'}" if g[1] else "+00:00")
    elif (z := _ZONE_SUFFIX.match(s)) and z[2] in _zone_names():
        s, tz = z[1], ZoneInfo(z[2])
    if s.isdigit() and len(s) in (12, 14) and (m := _COMPACT_TIME.match(s)):  # YYYYMMDDHHMM[SS], not epoch ms
        s = f"{m[1]}-{m[2]}-{m[3]} {m[4]}:{m[5]}:{m[6] or '00'}"
    elif s.isdigit() and len(s) in (9, 10, 12, 13, 16, 19):
        # epoch s, ms, us or ns (polygon's flat files; 9 and 12 digits: before 2001-09-09), in whole microseconds
        unit = 10 ** {9: 0, 10: 0, 12: 3, 13: 3, 16: 6, 19: 9}[len(s)]
        return _day_start(_EPOCH + timedelta(microseconds=int(s) * 1_000_000 // unit), tz)
    elif _FLOAT_EPOCH.match(s):
        return _day_start(_EPOCH + timedelta(microseconds=int(Decimal(s).scaleb(6).to_integral_value())), tz)
    elif s.isdigit() and len(s) == 8:  # YYYYMMDD
        s = f"{s[:4]}-{s[4:6]}-{s[6:]}"
    elif m := _SLASH_DATE.match(s):
        a, b, c, rest = m[1], m[3], m[4], m[5]
        y, mo, d = (a, b, c) if len(a) == 4 else (c, a, b) if not day_first else (c, b, a)
        s = f"{_year(y):04d}-{int(mo):02d}-{int(d):02d}" + (f" {rest.strip()}" if rest else "")
    elif m := _NAMED_DATE.match(s):
        mon, d, y = (m[1], m[2], m[3]) if m[1] else (m[5], m[4], m[6])
        s = f"{_year(y):04d}-{_month(mon):02d}-{int(d):02d}" + (f" {m[7].strip()}" if m[7] else "")
    if len(s) == 10:
        d0 = datetime.fromisoformat(s)
        return d0.replace(tzinfo=UTC), True
    dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=tz)
    return _day_start(dt, tz)


@functools.cache
def _zone_names() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def infer_interval(stamps: Sequence[datetime], daily: bool) -> str:
    """The interval label from the smallest gap between distinct timestamps."""
    distinct = sorted(set(stamps))
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(distinct)]
    if not gaps:
        return "1d" if daily else ""
    gap = min(gaps)
    if daily:
        days = round(gap / 86400)
        return _DAILY.get(days, f"{days}d")
    return _INTRADAY.get(int(gap), f"{int(gap)}s")


def parse_csv(text: str, symbol: str | None = None, *, time_zone: str = "America/New_York",
              interval: str | None = None, source: str = SOURCE, origin: str | None = None) -> list[MarketDataPoint]:
    """A bar CSV (the formats in the module docstring) -> bars sorted by time (then symbol); rows without a time or
    OHLC skipped (counted); a file none of whose rows can be read, a ValueError."""
    text = text.lstrip("\ufeff")
    lines = text.split("\n", 2)
    if len(lines) > 1 and not any(c in lines[0] for c in ",;\t|") and any(c in lines[1] for c in ",;\t|"):
        text = text.split("\n", 1)[1]  # a title above the header (CryptoDataDownload's address), not the header
    first_line = text.split("\n", 1)[0]
    delimiter = max((",", ";", "\t", "|"), key=first_line.count) if first_line else ","
    rows = [r for r in csv.reader(io.StringIO(text), delimiter=delimiter) if r and any(c.strip() for c in r)]
    if not rows:
        return []
    if _is_data(rows[0]):
        if not _binance_klines(rows):
            raise ValueError(f"no header: the first row {rows[0][:8]!r} is data, and which column is which cannot "
                             f"be told without names: add a header row such as Date,Time,Open,High,Low,Close,Volume")
        rows = [list(_BINANCE_KLINE), *rows]
    names = [_norm(c) for c in rows[0]]
    if "close" not in names:  # Nasdaq's "Close/Last", a "Last"; Investing.com's "Price" beside its Open
        aliases = _CLOSE_ALIASES + (("price",) if "open" in names else ())
        names = [("close" if n == next((a for a in aliases if a in names), None) else n) for n in names]
    if "volume" not in names and "vol" not in names and "vol." not in names:
        # the base currency's volume first: "Volume BTC,Volume USDT" (CryptoDataDownload), "Volume_(BTC)" (Kaggle)
        names = [("volume" if n == next((v for v in names if v.startswith("volume ")), None) else n) for n in names]
    time_col = -1
    symbol_col = -1
    if names[0] == "price" and len(rows) > 1 and _norm(rows[1][0]) == "ticker":
        tickers: list[str | None] = [None, *(t.strip().upper() or None for t in rows[1][1:])]
        body = rows[2:]
        if body and _norm(body[0][0]) in _DATE_NAMES and not any(c.strip() for c in body[0][1:]):
            body = body[1:]
        date_col = 0
    else:
        date_col = next((names.index(n) for n in _DATE_NAMES if n in names), -1)
        if date_col < 0:
            raise ValueError(f"no date column in header {rows[0]!r}")
        if names[date_col] == "date" and "time" in names:  # Date,Time,...: one instant in two columns
            time_col = names.index("time")
        body = rows[1:]
        symbol_col = next((names.index(n) for n in _SYMBOL_NAMES if n in names), -1)
        column = [r[symbol_col].strip() for r in body if len(r) > symbol_col] if symbol_col >= 0 else []
        if symbol_col >= 0 and not (column and all(0 < len(v) <= 24 and " " not in v and not v.isdigit()
                                                   for v in column)):
            symbol_col = -1  # a "name" column of company names (or CoinMarketCap's numeric id 2781), not tickers
        in_column = {v.upper() for v in column} if symbol_col >= 0 else set()
        if symbol_col >= 0 and symbol and len(in_column) <= 1:
            symbol_col = -1  # one ticker in the file: the given symbol names it (a mapping renames it)
        tickers = [None] * len(names)
    skip = {date_col, time_col, symbol_col}
    distinct = {t for i, t in enumerate(tickers) if i != date_col and t}
    if symbol_col >= 0:
        tickers = [None if i in skip else "" for i in range(len(names))]  # "": the row's own symbol
    elif symbol and len(distinct) <= 1:
        tickers = [None if i in skip else symbol.upper() for i in range(len(names))]
    elif not distinct:
        raise NoSymbol("no symbol: give one, or a file with a Ticker row")
    # A price and no open: trades. A Close (or Last) alone is one too, with or without sizes: the record model
    # takes a trade without a size (volume None), which the volume checks leave out rather than judge as zero.
    trades = "open" not in names and ("price" in names or ("close" in names and not {"high", "low"} & set(names)))
    if trades and "price" not in names:
        names = ["price" if n == "close" else n for n in names]
    fields, needed = (_TRADE_FIELDS, ("price",)) if trades else (_BAR_FIELDS, ("open", "high", "low", "close"))
    # bid, ask; polygon's bid_price, ask_price; Dukascopy's Bid, Ask
    quotes = " (bid/ask quotes are not replayed)" if any(n.split(" ")[0] in ("bid", "ask") for n in names) else ""
    if missing := [n for n in needed if n not in names]:
        raise ValueError(f"no {', '.join(missing)} column in header {rows[0][:8]!r}{quotes}")
    # Dukascopy's "Gmt time": naive times that say they are UTC
    tz = ZoneInfo("UTC") if re.search(r"\b(?:gmt|utc)\b", names[date_col]) else ZoneInfo(time_zone)
    price_cols = [i for i, n in enumerate(names) if i not in skip and n in needed]
    decimal_comma = delimiter != "," and _decimal_comma(body, price_cols, delimiter)
    day_first = _day_first([r[date_col] for r in body if len(r) > date_col])
    parsed: list[tuple[datetime, bool, str, dict[str, Any]]] = []
    skipped = 0
    for row in body:
        if any(c.strip() for c in row[len(names):]):  # more cells than the header: "1,234.5" unquoted, say
            skipped += 1
            continue
        try:
            when = row[date_col].strip()
            if time_col >= 0:
                clock = row[time_col].strip()
                # a Time that holds the date too is the instant; a Date that holds a time (00:00:00) gives its date
                when = clock if _DATED.match(clock) else f"{re.split(r'[ T]', when, maxsplit=1)[0]} {clock}" \
                    if _DATED.match(when) else f"{when} {clock}"
            ts, midnight = _parse_time(when, tz, day_first)
            own = row[symbol_col].strip().upper() if symbol_col >= 0 else ""
            groups: dict[str, dict[str, Any]] = {}
            for i, cell in enumerate(row):
                if i in skip or i >= len(names) or tickers[i] is None:
                    continue
                name = names[i]
                key = fields.get(name) or _META_FIELDS.get(name)
                if key is not None:
                    groups.setdefault(str(tickers[i]) or own, {})[key] = _float(cell, decimal_comma,
                                                                                 key == "volume")
        except (ValueError, IndexError, OverflowError, OSError):
            skipped += 1
            continue
        for sym, values in groups.items():
            if not sym or any(values.get(k) is None for k in needed):
                skipped += 1
                continue
            parsed.append((ts, midnight, sym, values))
    if body and not parsed:
        raise ValueError(f"none of its {len(body)} rows has a time and {', '.join(needed)} that could be read "
                         f"(header {rows[0][:8]!r}, first row {body[0][:8]!r}){quotes}")
    if trades and parsed and all(m for _, m, _, _ in parsed):
        # Date,Close: one price a day (an index's or a fund's close, FRED's SP500). A trade is an instant, and a date
        # is none; it is the day's close-only bar, open = high = low = close, as Yahoo sends a fund's NAV (the
        # detectors know such streams: no open to judge a jump by). metadata.close_only says the range is not known.
        parsed = [(ts, m, sym, {**{k: v for k, v in values.items() if k != "price"},
                                **dict.fromkeys(("open", "high", "low", "close"), values["price"]), "close_only": True})
                  for ts, m, sym, values in parsed]
        trades = False
    if trades:
        return _trade_points(parsed, skipped, source=source, origin=origin)
    daily = bool(parsed) and all(m for _, m, _, _ in parsed)
    stamps = [datetime(t.year, t.month, t.day, tzinfo=UTC) if daily else t.astimezone(UTC) for t, _, _, _ in parsed]
    label = interval or infer_interval(stamps, daily)
    out: list[MarketDataPoint] = []
    for ts, (_, _, sym, values) in zip(stamps, parsed, strict=True):
        bar = {k: values.get(k) for k in _BAR_FIELDS.values()}
        meta: dict[str, Any] = {k: v for k, v in values.items()
                                if k not in bar and v is not None and _NO_EVENT.get(k) != v}
        if origin:
            meta["file"] = origin
        out.append(MarketDataPoint(symbol=sym, timestamp=ts, source=source, data_type=DataType.BAR,
                                   interval=label or None, item_id=label, metadata=meta, **bar))
    if skipped:
        logger.info("replay: %s: skipped %d rows without a time or OHLC", origin or "csv", skipped)
    out.sort(key=lambda p: (p.timestamp, p.symbol))
    return out


def _trade_points(parsed: Sequence[tuple[datetime, bool, str, dict[str, Any]]], skipped: int, *, source: str,
                  origin: str | None) -> list[MarketDataPoint]:
    """A tick file's rows -> trades. item_id "n": the row's place among the file's rows of its symbol and instant
    (equal prints of one millisecond are two trades, and a replay of the file maps onto the same keys), counted
    from the oldest row: a newest-first copy of the same ticks (as Nasdaq's and Investing.com's downloads are
    written) gives each print the key the oldest-first file gives it."""
    seen: dict[tuple[str, datetime], int] = {}
    out: list[MarketDataPoint] = []
    # per symbol: a file of several symbols' blocks (AAPL's day, then MSFT's earlier day) is not newest first
    ends: dict[str, tuple[datetime, datetime]] = {}
    for ts, _, sym, _ in parsed:
        ends[sym] = (ends[sym][0], ts) if sym in ends else (ts, ts)
    newest_first = {sym for sym, (first, last) in ends.items() if first > last}
    rows = [r for r in parsed if r[2] not in newest_first] + [r for r in reversed(parsed) if r[2] in newest_first]
    for ts, _, sym, values in rows:
        at = ts.astimezone(UTC)
        n = seen[sym, at] = seen.get((sym, at), -1) + 1
        meta: dict[str, Any] = {"file": origin} if origin else {}
        out.append(MarketDataPoint(symbol=sym, timestamp=at, source=source, data_type=DataType.TRADE,
                                   price=values["price"], volume=values.get("volume"), item_id=str(n),
                                   metadata=meta))
    if skipped:
        logger.info("replay: %s: skipped %d rows without a time or price", origin or "csv", skipped)
    out.sort(key=lambda p: (p.timestamp, p.symbol))
    return out


class ReplaySource(Source):
    """Replays the configured files, merged into one timeline, at the configured speed; then stops."""

    finite = True  # replayed once per leadership; a restart replays the files again (rows dedupe by key)

    name = SOURCE

    def __init__(self, settings: ReplaySettings, *, symbol: str | None = None,
                 symbols: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.symbol = symbol or settings.symbol
        self.symbols = {k: v.upper() for k, v in (symbols or settings.symbols).items()}

    def paths(self) -> list[Path]:
        """The files to replay: each entry as a file, a folder's *.csv, or a glob's matches (sorted, once each)."""
        out: list[Path] = []
        for name in self.settings.files:
            path = Path(name)
            if path.is_dir():
                found = sorted(p for p in path.iterdir() if p.suffix.lower() == ".csv" and p.is_file())
            elif any(c in name for c in "*?["):
                found = sorted(Path(p) for p in glob.glob(name, recursive=True) if Path(p).is_file())
            else:
                found = [path]
            if not found:
                logger.warning("replay: %s matches no file", name)
            out.extend(p for p in found if p not in out)
        return out

    def symbol_for(self, path: Path) -> str | None:
        """The mapping's symbol for this file, else the configured one; None: the file says."""
        return self.symbols.get(path.name) or self.symbols.get(path.stem) or self.symbol

    def load(self) -> list[MarketDataPoint]:
        """Every file's bars, sorted by time; a file that cannot be read is logged and skipped."""
        s = self.settings
        paths = self.paths()
        points: list[MarketDataPoint] = []
        for path in paths:
            try:
                text = path.read_text(encoding="utf-8")
                kw: dict[str, Any] = {"time_zone": s.time_zone, "interval": s.interval, "origin": path.name}
                try:
                    points.extend(parse_csv(text, self.symbol_for(path), **kw))
                except NoSymbol:  # no Ticker row either: the file's name is the symbol
                    points.extend(parse_csv(text, path.stem.upper(), **kw))
            except (OSError, ValueError, UnicodeDecodeError) as exc:
                logger.error("replay: %s skipped: %s: %s", path, type(exc).__name__, exc)
        points.sort(key=lambda p: (p.timestamp, p.symbol))
        return points

    async def fetch(self, session: aiohttp.ClientSession | None = None) -> AsyncIterator[list[Record]]:
        s = self.settings
        if not s.files:  # nothing to replay is a setting left out, not a replay that finished
            raise ConfigError("replay: no files to replay: set sources.replay.files (CSV files, folders or globs), "
                              "e.g. TICKFLOW_SOURCES__REPLAY__FILES='[\"data/*.csv\"]'")
        points = self.load()
        logger.info("replay: %d bars from %d files at speed %s", len(points), len(self.paths()), s.speed or "max")
        if not points:
            logger.warning("replay: nothing to replay in %s", ", ".join(s.files))
            return
        if s.speed <= 0:
            for i in range(0, len(points), s.batch_size):
                yield list(points[i:i + s.batch_size])
                await asyncio.sleep(0)
            return
        # Each row is due at start + (its time since the first row) / speed, with every wait capped; rows
        # already due go out together, so a slow consumer does not stretch the replay.
        start = time.monotonic()
        offset = 0.0
        previous = points[0].timestamp
        batch: list[Record] = []
        for p in points:
            gap = (p.timestamp - previous).total_seconds() / s.speed
            previous = p.timestamp
            offset += min(gap, s.max_wait_seconds) if s.max_wait_seconds else gap
            wait = start + offset - time.monotonic()
            if wait > 0:
                if batch:
                    yield batch
                    batch = []
                    wait = start + offset - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            batch.append(p)
            if len(batch) >= s.batch_size:
                yield batch
                batch = []
        if batch:
            yield batch
