"""The detectors by their old address: the classes live in modules by family (core, windows, price, bars,
feed, calendars, suite); this module re-exports them so `streams.anomalies.detectors` imports keep working."""

from streams.anomalies.bars import BarOutlier, DecimalShift, OhlcConsistency, SplitSuspect
from streams.anomalies.core import STATE_VERSION, Anomaly, AnomalyKind, Detector, _Facts, _iso_day, _put_bounded
from streams.anomalies.feed import BarGaps, StaleFeed, interval_seconds, weekdays_between
from streams.anomalies.price import (
    BrownleesGallo,
    ClearlyErroneous,
    MidQuoteOutlier,
    SpreadTooWide,
    TradeOutsideQuote,
    VolumeSpike,
)
from streams.anomalies.suite import DetectorSuite
from streams.anomalies.windows import (
    _consistent_run,
    _mad_lower_bound,
    _mean_abs_dev_sorted,
    _median,
    _median_abs_dev,
    _median_sorted,
    _SumWindow,
    _trimmed_mean_sd,
    _Window,
)

__all__ = [
    "STATE_VERSION", "Anomaly", "AnomalyKind", "BarGaps", "BarOutlier", "BrownleesGallo", "ClearlyErroneous",
    "DecimalShift", "Detector", "DetectorSuite", "MidQuoteOutlier", "OhlcConsistency", "SplitSuspect",
    "SpreadTooWide", "StaleFeed", "TradeOutsideQuote", "VolumeSpike", "_Facts", "_SumWindow", "_Window",
    "_consistent_run", "_iso_day", "_mad_lower_bound", "_mean_abs_dev_sorted", "_median", "_median_abs_dev",
    "_median_sorted", "_put_bounded", "_trimmed_mean_sd", "interval_seconds", "weekdays_between",
]
