#!/usr/bin/env python3
"""Quality of the anomaly detectors (streams/anomalies/detectors.py) on simulated series with labelled anomalies.

    .cache/venv/bin/python bench/anomaly_quality.py            # seed 20240501
    ANOMALY_BENCH_SEED=7 .cache/venv/bin/python bench/anomaly_quality.py
    .cache/venv/bin/python bench/anomaly_quality.py --sweep    # recall by injected size (~1 min)

THE DATA IS SIMULATED: a seeded random walk (ticks, daily bars) with injected anomalies. It checks the
detectors' mechanics and where their thresholds sit, not their quality on real markets: that is
bench/anomaly_quality_real.py (real price series, synthetic injections).

The sweep (--sweep, issue 18; results: bench/results/anomaly_sweep.json). The default run below injects sizes
just above each threshold, so its recall is high by construction; the sweep injects a range of sizes spanning
below, at and above each detector's threshold and reports recall per size, as a curve:
  - tick_spike_sigma: one trade moved by 0.5-20 sd of the previous 80 trade prices (quotes present, so T4
    sees it); tick_spike_sigma_trades_only: the same on a trades-only feed (BG and FINRA only);
  - tick_decimal / bar_decimal: a trade price / a whole daily bar (OHLC) x 0.001 ... 1000;
  - tick_volume / bar_volume: one trade size / one daily volume x 2 ... 100;
  - bar_spike_sigma: one daily bar (OHLC) moved by 2-20 of BarOutlier's own scale, the next bar normal;
  - tick_split / bar_split: splits of 1:10 ... 10:1 new shares per old (the detector knows 2, 3, 1/2, 1/3),
    one short series per split (at the second day's open; 100 bars in) so the levels do not drift.
Each kind runs on its own series; sizes are shuffled over places at least 60 ticks / 70 bars apart.
Counting is at the POINT level, for every kind: a labelled point is caught when an anomaly of the kind's
family (price, volume, corporate action) NAMES it, i.e. its `record` is that point, whether raised on its
arrival or later (BarOutlier's verdict comes with the next bar, about the earlier one). `recall_any_detector`
counts any anomaly naming it. Precision = caught / (caught + unlabelled points the family names); the
false-positive rate = unlabelled points the family names / unlabelled points (also for any detector).
Precision is per kind, not per size: a false flag belongs to no size.

A script, not a test. Seeded and deterministic; runs in well under a minute. For each symbol (price levels
across the FINRA 11892 bands) and trading day (13:30-20:00 UTC):
  - an efficient log price follows a random walk with a U-shaped intraday volatility, overnight gaps, and
    genuine volatility bursts (volatility x5 decaying over ~300 steps, GARCH-like clusters) that must NOT
    be flagged;
  - every step publishes a quote (spread ~ lognormal around a few bps, cent grid) and, with p=0.6, a trade
    at the bid or the ask (bid-ask bounce) or the mid, with a lognormal size.
Labelled injections: isolated trade spikes of 1%, 3%, 10% and of 8 local sd (sd of the previous 80 trade
prices, Brownlees-Gallo's own dispersion measure), decimal-shift fat fingers (x10, /10), one-quote mid
jumps of 2% and 10%, spreads 60-100x wider, volume bursts (5 trades at 10-40x), stale runs (25-40 trades repeating
the last print while quotes move on) and a 2:1 split at one open. Crossed quotes are not injected: the
validation stage rejects them (streams/rules.py, quote.crossed).

Scoring of the default run (it mixes levels: stale runs and "overall" count events; the sweep counts points
only). A point is flagged for a type when a detector of the type's family flags it (price: BG, FINRA,
T4, Q4; spread: Q3; volume; stale; corporate action). Recall per type; precision per type = TP /
(TP + the family's false flags), where a false flag is one on a clean or volatility-burst point, or a price
flag on the split record. Stale runs are scored per run (an event), not per point. Overall: each injected
anomaly is one event, detected when any detector flags any of its points; each flagged point outside
every event is a false positive. The false-positive rate on clean data is measured on the same series
generated without any injection. Every 5000 points the whole state goes through orjson and back, as after a
rebalance. Results: bench/results/anomaly_quality.json.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import platform
import random
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from streams.anomalies import AnomalySettings, DetectorSuite  # noqa: E402
from streams.models import MarketDataPoint  # noqa: E402

SEED = int(os.environ.get("ANOMALY_BENCH_SEED", "20240501"))
DAYS = int(os.environ.get("ANOMALY_BENCH_DAYS", "4"))
STEPS = int(os.environ.get("ANOMALY_BENCH_STEPS", "3000"))  # quote updates per symbol-day
SYMBOLS = [("LOWP", 8.0, 0.025), ("MIDP", 40.0, 0.02), ("BIGP", 120.0, 0.015), ("HIGHP", 600.0, 0.015)]
SPLIT_SYMBOL, SPLIT_DAY = "BIGP", 2
SESSION_SECONDS = 6.5 * 3600
FIRST_DAY = datetime(2024, 5, 6, 13, 30, tzinfo=UTC)  # a Monday
OUT = ROOT / "bench" / "results" / "anomaly_quality.json"

FAMILY = {
    "spike_1pct": "price", "spike_3pct": "price", "spike_10pct": "price", "spike_8sd": "price",
    "fat_finger_x10": "price", "fat_finger_div10": "price", "quote_spike_2pct": "price",
    "quote_spike_10pct": "price",
    "wide_spread": "spread", "volume_burst": "volume", "stale_run": "stale", "split": "corporate",
}
DETECTOR_FAMILY = {
    "brownlees_gallo": "price", "clearly_erroneous": "price", "trade_outside_quote": "price",
    "midquote_outlier": "price", "spread_wide": "spread", "volume_spike": "volume", "stale_feed": "stale",
    "split_suspect": "corporate", "bar_gap": "gap",
}
GENUINE = {"clean", "vol_burst"}
# Per symbol-day, how many of each isolated injection.
PER_DAY = {"spike_1pct": 3, "spike_3pct": 2, "spike_10pct": 2, "spike_8sd": 3, "fat_finger_x10": 1,
           "fat_finger_div10": 1, "quote_spike_2pct": 2, "quote_spike_10pct": 1, "wide_spread": 2, "volume_burst": 1,
           "stale_run": 1}


@dataclass
class Event:
    """One simulated record with its label; `event` groups the points of one injected anomaly."""

    point: dict[str, Any]
    label: str = "clean"
    event: int = -1
    flags: list[str] = field(default_factory=list)
    size: float | None = None  # the sweep: the injected size


def _round_cent(x: float) -> float:
    return round(x, 2)


def generate(symbol: str, level: float, daily_vol: float, rng: random.Random, *, with_split: bool,
             days: int | None = None, steps: int | None = None) -> list[Event]:
    """The clean series of one symbol over DAYS days (trades and quotes), labelled clean / vol_burst."""
    n_days, STEPS = (DAYS if days is None else days), (globals()["STEPS"] if steps is None else steps)
    events: list[Event] = []
    logm = math.log(level)
    for day in range(n_days):
        open_at = FIRST_DAY + timedelta(days=day)
        if day:
            logm += rng.gauss(0.0, 0.01)  # overnight return
        if with_split and symbol == SPLIT_SYMBOL and day == SPLIT_DAY:
            logm += math.log(0.5)
        split_today = with_split and symbol == SPLIT_SYMBOL and day == SPLIT_DAY
        base = daily_vol / math.sqrt(STEPS)
        bursts = sorted(rng.randrange(200, max(201, STEPS - 400)) for _ in range(rng.choice((1, 2))))
        dt = SESSION_SECONDS / STEPS
        for i in range(STEPS):
            u = 2.0 * i / STEPS - 1.0
            intraday = (0.7 + 0.9 * u * u) / 1.0
            burst = 1.0
            for b in bursts:
                if i >= b:
                    burst = max(burst, 1.0 + 4.0 * math.exp(-(i - b) / 300.0))
            sigma = base * intraday * burst
            logm += sigma * rng.gauss(0.0, 1.0) * (1.0 if rng.random() > 0.02 else 2.5)  # occasional fat tail
            m = math.exp(logm)
            half = max(0.005, m * 2.0e-4 * math.exp(0.3 * rng.gauss(0.0, 1.0)))
            bid = math.floor((m - half) * 100.0) / 100.0
            ask = math.ceil((m + half) * 100.0) / 100.0
            if ask <= bid:
                ask = bid + 0.01
            ts = open_at + timedelta(seconds=(i + rng.random() * 0.9) * dt)
            label = "vol_burst" if burst > 2.0 else "clean"
            events.append(Event({"symbol": symbol, "timestamp": ts, "source": "bench", "data_type": "quote",
                                 "bid": _round_cent(bid), "ask": _round_cent(ask),
                                 "bid_size": float(rng.randint(1, 20) * 100),
                                 "ask_size": float(rng.randint(1, 20) * 100)}, label))
            if rng.random() < 0.6:
                r = rng.random()
                price = bid if r < 0.45 else ask if r < 0.9 else _round_cent((bid + ask) / 2.0)
                volume = float(max(1, round(math.exp(rng.gauss(math.log(200.0), 0.6)))))
                if split_today:
                    volume *= 2.0
                events.append(Event({"symbol": symbol, "timestamp": ts + timedelta(milliseconds=1), "source": "bench",
                                     "data_type": "trade", "price": _round_cent(price), "volume": volume}, label))
        if split_today:
            events[_first_index_of_day(events, open_at)].label = "split"
    return events


def _first_index_of_day(events: list[Event], open_at: datetime) -> int:
    for i, e in enumerate(events):
        if e.point["timestamp"] >= open_at:
            return i
    raise ValueError("no event in that day")  # pragma: no cover


def inject(events: list[Event], rng: random.Random, next_event: list[int]) -> None:
    """Overwrite points of the clean series with labelled anomalies, well apart from each other."""
    trades = [i for i, e in enumerate(events) if e.point["data_type"] == "trade"]
    quotes = [i for i, e in enumerate(events) if e.point["data_type"] == "quote"]
    taken: set[int] = set()

    def free(i: int, span: int = 1) -> bool:
        return i > 150 and all(j not in taken for j in range(i - 60, i + span + 60)) and \
            all(events[j].label in GENUINE for j in range(i, min(len(events), i + span)))

    def pick(pool: list[int], span: int = 1) -> int:
        while True:
            i = rng.choice(pool)
            if free(i, span):
                taken.update(range(i, i + span))
                return i

    days = DAYS
    for kind, per_day in PER_DAY.items():
        for _ in range(per_day * days):
            eid = next_event[0]
            next_event[0] += 1
            if kind == "stale_run":
                start = pick(trades, 120)
                run = [j for j in trades if j >= start][: rng.randint(25, 40)]
                frozen = events[run[0]].point
                for j in run[1:]:
                    p = events[j].point
                    p["price"], p["volume"] = frozen["price"], frozen["volume"]
                for j in run:
                    events[j].label, events[j].event = kind, eid
                continue
            if kind == "volume_burst":
                start = pick(trades, 20)
                for j in [j for j in trades if j >= start][:5]:
                    events[j].point["volume"] = round(events[j].point["volume"] * rng.uniform(10.0, 40.0))
                    events[j].label, events[j].event = kind, eid
                continue
            if kind in ("quote_spike_2pct", "quote_spike_10pct", "wide_spread"):
                i = pick(quotes)
                p = events[i].point
                if kind != "wide_spread":
                    f = 1.0 + rng.choice((-1.0, 1.0)) * (0.02 if kind == "quote_spike_2pct" else 0.10)
                    p["bid"], p["ask"] = _round_cent(p["bid"] * f), _round_cent(p["ask"] * f)
                else:
                    mid, spread = (p["bid"] + p["ask"]) / 2.0, p["ask"] - p["bid"]
                    half = spread * rng.uniform(60.0, 100.0) / 2.0
                    p["bid"], p["ask"] = _round_cent(max(0.01, mid - half)), _round_cent(mid + half)
                events[i].label, events[i].event = kind, eid
                continue
            i = pick(trades)
            p = events[i].point
            sign = rng.choice((-1.0, 1.0))
            if kind == "spike_8sd":
                prev = [events[j].point["price"] for j in trades if j < i][-80:]
                m = sum(prev) / len(prev)
                sd = math.sqrt(sum((x - m) ** 2 for x in prev) / (len(prev) - 1))
                p["price"] = _round_cent(max(0.01, p["price"] + sign * 8.0 * sd))
            elif kind == "fat_finger_x10":
                p["price"] = _round_cent(p["price"] * 10.0)
            elif kind == "fat_finger_div10":
                p["price"] = _round_cent(p["price"] / 10.0)
            else:
                size = {"spike_1pct": 0.01, "spike_3pct": 0.03, "spike_10pct": 0.10}[kind]
                p["price"] = _round_cent(p["price"] * (1.0 + sign * size))
            events[i].label, events[i].event = kind, eid


def run_suite(streams: dict[str, list[Event]], settings: AnomalySettings) -> tuple[int, float]:
    """Feed every symbol's series (merged in time) through one DetectorSuite per symbol."""
    merged = sorted((e for evs in streams.values() for e in evs), key=lambda e: e.point["timestamp"])
    suites: dict[str, DetectorSuite] = {}
    t0 = time.perf_counter()
    for n, e in enumerate(merged, 1):
        point = MarketDataPoint.model_validate(e.point)
        suite = suites.get(point.symbol)
        if suite is None:
            suite = suites[point.symbol] = DetectorSuite(settings)
        e.flags = [a.detector for a in suite.update(point)]
        if n % 5000 == 0:  # a rebalance: state out to the changelog and back
            suites = {s: DetectorSuite.from_state(orjson.loads(orjson.dumps(x.to_state())), settings)
                      for s, x in suites.items()}
    return len(merged), time.perf_counter() - t0


