"""Boundaries of the tick detectors in streams/anomalies/price.py that a mutation audit found unpinned.

Each test sits exactly on a boundary (a comparison, a trimmed share, a minimum count) with numbers chosen so the
arithmetic is exact in binary floating point: the verdict at the boundary is the code's comparison, not rounding.
"""

from __future__ import annotations

import math
from datetime import timedelta

import pytest

from streams.anomalies.detectors import BrownleesGallo, ClearlyErroneous, SpreadTooWide
from streams.config import AnomalySettings, PriceBand
from tests.unit.streams.anomalies.test_detectors import T0, quote, trade

# ---------------------------------------------------------------------------------------- Brownlees-Gallo

# Trimmed by one value at each end (int(0.15 * 7) = 1), the window is 97, 99, 101, 101, 102: mean 100 and sample
# sd 2 exactly (squared deviations 9 + 1 + 1 + 1 + 4 = 16 over 4). Untrimmed, 90 and 110 make the sd 6.
WINDOW = [90.0, 110.0, 97.0, 99.0, 101.0, 102.0, 101.0]  # the last trade (the "previous" one) is 101


def warmed(settings: AnomalySettings, prices: list[float]) -> BrownleesGallo:
    """A BG detector whose warm-up took `prices` (none judged: the window is below bg_min_window)."""
    bg = BrownleesGallo(settings)
    for i, p in enumerate(prices):
        assert bg.update(trade(p, i)) == []
    assert len(bg.window) == len(prices)
    return bg


def exact_band(*, require_jump: bool = False) -> AnomalySettings:
    """sd x 3 + gamma = 2 x 3 + 100 bps x 100 = 7.0 exactly, over the trimmed WINDOW."""
    return AnomalySettings(bg_min_window=len(WINDOW), bg_trim=0.15, bg_gamma_bps=100.0, bg_sd_multiplier=3.0,
                           bg_require_jump=require_jump)


@pytest.mark.parametrize("price", [107.0, 93.0])
def test_bg_flags_a_trade_exactly_at_three_trimmed_sd_plus_gamma_from_the_trimmed_mean(price: float) -> None:
    """BG's rule |p - mean| >= 3 sd + gamma is inclusive: a trade exactly on the band (7.0) is an outlier."""
    bg = warmed(exact_band(), WINDOW)
    [a] = bg.update(trade(price, 10))
    assert (a.score, a.threshold) == (7.0, 7.0)  # the premise: exactly on the band, no rounding either way
    assert a.details == {"mean": 100.0, "sd": 2.0, "window": len(WINDOW)}


@pytest.mark.parametrize("price", [math.nextafter(107.0, 0.0), math.nextafter(93.0, 200.0)])
def test_bg_passes_a_trade_a_hair_inside_the_band(price: float) -> None:
    """The other side of that boundary: one float inside 3 sd + gamma is clean and enters the window."""
    bg = warmed(exact_band(), WINDOW)
    assert bg.update(trade(price, 10)) == []
    assert len(bg.window) == len(WINDOW) + 1


def test_bg_flags_a_jump_from_the_previous_trade_exactly_at_the_threshold() -> None:
    """With bg_require_jump, a move from the previous trade of exactly the threshold is a jump (inclusive too)."""
    # The previous trade is 101, the trade 108: 7.0 from it (exactly the threshold), 8.0 from the trimmed mean.
    bg = warmed(exact_band(require_jump=True), WINDOW)
    [a] = bg.update(trade(108.0, 10))
    assert (a.score, a.threshold) == (8.0, 7.0)
    bg = warmed(exact_band(require_jump=True), WINDOW)
    assert bg.update(trade(math.nextafter(108.0, 0.0), 10)) == []  # a hair less than 7.0 from the previous trade


