import itertools
import math
import random
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.anomalies.detectors import (
    BarGaps,
    BrownleesGallo,
    ClearlyErroneous,
    Detector,
    DetectorSuite,
    MidQuoteOutlier,
    SplitSuspect,
    SpreadTooWide,
    StaleFeed,
    TradeOutsideQuote,
    VolumeSpike,
    _Facts,
    _iso_day,
    _mad_lower_bound,
    _median_abs_dev,
    _median_sorted,
    _SumWindow,
    _trimmed_mean_sd,
    weekdays_between,
)
from streams.config import AnomalySettings, PriceBand
from streams.models import DataType, MarketDataPoint

T0 = datetime(2024, 5, 6, 14, 0, tzinfo=UTC)  # a Monday


def trade(price: float, i: int = 0, volume: float = 100.0, **kw: Any) -> MarketDataPoint:
    return MarketDataPoint(symbol="AAPL", timestamp=T0 + timedelta(seconds=i), source="sim", data_type="trade",
                           price=price, volume=volume, **kw)


def quote(bid: float, ask: float, i: int = 0, **kw: Any) -> MarketDataPoint:
    kw.setdefault("bid_size", 100.0 + i % 7)
    kw.setdefault("ask_size", 200.0 + i % 5)
    return MarketDataPoint(symbol="AAPL", timestamp=T0 + timedelta(seconds=i), source="sim", data_type="quote",
                           bid=bid, ask=ask, **kw)


def bar(ts: datetime, o: float, c: float, interval: str = "1d", volume: float = 1e6) -> MarketDataPoint:
    return MarketDataPoint(symbol="AAPL", timestamp=ts, source="sim", data_type="bar", open=o, high=max(o, c) * 1.01,
                           low=min(o, c) * 0.99, close=c, volume=volume, interval=interval)


def walk(n: int, seed: int = 1, start: float = 100.0, sigma: float = 3e-4) -> list[float]:
    rng, p, out = random.Random(seed), start, []
    for _ in range(n):
        p *= math.exp(rng.gauss(0.0, sigma))
        out.append(round(p, 2))
    return out


def garch_burst(n: int, seed: int = 2, start: float = 100.0, *, sudden: bool = False) -> list[float]:
    """GARCH(1,1) returns (alpha 0.10, beta 0.89) whose long-run volatility rises ~6x over a third of the
    series and decays back: volatility clusters, large but continuous moves. `sudden`: the 6x from one tick."""
    rng, p, out = random.Random(seed), start, []
    alpha, beta = 0.10, 0.89
    var, r = 1e-7, 0.0
    for i in range(n):
        x = (i - n / 3) / (n / 6)
        level = 1.0 + 35.0 * (math.exp(-x * x) if not sudden else float(n / 3 <= i < n / 2))
        var = (1 - alpha - beta) * 1e-7 * level + alpha * r * r + beta * var
        r = math.sqrt(var) * rng.gauss(0.0, 1.0)
        p *= math.exp(r)
        out.append(round(p, 2))
    return out


def feed(det: Detector, points: list[MarketDataPoint]) -> list[list[Any]]:
    return [det.update(p) for p in points]


def roundtrip(det: Detector) -> Detector:
    return type(det).from_state(orjson.loads(orjson.dumps(det.to_state())), det.settings)


# ---------------------------------------------------------------------------------------- Brownlees-Gallo


def test_bg_flags_fat_finger_and_keeps_it_out_of_the_window() -> None:
    bg = BrownleesGallo()
    prices = walk(100)
    assert not any(feed(bg, [trade(p, i) for i, p in enumerate(prices)]))
    before = list(bg.window.values)
    [a] = bg.update(trade(prices[-1] * 10, 100))
    assert (a.detector, a.kind, a.symbol) == ("brownlees_gallo", "tick", "AAPL")
    assert a.score >= a.threshold and a.record["price"] == pytest.approx(prices[-1] * 10)
    assert list(bg.window.values) == before  # the fat finger did not enter the reference
    assert bg.update(trade(prices[-1], 101)) == []


def test_bg_does_not_judge_before_the_window_fills_then_does() -> None:
    bg = BrownleesGallo(AnomalySettings(bg_min_window=20))
    for i in range(19):
        bg.update(trade(100.0 + 0.01 * (i % 3), i))
    assert bg.update(trade(1000.0, 19)) == []  # 20th tick: the window had 19 values, still warming up
    assert bg.update(trade(100.01, 20)) == []  # judged: the warm-up fat finger is trimmed from the reference
    assert bg.update(trade(1000.0, 21))


def test_bg_threshold_boundary_is_inclusive() -> None:
    s = AnomalySettings(bg_min_window=4, bg_trim=0.0, bg_gamma_bps=0.0, bg_require_jump=False)
    bg = BrownleesGallo(s)
    for i, p in enumerate([99.0, 101.0, 99.0, 101.0]):
        bg.update(trade(p, i))
    sd = math.sqrt(4 / 3)
    assert bg.update(trade(100.0 + 3 * sd - 1e-9, 5)) == []
    bg2 = BrownleesGallo(s)
    for i, p in enumerate([99.0, 101.0, 99.0, 101.0]):
        bg2.update(trade(p, i))
    assert bg2.update(trade(100.0 + 3 * sd + 1e-9, 5))


