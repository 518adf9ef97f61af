"""Bar detectors for every interval (1m ... 1d, 1wk): return outliers, decimal shifts, OHLC consistency and
split suspects. Thresholds come from the interval's family (`bar_intraday` or `bar_daily` in AnomalySettings).

The trade-off for return outliers (issue 12): a bar whose close is far from the previous clean close on
the local scale of log returns looks the same on arrival whether it is a bad print or a real crash
(1987-10-19, October 2008, March 2020, an earnings gap). What tells them apart is the NEXT bar: a bad
print comes back (the next close is near the level before it), a real move persists. So BarOutlier
holds a suspect bar for one bar and publishes its verdict then, as a follow-up anomaly about the suspect
record (`details.follow_up`, the suspect's own record): one bar of latency on the verdict, no flag on a
real move, and a spike of 8 local sigma caught whatever the market did. What it costs: a real move that
is more than half undone by the next bar is called an error (rare on daily bars, a takeover rumour
denied), a bad print lasting two bars or more is taken for a real move (DecimalShift and OHLC checks
still flag each such bar on arrival), and the last bar of a series has no verdict until the next one.
DecimalShift and OhlcConsistency judge on arrival: no real market move is 10^k times the level, nor
closes above its own high.
"""

from __future__ import annotations

import bisect
import math
from fractions import Fraction
from typing import Any, ClassVar

from streams.anomalies.core import (
    _BAR,
    Anomaly,
    Detector,
    _Facts,
    _iso_day,
    _put_bounded,
    _record,
    bar_checks,
    finite_price,
    is_daily,
)
from streams.anomalies.windows import _consistent_run, _mean_abs_dev_sorted, _median_abs_dev, _Window
from streams.config import AnomalySettings, BarCheckSettings
from streams.models import MarketDataPoint

_MAD_SCALE = 1.4826  # normal-consistent MAD


# Without opens (none given, or a close-only series: every bar open = high = low = close) nothing tells a bad
# print from a V-shaped crash day (S&P 500 2011-08-08 -6.5%, back half of it the next day): the way back must then
# be nearly whole, within _BLIND x revert_fraction of the move (a bad print's is the next bar's own noise).
_BLIND = 0.4
# ... or within this many sigmas of the bar's own scale, whichever is wider: a spike of 8-12 sigma leaves 1.6-2.4
# sigma for the next bar's own move, which fat-tailed real days often exceed (skfolio's closes: a fifth of the 8-sigma
# spikes were taken for moves that persisted).
_BLIND_SIGMAS = 3.0


def _open_of(point: MarketDataPoint, st: dict[str, Any]) -> float | None:
    """A bar's open, None when it says nothing: missing, or a flat bar of a stream that never had another (a
    close-only series). A flat bar among traded ones (a day without trades) keeps its open."""
    o = point.open
    if o is None or (not st.get("ohlc") and o == point.close and o == point.high and o == point.low):
        return None
    return o