def _prf(tp: int, fp: int, fn: int) -> dict[str, float | int | None]:
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * precision * recall / (precision + recall) if precision and recall else (0.0 if tp + fn else None)
    return {"tp": tp, "fp": fp, "fn": fn, "precision": precision, "recall": recall, "f1": f1}


def score(events: list[Event]) -> dict[str, Any]:
    fam_flags = lambda e: {DETECTOR_FAMILY[d] for d in e.flags}  # noqa: E731
    # Family false flags: on genuine points, or price flags on the split record.
    family_fp: Counter[str] = Counter()
    for e in events:
        for fam in fam_flags(e):
            if e.label in GENUINE or (e.label == "split" and fam == "price"):
                family_fp[fam] += 1
    tp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    stale_runs: dict[int, bool] = defaultdict(bool)
    for e in events:
        if e.label == "stale_run":
            stale_runs[e.event] |= "stale" in fam_flags(e)
        elif e.label in FAMILY:
            hit = FAMILY[e.label] in fam_flags(e)
            tp[e.label] += hit
            fn[e.label] += not hit
    tp["stale_run"] = sum(stale_runs.values())
    fn["stale_run"] = len(stale_runs) - tp["stale_run"]
    per_type = {t: {"n": tp[t] + fn[t], **_prf(tp[t], family_fp[FAMILY[t]], fn[t])} for t in FAMILY}
    # Overall, by event.
    detected: dict[int, bool] = defaultdict(bool)
    fp_points = 0
    for e in events:
        if e.event >= 0 or e.label == "split":
            key = e.event if e.event >= 0 else -2 - events.index(e)
            detected[key] |= bool(e.flags) if e.label != "split" else "split_suspect" in e.flags
        elif e.flags:
            fp_points += 1
    n_events = len(detected)
    hits = sum(detected.values())
    overall = {"n": n_events, **_prf(hits, fp_points, n_events - hits)}
    genuine = [e for e in events if e.label in GENUINE]
    bursts = [e for e in events if e.label == "vol_burst"]
    by_detector = Counter(d for e in events for d in e.flags)
    fp_by_detector = Counter(d for e in genuine for d in e.flags)
    return {
        "per_type": per_type, "overall": overall,
        "family_false_flags": dict(family_fp),
        "flags_by_detector": dict(by_detector), "false_flags_by_detector": dict(fp_by_detector),
        "genuine_points": len(genuine), "genuine_points_flagged": sum(1 for e in genuine if e.flags),
        "vol_burst_points": len(bursts), "vol_burst_points_flagged": sum(1 for e in bursts if e.flags),
    }


