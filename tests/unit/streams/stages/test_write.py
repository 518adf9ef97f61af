"""The batching writer's contract, without a database: rows built from canonical records, retries on
outages, and bisection that isolates the rows the store refuses."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

import streams.stages.write as write_stage
from sinks.base import BatchWriter, WriteResult
from sinks.postgres import classify, row_from_record
from sinks.schema import MARKET_DATA_COLUMNS
from streams.errors import SinkError, SinkUnavailable
from streams.models import MarketDataPoint


class FakeWriter(BatchWriter):
    """Refuses rows whose price is 13; is 'down' for the first `outages` calls."""

    def __init__(self, outages: int = 0) -> None:
        self.outages = outages
        self.calls = 0
        self.stored: list[tuple] = []

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def write(self, rows):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.outages:
            self.outages -= 1
            raise SinkUnavailable("connection refused")
        if any(r[5] == 13 for r in rows):
            raise SinkError("numeric field overflow")
        fresh = [r for r in rows if r not in self.stored]
        self.stored.extend(fresh)
        by: dict[str, int] = {}
        for r in fresh:
            by[r[0]] = by.get(r[0], 0) + 1
        return WriteResult(len(fresh), len(rows) - len(fresh), by)


def make_rows(prices: list[float]) -> list[tuple]:
    out = []
    for i, price in enumerate(prices):
        p = MarketDataPoint(symbol="X", timestamp=datetime(2024, 1, 2, tzinfo=UTC), source="s", price=price,
                            item_id=str(i))
        out.append(row_from_record(orjson.loads(p.to_json())))
    return out


def test_row_matches_the_column_list() -> None:
    p = MarketDataPoint(symbol="X", timestamp=datetime(2024, 1, 2, tzinfo=UTC), source="s", data_type="bar",
                        open=1, high=2, low=0.5, close=1.5, interval="1d", metadata={"a": 1},
                        ingested_at=datetime(2024, 1, 2, 0, 0, 1, tzinfo=UTC))
    row = row_from_record(orjson.loads(p.to_json()))
    assert len(row) == len(MARKET_DATA_COLUMNS)
    named = dict(zip(MARKET_DATA_COLUMNS, row, strict=True))
    assert named["open"] == 1 and named["interval"] == "1d" and named["metadata"] == '{"a":1}'
    assert named["ts"] == datetime(2024, 1, 2, tzinfo=UTC)
    assert named["ingested_at"] == datetime(2024, 1, 2, 0, 0, 1, tzinfo=UTC)


async def test_outage_is_retried_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeWriter(outages=3)

    async def ensure() -> FakeWriter:
        return fake

    monkeypatch.setattr(write_stage, "ensure_writer", ensure)
    monkeypatch.setattr(write_stage.settings.sink, "retry_initial_seconds", 0.001)
    result = await write_stage.write_with_retry(make_rows([1.0, 2.0]))
    assert fake.calls == 4 and result.inserted == 2


async def test_bisection_isolates_refused_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeWriter()

    async def ensure() -> FakeWriter:
        return fake

    monkeypatch.setattr(write_stage, "ensure_writer", ensure)
    prices = [float(p) for p in range(1, 40)]  # 13 is refused
    rows = make_rows(prices)
    events = list(range(len(rows)))
    result, bad = await write_stage.write_isolating(rows, events)
    assert [ev for ev, _ in bad] == [12]
    assert isinstance(bad[0][1], SinkError)
    assert result.inserted == len(rows) - 1 and result.inserted_by_source == {"s": len(rows) - 1}
    again, bad2 = await write_stage.write_isolating(rows, events)
    assert again.inserted == 0 and again.duplicates == len(rows) - 1 and len(bad2) == 1


def test_classify_sorts_errors_by_family() -> None:
    class FakePgError(Exception):
        def __init__(self, sqlstate: str) -> None:
            super().__init__("x")
            self.sqlstate = sqlstate

    assert classify(ConnectionRefusedError(), "w").retriable
    assert classify(FakePgError("57P01"), "w").retriable  # admin shutdown
    assert classify(FakePgError("40001"), "w").retriable  # serialization failure
    assert not classify(FakePgError("22003"), "w").retriable  # numeric out of range
    assert not classify(FakePgError("23502"), "w").retriable  # not-null violation