def test_bg_genuine_level_shift_flags_only_its_first_tick() -> None:
    bg = BrownleesGallo()
    for i, p in enumerate(walk(100)):
        bg.update(trade(p, i))
    level = bg.window.values[-1] * 1.08  # a halt that reopens 8% higher
    flags = [bool(bg.update(trade(level + 0.01 * (j % 2), 200 + j))) for j in range(100)]
    assert flags == [True] + [False] * 99
    assert bg.window.median() == pytest.approx(level, abs=0.02)


def test_bg_without_the_jump_rule_reanchors_after_a_consistent_run() -> None:
    bg = BrownleesGallo(AnomalySettings(level_shift_run=5, bg_require_jump=False))
    for i, p in enumerate(walk(100)):
        bg.update(trade(p, i))
    level = bg.window.values[-1] * 1.08
    flags = [bool(bg.update(trade(level + 0.01 * (j % 2), 200 + j))) for j in range(10)]
    assert flags == [True] * 4 + [False] * 6


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_bg_does_not_flag_a_garch_volatility_burst(seed: int) -> None:
    bg = BrownleesGallo()
    assert not any(feed(bg, [trade(p, i) for i, p in enumerate(garch_burst(3000, seed))]))


def test_bg_flags_at_most_the_onset_of_a_sudden_burst() -> None:
    """A 6x volatility jump from one tick to the next: the causal window may flag its first big move (a
    centred window would see the continuation), never the continuation."""
    bg = BrownleesGallo()
    flags = [i for i, out in enumerate(feed(bg, [trade(p, i) for i, p in enumerate(garch_burst(3000, sudden=True))]))
             if out]
    assert len(flags) <= 2 and all(b - a > 1 for a, b in itertools.pairwise(flags))


# ------------------------------------------------------------------------------------ BNHLS Q4, Q3, T4


def test_midquote_outlier_flags_a_jumped_quote_not_the_next_one() -> None:
    mq = MidQuoteOutlier()
    for i, m in enumerate(walk(60)):
        assert mq.update(quote(m - 0.01, m + 0.01, i)) == []
    m = mq.window.median()
    [a] = mq.update(quote(m * 1.1 - 0.01, m * 1.1 + 0.01, 61))
    assert a.detector == "midquote_outlier" and a.score > a.threshold
    assert mq.update(quote(m - 0.01, m + 0.01, 62)) == []
    assert mq.update(trade(500.0, 63)) == []  # not a quote


def test_spread_too_wide_uses_the_days_median_and_resets_each_day() -> None:
    sp = SpreadTooWide(AnomalySettings(spread_min_observations=20))
    for i in range(30):
        assert sp.update(quote(100.0, 100.02, i)) == []
    median = sp.median()
    assert median == pytest.approx(0.02, rel=0.02)
    assert sp.update(quote(100.0, 100.0 + 49 * median, 31)) == []
    [a] = sp.update(quote(100.0, 100.0 + 51 * median, 32))
    assert a.threshold == pytest.approx(50 * median)
    next_day = quote(100.0, 102.0, 0).model_copy(update={"timestamp": T0 + timedelta(days=1)})
    assert sp.update(next_day) == []  # a new day: too few observations to judge
    assert sp.day == next_day.timestamp.date().isoformat()


def test_trade_outside_quote_against_the_last_quote() -> None:
    t4 = TradeOutsideQuote()
    assert t4.update(trade(100.0, 0)) == []  # no quote yet
    t4.update(quote(100.00, 100.25, 1))
    assert t4.update(trade(100.50, 2)) == []  # exactly ask + spread is not above it
    [a] = t4.update(trade(100.51, 3))
    assert a.score == pytest.approx(0.26) and a.threshold == pytest.approx(0.25)
    [b] = t4.update(trade(99.74, 4))
    assert "< bid" in b.message
    assert t4.update(trade(200.0, 1000)) == []  # the quote is older than t4_max_quote_age_seconds


# -------------------------------------------------------------------------------------- FINRA 11892


@pytest.mark.parametrize(
    ("reference", "move", "flagged"),
    [(20.0, 0.099, False), (20.0, 0.101, True), (25.0, 0.099, False), (30.0, 0.049, False), (30.0, 0.051, True),
     (50.0, 0.049, False), (100.0, 0.029, False), (100.0, 0.031, True), (100.0, -0.031, True)],
)
def test_clearly_erroneous_bands(reference: float, move: float, flagged: bool) -> None:
    ce = ClearlyErroneous()
    ce.update(trade(reference, 0))
    assert bool(ce.update(trade(reference * (1 + move), 1))) is flagged
    assert ce.reference == (reference if flagged else pytest.approx(reference * (1 + move)))


def test_clearly_erroneous_bands_are_configurable() -> None:
    ce = ClearlyErroneous(AnomalySettings(erroneous_bands=[PriceBand(max_price=None, max_move=0.5)]))
    ce.update(trade(100.0, 0))
    assert ce.update(trade(140.0, 1)) == []


# ------------------------------------------------------------------------------------------- volume


