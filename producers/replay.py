"""File replay: CSV files of bars, trades or quotes pushed through the pipeline as if they were arriving now,
written to raw.replay with source "replay", so history goes through the same validation as live data.

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
  (months by name, NSE's 02-Jan-2024 too); its other languages' headers (Datum;Zuletzt;Eröffn.;Hoch;Tief;Vol.,
  Date;Dernier;Ouv.;..., Fecha;Último;...: dates day first) and German brokers' (Datum;Eröffnung;Hoch;Tief;
  Schluss;Volumen). A Time column holding the whole instant ("2024-01-02 09:30:00") is it.
- Dukascopy's "Gmt time" is UTC, its "Local time" carries "GMT+0100"; polygon's flat files (window_start,
  sip_timestamp: epoch ns); CryptoDataDownload's title line and "unix" column; CoinMarketCap's timeOpen; epoch
  seconds written as floats (pandas); a zone name after the time (Interactive Brokers).
- No header: Binance's kline dumps, told by their close time (open + interval - 1); a time (or a date and a clock)
  and four prices whose second is every row's highest and third its lowest, Open,High,Low,Close[,Volume] as
  FirstRate, Kibot, MetaTrader 4, histdata.com and Kraken write them (_headerless_bars); any other header-less
  file is refused, as its columns cannot be told.
A file with a price column (or a Close or Last alone) and no open is a tick file: each row a trade
(DateTime,Price[,Volume]); no size column, trades with volume None. Such a file of dates alone (Date,Close: daily
closes) is close-only daily bars (open = high = low = close, metadata close_only).
A file with a bid and an ask column and no open, price or last is a quote file: each row a quote (bid, ask, and
bid_size, ask_size as written; price None, as a quote has no price), keyed as trades are (_tick_rows); judging
it is validation's part (a crossed quote is refused there, quote.crossed, not dropped here). Dukascopy's tick
exports (Gmt time|Local time,Ask,Bid,AskVolume,BidVolume: sizes in millions, stored as written), polygon's quotes
flat files (sip_timestamp, bid_price, ask_price, bid_size, ask_size), any Time,Bid,Ask[,BidSize,AskSize] by name.
Beside a price or a last, the bid and ask are not read: such a file stays the trades it was read as. MetaTrader 5's
tick export (<DATE> <TIME> <BID> <ASK> <LAST> <VOLUME> <FLAGS>, tab-separated) writes only what changed: an empty
cell is the symbol's previous value; a row that changed the bid or the ask is a quote of both as then known, one
with a LAST or VOLUME a trade (exchange instruments), one with both is both. Its first rows may hold one side only:
rows before both sides (or a last price) are known are skipped and counted with a warning, rather than sent as
half quotes validation refuses (quote.missing). Its times are the broker's server time, naive: set `time_zone`.
HistData.com's ticks (20240102 000000123,bid,ask,volume) have no header: refused as any header-less file (nothing
in the file tells bid from ask); with a header line DateTime,Bid,Ask,Volume they are quotes, their times EST all
year round (time_zone Etc/GMT+5).
A file none of whose rows can be read is an error naming its header, not an empty replay.
Timestamps become UTC. Rows whose times are all local midnights (daily and longer; midnight as written or in the
configured zone, as Alpaca's 05:00 UTC daily bars) are stored at UTC midnight of their date, as every daily bar in
tickflow. Close is the file's Close; "Adj Close" and
adjusted_close go to metadata["adj_close"], never into the bar (a yfinance >= 0.2.51 file with
auto_adjust=True has an adjusted Close already: the file does not say so, the user does).
Extras kept in a bar's metadata: MetaTrader 5's tick volume and spread, trade counts (Binance's trades, polygon's
transactions, Alpaca's trade_count), a VWAP.
The interval (item_id) is inferred from the smallest gap between rows unless configured.

Speed: 1 = the gaps between rows in real time, 10 = ten times faster, 0 = as fast as possible.
Files: each entry of `files` is a file, a folder (its *.csv files) or a glob pattern; one source replays
them all, merged into one timeline. Memory: the files are read once to learn their symbols and time spans, and
their rows are then held a group at a time (replay_groups): files that do not overlap in time are not held
together, nor, at speed 0, files that share no symbol (each symbol's rows still go out in time order); rows
beyond `held_rows` are not kept from the first reading, their files are read again.
A file's symbol: the mapping (`symbols`: file name or stem -> symbol), else the configured `symbol` (for
one-ticker files), else the file's Ticker row, else the file's name (AAPL.csv -> AAPL, SAP.DE.csv -> SAP.DE;
stem_symbol drops what downloads add: "TSLA Historical Data", MetaTrader 5's _H1_<first>_<last>):
leave `symbol` unset to replay a folder of per-symbol files.
"""

from __future__ import annotations

import asyncio
import csv
import functools
import glob
import io
import itertools
import logging
import math
import re
import time
import zoneinfo
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp

