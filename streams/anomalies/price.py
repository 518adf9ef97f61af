"""Tick-level price, quote and volume detectors (trades and quotes; volumes of bars too)."""

from __future__ import annotations

import bisect
import math
from collections import deque
from typing import Any, ClassVar

from streams.anomalies.core import (
    _BAR,
    _BPS,
    _TICK,
    _TRADE,
    Anomaly,
    Detector,
    _Facts,
    _iso_day,
    _put_bounded,
    bar_checks,
    is_daily,
)
from streams.anomalies.windows import (
    _consistent_run,
    _mad_lower_bound,
    _mean_abs_dev_sorted,
    _median_abs_dev,
    _median_sorted,
    _SumWindow,
    _Window,
)
from streams.config import AnomalySettings
from streams.models import MarketDataPoint


class BrownleesGallo(Detector):
    """Brownlees & Gallo (2006), "Financial econometric analysis at ultra-high frequency", J. Empirical Finance.

    Trade i is an outlier when |p_i - mean_delta(k)| >= 3 * sd_delta(k) + gamma, with the mean and sd of the k
    neighbouring prices trimmed by delta at each end (TAQMNGR: k=80, delta=0.10). The original window is
    centred (k/2 ticks before and after); here it is CAUSAL, the k previous clean trades: it costs zero
    latency (a decision per tick as it arrives) but is less precise than the centred original, because the
    reference lags a trending price. In a centred window the tick's own neighbours anchor the reference;
    the nearest causal neighbour is the previous trade, so with bg_require_jump (default) a tick must ALSO be
    at least the same threshold away from the previous trade: a continuous run of moves (a volatility burst,
    a trend the window lags, the ticks after a genuine jump) is not an outlier, an isolated jump is.
    The cost: a genuine jump is flagged on its first tick only; two identical consecutive bad prints pass BG
    on the second (FINRA 11892 and T4 still catch a decimal shift). gamma is relative: gamma = bg_gamma_bps *
    1e-4 * trimmed mean (the paper's gamma=0.04 $ on ~$40 stocks is ~10 bps); it keeps quiet, flat windows
    (sd ~ 0) from flagging a one-tick move. Outliers do not enter the window.
    Score: |p - mean| in price units; threshold: 3 sd + gamma.
    """

    name = "brownlees_gallo"

    def __init__(self, settings: AnomalySettings | None = None) -> None:
        super().__init__(settings)
        s = self.settings
        self.window = _SumWindow(s.bg_window)
        self.pending: deque[float] = deque(maxlen=s.level_shift_run)
        self.previous: float | None = None  # the previous trade, clean or not
        # read at every trade: kept here, a settings model's attribute costs a __getattr__ hook (core._Facts)
        self._min_window, self._require_jump, self._trim = s.bg_min_window, s.bg_require_jump, s.bg_trim
        self._gamma = s.bg_gamma_bps * _BPS
        self._sd_multiplier = s.bg_sd_multiplier

    def update(self, point: MarketDataPoint, f: _Facts | None = None, *, suspect: bool = False) -> list[Anomaly]:
        """`suspect=True` (the suite: another detector flagged the trade) judges it but keeps it out of the window."""
        f = f or _Facts(point)
        p = f.trade
        if p is None:
            return []
        self.symbol = f.symbol
        s, w = self.settings, self.window
        previous, self.previous = self.previous, p
        if len(w) < self._min_window:  # warming up: not judged
            if not suspect:
                w.push(p)
            return []
        if self._require_jump and previous is not None:
            # The threshold is at least gamma x the trimmed mean, and that mean at least the smallest value kept
            # after trimming (less a rounding margin): a move from the previous trade below that bound passes
            # whatever the sd, so the usual tick is judged without computing the trimmed statistics.
            floor = self._gamma * w.sorted[int(self._trim * len(w))] * (1.0 - 1e-9)
            if abs(p - previous) < floor:
                if not suspect:
                    w.push(p)
                    self.pending.clear()
                return []
        mean, sd = w.trimmed_mean_sd(self._trim)
        threshold = self._sd_multiplier * sd + self._gamma * mean
        dev = abs(p - mean)
        # dev == 0: a trade at the mean is no outlier, even where gamma 0 on a flat window makes the threshold 0
        if dev < threshold or dev == 0.0 or (
                self._require_jump and previous is not None and abs(p - previous) < threshold):
            if not suspect:
                w.push(p)
                self.pending.clear()
            return []
        self.pending.append(p)
        level = _consistent_run(self.pending, s.level_shift_run, threshold)
        if level is not None:  # a level shift, not an outlier: re-anchor the window on it
            w.scale(level / mean)
            for x in self.pending:
                w.push(x)
            self.pending.clear()
            return []
        return [self._flag(point, dev, threshold,
                           f"|price - trimmed mean| {dev:.6g} >= {s.bg_sd_multiplier:g} sd + gamma = {threshold:.6g}"
                           f" over the last {len(w)} clean trades",
                           {"mean": mean, "sd": sd, "window": len(w)})]

    def rescale(self, price_factor: float) -> None:
        self.window.scale(price_factor)
        self.pending.clear()
        self.previous = None

    def _dump(self) -> dict[str, Any]:
        return {"window": list(self.window.values), "pending": list(self.pending), "previous": self.previous}

    def _load(self, state: dict[str, Any]) -> None:
        self.window = _SumWindow(self.settings.bg_window, state.get("window", ()))
        self.pending.extend(state.get("pending", ()))
        self.previous = state.get("previous")