@pytest.mark.parametrize(("trim", "mean", "sd"), [
    (0.0, 100.0, 6.0),  # nothing trimmed
    (0.14, 100.0, 6.0),  # int(0.98) = 0: the share is floored (R's mean(trim=)), not rounded
    (0.15, 100.0, 2.0),  # int(1.05) = 1 from each end
    (0.29, 301.0 / 3.0, math.sqrt(4.0 / 3.0)),  # int(2.03) = 2 from each end: 99, 101, 101
])
def test_bg_reference_is_the_window_trimmed_by_the_floor_of_trim_x_n_at_each_end(trim: float, mean: float,
                                                                                   sd: float) -> None:
    """bg_trim cuts floor(trim x n) values from EACH end (TAQMNGR's delta): the reference every verdict uses."""
    bg = warmed(AnomalySettings(bg_min_window=len(WINDOW), bg_trim=trim, bg_require_jump=False), WINDOW)
    [a] = bg.update(trade(200.0, 10))
    assert a.details["mean"] == pytest.approx(mean, rel=1e-12)
    assert a.details["sd"] == pytest.approx(sd, rel=1e-12)
    assert a.threshold == pytest.approx(3.0 * sd + 10.0 * 1e-4 * mean, rel=1e-12)


def test_bg_trimming_decides_the_verdict() -> None:
    """The trim changes verdicts: 7.0 from the mean is an outlier at sd 2 (trimmed), clean at sd 6 (untrimmed)."""
    assert warmed(exact_band(), WINDOW).update(trade(107.0, 10))
    untrimmed = exact_band().model_copy(update={"bg_trim": 0.0})
    assert warmed(untrimmed, WINDOW).update(trade(107.0, 10)) == []


def test_bg_judges_from_the_trade_after_bg_min_window_clean_trades() -> None:
    """bg_min_window is the first window size judged: 20 trades in, the 21st is judged; 19 in, the 20th is not."""
    s = AnomalySettings(bg_min_window=20)
    calm = [100.0 + 0.01 * (i % 3) for i in range(20)]
    bg = warmed(s, calm[:19])
    assert bg.update(trade(1000.0, 19)) == []
    assert len(bg.window) == 20
    bg = warmed(s, calm)
    [a] = bg.update(trade(1000.0, 20))
    assert a.details["window"] == 20


def test_bg_window_holds_exactly_bg_window_trades() -> None:
    """The reference is the last bg_window clean trades: not one more nor one fewer once the window is full."""
    # gamma 50%: nothing but the last trade is an outlier, so every other trade enters the window
    s = AnomalySettings(bg_window=10, bg_min_window=4, bg_trim=0.0, bg_gamma_bps=5000.0, bg_require_jump=False)
    bg = BrownleesGallo(s)
    prices = [99.0] * 5 + [100.0 + (i % 2) for i in range(10)]  # 99s, then 100, 101, 100, ... 101
    for i, p in enumerate(prices):
        assert bg.update(trade(p, i)) == []
    [a] = bg.update(trade(1000.0, 99))
    assert a.details["window"] == 10
    assert a.details["mean"] == 100.5  # the last ten; eleven would take a 99 in (100.36), nine a 100 out (100.56)


def test_bg_shortcut_floor_never_passes_a_move_at_the_threshold_of_a_flat_window() -> None:
    """The fast path's floor stays below the threshold: on a flat window a move a hair above gamma x mean is flagged."""
    # The fast path passes a move below gamma x the smallest kept value x (1 - 1e-9); with sd 0 the threshold is
    # gamma x mean itself, so a margin the other way (1 + 1e-9) would pass this outlier unjudged.
    bg = warmed(AnomalySettings(), [100.0] * 20)
    [a] = bg.update(trade(100.10000000001, 20))  # 1e-11 above gamma x mean = 0.1
    assert a.threshold == pytest.approx(0.1, rel=1e-12) and a.score > a.threshold


def test_bg_shortcut_floor_is_the_smallest_value_the_trim_keeps() -> None:
    """The fast path's floor is gamma x the smallest KEPT value (the trimmed mean's lower bound), no larger one."""
    # With one value kept (trim 0.4 of 3), the next order statistic (the trimmed 200) would put the floor above the
    # threshold and pass a move the full rule flags.
    bg = warmed(AnomalySettings(bg_min_window=3, bg_trim=0.4), [200.0, 100.0, 100.0])
    [a] = bg.update(trade(100.15, 3))  # 0.15 from the mean and from the previous trade; threshold 0.1
    assert a.details == {"mean": 100.0, "sd": 0.0, "window": 3}