from producers.base import RawRecord, Record, Source, unreadable_record
from streams.config import ReplaySettings
from streams.errors import ConfigError, SourceError
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
# Investing.com's and European brokers' downloads in other languages (de, fr, es, it, pt, ru, tr, ja; onvista's
# and comdirect's Schluss): the same columns under local names
_LOCAL_NAMES = {
    "datum": "date", "fecha": "date", "data": "date", "дата": "date", "tarih": "date", "日付け": "date", "日付": "date",
    "zeit": "time", "uhrzeit": "time", "heure": "time", "hora": "time", "ora": "time", "время": "time",
    "zuletzt": "close", "schluss": "close", "schlusskurs": "close", "dernier": "close", "último": "close",
    "ultimo": "close", "цена": "close", "şimdi": "close", "終値": "close", "kurs": "price", "preis": "price",
    "eröffn.": "open", "eröffnung": "open", "erster": "open", "ouv.": "open", "apertura": "open",
    "abertura": "open", "откр.": "open", "a\u00e7\u0131l\u0131\u015f": "open", "始値": "open",
    "hoch": "high", "tageshoch": "high", "plus haut": "high", "máximo": "high", "massimo": "high", "máxima": "high",
    "макс.": "high", "yüksek": "high", "高値": "high",
    "tief": "low", "tagestief": "low", "plus bas": "low", "mínimo": "low", "minimo": "low", "mínima": "low",
    "мин.": "low", "düşük": "low", "安値": "low",
    "volumen": "volume", "umsatz in stück": "volume", "объём": "volume", "объем": "volume", "hac.": "volume",
    "出来高": "volume",
}
# Bloomberg's history exports (BDH): PX_OPEN, PX_HIGH, PX_LOW, PX_LAST (the close), PX_VOLUME
_VENDOR_NAMES = {"px open": "open", "px high": "high", "px low": "low", "px last": "close", "px close": "close",
                 "px volume": "volume"}
_CLOSE_ALIASES = ("close/last", "last", "close price")  # a close under another name, when there is no "close"
# A bid and an ask and no open, price or last: quotes. Dukascopy's Bid, Ask, BidVolume, AskVolume; polygon's
# bid_price, ask_price, bid_size, ask_size; sizes as written (Dukascopy's are millions of units).
_QUOTE_FIELDS = {"bid": "bid", "bid price": "bid", "ask": "ask", "ask price": "ask",
                 **{f"{side}{sep}{size}": f"{side}_size" for side in ("bid", "ask") for sep in ("", " ")
                    for size in ("size", "volume", "vol", "qty", "quantity")}}
# MetaTrader 5's tick export, <DATE> <TIME> <BID> <ASK> <LAST> <VOLUME> <FLAGS>: LAST (a close by then) and
# VOLUME are its trades'; an empty cell is a value unchanged since the symbol's previous tick (_carry_unchanged).
_METATRADER_TICK_FIELDS = {**_QUOTE_FIELDS, "close": "price", "volume": "volume"}
# The fields of a record of each kind a tick file is read into (_tick_rows)
_TICK_FIELDS = {DataType.TRADE: ("price", "volume"), DataType.QUOTE: ("bid", "ask", "bid_size", "ask_size")}
# D/M/Y or M/D/Y with "/"; "." (MetaTrader's 2024.01.02, Europe's 02.01.2024: day first unless told otherwise)
_SLASH_DATE = re.compile(r"^(\d{1,4})([/.])(\d{1,2})\2(\d{1,4})(?:[ T](.+))?$")
# A number that can only be read with "," as its decimal mark ("185,50", "1.234,5", "0,1234") or only with "."
# ("272.5000000", "1,234.5"); three digits after the one mark ("1,234", "1.234") could be thousands, and say nothing.
_COMPACT_TIME = re.compile(r"^(19\d\d|20\d\d)(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])([01]\d|2[0-3])([0-5]\d)([0-5]\d)?$")
_DECIMAL_COMMA = re.compile(r"\d,(?:\d{1,2}|\d{4,})$|\.\d{3},\d+$")
_DECIMAL_POINT = re.compile(r"\d\.(?:\d{1,2}|\d{4,})$|,\d{3}\.\d+$")
_GROUPED = re.compile(r"\d{1,3}(?:(?:\.\d{3}){2,}(?:,\d*)?|(?:,\d{3}){2,}(?:\.\d*)?)$")  # 1.234.567 / 1,234,567
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
_CLOCK = re.compile(r"^\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?$")  # a Time cell of a header-less file: 09:30, 17:00:00
_FLOAT_EPOCH = re.compile(r"^\d{9,10}\.\d+$")  # epoch seconds as pandas writes a float column: 1325412060.0
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SUFFIXES = {"K": 3, "M": 6, "B": 9, "T": 12}  # Investing.com's volumes: 62.38M, 1.2K, 3.05B
# Binance's kline dumps (data.binance.vision) have no header: these are their documented columns
_BINANCE_KLINE = ("open time", "open", "high", "low", "close", "volume", "close time", "quote volume", "trades",
                  "taker buy base volume", "taker buy quote volume", "ignore")
_META_FIELDS = {
    "adj close": "adj_close", "adjusted close": "adj_close", "dividends": "dividend", "dividend amount": "dividend",
    "stock splits": "split", "split coefficient": "split_coefficient",
    # MetaTrader 5's bars (an FX pair's <VOL> is 0: its <TICKVOL>, the ticks in the bar, is the activity it has),
    # trade counts (Binance, polygon's transactions, Alpaca's trade_count) and a VWAP: kept in metadata; a cell
    # that is no number is left out, not the row (these columns are extras, the bar is whole without them)
    "tickvol": "tick_volume", "tick volume": "tick_volume", "spread": "spread", "trades": "trades",
    "transactions": "trades", "trade count": "trades", "number of trades": "trades", "vwap": "vwap",
}
_EXTRA_META = frozenset(("tick_volume", "spread", "trades", "vwap"))
_NO_EVENT = {"dividend": 0.0, "split": 0.0, "split_coefficient": 1.0}
_INTRADAY = {60: "1m", 120: "2m", 300: "5m", 900: "15m", 1800: "30m", 3600: "1h", 5400: "90m"}
_DAILY = {1: "1d", 7: "1wk", 28: "1mo", 29: "1mo", 30: "1mo", 31: "1mo", 90: "3mo", 91: "3mo", 92: "3mo"}


