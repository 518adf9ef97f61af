"""What one run of retention (streams/stages/retention.py apply_retention) asks of the writer, with a fake writer
in the style of test_write.py's FakeWriter: the calls are recorded, no database is needed. The batching itself
(a DELETE of at most retention_batch_rows per statement, until one comes back short) is sinks/postgres.py
delete_older_than, pinned against the real server in tests/integration/test_retention.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from streams.settings import SinkSettings
from streams.stages.db import SharedWriter
from streams.stages.retention import apply_retention

NOW = datetime(2024, 5, 6, 14, 0, tzinfo=UTC)


class FakePg:
    """The writer's retention calls, recorded; each answers what it was given to answer."""

    def __init__(self, dropped: list[tuple[str, int]], deleted: int) -> None:
        self.dropped, self.deleted = dropped, deleted
        self.calls: list[tuple[Any, ...]] = []

    async def start(self) -> None:
        self.calls.append(("start",))

    async def drop_partitions_before(self, cutoff: datetime) -> list[tuple[str, int]]:
        self.calls.append(("drop_partitions_before", cutoff))
        return self.dropped

    async def delete_older_than(self, cutoff: datetime, batch_rows: int) -> int:
        self.calls.append(("delete_older_than", cutoff, batch_rows))
        return self.deleted


async def run(fake: FakePg, now: datetime = NOW, **sink: Any) -> int:
    """One run of retention through the worker's SharedWriter around the fake, at `now`."""
    return await apply_retention(SharedWriter(fake), SinkSettings(**sink), now=now)  # type: ignore[arg-type]


@pytest.mark.parametrize(("days", "cutoff"), [(30, NOW - timedelta(days=30)), (0.5, NOW - timedelta(hours=12))])
async def test_a_run_drops_then_deletes_once_in_batches_of_the_configured_size(days: float, cutoff: datetime) -> None:
    """A run drops whole partitions, then makes ONE batched delete pass, at the cutoff, with the configured batch."""
    fake = FakePg(dropped=[], deleted=0)
    await run(fake, data_retention_days=days, retention_batch_rows=250)
    assert fake.calls == [("start",), ("drop_partitions_before", cutoff), ("delete_older_than", cutoff, 250)]


async def test_a_run_counts_the_rows_deleted_and_the_dropped_partitions_estimates() -> None:
    """A run's answer is the rows deleted plus each dropped partition's row estimate, not the deletes alone."""
    fake = FakePg(dropped=[("market_data_p2024_01", 500), ("market_data_p2024_02", 700)], deleted=120)
    assert await run(fake, data_retention_days=30) == 1320


@pytest.mark.parametrize("now", [NOW, NOW + timedelta(days=3650)])
async def test_zero_days_keeps_everything_and_touches_nothing(now: datetime) -> None:
    """data_retention_days=0 (the default) keeps everything: a cutoff of `now` would delete every row stored."""
    fake = FakePg(dropped=[("market_data_p2024_01", 500)], deleted=10_000)
    assert await run(fake, now, data_retention_days=0) == 0
    assert fake.calls == []
