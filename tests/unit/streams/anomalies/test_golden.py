"""Detection quality guarded (issue 18): the suite's decisions over a small seeded input, compared with a
committed golden file. Any change of a decision (a flag gained or lost, a score moved) fails this test.

To accept a deliberate change, regenerate the file and review its diff:

    TICKFLOW_REGEN_GOLDEN=1 .cache/venv/bin/python -m pytest tests/unit/streams/anomalies/test_golden.py
"""

import json
import math
import os
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

from streams.anomalies import DetectorSuite
from streams.models import MarketDataPoint

GOLDEN = Path(__file__).parent / "golden" / "decisions.json"
D0 = datetime(2015, 1, 5, tzinfo=UTC)


def daily_bars(seed: int = 20240501) -> list[MarketDataPoint]:
    """300 simulated daily bars (seeded): spikes that come back, a decimal shift, a 2:1 split, a crash that
    trades its way down and half back the next day (a real move), a volume spike."""
    rng = random.Random(seed)
    out, close, day = [], 50.0, D0
    for i in range(300):
        while day.weekday() >= 5:
            day += timedelta(days=1)
        prev = close
        close = prev * math.exp(rng.gauss(0, 0.012))
        o = prev * math.exp(rng.gauss(0, 0.003))
        k, vol = 1.0, 1e6 * math.exp(rng.gauss(0, 0.3))
        if i in (80, 200):  # a bad bar: the whole bar printed 12 sigma away, back the next day
            k = math.exp(0.15 if i == 80 else -0.15)
        if i == 120:  # a decimal shift
            k = 10.0
        if i == 150:  # crash: opens at the previous close, closes 8% lower; the next day takes half back
            close = prev * 0.92
            o = prev
        if i == 151:
            o, close = prev, prev * 1.045
        if i == 250:
            vol *= 60
        if i >= 230:  # a 2:1 split from bar 230 on
            k, vol = k / 2.0, vol * 2.0
        o, c = o * k, close * k
        hi, lo = max(o, c) * (1 + abs(rng.gauss(0, 0.004))), min(o, c) * (1 - abs(rng.gauss(0, 0.004)))
        out.append(MarketDataPoint(symbol="GLD1", timestamp=day + timedelta(hours=21), source="replay",
                                   data_type="bar", interval="1d", open=o, high=hi, low=lo, close=c, volume=vol))
        day += timedelta(days=1)
    return out


def ticks(seed: int = 7) -> list[MarketDataPoint]:
    """300 simulated quotes and trades (seeded) with bad prints and a wide spread."""
    rng = random.Random(seed)
    out, mid, t0 = [], 100.0, datetime(2024, 3, 4, 14, 30, tzinfo=UTC)
    for i in range(150):
        mid *= math.exp(rng.gauss(0, 0.0004))
        ts = t0 + timedelta(seconds=2 * i)
        half = 0.01 if i != 90 else 3.0
        out.append(MarketDataPoint(symbol="GLD2", timestamp=ts, source="sim", data_type="quote",
                                   bid=round(mid - half, 2), ask=round(mid + half, 2)))
        price = round(mid, 2) * (1.05 if i in (60, 120) else 1.0)
        out.append(MarketDataPoint(symbol="GLD2", timestamp=ts + timedelta(seconds=1), source="sim",
                                   data_type="trade", price=price, volume=100.0 * (40 if i == 100 else 1)))
    return out


def decisions() -> list[list[object]]:
    suite = DetectorSuite()
    got: list[list[object]] = []
    for p in daily_bars() + ticks():
        for a in suite.update(p):
            got.append([a.detector, a.symbol, a.record["timestamp"], round(a.score, 3)])
    return got


def test_decisions_match_the_golden_file() -> None:
    got = decisions()
    if os.environ.get("TICKFLOW_REGEN_GOLDEN"):
        GOLDEN.write_text(json.dumps(got, indent=0) + "\n")
    assert got == json.loads(GOLDEN.read_text())


def test_the_golden_input_exercises_the_detectors_it_guards() -> None:
    """The file is worth guarding only if it holds hits and the real move is not among them."""
    golden = json.loads(GOLDEN.read_text())
    names = {d[0] for d in golden}
    assert {"bar_outlier", "decimal_shift", "split_suspect", "volume_spike"} <= names
    crash = daily_bars()[150].timestamp.isoformat().replace("+00:00", "Z")[:10]
    assert not [d for d in golden if d[1] == "GLD1" and d[2].startswith(crash)]