class NoSymbol(ValueError):
    """A file with no Ticker row, and no symbol given for it."""


def _norm(name: str) -> str:
    return " ".join(name.strip().strip("<>").lower().replace("_", " ").split())


def _float(text: str, decimal_comma: bool = False, suffix: bool = False) -> float | None:
    """A cell's number; `suffix`: a volume may be written 62.38M (Investing.com), read exactly (2.01M is 2010000,
    not 2009999.9999999998 as 2.01 * 1e6 is)."""
    s = text.strip().lstrip("$").replace("\u00a0", "").replace(" ", "")
    if not s or s.lower() in ("nan", "null", "none", "-"):
        return None
    # "1,234.5" (thousands) in a comma-separated file (the field was quoted); "1.234,5" where ";" separates
    s = s.replace(".", "").replace(",", ".") if decimal_comma else s.replace(",", "")
    if suffix and len(s) > 1 and (power := _SUFFIXES.get(s[-1].upper())) is not None:
        float(s[:-1])  # a ValueError for what is no number, as without a suffix
        x = float(Decimal(s[:-1]).scaleb(power)) if math.isfinite(float(s[:-1])) else math.inf
    else:
        x = float(s)
    if not math.isfinite(x):
        raise ValueError(f"{text.strip()!r} is no price or size")
    return x


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


def _headerless_bars(rows: Sequence[Sequence[str]]) -> list[str] | None:
    """A header for header-less bar rows, when they tell it: a time (one cell, or a date and a clock as MetaTrader 4
    and Kibot write them), then four prices whose second is the highest and third the lowest of the row in
    (almost) every row, Open,High,Low,Close as FirstRate, Kibot, MetaTrader 4, histdata.com and Kraken's OHLCVT
    write them; a number after them is the volume (a price-sized one beside the row's prices an adjusted close,
    the number after it the volume, as pandas writes yfinance's frame without its header), anything further is
    left out. None when the rows do not say so: another file's columns cannot be told."""
    first = [c.strip() for c in rows[0]]
    clock = len(first) > 1 and _CLOCK.match(first[1]) is not None
    t = 2 if clock else 1
    if len(first) < t + 4:
        return None
    ordered = priced = pricelike = 0
    volume = len(first) > t + 4
    for r in rows:
        if len(r) != len(first):
            continue
        try:
            o, h, lo, c = (float(x) for x in r[t:t + 4])
        except ValueError:
            continue
        priced += 1
        ordered += lo <= min(o, c) and h >= max(o, c)
        if volume:
            try:
                v = float(r[t + 4])
            except ValueError:
                volume = False
            else:
                pricelike += 0.5 * lo <= v <= 2.0 * h
    if not priced or ordered < 0.99 * priced:
        return None
    names = [*["date", "time"][:t], "open", "high", "low", "close"]
    if volume and pricelike >= 0.99 * priced:  # an adjusted close (pandas' to_csv(header=False) of yfinance's
        names.append("adj close")             # Date,Open,High,Low,Close,Adj Close,Volume), not a volume
        volume = len(first) > t + 5 and all(_number(r[t + 5]) for r in rows if len(r) == len(first))
    names += ["volume"] if volume else []
    return names + [f"column {i}" for i in range(len(names), len(first))]


def _number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _is_data(row: Sequence[str]) -> bool:
    """Whether a first row is data rather than a header: no cell with a word in it, and a number (MetaTrader 4's,
    Kraken's, FirstRate's, histdata's exports have no header)."""
    cells = [c.strip() for c in row if c.strip()]
    return bool(cells) and not any(re.search(r"[A-Za-z]{2}", c) for c in cells) and any(
        c[:1].isdigit() for c in cells)


def _day_first(values: Sequence[str], local: bool = False) -> bool:
    """Whether a file's D/M/Y-or-M/D/Y dates put the day first: a first part above 12 says so, a second part above
    12 says the month is first; a file that never says is read month first (US), with a warning, unless its dates
    are dotted (02.01.2024: day first wherever dots are written) or its header is in another language than English
    (`local`: Investing.com's French 03/01/2024 is the 3rd of January). Every row is looked at: an intraday file's
    first hundreds of rows are one day, which may well be the 1st to the 12th."""
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
    if dotted or (local and firsts):
        return True
    if firsts:
        logger.warning("replay: dates such as %r could be day or month first; read month first (M/D/Y)",
                       values[0])
    return False


