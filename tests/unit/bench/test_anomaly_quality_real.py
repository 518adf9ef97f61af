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


def test_intraday_times_are_stored_in_utc() -> None:
    b = _bench()
    assert b._utc("2026-07-29 09:30:00-04:00") == "2026-07-29T13:30:00+00:00"  # New York summer time
    assert b._utc("2026-01-29 09:30:00-05:00") == "2026-01-29T14:30:00+00:00"
    assert b._utc("01.01.2017 22:00:00.000", "%d.%m.%Y %H:%M:%S.%f") == "2017-01-01T22:00:00+00:00"  # naive: UTC
    assert b._ymd("19991110.0") == "1999-11-10"


def test_series_sets() -> None:
    b = _bench()
    assert b.series_sets("all") == {"classic", "more"}
    assert b.series_sets("more,illiquid") == {"more", "illiquid"}
    assert b.parse_args([]).series == {"classic"}
    assert {g for g, _ in b.EXTRA.values()} == {"more", "illiquid", "crypto", "asia", "closeonly", "world"}
    try:
        b.series_sets("more,dito")
    except Exception as exc:
        assert "dito" in str(exc)
    else:
        raise AssertionError("an unknown set must be refused")


def test_labels_carry_the_bar_time() -> None:
    b = _bench()
    series = _series()
    labels = b.inject(series, random.Random(3))
    assert all(r["time"] == r["date"] for r in labels)  # daily: the time is the date
    assert all("next_time" in r for r in labels if r["kind"] == "missing")


def test_intraday_is_scored_per_date_and_per_bar() -> None:
    """The shared scorer keys by (symbol, date): a false flag on a day that has a labelled bar is folded into it.
    Per bar it is a false positive."""
    b = _bench()
    labels = [{"symbol": "X", "date": "2026-07-29", "time": "2026-07-29T13:35:00+00:00", "kind": "spike",
               "magnitude": 8},
              {"symbol": "X", "date": "2026-07-29", "time": "2026-07-29T14:00:00+00:00", "kind": "decimal",
               "magnitude": 10.0}]
    newest = {("X", "2026-07-29T13:35:00Z"): {"anomaly:bar_outlier"}, ("X", "2026-07-29T13:31:00Z"):
              {"anomaly:volume_spike"}, ("X", "2026-07-29T14:00:00Z"): set()}
    out = b.by_series({"X": "1m"}, {"X": 390}, labels, newest, [])
    day, bar = out["per_series"]["X"], out["per_series"]["X"]["per_bar"]
    assert (day["precision"], day["false_positives"], day["recall"]["decimal"]["caught"]) == (1.0, [], 1)
    assert bar["precision"] == 0.5 and bar["labelled"] == 2
    assert bar["false_positives"] == ["X 2026-07-29T13:31:00+00:00 ['anomaly:volume_spike']"]
    assert (bar["recall"]["spike"]["caught"], bar["recall"]["decimal"]["caught"]) == (1, 0)
    assert out["per_bar"]["false_positive_rate"] == 1 / 388


def test_rows_that_copy_the_day_before_are_known_to_the_scores() -> None:
    q = _bench()
    day = {"open": 10.0, "high": 10.5, "low": 9.8, "close": 10.2, "volume": 1000.0}
    flat = {"open": 10.0, "high": 10.0, "low": 10.0, "close": 10.0, "volume": 0.0}
    series = {"X.SS": ("1d", [{"date": "2010-02-12", **day}, {"date": "2010-02-15", **day},
                              {"date": "2010-02-16", **day, "volume": 999.0}]),
              "Y": ("1d", [{"date": "2010-02-12", **flat}, {"date": "2010-02-15", **flat}]),
              "Z": ("1h", [{"date": "2010-02-12T10:00", **day}, {"date": "2010-02-12T11:00", **day}])}
    assert q.repeated_rows(series) == {("X.SS", "2010-02-15")}
