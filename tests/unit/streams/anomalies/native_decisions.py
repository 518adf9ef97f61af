"""Every decision of the detector suite on mixed seeded feeds, printed exactly: each anomaly's full to_dict()
(floats as repr), the suites' states after a JSON round trip mid-run and at the end, and check_stale's
verdicts. test_native.py runs it once as Python and once compiled and compares the two outputs byte for byte.
Not a test module itself (run as `python -m tests.unit.streams.anomalies.native_decisions`)."""

from __future__ import annotations

import json
import math
import random
import sys
from datetime import UTC, datetime, timedelta

import streams.anomalies as anomalies
from streams.anomalies import DetectorSuite
from streams.config import AnomalySettings
from streams.models import MarketDataPoint
from tests.unit.streams.anomalies.test_golden import daily_bars, ticks


def points(seed: int) -> list[MarketDataPoint]:
    """The golden bars and ticks, a quote/trade feed with bad prints and level changes, 1m bars with gaps,
    stale runs, inconsistent bars, volume spikes and x10 / x0.5 prints."""
    rng = random.Random(seed)
    out = [p.model_copy(update={"symbol": f"G{seed}B"}) for p in daily_bars(seed)]
    out += [p.model_copy(update={"symbol": f"G{seed}T"}) for p in ticks(seed)]
    t0 = datetime(2024, 3, 4, 14, 30, tzinfo=UTC)
    mids = {s: 20 + 300 * rng.random() for s in "ABC"}
    for i in range(3000):
        s = rng.choice("ABC")
        mid = mids[s] = mids[s] * math.exp(rng.gauss(0, 0.0003))
        ts = t0 + timedelta(microseconds=250_000 * i + rng.randrange(1000))
        half = max(0.01, round(mid * 0.0003, 2)) * (40 if rng.random() < 0.003 else 1)
        ing = ts + timedelta(milliseconds=rng.choice((1, 5, 50, 10_000_000)))
        if rng.random() < 0.002:
            mids[s] *= rng.choice((0.5, 2.0, 1.0 / 3))
        if i % 2:
            out.append(MarketDataPoint(symbol=s, timestamp=ts, source="sim", data_type="quote",
                                       bid=round(mid - half, 2), ask=round(mid + half, 2), bid_size=100.0,
                                       ask_size=200.0, ingested_at=ing))
        else:
            k = rng.choice((1.05, 0.95, 10.0, 0.1, 1.3)) if rng.random() < 0.01 else 1.0
            out.append(MarketDataPoint(
                symbol=s, timestamp=ts, source="sim", data_type=rng.choice(("trade", "tick")),
                price=round(mid, 2) * k if rng.random() > 0.05 else round(mids[s], 2),
                volume=float(rng.choice((100, 100, 200, 50_000))), ingested_at=ing,
                bid=round(mid - half, 2) if rng.random() < 0.3 else None,
                ask=round(mid + half, 2) if rng.random() < 0.3 else None))
    close, ts = 100.0, t0
    for _ in range(800):
        ts += timedelta(minutes=rng.choice((1, 1, 1, 1, 2, 7)))
        prev = close
        close = prev if rng.random() < 0.01 else prev * math.exp(rng.gauss(0, 0.002))
        k = rng.choice((1.04, 0.96, 10.0, 0.5)) if rng.random() < 0.01 else 1.0
        o, c = prev * k, close * k
        hi, lo = max(o, c) * 1.001, min(o, c) * 0.999
        if rng.random() < 0.005:
            hi, lo = lo, hi
        out.append(MarketDataPoint(symbol="BARS", timestamp=ts, source="replay", data_type="bar", interval="1m",
                                   open=o, high=hi, low=lo, close=c,
                                   volume=1e4 * math.exp(rng.gauss(0, 0.5)) * (30 if rng.random() < 0.01 else 1)))
    return out


def main() -> None:
    write = sys.stdout.write
    write(f"# native: {anomalies.NATIVE is not None}\n")
    for seed in range(3):
        settings = AnomalySettings() if seed % 2 == 0 else AnomalySettings(max_price=1e6)
        suites: dict[str, DetectorSuite] = {}
        pts = points(seed)
        for n, p in enumerate(pts):
            suite = suites.setdefault(p.symbol, DetectorSuite(settings))
            for a in suite.update(p):
                write(json.dumps([seed, n, a.to_dict()], sort_keys=True, default=repr) + "\n")
            if n == len(pts) // 2:  # a restart: every suite through its JSON state
                for sym in list(suites):
                    suites[sym] = DetectorSuite.from_state(json.loads(json.dumps(suites[sym].to_state())), settings)
            if n % 997 == 0:
                for sym, st in sorted(suites.items()):
                    for a in st.check_stale(p.timestamp + timedelta(minutes=5), expected_interval=1.0):
                        write(json.dumps([seed, n, "stale", sym, a.to_dict()], sort_keys=True, default=repr) + "\n")
        for sym, st in sorted(suites.items()):
            write(json.dumps(["state", seed, sym, st.to_state()], sort_keys=True, default=repr) + "\n")


if __name__ == "__main__":
    main()