def _decimal_comma(body: Sequence[Sequence[str]], columns: Sequence[int], delimiter: str,
                   numbers: Sequence[int] = (), european: bool = False) -> bool:
    """Whether a file's numbers are written with a decimal comma, told by its prices: some that only read so and
    none that only read with a decimal point (a ";" file of Finam's 272.5000000 has points, a tab file may have
    commas, and Investing.com's German or French downloads quote "184,25" in a comma-separated file). Prices that
    never tell (1.234: 1234 grouped, or 1.234) are told by the file's numbers (`numbers`: the volumes too):
    1.234.567 groups with points, so a comma is the decimal mark (1,234,567 the other way round); prices with
    points and no comma have decimal points (a ";" file of 151.234 yen was read as 151234), unless the file is
    `european` (";" between columns and dates as 02.01.2024: its 16.754 is the DAX at 16754, a decimal would be
    written 16754,00); prices with commas beside a 12345 written without a group have decimal commas. Else by the
    separator (";": a comma)."""
    comma = point = False
    for r in body:
        for i in columns:
            if i < len(r) and (cell := r[i].strip()):
                comma = comma or _DECIMAL_COMMA.search(cell) is not None
                point = point or _DECIMAL_POINT.search(cell) is not None
        if comma and point:
            break
    if comma != point:
        return comma
    if delimiter == ",":
        return False  # "1,234" quoted in a comma-separated file: thousands, as US downloads write them
    cells = [c for r in body for i in {*columns, *numbers} if i < len(r) and (c := r[i].strip().lstrip("$"))]
    if any(_GROUPED.match(c) for c in cells):  # 1.234.567 or 1,234,567: that mark groups, the other is decimal
        return "." in next(c for c in cells if _GROUPED.match(c))
    marks = {m for r in body for i in columns if i < len(r) for m in ".," if m in r[i]}
    if marks == {"."}:
        return european
    if marks == {","} and any(c.isdigit() and len(c) > 3 for c in cells):
        return True
    return delimiter == ";"


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
    """A bar, tick or quote CSV (the formats in the module docstring) -> bars, trades or quotes sorted by time (then
    symbol); rows without a time or OHLC (price; bid and ask) skipped (counted); a file none of whose rows can be
    read, a ValueError."""
    return [MarketDataPoint(**r) for r in parse_rows(text, symbol, time_zone=time_zone, interval=interval,
                                                      source=source, origin=origin)]


Row = dict[str, Any]  # a record's fields, MarketDataPoint(**row): a fifth of a point's memory until it is sent