def test_volume_spike_above_median_plus_10_mad() -> None:
    vs = VolumeSpike()
    rng = random.Random(3)
    for i in range(200):
        assert vs.update(trade(100.0, i, volume=float(round(math.exp(rng.gauss(math.log(200), 0.3)))))) == []
    [a] = vs.update(trade(100.0, 201, volume=20_000.0))
    assert a.score == 20_000.0 and a.threshold < 20_000.0
    assert vs.update(bar(T0, 1.0, 1.0, "1m", volume=1e6)) == []  # bars have their own window (warming up)


# -------------------------------------------------------------------------------------------- stale


def test_stale_feed_reports_once_at_k_identical_prices() -> None:
    st = StaleFeed(AnomalySettings(stale_run=20))
    out = feed(st, [trade(100.0, i) for i in range(40)])
    assert [i for i, a in enumerate(out) if a] == [19]
    assert out[19][0].kind == "feed" and out[19][0].score == 20
    assert st.update(trade(100.01, 41)) == []


def test_a_market_trading_at_one_price_is_not_stale() -> None:
    """E-mini ticks: hundreds of trades at one price level (its queue), of changing sizes, and one order's fills
    printed at one instant: 5,880 stale_feed events in 500,000 real trades when only the price was compared."""
    st = StaleFeed(AnomalySettings(stale_run=20))
    assert not any(feed(st, [trade(1640.25, i, volume=float(1 + i % 7)) for i in range(100)]))
    assert not any(feed(st, [trade(1640.5, 200, volume=1.0) for _ in range(40)]))  # 40 fills of one instant
    frozen = feed(st, [trade(1640.75, 300 + i, volume=3.0) for i in range(25)])  # a feed repeating its last print
    assert [i for i, a in enumerate(frozen) if a] == [19]


def test_quotes_with_moving_sizes_are_not_stale() -> None:
    st = StaleFeed()
    assert not any(feed(st, [quote(100.0, 100.02, i) for i in range(50)]))


def test_check_stale_after_three_expected_intervals() -> None:
    st = StaleFeed()
    for i in range(10):
        st.update(trade(100.0 + i, i * 2))
    last = T0 + timedelta(seconds=18)
    assert st.check_stale(last + timedelta(seconds=6)) == []  # median interval 2 s: 6 s is exactly 3x
    [a] = st.check_stale(last + timedelta(seconds=6.5))
    assert a.kind == "feed" and a.threshold == pytest.approx(6.0)
    assert st.check_stale(last + timedelta(seconds=60)) == []  # once per silence
    st.update(trade(200.0, 100))
    assert st.check_stale(T0 + timedelta(seconds=200))


# --------------------------------------------------------------------------------------------- gaps


def test_gaps_in_1m_bars_but_not_across_a_session_break() -> None:
    g = BarGaps()
    t = datetime(2024, 5, 6, 14, 0, tzinfo=UTC)
    assert g.update(bar(t, 1, 1, "1m")) == []
    assert g.update(bar(t + timedelta(minutes=1), 1, 1, "1m")) == []
    [a] = g.update(bar(t + timedelta(minutes=4), 1, 1, "1m"))
    assert a.kind == "gap" and a.score == 2
    assert g.update(bar(t + timedelta(hours=20), 1, 1, "1m")) == []  # overnight
    assert g.update(bar(t, 1, 1, "1m")) == []  # out of order: ignored


def test_without_a_calendar_consecutive_bars_miss_none() -> None:
    """No exchange (default_exchange None): the grid alone counts the bars missing between two; consecutive bars
    are none (a count off by one reported a gap between every two bars)."""
    g = BarGaps(AnomalySettings(default_exchange=None))
    t = datetime(2024, 5, 6, 14, 0, tzinfo=UTC)
    assert [g.update(bar(t + timedelta(minutes=5 * i), 1, 1, "5m")) for i in range(4)] == [[], [], [], []]
    [a] = g.update(bar(t + timedelta(minutes=30), 1, 1, "5m"))  # 14:20 and 14:25 missing
    assert a.score == 2


def test_a_lunch_break_is_no_gap_and_no_silence() -> None:
    """Hong Kong closes 12:00-13:00: every day's 5-minute bars reported 12 missing bars after 11:55, and a feed
    silent over lunch was stale. A gap inside a half-day is still one."""
    g = BarGaps()
    hk = timezone(timedelta(hours=8))
    bars = [bar(datetime(2024, 1, 16, h, m, tzinfo=hk), 1, 1, "5m") for h, m in ((11, 50), (11, 55), (13, 0))]
    assert [g.update(b.model_copy(update={"symbol": "0700.HK"})) for b in bars] == [[], [], []]
    [a] = g.update(bar(datetime(2024, 1, 16, 13, 20, tzinfo=hk), 1, 1, "5m").model_copy(update={"symbol": "0700.HK"}))
    assert a.score == 3
    st = StaleFeed()
    for i in range(10):
        st.update(trade(100.0 + i, i * 2).model_copy(update={
            "symbol": "0700.HK", "timestamp": datetime(2024, 1, 16, 11, 59, 40, tzinfo=hk) + timedelta(seconds=2 * i)}))
    assert st.check_stale(datetime(2024, 1, 16, 12, 30, tzinfo=hk)) == []  # lunch
    assert st.check_stale(datetime(2024, 1, 16, 13, 0, 5, tzinfo=hk)) == []  # 5 s after the afternoon's open
    assert st.check_stale(datetime(2024, 1, 16, 13, 0, 7, tzinfo=hk))


