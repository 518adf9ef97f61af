"""DetectorSuite: every detector of one symbol and the precedence rules between them."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, ClassVar, Self

from streams.anomalies.bars import BarOutlier, DecimalShift, OhlcConsistency, SplitSuspect
from streams.anomalies.core import _BAR, STATE_VERSION, Anomaly, Detector, _Facts, _record, bar_checks, finite_price
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


class DetectorSuite:
    """Every detector for one symbol, with the precedence rules between them.

    0. A price that is not finite, not positive or above `max_price` (1e154, say) is flagged as
       `price_out_of_range` and reaches no detector: no window ever holds it (issue 15: its square
       overflowed a running sum and broke the symbol's detectors until a restart).
    1. A split suspect re-anchors the price detectors first: on the trade/quote stream, prices x the observed
       ratio and trade volumes / the nominal ratio; on a bar stream, the bar checks' remembered closes x the
       nominal ratio and that stream's volumes / the nominal ratio (a 2:1 split halves prices, doubles
       volumes). Price anomalies on that record are dropped: a split is a corporate action, not an error.
    2. A quote flagged by Q3/Q4 does not become the prevailing quote for T4.
    3. A trade flagged by T4 stays out of the Brownlees-Gallo window, and one flagged by T4 or BG never becomes
       the FINRA "last clean price" (a spike just inside a band must not become the reference).
    4. A bar flagged on arrival (decimal shift, OHLC) is held by BarOutlier as a suspect, never its reference.
    5. A bar whose return is an outlier is not judged for volume: a big move on big volume is the market. A bar
       that opens back at the level before a held suspect is not a split suspect (it is the way back).
    """

    PRICE_DETECTORS: ClassVar[frozenset[str]] = frozenset(
        {BrownleesGallo.name, MidQuoteOutlier.name, TradeOutsideQuote.name, ClearlyErroneous.name,
         BarOutlier.name, DecimalShift.name, OhlcConsistency.name})
    _PRICE_FIELDS = ("price", "bid", "ask", "open", "high", "low", "close")

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

    @property
    def detectors(self) -> list[Detector]:
        return [self.split, self.spread, self.midquote, self.t4, self.bg, self.erroneous, self.volume, self.stale,
                self.gaps, self.bar_outlier, self.decimal, self.ohlc]

    def _out_of_range(self, point: MarketDataPoint) -> Anomaly | None:
        limit = self.settings.max_price
        for name in self._PRICE_FIELDS:
            x = getattr(point, name)
            if x is not None and not finite_price(x, limit):
                return Anomaly(OUT_OF_RANGE, point.symbol, float(x) if x == x else -1.0, limit, "tick",
                               f"{name} {x!r} outside (0, {limit:g}]: kept out of every detector",
                               _record(point), {"field": name})
        return None

    def update(self, point: MarketDataPoint) -> list[Anomaly]:
        if (bad := self._out_of_range(point)) is not None:
            return [bad]
        f = _Facts(point)
        split = self.split.update(point, f)
        if split and point.data_type == _BAR and self._reverts_suspect(point, f):
            split = []  # the open is back at the level before a held suspect bar: that bar was the jump
        if split:
            d = split[0].details
            if d["family"] == "tick":
                for det in (self.bg, self.midquote, self.t4, self.erroneous, self.spread):
                    det.rescale(d["ratio"])
                self.volume.rescale_volume("trade", 1.0 / d["nominal"])
            else:
                stream = d["family"]
                if (st := self.bar_outlier.streams.get(stream)) is not None:
                    self.bar_outlier.rescale_stream(st, d["nominal"])
                if (entry := self.decimal.levels.get(stream)) is not None:
                    entry[0][:] = [x * d["nominal"] for x in entry[0]]
                    entry[1].clear()
                self.volume.rescale_volume(stream, 1.0 / d["nominal"])
        # Detectors that would return at once for this kind of point are not called (a few per point).
        quote_flags = self.spread.update(point, f) + self.midquote.update(point, f) if f.quote is not None else []
        t4 = self.t4.update(point, f, accept_quote=not quote_flags)
        if f.trade is not None:
            bg = self.bg.update(point, f, suspect=bool(t4))
            out = quote_flags + t4 + bg + self.erroneous.update(point, f, suspect=bool(t4 or bg))
        else:
            out = quote_flags + t4
        moved = arrival = False
        if point.data_type == _BAR:
            arrival = self.ohlc.update(point, f) + self.decimal.update(point, f)
            out += arrival + self.bar_outlier.update(point, f, suspect=bool(arrival))
            st = self.bar_outlier.streams.get(f.stream)
            moved = bool(st and st["pending"] and st["ts"] == f.ts)  # this bar's return is an outlier
            if arrival and (st := self.bar_outlier.streams.get(f.stream)) and (held := st["pending"]):
                # a later verdict revises this record: it must keep the flags it gets now
                held["record"]["flags"] = [*held["record"].get("flags", ()),
                                           *(f"anomaly:{a.detector}" for a in arrival)]
        if point.volume is not None and not (moved and not arrival):
            out += self.volume.update(point, f)  # a big move on big volume is the market (AAPL 2000-09-29)
        out += self.stale.update(point, f)
        if point.data_type == _BAR:
            out += self.gaps.update(point, f)
        if split:
            out = [a for a in out if a.detector not in self.PRICE_DETECTORS or a.details.get("follow_up")]
        return split + out

    def _reverts_suspect(self, point: MarketDataPoint, f: _Facts) -> bool:
        """Does this bar open back near the level before the bar BarOutlier holds as a suspect? Then a
        split-like ratio to the suspect's close is the way back from a bad bar, not a corporate action."""
        st = self.bar_outlier.streams.get(f.stream)
        held = st["pending"] if st else None
        o = point.open
        if not held or o is None or o <= 0:
            return False
        cfg = bar_checks(self.settings, point.interval)
        return abs(math.log(o / held["ref"])) <= cfg.revert_fraction * abs(held["r"])

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