def parse_rows(text: str, symbol: str | None = None, *, time_zone: str = "America/New_York",
               interval: str | None = None, source: str = SOURCE, origin: str | None = None,
               unreadable: list[tuple[int, str, str]] | None = None) -> list[Row]:
    """parse_csv's records as their fields: a million ticks held as points took 3 GB, as fields a fifth of that;
    the replay source builds each batch's points as it sends them. Every symbol is checked against the record
    model here, so a file the model refuses is refused whole, as parse_csv refuses it. `unreadable` collects the
    rows that hold something that cannot be read (a date such as 2024-13-45, a price "n/a", more cells than the
    header) as (row number after the header, the row, why); a row with nothing in its needed cells (Yahoo's
    `null` rows) is no data and only counted."""
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
        if _binance_klines(rows):
            rows = [list(_BINANCE_KLINE), *rows]
        elif (header := _headerless_bars(rows)) is not None:
            logger.info("replay: %s has no header; read as %s (its highs and lows tell the columns)",
                        origin or "csv", ",".join(header))
            rows = [header, *rows]
        else:
            raise ValueError(f"no header: the first row {rows[0][:8]!r} is data, and which column is which cannot "
                             f"be told without names: add a header row such as Date,Time,Open,High,Low,Close,Volume "
                             f"(DateTime,Bid,Ask,Volume for bid/ask ticks)")
    names = [_VENDOR_NAMES.get(n, n) for n in (_norm(c) for c in rows[0])]
    local = not {"close", "open", "price"} & set(names) and bool(_LOCAL_NAMES.keys() & set(names))
    if local:
        names = [_LOCAL_NAMES.get(n, n) for n in names]
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
        if date_col < 0 and names[0] == "" and len(names) > 1:
            date_col = 0  # pandas' to_csv() of a frame whose time index has no name: ",Open,High,..."
        if date_col < 0:
            raise ValueError(f"no date column in header {rows[0]!r}")
        if names[date_col] == "date" and "time" in names:  # Date,Time,...: one instant in two columns
            time_col = names.index("time")
        body = rows[1:]
        symbol_col = next((names.index(n) for n in _SYMBOL_NAMES if n in names), -1)
        column = [r[symbol_col].strip() for r in body if len(r) > symbol_col] if symbol_col >= 0 else []
        # a "name" column of company names, or of CoinMarketCap's numeric id (2781): not tickers. A symbol or ticker
        # column may be all digits: Shanghai's 600519, Tokyo's 7203, Hong Kong's 0700 are listings.
        named = symbol_col >= 0 and names[symbol_col] == "name"
        if symbol_col >= 0 and not (column and all(0 < len(v) <= 24 and " " not in v and not (named and v.isdigit())
                                                   for v in column)):
            symbol_col = -1
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
    # A bid and an ask and no open: quotes. Beside a price or a last, the file stays the trades it was read as
    # (the bid and ask then are the trades' prevailing quote, not read); MetaTrader 5's LAST is its trades' own.
    sides = {_QUOTE_FIELDS.get(n) for n in names}
    metatrader = all(c.strip()[:1] == "<" for c in rows[0] if c.strip())  # <DATE>, <BID>: MetaTrader's own header
    quotes = "open" not in names and {"bid", "ask"} <= sides and (metatrader or not {"price", "close"} & set(names))
    # A price and no open: trades. A Close (or Last) alone is one too, with or without sizes: the record model
    # takes a trade without a size (volume None), which the volume checks leave out rather than judge as zero.
    trades = not quotes and "open" not in names and (
        "price" in names or ("close" in names and not {"high", "low"} & set(names)))
    if trades and "price" not in names:
        names = ["price" if n == "close" else n for n in names]
    carry = quotes and metatrader  # empty cells: unchanged, carried forward once the rows are in time order
    fields, needed = (_METATRADER_TICK_FIELDS if carry else _QUOTE_FIELDS, ("bid", "ask")) if quotes else \
        (_TRADE_FIELDS, ("price",)) if trades else (_BAR_FIELDS, ("open", "high", "low", "close"))
    hint = "" if quotes or not sides & {"bid", "ask"} else \
        " (quotes are read from a bid and an ask column, with no open, price or last beside them)"
    if missing := [k for k in needed if k not in {fields.get(n) for n in names}]:
        raise ValueError(f"no {', '.join(missing)} column in header {rows[0][:8]!r}{hint}")
    # Dukascopy's "Gmt time": naive times that say they are UTC
    tz = ZoneInfo("UTC") if re.search(r"\b(?:gmt|utc)\b", names[date_col]) else ZoneInfo(time_zone)
    price_cols = [i for i, n in enumerate(names) if i not in skip and fields.get(n) in needed]
    number_cols = [i for i, n in enumerate(names) if i not in skip and n in fields]
    dates = [r[date_col].strip() for r in body[:200] if len(r) > date_col]
    european = delimiter == ";" and any((m := _SLASH_DATE.match(d)) and m[2] == "." and len(m[1]) <= 2 for d in dates)
    decimal_comma = _decimal_comma(body, price_cols, delimiter, number_cols, european)
    day_first = _day_first([r[date_col] for r in body if len(r) > date_col], local)
    parsed: list[tuple[datetime, bool, str, dict[str, Any]]] = []
    skipped = 0
    for number, row in enumerate(body, 1):
        if any(c.strip() for c in row[len(names):]):  # more cells than the header: "1,234.5" unquoted, say
            skipped += 1
            if unreadable is not None:
                unreadable.append((number, delimiter.join(row), f"{len(row)} cells, the header has {len(names)}"))
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
                    try:
                        value = _float(cell, decimal_comma, key == "volume")
                    except ValueError:
                        if key not in _EXTRA_META:
                            raise
                        value = None
                    groups.setdefault(str(tickers[i]) or own, {})[key] = value
        except (ValueError, IndexError, OverflowError, OSError) as exc:
            skipped += 1
            if unreadable is not None:
                unreadable.append((number, delimiter.join(row), f"{type(exc).__name__}: {exc}"))
            continue
        for sym, values in groups.items():
            if not sym or (not carry and any(values.get(k) is None for k in needed)):
                skipped += 1
                if unreadable is not None and sym and any(values.get(k) is not None for k in needed):
                    # a row cut short (some of its prices read, the others missing): a dead letter, as any row
                    # that cannot be read; a row with none of them (a ticker not yet listed in a multi-ticker
                    # file) is skipped as before
                    missing = ", ".join(k for k in needed if values.get(k) is None)
                    unreadable.append((number, delimiter.join(row), f"no {missing}"))
                continue
            parsed.append((ts, midnight, sym, values))
    ticks: list[tuple[datetime, bool, str, dict[str, Any]]] = []  # MetaTrader's trades, beside its quotes
    if carry:
        parsed, ticks, empty = _carry_unchanged(parsed, origin)
        skipped += empty
    if body and not parsed and not ticks:
        raise ValueError(f"none of its {len(body)} rows has a time and {', '.join(needed)} that could be read "
                         f"(header {rows[0][:8]!r}, first row {body[0][:8]!r}){hint}")
    if quotes:
        out = _tick_rows(parsed, skipped, kind=DataType.QUOTE, source=source, origin=origin)
        if ticks:
            out += _tick_rows(ticks, 0, kind=DataType.TRADE, source=source, origin=origin)
            out.sort(key=_time_symbol)
        return _checked(out)
    if trades and parsed and all(m for _, m, _, _ in parsed):
        # Date,Close: one price a day (an index's or a fund's close, FRED's SP500). A trade is an instant, and a date
        # is none; it is the day's close-only bar, open = high = low = close, as Yahoo sends a fund's NAV (the
        # detectors know such streams: no open to judge a jump by). metadata.close_only says the range is not known.
        parsed = [(ts, m, sym, {**{k: v for k, v in values.items() if k != "price"},
                                **dict.fromkeys(("open", "high", "low", "close"), values["price"]), "close_only": True})
                  for ts, m, sym, values in parsed]
        trades = False
    if trades:
        return _checked(_tick_rows(parsed, skipped, kind=DataType.TRADE, source=source, origin=origin))
    daily = bool(parsed) and all(m for _, m, _, _ in parsed)
    stamps = [datetime(t.year, t.month, t.day, tzinfo=UTC) if daily else t.astimezone(UTC) for t, _, _, _ in parsed]
    label = interval or infer_interval(stamps, daily)
    out: list[Row] = []
    for ts, (_, _, sym, values) in zip(stamps, parsed, strict=True):
        bar = {k: values.get(k) for k in _BAR_FIELDS.values()}
        meta: dict[str, Any] = {k: v for k, v in values.items()
                                if k not in bar and v is not None and _NO_EVENT.get(k) != v}
        if origin:
            meta["file"] = origin
        out.append({"symbol": sym, "timestamp": ts, "source": source, "data_type": DataType.BAR,
                    "interval": label or None, "item_id": label, "metadata": meta, **bar})
    if skipped:
        logger.info("replay: %s: skipped %d rows without a time or OHLC", origin or "csv", skipped)
    out.sort(key=_time_symbol)
    return _checked(out)


