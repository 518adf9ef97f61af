"""trading_session: pre, regular and post from the exchange calendar (holidays and early closes included)."""

from __future__ import annotations

from datetime import date, datetime

import pytest

from streams.anomalies import calendars as detector_calendars
from streams.calendars import calendar, trading_session


def ny(text: str) -> float:
    return datetime.fromisoformat(f"{text}-05:00").timestamp()  # EST


@pytest.mark.parametrize("when,session", [
    ("2024-12-02T03:59:00", None), ("2024-12-02T04:00:00", "pre"), ("2024-12-02T09:29:59", "pre"),
    ("2024-12-02T09:30:00", "regular"), ("2024-12-02T15:59:59", "regular"), ("2024-12-02T16:00:00", "post"),
    ("2024-12-02T19:59:59", "post"), ("2024-12-02T20:00:00", None),
    # Early close (the day after Thanksgiving): regular until 13:00, post-market until 17:00.
    ("2024-11-29T12:59:00", "regular"), ("2024-11-29T13:00:00", "post"), ("2024-11-29T16:59:00", "post"),
    ("2024-11-29T17:00:00", None),
    # A holiday (Thanksgiving) and a Saturday: no session at all.
    ("2024-11-28T10:00:00", None), ("2024-11-30T10:00:00", None),
])
def test_us_sessions(when: str, session: str | None) -> None:
    assert trading_session(ny(when), "XNYS") == session


def test_around_the_clock_markets_and_markets_without_extended_hours() -> None:
    saturday = datetime.fromisoformat("2024-11-30T12:00:00+00:00").timestamp()
    assert trading_session(saturday, "24/7") == "regular"
    assert trading_session(saturday, "24/5") is None
    berlin_evening = datetime.fromisoformat("2024-12-02T18:00:00+01:00").timestamp()
    assert trading_session(berlin_evening, "XETR") is None
    assert trading_session(berlin_evening - 6 * 3600, "XETR") == "regular"
    assert trading_session(saturday, None) is None


@pytest.mark.parametrize("mic,morning_close,afternoon_open", [
    ("XHKG", "2024-01-16T12:00:00+08:00", "2024-01-16T13:00:00+08:00"),
    ("XTKS", "2024-01-16T11:30:00+09:00", "2024-01-16T12:30:00+09:00"),
    ("XSHG", "2024-01-16T11:30:00+08:00", "2024-01-16T13:00:00+08:00"),
])
def test_a_lunch_break_is_closed(mic: str, morning_close: str, afternoon_open: str) -> None:
    closed, reopened = (datetime.fromisoformat(t).timestamp() for t in (morning_close, afternoon_open))
    cal = calendar(mic)
    assert cal is not None and cal.is_open(closed - 1) and cal.is_open(reopened)
    assert not cal.is_open(closed) and not cal.is_open(reopened - 1)
    assert trading_session(closed, mic) is None and trading_session(reopened, mic) == "regular"
    assert cal.open_since(reopened + 600) == reopened
    assert cal.session_of(closed - 1) != cal.session_of(reopened)  # two spans of one session day


def test_globex_halts_for_the_hour_before_its_next_open() -> None:
    """exchange_calendars' CMES closes at 17:00 Chicago, the next open: the 16:00-17:00 maintenance hour (and
    Friday after 16:00) read as open, so a live futures feed silent in it was stale every day."""
    cal = calendar("CMES")
    assert cal is not None

    def chicago(text: str) -> float:
        return datetime.fromisoformat(f"{text}-06:00").timestamp()  # CST

    assert cal.is_open(chicago("2024-01-16T15:59:00")) and not cal.is_open(chicago("2024-01-16T16:00:00"))
    assert not cal.is_open(chicago("2024-01-16T16:59:00")) and cal.is_open(chicago("2024-01-16T17:00:00"))
    assert not cal.is_open(chicago("2024-01-19T16:30:00"))  # Friday's close
    assert cal.is_open(chicago("2024-01-15T11:59:00")) and not cal.is_open(chicago("2024-01-15T12:00:00"))  # MLK


def test_the_detectors_read_the_same_calendars() -> None:
    assert detector_calendars.calendar("XNYS") is calendar("XNYS")