class MidQuoteOutlier(Detector):
    """BNHLS (2009) Q4, "Realized kernels in practice: trades and quotes", Econometrics Journal.

    A quote is an outlier when its mid deviates from the rolling median of the 50 previous mids (the quote
    itself excluded) by more than 10 mean absolute deviations. Causal (the original is centred, 25 before
    and 25 after): zero latency, a lagging reference. The deviation unit, as in the reference implementation
    (R highfrequency, rmOutliersQuotes), is the mean absolute deviation of the DAY's mids from their median;
    causally it is estimated from one mid every midquote_day_sample_seconds of the UTC day so far, and never
    less than the same statistic over the window, nor than midquote_mad_floor_bps of the median (sticky
    quotes). Outlying mids do not enter the window. Score: |mid - median|; threshold: 10 x that unit.
    """

    name = "midquote_outlier"

    def __init__(self, settings: AnomalySettings | None = None) -> None:
        super().__init__(settings)
        s = self.settings
        self.window = _Window(s.midquote_window)
        self.pending: deque[float] = deque(maxlen=s.level_shift_run)
        self.day = ""
        self.day_slot = -1
        n_day = math.ceil(86400 / s.midquote_day_sample_seconds)
        self.day_mids: deque[float] = deque(maxlen=n_day)
        self.day_mad = 0.0
        self.day_n = -1 << 40  # `day` as a day number, to compare without formatting a date per quote
        # read at every quote: kept here, a settings model's attribute costs a __getattr__ hook (core._Facts)
        self._min_window, self._sample_seconds = s.midquote_min_window, s.midquote_day_sample_seconds
        self._floor = s.midquote_mad_floor_bps * _BPS
        self._multiplier = s.midquote_mad_multiplier

    def _sample_day(self, f: _Facts, mid: float) -> None:
        """One clean mid per sampling slot of the UTC day; the day's mean absolute deviation from them."""
        if f.day != self.day_n:
            self.day_n = f.day
            day = _iso_day(f.day)
            if day != self.day:
                self.day, self.day_slot, self.day_mad = day, -1, 0.0
                self.day_mids.clear()
        slot = int(f.ts // self._sample_seconds)
        if slot != self.day_slot:
            self.day_slot = slot
            self.day_mids.append(mid)
            mids = sorted(self.day_mids)
            self.day_mad = _mean_abs_dev_sorted(mids, _median_sorted(mids))

    def update(self, point: MarketDataPoint, f: _Facts | None = None) -> list[Anomaly]:
        f = f or _Facts(point)
        q = f.quote
        if q is None:
            return []
        self.symbol = f.symbol
        s, w = self.settings, self.window
        mid = (q[0] + q[1]) / 2.0
        if len(w) < self._min_window:
            w.push(mid)
            self._sample_day(f, mid)
            return []
        med = w.median()
        dev = abs(mid - med)
        # The threshold is at least 10 x max(the day's unit, the floor): within that, the window's own mean
        # absolute deviation (two sums over the window) cannot change the verdict, so it is not computed.
        floor = self._floor * med
        mad = self.day_mad
        if dev > self._multiplier * max(mad, floor):
            mad = max(_mean_abs_dev_sorted(w.sorted, med), mad)
        threshold = self._multiplier * max(mad, floor)
        if dev <= threshold:
            w.push(mid)
            self._sample_day(f, mid)
            self.pending.clear()
            return []
        self.pending.append(mid)
        level = _consistent_run(self.pending, s.level_shift_run, threshold)
        if level is not None:
            w.scale(level / med)
            for x in self.pending:
                w.push(x)
            self.pending.clear()
            self._sample_day(f, mid)
            return []
        return [self._flag(point, dev, threshold,
                           f"mid {mid:.6g} is {dev:.6g} from the median {med:.6g} of {len(w)} mids"
                           f" > {s.midquote_mad_multiplier:g} mean absolute deviations ({threshold:.6g})",
                           {"median": med, "mad": mad})]

    def rescale(self, price_factor: float) -> None:
        self.window.scale(price_factor)
        self.pending.clear()
        self.day_mids = deque((x * price_factor for x in self.day_mids), maxlen=self.day_mids.maxlen)
        self.day_mad *= price_factor

    def _dump(self) -> dict[str, Any]:
        return {"window": list(self.window.values), "pending": list(self.pending), "day": self.day,
                "day_slot": self.day_slot, "day_mids": list(self.day_mids), "day_mad": self.day_mad}

    def _load(self, state: dict[str, Any]) -> None:
        self.window = _Window(self.settings.midquote_window, state.get("window", ()))
        self.pending.extend(state.get("pending", ()))
        self.day = state.get("day", "")
        self.day_n = -1 << 40
        self.day_slot = int(state.get("day_slot", -1))
        self.day_mids.extend(state.get("day_mids", ()))
        self.day_mad = float(state.get("day_mad", 0.0))


class SpreadTooWide(Detector):
    """BNHLS (2009) Q3: a quote whose spread exceeds 50 times the median spread of the day.

    The day (UTC) median comes from a log-bucketed histogram of the day's spreads (bucket ratio 1.02, so the
    median is exact to 1%), which keeps the state small however many quotes arrive; it resets at each UTC
    day. A locked quote (spread 0) counts in the median; if the median is 0 nothing is judged. Score: spread;
    threshold: 50 x the day's median spread.
    """

    name = "spread_wide"
    _MAX_BUCKET: ClassVar[int] = 1000

    def __init__(self, settings: AnomalySettings | None = None) -> None:
        super().__init__(settings)
        self.day = ""
        self.day_n = -1 << 40  # `day` as a day number, to compare without formatting a date per quote
        self.zeros = 0
        self.buckets: dict[int, int] = {}
        self.keys: list[int] = []  # sorted(buckets), kept sorted as buckets appear (not re-sorted per quote)
        self.count = 0  # zeros + sum(buckets)
        self._log_ratio = math.log(self.settings.spread_bucket_ratio)
        # read at every quote: kept here, a settings model's attribute costs a __getattr__ hook (core._Facts)
        self._min_observations = self.settings.spread_min_observations

    def update(self, point: MarketDataPoint, f: _Facts | None = None) -> list[Anomaly]:
        f = f or _Facts(point)
        q = f.quote
        if q is None:
            return []
        self.symbol = f.symbol
        if f.day != self.day_n:
            self.day_n = f.day
            day = _iso_day(f.day)
            if day != self.day:
                self.day, self.zeros, self.buckets, self.keys, self.count = day, 0, {}, [], 0
        spread = q[1] - q[0]
        out: list[Anomaly] = []
        s = self.settings
        if self.count >= self._min_observations:
            med = self.median()
            threshold = s.spread_multiplier * med
            if med > 0 and spread > threshold:
                out.append(self._flag(point, spread, threshold,
                                      f"spread {spread:.6g} > {s.spread_multiplier:g} x the day's median {med:.6g}",
                                      {"median": med}))
        self.count += 1
        if spread <= 0:
            self.zeros += 1
        else:
            b = max(-self._MAX_BUCKET, min(self._MAX_BUCKET, math.floor(math.log(spread) / self._log_ratio)))
            c = self.buckets.get(b)
            if c is None:
                bisect.insort(self.keys, b)
                self.buckets[b] = 1
            else:
                self.buckets[b] = c + 1
        return out

    def median(self) -> float:
        """The day's median spread (lower median), from the histogram."""
        rank = (self.count - 1) // 2
        if rank < self.zeros:
            return 0.0
        seen = self.zeros
        buckets = self.buckets
        for b in self.keys:
            seen += buckets[b]
            if seen > rank:
                return math.exp((b + 0.5) * self._log_ratio)
        return 0.0  # pragma: no cover - unreachable when total > 0

    def rescale(self, price_factor: float) -> None:
        self.day, self.day_n, self.zeros, self.buckets, self.keys, self.count = "", -1 << 40, 0, {}, [], 0

    def _dump(self) -> dict[str, Any]:
        return {"day": self.day, "zeros": self.zeros, "buckets": [[b, c] for b, c in self.buckets.items()]}

    def _load(self, state: dict[str, Any]) -> None:
        self.day = state.get("day", "")
        self.day_n = -1 << 40
        self.zeros = int(state.get("zeros", 0))
        self.buckets = {int(b): int(c) for b, c in state.get("buckets", ())}
        self.keys = sorted(self.buckets)
        self.count = self.zeros + sum(self.buckets.values())


class TradeOutsideQuote(Detector):
    """BNHLS (2009) T4: a trade above ask + spread or below bid - spread of the prevailing quote.

    The prevailing quote is the trade's own bid/ask when it carries one, else the symbol's last clean quote
    if younger than t4_max_quote_age_seconds. Locked quotes (spread 0) give no band and are not used.
    Score: distance beyond the quote (price - ask, or bid - price); threshold: the spread.
    """

    name = "trade_outside_quote"

    def __init__(self, settings: AnomalySettings | None = None) -> None:
        super().__init__(settings)
        self.bid: float | None = None
        self.ask: float | None = None
        self.quote_ts = 0.0

    def update(self, point: MarketDataPoint, f: _Facts | None = None, *, accept_quote: bool = True) -> list[Anomaly]:
        """`accept_quote=False` (the suite: the quote was flagged) keeps the point's quote out of the state."""
        f = f or _Facts(point)
        q = f.quote if accept_quote else None
        p = f.trade
        out: list[Anomaly] = []
        if p is not None:
            self.symbol = f.symbol
            ts = f.ts
            # declared: under mypyc an ill-typed `bid = None` (type: ignore) compiled to bid = 1.0
            bid: float | None
            ask: float | None
            if q is not None:
                bid, ask = q
            elif self.bid is not None and ts - self.quote_ts <= self.settings.t4_max_quote_age_seconds:
                bid, ask = self.bid, self.ask
            else:
                bid = ask = None
            if bid is not None and ask is not None and ask > bid:
                spread = ask - bid
                quote = {"bid": bid, "ask": ask}
                if p > ask + spread:
                    out.append(self._flag(point, p - ask, spread,
                                          f"trade {p:.6g} > ask {ask:.6g} + spread {spread:.6g}", quote))
                elif p < bid - spread:
                    out.append(self._flag(point, bid - p, spread,
                                          f"trade {p:.6g} < bid {bid:.6g} - spread {spread:.6g}", quote))
        if q is not None:
            self.symbol = f.symbol
            self.bid, self.ask, self.quote_ts = q[0], q[1], f.ts
        return out

    def rescale(self, price_factor: float) -> None:
        self.bid = self.ask = None

    def _dump(self) -> dict[str, Any]:
        return {"bid": self.bid, "ask": self.ask, "quote_ts": self.quote_ts}

    def _load(self, state: dict[str, Any]) -> None:
        self.bid, self.ask = state.get("bid"), state.get("ask")
        self.quote_ts = float(state.get("quote_ts", 0.0))


class ClearlyErroneous(Detector):
    """FINRA Rule 11892 (clearly erroneous executions), numerical guidelines against the last clean price.

    Reference price up to $25: a move of 10% or more; $25-$50: 5%; above $50: 3% (bands configurable). A
    flagged price does not become the reference. Score: |p - reference| / reference; threshold: the band.
    """

    name = "clearly_erroneous"

    def __init__(self, settings: AnomalySettings | None = None) -> None:
        super().__init__(settings)
        self.reference: float | None = None
        self.pending: deque[float] = deque(maxlen=self.settings.level_shift_run)
        # read at every trade: kept here, a settings model's attribute costs a __getattr__ hook (core._Facts)
        self._bands: list[tuple[float | None, float]] = [(b.max_price, b.max_move)
                                                         for b in self.settings.erroneous_bands]

    def band(self, reference: float) -> float:
        for max_price, max_move in self._bands:
            if max_price is None or reference <= max_price:
                return max_move
        return self._bands[-1][1]

    def update(self, point: MarketDataPoint, f: _Facts | None = None, *, suspect: bool = False) -> list[Anomaly]:
        """`suspect=True` (the suite: another detector flagged the trade): judged, never the new reference."""
        f = f or _Facts(point)
        p = f.trade
        if p is None:
            return []
        self.symbol = f.symbol
        ref = self.reference
        if ref is None:
            if not suspect:
                self.reference = p
            return []
        band = self.band(ref)
        # |p - ref| / ref, not |p / ref - 1|: 18 / 20 - 1 is -0.09999999999999998, so a drop of exactly the band
        # (FINRA's "10% or more") was clean while the same rise was flagged; the margin absorbs the division's
        # own rounding (a move within 1e-9 of the band is the band: prices are quoted to far fewer digits).
        move = abs(p - ref) / ref
        if move < band * (1.0 - 1e-9):
            if not suspect:
                self.reference = p
                self.pending.clear()
            return []
        self.pending.append(p)
        if _consistent_run(self.pending, self.settings.level_shift_run, band * ref) is not None:
            self.reference = p
            self.pending.clear()
            return []
        return [self._flag(point, move, band, f"move {move:.2%} from the last clean price {ref:.6g} >= {band:.0%}",
                           {"reference": ref})]

    def rescale(self, price_factor: float) -> None:
        if self.reference is not None:
            self.reference *= price_factor
        self.pending.clear()

    def _dump(self) -> dict[str, Any]:
        return {"reference": self.reference, "pending": list(self.pending)}

    def _load(self, state: dict[str, Any]) -> None:
        self.reference = state.get("reference")
        self.pending.extend(state.get("pending", ()))


class VolumeSpike(Detector):
    """Volume (trade size, bar volume) above the rolling median + 10 median absolute deviations (issue 4).

    A trade size also needs `volume_trade_tail_multiple` x the window's 90th percentile (real sizes are discrete
    and heavy-tailed: a futures market's median trade of 1 lot has a MAD of 0). Bars also need
    `volume_min_ratio` x the median of their interval's family (daily volumes are far less
    dispersed than trade sizes: 10 MAD of them sits ~4x the median, where index rebalances and expiries are),
    `volume_tail_multiple` x the window's 90th percentile, `volume_jump_ratio` x the bar before (news volume
    lasts days) and the median x exp(`volume_log_mad_multiplier` x the log volumes' MAD) (a penny stock's
    volumes spread over orders of magnitude). Intraday volume is U-shaped: a session's first bar (its opening
    auction, after the night or a lunch break) is judged against the stream's other first bars, and the bar that
    reaches the close before a closure (its closing auction: AZN.L's last 2-minute bar at 14-19x a midday one)
    against the other closing bars, once there are volume_min_window of them (before that, against the stream's
    window as any bar); a pre- or post-market bar against the other bars outside the sessions. Where a bar sits
    comes from the exchange calendar (`edge`, BarGaps in the suite); alone, a bar after a silence of
    session_break_seconds is a first bar.
    MAD is the normal-consistent one (1.4826 x the raw median absolute deviation, R's mad() and Hampel's
    identifier); with the raw MAD, 10 MAD sits ~2.7 sd up on lognormal(0.6) trade sizes, a 0.3% false-flag rate.

    One window per sub-stream (trades; bars of each interval), since their volumes are not comparable. All
    volumes enter the window: median and MAD are robust to a minority of spikes, and a lasting change of
    regime is absorbed instead of flagged forever. Score: volume; threshold: median + 10 MAD.
    """

    name = "volume_spike"

    def __init__(self, settings: AnomalySettings | None = None) -> None:
        super().__init__(settings)
        self.windows: dict[str, _Window] = {}
        self.last_bar: dict[str, float] = {}  # intraday bar stream -> its last bar's time
        # bar stream -> (time, window) of the bar whose volume entered a window last: its revision (a poller sends
        # the forming bar, then the final one) replaces that volume instead of adding a second, partial one
        self.last_push: dict[str, tuple[float, str]] = {}
        # read at every volume: kept here, a settings model's attribute costs a __getattr__ hook (core._Facts)
        s = self.settings
        self._min_window, self._multiplier, self._scale = s.volume_min_window, s.volume_mad_multiplier, \
            s.volume_mad_scale
        self._trade_tail = s.volume_trade_tail_multiple
        # up to four windows per sub-stream (an intraday bar stream's own, its first bars', its closing bars', its
        # extended hours')
        self._max_windows = 4 * s.max_streams

    def update(self, point: MarketDataPoint, f: _Facts | None = None, *, judge: bool = True,
               edge: int = 0) -> list[Anomaly]:
        """`judge=False` (the suite, for a bar whose return is an outlier): the volume enters the window unjudged,
        so the next bar is judged against it too. `edge` (the suite, from BarGaps and the exchange calendar): 1 for
        a session's first bar, 2 for its closing bar, 3 for a bar outside the sessions, 0 for any other."""
        f = f or _Facts(point)
        v = f.volume
        kind = f.kind
        if v is None or v <= 0 or not (kind == _TICK or kind == _TRADE or kind == _BAR):
            return []
        self.symbol = f.symbol
        s = self.settings
        key = f.stream
        judged_in = ""  # the window judging this bar when it is not the one it enters (a closing bar's, warming up)
        if kind == _BAR and not is_daily(point.interval):
            # The first bar of a session holds the opening auction (10-50x a midday minute): it is judged against
            # the stream's other opening bars, not against the minutes before it; the closing bar likewise.
            last = self.last_bar.get(key)
            _put_bounded(self.last_bar, key, f.ts, s.max_streams)
            # a revision of the latest bar keeps the window its earlier version entered: without a calendar, the
            # first bar after a silence is a first bar by that silence, which its revision (0 s later) no longer sees
            prev = self.last_push.get(key) if last == f.ts else None
            if edge == 3:  # pre- or post-market: a fraction of a regular bar's volume
                key += "|outside"
            elif edge == 1 or (last is not None and f.ts - last >= s.session_break_seconds) or (
                    edge == 0 and prev is not None and prev[0] == f.ts and prev[1] == key + "|open"):
                key += "|open"
            elif edge == 2:
                cw = self.windows.get(key + "|close")
                if cw is None or len(cw) < self._min_window:
                    judged_in = key
                key += "|close"
        w = self.windows.get(key)
        if w is None:
            w = _Window(s.volume_window)
            _put_bounded(self.windows, key, w, self._max_windows)
        pushed = w
        if kind == _BAR:
            if (prev := self.last_push.get(f.stream)) is not None and prev[0] == f.ts and prev[1] == key and len(w):
                w.pop()  # this bar's earlier version: judged against the other bars, not against itself
            _put_bounded(self.last_push, f.stream, (f.ts, key), s.max_streams)
        if judged_in and (main := self.windows.get(judged_in)) is not None:
            w = main
        out: list[Anomaly] = []
        cfg = bar_checks(s, point.interval) if kind == _BAR else None
        min_ratio = cfg.volume_min_ratio if cfg is not None else 1.0
        if judge and len(w) >= self._min_window and v > (med := w.median()) * min_ratio and v > med + (
                self._multiplier * self._scale * _mad_lower_bound(w.sorted, med)):  # threshold >= both
            mad = self.settings.volume_mad_scale * _median_abs_dev(w.sorted, med)
            threshold = max(med + s.volume_mad_multiplier * mad, med * min_ratio)
            tail = cfg.volume_tail_multiple if cfg is not None else self._trade_tail
            if tail > 0:
                srt = w.sorted
                threshold = max(threshold, tail * srt[(len(srt) * 9) // 10])
            if cfg is not None and cfg.volume_jump_ratio > 0:
                # news volume lasts days (or the minutes after an open); a wrong volume is one bar
                threshold = max(threshold, cfg.volume_jump_ratio * w.values[-1])
            if cfg is not None and cfg.volume_log_mad_multiplier > 0:
                # how far volumes spread in log: an illiquid stock's days differ by orders of magnitude
                logs = sorted(abs(math.log(x / med)) for x in w.sorted)
                spread = self._scale * logs[len(logs) // 2]
                threshold = max(threshold, med * math.exp(cfg.volume_log_mad_multiplier * spread))
            if v > threshold:
                out.append(self._flag(point, v, threshold, f"volume {v:.6g} > {threshold:.6g} (median {med:.6g},"
                                      f" MAD {mad:.6g})",
                                      {"median": med, "mad": mad, "stream": judged_in or key}))
        pushed.push(v)
        return out

    def rescale_volume(self, stream: str, factor: float) -> None:
        for key in (stream, stream + "|open", stream + "|close", stream + "|outside"):
            if key in self.windows:
                self.windows[key].scale(factor)

    def _dump(self) -> dict[str, Any]:
        return {"windows": {k: list(w.values) for k, w in self.windows.items()}, "last_bar": self.last_bar}

    def _load(self, state: dict[str, Any]) -> None:
        for k, values in state.get("windows", {}).items():
            _put_bounded(self.windows, k, _Window(self.settings.volume_window, values), self._max_windows)
        for k, ts in state.get("last_bar", {}).items():
            _put_bounded(self.last_bar, k, float(ts), self.settings.max_streams)
