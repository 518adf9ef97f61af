"""The paced feed's clock (streams/tools/measure.py `SendClock`): the stamp it writes into a point is what
datetime would write for the same instant, and the record timestamp is that instant to the millisecond."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from producers.simulated import SimulatedSource
from streams.models import MarketDataPoint
from streams.settings import SimulatedSourceSettings
from streams.tools.measure import _STAMP_BYTES, _STAMP_MARK, SendClock


def _expected(ns: int) -> tuple[bytes, int]:
    when = datetime.fromtimestamp(ns // 1000 // 1_000_000, UTC).replace(microsecond=ns // 1000 % 1_000_000)
    return b'"' + when.isoformat(timespec="microseconds")[:-6].encode() + b'Z"', ns // 1_000_000


# From 2001 to 2100, in nanoseconds.
instants = st.integers(min_value=978_307_200 * 10**9, max_value=4_102_444_800 * 10**9)


@given(st.lists(instants, min_size=1, max_size=20))
def test_the_stamp_is_datetimes_for_every_instant_also_when_the_second_changes(readings: list[int]) -> None:
    it = iter(readings)
    clock = SendClock(clock=lambda: next(it))
    for ns in readings:
        assert clock() == _expected(ns)


def test_a_stamped_point_reads_back_at_the_stamped_instant() -> None:
    ns = 1_765_000_000_123_456_789
    stamp, ms = SendClock(clock=lambda: ns)()
    template = SimulatedSource(SimulatedSourceSettings(invalid_ratio=0.0), run_id="x").point(_STAMP_MARK).to_json()
    point = MarketDataPoint.model_validate_json(template.replace(_STAMP_BYTES, stamp))
    assert point.timestamp == datetime(2025, 12, 6, 5, 46, 40, 123456, tzinfo=UTC)
    assert int(point.timestamp.timestamp() * 1000) == ms