def build(inject_anomalies: bool) -> dict[str, list[Event]]:
    streams: dict[str, list[Event]] = {}
    next_event = [0]
    for k, (symbol, level, vol) in enumerate(SYMBOLS):
        events = generate(symbol, level, vol, random.Random(SEED * 100 + k), with_split=inject_anomalies)
        if inject_anomalies:
            inject(events, random.Random(SEED * 100 + 50 + k), next_event)
            for e in events:
                if e.label == "split":
                    e.event = -1
        streams[symbol] = events
    return streams


def _fmt(x: float | None) -> str:
    return "   -  " if x is None else f"{x:6.3f}"


def main() -> None:
    settings = AnomalySettings()
    started = time.perf_counter()
    clean = build(False)
    n_clean, t_clean = run_suite(clean, settings)
    clean_events = [e for evs in clean.values() for e in evs]
    clean_flagged = [e for e in clean_events if e.flags]
    dirty = build(True)
    n_dirty, t_dirty = run_suite(dirty, settings)
    result = score([e for evs in dirty.values() for e in evs])
    clean_fp_by_detector = Counter(d for e in clean_events for d in e.flags)
    bursts_clean = [e for e in clean_events if e.label == "vol_burst"]
    result["clean"] = {
        "points": n_clean, "flagged_points": len(clean_flagged),
        "false_positive_rate": len(clean_flagged) / n_clean,
        "flags_by_detector": dict(clean_fp_by_detector),
        "vol_burst_points": len(bursts_clean),
        "vol_burst_false_positive_rate": sum(1 for e in bursts_clean if e.flags) / max(1, len(bursts_clean)),
    }
    result["run"] = {
        "seed": SEED, "days": DAYS, "steps_per_day": STEPS, "symbols": [s for s, _, _ in SYMBOLS],
        "points_injected_run": n_dirty, "points_per_second": round((n_clean + n_dirty) / (t_clean + t_dirty)),
        "wall_seconds": round(time.perf_counter() - started, 2), "python": platform.python_version(),
        "settings": settings.model_dump(mode="json"),
    }

    print(f"anomaly quality, seed {SEED}: {len(SYMBOLS)} symbols x {DAYS} days, {n_dirty} points with injections,"
          f" {n_clean} clean points")
    print(f"{'type':<18}{'n':>5}{'TP':>6}{'FN':>5}{'FP':>5}{'precision':>11}{'recall':>9}{'F1':>8}")
    for t, r in result["per_type"].items():
        print(f"{t:<18}{r['n']:>5}{r['tp']:>6}{r['fn']:>5}{r['fp']:>5}    {_fmt(r['precision'])}   {_fmt(r['recall'])}"
              f"  {_fmt(r['f1'])}")
    o = result["overall"]
    print(f"{'overall (events)':<18}{o['n']:>5}{o['tp']:>6}{o['fn']:>5}{o['fp']:>5}    {_fmt(o['precision'])}"
          f"   {_fmt(o['recall'])}  {_fmt(o['f1'])}")
    c = result["clean"]
    print(f"clean data: {c['flagged_points']} of {c['points']} points flagged, false-positive rate "
          f"{c['false_positive_rate']:.4%}; within genuine volatility bursts {c['vol_burst_false_positive_rate']:.4%}"
          f" of {c['vol_burst_points']}")
    print(f"  clean flags by detector: {dict(sorted(c['flags_by_detector'].items()))}")
    print(f"  injected run, false flags by detector: {dict(sorted(result['false_flags_by_detector'].items()))}")
    run = result["run"]
    print(f"{run['points_per_second']} points/s through DetectorSuite; wall {run['wall_seconds']} s")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
    print(f"wrote {OUT.relative_to(ROOT)}")