def test_futures_follow_cme_globex() -> None:
    """CL=F trades on MLK day and around the clock but for an hour a day: on New York's calendar a missing MLK bar
    was never reported, and its night bars were judged by the silence rule."""
    g = BarGaps()

    def cl(t: datetime, interval: str = "1d") -> list[Any]:
        return g.update(bar(t, 70, 70, interval).model_copy(update={"symbol": "CL=F"}))

    assert cl(datetime(2024, 1, 12, tzinfo=UTC)) == []
    [a] = cl(datetime(2024, 1, 16, tzinfo=UTC))  # Friday, then Tuesday: MLK day's session is missing
    assert a.score == 1
    g = BarGaps()
    hours = [datetime(2024, 1, 16, 20, tzinfo=UTC), datetime(2024, 1, 16, 21, tzinfo=UTC),  # the daily halt 22:00
             datetime(2024, 1, 16, 23, tzinfo=UTC), datetime(2024, 1, 17, 0, tzinfo=UTC),
             datetime(2024, 1, 17, 3, tzinfo=UTC)]  # 01:00 and 02:00 UTC missing, in the night session
    assert [len(cl(t, "1h")) for t in hours] == [0, 0, 0, 0, 1]


def test_daily_gaps_skip_weekends_and_holidays() -> None:
    g = BarGaps(AnomalySettings(gap_holidays=[date(2024, 5, 27)]))
    fri, mon = datetime(2024, 5, 3, 20, tzinfo=UTC), datetime(2024, 5, 6, 20, tzinfo=UTC)
    g.update(bar(fri, 1, 1))
    assert g.update(bar(mon, 1, 1)) == []
    [a] = g.update(bar(mon + timedelta(days=3), 1, 1))  # Thursday: Tuesday and Wednesday are missing
    assert a.score == 2
    g.update(bar(datetime(2024, 5, 24, 20, tzinfo=UTC), 1, 1))
    assert g.update(bar(datetime(2024, 5, 28, 20, tzinfo=UTC), 1, 1)) == []  # Memorial Day
    assert weekdays_between(date(2024, 1, 1), date(2024, 12, 31)) == 260


# -------------------------------------------------------------------------------------------- split


@pytest.mark.parametrize(("ratio", "flagged"), [(0.5, True), (0.505, True), (0.515, False), (3.0, True), (1.1, False)])
def test_split_suspect_on_daily_bars(ratio: float, flagged: bool) -> None:
    sp = SplitSuspect()
    sp.update(bar(datetime(2024, 5, 6, 20, tzinfo=UTC), 100.0, 100.0))
    out = sp.update(bar(datetime(2024, 5, 7, 20, tzinfo=UTC), 100.0 * ratio, 100.0 * ratio))
    assert bool(out) is flagged
    if flagged:
        assert out[0].kind == "corporate_action"


@pytest.mark.parametrize(("close", "flagged"), [(0.92, False), (0.90, False), (0.79, True), (0.88, True)])
def test_a_crash_open_bought_back_is_no_split(close: float, flagged: bool) -> None:
    """BIDU 2015-08-24 opened at x0.8185 of the previous close (a 5:4 split's x0.8) and closed at x0.92: a split's
    whole bar sits at the new level, so the close must lie nearer it than the old one."""
    sp = SplitSuspect()
    sp.update(bar(datetime(2024, 5, 6, 20, tzinfo=UTC), 100.0, 100.0))
    out = sp.update(bar(datetime(2024, 5, 7, 20, tzinfo=UTC), 80.5, 100.0 * close))  # open x0.805 ~ 5:4
    assert bool(out) is flagged


def _flat(ts: datetime, c: float) -> MarketDataPoint:
    """A close-only feed's bar: open = high = low = close, no volume."""
    return MarketDataPoint(symbol="AAPL", timestamp=ts, source="sim", data_type="bar", open=c, high=c, low=c, close=c,
                           volume=0.0, interval="1d")


@pytest.mark.parametrize(("ratio", "flagged"), [(0.8, False), (0.667, False), (0.5, True), (1 / 3, True), (2.0, True)])
def test_a_close_only_series_matches_only_splits_of_two_for_one_or_more(ratio: float, flagged: bool) -> None:
    """skfolio's adjusted closes (AMD 1997-10-01 x0.829, BBY 1991-12-19 x0.659): a close-only bar's jump is the whole
    day's move, as likely a crash or an earnings day as a 5:4 or 3:2 split; a 2:1 split is no day's move."""
    sp = SplitSuspect()
    days = [datetime(2024, 5, 6, 20, tzinfo=UTC) + timedelta(days=i) for i in range(3)]
    sp.update(_flat(days[0], 100.0))
    sp.update(_flat(days[1], 100.0))
    assert bool(sp.update(_flat(days[2], 100.0 * ratio))) is flagged