class BarOutlier(Detector):
    """Close-to-close log returns against a robust local scale, confirmed by the next bar (module docstring).

    Scale: max(1.4826 x the median absolute deviation of the last `return_window` clean log returns,
    `scale_floor`); a bar is suspect when |r - median| >= outlier_sigma x scale (r vs the last clean close).
    The suspect is an error when the next close is back near the level before it: |log(next / level)| <=
    revert_fraction x |r| and not itself an outlier from that level. Errors stay out of the state; a move
    that persisted enters it. Score: |r - median| / scale (sigmas); threshold: outlier_sigma.

    The way out is judged too (`_way_out`): a bad bar printed against the market's own move of that bar
    (8 sigma up on a day the market fell 3) is only 5 sigma from the close before it and passes on arrival,
    but its return to the next close is the large one. The test that sees both sides is the bar's distance
    from its two neighbours, (r_in - r_out) / 2, whose noise is sigma / sqrt(2) (two independent returns):
    a clean bar is an error when that centred score reaches outlier_sigma, the next close lands back near
    the level before it (net move <= revert_fraction x the path |r_in| + |r_out|) and the bar was printed
    apart from its neighbours on both sides (detach_share of its move in each gap). Its verdict is a
    follow-up at the next bar, like a held suspect's; its return then leaves the state.
    """

    name = "bar_outlier"

    def __init__(self, settings: AnomalySettings | None = None) -> None:
        super().__init__(settings)
        # stream -> {"ref": last clean close, "ts": last bar time, "returns": [...], "pending": {...} | None}
        self.streams: dict[str, dict[str, Any]] = {}
        self._windows: dict[str, _Window] = {}

    def _stream(self, key: str, interval: str | None) -> tuple[dict[str, Any], _Window]:
        st = self.streams.get(key)
        if st is None:
            st = {"ref": None, "ts": None, "pending": None, "interval": interval}
            _put_bounded(self.streams, key, st, self.settings.max_streams)
        w = self._windows.get(key)
        if w is None:
            w = self._windows[key] = _Window(bar_checks(self.settings, interval).return_window)
            for k in list(self._windows):
                if k not in self.streams:
                    del self._windows[k]
        return st, w

    def _scale(self, w: _Window, floor: float) -> tuple[float, float]:
        """The median and the scale: the largest of 1.4826 MAD, the sd implied by the mean absolute deviation
        (1.2533 x; for quantised prices whose MAD is 0), the smallest non-zero move (one price tick) and the floor."""
        srt = w.sorted
        med = w.median()
        i = bisect.bisect_right(srt, 0.0)
        tick = min(abs(srt[i - 1]) if i and srt[i - 1] else math.inf, srt[i] if i < len(srt) else math.inf)
        mean_abs = 1.2533 * _mean_abs_dev_sorted(srt, med)
        return med, max(_MAD_SCALE * _median_abs_dev(srt, med), mean_abs, floor, tick if tick < math.inf else 0.0)

    def update(self, point: MarketDataPoint, f: _Facts | None = None, *, suspect: bool = False,
               spans: int = 1) -> list[Anomaly]:
        """`suspect=True` (the suite: flagged on arrival by another bar check): never enters the state as is.
        `spans`: the bars this bar's return spans (1 + the bars missing before it, BarGaps): a return over n bars
        has sqrt(n) times one bar's scale (ALI.PS 2020-03-19: -23% after a two-day closure of its market)."""
        c = point.close
        if point.data_type != _BAR or not finite_price(c, self.settings.max_price):
            return []
        f = f or _Facts(point)
        self.symbol = point.symbol
        cfg = bar_checks(self.settings, point.interval)
        st, w = self._stream(f.stream, point.interval)
        if st["ts"] is not None and f.ts <= st["ts"]:
            return []  # out of order or a revision of a bar already judged
        st["ts"] = f.ts
        if not st.get("ohlc") and point.open is not None and not (point.open == c == point.high == point.low):
            st["ohlc"] = True  # the stream's bars carry their own open, high and low
        out: list[Anomaly] = []
        pending = st["pending"]
        if pending is not None:
            st["pending"] = None
            back = math.log(c / pending["ref"])
            med, scale = self._scale(w, cfg.scale_floor) if len(w) else (0.0, cfg.scale_floor)
            into, out_ = self._gap_shares(pending, _open_of(point, st))
            share = cfg.detach_share
            blind = math.isnan(into) and math.isnan(out_)
            bound = cfg.revert_fraction * (_BLIND if blind else 1.0) * abs(pending["r"])
            if blind:
                bound = max(bound, _BLIND_SIGMAS * pending["scale"])
            came_back = (abs(back) <= bound and abs(back - med) < cfg.outlier_sigma * scale)
            if (came_back and (blind or max(into, out_) >= share)) or (into >= share and out_ >= share):
                if pending["z"] >= cfg.outlier_sigma:  # else held only as another check's suspect (a copy of
                    # the day before: 0 sigma), already flagged by it: out of the state, no outlier to report
                    out.append(Anomaly(self.name, point.symbol, pending["z"], cfg.outlier_sigma, self.kind,
                                       f"close {pending['close']:.6g} was {pending['z']:.1f} sigma from"
                                       f" {pending['ref']:.6g}"
                                       f" and the next bar came back ({c:.6g}): an error, not a move",
                                       pending["record"],
                                       {"follow_up": True, "confirmed_by": point.timestamp.isoformat(),
                                        "return": pending["r"], "scale": pending["scale"]}))
            else:  # the level persisted: a real move
                self._enter(st, w, pending["r"])
                st["ref"] = pending["close"]
        last, st["last"] = st.get("last"), None
        if last is not None and pending is None and not suspect and st["ref"] == last["close"]:
            out += self._way_out(st, w, cfg, last, point)
        ref = st["ref"]
        if ref is None:
            if not suspect:
                st["ref"] = c
            return out
        r = math.log(c / ref)
        if len(w) < cfg.min_returns:
            if not suspect:
                self._enter(st, w, r)
                st["ref"] = c
            return out
        med, scale = self._scale(w, cfg.scale_floor)
        if not st.get("ohlc") and (recent := st.get("ewma")) is not None:
            # close-only: no open tells a crash from a bad print, so a crash in a volatile stretch (March 2020, the
            # recent returns' own scale) is judged by that scale, not the window's calmer 60 bars
            scale = max(scale, math.sqrt(recent))
        if spans > 1:
            scale *= math.sqrt(spans)
        z = abs(r - med) / scale
        if z >= cfg.outlier_sigma or suspect:
            o = _open_of(point, st)
            st["pending"] = {"r": r, "z": z, "ref": ref, "close": c, "scale": scale, "record": _record(point),
                             "into": math.log(o / ref) / r if r and finite_price(o, self.settings.max_price) else None}
        else:
            self._enter(st, w, r)
            st["ref"] = c
            # judged again at the next bar from both sides (the point itself: its record, with every flag it
            # gets after this detector, is built only for a verdict)
            st["last"] = {"point": point, "ref": ref, "close": c, "r": r, "spans": spans}
        return out

    _EWMA: ClassVar[float] = 0.94  # RiskMetrics' daily decay: a memory of about 16 bars

    def _enter(self, st: dict[str, Any], w: _Window, r: float) -> None:
        """A clean return enters the window, and the stream's exponentially weighted variance of returns (the
        variance before this return is kept: the two-sided check of this bar must not be judged by itself)."""
        w.push(r)
        prev = st.get("ewma")
        st["ewma_before"] = prev
        st["ewma"] = r * r if prev is None else self._EWMA * prev + (1.0 - self._EWMA) * r * r

    def _way_out(self, st: dict[str, Any], w: _Window, cfg: BarCheckSettings, last: dict[str, Any],
                 point: MarketDataPoint) -> list[Anomaly]:
        """The previous bar, which entered the state clean, judged by both its returns (class docstring): a
        follow-up anomaly when it was a bad bar; its return then leaves the window and the level before it is
        the reference again."""
        c, r_in = point.close, last["r"]
        r_out = math.log(c / last["close"])
        back = math.log(c / last["ref"])
        if r_in * r_out >= 0:
            return []
        med, scale = self._scale(w, cfg.scale_floor)
        # In a volatility regime the window of 60 calm returns has not caught up with (a crash's -10% / +11%,
        # 2020-03-12), the recent returns' own scale judges the round trip.
        if (recent := st.get("ewma_before")) is not None:
            scale = max(scale, math.sqrt(recent))
        zc = abs(r_in - r_out) / (math.sqrt(last["spans"] + 1.0) * scale)  # sd of r_in - r_out: sqrt(n_in + 1)
        if (zc < cfg.outlier_sigma or abs(back) > cfg.revert_fraction * (abs(r_in) + abs(r_out))
                or abs(back - med) >= cfg.outlier_sigma * scale):
            return []
        d = (r_in - r_out) / 2.0  # the bar's own displacement from its neighbours
        o_in, o_out = _open_of(last["point"], st), _open_of(point, st)
        into = math.log(o_in / last["ref"]) / d if finite_price(o_in, self.settings.max_price) else math.nan
        out_ = math.log(last["close"] / o_out) / d if finite_price(o_out, self.settings.max_price) else math.nan
        share = cfg.detach_share
        if math.isnan(into) and math.isnan(out_):
            if abs(back) > cfg.revert_fraction * _BLIND * max(abs(r_in), abs(r_out)):
                return []
        elif not (into >= share and out_ >= share):
            return []
        if w.values and w.values[-1] == r_in:  # the bad bar's return leaves the window
            w.values.pop()
            del w.sorted[bisect.bisect_left(w.sorted, r_in)]
        st["ref"] = last["ref"]
        rec = last["point"]
        return [Anomaly(self.name, point.symbol, zc, cfg.outlier_sigma, self.kind,
                        f"close {last['close']:.6g} was {zc:.1f} sigma from both neighbours ({last['ref']:.6g},"
                        f" {c:.6g}): an error, not a move", _record(rec),
                        {"follow_up": True, "confirmed_by": point.timestamp.isoformat(), "return": r_in,
                         "return_out": r_out, "scale": scale, "centred": True})]

    @staticmethod
    def _gap_shares(pending: dict[str, Any], next_open: float | None) -> tuple[float, float]:
        """Was the suspect bar printed apart from the trading around it? The shares of its move made in the gap
        before its own open (`into`) and undone in the gap before the next bar's open (`out`); NaN without
        opens. A real move trades: the crash bar opens near the previous close and the rebound starts near the
        crash close, so both shares are small (S&P 500 2011-08-08: 0.01 and 0.01)."""
        into, r = pending.get("into"), pending["r"]
        out = math.log(pending["close"] / next_open) / r if next_open and next_open > 0 and r else math.nan
        return (math.nan if into is None else into), out

    def rescale(self, price_factor: float) -> None:
        for st in self.streams.values():
            self.rescale_stream(st, price_factor)

    def rescale_stream(self, st: dict[str, Any], price_factor: float) -> None:
        if st["ref"] is not None:
            st["ref"] *= price_factor
        st["pending"] = None
        st["last"] = None

    def _dump(self) -> dict[str, Any]:
        # "last" (a point awaiting its two-sided verdict) is not kept: after a restart that one bar is judged on
        # arrival only
        return {"streams": {k: {**{x: v for x, v in st.items() if x != "last"},
                                "returns": list(self._windows[k].values) if k in self._windows else []}
                            for k, st in self.streams.items()}}

    def _load(self, state: dict[str, Any]) -> None:
        for k, st in state.get("streams", {}).items():
            st = dict(st)
            returns = st.pop("returns", [])
            _, w = self._stream(k, st.get("interval"))
            self.streams[k].update(st)
            for x in returns:
                w.push(float(x))


