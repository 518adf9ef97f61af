"""Database errors classified right, on the real server (issue 15 item 2): a permission problem or a
read-only server is SinkUnavailable (retry, never dead-letter) and the same batch lands once it is fixed;
a NUL byte in text or metadata does not make the database refuse the batch."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson
import pytest

from sinks.postgres import PostgresTickWriter, row_from_record
from streams.errors import SinkError
from streams.models import MarketDataPoint
from streams.settings import PostgresSettings
from tests.integration.conftest import Isolation


def batch(n: int, tag: str = "") -> list[tuple]:
    t0 = datetime(2024, 5, 1, 14, 30, tzinfo=UTC)
    return [row_from_record(orjson.loads(MarketDataPoint(
        symbol="AAPL", timestamp=t0 + timedelta(milliseconds=i), source="simulated", data_type="trade",
        price=100 + i, volume=1, item_id=f"{tag}{i}").to_json())) for i in range(n)]


@pytest.fixture
async def writer_role(iso: Isolation) -> AsyncIterator[tuple[str, asyncpg.Connection]]:
    """A login role with the writer's grants on a schema the test's superuser migrated."""
    role = f"it_{iso.tag}_w"
    admin = await asyncpg.connect(**iso.pg)
    await PostgresTickWriter(PostgresSettings(host=iso.pg["host"], port=iso.pg["port"],
                                              db_schema=iso.schema)).migrate()
    await admin.execute(f'CREATE ROLE "{role}" LOGIN')
    await admin.execute(f'GRANT USAGE ON SCHEMA "{iso.schema}" TO "{role}"')
    await admin.execute(f'GRANT SELECT, INSERT, UPDATE ON "{iso.schema}".market_data TO "{role}"')
    await admin.execute(f'GRANT SELECT ON "{iso.schema}".schema_migrations TO "{role}"')
    yield role, admin
    await admin.execute(f'DROP SCHEMA IF EXISTS "{iso.schema}" CASCADE')
    await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role)
    await admin.execute(f'DROP OWNED BY "{role}" CASCADE')
    await admin.execute(f'DROP ROLE "{role}"')
    await admin.close()


def as_role(iso: Isolation, role: str) -> PostgresTickWriter:
    return PostgresTickWriter(PostgresSettings(host=iso.pg["host"], port=iso.pg["port"], user=role,
                                               db_schema=iso.schema, pool_min=1, pool_max=2))


async def test_revoked_insert_is_unavailable_then_the_same_batch_lands(iso: Isolation, writer_role) -> None:
    role, admin = writer_role
    w = as_role(iso, role)
    await w.start()
    rows = batch(300)
    try:
        await admin.execute(f'REVOKE INSERT ON "{iso.schema}".market_data FROM "{role}"')
        with pytest.raises(SinkError) as info:
            await w.write(rows)
        assert info.value.retriable, info.value  # 42501: the database's problem, not the rows'
        assert "42501" in str(info.value)
        assert await admin.fetchval(f'SELECT count(*) FROM "{iso.schema}".market_data') == 0
        await admin.execute(f'GRANT INSERT ON "{iso.schema}".market_data TO "{role}"')
        result = await w.write(rows)
        assert (result.inserted, result.duplicates) == (300, 0)
        assert await admin.fetchval(f'SELECT count(*) FROM "{iso.schema}".market_data') == 300
    finally:
        await w.stop()


async def test_read_only_after_failover_is_unavailable_then_lands(iso: Isolation, writer_role) -> None:
    """A failover onto a read-only server: the connections drop and the new ones are read-only (25006)."""
    role, admin = writer_role
    w = as_role(iso, role)
    await w.start()
    rows = batch(50)
    try:
        await admin.execute(f'ALTER ROLE "{role}" SET default_transaction_read_only = on')
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role)
        errors: list[SinkError] = []
        for _ in range(4):  # the first may see the dropped connection; the next ones meet the read-only server
            with pytest.raises(SinkError) as info:
                await w.write(rows)
            errors.append(info.value)
        assert all(e.retriable for e in errors), errors
        assert any("25006" in str(e) for e in errors), errors
        assert await admin.fetchval(f'SELECT count(*) FROM "{iso.schema}".market_data') == 0
        await admin.execute(f'ALTER ROLE "{role}" RESET default_transaction_read_only')
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role)
        landed = None
        for _ in range(4):  # again, a dropped pooled connection may fail once (retriable) before it lands
            try:
                landed = await w.write(rows)
                break
            except SinkError as exc:
                assert exc.retriable, exc
        assert landed is not None and landed.inserted == 50
        assert await admin.fetchval(f'SELECT count(*) FROM "{iso.schema}".market_data') == 50
    finally:
        await w.stop()


async def test_nul_bytes_do_not_refuse_the_batch(iso: Isolation, pg: asyncpg.Connection) -> None:
    w = PostgresTickWriter(PostgresSettings(host=iso.pg["host"], port=iso.pg["port"], db_schema=iso.schema))
    await w.start()
    try:
        rows = batch(99)
        rows.append(row_from_record(orjson.loads(MarketDataPoint(
            symbol="AAPL", timestamp=datetime(2024, 5, 2, tzinfo=UTC), source="simulated", data_type="news",
            headline="nul\x00here", text="a\x00b", item_id="n\x00", flags=["x\x00"],
            metadata={"k\x00": "v\x00", "list": ["\x00"]}).to_json())))
        result = await w.write(rows)  # one transaction, no bisection: nothing refused
        assert result.inserted == 100
        got = await pg.fetchrow(f"SELECT headline, text, item_id, flags, metadata::text AS m "
                                f"FROM {iso.schema}.market_data WHERE data_type = 'news'")
        assert got["headline"] == "nul\ufffdhere" and got["text"] == "a\ufffdb" and got["item_id"] == "n\ufffd"
        assert got["flags"] == ["x\ufffd"]
        assert orjson.loads(got["m"]) == {"k\ufffd": "v\ufffd", "list": ["\ufffd"]}
    finally:
        await w.stop()