def test_a_stream_with_ranges_keeps_its_5_for_4_split_on_a_flat_bar() -> None:
    """A bar stream that had an open, high or low of its own is no close-only series: a flat split day (no trade at
    the new level but the close) is matched as before, also after a restart."""
    sp = SplitSuspect()
    days = [datetime(2024, 5, 6, 20, tzinfo=UTC) + timedelta(days=i) for i in range(3)]
    sp.update(bar(days[0], 100.0, 100.0))
    sp = SplitSuspect.from_state(sp.to_state())
    sp.update(_flat(days[1], 100.0))
    [a] = sp.update(_flat(days[2], 80.0))
    assert a.kind == "corporate_action" and a.threshold == 0.8


def _after_silence(silence: timedelta, ratio: float, settings: AnomalySettings | None = None,
                   kind: str = "bar") -> tuple[SplitSuspect, list[Any]]:
    """Two points at 1.0 a day apart, then one at `ratio` after `silence` (bars, or trades)."""
    sp = SplitSuspect(settings)
    t0 = datetime(2024, 5, 6, 20, tzinfo=UTC)

    def point(ts: datetime, p: float) -> MarketDataPoint:
        return bar(ts, p, p) if kind == "bar" else trade(p).model_copy(update={"timestamp": ts})

    sp.update(point(t0, 1.0))
    sp.update(point(t0 + timedelta(days=1), 1.0))
    out = sp.update(point(t0 + timedelta(days=1) + silence, ratio))
    return sp, out


def _deferred(sp: SplitSuspect) -> float | None:
    """The nominal ratio of the 10^k split deferred to the next point, None when none was opened."""
    if sp.verdict is None:
        return None
    what, pend = sp.verdict
    assert what == "opened" and pend.get("deferred")
    return pend["nominal"]


@pytest.mark.parametrize(("silence", "nominal"), [(timedelta(days=20), 100.0),
                                                  (timedelta(days=20) - timedelta(seconds=1), None)])
def test_a_silence_of_exactly_split_halt_seconds_is_a_suspension(silence: timedelta, nominal: float | None) -> None:
    """"After a silence of split_halt_seconds": 20 days to the second is one, a second less is none (x118 is then
    no 1:100, 18% off it)."""
    assert AnomalySettings().split_halt_seconds == 20 * 86400
    sp, out = _after_silence(silence, 118.0)
    assert out == [] and _deferred(sp) == nominal


def test_a_split_after_a_suspension_is_still_matched_by_its_own_ratio() -> None:
    """The 10^k rule after a suspension is for a jump no ratio matched: a 2:1 split on the first bar after 30 days
    is flagged as a 2:1 split, not lost to the 10^k rule (whose nearest power of ten is 1)."""
    [a] = _after_silence(timedelta(days=30), 0.5)[1]
    assert a.kind == "corporate_action" and a.threshold == 0.5


@pytest.mark.parametrize(("ratio", "nominal"), [(85.0, 100.0), (118.0, 100.0), (6.5, None), (300.0, None),
                                                (1000.0, None)])
def test_after_a_suspension_a_jump_up_is_matched_to_the_nearest_configured_power_of_ten(
        ratio: float, nominal: float | None) -> None:
    """Within decimal_tolerance (0.15 in log10) of the nearest 10^k, either side of it (x85 and x118: 1:100); x6.5
    and x300 are 0.19 and 0.48 from theirs; x1000 is 1:1000, no configured ratio."""
    assert 1000.0 not in AnomalySettings().split_ratios
    sp, out = _after_silence(timedelta(days=30), ratio)
    assert out == [] and _deferred(sp) == nominal


def test_a_split_matched_after_a_suspension_reports_the_tolerance_it_was_matched_by() -> None:
    """x118 is 1:100 within decimal_tolerance (0.15 in log10), not within split_tolerance (0.02-0.04 in log): the
    event said the latter, 18% off the nominal ratio with a tolerance of 2%."""
    sp, _ = _after_silence(timedelta(days=30), 118.0)
    assert sp.verdict is not None
    tol = sp.verdict[1]["tolerance"]
    decimal = AnomalySettings().bar_daily.decimal_tolerance
    assert tol == pytest.approx(10.0 ** decimal - 1.0) and abs(118.0 / 100.0 - 1.0) <= tol


def test_a_trade_after_a_long_silence_gets_no_10k_rule() -> None:
    """The suspension rule is a bar stream's: a trade feed's x118 after 30 days is matched as before, to no ratio."""
    sp, out = _after_silence(timedelta(days=30), 118.0, kind="trade")
    assert out == [] and sp.verdict is None and sp.pending == {}


def test_suite_split_is_a_corporate_action_not_an_error_and_the_next_day_is_clean() -> None:
    suite = DetectorSuite()
    prices = walk(200, seed=4)
    for i, p in enumerate(prices):
        suite.update(quote(p - 0.01, p + 0.01, 2 * i))
        assert suite.update(trade(p, 2 * i + 1)) == []
    day2 = timedelta(hours=20)
    half = [round(p / 2, 2) for p in walk(200, seed=5, start=prices[-1])]
    first = trade(half[0], 0, volume=200.0).model_copy(update={"timestamp": T0 + day2})
    out = suite.update(first)
    assert [a.detector for a in out] == ["split_suspect"]
    for i, p in enumerate(half[1:], 1):
        ts = T0 + day2 + timedelta(seconds=2 * i)
        suite.update(quote(p - 0.01, p + 0.01, 0).model_copy(update={"timestamp": ts}))
        assert suite.update(trade(p, 0, volume=200.0).model_copy(update={"timestamp": ts})) == []