def test_prewarm_builds_the_calendars_so_the_first_lookup_builds_nothing(monkeypatch) -> None:
    from streams import calendars

    calendars.prewarm(["XLON", "24/5", None])
    assert "XLON" in calendars._cache and "24/5" in calendars._cache

    def no_build(name: str) -> None:
        raise AssertionError(f"{name} built again on first use")

    monkeypatch.setattr(calendars.SessionCalendar, "build", staticmethod(no_build))
    assert calendars.calendar("XLON") is not None


@pytest.mark.parametrize(("symbol", "mic"), [("JFC.PS", "XPHS"), ("BBCA.JK", "XIDX"), ("PTT.BK", "XBKK"),
                                             ("MAYBANK.KL", "XKLS"), ("2222.SR", "XSAU"),
                                             ("035720.KQ", "XKRX"), ("6488.TWO", "XTAI"), ("SAP.DE", "XETR")])
def test_yahoo_suffixes_of_asian_and_other_markets_name_their_calendars(symbol: str, mic: str) -> None:
    from streams.calendars import exchange_for

    assert exchange_for(symbol) == mic
    assert calendar(mic) is not None  # exchange_calendars has it


@pytest.mark.parametrize(("symbol", "name"), [
    # crypto as exchanges and Finnhub write it trades every day; on New York's calendar a 12-day hole in a
    # daily series was reported as 8 missing sessions and a missing weekend not at all
    ("BTCUSDT", "24/7"), ("ETHUSD", "24/7"), ("XBTUSD", "24/7"), ("ETHBTC", "24/7"), ("BTC/USDT", "24/7"),
    ("ETH_BTC", "24/7"), ("BINANCE:BTCUSDT", "24/7"), ("COINBASE:BTC-USD", "24/7"), ("BTC-USD", "24/7"),
    # currency pairs (and spot metals) trade 24/5
    ("EURUSD", "24/5"), ("EUR/USD", "24/5"), ("OANDA:EUR_USD", "24/5"), ("XAUUSD", "24/5"), ("EURUSD=X", "24/5"),
    # indexes of other markets follow their exchange
    ("^N225", "XTKS"), ("^FTSE", "XLON"), ("^GDAXI", "XETR"), ("^HSI", "XHKG"), ("^GSPC", "XNYS"),
    # crypto against any currency, and any base against a stablecoin
    ("BTCGBP", "24/7"), ("ETHCNY", "24/7"), ("BTC-CAD", "24/7"), ("1INCHUSDT", "24/7"), ("DOGEUSD", "24/7"),
    # every ISO currency and the metals and energy quoted like them
    ("ARSUSD", "24/5"), ("ARS/USD", "24/5"), ("RONEUR", "24/5"), ("XBRUSD", "24/5"), ("USDJPY", "24/5"),
    # stock venues name their exchange
    ("NSE:ADANIENSOL", "XBOM"), ("NASDAQ:AAPL", "XNYS"),
    # Yahoo's futures: CME Globex (their daily bars on MLK, Presidents' and Labor Day were off New York's calendar),
    # but grains and livestock trade day sessions, closed on US holidays
    ("CL=F", "CMES"), ("ES=F", "CMES"), ("GC=F", "CMES"), ("ZN=F", "CMES"), ("6E=F", "CMES"), ("ZC=F", "XNYS"),
    ("LE=F", "XNYS"),
    # what stays New York's: tickers, long or short, a Nasdaq Data Link or FRED code, index CFDs, OANDA's
    # commodity names without their venue, words that end like a coin
    ("AAPL", "XNYS"), ("GOOGL", "XNYS"), ("BRK-B", "XNYS"), ("WIKI/AAPL", "XNYS"), ("CHRIS/CME_CL1", "XNYS"),
    ("HYUNDAI", "XNYS"), ("SPXUSD", "XNYS"), ("DEUIDXEUR", "XNYS"), ("WTICO_USD", "XNYS"), ("PGOLD_USD", "XNYS"),
    ("DGS10", "XNYS"), ("DEXUSEU", "XNYS"),
])
def test_a_symbols_form_names_crypto_fx_and_index_calendars(symbol: str, name: str) -> None:
    from streams.calendars import exchange_for

    assert exchange_for(symbol) == name
    assert calendar(name) is not None


