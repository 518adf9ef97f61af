"""Market-data anomaly detectors (issue 4): plain classes, no Faust inside.

An anomaly is a *flag* on a record that passed validation (streams/rules.py); it is never a rejection.
One instance of a detector holds the state of ONE symbol, bounded in memory (deques with maxlen, small
dicts with a cap) and serialisable to a plain JSON-able dict with `to_state()` / `from_state(d)`, so the
Faust agent can keep it in a changelog-backed table keyed by symbol:

    suite = DetectorSuite.from_state(table[sym], settings) if sym in table else DetectorSuite(settings)
    anomalies = suite.update(point)
    table[sym] = suite.to_state()

Detectors and sources:

  brownlees_gallo      Brownlees & Gallo (2006), causal window (tick)
  midquote_outlier     Barndorff-Nielsen, Hansen, Lunde & Shephard (2009) Q4 (tick)
  spread_wide          BNHLS (2009) Q3 (tick)
  trade_outside_quote  BNHLS (2009) T4 (tick)
  clearly_erroneous    FINRA Rule 11892 numerical guidelines (tick)
  volume_spike         rolling median + 10 MAD (tick)
  stale_feed           k identical values in a row / silence > 3x the expected interval (feed)
  bar_gap              a missing bar in the expected grid of its interval (gap)
  split_suspect        open/previous-close ratio near 2, 3, 1/2, 1/3 (corporate_action)

`score` and `threshold` are in each detector's natural unit (said in its docstring); the detector flags
when the score crosses the threshold, so `score / threshold` is comparable across symbols.

Windowed price detectors keep flagged values out of their reference (a fat finger must not poison it).
So that a genuine level shift (a halt that reopens elsewhere, an overnight gap) does not leave a symbol
flagged forever, `level_shift_run` consecutive flagged values that agree with each other re-anchor the
reference; the first `level_shift_run - 1` of them have been flagged by then (the price of a causal rule).
"""

from __future__ import annotations

import bisect
import math
import re
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, ClassVar, Literal, Self

from streams.config import AnomalySettings
from streams.models import DataType, MarketDataPoint

AnomalyKind = Literal["tick", "feed", "gap", "corporate_action"]
STATE_VERSION = 1
_BPS = 1e-4
# The kinds as plain strings: comparing with a str is ~8x faster than with an enum member (an attribute lookup
# on the enum class each time), and the detectors compare several times per record.
_TICK, _TRADE, _QUOTE, _BAR = DataType.TICK.value, DataType.TRADE.value, DataType.QUOTE.value, DataType.BAR.value


@dataclass(frozen=True, slots=True)
class Anomaly:
    """One flag. `record` is the flagged record as a JSON-able dict; `details` carries extra numbers."""

    detector: str
    symbol: str
    score: float
    threshold: float
    kind: AnomalyKind
    message: str
    record: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------- helpers


def _record(point: MarketDataPoint) -> dict[str, Any]:
    return point.model_dump(mode="json", exclude_none=True)


