"""DetectorSuite: every detector of one symbol and the precedence rules between them."""

from __future__ import annotations

import math
import sys
from datetime import datetime
from typing import Any, ClassVar, Self

from streams.anomalies.bars import BarOutlier, DecimalShift, OhlcConsistency, SplitSuspect
from streams.anomalies.core import _BAR, STATE_VERSION, Anomaly, Detector, _Facts, _record, bar_checks
from streams.anomalies.feed import BarGaps, StaleFeed
from streams.anomalies.price import (
    BrownleesGallo,
    ClearlyErroneous,
    MidQuoteOutlier,
    SpreadTooWide,
    TradeOutsideQuote,
    VolumeSpike,
)
from streams.config import AnomalySettings
from streams.models import MarketDataPoint

OUT_OF_RANGE = "price_out_of_range"
_FLOAT_MAX = sys.float_info.max


class DetectorSuite:
    """Every detector for one symbol, with the precedence rules between them.

    0. A price that is not finite, not positive or above `max_price` (1e154, say) is flagged as
       `price_out_of_range` and reaches no detector: no window ever holds it (issue 15: its square
       overflowed a running sum and broke the symbol's detectors until a restart).
    1. A split suspect re-anchors the price detectors first: on the trade/quote stream, prices x the observed
       ratio and trade volumes / the nominal ratio; on a bar stream, the bar checks' remembered closes x the
       nominal ratio and that stream's volumes / the nominal ratio (a 2:1 split halves prices, doubles
       volumes). Price anomalies on that record are dropped: a split is a corporate action, not an error.
       When the family's next point comes back to the level before the jump, the split is retracted: the
       re-anchoring is undone before that point is judged, and a follow-up event relabels the jump's record
       as a price error (decimal_shift near 10^k, bar_outlier for a bar, clearly_erroneous for a trade).
    2. A quote flagged by Q3/Q4 does not become the prevailing quote for T4.
    3. A trade flagged by T4 stays out of the Brownlees-Gallo window, and one flagged by T4 or BG never becomes
       the FINRA "last clean price" (a spike just inside a band must not become the reference).
    4. A bar flagged on arrival (decimal shift, OHLC) is held by BarOutlier as a suspect, never its reference.
    5. A bar whose return is an outlier is not judged for volume: a big move on big volume is the market. A bar
       that opens back at the level before a held suspect is not a split suspect (it is the way back).
    6. A bar after missing bars (BarGaps: a closure, a halt, a hole in the file) has its return judged over the
       bars it spans.
    """

    PRICE_DETECTORS: ClassVar[frozenset[str]] = frozenset(
        {BrownleesGallo.name, MidQuoteOutlier.name, TradeOutsideQuote.name, ClearlyErroneous.name,
         BarOutlier.name, DecimalShift.name, OhlcConsistency.name})
    _PRICE_FIELDS: ClassVar[tuple[str, ...]] = ("price", "bid", "ask", "open", "high", "low", "close")
    _DEFERRED_SKIP: ClassVar[frozenset[str]] = PRICE_DETECTORS | {VolumeSpike.name}
    _DETECTOR_ATTRS: ClassVar[tuple[str, ...]] = (
        "split", "spread", "midquote", "t4", "bg", "erroneous", "volume", "stale", "gaps", "bar_outlier", "decimal",
        "ohlc")

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
        self.bar_outlier = BarOutlier(s)
        self.decimal = DecimalShift(s)
        self.ohlc = OhlcConsistency(s)
        # read at every point: kept here, a settings model's attribute costs a __getattr__ hook (core._Facts)
        self._max_price = s.max_price

    @property
    def detectors(self) -> list[Detector]:
        return [self.split, self.spread, self.midquote, self.t4, self.bg, self.erroneous, self.volume, self.stale,
                self.gaps, self.bar_outlier, self.decimal, self.ohlc]

    def _out_of_range(self, point: MarketDataPoint) -> Anomaly | None:
        # Runs for every point: `finite_price` inlined as one comparison chain on the model's __dict__ (a call
        # and a getattr per field were ~10% of the suite). An infinite limit is capped at the largest float, so
        # the chain also refuses inf; NaN fails any comparison.
        limit = self._max_price
        cap = _FLOAT_MAX if limit == math.inf else limit
        d = point.__dict__
        for name in self._PRICE_FIELDS:
            x = d[name]
            if x is not None and not 0.0 < x <= cap:
                return Anomaly(OUT_OF_RANGE, point.symbol, float(x) if x == x else -1.0, limit, "tick",
                               f"{name} {x!r} outside (0, {limit:g}]: kept out of every detector",
                               _record(point), {"field": name})
        return None

    def update(self, point: MarketDataPoint) -> list[Anomaly]:
        if (bad := self._out_of_range(point)) is not None:
            return [bad]
        f = _Facts(point)
        split = self.split.update(point, f)
        relabel: list[Anomaly] = []
        opened = None
        if (verdict := self.split.verdict) is not None:  # a split decided or opened by this point (rare)
            self.split.verdict = None
            what, pend = verdict
            if what == "retracted":  # this point came back: the jump was no split
                self._rescale_split(pend, undo=True)
                relabel = [self._relabel(pend, point)]
            elif what == "confirmed":  # a deferred 10^k split: this point kept the level
                self._rescale_split(pend)
                relabel, split = split, []
            elif f.kind == _BAR and self._reverts_suspect(point, f):
                # a split-like jump (flagged, or deferred as 10^k) back to the level before a held suspect bar:
                # that bar was the jump, this is the way back
                split = []
                del self.split.pending[f.stream]
            else:
                opened = pend
        if split:
            self._rescale_split(split[0].details)
        # Detectors that would return at once for this kind of point are not called (a few per point).
        quote_flags = self.spread.update(point, f) + self.midquote.update(point, f) if f.quote is not None else []
        t4 = self.t4.update(point, f, accept_quote=not quote_flags)
        if f.trade is not None:
            bg = self.bg.update(point, f, suspect=bool(t4))
            out = quote_flags + t4 + bg + self.erroneous.update(point, f, suspect=bool(t4 or bg))
        else:
            out = quote_flags + t4
        moved = False
        arrival: list[Anomaly] = []  # mypyc: one type per variable (was `moved = arrival = False`)
        gaps: list[Anomaly] | None = None  # no list built for a trade or a quote (every point passes here)
        late = False
        if f.kind == _BAR:
            # A bar older than the stream's newest (history replayed or backfilled after newer bars, a worker's
            # restart replaying its files) is not judged against a level or volumes it never followed (2016 at 1.3
            # after 2024 at 130 was a 10^-2 decimal shift); bar_outlier skips it too, and the sink keeps the flags
            # stored for it when its values are the same (sinks/postgres.py _KEEPS_FLAGS).
            prior = self.bar_outlier.streams.get(f.stream)
            late = prior is not None and prior["ts"] is not None and f.ts < prior["ts"]
            # the bars missing before this one (a closure, a halt, a hole in the file): its return spans them all
            gaps = self.gaps.update(point, f)
            arrival = self.ohlc.update(point, f) + ([] if late else self.decimal.update(point, f))
            spans = 1 + int(gaps[0].score) if gaps else 1
            out += arrival + self.bar_outlier.update(point, f, suspect=bool(arrival), spans=spans)
            st = self.bar_outlier.streams.get(f.stream)
            moved = bool(st and st["pending"] and st["ts"] == f.ts)  # this bar's return is an outlier
            if arrival and not late and (st := self.bar_outlier.streams.get(f.stream)) and (held := st["pending"]):
                # a later verdict revises this record: it must keep the flags it gets now
                held["record"]["flags"] = [*held["record"].get("flags", ()),
                                           *(f"anomaly:{a.detector}" for a in arrival)]
        if f.volume is not None and not late:
            # a big move on big volume is the market (AAPL 2000-09-29): its volume enters the window unjudged
            out += self.volume.update(point, f, judge=not (moved and not arrival),
                                      edge=self.gaps.edge if f.kind == _BAR else 0)
        out += self.stale.update(point, f)
        if gaps:
            out += gaps
        if split:
            out = [a for a in out if a.detector not in self.PRICE_DETECTORS or a.details.get("follow_up")]
        if opened is not None:
            # the next point's verdict revises this record: it keeps the flags it gets now, but not a price
            # check's (a split is no price error; a retracted one is relabelled by the verdict itself), nor, for a
            # deferred 10^k split, a volume spike (its volumes were not rescaled yet: x10 on a 10:1 split)
            skip = self._DEFERRED_SKIP if opened.get("deferred") else self.PRICE_DETECTORS
            opened["record"]["flags"] = [*opened["record"].get("flags", ()),
                                         *(f"anomaly:{a.detector}" for a in out if a.kind == "tick"
                                           and a.detector not in skip and not a.details.get("follow_up"))]
        return split + relabel + out if relabel else split + out

    def _rescale_split(self, d: dict[str, Any], *, undo: bool = False) -> None:
        """Re-anchor the family's price and volume state on a split (details of a split_suspect), or undo it."""
        ratio, nominal = (1.0 / d["ratio"], 1.0 / d["nominal"]) if undo else (d["ratio"], d["nominal"])
        if d["family"] == "tick":
            for det in (self.bg, self.midquote, self.t4, self.erroneous, self.spread):
                det.rescale(ratio)
            self.volume.rescale_volume("trade", 1.0 / nominal)
        else:
            stream = d["family"]
            if (st := self.bar_outlier.streams.get(stream)) is not None:
                self.bar_outlier.rescale_stream(st, nominal)
            if (entry := self.decimal.levels.get(stream)) is not None:
                entry[0][:] = [x * nominal for x in entry[0]]
                entry[1].clear()
            self.volume.rescale_volume(stream, 1.0 / nominal)

    def _relabel(self, pend: dict[str, Any], point: MarketDataPoint) -> Anomaly:
        """The follow-up that relabels a retracted split's record as the price error it was: its revision
        carries anomaly:<detector> instead of corporate_action.suspect."""
        ratio, level, record = pend["ratio"], pend["level"], pend["record"]
        details = {"follow_up": True, "retracts": SplitSuspect.name, "ratio": ratio, "nominal": pend["nominal"],
                   "level": level, "confirmed_by": point.timestamp.isoformat()}
        what = (f"a jump x{ratio:.4g} from {level:.6g} came back with the next point"
                f" ({SplitSuspect.label(pend['nominal'])} retracted): an error, not a corporate action")
        x = math.log10(ratio)
        k = round(x)
        if pend["family"] == "tick":
            move = abs(ratio - 1.0)
            return Anomaly(ClearlyErroneous.name, point.symbol, move, self.erroneous.band(level), "tick",
                           f"move {move:.2%}: {what}", record, details)
        cfg = bar_checks(self.settings, record.get("interval"))
        if k and abs(x - k) <= cfg.decimal_tolerance:
            return Anomaly(DecimalShift.name, point.symbol, abs(x), float(abs(k)), "tick",
                           f"close ~10^{k} x the level: {what}", record, details)
        w = self.bar_outlier._windows.get(pend["family"])
        r = math.log(ratio)
        med, scale = self.bar_outlier._scale(w, cfg.scale_floor) if w is not None and len(w) else (0.0, cfg.scale_floor)
        z = abs(r - med) / scale
        return Anomaly(BarOutlier.name, point.symbol, z, cfg.outlier_sigma, "tick",
                       f"{z:.1f} sigma: {what}", record, {**details, "return": r, "scale": scale})

    def _reverts_suspect(self, point: MarketDataPoint, f: _Facts) -> bool:
        """Does this bar open nearer the level before the bar BarOutlier holds as a suspect than that bar's
        close? Then a split-like ratio to the suspect's close is the way back from a bad bar, not a corporate
        action, even when the way back overshoots (GOOG 2008-02-25 in the real-data bench: an 8-sigma bar up
        16%, the next open 9% below the level before it, 0.784 of the suspect's close: 5:4-like)."""
        st = self.bar_outlier.streams.get(f.stream)
        held = st["pending"] if st else None
        o = point.open
        if not held or o is None or o <= 0:
            return False
        return abs(math.log(o / held["ref"])) < abs(math.log(o / held["close"]))

    def check_stale(self, now: datetime, *, expected_interval: float | None = None) -> list[Anomaly]:
        return self.stale.check_stale(now, expected_interval=expected_interval)

    def to_state(self) -> dict[str, Any]:
        return {"v": STATE_VERSION, **{d.name: d.to_state() for d in self.detectors}}

    @classmethod
    def from_state(cls, state: dict[str, Any], settings: AnomalySettings | None = None) -> Self:
        suite = cls(settings)
        s = suite.settings
        for attr in cls._DETECTOR_ATTRS:  # mypyc: a native class has no __dict__ (was `vars(suite).items()`)
            det = getattr(suite, attr)
            if isinstance(det, Detector) and det.name in state:
                setattr(suite, attr, type(det).from_state(state[det.name], s))
        return suite