# ------------------------------------------------------------------------------------------------ the sweep

SWEEP_OUT = ROOT / "bench" / "results" / "anomaly_sweep.json"
SWEEP_DAYS = int(os.environ.get("ANOMALY_SWEEP_DAYS", "6"))  # tick series: days per symbol
SWEEP_BARS = int(os.environ.get("ANOMALY_SWEEP_BARS", "5000"))  # daily bars per symbol
SWEEP_PER_SIZE = int(os.environ.get("ANOMALY_SWEEP_PER_SIZE", "30"))  # injections per size
TICK_SIGMAS = [0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0]
SIGMAS = [2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 15.0, 20.0]
DECIMALS = [0.001, 0.01, 0.1, 0.2, 0.5, 2.0, 5.0, 10.0, 100.0, 1000.0]
MULTIPLES = [2.0, 3.0, 5.0, 7.0, 10.0, 15.0, 20.0, 30.0, 50.0, 100.0]
# New shares per old share: 2 is a 2:1 split (prices halve), 0.1 a 1:10 reverse split. The detector knows
# 2, 3, 1/2 and 1/3 (split_ratios); 1.5, 4, 5 and 10 are real ratios it is not configured for.
SPLITS = [0.1, 1.0 / 3.0, 0.5, 1.5, 2.0, 3.0, 4.0, 5.0, 10.0]
SWEEP_KINDS: dict[str, dict[str, Any]] = {
    "tick_spike_sigma": {"family": "price", "sizes": TICK_SIGMAS, "unit": "sd of the last 80 trade prices",
                         "threshold": "T4: beyond the prevailing quote by one spread (a few bps: far below 1 sd"
                                      " here); BG: 3 trimmed sd + 10 bps of the 80 neighbours; FINRA bands"},
    "tick_spike_sigma_trades_only": {"family": "price", "sizes": TICK_SIGMAS, "unit": "sd of the last 80 trade"
                                     " prices", "threshold": "no quotes in the feed, so no T4: BG (3 trimmed sd +"
                                     " 10 bps, and a jump from the previous trade) and FINRA bands"},
    "tick_decimal": {"family": "price", "sizes": DECIMALS, "unit": "trade price x factor",
                     "threshold": "as tick_spike_sigma (no decimal-specific tick check)"},
    "tick_volume": {"family": "volume", "sizes": MULTIPLES, "unit": "trade size x multiple",
                    "threshold": "median + 10 x 1.4826 MAD of the last 100 trade sizes (~x7 here)"},
    "tick_split": {"family": "corporate", "sizes": SPLITS, "unit": "new shares per old share",
                   "threshold": "first price (mid) after a 4 h silence / last close within 2% of 2, 3, 1/2, 1/3"},
    "bar_spike_sigma": {"family": "price", "sizes": SIGMAS, "unit": "BarOutlier's scale of the last 60 daily log"
                        " returns: max(1.4826 MAD, 1.2533 mean absolute deviation, 0.002)",
                        "threshold": "bar_daily.outlier_sigma = 6, confirmed by the next bar coming back"},
    "bar_decimal": {"family": "price", "sizes": DECIMALS, "unit": "whole bar (OHLC) x factor",
                    "threshold": "decimal_shift: within 0.15 log10 of 10^k, k != 0 (x7.1-x14 and so on)"},
    "bar_volume": {"family": "volume", "sizes": MULTIPLES, "unit": "daily volume x multiple",
                   "threshold": "above both median + 10 MAD and 20 x the median (volume_min_ratio)"},
    "bar_split": {"family": "corporate", "sizes": SPLITS, "unit": "new shares per old share",
                  "threshold": "open / previous close within 2-4% of 2, 3, 1/2 or 1/3"},
}
DETECTOR_FAMILY_ALL = {**DETECTOR_FAMILY, "bar_outlier": "price", "decimal_shift": "price",
                       "ohlc_inconsistent": "price", "price_out_of_range": "price"}