class DecimalShift(Detector):
    """A close near 10^k times the level (k != 0): a misplaced decimal point, or a unit change (pence for
    pounds, cents for dollars). Judged on arrival. Level: the median of the last 5 clean closes; a run of
    `level_shift_run` shifted closes that agree re-anchors it (a lasting change of units is then reported
    on its first bars only). Score: |log10(close / level)|; threshold: the nearest k, +- decimal_tolerance, for
    the level and for the last clean close alike (one step of 10^k, not a run of large moves).
    """

    name = "decimal_shift"
    _LEVEL: ClassVar[int] = 5

    def __init__(self, settings: AnomalySettings | None = None) -> None:
        super().__init__(settings)
        self.levels: dict[str, list[Any]] = {}  # stream -> [recent clean closes, pending shifted closes]

    def update(self, point: MarketDataPoint, f: _Facts | None = None) -> list[Anomaly]:
        c = point.close
        if point.data_type != _BAR or not finite_price(c, self.settings.max_price):
            return []
        f = f or _Facts(point)
        self.symbol = point.symbol
        tol = bar_checks(self.settings, point.interval).decimal_tolerance
        entry = self.levels.get(f.stream)
        if entry is None:
            entry = [[], []]
            _put_bounded(self.levels, f.stream, entry, self.settings.max_streams)
        closes, pending = entry
        if closes:
            level = sorted(closes)[len(closes) // 2]
            x = math.log10(c / level)
            k = round(x)
            # ... and a jump of 10^k from the last clean close too: a shift is one step, while a market that
            # rose 7x over five bars in steps of 2-3x (bitcoin's months of 2013) is near 10^1 of its median only.
            if k != 0 and abs(x - k) <= tol and abs(math.log10(c / closes[-1]) - k) <= tol:
                pending.append(x)
                del pending[:-self.settings.level_shift_run]
                if _consistent_run(pending, self.settings.level_shift_run, tol) is None:  # type: ignore[arg-type]
                    return [self._flag(point, abs(x), float(abs(k)),
                                       f"close {c:.6g} ~ 10^{k} x the level {level:.6g}: a decimal shift?",
                                       {"level": level, "power": k, "log10_ratio": x})]
                closes.clear()
        pending.clear()
        closes.append(c)
        del closes[:-self._LEVEL]
        return []

    def rescale(self, price_factor: float) -> None:
        for closes, pending in self.levels.values():
            closes[:] = [x * price_factor for x in closes]
            pending.clear()

    def _dump(self) -> dict[str, Any]:
        return {"levels": self.levels}

    def _load(self, state: dict[str, Any]) -> None:
        for k, (closes, pending) in state.get("levels", {}).items():
            _put_bounded(self.levels, k, [[float(x) for x in closes], [float(x) for x in pending]],
                         self.settings.max_streams)


class OhlcConsistency(Detector):
    """A bar that contradicts itself: high < low, open or close outside [low, high] (beyond a rounding
    tolerance), or a wick (high above max(open, close), low below min(open, close)) longer than
    range_multiplier x the median log range (high/low) of the recent clean bars that traded (a flat bar's range
    of 0 does not count; with fewer than min_returns of them the wick is not judged), floored at range_floor. A real
    crash closes near its low (a long body, not a wick), so it is not a wick outlier. Judged on arrival.
    A daily (or longer) bar with a range that copies the bar before it exactly (open, high, low, close and volume)
    is a row filled forward, not a day of trading: a vendor's rows for Shanghai's Chinese New Year and Jakarta's
    1999 election day repeat the day before to the last digit (check "repeat"). Without a range (a day without a
    trade, a close-only stream) equal bars are the market's.
    Score: the violation (relative, or the wick in log units; a repeat: 1); threshold: the tolerance or the wick
    limit (a repeat: 1).
    """

    name = "ohlc_inconsistent"

    def __init__(self, settings: AnomalySettings | None = None) -> None:
        super().__init__(settings)
        self.ranges: dict[str, _Window] = {}
        self.last: dict[str, tuple[float, float, float, float, float | None, int]] = {}  # stream -> bar, its day

    def update(self, point: MarketDataPoint, f: _Facts | None = None) -> list[Anomaly]:
        o, h, lo, c = point.open, point.high, point.low, point.close
        if point.data_type != _BAR or o is None or h is None or lo is None or c is None:
            return []
        limit = self.settings.max_price
        if not all(finite_price(x, limit) for x in (o, h, lo, c)):
            return []
        f = f or _Facts(point)
        self.symbol = point.symbol
        cfg = bar_checks(self.settings, point.interval)
        tol = cfg.ohlc_tolerance
        top, bottom = max(o, c), min(o, c)
        if h < lo * (1 - tol) or top > h * (1 + tol) or bottom < lo * (1 - tol):
            worst = max(lo / h - 1, top / h - 1, 1 - bottom / lo)
            return [self._flag(point, worst, tol, f"OHLC inconsistent: open {o:.6g} high {h:.6g} low {lo:.6g}"
                                                  f" close {c:.6g}", {"check": "bounds"})]
        if h > lo and is_daily(point.interval):
            bar = (o, h, lo, c, f.volume, f.day)
            before = self.last.get(f.stream)
            if before is None or before[5] <= f.day:  # an older bar, sent late, is no day before the next one
                _put_bounded(self.last, f.stream, bar, self.settings.max_streams)
            if before is not None and before[:5] == bar[:5] and before[5] < f.day:
                since = _iso_day(int(before[5]))
                return [self._flag(point, 1.0, 1.0, f"a copy of the bar of {since}: open {o:.6g} high {h:.6g} "
                                                    f"low {lo:.6g} close {c:.6g} volume {f.volume}",
                                   {"check": "repeat", "copies": since})]
        w = self.ranges.get(f.stream)
        if w is None:
            w = _Window(cfg.range_window)
            _put_bounded(self.ranges, f.stream, w, self.settings.max_streams)
        wick = max(math.log(h / top), math.log(bottom / lo))
        out: list[Anomaly] = []
        srt = w.sorted
        traded = len(srt) - bisect.bisect_right(srt, 0.0)
        # The median of the bars that moved: a flat bar (no trade: open = high = low = close) says nothing of the
        # market's range, and weeks of them (bitcoin on one exchange, December 2014) made any real move a wick.
        if traded >= cfg.min_returns:
            median = srt[len(srt) - traded + traded // 2]
            limit_wick = cfg.range_multiplier * max(median, cfg.range_floor)
            if wick > limit_wick:
                out.append(self._flag(point, wick, limit_wick,
                                      f"wick {wick:.4f} (log) > {cfg.range_multiplier:g} x the median range",
                                      {"check": "range", "median_range": median}))
                return out
        w.push(math.log(h / lo))
        return out

    def _dump(self) -> dict[str, Any]:
        return {"ranges": {k: list(w.values) for k, w in self.ranges.items()}, "last": self.last}

    def _load(self, state: dict[str, Any]) -> None:
        for k, values in state.get("ranges", {}).items():
            w = _Window(bar_checks(self.settings, k.partition(":")[2]).range_window, values)
            _put_bounded(self.ranges, k, w, self.settings.max_streams)
        for k, bar in state.get("last", {}).items():
            _put_bounded(self.last, k, tuple(bar), self.settings.max_streams)


class SplitSuspect(Detector):
    """A split-like jump: the price moved by the ratio of a real split or reverse split, within a tolerance. A
    corporate-action suspect, NOT an error. `split_ratios` are new price / old price: 1/2 for a 2:1 split, 2/3
    for 3:2, 4/5 for 5:4, 1/20 for 20:1, 10 for a 1:10 reverse split. The jump is matched to the nearest ratio
    (in log) within split_tolerance widened by the family's recent jumps that were not splits (its local
    volatility: split_gap_multiplier x the median |log| of the last 20, at most split_tolerance_max). On bars
    the jump is every bar's open (its close without one) / the previous close (bars are contiguous: an intraday
    bar never opens at half the last close by itself); on trades/quotes it is the first price (mid) after a
    silence of session_break_seconds. The check runs only on a jump larger than any ratio's band allows near 1.
    A bar whose open undoes at least revert_fraction of the previous bar's own jump is the way back from a bar
    that jumped by itself, not a split (the cost: a split the day after a move of 1/ratio or more is missed).
    A jump of 2:1 to 1:2 on a daily bar whose volume exceeds split_news_volume x the median of the stream's last
    20 bar volumes x the split's share factor is news (an earnings gap), not a split. Not on intraday bars, whose
    volume follows the hour of the day (the first minute trades 10-50 times the median).
    A close-only bar stream (none of its bars had an open other than open = high = low = close) has no open: its
    "jump" is the whole day's close-to-close move, and a crash or an earnings day of -20% or -33% is then as likely
    as a 5:4 or 3:2 split (skfolio's adjusted closes of 20 S&P 500 stocks, 1990-2022: 40 of their 53 flags were such
    days, taken for a split, or relabelled an error when the next close came back; adjusted closes hold no split).
    There only ratios of 2:1 and 1:2 or more are matched (`_CLOSE_ONLY_MIN`): a smaller split goes unlabelled, and
    BarOutlier takes its level as a move that persisted.

    A split is a level shift that persists; a bad print comes back (issue 12: 12-sigma spikes at x0.5 and x3
    were taken for splits, and the bar after them for a reverse split). So a split waits for the family's next
    point: when that is back near the level before the jump (a bar's open and close, a trade or mid, within
    revert_fraction x the jump in log), the split is retracted: `verdict` is then ("retracted", the split) for
    the caller (the suite undoes its rescaling and relabels the record as a price error with a follow-up event),
    and the way back is not a split. Otherwise the split stands, with no latency on its flag or on the re-anchoring.
    A ratio of 10^k (1:10 reverse, 10:1) is the other way round: on arrival it is taken for the misplaced decimal
    point it far more often is (DecimalShift flags it), and it becomes a split only when the next point confirms
    the new level: update() then returns the split as a follow-up about the jump's record, and `verdict` is
    ("confirmed", the split) for the caller to re-anchor the state before that point is judged. After a silence
    of split_halt_seconds (a suspension) a bar's jump up within decimal_tolerance of 10^k is taken for that reverse
    split, deferred alike: the price moved while the stock did not trade. A new split,
    flagged or deferred, sets ("opened", the split). `verdict` stays None on every other point (one test).
    Score: the observed ratio; threshold: the nominal ratio (details.tolerance).
    """

    name = "split_suspect"
    kind = "corporate_action"
    _GAPS: ClassVar[int] = 20
    # A close-only stream's smallest split ratio (either way): its jump is a day's move, 5:4 and 3:2 are market moves
    _CLOSE_ONLY_MIN: ClassVar[float] = 2.0 - 1e-9

    def __init__(self, settings: AnomalySettings | None = None) -> None:
        super().__init__(settings)
        s = self.settings
        self.last: dict[str, list[float]] = {}  # family -> [last price, its timestamp]
        self.gaps: dict[str, list[float]] = {}  # family -> the last |log(jump)| that were not splits
        self.volumes: dict[str, list[float]] = {}  # daily bar family -> its last bars' volumes (the newest last)
        self.pending: dict[str, dict[str, Any]] = {}  # family -> the split awaiting the family's next point
        self.ranged: dict[str, bool] = {}  # bar family -> True once one of its bars had an open, high or low of its own
        # set by update() on a rare point, reset by its reader: ("retracted" | "confirmed" | "opened", the split)
        self.verdict: tuple[str, dict[str, Any]] | None = None
        self._nominals = sorted(x for x in s.split_ratios if x > 0 and x != 1.0)
        self._logs = [math.log(x) for x in self._nominals]
        # No ratio can match inside (quiet_lo, quiet_hi): the tolerance never exceeds split_tolerance_max.
        t = s.split_tolerance_max
        self._quiet_lo = max((x * (1 + t) for x in self._nominals if x < 1), default=0.0)
        self._quiet_hi = min((x * (1 - t) for x in self._nominals if x > 1), default=math.inf)
        # read at every point: kept here, a settings model's attribute costs a __getattr__ hook (core._Facts)
        self._max_streams, self._session_break = s.max_streams, s.session_break_seconds

    @staticmethod
    def label(nominal: float) -> str:
        """'2:1 split', '3:2 split', '1:10 reverse split': new shares for old ones."""
        q = Fraction(nominal).limit_denominator(1000)  # new price / old price = old shares / new shares
        return f"{q.denominator}:{q.numerator} split" if nominal < 1 else f"{q.denominator}:{q.numerator} reverse split"

    def _nearest(self, ratio: float, tol: float) -> float | None:
        """The configured ratio nearest the jump (in log) when it is within the tolerance."""
        i = bisect.bisect_left(self._logs, math.log(ratio))
        best, err = None, tol
        for n in self._nominals[max(i - 1, 0):i + 1]:
            e = abs(ratio / n - 1.0)
            if e <= err:
                best, err = n, e
        return best

    def _decade(self, ratio: float, tol: float) -> float | None:
        """The configured 10^k reverse-split ratio (k > 0) within tol (in log10) of the jump, after a suspension.
        Not a forward one: a stock back from a long closure at a tenth of its price is likelier a crash."""
        x = math.log10(ratio)
        k = round(x)
        if k <= 0 or abs(x - k) > tol:
            return None
        return next((n for n in self._nominals if abs(math.log10(n) - k) < 1e-9), None)

    def _near(self, pend: dict[str, Any], level: float, open_: float, close: float, interval: str | None) -> bool:
        """Are this point's open and close near `level`, within revert_fraction x the jump (in log)?"""
        bound = bar_checks(self.settings, interval).revert_fraction * abs(math.log(pend["ratio"]))
        return all(x > 0 and abs(math.log(x / level)) <= bound for x in (open_, close))

    def _decide(self, pend: dict[str, Any], point: MarketDataPoint, open_: float, close: float
                ) -> list[Anomaly] | None:
        """The family's next point after a split-like jump: back at the level before it (then it is judged no
        further), at the new one, or elsewhere (None: judged as any point)."""
        if self._near(pend, pend["level"], open_, close, point.interval):
            if not pend.get("deferred"):
                self.verdict = ("retracted", pend)
            return []  # the way back from a bad print, not a (reverse) split
        if pend.get("deferred") and self._near(pend, pend["level"] * pend["ratio"], open_, close, point.interval):
            self.verdict = ("confirmed", pend)
            d = {"ratio": pend["ratio"], "nominal": pend["nominal"], "tolerance": pend["tolerance"],
                 "family": pend["family"], "follow_up": True, "confirmed_by": point.timestamp.isoformat()}
            return [Anomaly(self.name, point.symbol, pend["ratio"], pend["nominal"], self.kind,
                            f"x{pend['ratio']:.4g} from {pend['level']:.6g}, and the next point stayed at that level"
                            f" ({self.label(pend['nominal'])}?)", pend["record"], d)]
        return None

    def update(self, point: MarketDataPoint, f: _Facts | None = None) -> list[Anomaly]:
        f = f or _Facts(point)
        s = self.settings
        ts = f.ts
        is_bar = f.kind == _BAR
        if is_bar:
            close = point.close
            open_ = point.open if point.open is not None else close
            if f.stream not in self.ranged and point.open is not None and not (
                    open_ == close == point.high == point.low):
                _put_bounded(self.ranged, f.stream, True, self._max_streams)
        else:
            q = f.quote
            p = f.trade
            open_ = close = p if p is not None else ((q[0] + q[1]) / 2.0 if q is not None else None)
        if open_ is None or close is None:
            return []
        self.symbol = f.symbol
        key = f.stream if is_bar else "tick"  # the family
        prev = self.last.get(key)
        if prev is not None and ts < prev[1]:
            return []
        # a bar's [close, time, the close before it]: a jump back to the level of two bars ago is no split
        _put_bounded(self.last, key, [close, ts, prev[0] if prev is not None else 0.0] if is_bar else [close, ts],
                     self._max_streams)
        if self.pending and prev is not None and ts > prev[1] and (pend := self.pending.pop(key, None)) is not None:
            decided = self._decide(pend, point, open_, close)
            if decided is not None:
                return decided
        if is_bar and point.volume is not None and point.volume > 0 and is_daily(point.interval):
            vols = self.volumes.get(key)
            if vols is None:
                vols = []
                _put_bounded(self.volumes, key, vols, self._max_streams)
            vols.append(point.volume)
            if len(vols) > self._GAPS + 1:
                del vols[0]
        if prev is None or not (is_bar or ts - prev[1] >= self._session_break):
            return []
        ratio = open_ / prev[0]
        if self._quiet_lo < ratio < self._quiet_hi or ratio <= 0:  # the usual bar: no ratio is near
            self._note_gap(key, ratio)
            return []
        tol = s.split_tolerance
        gaps = self.gaps.get(key)
        if gaps:
            srt = sorted(gaps)
            tol = max(tol, s.split_gap_multiplier * srt[len(srt) // 2])
        tol = min(tol, s.split_tolerance_max)
        nominal = self._nearest(ratio, tol)
        if (nominal is not None and is_bar and key not in self.ranged
                and max(nominal, 1.0 / nominal) < self._CLOSE_ONLY_MIN):
            nominal = None  # a close-only stream's day of -20% or -33%: a market move as likely as a 5:4 or 3:2 split
        if nominal is None and is_bar and ts - prev[1] >= s.split_halt_seconds:
            decade_tol = bar_checks(s, point.interval).decimal_tolerance
            nominal = self._decade(ratio, decade_tol)
            if nominal is not None:  # matched within decimal_tolerance in log10: that tolerance, as a relative
                tol = 10.0 ** decade_tol - 1.0  # error of the ratio (|ratio / nominal - 1|) as split_tolerance is
        if is_bar and nominal is not None and close > 0 and (
                abs(math.log(close / (prev[0] * nominal))) >= abs(math.log(close / prev[0]))):
            # the bar closed nearer the level before the jump than the split's: a gap bought back (a crash open,
            # BIDU 2015-08-24 opened x0.82 and closed x0.92), not a split, whose whole bar sits at the new level
            self._note_gap(key, ratio)
            return []
        if is_bar and nominal is not None and len(prev) > 2 and prev[2] > 0 and abs(math.log(open_ / prev[2])) <= (
                bar_checks(s, point.interval).revert_fraction * abs(math.log(prev[0] / prev[2]))):
            # the open undid at least half of the previous bar's own jump: the way back from a bar that jumped by
            # itself (a spike no price check held), not a corporate action
            return []
        if nominal is None or (is_bar and self._news_volume(key, point.volume, nominal)):
            self._note_gap(key, ratio)
            return []
        pend = {"level": prev[0], "ratio": ratio, "nominal": nominal, "tolerance": tol, "ts": ts, "family": key,
                "record": _record(point)}
        x = math.log10(nominal)
        if abs(x - round(x)) < 1e-9:  # 10^k: a decimal shift until the next point confirms the level
            pend["deferred"] = True
            _put_bounded(self.pending, key, pend, s.max_streams)
            self.verdict = ("opened", pend)
            return []
        _put_bounded(self.pending, key, pend, s.max_streams)
        self.verdict = ("opened", pend)
        return [self._flag(point, ratio, nominal,
                           f"open {open_:.6g} / previous close {prev[0]:.6g} = {ratio:.4f} ~ {nominal:.4g}"
                           f" ({self.label(nominal)}?)",
                           {"ratio": ratio, "nominal": nominal, "tolerance": tol, "family": key})]

    def _news_volume(self, key: str, volume: float | None, nominal: float) -> bool:
        """Is this bar's volume (the newest in its window) too high for a split of `nominal` (2:1 to 1:2)?"""
        limit = self.settings.split_news_volume
        vols = self.volumes.get(key)
        if limit <= 0 or volume is None or vols is None or len(vols) <= self._GAPS // 2 or not 0.5 <= nominal <= 2.0:
            return False
        before = sorted(vols[:-1])
        return volume > limit * before[len(before) // 2] / nominal

    def _note_gap(self, key: str, ratio: float) -> None:
        if ratio <= 0:
            return
        gaps = self.gaps.get(key)
        if gaps is None:
            gaps = []
            _put_bounded(self.gaps, key, gaps, self.settings.max_streams)
        gaps.append(abs(math.log(ratio)))
        del gaps[:-self._GAPS]

    def _dump(self) -> dict[str, Any]:
        return {"last": self.last, "gaps": self.gaps, "pending": self.pending, "volumes": self.volumes,
                "ranged": self.ranged}

    def _load(self, state: dict[str, Any]) -> None:
        for k, v in state.get("last", {}).items():
            _put_bounded(self.last, k, [float(x) for x in v], self.settings.max_streams)
        for k, v in state.get("gaps", {}).items():
            _put_bounded(self.gaps, k, [float(x) for x in v], self.settings.max_streams)
        for k, v in state.get("volumes", {}).items():
            _put_bounded(self.volumes, k, [float(x) for x in v], self.settings.max_streams)
        for k, v in state.get("pending", {}).items():
            _put_bounded(self.pending, k, dict(v), self.settings.max_streams)
        for k in state.get("ranged", {}):
            _put_bounded(self.ranged, k, True, self.settings.max_streams)
