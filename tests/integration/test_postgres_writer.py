"""The PostgreSQL writer on the real server: idempotent migrations, COPY + upsert, duplicates counted,
errors sorted into retriable and data errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sinks.postgres import PostgresTickWriter, row_from_record
from sinks.schema import MIGRATIONS
from streams.errors import SinkError, SinkUnavailable
from streams.models import MarketDataPoint
from streams.settings import PostgresSettings


def settings_for(iso) -> PostgresSettings:
    return PostgresSettings(port=iso.pg["port"], host=iso.pg["host"], db_schema=iso.schema)


def rows(n: int, source: str = "simulated") -> list[tuple]:
    t0 = datetime(2024, 5, 1, 14, 30, tzinfo=UTC)
    out = []
    for i in range(n):
        p = MarketDataPoint(symbol="AAPL", timestamp=t0 + timedelta(milliseconds=i), source=source,
                            price=100 + i / 100, volume=10, item_id=str(i), metadata={"i": i})
        out.append(row_from_record(__import__("orjson").loads(p.to_json())))
    return out


async def test_migrate_twice_write_and_replay(iso, pg) -> None:
    w = PostgresTickWriter(settings_for(iso))
    await w.migrate()
    await w.migrate()  # idempotent
    await w.start()
    try:
        batch = rows(1500) + rows(10, source="other")
        r1 = await w.write(batch)
        assert (r1.inserted, r1.updated, r1.duplicates) == (1510, 0, 0)
        assert r1.inserted_by_source == {"simulated": 1500, "other": 10}
        r2 = await w.write(batch[:700])  # a replay after a crash
        assert (r2.inserted, r2.updated, r2.duplicates) == (0, 0, 700)
        assert r2.duplicates_by_source == {"simulated": 700}
        assert await pg.fetchval(f"SELECT count(*) FROM {iso.schema}.market_data") == 1510
        meta = await pg.fetchval(
            f"SELECT metadata->>'i' FROM {iso.schema}.market_data WHERE item_id='42' AND source='simulated'")
        assert meta == "42"
        versions = await pg.fetch(f"SELECT version FROM {iso.schema}.schema_migrations")
        assert sorted(r["version"] for r in versions) == [v for v, _ in MIGRATIONS]
    finally:
        await w.stop()


async def test_data_error_is_not_retriable_and_outage_is(iso, pg) -> None:
    w = PostgresTickWriter(settings_for(iso))
    await w.start()
    try:
        bad = list(rows(1)[0])
        bad[5] = "not a number"  # price
        with pytest.raises(SinkError) as info:
            await w.write([tuple(bad)])
        assert not info.value.retriable
    finally:
        await w.stop()
    down = PostgresTickWriter(PostgresSettings(port=1, db_schema=iso.schema))
    with pytest.raises(SinkUnavailable) as info2:
        await down.start()
    assert info2.value.retriable