def _time_symbol(row: Row) -> tuple[datetime, str]:
    return row["timestamp"], row["symbol"]


def _checked(rows: list[Row]) -> list[Row]:
    """The rows, once a record of each symbol has passed the record model (a symbol of 65 characters is refused
    here, not at the batch that would have sent it)."""
    firsts: dict[str, Row] = {}
    for r in rows:
        firsts.setdefault(r["symbol"], r)
    for r in firsts.values():
        MarketDataPoint(**r)  # a ValidationError is a ValueError: the file is refused, naming why
    return rows


def _oldest_first(parsed: Sequence[tuple[datetime, bool, str, dict[str, Any]]]
                  ) -> list[tuple[datetime, bool, str, dict[str, Any]]]:
    """A tick file's rows with each symbol's oldest first: a symbol whose first row is newer than its last is read
    from the end (Nasdaq's and Investing.com's downloads are written newest first). Per symbol: a file of several
    symbols' blocks (AAPL's day, then MSFT's earlier day) is not newest first."""
    ends: dict[str, tuple[datetime, datetime]] = {}
    for ts, _, sym, _ in parsed:
        ends[sym] = (ends[sym][0], ts) if sym in ends else (ts, ts)
    newest_first = {sym for sym, (first, last) in ends.items() if first > last}
    return [r for r in parsed if r[2] not in newest_first] + [r for r in reversed(parsed) if r[2] in newest_first]


def _carry_unchanged(parsed: Sequence[tuple[datetime, bool, str, dict[str, Any]]], origin: str | None
                     ) -> tuple[list[tuple[datetime, bool, str, dict[str, Any]]],
                                list[tuple[datetime, bool, str, dict[str, Any]]], int]:
    """MetaTrader 5's tick rows -> (quotes, trades, rows with nothing in them). An empty cell is a value unchanged
    since the symbol's previous tick (its FLAGS say which changed): a row that changed the bid or the ask is a
    quote of the bid and the ask then known, one with a LAST or a VOLUME is a trade at the last price (and volume)
    then known, and one with both is both. A quote waits until both sides are known, a trade until a price is: the
    rows before (an export's first ticks may carry one side only) are skipped and counted, with a warning, rather
    than sent as half a quote that validation refuses (quote.missing)."""
    known: dict[str, dict[str, float]] = {}
    quotes: list[tuple[datetime, bool, str, dict[str, Any]]] = []
    trades: list[tuple[datetime, bool, str, dict[str, Any]]] = []
    early = empty = 0
    for ts, midnight, sym, values in _oldest_first(parsed):
        changed = {k: v for k, v in values.items() if k in ("bid", "ask", "price", "volume") and v is not None}
        if not changed:
            empty += 1
            continue
        state = known.setdefault(sym, {})
        state.update(changed)
        held = False
        if "bid" in changed or "ask" in changed:
            if "bid" in state and "ask" in state:
                quotes.append((ts, midnight, sym, {"bid": state["bid"], "ask": state["ask"]}))
            else:
                held = True
        if "price" in changed or "volume" in changed:
            if "price" in state:
                trades.append((ts, midnight, sym, {"price": state["price"], "volume": state.get("volume")}))
            else:
                held = True
        early += held
    if early:
        logger.warning("replay: %s: skipped %d ticks before both bid and ask (or a last price) were known: "
                       "MetaTrader writes only what changed", origin or "csv", early)
    return quotes, trades, empty


def _tick_rows(parsed: Sequence[tuple[datetime, bool, str, dict[str, Any]]], skipped: int, *, kind: DataType,
               source: str, origin: str | None) -> list[Row]:
    """A tick file's rows -> trades or quotes. item_id "n": the row's place among the file's rows of its symbol
    and instant (equal prints of one millisecond are two trades, two quotes of one millisecond two quotes rather
    than one revising the other, and a replay of the file maps onto the same keys), counted from the oldest row: a
    newest-first copy of the same ticks (as Nasdaq's and Investing.com's downloads are written) gives each print
    the key the oldest-first file gives it."""
    seen: dict[tuple[str, datetime], int] = {}
    out: list[Row] = []
    meta: dict[str, Any] = {"file": origin} if origin else {}  # one for the file's rows: each point copies it
    names = _TICK_FIELDS[kind]
    for ts, _, sym, values in _oldest_first(parsed):
        at = ts.astimezone(UTC)
        n = seen[sym, at] = seen.get((sym, at), -1) + 1
        out.append({"symbol": sym, "timestamp": at, "source": source, "data_type": kind, "item_id": str(n),
                    "metadata": meta, **{k: values.get(k) for k in names}})
    if skipped:
        logger.info("replay: %s: skipped %d rows without a time or %s", origin or "csv", skipped,
                    "price" if kind == DataType.TRADE else "bid and ask")
    out.sort(key=_time_symbol)
    return out


@dataclass(eq=False)
class ReplayFile:
    """A file as its first reading found it: its symbols, its first and last time, its row count, and its rows while
    they are held."""

    path: Path
    symbols: frozenset[str]
    first: datetime
    last: datetime
    count: int
    rows: list[Row] | None
    order: int = 0  # its place among the files: rows of one instant and symbol go out in this order, as before
    stamp: tuple[int, int] = (0, 0)  # its modification time (ns) and size when first read


