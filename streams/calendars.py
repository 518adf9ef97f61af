"""Exchange calendars: which days are sessions, when a market is open, and which trading session (pre,
regular, post) an instant falls in. A leaf (it imports nothing of tickflow), so the detectors
(streams/anomalies/, which re-exports it) and the providers (producers/, which may import leaves only) read
the same calendars.

The calendars come from the `exchange_calendars` package (holidays, early closes and ad-hoc closures such
as 2001-09-11..14 or Hurricane Sandy 2012-10-29/30). Building one takes a fraction of a second and its
pandas objects are slow to query per record, so each calendar is built once per process (lazily, on the
first symbol that needs it) and reduced to sorted integer arrays: sessions as UTC day numbers, opens and
closes as Unix seconds; a query is a binary search.

A symbol's calendar: the settings' `exchanges` map, else the provider's metadata (`exchange` as a MIC),
else the symbol's form (.DE XETR, .L XLON, =X FX 24/5, =F futures CMES, -USD crypto 24/7, BTCUSDT / BTC/USDT /
BINANCE:... crypto 24/7, EURUSD / OANDA:EUR_USD FX 24/5, ^N225 XTKS, ...), else `default_exchange`.
"""

from __future__ import annotations

import bisect
import logging
import threading
from datetime import date
from typing import Any

logger = logging.getLogger(__name__)

_EPOCH = date(1970, 1, 1).toordinal()
_FIRST_YEAR = 1960  # calendars are built from here when their history goes back that far

# Yahoo symbol suffix -> ISO 10383 MIC as exchange_calendars names it.
_SUFFIX = {
    "DE": "XETR", "F": "XFRA", "L": "XLON", "PA": "XPAR", "AS": "XAMS", "BR": "XBRU", "MI": "XMIL", "MC": "XMAD",
    "SW": "XSWX", "VI": "XWBO", "ST": "XSTO", "CO": "XCSE", "HE": "XHEL", "OL": "XOSL", "LS": "XLIS",
    "IR": "XDUB", "TO": "XTSE", "V": "XTSX", "T": "XTKS", "HK": "XHKG", "AX": "XASX", "NZ": "XNZE",
    "SI": "XSES", "KS": "XKRX", "TW": "XTAI", "SS": "XSHG", "SZ": "XSHG", "BO": "XBOM", "NS": "XBOM",
    "SA": "BVMF", "MX": "XMEX", "JO": "XJSE", "WA": "XWAR", "IS": "XIST", "KQ": "XKRX", "TWO": "XTAI",
    "PS": "XPHS", "JK": "XIDX", "BK": "XBKK", "KL": "XKLS", "PR": "XPRA", "BD": "XBUD",
    "SN": "XSGO", "BA": "XBUE", "SR": "XSAU", "CL": "XBOG", "IC": "XICE",
}
# Yahoo's futures (CL=F, ES=F, GC=F, ZN=F, 6E=F) trade on CME Globex nearly around the clock and on most US
# holidays (their daily bars of MLK, Presidents' and Labor Day exist): CMES. Not these roots: grains and livestock
# (CBOT/CME day sessions, closed on US holidays: CMES reported their holidays as missing days) and ICE's softs
# keep the default calendar.
_DAY_FUTURES = frozenset("ZC ZS ZW ZL ZM ZO ZR KE MWE XC XK XW YC YK LE HE GF DC KC CC SB CT OJ".split())
_CRYPTO_QUOTES = ("-USD", "-USDT", "-EUR", "-BTC", "-ETH", "-GBP", "-JPY")
# ISO 4217 codes of currencies, and of the metals and energy CFDs quoted like them: their pairs trade as FX
# does, 24/5.
_FIAT = frozenset(
    "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BRL BSD BTN BWP BYN BZD CAD CDF "
    "CHF CLP CNH CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GNF GTQ GYD "
    "HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL "
    "LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR "
    "PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP "
    "TRY TTD TWD TZS UAH UGX USD UYU UZS VES VND VUV WST XAF XCD XOF XPF YER ZAR ZMW ZWL "
    "XAU XAG XPT XPD XBR XTI XNG".split())
