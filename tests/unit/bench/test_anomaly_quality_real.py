"""The injection of bench/anomaly_quality_real.py: real split ratios (p:q new:old shares) rescale every later
bar, split-like spikes move one bar, and a spike's sigma is the market's own (not inflated by an injected
split or decimal shift before it)."""

from __future__ import annotations

import math
import random
from fractions import Fraction
from types import ModuleType

from tests.unit.bench import scripts


def _bench() -> ModuleType:
    return scripts.load("anomaly_quality_real")


def _series(n: int = 1500, seed: int = 2) -> dict[str, tuple[str, list[dict[str, object]]]]:
    rng = random.Random(seed)
    c, bars = 100.0, []
    for i in range(n):
        c *= math.exp(rng.gauss(0, 0.01))
        bars.append({"date": f"D{i:05d}", "open": c, "high": c * 1.01, "low": c * 0.99, "close": c, "volume": 1e6})
    return {"SYM": ("1d", bars)}


def test_split_ratios_are_new_for_old_shares() -> None:
    b = _bench()
    assert b.split_ratio("3:2") == Fraction(3, 2)
    assert b.split_ratio("1:20") == Fraction(1, 20)
    assert b.split_ratio("4") == 4


def test_real_splits_rescale_every_later_bar_and_split_like_spikes_one_bar() -> None:
    b = _bench()
    series = _series()
    before = [dict(x) for x in series["SYM"][1]]
    labels = b.inject(series, random.Random(1), splits=["3:2", "1:10", "5:4"], splits_per_series=3,
                      split_like_spikes=2)
    after = {x["date"]: x for x in series["SYM"][1]}
    splits = sorted((x for x in labels if x["kind"] == "split"), key=lambda x: x["date"])
    assert [x["magnitude"] for x in sorted(splits, key=lambda x: x["magnitude"])] == ["1:10", "3:2", "5:4"]
    like = [x for x in labels if x["kind"] == "split_like_spike"]
    assert sorted(x["magnitude"] for x in like) == [0.5, 3.0]
    touched = {x["date"] for x in labels if x["kind"] != "split"}
    for x in before:
        if x["date"] not in after or x["date"] in touched:
            continue
        k = math.prod(float(b.split_ratio(s["magnitude"])) for s in splits if s["date"] <= x["date"])
        assert math.isclose(after[x["date"]]["close"], x["close"] / k, rel_tol=1e-12)
        assert math.isclose(after[x["date"]]["volume"], x["volume"] * k, rel_tol=1e-12)
    for s in like:
        i = next(j for j, x in enumerate(before) if x["date"] == s["date"])
        k = math.prod(float(b.split_ratio(t["magnitude"])) for t in splits if t["date"] <= s["date"])
        assert math.isclose(after[s["date"]]["close"], before[i]["close"] * s["magnitude"] / k, rel_tol=1e-12)


def test_a_spike_is_sized_by_the_series_before_injection() -> None:
    """Every spike moves its bar by exactly k x the sd of the 60 log returns before it in the ORIGINAL series,
    whatever was injected before it (a split or a decimal shift in that window would inflate the sd)."""
    b = _bench()
    series = _series()
    closes = [x["close"] for x in series["SYM"][1]]
    dates = [x["date"] for x in series["SYM"][1]]
    kept = {x["date"]: x for x in series["SYM"][1]}  # the same dicts, modified in place
    labels = b.inject(series, random.Random(4), splits=["2:1", "1:10"], splits_per_series=3)
    splits = [x for x in labels if x["kind"] == "split"]
    for s in (x for x in labels if x["kind"] == "spike"):
        i = dates.index(s["date"])
        rets = [math.log(closes[j] / closes[j - 1]) for j in range(i - 60, i)]
        m = sum(rets) / len(rets)
        sd = math.sqrt(sum((r - m) ** 2 for r in rets) / (len(rets) - 1))
        k = math.prod(float(b.split_ratio(t["magnitude"])) for t in splits if t["date"] <= s["date"])
        moved = abs(math.log(kept[s["date"]]["close"] * k / closes[i]))
        assert math.isclose(moved, s["magnitude"] * sd, rel_tol=1e-9)