SPLIT_BARS = 150  # bars per split series (the split 50 bars before its end)
SPLIT_TICK_STEPS = 150  # quote updates per day of a split series (two days, the split at the second open)
BAR_SYMBOLS = [(f"D{k:02d}", level, vol) for k, (level, vol) in enumerate(
    [(3.0, 0.035), (8.0, 0.03), (15.0, 0.025), (25.0, 0.02), (40.0, 0.02), (60.0, 0.018), (90.0, 0.015),
     (120.0, 0.015), (200.0, 0.013), (350.0, 0.012), (600.0, 0.012), (1500.0, 0.011)])]
FIRST_BAR_DAY = datetime(2012, 1, 2, tzinfo=UTC)


def _key(symbol: str, ts: datetime, data_type: str) -> tuple[str, datetime, str]:
    return symbol, ts, data_type


def run_named(streams: dict[str, list[Event]], settings: AnomalySettings) -> int:
    """Like run_suite, but each anomaly goes to the record it NAMES (its `record`), not to the point that raised
    it: BarOutlier's verdict on a bar arrives with the next bar, as a follow-up about the earlier record."""
    merged = sorted((e for evs in streams.values() for e in evs), key=lambda e: e.point["timestamp"])
    index = {_key(e.point["symbol"], e.point["timestamp"], e.point["data_type"]): e for e in merged}
    suites: dict[str, DetectorSuite] = {}
    for e in merged:
        e.flags = []
    for n, e in enumerate(merged, 1):
        point = MarketDataPoint.model_validate(e.point)
        suite = suites.get(point.symbol)
        if suite is None:
            suite = suites[point.symbol] = DetectorSuite(settings)
        for a in suite.update(point):
            rec = a.record
            named = index.get(_key(rec["symbol"], datetime.fromisoformat(rec["timestamp"]), rec["data_type"]))
            (named if named is not None else e).flags.append(a.detector)
        if n % 5000 == 0:
            suites = {s: DetectorSuite.from_state(orjson.loads(orjson.dumps(x.to_state())), settings)
                      for s, x in suites.items()}
    return len(merged)