# Crypto assets seen as a pair's base (BTCGBP, ETH/USD, BTC-CAD), and the stablecoins quoted against any base.
_CRYPTO = frozenset(
    "BTC XBT ETH BNB SOL XRP ADA DOGE DOT LTC BCH LINK XLM TRX AVAX MATIC POL SHIB UNI ATOM ETC XMR FIL APT ARB "
    "OP NEAR ICP ALGO VET HBAR AAVE SUI PEPE TON EOS XTZ ZEC DASH NEO IOTA MKR COMP SNX CRV SAND MANA AXS GRT "
    "FTM EGLD THETA KSM CAKE RUNE INJ SEI TIA JUP WIF BONK STX IMX RNDR RENDER LDO QNT FET OCEAN AGIX KAS BSV".split())
_STABLE = ("FDUSD", "USDT", "USDC", "BUSD", "TUSD", "USDP")
# Exchange prefixes of Finnhub's (and TradingView's) symbols: crypto venues trade every day, FX brokers 24/5,
# stock exchanges their own calendar.
_CRYPTO_VENUES = frozenset(
    "BINANCE BINANCEUS COINBASE KRAKEN BITFINEX BITSTAMP GEMINI HUOBI HITBTC OKX OKEX BYBIT KUCOIN POLONIEX "
    "BITTREX BITMEX GATEIO MEXC CRYPTO".split())
_FX_VENUES = frozenset("OANDA FXCM FOREXCOM FXPRO ICMARKETS PEPPERSTONE SAXO FX FX_IDC".split())
_STOCK_VENUES = {"NSE": "XBOM", "BSE": "XBOM", "NASDAQ": "XNYS", "NYSE": "XNYS", "AMEX": "XNYS", "LSE": "XLON",
                 "XETRA": "XETR", "TSX": "XTSE", "ASX": "XASX", "HKEX": "XHKG", "TSE": "XTKS"}
# Yahoo's symbols of indexes traded elsewhere than New York (^GSPC, ^DJI, ^IXIC, ^RUT, ^VIX are the default's).
_INDEXES = {
    "^N225": "XTKS", "^FTSE": "XLON", "^FTMC": "XLON", "^GDAXI": "XETR", "^MDAXI": "XETR", "^FCHI": "XPAR",
    "^STOXX50E": "XETR", "^AEX": "XAMS", "^IBEX": "XMAD", "^SSMI": "XSWX", "^BFX": "XBRU", "^ATX": "XWBO",
    "^OMX": "XSTO", "^HSI": "XHKG", "^HSCE": "XHKG", "^AXJO": "XASX", "^AORD": "XASX", "^NZ50": "XNZE",
    "^STI": "XSES", "^KS11": "XKRX", "^KQ11": "XKRX", "^TWII": "XTAI", "^BSESN": "XBOM", "^NSEI": "XBOM",
    "^GSPTSE": "XTSE", "^BVSP": "BVMF", "^MXX": "XMEX", "^JKSE": "XIDX", "^KLSE": "XKLS", "^SET.BK": "XBKK",
    "000001.SS": "XSHG", "^SSEC": "XSHG", "399001.SZ": "XSHG", "^MERV": "XBUE", "^IPSA": "XSGO",
    "XU100.IS": "XIST", "^TA125.TA": "XTAE",
}


def _pair_calendar(base: str, quote: str) -> str | None:
    """'24/7' when a side is crypto, '24/5' for two currencies, None when it is no pair we know."""
    if not base.isalnum() or not quote.isalpha():
        return None
    if base in _CRYPTO or quote in _STABLE or (quote in _CRYPTO and base.isalpha() and base not in _FIAT):
        return "24/7"
    return "24/5" if base in _FIAT and quote in _FIAT else None


