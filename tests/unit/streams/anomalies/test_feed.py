"""BarGaps' place of an intraday bar in its exchange's sessions (`edge`): the first bar after a closure (the
night, a weekend, a lunch break), the bar that reaches the close before one, or neither. Fixtures are built
here: bars stamped on the calendars' own session times."""

from datetime import UTC, datetime

import pytest

from streams.anomalies.feed import EDGE_CLOSE, EDGE_NONE, EDGE_OPEN, EDGE_OUTSIDE, BarGaps
from streams.models import MarketDataPoint


def minute_bar(symbol: str, ts: datetime, interval: str = "1m") -> MarketDataPoint:
    return MarketDataPoint(symbol=symbol, timestamp=ts, source="sim", data_type="bar", interval=interval, open=10.0,
                           high=10.1, low=9.9, close=10.0, volume=1e4)


def edges(symbol: str, stamps: list[datetime], interval: str = "1m") -> list[int]:
    gaps = BarGaps()
    out = []
    for ts in stamps:
        gaps.update(minute_bar(symbol, ts, interval))
        out.append(gaps.edge)
    return out


def test_hong_kong_minutes_open_after_the_night_and_after_the_lunch_break() -> None:
    """XHKG 2024-03-05 (UTC): 01:30-04:00 and 05:00-08:00 (09:30-12:00, 13:00-16:00 Hong Kong)."""
    d = datetime(2024, 3, 5, tzinfo=UTC)
    stamps = [d.replace(day=4, hour=7, minute=59), d.replace(hour=1, minute=30), d.replace(hour=2),
              d.replace(hour=3, minute=59), d.replace(hour=5), d.replace(hour=5, minute=1)]
    assert edges("0700.HK", stamps) == [EDGE_CLOSE, EDGE_OPEN, EDGE_NONE, EDGE_CLOSE, EDGE_OPEN, EDGE_NONE]


def test_the_first_regular_bar_after_pre_market_bars_opens_the_session() -> None:
    """XNYS 2024-03-05 (EST): a pre-market minute before the 14:30 UTC open; the 20:59 minute reaches the close; a
    post-market minute is outside the sessions."""
    d = datetime(2024, 3, 5, tzinfo=UTC)
    stamps = [d.replace(hour=14, minute=29), d.replace(hour=14, minute=30), d.replace(hour=20, minute=59),
              d.replace(hour=21, minute=5)]
    assert edges("MSFT", stamps) == [EDGE_OUTSIDE, EDGE_OPEN, EDGE_CLOSE, EDGE_OUTSIDE]


def test_a_clock_hour_bar_that_holds_the_open_is_the_sessions_first_not_outside() -> None:
    """XNYS 2024-03-05 (EST), hourly bars on clock hours (Finnhub, Alpha Vantage 60min, prepost): the 09:00 bar
    (14:00 UTC) holds 09:30's opening auction. Read as outside the sessions, it was judged against the pre- and
    post-market hours (a thirtieth of a regular one) and flagged as a volume spike; the 10:00 bar, whose bar
    before began before the open, was taken for the first."""
    d = datetime(2024, 3, 5, tzinfo=UTC)
    stamps = [d.replace(hour=13), d.replace(hour=14), d.replace(hour=15), d.replace(hour=20), d.replace(hour=21)]
    assert edges("MSFT", stamps, "1h") == [EDGE_OUTSIDE, EDGE_OPEN, EDGE_NONE, EDGE_CLOSE, EDGE_OUTSIDE]


@pytest.mark.parametrize(("stamps", "expected"), [
    # 24/5: the daily 22:00 UTC boundary closes nothing
    ([datetime(2024, 3, 5, 21, tzinfo=UTC), datetime(2024, 3, 5, 22, tzinfo=UTC)], [EDGE_NONE, EDGE_NONE]),
    # Friday's last hour before the weekend, Sunday evening's first
    ([datetime(2024, 3, 8, 21, tzinfo=UTC), datetime(2024, 3, 10, 22, tzinfo=UTC)], [EDGE_CLOSE, EDGE_OPEN]),
])
def test_fx_sessions_have_edges_only_around_the_weekend(stamps: list[datetime], expected: list[int]) -> None:
    assert edges("EURUSD=X", stamps, "1h") == expected


def test_no_edge_for_daily_bars_or_a_market_always_open() -> None:
    assert edges("MSFT", [datetime(2024, 3, 4, tzinfo=UTC), datetime(2024, 3, 5, tzinfo=UTC)], "1d") == [0, 0]
    assert edges("BTC-USD", [datetime(2024, 3, 5, 23, 59, tzinfo=UTC), datetime(2024, 3, 6, tzinfo=UTC)]) == [0, 0]


def test_a_revision_of_the_latest_bar_keeps_its_place_also_after_a_restart() -> None:
    """A live poller sends the forming minute, then the same minute again (final): the revision is still the closing
    (or opening) bar, not a midday one."""
    d = datetime(2024, 3, 5, tzinfo=UTC)
    close, open_ = d.replace(hour=20, minute=59), d.replace(day=6, hour=14, minute=30)
    assert edges("MSFT", [close, close, open_, open_]) == [EDGE_CLOSE, EDGE_CLOSE, EDGE_OPEN, EDGE_OPEN]
    gaps = BarGaps()
    gaps.update(minute_bar("MSFT", close))
    restored = BarGaps.from_state(gaps.to_state())
    restored.update(minute_bar("MSFT", close))
    assert restored.edge == EDGE_CLOSE