def test_bg_with_no_gamma_does_not_flag_a_trade_at_the_flat_windows_price() -> None:
    """With bg_gamma_bps=0 (allowed) a flat market's every trade was flagged, score 0 >= threshold 0, forever."""
    # Each flagged trade stays out of the window, and a run of them never re-anchors (the tolerance is 0).
    bg = warmed(AnomalySettings(bg_gamma_bps=0.0), [100.0] * 20)
    assert bg.update(trade(100.0, 20)) == []


# -------------------------------------------------------------------------------------- FINRA 11892


@pytest.mark.parametrize(("reference", "band"), [
    (0.01, 0.10), (24.99, 0.10), (25.0, 0.10),  # up to and including $25: 10%
    (25.01, 0.05), (50.0, 0.05),  # above $25 up to and including $50: 5%
    (50.01, 0.03), (1e6, 0.03),  # above $50: 3%
])
def test_clearly_erroneous_band_bounds_are_inclusive_upper_bounds(reference: float, band: float) -> None:
    """FINRA 11892 bands' prices are inclusive upper bounds: $25 takes 10%, $50 takes 5%, a cent above the next."""
    assert ClearlyErroneous().band(reference) == band


@pytest.mark.parametrize(("reference", "price", "flagged"), [
    (25.0, 26.75, False), (25.01, 26.7607, True),  # +7%: clean at $25 (10% band), erroneous at $25.01 (5%)
    (50.0, 52.0, False), (50.01, 52.0104, True),  # +4%: clean at $50 (5% band), erroneous at $50.01 (3%)
])
def test_clearly_erroneous_judges_a_move_by_the_band_of_its_reference_at_the_boundary(
        reference: float, price: float, flagged: bool) -> None:
    """The band of a $25 or $50 reference decides a move between the two bands' sizes (7% at $25, 4% at $50)."""
    ce = ClearlyErroneous()
    ce.update(trade(reference, 0))
    assert bool(ce.update(trade(price, 1))) is flagged


DYADIC = [PriceBand(max_price=25.0, max_move=0.125), PriceBand(max_price=50.0, max_move=0.0625),
          PriceBand(max_price=None, max_move=0.03125)]  # binary fractions: p / ref - 1 lands on them exactly


@pytest.mark.parametrize(("reference", "price"), [(16.0, 18.0), (16.0, 14.0), (32.0, 34.0), (32.0, 30.0),
                                                  (64.0, 66.0), (64.0, 62.0)])
def test_clearly_erroneous_flags_a_move_exactly_at_its_band(reference: float, price: float) -> None:
    """FINRA's "10% or more": a move of exactly the band is erroneous, up or down, and never the reference."""
    ce = ClearlyErroneous(AnomalySettings(erroneous_bands=DYADIC))
    ce.update(trade(reference, 0))
    [a] = ce.update(trade(price, 1))
    assert a.score == a.threshold == ce.band(reference)  # the premise: exactly on the band
    assert ce.reference == reference  # and it did not become the reference


def test_clearly_erroneous_above_every_bounded_band_takes_the_last_band() -> None:
    """Bands that all have a max_price: a reference above the last bound takes the last band, not the first."""
    ce = ClearlyErroneous(AnomalySettings(erroneous_bands=[PriceBand(max_price=25.0, max_move=0.10),
                                                           PriceBand(max_price=50.0, max_move=0.05)]))
    assert ce.band(100.0) == 0.05
    ce.update(trade(100.0, 0))
    assert ce.update(trade(106.0, 1))  # 6%: erroneous in the 5% band, clean in the first band's 10%


@pytest.mark.parametrize(("reference", "price"), [(20.0, 18.0), (10.0, 9.0), (25.0, 22.5)])
def test_clearly_erroneous_flags_a_drop_of_exactly_the_default_band(reference: float, price: float) -> None:
    """A drop of exactly the default band was clean ($20 -> $18.00) while a rise of it was flagged ($20 -> $22.00):
    p / ref - 1 in floating point put 333 of the 732 exact-band cent moves from $1 to $50 under the band."""
    ce = ClearlyErroneous()
    ce.update(trade(reference, 0))
    assert ce.update(trade(price, 1))


# -------------------------------------------------------------------------------------------- spread


def spreads(n: int, settings: AnomalySettings) -> SpreadTooWide:
    """A SpreadTooWide that has seen `n` quotes of spread 0.02 today (none judged or flagged)."""
    sp = SpreadTooWide(settings)
    for i in range(n):
        assert sp.update(quote(100.0, 100.02, i)) == []
    assert sp.count == n
    return sp