def _form_calendar(sym: str) -> str | None:
    """A pair's or a venue's calendar from the symbol's form: BINANCE:BTCUSDT, OANDA:EUR_USD, NSE:INFY, BTC/USDT,
    EUR/USD, BTC-CAD, BTCUSDT, 1INCHUSDT, XBTUSD, BTCGBP, EURUSD. None: not such a form (AAPL, BRK-B, WIKI/AAPL,
    HYUNDAI, SPXUSD: a ticker or a code of its own)."""
    if ":" in sym:
        venue, rest = sym.split(":", 1)
        venue = venue.replace(".", "").replace(" ", "").replace("-", "")
        if venue in _CRYPTO_VENUES:
            return "24/7"
        if venue in _FX_VENUES:
            return "24/5"
        if venue in _STOCK_VENUES:
            return _STOCK_VENUES[venue]
        sym = rest
    for sep in ("/", "_", "-"):
        if sep in sym:
            base, _, quote = sym.partition(sep)
            return _pair_calendar(base, quote)
    if not sym.isalnum() or len(sym) < 6:  # five characters or fewer: a ticker
        return None
    if any(sym.endswith(q) and len(sym) > len(q) + 1 for q in _STABLE):
        return "24/7"
    for n in (3, 4, 5):  # BTC|GBP, DOGE|USD, MATIC|USDT: a base we know and a quote
        if (got := _pair_calendar(sym[:n], sym[n:])) is not None and (sym[:n] in _CRYPTO or len(sym) == 6):
            return got
    return None


def exchange_for(symbol: str, exchanges: dict[str, str] | None = None, metadata: dict[str, Any] | None = None,
                 default: str | None = "XNYS") -> str | None:
    """The calendar name for a symbol (see the module docstring for the order); None: weekdays only."""
    sym = symbol.upper()
    if exchanges and (name := exchanges.get(sym) or exchanges.get(symbol)):
        return name
    if metadata and isinstance(mic := metadata.get("exchange"), str) and mic.upper() in _known():
        return mic.upper()
    if sym.endswith("=X"):
        return "24/5"
    if sym.endswith("=F") and sym[:-2] not in _DAY_FUTURES:
        return "CMES"
    if sym.endswith(_CRYPTO_QUOTES):
        return "24/7"
    if sym in _INDEXES:
        return _INDEXES[sym]
    if (form := _form_calendar(sym)) is not None:
        return form
    if "." in sym:
        suffix = sym.rsplit(".", 1)[1]
        if suffix in _SUFFIX:
            return _SUFFIX[suffix]
    return default


_known_names: frozenset[str] | None = None


def _known() -> frozenset[str]:
    global _known_names
    if _known_names is None:
        import exchange_calendars as xc

        _known_names = frozenset(xc.get_calendar_names(include_aliases=True))
    return _known_names


# exchange_calendars' CMES closes each session at 17:00 Chicago, the next one's open; Globex halts from 16:00 (the
# daily maintenance hour, and Friday's close): without it a live feed silent in that hour read as stale. A close
# at that local time moves to the halt; an early close (12:00 on a holiday) stays.
_HALT_BEFORE_OPEN: dict[str, tuple[str, int, int]] = {"CMES": ("America/Chicago", 17, 3600)}


def _halted(closes: list[float], zone: str, hour: int, seconds: int) -> list[float]:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    tz = ZoneInfo(zone)
    return [c - seconds if datetime.fromtimestamp(c, tz).hour == hour else c for c in closes]


def _seconds(column: Any) -> list[float | None]:
    """A column of exchange_calendars' UTC times as Unix seconds (None where it has none: NaT)."""
    ns = column.dt.as_unit("ns")
    return [None if missing else x / 1e9 for x, missing in zip(ns.astype("int64").tolist(), ns.isna().tolist(),
                                                                strict=True)]