class _Facts:
    """What the detectors derive from a point, derived once: the suite hands one to all nine detectors (each
    deriving its own was a fifth of their time in a profile). A detector called alone derives it itself."""

    __slots__ = ("day", "quote", "stream", "trade", "ts")

    def __init__(self, p: MarketDataPoint) -> None:
        kind = p.data_type
        self.ts: float = p.timestamp.timestamp()
        self.day = int(self.ts // 86400.0)  # the UTC day's number (Unix time has no leap seconds)
        is_trade = kind == _TICK or kind == _TRADE
        # a trade's price; a quote's (bid, ask); the sub-stream whose values are comparable
        self.trade: float | None = p.price if is_trade else None
        bid, ask = p.bid, p.ask
        self.quote: tuple[float, float] | None = (
            (bid, ask) if bid is not None and ask is not None and (kind == _TICK or kind == _QUOTE)
            else None)
        self.stream = f"bar:{p.interval or '?'}" if kind == _BAR else "trade" if is_trade else str(kind)


def _iso_day(day: int) -> str:
    return date.fromordinal(_EPOCH_ORDINAL + day).isoformat()


_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def _median_sorted(s: list[float]) -> float:
    n = len(s)
    mid = n // 2
    return s[mid] if n % 2 else (s[mid - 1] + s[mid]) / 2.0


def _median(values: Iterable[float]) -> float:
    return _median_sorted(sorted(values))


# The per-tick statistics below run over windows of 50-80 values for every record (the detectors were a
# third of a worker's CPU in a py-spy profile of the benchmark): the window keeps running sums, and what
# must touch every value uses C-level sum/sorted over list comprehensions, not generator expressions.


def _trimmed_mean_sd(s: list[float], trim: float) -> tuple[float, float]:
    """Mean and sample sd of a sorted sample with `trim` of it cut from EACH end (R's mean(trim=)).
    The reference implementation; `_SumWindow.trimmed_mean_sd` gives the same from running sums."""
    g = int(trim * len(s))
    core = s[g:len(s) - g] if g else s
    n = len(core)
    m = sum(core) / n
    if n < 2:
        return m, 0.0
    return m, math.sqrt(sum((x - m) ** 2 for x in core) / (n - 1))


def _mean_abs_dev_sorted(s: list[float], c: float) -> float:
    """Mean |x - c| over a sorted sample: (sum above c - c * count above) + (c * count below - sum below)."""
    i = bisect.bisect_left(s, c)
    n = len(s)
    return ((sum(s[i:]) - c * (n - i)) + (c * i - sum(s[:i]))) / n


def _median_abs_dev(s: list[float], c: float) -> float:
    """Median of |x - c| over a sorted sample, without sorting the distances: they are two sorted runs (c - x
    leftwards of c, x - c rightwards), and an order statistic of two sorted runs is a binary search."""
    i = bisect.bisect_left(s, c)
    n = len(s)

    def kth(k: int) -> float:  # the k-th smallest distance (0-based)
        # t = how many of the k+1 smallest come from the left run (left[t] = c - s[i-1-t], right[u] = s[i+u] - c)
        lo, hi = max(0, k + 1 - (n - i)), min(k + 1, i)
        while lo < hi:
            t = (lo + hi) // 2
            u = k + 1 - t
            if u > 0 and s[i + u - 1] - c > c - s[i - 1 - t]:
                lo = t + 1
            else:
                hi = t
        u = k + 1 - lo
        left = c - s[i - lo] if lo else -math.inf
        right = s[i + u - 1] - c if u else -math.inf
        return left if left > right else right

    if n % 2:
        return kth(n // 2)
    return (kth(n // 2 - 1) + kth(n // 2)) / 2.0


def _mad_lower_bound(s: list[float], c: float) -> float:
    """A lower bound of `_median_abs_dev(s, median)`, from two order statistics: at least half the values lie
    within the MAD of the median, which the quarter below s[n//4] and the quarter above s[n-1-n//4] cannot."""
    q = len(s) // 4
    return max(0.0, min(c - s[q], s[len(s) - 1 - q] - c))


def _put_bounded(d: dict[str, Any], key: str, value: Any, cap: int) -> None:
    """Insert into a dict holding at most `cap` keys, evicting the least recently inserted."""
    if key not in d:
        while len(d) >= cap:
            d.pop(next(iter(d)))
    d[key] = value


class _Window:
    """A bounded FIFO window with a sorted twin (bisect), so medians cost O(k), not O(k log k)."""

    __slots__ = ("sorted", "values")

    def __init__(self, maxlen: int, values: Iterable[float] = ()) -> None:
        self.values: deque[float] = deque(maxlen=maxlen)
        self.sorted: list[float] = []
        for v in values:
            self.push(v)

    def push(self, v: float) -> None:
        values = self.values
        if len(values) == values.maxlen:
            srt = self.sorted
            del srt[bisect.bisect_left(srt, values[0])]
        values.append(v)
        bisect.insort(self.sorted, v)

    def scale(self, factor: float) -> None:
        values = [v * factor for v in self.values]
        self.values.clear()
        self.sorted = []
        for v in values:
            self.push(v)

    def median(self) -> float:
        return _median_sorted(self.sorted)

    def __len__(self) -> int:
        return len(self.values)


class _SumWindow(_Window):
    """A _Window that also keeps running sums of (x - anchor) and its square, so a trimmed mean and sd only touch
    the trimmed ends. The anchor (a recent value) keeps the squares small (no cancellation); the sums are
    recomputed exactly every `_RESUM` pushes so rounding cannot drift."""

    __slots__ = ("anchor", "pushes", "s1", "s2")
    _RESUM = 1024

    def __init__(self, maxlen: int, values: Iterable[float] = ()) -> None:
        self.anchor = 0.0
        self.s1 = self.s2 = 0.0
        self.pushes = 0
        super().__init__(maxlen, values)

    def _resum(self) -> None:
        a = self.anchor = self.sorted[len(self.sorted) // 2] if self.sorted else 0.0
        d = [x - a for x in self.values]
        self.s1 = sum(d)
        self.s2 = sum([x * x for x in d])

    def push(self, v: float) -> None:
        a = self.anchor
        if len(self.values) == self.values.maxlen:
            old = self.values[0]
            del self.sorted[bisect.bisect_left(self.sorted, old)]
            self.s1 -= old - a
            self.s2 -= (old - a) ** 2
        self.values.append(v)
        bisect.insort(self.sorted, v)
        self.s1 += v - a
        self.s2 += (v - a) ** 2
        self.pushes += 1
        if self.pushes % self._RESUM == 0 or len(self.values) == 1:
            self._resum()

    def scale(self, factor: float) -> None:
        super().scale(factor)
        self._resum()

    def trimmed_mean_sd(self, trim: float) -> tuple[float, float]:
        """`_trimmed_mean_sd(self.sorted, trim)`, from the running sums minus the trimmed ends."""
        s, n, a = self.sorted, len(self.sorted), self.anchor
        g = int(trim * n)
        k = n - 2 * g
        s1, s2 = self.s1, self.s2
        if g:
            ends = [x - a for x in s[:g]] + [x - a for x in s[n - g:]]
            s1 -= sum(ends)
            s2 -= sum([x * x for x in ends])
        mean_d = s1 / k
        if k < 2:
            return a + mean_d, 0.0
        var = (s2 - k * mean_d * mean_d) / (k - 1)
        return a + mean_d, math.sqrt(var) if var > 0.0 else 0.0


def _consistent_run(pending: deque[float], run: int, tolerance: float) -> float | None:
    """The run's median when `run` consecutive flagged values agree within `tolerance` (a level shift)."""
    if len(pending) < run:
        return None
    med = _median(pending)
    return med if all(abs(x - med) < tolerance for x in pending) else None


# -------------------------------------------------------------------------------------------- detectors


class Detector:
    """Base class: one symbol's state for one rule."""

    name: ClassVar[str] = "detector"
    kind: ClassVar[AnomalyKind] = "tick"

    def __init__(self, settings: AnomalySettings | None = None) -> None:
        self.settings = settings or AnomalySettings()
        self.symbol = ""

    def update(self, point: MarketDataPoint, f: _Facts | None = None) -> list[Anomaly]:
        """Judge one point (and learn from it); `f` is the point's _Facts when the caller has them."""
        raise NotImplementedError

    def rescale(self, price_factor: float) -> None:
        """Multiply every remembered price by `price_factor` (after a split); default: nothing to do."""

    def to_state(self) -> dict[str, Any]:
        return {"v": STATE_VERSION, "symbol": self.symbol, **self._dump()}

    @classmethod
    def from_state(cls, state: dict[str, Any], settings: AnomalySettings | None = None) -> Self:
        """Rebuild from `to_state()`; windows are cut to the (possibly smaller) configured sizes."""
        obj = cls(settings)
        obj.symbol = state.get("symbol", "")
        obj._load(state)
        return obj

    def _dump(self) -> dict[str, Any]:
        return {}

    def _load(self, state: dict[str, Any]) -> None:
        pass

    def _flag(self, point: MarketDataPoint, score: float, threshold: float, message: str,
              details: dict[str, Any] | None = None) -> Anomaly:
        return Anomaly(self.name, point.symbol, score, threshold, self.kind, message, _record(point), details or {})


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

    def update(self, point: MarketDataPoint, f: _Facts | None = None, *, suspect: bool = False) -> list[Anomaly]:
        """`suspect=True` (the suite: another detector flagged the trade) judges it but keeps it out of the window."""
        p = (f or _Facts(point)).trade
        if p is None:
            return []
        self.symbol = point.symbol
        s, w = self.settings, self.window
        previous, self.previous = self.previous, p
        if len(w) < s.bg_min_window:  # warming up: not judged
            if not suspect:
                w.push(p)
            return []
        if s.bg_require_jump and previous is not None:
            # The threshold is at least gamma x the trimmed mean, and that mean at least the smallest value kept
            # after trimming (less a rounding margin): a move from the previous trade below that bound passes
            # whatever the sd, so the usual tick is judged without computing the trimmed statistics.
            floor = s.bg_gamma_bps * _BPS * w.sorted[int(s.bg_trim * len(w))] * (1.0 - 1e-9)
            if abs(p - previous) < floor:
                if not suspect:
                    w.push(p)
                    self.pending.clear()
                return []
        mean, sd = w.trimmed_mean_sd(s.bg_trim)
        threshold = s.bg_sd_multiplier * sd + s.bg_gamma_bps * _BPS * mean
        dev = abs(p - mean)
        if dev < threshold or (s.bg_require_jump and previous is not None and abs(p - previous) < threshold):
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

    def _sample_day(self, f: _Facts, mid: float) -> None:
        """One clean mid per sampling slot of the UTC day; the day's mean absolute deviation from them."""
        if f.day != self.day_n:
            self.day_n = f.day
            day = _iso_day(f.day)
            if day != self.day:
                self.day, self.day_slot, self.day_mad = day, -1, 0.0
                self.day_mids.clear()
        slot = int(f.ts // self.settings.midquote_day_sample_seconds)
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
        self.symbol = point.symbol
        s, w = self.settings, self.window
        mid = (q[0] + q[1]) / 2.0
        if len(w) < s.midquote_min_window:
            w.push(mid)
            self._sample_day(f, mid)
            return []
        med = w.median()
        dev = abs(mid - med)
        # The threshold is at least 10 x max(the day's unit, the floor): within that, the window's own mean
        # absolute deviation (two sums over the window) cannot change the verdict, so it is not computed.
        floor = s.midquote_mad_floor_bps * _BPS * med
        mad = self.day_mad
        if dev > s.midquote_mad_multiplier * max(mad, floor):
            mad = max(_mean_abs_dev_sorted(w.sorted, med), mad)
        threshold = s.midquote_mad_multiplier * max(mad, floor)
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
    _MAX_BUCKET = 1000

    def __init__(self, settings: AnomalySettings | None = None) -> None:
        super().__init__(settings)
        self.day = ""
        self.day_n = -1 << 40  # `day` as a day number, to compare without formatting a date per quote
        self.zeros = 0
        self.buckets: dict[int, int] = {}
        self.keys: list[int] = []  # sorted(buckets), kept sorted as buckets appear (not re-sorted per quote)
        self.count = 0  # zeros + sum(buckets)
        self._log_ratio = math.log(self.settings.spread_bucket_ratio)

    def update(self, point: MarketDataPoint, f: _Facts | None = None) -> list[Anomaly]:
        f = f or _Facts(point)
        q = f.quote
        if q is None:
            return []
        self.symbol = point.symbol
        if f.day != self.day_n:
            self.day_n = f.day
            day = _iso_day(f.day)
            if day != self.day:
                self.day, self.zeros, self.buckets, self.keys, self.count = day, 0, {}, [], 0
        spread = q[1] - q[0]
        out: list[Anomaly] = []
        s = self.settings
        if self.count >= s.spread_min_observations:
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
            self.symbol = point.symbol
            ts = f.ts
            if q is not None:
                bid, ask = q
            elif self.bid is not None and ts - self.quote_ts <= self.settings.t4_max_quote_age_seconds:
                bid, ask = self.bid, self.ask  # type: ignore[assignment]
            else:
                bid = ask = None  # type: ignore[assignment]
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
            self.symbol = point.symbol
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
    flagged price does not become the reference. Score: |p / reference - 1|; threshold: the band.
    """

    name = "clearly_erroneous"

    def __init__(self, settings: AnomalySettings | None = None) -> None:
        super().__init__(settings)
        self.reference: float | None = None
        self.pending: deque[float] = deque(maxlen=self.settings.level_shift_run)

    def band(self, reference: float) -> float:
        for b in self.settings.erroneous_bands:
            if b.max_price is None or reference <= b.max_price:
                return b.max_move
        return self.settings.erroneous_bands[-1].max_move

    def update(self, point: MarketDataPoint, f: _Facts | None = None, *, suspect: bool = False) -> list[Anomaly]:
        """`suspect=True` (the suite: another detector flagged the trade): judged, never the new reference."""
        p = (f or _Facts(point)).trade
        if p is None:
            return []
        self.symbol = point.symbol
        ref = self.reference
        if ref is None:
            if not suspect:
                self.reference = p
            return []
        band = self.band(ref)
        move = abs(p / ref - 1.0)
        if move < band:
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

    def update(self, point: MarketDataPoint, f: _Facts | None = None) -> list[Anomaly]:
        v = point.volume
        kind = point.data_type
        if v is None or v <= 0 or not (kind == _TICK or kind == _TRADE or kind == _BAR):
            return []
        self.symbol = point.symbol
        s = self.settings
        key = (f or _Facts(point)).stream
        w = self.windows.get(key)
        if w is None:
            w = _Window(s.volume_window)
            _put_bounded(self.windows, key, w, s.max_streams)
        out: list[Anomaly] = []
        if len(w) >= s.volume_min_window and v > (med := w.median()) and v > med + s.volume_mad_multiplier * (
                s.volume_mad_scale * _mad_lower_bound(w.sorted, med)):  # the threshold is >= both
            mad = self.settings.volume_mad_scale * _median_abs_dev(w.sorted, med)
            threshold = med + s.volume_mad_multiplier * mad
            if v > threshold:
                out.append(self._flag(point, v, threshold, f"volume {v:.6g} > median {med:.6g}"
                                      f" + {s.volume_mad_multiplier:g} MAD ({mad:.6g})",
                                      {"median": med, "mad": mad, "stream": key}))
        w.push(v)
        return out

    def rescale_volume(self, stream: str, factor: float) -> None:
        if stream in self.windows:
            self.windows[stream].scale(factor)

    def _dump(self) -> dict[str, Any]:
        return {"windows": {k: list(w.values) for k, w in self.windows.items()}}

    def _load(self, state: dict[str, Any]) -> None:
        for k, values in state.get("windows", {}).items():
            _put_bounded(self.windows, k, _Window(self.settings.volume_window, values), self.settings.max_streams)


class StaleFeed(Detector):
    """A feed that stopped moving: `stale_run` identical values in a row (trade price, quote, bar close) per
    sub-stream, or (`check_stale`) no update for more than 3x the expected interval. Feed-level events, not
    bad ticks; reported once per run / per silence. Score: run length or silence (s); threshold: the limit.
    """

    name = "stale_feed"
    kind = "feed"

    def __init__(self, settings: AnomalySettings | None = None) -> None:
        super().__init__(settings)
        self.runs: dict[str, list[Any]] = {}  # stream -> [value, run length, already reported]
        self.last_ts: float | None = None
        self.last_source = ""
        self.intervals: deque[float] = deque(maxlen=self.settings.stale_interval_window)
        self.silence_reported = False

    def update(self, point: MarketDataPoint, f: _Facts | None = None) -> list[Anomaly]:
        f = f or _Facts(point)
        self.symbol = point.symbol
        ts = f.ts
        if self.last_ts is not None and ts > self.last_ts:
            self.intervals.append(ts - self.last_ts)
        if self.last_ts is None or ts >= self.last_ts:
            self.last_ts = ts
            self.silence_reported = False
        self.last_source = point.source
        value: Any
        if (q := f.quote) is not None and point.data_type == _QUOTE:
            value = [q[0], q[1], point.bid_size, point.ask_size]  # a live book changes sizes
        elif (p := f.trade) is not None:
            value = p
        elif point.data_type == _BAR and point.close is not None:
            value = point.close
        else:
            return []
        key = f.stream
        run = self.runs.get(key)
        if run is None or run[0] != value:
            _put_bounded(self.runs, key, [value, 1, False], self.settings.max_streams)
            return []
        run[1] += 1
        if run[1] >= self.settings.stale_run and not run[2]:
            run[2] = True
            return [self._flag(point, float(run[1]), float(self.settings.stale_run),
                               f"{run[1]} identical {key} values in a row ({value})", {"stream": key})]
        return []

    def expected_interval(self) -> float | None:
        if self.settings.stale_expected_interval_seconds is not None:
            return self.settings.stale_expected_interval_seconds
        return _median(self.intervals) if len(self.intervals) >= 5 else None

    def check_stale(self, now: datetime, *, expected_interval: float | None = None) -> list[Anomaly]:
        """Called by a timer while the market is open (this class knows no calendar): a silence > 3x the
        expected interval (given, configured, or the median of the observed ones) is reported once."""
        interval = expected_interval or self.expected_interval()
        if self.last_ts is None or interval is None or self.silence_reported:
            return []
        silence = now.timestamp() - self.last_ts
        threshold = self.settings.stale_interval_multiplier * interval
        if silence <= threshold:
            return []
        self.silence_reported = True
        last = datetime.fromtimestamp(self.last_ts, UTC).isoformat()
        record = {"symbol": self.symbol, "source": self.last_source, "timestamp": last}
        return [Anomaly(self.name, self.symbol, silence, threshold, "feed",
                        f"no update for {silence:.1f} s > {self.settings.stale_interval_multiplier:g} x the expected"
                        f" interval {interval:.3g} s", record, {"expected_interval": interval})]

    def _dump(self) -> dict[str, Any]:
        return {"runs": self.runs, "last_ts": self.last_ts, "last_source": self.last_source,
                "intervals": list(self.intervals), "silence_reported": self.silence_reported}

    def _load(self, state: dict[str, Any]) -> None:
        for k, run in state.get("runs", {}).items():
            _put_bounded(self.runs, k, list(run), self.settings.max_streams)
        self.last_ts = state.get("last_ts")
        self.last_source = state.get("last_source", "")
        self.intervals.extend(state.get("intervals", ()))
        self.silence_reported = bool(state.get("silence_reported", False))


_INTERVAL_RE = re.compile(r"^(\d+)(m|min|h|d)$")
_UNIT_SECONDS = {"m": 60, "min": 60, "h": 3600, "d": 86400}


def interval_seconds(interval: str | None) -> int | None:
    """Seconds in a bar interval such as 1m, 5m, 1h, 1d; None for ones without a fixed grid (1wk, 1mo)."""
    m = _INTERVAL_RE.match(interval or "")
    return int(m.group(1)) * _UNIT_SECONDS[m.group(2)] if m else None


def weekdays_between(d0: date, d1: date, holidays: Iterable[date] = ()) -> int:
    """Monday-Friday dates strictly between d0 and d1, minus the holidays among them."""
    days = (d1 - d0).days - 1
    if days <= 0:
        return 0
    weeks, rest = divmod(days, 7)
    count = weeks * 5 + sum(1 for i in range(rest) if (d0 + timedelta(days=1 + weeks * 7 + i)).weekday() < 5)
    return count - sum(1 for h in set(holidays) if d0 < h < d1 and h.weekday() < 5)


class BarGaps(Detector):
    """A missing bar in the expected grid of a bar series (issue 4), one gap event per hole.

    Daily bars: the weekdays between two bars that are not holidays (gap_holidays; no exchange calendar).
    Intraday bars: (t - last) / interval - 1 bars missing, unless the silence is at least
    session_break_seconds (overnight, weekend), which is a session break. Out-of-order bars are ignored.
    Score: bars missing; threshold: 1.
    """

    name = "bar_gap"
    kind = "gap"

    def __init__(self, settings: AnomalySettings | None = None) -> None:
        super().__init__(settings)
        self.last: dict[str, float] = {}  # interval -> timestamp of the latest bar

    def update(self, point: MarketDataPoint, f: _Facts | None = None) -> list[Anomaly]:
        if point.data_type != _BAR:
            return []
        step = interval_seconds(point.interval)
        if step is None:
            return []
        self.symbol = point.symbol
        key = point.interval or ""
        ts = (f or _Facts(point)).ts
        last = self.last.get(key)
        if last is not None and ts <= last:
            return []
        _put_bounded(self.last, key, ts, self.settings.max_streams)
        if last is None:
            return []
        if step == 86400:
            missing = weekdays_between(datetime.fromtimestamp(last, UTC).date(), point.timestamp.date(),
                                       self.settings.gap_holidays)
        elif ts - last >= self.settings.session_break_seconds:
            return []
        else:
            missing = round((ts - last) / step) - 1
        if missing < 1:
            return []
        since = datetime.fromtimestamp(last, UTC).isoformat()
        return [self._flag(point, float(missing), 1.0, f"{missing} missing {key} bar(s) after {since}",
                           {"after": since, "interval": key})]

    def _dump(self) -> dict[str, Any]:
        return {"last": self.last}

    def _load(self, state: dict[str, Any]) -> None:
        for k, ts in state.get("last", {}).items():
            _put_bounded(self.last, k, float(ts), self.settings.max_streams)


class SplitSuspect(Detector):
    """A split-like jump at the open: open / previous close within 2% of 2, 3, 1/2 or 1/3 (a 1:2, 1:3, 2:1,
    3:1 split or reverse split). A corporate-action suspect, NOT an error. The open is each daily bar's open,
    or the first trade/quote (mid) after a silence of session_break_seconds, or the first intraday bar after
    one. Score: open / previous close; threshold: the nominal ratio matched (details.tolerance).
    """

    name = "split_suspect"
    kind = "corporate_action"

    def __init__(self, settings: AnomalySettings | None = None) -> None:
        super().__init__(settings)
        self.last: dict[str, list[float]] = {}  # family -> [last price, its timestamp]

    def update(self, point: MarketDataPoint, f: _Facts | None = None) -> list[Anomaly]:
        f = f or _Facts(point)
        s = self.settings
        ts = f.ts
        if point.data_type == _BAR:
            step = interval_seconds(point.interval)
            daily = step is not None and step >= 86400
            open_, close = point.open, point.close
        else:
            daily = False
            q = f.quote
            p = f.trade
            open_ = close = p if p is not None else ((q[0] + q[1]) / 2.0 if q is not None else None)
        if open_ is None or close is None:
            return []
        self.symbol = point.symbol
        key = f.stream if point.data_type == _BAR else "tick"  # the family
        prev = self.last.get(key)
        if prev is not None and ts < prev[1]:
            return []
        _put_bounded(self.last, key, [close, ts], s.max_streams)
        if prev is None or not (daily or ts - prev[1] >= s.session_break_seconds):
            return []
        ratio = open_ / prev[0]
        for nominal in s.split_ratios:
            if abs(ratio / nominal - 1.0) <= s.split_tolerance:
                label = f"{round(1 / nominal)}:1 split" if nominal < 1 else f"1:{round(nominal)} reverse split"
                return [self._flag(point, ratio, nominal,
                                   f"open {open_:.6g} / previous close {prev[0]:.6g} = {ratio:.4f} ~ {nominal:.4g}"
                                   f" ({label}?)",
                                   {"ratio": ratio, "nominal": nominal, "tolerance": s.split_tolerance,
                                    "family": key})]
        return []

    def _dump(self) -> dict[str, Any]:
        return {"last": self.last}

    def _load(self, state: dict[str, Any]) -> None:
        for k, v in state.get("last", {}).items():
            _put_bounded(self.last, k, [float(v[0]), float(v[1])], self.settings.max_streams)


# ------------------------------------------------------------------------------------------------ suite


class DetectorSuite:
    """Every detector for one symbol, with the precedence rules between them.

    1. A split suspect on the trade/quote stream first re-anchors the price detectors (prices x the observed
       ratio, remembered trade volumes / the nominal ratio), and price anomalies on that record are dropped:
       a split is a corporate action, not a clearly-erroneous print.
    2. A quote flagged by Q3/Q4 does not become the prevailing quote for T4.
    3. A trade flagged by T4 stays out of the Brownlees-Gallo window, and one flagged by T4 or BG never becomes
       the FINRA "last clean price" (a spike just inside a band must not become the reference).
    """

    PRICE_DETECTORS: ClassVar[frozenset[str]] = frozenset(
        {BrownleesGallo.name, MidQuoteOutlier.name, TradeOutsideQuote.name, ClearlyErroneous.name})

    def __init__(self, settings: AnomalySettings | None = None) -> None:
        self.settings = settings or AnomalySettings()
        s = self.settings
        self.split = SplitSuspect(s)
        self.spread = SpreadTooWide(s)
        self.midquote = MidQuoteOutlier(s)
        self.t4 = TradeOutsideQuote(s)
        self.bg = BrownleesGallo(s)
        self.erroneous = ClearlyErroneous(s)
        self.volume = VolumeSpike(s)
        self.stale = StaleFeed(s)
        self.gaps = BarGaps(s)

    @property
    def detectors(self) -> list[Detector]:
        return [self.split, self.spread, self.midquote, self.t4, self.bg, self.erroneous, self.volume, self.stale,
                self.gaps]

    def update(self, point: MarketDataPoint) -> list[Anomaly]:
        f = _Facts(point)
        split = self.split.update(point, f)
        if split and split[0].details["family"] == "tick":
            d = split[0].details
            for det in (self.bg, self.midquote, self.t4, self.erroneous, self.spread):
                det.rescale(d["ratio"])
            self.volume.rescale_volume("trade", 1.0 / d["nominal"])
        # Detectors that would return at once for this kind of point are not called (a few per point).
        quote_flags = self.spread.update(point, f) + self.midquote.update(point, f) if f.quote is not None else []
        t4 = self.t4.update(point, f, accept_quote=not quote_flags)
        if f.trade is not None:
            bg = self.bg.update(point, f, suspect=bool(t4))
            out = quote_flags + t4 + bg + self.erroneous.update(point, f, suspect=bool(t4 or bg))
        else:
            out = quote_flags + t4
        if point.volume is not None:
            out += self.volume.update(point, f)
        out += self.stale.update(point, f)
        if point.data_type == _BAR:
            out += self.gaps.update(point, f)
        if split:
            out = [a for a in out if a.detector not in self.PRICE_DETECTORS]
        return split + out

    def check_stale(self, now: datetime, *, expected_interval: float | None = None) -> list[Anomaly]:
        return self.stale.check_stale(now, expected_interval=expected_interval)

    def to_state(self) -> dict[str, Any]:
        return {"v": STATE_VERSION, **{d.name: d.to_state() for d in self.detectors}}

    @classmethod
    def from_state(cls, state: dict[str, Any], settings: AnomalySettings | None = None) -> Self:
        suite = cls(settings)
        s = suite.settings
        for attr, det in vars(suite).items():
            if isinstance(det, Detector) and det.name in state:
                setattr(suite, attr, type(det).from_state(state[det.name], s))
        return suite
