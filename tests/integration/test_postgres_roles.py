"""The README's least-privilege roles, run as written against the real server: the owner migrates, a worker
running as the writer starts (no DDL) and writes ticks and metrics but cannot change the schema, the
reader only reads."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from sinks.postgres import PostgresTickWriter, row_from_record
from streams.models import MarketDataPoint
from streams.settings import PostgresSettings
from tests.integration.conftest import ROOT, Isolation


def readme_roles_sql() -> tuple[list[str], list[str]]:
    """The README's SQL block under "Least privilege", split into the superuser part and the owner part."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"\*\*Least privilege\.\*\*.*?```sql\n(.*?)```", text, re.S)
    assert block, "README.md lost its least-privilege SQL block"
    parts = re.split(r"^-- Then, as tickflow_owner.*$", block.group(1), flags=re.M)
    assert len(parts) == 2

    def statements(sql: str) -> list[str]:
        sql = "\n".join(line.split("--", 1)[0] for line in sql.splitlines())
        return [s.strip() for s in sql.split(";") if s.strip()]

    return statements(parts[0]), statements(parts[1])


@pytest.fixture
async def roles(iso: Isolation) -> AsyncIterator[dict[str, str]]:
    names = {"owner": f"it_{iso.tag}_owner", "writer": f"it_{iso.tag}_writer", "reader": f"it_{iso.tag}_reader"}
    admin = await asyncpg.connect(**iso.pg)
    yield names
    await admin.execute(f'DROP SCHEMA IF EXISTS "{iso.schema}" CASCADE')
    for role in names.values():
        if await admin.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role):
            await admin.execute(f'DROP OWNED BY "{role}" CASCADE')
            await admin.execute(f'DROP ROLE "{role}"')
    await admin.close()


def _named(sql: str, iso: Isolation, roles: dict[str, str]) -> str:
    for kind, name in roles.items():
        sql = sql.replace(f"tickflow_{kind}", name)
    return re.sub(r"\bmarket\b", iso.schema, sql)


async def test_readme_roles_owner_migrates_writer_writes_reader_reads(iso: Isolation,
                                                                      roles: dict[str, str]) -> None:
    as_superuser, as_owner = readme_roles_sql()
    pg = {k: v for k, v in iso.pg.items() if k != "user"}
    admin = await asyncpg.connect(**iso.pg)
    try:
        for stmt in as_superuser:
            await admin.execute(_named(stmt, iso, roles))
    finally:
        await admin.close()

    def settings(role: str) -> PostgresSettings:
        return PostgresSettings(host=pg["host"], port=pg["port"], user=roles[role], db_schema=iso.schema)

    await PostgresTickWriter(settings("owner")).migrate()
    owner = await asyncpg.connect(**pg, user=roles["owner"])
    try:
        for stmt in as_owner:
            await owner.execute(_named(stmt, iso, roles))
    finally:
        await owner.close()

    writer = PostgresTickWriter(settings("writer"))
    await writer.start()  # migrations already applied: no DDL, so no CREATE privilege needed
    try:
        p = MarketDataPoint(symbol="AAPL", timestamp=datetime(2024, 5, 1, 14, 30, tzinfo=UTC), source="simulated",
                            price=189.5, volume=10, item_id="1")
        row = row_from_record(__import__("orjson").loads(p.to_json()))
        assert (await writer.write([row])).inserted == 1
        snapshot = {"processed": 1, "valid": 1, "rejected": 0, "written": 1, "duplicates": 0,
                    "throughput_per_sec": 1.0, "avg_latency_ms": None, "p50_latency_ms": None,
                    "p95_latency_ms": None, "p99_latency_ms": None, "rejected_by_rule": {}}
        await writer.write_metrics("w1", {"simulated": snapshot})
        assert [r["symbol"] for r in await writer.recent("AAPL", 5)] == ["AAPL"]
    finally:
        await writer.stop()

    q = f'"{iso.schema}"'
    as_writer = await asyncpg.connect(**pg, user=roles["writer"])
    try:
        for forbidden in (f"DROP TABLE {q}.market_data", f"CREATE TABLE {q}.x (i int)",
                          f"DELETE FROM {q}.market_data", f"TRUNCATE {q}.data_quality_metrics"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await as_writer.execute(forbidden)
    finally:
        await as_writer.close()

    reader = await asyncpg.connect(**pg, user=roles["reader"])
    try:
        assert await reader.fetchval(f"SELECT count(*) FROM {q}.market_data") == 1
        assert await reader.fetchval(f"SELECT count(*) FROM {q}.data_quality_metrics") == 1
        for forbidden in (f"INSERT INTO {q}.data_quality_metrics (worker, source, processed, valid, rejected, "
                          "written, duplicates, throughput_per_sec) VALUES ('x', 'x', 0, 0, 0, 0, 0, 0)",
                          f"UPDATE {q}.market_data SET price = 1", f"DELETE FROM {q}.market_data"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await reader.execute(forbidden)
    finally:
        await reader.close()