# What a download's name adds to its symbol: Investing.com's " Historical Data" (in its languages; a browser's
# " (1)" after a second download), MetaTrader 5's exports' timeframe and first and last bar (EURUSD_H1_202401020000_
# 202403291600; its tick exports have no timeframe)
_DOWNLOAD_NAME = re.compile(r"\s+(?:historical data|historische daten|donn[ée]es historiques|datos hist[óo]ricos|"
                            r"dati storici|dados hist[óo]ricos)(?:\s*\(\d+\))?$", re.IGNORECASE)
_METATRADER_NAME = re.compile(r"^(.+?)(?:_(?:M|H)\d{1,2}|_D1|_W1|_MN1)?_\d{12}_\d{12}$")


def stem_symbol(path: Path) -> str:
    """A file's symbol from its name: AAPL.csv -> AAPL, "TSLA Historical Data.csv" -> TSLA,
    EURUSD_H1_202401020000_202403291600.csv -> EURUSD (their rows were all refused: symbol.pattern)."""
    stem = _DOWNLOAD_NAME.sub("", path.stem.strip())
    if m := _METATRADER_NAME.match(stem):
        stem = m.group(1)
    return stem.upper()


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size


def replay_groups(files: Sequence[ReplayFile], *, by_symbol: bool, held_rows: int = 0) -> list[list[ReplayFile]]:
    """The files in the groups their rows are replayed in, one group's rows in memory at a time. Groups never overlap
    in time, so each group's rows, sorted, then the next group's, are the one timeline of every file's rows. With
    `by_symbol` (a replay at full speed, whose order matters within a symbol only, as Kafka keeps no order across
    partitions either) files that share no symbol are never in one group: a folder of per-symbol files is replayed
    a file at a time, not held whole (bench/replay_memory.py). Consecutive groups are then joined while they hold
    no more than `held_rows` rows together: a replay that fits is one timeline of every symbol, as before, and a
    larger one still sends many symbols at once (a symbol after another would keep one partition busy at a
    time, the other workers idle)."""
    if by_symbol:  # components of files linked by a shared symbol
        parent = list(range(len(files)))

        def root(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        owner: dict[str, int] = {}
        for i, f in enumerate(files):
            for sym in f.symbols:
                parent[root(i)] = root(owner.setdefault(sym, i))
        parts: dict[int, list[ReplayFile]] = {}
        for i, f in enumerate(files):
            parts.setdefault(root(i), []).append(f)
        components = list(parts.values())
    else:
        components = [list(files)]
    groups: list[list[ReplayFile]] = []
    for component in components:
        end: datetime | None = None
        for f in sorted(component, key=lambda f: f.first):  # stable: files of one instant keep their order
            if end is None or f.first > end:
                groups.append([])
            groups[-1].append(f)
            end = f.last if end is None or f.last > end else end
    if by_symbol:
        groups.sort(key=lambda g: g[0].first)
    joined: list[list[ReplayFile]] = []
    size = 0
    for group in groups:
        rows = sum(f.count for f in group)
        if joined and size + rows <= held_rows:
            joined[-1] += group
            size += rows
        else:
            joined.append(list(group))
            size = rows
    return joined


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
        """Every file's records, sorted by time; a file that cannot be read is logged and skipped."""
        return [MarketDataPoint(**r) for r in self.load_rows()]

    def load_rows(self, unreadable: list[RawRecord] | None = None, skipped: list[str] | None = None) -> list[Row]:
        """load()'s records as their fields (parse_rows), every file's at once. `unreadable` collects the rows that
        could not be read, as dead letters (producers.base.unreadable); `skipped`, why each file that could not be
        read was skipped."""
        rows: list[Row] = []
        for path in self.paths():
            rows.extend(self.read(path, unreadable, skipped) or ())
        rows.sort(key=_time_symbol)
        return rows

    def read(self, path: Path, unreadable: list[RawRecord] | None = None,
             skipped: list[str] | None = None) -> list[Row] | None:
        """One file's rows, oldest first; None: the file could not be read (logged, and its reason added to
        `skipped`)."""
        s = self.settings
        bad: list[tuple[int, str, str]] = []
        symbol = self.symbol_for(path) or stem_symbol(path)
        try:
            data = path.read_bytes()
            # UTF-16 with its byte-order mark: what Windows tools and MetaTrader's Unicode files write
            text = data.decode("utf-16") if data[:2] in (b"\xff\xfe", b"\xfe\xff") else data.decode("utf-8")
            del data
            kw: dict[str, Any] = {"time_zone": s.time_zone, "interval": s.interval, "origin": path.name,
                                  "unreadable": bad}
            try:
                rows = parse_rows(text, self.symbol_for(path), **kw)
            except NoSymbol:  # no Ticker row either: the file's name is the symbol
                bad.clear()
                rows = parse_rows(text, stem_symbol(path), **kw)
            del text
        except (OSError, ValueError, UnicodeDecodeError, csv.Error) as exc:  # csv.Error: a stray quote
            logger.error("replay: %s skipped: %s: %s", path, type(exc).__name__, exc)
            if skipped is not None:
                skipped.append(f"{path}: {type(exc).__name__}: {exc}")
            return None
        if bad:
            logger.warning("replay: %s: %d rows could not be read (the first, row %d: %s): sent to the "
                           "dead-letter topic (rule source.unreadable)", path.name, len(bad), bad[0][0], bad[0][2])
            if unreadable is not None:
                unreadable += [unreadable_record(SOURCE, symbol, where=f"{path.name} row {n}", content=row,
                                                 error=why) for n, row, why in bad]
        rows.sort(key=_time_symbol)
        return rows

    def survey(self, unreadable: list[RawRecord] | None = None, skipped: list[str] | None = None,
               paths: Sequence[Path] | None = None) -> list[ReplayFile]:
        """Every file (of `paths`, else of the settings) read once: its symbols and time span, and its rows while
        the files read so far hold no more than `held_rows` (the others are read again when their turn comes)."""
        room = self.settings.held_rows
        out: list[ReplayFile] = []
        for path in self.paths() if paths is None else paths:
            try:
                stamp = _stamp(path)
            except OSError:
                stamp = (0, 0)  # read() says why it cannot be read
            rows = self.read(path, unreadable, skipped)
            if not rows:
                continue
            held = len(rows) <= room
            room -= len(rows) if held else 0
            out.append(ReplayFile(path, frozenset(r["symbol"] for r in rows), rows[0]["timestamp"],
                                  rows[-1]["timestamp"], len(rows), rows if held else None, len(out), stamp))
        return out

    def group_rows(self, group: Sequence[ReplayFile]) -> list[Row]:
        """A group's rows in time order; each file's held rows are let go, a file not held is read again."""
        rows: list[Row] = []
        for f in sorted(group, key=lambda f: f.order):  # the files' order: a later file's revision comes later
            if f.rows is not None:
                got, f.rows = f.rows, None
            else:
                got = self._read_again(f)
            rows.extend(got)
        rows.sort(key=_time_symbol)
        return rows

    def _read_again(self, f: ReplayFile) -> list[Row]:
        """A file not held, read a second time. Changed or gone since its first reading, it fails the replay: its
        groups were planned from that reading, and its rows now are not the ones counted (nor, maybe, in order)."""
        try:
            same = _stamp(f.path) == f.stamp
        except OSError as exc:
            same, why = False, f"{type(exc).__name__}: {exc}"
        else:
            why = "its size or modification time differs"
        rows = self.read(f.path) if same else None
        if rows is not None and len(rows) != f.count:
            same, why = False, f"{len(rows)} rows now, {f.count} then"
        if not same or rows is None:
            raise SourceError(f"replay: {f.path} changed while it was replayed ({why if not same else 'unreadable'});"
                              f" its rows were not sent. Replay it again (rows dedupe by key), or raise "
                              f"sources.replay.held_rows above the files' rows to read each file once")
        return rows

    async def fetch(self, session: aiohttp.ClientSession | None = None) -> AsyncIterator[list[Record]]:
        s = self.settings
        if not s.files:  # nothing to replay is a setting left out, not a replay that finished
            raise ConfigError("replay: no files to replay: set sources.replay.files (CSV files, folders or globs), "
                              "e.g. TICKFLOW_SOURCES__REPLAY__FILES='[\"data/*.csv\"]'")
        # Off the event loop: a million ticks take ~20 s to read, which the worker's heartbeats, commits and web
        # server would otherwise wait for.
        unreadable: list[RawRecord] = []
        skipped: list[str] = []
        paths = self.paths()
        files = await asyncio.to_thread(self.survey, unreadable, skipped, paths)
        if not paths or (not files and not unreadable and len(skipped) == len(paths)):
            # a replay of nothing is no replay that finished: `python -m producers replay` exits 2, /health says
            # failed, rather than "sent 0" and success
            more = f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
            raise ConfigError(f"replay: {', '.join(s.files)} match no file" if not paths else
                              f"replay: no file could be read: {skipped[0]}{more}")
        groups = replay_groups(files, by_symbol=s.speed <= 0, held_rows=s.held_rows)
        logger.info("replay: %d records from %d files (%d groups) at speed %s", sum(f.count for f in files),
                    len(paths), len(groups), s.speed or "max")
        for i in range(0, len(unreadable), s.batch_size):  # first: what was read wrong is known from the start
            yield list(unreadable[i:i + s.batch_size])
        if not files:
            logger.warning("replay: nothing to replay in %s", ", ".join(s.files))
            return
        batch: list[Record] = []
        if s.speed <= 0:
            for group in groups:
                rows = await asyncio.to_thread(self.group_rows, group)
                i = 0
                while i < len(rows):  # a batch may span groups: a folder of small files is not sent file by file
                    take = s.batch_size - len(batch)
                    batch += [MarketDataPoint(**r) for r in rows[i:i + take]]
                    i += take
                    if len(batch) >= s.batch_size:
                        yield batch
                        batch = []
                        await asyncio.sleep(0)
                del rows
            if batch:
                yield batch
            return
        # Each row is due at start + (its time since the first row) / speed, with every wait capped; rows
        # already due go out together, so a slow consumer does not stretch the replay.
        # The clock starts at the first row, once its group is read (a file read again can take seconds).
        start = offset = 0.0
        previous: datetime | None = None
        for group in groups:
            if batch:  # rows already due go out before the next group is read, not after
                yield batch
                batch = []
            rows = await asyncio.to_thread(self.group_rows, group)
            for r in rows:
                at = r["timestamp"]
                if previous is None:
                    start, gap = time.monotonic(), 0.0
                else:
                    gap = (at - previous).total_seconds() / s.speed
                previous = at
                offset += min(gap, s.max_wait_seconds) if s.max_wait_seconds else gap
                wait = start + offset - time.monotonic()
                if wait > 0:
                    if batch:
                        yield batch
                        batch = []
                        wait = start + offset - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                batch.append(MarketDataPoint(**r))
                if len(batch) >= s.batch_size:
                    yield batch
                    batch = []
            del rows
        if batch:
            yield batch
