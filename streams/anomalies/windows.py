"""Bounded windows and robust statistics the detectors share (medians, MADs, trimmed moments)."""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterable
from typing import ClassVar


def _median_sorted(s: list[float]) -> float:
    n = len(s)
    mid = n // 2
    return s[mid] if n % 2 else (s[mid - 1] + s[mid]) / 2.0


def _median(values: Iterable[float]) -> float:
    return _median_sorted(sorted(values))


# The per-tick statistics below run over windows of 50-80 values for every record (the detectors were a
# third of a worker's CPU in a py-spy profile of the benchmark): the window keeps running sums, and what
# must touch every value uses C-level sum/sorted over list comprehensions, not generator expressions.


def _trimmed_mean_sd(s: list[float], trim: float) -> tuple[float, float]:
    """Mean and sample sd of a sorted sample with `trim` of it cut from EACH end (R's mean(trim=)).
    The reference implementation; `_SumWindow.trimmed_mean_sd` gives the same from running sums."""
    g = int(trim * len(s))
    core = s[g:len(s) - g] if g else s
    n = len(core)
    m = sum(core) / n
    if n < 2:
        return m, 0.0
    return m, math.sqrt(sum((x - m) ** 2 for x in core) / (n - 1))


def _mean_abs_dev_sorted(s: list[float], c: float) -> float:
    """Mean |x - c| over a sorted sample: (sum above c - c * count above) + (c * count below - sum below)."""
    i = bisect.bisect_left(s, c)
    n = len(s)
    return ((sum(s[i:]) - c * (n - i)) + (c * i - sum(s[:i]))) / n


def _median_abs_dev(s: list[float], c: float) -> float:
    """Median of |x - c| over a sorted sample, without sorting the distances: they are two sorted runs (c - x
    leftwards of c, x - c rightwards), and an order statistic of two sorted runs is a binary search."""
    i = bisect.bisect_left(s, c)
    n = len(s)

    def kth(k: int) -> float:  # the k-th smallest distance (0-based)
        # t = how many of the k+1 smallest come from the left run (left[t] = c - s[i-1-t], right[u] = s[i+u] - c)
        lo, hi = max(0, k + 1 - (n - i)), min(k + 1, i)
        while lo < hi:
            t = (lo + hi) // 2
            u = k + 1 - t
            if u > 0 and s[i + u - 1] - c > c - s[i - 1 - t]:
                lo = t + 1
            else:
                hi = t
        u = k + 1 - lo
        left = c - s[i - lo] if lo else -math.inf
        right = s[i + u - 1] - c if u else -math.inf
        return left if left > right else right

    if n % 2:
        return kth(n // 2)
    return (kth(n // 2 - 1) + kth(n // 2)) / 2.0


def _mad_lower_bound(s: list[float], c: float) -> float:
    """A lower bound of `_median_abs_dev(s, median)`, from two order statistics: at least half the values lie
    within the MAD of the median, which the quarter below s[n//4] and the quarter above s[n-1-n//4] cannot."""
    q = len(s) // 4
    return max(0.0, min(c - s[q], s[len(s) - 1 - q] - c))


_LIMIT = 1e150  # |x| above this: x * x may overflow a float, and a window of them certainly would


class _Window:
    """A bounded FIFO window with a sorted twin (bisect), so medians cost O(k), not O(k log k)."""

    __slots__ = ("sorted", "values")

    def __init__(self, maxlen: int, values: Iterable[float] = ()) -> None:
        self.values: deque[float] = deque(maxlen=maxlen)
        self.sorted: list[float] = []
        for v in values:
            self.push(v)

    def push(self, v: float) -> None:
        values = self.values
        if len(values) == values.maxlen:
            srt = self.sorted
            del srt[bisect.bisect_left(srt, values[0])]
        values.append(v)
        bisect.insort(self.sorted, v)

    def pop(self) -> float:
        """Take the newest value back out (a bar's earlier version, which its revision replaces)."""
        v = self.values.pop()
        srt = self.sorted
        del srt[bisect.bisect_left(srt, v)]
        return v

    def scale(self, factor: float) -> None:
        values = [v * factor for v in self.values]
        self.values.clear()
        self.sorted = []
        for v in values:
            self.push(v)

    def median(self) -> float:
        return _median_sorted(self.sorted)

    def __len__(self) -> int:
        return len(self.values)


class _SumWindow(_Window):
    """A _Window that also keeps running sums of (x - anchor) and its square, so a trimmed mean and sd only touch
    the trimmed ends. The anchor (a recent value) keeps the squares small (no cancellation); the sums are
    recomputed exactly every `_RESUM` pushes so rounding cannot drift."""

    __slots__ = ("anchor", "pushes", "s1", "s2")
    _RESUM: ClassVar[int] = 1024

    def __init__(self, maxlen: int, values: Iterable[float] = ()) -> None:
        self.anchor = 0.0
        self.s1 = self.s2 = 0.0
        self.pushes = 0
        super().__init__(maxlen, values)

    def _resum(self) -> None:
        a = self.anchor = self.sorted[len(self.sorted) // 2] if self.sorted else 0.0
        d = [x - a for x in self.values]
        self.s1 = sum(d)
        self.s2 = sum([x * x for x in d])

    def push(self, v: float) -> None:
        """Every number is computed before the state changes, so nothing can leave the window half-updated; a
        value whose square would overflow (issue 15: 1e154 and up) or that is not finite is not taken."""
        if not -_LIMIT < v < _LIMIT:  # NaN fails too
            return
        a = self.anchor
        values = self.values
        d = v - a
        s1, s2 = self.s1 + d, self.s2 + d * d
        full = len(values) == values.maxlen
        if full:
            old = values[0] - a
            s1 -= old
            s2 -= old * old
        if full:
            del self.sorted[bisect.bisect_left(self.sorted, values[0])]
        values.append(v)
        bisect.insort(self.sorted, v)
        self.s1, self.s2 = s1, s2
        self.pushes += 1
        if self.pushes % self._RESUM == 0 or len(values) == 1 or not math.isfinite(s2):
            self._resum()

    def scale(self, factor: float) -> None:
        super().scale(factor)
        self._resum()

    def trimmed_mean_sd(self, trim: float) -> tuple[float, float]:
        """`_trimmed_mean_sd(self.sorted, trim)`, from the running sums minus the trimmed ends."""
        s, n, a = self.sorted, len(self.sorted), self.anchor
        g = int(trim * n)
        k = n - 2 * g
        s1, s2 = self.s1, self.s2
        if g:
            ends = [x - a for x in s[:g]] + [x - a for x in s[n - g:]]
            s1 -= sum(ends)
            s2 -= sum([x * x for x in ends])
        mean_d = s1 / k
        if k < 2:
            return a + mean_d, 0.0
        var = (s2 - k * mean_d * mean_d) / (k - 1)
        return a + mean_d, math.sqrt(var) if var > 0.0 else 0.0


def _consistent_run(pending: deque[float], run: int, tolerance: float) -> float | None:
    """The run's median when `run` consecutive flagged values agree within `tolerance` (a level shift)."""
    if len(pending) < run:
        return None
    med = _median(pending)
    return med if all(abs(x - med) < tolerance for x in pending) else None