# -------------------------------------------------------------------------------- suite, state, memory


def mixed_stream(n: int, seed: int, step: int = 2) -> list[MarketDataPoint]:
    rng = random.Random(seed)
    out: list[MarketDataPoint] = []
    for i, p in enumerate(walk(n, seed=seed)):
        out.append(quote(round(p - 0.01, 2), round(p + 0.01, 2), step * i))
        price = p * (10 if rng.random() < 0.01 else 1)
        out.append(trade(round(price, 2), step * i + 1, volume=float(rng.randint(1, 5) * 100)))
    return out


def decisions(suite: DetectorSuite, points: list[MarketDataPoint]) -> list[list[tuple[str, float]]]:
    return [[(a.detector, round(a.score, 9)) for a in suite.update(p)] for p in points]


def test_suite_state_round_trips_through_json_with_the_same_decisions() -> None:
    points = mixed_stream(1500, seed=6)
    warm, rest = points[:1500], points[1500:]
    a = DetectorSuite()
    decisions(a, warm)
    b = DetectorSuite.from_state(orjson.loads(orjson.dumps(a.to_state())))
    assert b.to_state() == a.to_state()
    da, db = decisions(a, rest), decisions(b, rest)
    assert da == db and any(da)  # same decisions, and there were some to make


def test_each_detector_round_trips_through_json() -> None:
    points = mixed_stream(300, seed=7) + [bar(T0 + timedelta(minutes=i), 1, 1, "1m") for i in (0, 1, 5)]
    for cls in (BrownleesGallo, MidQuoteOutlier, SpreadTooWide, TradeOutsideQuote, ClearlyErroneous, VolumeSpike,
                StaleFeed, BarGaps, SplitSuspect):
        det = cls()
        feed(det, points)
        assert roundtrip(det).to_state() == det.to_state(), cls.__name__


def test_state_size_is_bounded() -> None:
    """Three days of a quote and a trade every 30 s: the state at the same time on days 2 and 3 is the same
    size (the per-day structures refill the same way), and every container is at its bound."""
    suite = DetectorSuite()
    points = mixed_stream(8640, seed=8, step=30)  # 2880 quotes + 2880 trades a day
    sizes = []
    for k in range(3):
        decisions(suite, points[k * 5760:(k + 1) * 5760])
        sizes.append(len(orjson.dumps(suite.to_state())))
    assert (len(suite.bg.window), len(suite.midquote.window), len(suite.volume.windows["trade"])) == (80, 50, 100)
    assert len(suite.midquote.day_mids) <= suite.midquote.day_mids.maxlen == 288
    assert abs(sizes[2] - sizes[1]) < 0.1 * sizes[1]  # float reprs vary in length
    assert max(sizes) < 16_000


def test_suite_does_not_flag_a_garch_burst_with_quotes() -> None:
    suite = DetectorSuite()
    flags = []
    for i, p in enumerate(garch_burst(3000, seed=9)):
        flags += suite.update(quote(round(p - 0.01, 2), round(p + 0.01, 2), 2 * i))
        flags += suite.update(trade(p, 2 * i + 1, volume=100.0 + i % 50))
    assert [a for a in flags if a.kind == "tick"] == []


def test_anomaly_to_dict_is_json_able() -> None:
    ce = ClearlyErroneous()
    assert ce.update(trade(10.0, 0)) == []  # the first price is the reference, not judged
    [b] = ce.update(trade(20.0, 1))
    assert orjson.loads(orjson.dumps(b.to_dict()))["record"]["price"] == 20.0


# ------------------------------------------------------------------ the fast paths equal the plain definitions


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.integers(-5, 5).map(float), st.floats(-1e6, 1e6)), min_size=1, max_size=120),
       st.one_of(st.integers(-6, 6).map(float), st.floats(-1e6, 1e6), st.none()))
def test_median_abs_dev_by_selection_equals_sorting_the_distances(values: list[float], centre: float | None) -> None:
    s = sorted(values)
    c = _median_sorted(s) if centre is None else centre
    assert _median_abs_dev(s, c) == _median_sorted(sorted(abs(x - c) for x in s))


def test_sum_window_trimmed_mean_sd_matches_the_reference_after_wrapping() -> None:
    rng = random.Random(4)
    w = _SumWindow(80)
    for i in range(5000):
        w.push(100.0 + rng.gauss(0, 1) + (i // 700))  # level steps, so the anchor moves
        if i >= 10 and i % 37 == 0:
            got, ref = w.trimmed_mean_sd(0.1), _trimmed_mean_sd(w.sorted, 0.1)
            assert got == pytest.approx(ref, rel=1e-9, abs=1e-9)
            assert w.sorted == sorted(w.values)


@pytest.mark.parametrize("stamp", [
    "2024-05-06T23:59:59.999999Z", "2024-05-07T00:00:00Z", "2024-05-06T23:30:00-02:00", "2024-05-07T01:00:00+03:00",
    "1970-01-02T00:00:00Z", "2099-12-31T23:59:59.5Z"])
def test_facts_day_is_the_utc_date(stamp: str) -> None:
    p = MarketDataPoint.model_validate({"symbol": "A", "timestamp": stamp, "source": "s", "price": 1.0})
    f = _Facts(p)
    assert _iso_day(f.day) == p.timestamp.astimezone(UTC).date().isoformat()
    assert f.ts == p.timestamp.timestamp() and f.trade == 1.0 and f.quote is None and f.stream == "trade"


def test_kinds_set_as_enum_members_are_judged_like_strings() -> None:
    """Validation stores kinds as strings; a point built without validation (model_copy) may hold the enum member.
    The detectors compare kinds with plain strings for speed: both must give the same decisions."""
    points = mixed_stream(400, seed=12)
    as_enum = [p.model_copy(update={"data_type": DataType(p.data_type)}) for p in points]
    assert isinstance(as_enum[0].data_type, DataType)
    assert decisions(DetectorSuite(), as_enum) == decisions(DetectorSuite(), points)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.integers(1, 8).map(float), st.floats(0.01, 1e6)), min_size=2, max_size=120))