@pytest.mark.parametrize("minimum", [1, 20])
def test_spread_too_wide_judges_once_it_has_the_minimum_count_of_quotes(minimum: int) -> None:
    """spread_min_observations quotes seen: the next is judged (a 100x spread flagged); one fewer: not judged."""
    s = AnomalySettings(spread_min_observations=minimum)
    wide = quote(100.0, 102.0, 99)
    assert spreads(minimum - 1, s).update(wide) == []
    [a] = spreads(minimum, s).update(wide)
    assert a.score == pytest.approx(2.0) and a.threshold == pytest.approx(50 * 0.02, rel=0.02)


def test_spread_too_wide_counts_the_days_quotes_afresh_each_day() -> None:
    """The minimum count is of the UTC day's quotes: the next day, a wide quote waits for the minimum again."""
    s = AnomalySettings(spread_min_observations=20)
    sp = spreads(20, s)
    next_day = [q.model_copy(update={"timestamp": q.timestamp + timedelta(days=1)})
                for q in (quote(100.0, 100.02, i) for i in range(19))]
    for q in next_day:
        assert sp.update(q) == []
    wide = quote(100.0, 102.0, 0).model_copy(update={"timestamp": T0 + timedelta(days=1, seconds=30)})
    assert sp.update(wide) == []  # the day's 20th quote: 19 seen, not judged
    assert sp.update(wide.model_copy(update={"timestamp": wide.timestamp + timedelta(seconds=1)}))


def test_spread_too_wide_needs_a_spread_above_the_threshold_not_at_it() -> None:
    """A spread must EXCEED 50 x the day's median: exactly 50 x is clean, a hair more is flagged."""
    sp = spreads(20, AnomalySettings(spread_min_observations=20))
    t = 50.0 * sp.median()
    assert sp.update(quote(t, 2.0 * t, 30)) == []  # ask - bid = t exactly (2t is exact)
    [a] = spreads(20, AnomalySettings(spread_min_observations=20)).update(quote(t, math.nextafter(2.0 * t, 4 * t), 30))
    assert a.score > a.threshold == t


@pytest.mark.parametrize(("reference", "price"), [(0.30, 0.27), (10.70, 9.63), (10.30, 11.33), (25.20, 23.94),
                                                  (25.60, 26.88), (54.00, 55.62), (54.00, 52.38)])
def test_clearly_erroneous_flags_a_cent_move_of_exactly_the_band_whatever_the_rounding(reference: float,
                                                                                       price: float) -> None:
    """Cent prices whose exact-band move |p - ref| / ref rounds a hair under the band in binary floating point
    (0.30 -> 0.27 is 0.09999999999999991): still "10% or more", flagged, up or down, in each default band."""
    ce = ClearlyErroneous()
    ce.update(trade(reference, 0))
    assert abs(price - reference) / reference < ce.band(reference)  # the premise: the division rounds under
    [a] = ce.update(trade(price, 1))
    assert a.threshold == ce.band(reference)


@pytest.mark.parametrize(("reference", "price"), [(1000.0, 1029.99), (1000.0, 970.01), (600.0, 617.99)])
def test_clearly_erroneous_passes_a_move_one_cent_inside_the_band(reference: float, price: float) -> None:
    """The margin absorbs rounding only: a move one cent short of 3% of $1000 (2.999%) is clean and the reference."""
    ce = ClearlyErroneous()
    ce.update(trade(reference, 0))
    assert ce.update(trade(price, 1)) == []
    assert ce.reference == price


def test_bg_with_no_gamma_flags_a_one_tick_move_from_a_flat_window_at_any_price_scale() -> None:
    """Only a trade exactly at the mean is exempt when gamma 0 makes the threshold 0; a one-tick move of a coin
    quoted at $0.00001 (SHIB) is |p - mean| > 0 = 3 sd + gamma, an outlier as at $100."""
    for level, tick in ((100.0, 0.01), (0.00001, 0.00000001)):
        bg = warmed(AnomalySettings(bg_gamma_bps=0.0), [level] * 20)
        assert bg.update(trade(level, 20)) == []
        [a] = bg.update(trade(level + tick, 21))
        assert a.threshold == 0.0