def test_sessions_are_the_exchanges_trading_days() -> None:
    cal = calendar("XNYS")
    assert cal is not None

    def day(text: str) -> int:
        return date.fromisoformat(text).toordinal() - date(1970, 1, 1).toordinal()

    assert cal.is_session(day("2024-11-27"))
    assert not cal.is_session(day("2024-11-28"))  # Thanksgiving
    assert not cal.is_session(day("2024-11-30"))  # a Saturday


def test_a_calendar_whose_history_starts_after_1960_goes_back_as_far_as_it_can() -> None:
    """Tokyo's calendar cannot start in 1960; it was built for the package's last 20 years only, so a Nikkei series
    of 1990-2001 (nolds' ^N225) was judged on weekdays: 125 false gaps on Japanese holidays."""
    cal = calendar("XTKS")
    assert cal is not None

    def day(text: str) -> int:
        return date.fromisoformat(text).toordinal() - date(1970, 1, 1).toordinal()

    assert cal.covers(day("1999-01-04")) and cal.is_session(day("1999-01-04"))
    assert not cal.is_session(day("1999-01-15"))  # Coming of Age Day, a Friday
    assert not cal.is_session(day("2000-05-03"))  # Constitution Day, a Wednesday


def test_regular_holidays_before_1970_are_no_sessions() -> None:
    """exchange_calendars applies its holiday rules from pandas' default 1970-01-01 only: built from 1960, New York's
    calendar had every holiday of the 1960s as a session, and an S&P 500 series of 1960-1969 (openintro's
    sp500_1950_2018) got a false gap event at each (89)."""
    cal = calendar("XNYS")
    assert cal is not None

    def day(text: str) -> int:
        return date.fromisoformat(text).toordinal() - date(1970, 1, 1).toordinal()

    assert cal.covers(day("1960-07-05"))
    for holiday in ("1960-07-04", "1961-05-30", "1965-11-25", "1966-12-26", "1969-02-21", "1969-04-04"):
        assert not cal.is_session(day(holiday)), holiday
    assert not cal.is_session(day("1963-11-25"))  # an ad-hoc closure (Kennedy's funeral), kept as it was
    assert not cal.is_session(day("1968-06-12"))  # a Wednesday of 1968's paperwork crisis
    for session in ("1960-07-05", "1966-12-27", "1969-07-03", "1970-07-02"):
        assert cal.is_session(day(session)), session
    assert not cal.is_session(day("1970-07-03"))  # from 1970 on exchange_calendars had them already
    assert cal.sessions_between(day("1966-12-23"), day("1966-12-27")) == 0  # Friday, Christmas observed, Tuesday
    assert len(cal.opens) == len(cal.closes) == len(cal.days)  # no lunch break: one span a session


@pytest.mark.parametrize("name", ["XTKS", "XSHG", "XBOM"])
def test_a_calendar_whose_history_starts_after_1960_starts_at_its_first_evaluable_day(name: str) -> None:
    """Not merely earlier than the package's last 20 years: from exchange_calendars' own first evaluable day
    (bound_min: Tokyo and Mumbai 1997, Shanghai 1990-12), its first session within the week after it."""
    import exchange_calendars as xc

    cal = calendar(name)
    assert cal is not None
    first = type(xc.get_calendar(name)).bound_min()
    assert first is not None and first.year < 2000  # the premise: a history the default 20 years leave out
    start = first.date().toordinal() - date(1970, 1, 1).toordinal()
    assert start <= cal.days[0] < start + 7

def test_fx_trades_from_sunday_evening_to_friday_evening_utc() -> None:
    def utc(text: str) -> float:
        return datetime.fromisoformat(f"{text}+00:00").timestamp()

    assert trading_session(utc("2024-12-01T21:59:00"), "24/5") is None  # Sunday, before the week opens
    assert trading_session(utc("2024-12-01T22:00:00"), "24/5") == "regular"
    assert trading_session(utc("2024-12-03T23:30:00"), "24/5") == "regular"  # Tuesday night
    assert trading_session(utc("2024-12-06T21:59:00"), "24/5") == "regular"
    assert trading_session(utc("2024-12-06T22:00:00"), "24/5") is None  # Friday's close


def test_an_always_open_market_is_open_since_forever() -> None:
    """The stale-feed check reads None as "closed, silence expected": a 24/7 market must never answer None."""
    cal = calendar("24/7")
    assert cal is not None
    assert cal.open_since(datetime.fromisoformat("2024-11-30T03:00:00+00:00").timestamp()) == float("-inf")