def test_the_mad_lower_bound_never_exceeds_the_mad(values: list[float]) -> None:
    """VolumeSpike skips the MAD when the volume is within median + 10 x this bound: exact only if it is a bound."""
    s = sorted(values)
    c = _median_sorted(s)
    assert _mad_lower_bound(s, c) <= _median_abs_dev(s, c)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.01, 1e6), min_size=20, max_size=300), st.sampled_from([0.0, 0.05, 0.1, 0.2]))
def test_the_trimmed_mean_is_at_least_the_smallest_value_kept(values: list[float], trim: float) -> None:
    """Brownlees-Gallo skips the trimmed statistics for a move below gamma x this floor: exact only if it is one."""
    w = _SumWindow(80)
    for v in values:
        w.push(v)
    mean, _ = w.trimmed_mean_sd(trim)
    assert mean >= w.sorted[int(trim * len(w))] * (1.0 - 1e-9)


def test_the_opening_minute_is_judged_against_other_openings_not_the_minutes_before_it() -> None:
    """Minute bars: each session opens at 30x a midday minute (the opening auction, AAPL 1m from yfinance); a
    midday minute at 40x is a spike, the opening minute is not. Its own window (one bar per session) judges
    it once it holds volume_min_window openings."""
    vs = VolumeSpike()
    rng = random.Random(5)
    flagged = []
    for day in range(25):
        t0 = T0 + timedelta(days=day)
        for m in range(60):
            v = 1e5 * math.exp(rng.gauss(0, 0.3)) * (30.0 if m == 0 else 1.0)
            if day == 24 and m == 30:
                v = 4e6
            if vs.update(bar(t0 + timedelta(minutes=m), 1.0, 1.0, "1m", volume=v)):
                flagged.append((day, m))
    assert flagged == [(24, 30)]
    # An opening at 40x the openings before it is one.
    [a] = vs.update(bar(T0 + timedelta(days=26), 1.0, 1.0, "1m", volume=1.2e8))
    assert a.details["stream"] == "bar:1m|open"


def test_discrete_heavy_tailed_trade_sizes_are_judged_by_their_tail() -> None:
    """Futures trade sizes (E-mini S&P: median 1 lot, a 90th percentile of about 8, blocks of hundreds): the
    median and its MAD are 1 and 0, and median + 10 MAD flagged every trade of 2 lots, a quarter of them. A
    size 5x the window's 90th percentile is still a spike (a fat finger)."""
    vs = VolumeSpike()
    rng = random.Random(9)
    sizes = [1] * 55 + [2] * 15 + [3] * 8 + [5] * 7 + [8] * 6 + [10] * 4 + [20] * 3 + [40] * 2
    flagged = sum(bool(vs.update(trade(100.0, i, volume=float(rng.choice(sizes))))) for i in range(5000))
    assert flagged < 25  # 0.5%: sizes beyond 5x the 90th percentile do come (40 lots against ~8)
    [a] = vs.update(trade(100.0, 5001, volume=5000.0))
    assert a.score == 5000.0


@pytest.mark.parametrize("interval", ["1d", "1m"])
def test_a_revised_bar_replaces_its_earlier_volume_in_the_window(interval: str) -> None:
    """A poller sends the forming bar, then the final one (the same time, more volume): the window held both, its
    median dragged down by partial volumes, and a final bar was judged against its own earlier version too."""
    step = timedelta(days=1) if interval == "1d" else timedelta(minutes=1)
    once, twice = VolumeSpike(), VolumeSpike()
    rng = random.Random(3)
    for i in range(40):
        v = 1e6 * math.exp(rng.gauss(0, 0.2))
        b = bar(T0 + i * step, 1.0, 1.0, interval, volume=v)
        once.update(b)
        twice.update(b.model_copy(update={"volume": v * 0.3}))  # forming
        twice.update(b)  # final
    assert [list(w.values) for w in twice.windows.values()] == [list(w.values) for w in once.windows.values()]
    spike = bar(T0 + 40 * step, 1.0, 1.0, interval, volume=3.5e7)
    assert bool(twice.update(spike.model_copy(update={"volume": 1e6}))) is False
    assert bool(twice.update(spike)) is bool(once.update(spike)) is True


