"""A fixed-bucket latency histogram that merges by adding counts, so deltas from many batches and
many workers combine exactly in one table value (what a Prometheus histogram does)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence

# Upper bounds in milliseconds; the last bucket is open-ended, and a percentile that falls in it is reported as
# its lower bound. Up to an hour: a backlog after an outage takes minutes to drain, and a p99 pinned at the
# last finite bound would read as a measured value.
BOUNDS_MS: tuple[float, ...] = (
    0.5, 1, 2, 3, 4, 5, 7.5, 10, 15, 20, 25, 30, 40, 50, 75, 100, 150, 200, 300, 500,
    750, 1000, 2000, 5000, 10_000, 30_000, 60_000, 120_000, 300_000, 600_000, 1_800_000, 3_600_000, float("inf"),
)


def empty() -> list[int]:
    return [0] * len(BOUNDS_MS)


def observe_many(counts: list[int], values_ms: Iterable[float]) -> None:
    for v in values_ms:
        counts[bisect_left(BOUNDS_MS, v)] += 1


def merge(a: Sequence[int], b: Sequence[int]) -> list[int]:
    if len(a) != len(b):  # a histogram from another version: keep the newer shape
        return list(b)
    return [x + y for x, y in zip(a, b, strict=True)]


def percentile(counts: Sequence[int], q: float, least: float | None = None, most: float | None = None
               ) -> float | None:
    """The q-quantile (0..1), interpolated linearly inside its bucket; None when empty. `least`/`most`: the
    smallest and largest values observed, when known: the quantile is kept between them (100 rows of 1,057 ms
    interpolate to 1,500 ms in their 1-2 s bucket, a p50 above every row)."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    value = BOUNDS_MS[-2]
    for i, c in enumerate(counts):
        if c and seen + c >= rank:
            lo = BOUNDS_MS[i - 1] if i else 0.0
            hi = BOUNDS_MS[i]
            value = lo if hi == float("inf") else lo + (hi - lo) * max(0.0, rank - seen) / c
            break
        seen += c
    if most is not None and value > most:
        value = most
    if least is not None and value < least:
        value = least
    return value


def extend_range(least: float | None, most: float | None, values: Sequence[float]
                 ) -> tuple[float | None, float | None]:
    """(smallest, largest) of a range (None, None when empty) and some more values."""
    if not values:
        return least, most
    lo, hi = min(values), max(values)
    return (lo if least is None else min(least, lo)), (hi if most is None else max(most, hi))
