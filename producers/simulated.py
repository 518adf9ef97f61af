"""The offline default feed: a seeded random walk of quotes and trades for a set of symbols, at a
configured rate, with an optional share of deliberately invalid records (so the dead-letter path is
exercised in every demo). Needs no network and no key. Writes raw.simulated.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import aiohttp
import orjson

from producers.base import RawRecord, Record, Source
from streams.models import DataType, MarketDataPoint
from streams.settings import SimulatedSourceSettings

# Each is a (key, value) the validator must refuse, with the rule it should give.
INVALID_KINDS: tuple[str, ...] = ("not_json", "wrong_type", "missing_field", "nan", "negative_price", "crossed")


class SimulatedSource(Source):
    name = "simulated"

    def __init__(self, settings: SimulatedSourceSettings, *, run_id: str | None = None) -> None:
        self.settings = settings
        self.rng = random.Random(settings.seed)
        self.prices = {s: 50.0 + 450.0 * self.rng.random() for s in settings.symbols}
        self.seq = 0
        # Distinguishes two runs of the same seed so their natural keys never collide.
        self.run_id = run_id or f"{time.time_ns():x}"
        self._budget = 0.0
        self._last = time.monotonic()

    def point(self, now: datetime | None = None) -> MarketDataPoint:
        # A mid-price random walk (1 bp per update) with a 5 bp spread on a one-cent grid; trades print at
        # the bid, the ask or inside, so the clean feed looks like a liquid stock to the detectors.
        sym = self.rng.choice(self.settings.symbols)
        mid = self.prices[sym] * math.exp(self.rng.gauss(0.0, 0.0001))
        self.prices[sym] = mid
        self.seq += 1
        half = max(0.01, round(mid * 0.00025, 2))
        bid, ask = round(mid - half, 2), round(mid + half, 2)
        is_quote = self.seq % 2 == 1
        price = round(mid, 4) if is_quote else self.rng.choice((bid, ask, round(mid, 2)))
        return MarketDataPoint(
            symbol=sym,
            timestamp=now or datetime.now(UTC),
            source=self.name,
            data_type=DataType.QUOTE if is_quote else DataType.TRADE,
            price=price,
            volume=float(self.rng.lognormvariate(5.5, 0.8) // 1 + 1),
            bid=bid,
            ask=ask,
            item_id=f"{self.run_id}-{self.seq}",
        )

    def invalid(self, kind: str) -> RawRecord:
        good = self.point()
        doc = orjson.loads(good.to_json())
        if kind == "not_json":
            return RawRecord(good.symbol.encode(), b"{not json" + str(self.seq).encode())
        if kind == "wrong_type":
            doc["price"] = "twelve"
        elif kind == "missing_field":
            del doc["symbol"]
        elif kind == "nan":
            doc["price"] = "__nan__"
            return RawRecord(good.symbol.encode(), orjson.dumps(doc).replace(b'"__nan__"', b"NaN"))
        elif kind == "negative_price":
            doc["price"] = -abs(doc["price"])
        elif kind == "crossed":
            doc["bid"], doc["ask"] = doc["ask"] + 1.0, doc["bid"]
        return RawRecord(good.symbol.encode(), orjson.dumps(doc))

    def batch(self, n: int) -> list[Record]:
        out: list[Record] = []
        ratio = self.settings.invalid_ratio
        for _ in range(n):
            if ratio and self.rng.random() < ratio:
                out.append(self.invalid(self.rng.choice(INVALID_KINDS)))
            else:
                out.append(self.point())
        return out

    def due(self, now: float | None = None) -> int:
        """How many points are due since the last call at the configured rate (token bucket, <= 1 s)."""
        now = time.monotonic() if now is None else now
        rate = self.settings.rate_per_second
        self._budget = min(self._budget + (now - self._last) * rate, max(rate, 1.0))
        self._last = now
        n = int(self._budget)
        self._budget -= n
        return n

    async def fetch(self, session: aiohttp.ClientSession | None = None) -> AsyncIterator[list[Record]]:
        while True:
            await asyncio.sleep(0.01)
            n = self.due()
            if n:
                yield self.batch(n)