def generate_bars(symbol: str, level: float, daily_vol: float, rng: random.Random, n: int | None = None
                  ) -> list[Event]:
    """Daily bars on weekdays: a random walk with volatility bursts (x3 decaying over ~20 days), overnight gaps,
    OHLC from the day's move plus wicks, lognormal volume."""
    events: list[Event] = []
    logc = math.log(level)
    day = FIRST_BAR_DAY
    burst_at = -1000
    for i in range(SWEEP_BARS if n is None else n):
        while day.weekday() >= 5:
            day += timedelta(days=1)
        if rng.random() < 0.01:
            burst_at = i
        sigma = daily_vol * (1.0 + 2.0 * math.exp(-(i - burst_at) / 20.0)) if i >= burst_at else daily_vol
        o = logc + rng.gauss(0.0, 0.3 * sigma)
        c = o + rng.gauss(0.0, sigma) * (1.0 if rng.random() > 0.02 else 2.5)
        h = max(o, c) + abs(rng.gauss(0.0, 0.4 * sigma))
        lo = min(o, c) - abs(rng.gauss(0.0, 0.4 * sigma))
        logc = c
        label = "vol_burst" if i >= burst_at and sigma > 2.0 * daily_vol else "clean"
        vol = float(round(math.exp(rng.gauss(math.log(2.0e6), 0.35))))
        events.append(Event({"symbol": symbol, "timestamp": day, "source": "bench", "data_type": "bar",
                             "interval": "1d", "open": math.exp(o), "high": math.exp(h), "low": math.exp(lo),
                             "close": math.exp(c), "volume": vol}, label))
        day += timedelta(days=1)
    return events


