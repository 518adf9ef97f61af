from datetime import UTC, datetime

import pytest

from producers.base import RawRecord, encode
from producers.simulated import INVALID_KINDS, SimulatedSource
from streams.errors import RejectedRecord
from streams.rules import Validator
from streams.settings import SimulatedSourceSettings, ValidationSettings


def test_points_are_valid_and_deterministic_per_seed() -> None:
    a = SimulatedSource(SimulatedSourceSettings(seed=3), run_id="r")
    b = SimulatedSource(SimulatedSourceSettings(seed=3), run_id="r")
    v = Validator(ValidationSettings())
    now = datetime(2024, 1, 2, tzinfo=UTC)
    for _ in range(500):
        pa, pb = a.point(now), b.point(now)
        assert pa == pb
        v.check(encode(pa).value, source="simulated", now=now)
    assert len({a.point(now).item_id for _ in range(100)}) == 100


@pytest.mark.parametrize("kind", INVALID_KINDS)
def test_each_invalid_kind_is_rejected(kind: str) -> None:
    src = SimulatedSource(SimulatedSourceSettings())
    rec = src.invalid(kind)
    assert isinstance(rec, RawRecord)
    with pytest.raises(RejectedRecord):
        Validator(ValidationSettings()).check(rec.value, source="simulated")


def test_rate_budget() -> None:
    src = SimulatedSource(SimulatedSourceSettings(rate_per_second=1000))
    src._last = 0.0
    assert src.due(0.5) == 500
    assert src.due(0.75) == 250
    assert src.due(100.0) == 1000  # bursts are capped at one second's worth