def test_a_revised_first_bar_after_a_silence_stays_with_the_first_bars() -> None:
    """No calendar: the first minute after a night's silence is a first bar (session_break_seconds); its revision,
    0 s after the bar it revises, went to the regular minutes' window, judged there (an opening auction 30x a
    midday minute: flagged most days), while its partial volume stayed among the first bars."""
    vs = VolumeSpike()
    rng = random.Random(1)
    flagged = []
    for day in range(30):
        for j in range(60):
            v = 1e4 * math.exp(rng.gauss(0, 0.2)) * (30 if j == 0 else 1)
            b = bar(T0 + timedelta(days=day, minutes=j), 1.0, 1.0, "1m", volume=v)
            if j == 0:
                vs.update(b.model_copy(update={"volume": v * 0.5}))  # forming
            if vs.update(b):
                flagged.append((day, j))
    assert flagged == []
    assert len(vs.windows["bar:1m|open"]) == 29  # every first bar but the very first (no silence before it)


def test_a_stream_whose_volumes_spread_widely_needs_a_larger_multiple() -> None:
    """Daily volumes of an illiquid stock: a tenth of its days trade 15x its median. 25x the median is above 20
    (volume_min_ratio) but not above 5x its 90th percentile."""
    vs = VolumeSpike()
    for i in range(100):
        vs.update(bar(T0 + timedelta(days=i), 1.0, 1.0, volume=1.5e7 if i % 10 == 0 else 1e6 * (1 + 0.01 * (i % 7))))
    assert vs.update(bar(T0 + timedelta(days=100), 1.0, 1.0, volume=2.5e7)) == []
    [a] = vs.update(bar(T0 + timedelta(days=101), 1.0, 1.0, volume=8e7))
    assert a.threshold == pytest.approx(7.5e7)


@pytest.mark.parametrize(("spread", "flagged"), [(0.3, True), (1.5, False)])
def test_volumes_spread_over_orders_of_magnitude_need_a_larger_multiple(spread: float, flagged: bool) -> None:
    """Daily volumes lognormal around 1e6: a liquid stock's (log sd 0.3) 100x day is a spike; a penny stock's (log
    sd 1.5: no-trade and busy days) is one of its ordinary busy days."""
    vs = VolumeSpike()
    rng = random.Random(11)
    for i in range(100):
        vs.update(bar(T0 + timedelta(days=i), 1.0, 1.0, volume=1e6 * math.exp(rng.gauss(0, spread))))
    out = vs.update(bar(T0 + timedelta(days=100), 1.0, 1.0, volume=1e8))
    assert bool(out) is flagged


def test_a_pause_between_bursts_of_a_fast_feed_is_not_stale() -> None:
    """Records in bursts (the simulated feed, a busy exchange): the median interval is the gap inside a burst, 3x it
    a fraction of a millisecond, and every pause between two bursts was reported stale (~17 events a minute on
    `make run`). A silence is judged from anomalies.stale_min_silence_seconds (5 s) on."""
    st = StaleFeed()
    for burst in range(5):
        for i in range(20):
            st.update(trade(100.0 + i / 100, burst * 0.1 + i * 0.00005))  # 20 records 50 µs apart, every 100 ms
    last = T0 + timedelta(seconds=0.4 + 19 * 0.00005)
    assert st.check_stale(last + timedelta(seconds=0.1)) == []
    assert st.check_stale(last + timedelta(seconds=4.9)) == []
    [a] = st.check_stale(last + timedelta(seconds=5.5))
    assert a.threshold == pytest.approx(5.0) and "5 s (the least silence judged" in a.message
    off = StaleFeed(AnomalySettings(stale_min_silence_seconds=0))
    for i in range(10):
        off.update(trade(100.0 + i, i * 0.001))
    assert off.check_stale(T0 + timedelta(seconds=0.009 + 0.004))  # no floor: 3x the interval, as before


def test_spread_too_wide_judges_nothing_while_the_days_median_is_zero() -> None:
    sp = SpreadTooWide(AnomalySettings(spread_min_observations=20))
    for i in range(30):
        assert sp.update(quote(100.0, 100.0, i)) == []  # locked quotes: spread 0
    assert sp.zeros == 30 and sp.median() == 0.0
    assert sp.update(quote(100.0, 100.05, 31)) == []


def test_trade_outside_quote_allows_one_spread_below_the_bid_and_no_band_for_a_locked_quote() -> None:
    t4 = TradeOutsideQuote()
    t4.update(quote(100.00, 100.25, 1))
    assert t4.update(trade(99.80, 2)) == []  # under the bid, within one spread
    assert t4.update(trade(99.75, 3)) == []  # exactly bid - spread is not below it
    t4.update(quote(100.0, 100.0, 4))  # locked: no band
    assert t4.update(trade(100.01, 5)) == [] and t4.update(trade(99.99, 6)) == []


def test_a_suspect_trade_is_judged_but_never_kept() -> None:
    """The suite passes suspect=True for a trade another detector flagged: it must not become a reference."""
    ce = ClearlyErroneous()
    ce.update(trade(100.0, 0))
    assert ce.update(trade(101.0, 1), suspect=True) == []
    assert ce.reference == 100.0
    bg = BrownleesGallo()
    bg.update(trade(100.0, 0), suspect=True)  # warming up
    assert len(bg.window) == 0