def _holidays_before_rules(cal: Any) -> frozenset[int]:
    """The regular holidays (UTC day numbers) that exchange_calendars leaves among its sessions before 1970.

    It applies its holiday rules through a pandas CustomBusinessDay, which asks the rules' AbstractHolidayCalendar
    for its holidays over that class's default range, from 1970-01-01 (`start_date`) on: a calendar built from 1960
    has every regular holiday of the 1960s as a session (XNYS 1960-07-04, 1966-12-26), though the rules themselves
    go back further (Independence Day since 1864) and its ad-hoc closures are kept (1963-11-25, 1968's
    Wednesdays). An S&P 500 series of the 1960s (openintro's sp500_1950_2018) then read each holiday as a missing
    session: 89 false gaps."""
    import pandas as pd

    rules = cal.regular_holidays
    if rules is None or not len(cal.sessions):
        return frozenset()
    cut = pd.Timestamp(getattr(rules, "start_date", None) or "1970-01-01")
    first = cal.sessions[0]
    if first >= cut:
        return frozenset()
    held = rules.holidays(first, cut - pd.Timedelta(days=1))
    return frozenset(int(x // 86_400_000_000_000) for x in pd.DatetimeIndex(held).as_unit("ns").asi8)


class SessionCalendar:
    """One exchange's sessions as sorted arrays: day numbers (UTC date of the session label), and the spans the
    market is open (opens and closes in Unix seconds; a session with a lunch break is two). `None` name: the 24/7
    calendar (every day a session, always open)."""

    __slots__ = ("always_open", "closes", "days", "name", "opens")

    def __init__(self, name: str, days: list[int], opens: list[float], closes: list[float]) -> None:
        self.name = name
        self.days, self.opens, self.closes = days, opens, closes
        self.always_open = name == "24/7"

    @classmethod
    def build(cls, name: str) -> SessionCalendar:
        import exchange_calendars as xc

        try:
            cal = xc.get_calendar(name, start=f"{_FIRST_YEAR}-01-01")
        except Exception:  # its history starts later: from its first evaluable day (Tokyo 1997, Shanghai 1990)
            cal = xc.get_calendar(name)  # the package's own default range: its last 20 years only
            first = type(cal).bound_min()
            if first is not None and first < cal.first_session:
                cal = xc.get_calendar(name, start=first)
        missed = _holidays_before_rules(cal)
        days: list[int] = []
        # A session with a lunch break (Hong Kong, Tokyo, Shanghai) is open as two spans: the break is closed, so
        # its hour is no gap in a day's bars and no silence of a feed.
        opens: list[float] = []
        closes: list[float] = []
        for d, o, c, bs, be in zip((int(x // 86_400_000_000_000) for x in cal.sessions.as_unit("ns").asi8),
                                   _seconds(cal.opens), _seconds(cal.closes), _seconds(cal.break_starts),
                                   _seconds(cal.break_ends), strict=True):
            if d in missed:
                continue
            days.append(d)
            if bs is not None and be is not None and o < bs < be < c:
                opens += (o, be)
                closes += (bs, c)
            else:
                opens.append(o)
                closes.append(c)
        if name in _HALT_BEFORE_OPEN:
            closes = _halted(closes, *_HALT_BEFORE_OPEN[name])
        return cls(name, days, opens, closes)

    def covers(self, day: int) -> bool:
        return bool(self.days) and self.days[0] <= day <= self.days[-1]

    def is_session(self, day: int) -> bool:
        if self.always_open:
            return True
        i = bisect.bisect_left(self.days, day)
        return i < len(self.days) and self.days[i] == day

    def sessions_between(self, d0: int, d1: int) -> int:
        """Sessions strictly between two UTC day numbers."""
        if d1 - d0 <= 1:
            return 0
        if self.always_open:
            return d1 - d0 - 1
        return max(0, bisect.bisect_left(self.days, d1) - bisect.bisect_right(self.days, d0))

    def session_of(self, ts: float) -> int | None:
        """The index of the session open at `ts` (open <= ts < close), or None when the market is closed."""
        i = bisect.bisect_right(self.opens, ts) - 1
        return i if i >= 0 and ts < self.closes[i] else None

    def is_open(self, ts: float) -> bool:
        return self.always_open or self.session_of(ts) is not None

    def open_since(self, ts: float) -> float | None:
        """When the session open at `ts` opened (None when closed; -inf when always open)."""
        if self.always_open:
            return float("-inf")
        i = self.session_of(ts)
        return None if i is None else self.opens[i]


# Extended hours around the regular session, for markets whose pre- and post-market trading providers report
# (Alpha Vantage's intraday bars, Yahoo's prepost charts and quotes): seconds before the open and after the
# close. US equities: 04:00 ET to the open, the close to 20:00 ET; on an early-close day (13:00) the
# post-market ends four hours after it, at 17:00 ET, as the US venues run it. Others: regular hours only.
_US_EXTENDED = (5.5 * 3600, 4 * 3600)
EXTENDED_HOURS: dict[str, tuple[float, float]] = {
    name: _US_EXTENDED for name in ("XNYS", "NYSE", "XNAS", "NASDAQ", "XASE", "ARCX", "BATS")}


def trading_session(ts: float, name: str | None) -> str | None:
    """The session of `name`'s calendar an instant (Unix seconds) falls in: "regular" (open <= ts < close;
    24/5 and 24/7 markets whenever they are open), "pre" (in the extended hours before a session's open),
    "post" (in those after its close, an early close included). None: in no session (overnight, a weekend
    or a holiday), or no calendar for `name`."""
    cal = calendar(name)
    if cal is None:
        return None
    if cal.always_open or cal.session_of(ts) is not None:
        return "regular"
    if name is None or name not in EXTENDED_HOURS:
        return None
    before, after = EXTENDED_HOURS[name]
    i = bisect.bisect_right(cal.opens, ts) - 1  # the last session that opened at or before ts (it has closed)
    if i >= 0 and cal.closes[i] <= ts < cal.closes[i] + after:
        return "post"
    if i + 1 < len(cal.opens) and cal.opens[i + 1] - before <= ts < cal.opens[i + 1]:
        return "pre"
    return None


_cache: dict[str, SessionCalendar | None] = {}
_lock = threading.Lock()


def calendar(name: str | None) -> SessionCalendar | None:
    """The named calendar, built once and cached; None for no name or one that cannot be built (logged once),
    in which case the callers fall back to weekdays."""
    if name is None:
        return None
    cal = _cache.get(name, False)
    if cal is not False:
        return cal  # type: ignore[return-value]
    with _lock:
        if name not in _cache:
            try:
                _cache[name] = _weekdays_24_5() if name == "24/5" else SessionCalendar.build(name)
            except Exception as exc:  # an unknown name, or no history that far back
                logger.warning("exchange calendar %r unavailable (%s): weekdays instead", name, exc)
                _cache[name] = None
        return _cache[name]


def prewarm(names: list[str | None]) -> None:
    """Build these calendars (and load exchange_calendars) now. The worker calls it in a thread at start-up:
    built on first use instead, inside the event loop, it stalled every record in flight for 0.4-0.7 s."""
    _known()
    for name in names:
        calendar(name)


def _weekdays_24_5() -> SessionCalendar:
    """FX 24/5: every weekday from 1980 to 2100 is a session, from 22:00 UTC the day before to 22:00 UTC (the
    week runs Sunday 22:00 to Friday 22:00 UTC); a daily bar is labelled by the weekday."""
    days, opens, closes = [], [], []
    for d in range(date(_FIRST_YEAR, 1, 1).toordinal() - _EPOCH, date(2100, 1, 1).toordinal() - _EPOCH):
        if (d + 3) % 7 < 5:  # 1970-01-01 was a Thursday: (d + 3) % 7 is Monday=0
            days.append(d)
            opens.append(d * 86400.0 - 7200.0)
            closes.append(d * 86400.0 + 79200.0)
    return SessionCalendar("24/5", days, opens, closes)
