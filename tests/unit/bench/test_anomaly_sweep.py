"""The sweep's counting in bench/anomaly_quality.py: an anomaly counts for the record it names, not for the
point that raised it (BarOutlier's verdict on a bad bar comes with the next bar), and a split series is
labelled and rescaled where the split is."""

from __future__ import annotations

import math
import random
from types import ModuleType

from streams.anomalies import AnomalySettings
from tests.unit.bench import scripts


def _bench() -> ModuleType:
    return scripts.load("anomaly_quality")


def test_a_follow_up_verdict_is_credited_to_the_bar_it_names() -> None:
    aq = _bench()
    series = aq.generate_bars("ZZ", 50.0, 0.02, random.Random(3), n=90)
    i = 70
    factor = math.exp(10 * aq._bar_scale(series, i))  # well above 6, far from x2 (a split)
    for k in ("open", "high", "low", "close"):
        series[i].point[k] *= factor
    aq.run_named({"ZZ": series}, AnomalySettings())
    assert "bar_outlier" in series[i].flags  # raised while the next bar was judged, about bar i
    assert "bar_outlier" not in series[i + 1].flags
    assert not any(e.flags for j, e in enumerate(series) if j != i)


def test_a_split_labels_its_first_record_and_rescales_what_follows() -> None:
    aq = _bench()
    series = aq.generate_bars("ZZ", 50.0, 0.02, random.Random(4), n=30)
    before = [dict(e.point) for e in series]
    aq.sweep_split(series, 2.0, 20)
    assert [e.label for e in series].count("bar_split") == 1 and series[20].label == "bar_split"
    assert series[20].size == 2.0
    assert all(series[j].point == before[j] for j in range(20))
    for j in range(20, 30):
        assert math.isclose(series[j].point["close"], before[j]["close"] / 2.0)
        assert series[j].point["volume"] == round(before[j]["volume"] * 2.0)
    aq.run_named({"ZZ": series}, AnomalySettings())
    assert "split_suspect" in series[20].flags