def _local_sd(values: list[float]) -> float:
    m = sum(values) / len(values)
    return math.sqrt(sum((x - m) ** 2 for x in values) / (len(values) - 1))


def _bar_scale(events: list[Event], i: int) -> float:
    """BarOutlier's scale at bar i over the previous 60 close-to-close log returns (the window it would hold
    when nothing near was flagged): max(1.4826 MAD, 1.2533 x the mean absolute deviation, scale_floor)."""
    closes = [events[j].point["close"] for j in range(max(0, i - 61), i)]
    r = sorted(math.log(b / a) for a, b in itertools.pairwise(closes))
    med = r[len(r) // 2]
    dev = sorted(abs(x - med) for x in r)
    return max(1.4826 * dev[len(dev) // 2], 1.2533 * sum(dev) / len(dev), 0.002)


def sweep_inject(kind: str, series: list[Event], rng: random.Random, slots: list[float]) -> None:
    """Inject the sizes in `slots` (one each) at random places of one symbol's series, apart from each other."""
    bars = kind.startswith("bar_")
    pool = [i for i, e in enumerate(series) if e.point["data_type"] == ("bar" if bars else "trade")]
    gap = 70 if bars else 60  # bars: a return window apart; ticks: as `inject`
    lo = 80 if bars else 150
    taken: list[int] = []
    for size in slots:
        for _ in range(2000):
            i = rng.choice(pool)
            if i >= lo and i < len(series) - 2 and all(abs(i - j) > gap for j in taken):
                break
        else:
            continue  # no room left: the size gets fewer injections (reported as n)
        taken.append(i)
        e = series[i]
        p = e.point
        e.label, e.event = kind, len(taken)
        e.size = size
        if kind.startswith("tick_spike_sigma"):
            prev = [series[j].point["price"] for j in pool if j < i][-80:]
            p["price"] = _round_cent(max(0.01, p["price"] + rng.choice((-1.0, 1.0)) * size * _local_sd(prev)))
        elif kind == "tick_decimal":
            p["price"] = max(0.0001, round(p["price"] * size, 4))
        elif kind in ("tick_volume", "bar_volume"):
            p["volume"] = float(round(p["volume"] * size))
        elif kind == "bar_spike_sigma":
            f = math.exp(rng.choice((-1.0, 1.0)) * size * _bar_scale(series, i))
            for k in ("open", "high", "low", "close"):
                p[k] *= f
        elif kind == "bar_decimal":
            for k in ("open", "high", "low", "close"):
                p[k] *= size


def sweep_split(series: list[Event], size: float, i: int) -> None:
    """A split of `size` new shares per old one before record i: prices / size, trade and bar volumes x size.
    The label goes on record i, the first after the split (a bar, or the first quote of the day)."""
    for later in series[i:]:
        q = later.point
        for k in ("open", "high", "low", "close", "price", "bid", "ask"):
            if k in q:
                q[k] = q[k] / size if q["data_type"] == "bar" else max(0.0001, round(q[k] / size, 4))
        if "volume" in q:
            q["volume"] = float(round(q["volume"] * size))
    series[i].label, series[i].event, series[i].size = ("bar_split" if series[i].point["data_type"] == "bar"
                                                        else "tick_split"), 1, size


def sweep_kind(kind: str, settings: AnomalySettings, k_index: int) -> dict[str, Any]:
    """One series per symbol holding every size of one kind, SWEEP_PER_SIZE (bars: a third) injections each."""
    spec = SWEEP_KINDS[kind]
    bars = kind.startswith("bar_")
    symbols = BAR_SYMBOLS if bars else SYMBOLS
    slots = [s for s in spec["sizes"] for _ in range(SWEEP_PER_SIZE)]
    random.Random(SEED * 1000 + k_index).shuffle(slots)
    streams: dict[str, list[Event]] = {}
    if kind.endswith("_split"):  # one short series per split, else the level would drift by their product
        for j, size in enumerate(slots):
            _, level, vol = symbols[j % len(symbols)]
            rng = random.Random(SEED * 1000 + 100 * k_index + j)
            series = generate_bars(f"S{j:03d}", level, vol, rng, n=SPLIT_BARS) if bars else generate(
                f"S{j:03d}", level, vol, rng, with_split=False, days=2, steps=SPLIT_TICK_STEPS)
            sweep_split(series, size, len(series) - SPLIT_BARS // 3 if bars else
                        _first_index_of_day(series, FIRST_DAY + timedelta(days=1)))
            streams[f"S{j:03d}"] = series
    for k, (symbol, level, vol) in enumerate(symbols if not kind.endswith("_split") else ()):
        rng = random.Random(SEED * 1000 + 100 * k_index + k)
        series = generate_bars(symbol, level, vol, rng) if bars else generate(symbol, level, vol, rng,
                                                                                with_split=False, days=SWEEP_DAYS)
        if kind.endswith("_trades_only"):
            series = [e for e in series if e.point["data_type"] == "trade"]
        sweep_inject(kind, series, rng, slots[k::len(symbols)])
        streams[symbol] = series
    n_points = run_named(streams, settings)
    fam = spec["family"]
    events = [e for evs in streams.values() for e in evs]
    curve = []
    for size in spec["sizes"]:
        labelled = [e for e in events if e.label == kind and e.size == size]
        caught = sum(1 for e in labelled if any(DETECTOR_FAMILY_ALL.get(d) == fam for d in e.flags))
        caught_any = sum(1 for e in labelled if e.flags)
        curve.append({"size": size, "n": len(labelled), "caught": caught,
                      "recall": caught / len(labelled) if labelled else None,
                      "recall_any_detector": caught_any / len(labelled) if labelled else None})
    unlabelled = [e for e in events if e.label != kind]
    fp = sum(1 for e in unlabelled if any(DETECTOR_FAMILY_ALL.get(d) == fam for d in e.flags))
    fp_any = sum(1 for e in unlabelled if e.flags)
    tp = sum(c["caught"] for c in curve)
    return {"family": fam, "unit": spec["unit"], "threshold": spec["threshold"], "curve": curve,
            "labelled_points": sum(c["n"] for c in curve), "caught": tp,
            "unlabelled_points": len(unlabelled), "unlabelled_flagged": fp,
            "precision": tp / (tp + fp) if tp + fp else None,
            "false_positive_rate": fp / len(unlabelled),
            "false_positive_rate_any_detector": fp_any / len(unlabelled),
            "false_flags_by_detector": dict(Counter(d for e in unlabelled for d in e.flags)),
            "points": n_points}


def sweep() -> dict[str, Any]:
    settings = AnomalySettings()
    started = time.perf_counter()
    result: dict[str, Any] = {"kinds": {}}
    for k_index, kind in enumerate(SWEEP_KINDS):
        t0 = time.perf_counter()
        r = result["kinds"][kind] = sweep_kind(kind, settings, k_index)
        curve = "  ".join(f"{c['size']:g}:{_fmt(c['recall']).strip()}" for c in r["curve"])
        print(f"{kind:<17} recall by size ({r['unit']}): {curve}")
        print(f"{'':<17} precision {_fmt(r['precision']).strip()}, false-positive rate {r['false_positive_rate']:.4%}"
              f" ({r['unlabelled_flagged']} of {r['unlabelled_points']} unlabelled points; any detector"
              f" {r['false_positive_rate_any_detector']:.4%}), {r['points']} points, {time.perf_counter() - t0:.1f} s")
    result["run"] = {"seed": SEED, "tick_days": SWEEP_DAYS, "steps_per_day": STEPS, "bars_per_symbol": SWEEP_BARS,
                     "per_size": SWEEP_PER_SIZE,
                     "split_series": {"bars": SPLIT_BARS, "tick_days": 2, "tick_steps_per_day": SPLIT_TICK_STEPS},
                     "wall_seconds": round(time.perf_counter() - started, 2), "python": platform.python_version(),
                     "data": "simulated: a random walk with injected anomalies (bench/anomaly_quality_real.py is"
                             " the real-data measure)",
                     "rule": "point level: a labelled point is caught when an anomaly of its kind's family names"
                             " it (flagged on arrival, or a later follow-up whose record is that point)"}
    SWEEP_OUT.parent.mkdir(parents=True, exist_ok=True)
    SWEEP_OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wall {result['run']['wall_seconds']} s; wrote {SWEEP_OUT.relative_to(ROOT)}")
    return result


if __name__ == "__main__":
    if "--sweep" in sys.argv[1:]:
        sweep()
    else:
        main()
