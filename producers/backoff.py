"""Waits shared by the providers' tenacity loops. A module of its own so that two providers can use the same
reconnect wait without importing each other (pyproject.toml's "no provider imports another provider")."""

from __future__ import annotations

import random

from tenacity import RetryCallState, wait_exponential


class JitteredExponential(wait_exponential):
    """tenacity's capped exponential wait (base * 2**(attempt - 1), at most `cap`) times a jitter in [0.5, 1):
    never a reconnect storm from many clients at once, never less than half the intended wait."""

    def __init__(self, base: float, cap: float, rng: random.Random | None = None) -> None:
        super().__init__(multiplier=base, max=cap)
        self.rng = rng or random.Random()

    def __call__(self, retry_state: RetryCallState) -> float:
        return float(super().__call__(retry_state)) * (0.5 + self.rng.random() / 2)
