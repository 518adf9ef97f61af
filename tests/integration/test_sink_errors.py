"""Database errors classified right, on the real server (issue 15 item 2): a permission problem or a
read-only server is SinkUnavailable (retry, never dead-letter) and the same batch lands once it is fixed;
a NUL byte in text or metadata does not make the database refuse the batch."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from sinks.postgres import PostgresTickWriter, loads_record, row_from_record
from streams.errors import SinkError
from streams.models import MarketDataPoint
from streams.settings import PostgresSettings
from tests.integration.conftest import Isolation, free_port


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


def _pg_bin() -> Path:
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    dirs = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda d: int(d.parent.name))
    assert dirs, "no PostgreSQL server binaries (initdb) on this machine"
    return dirs[-1]


@pytest.fixture
def own_cluster() -> Iterator[dict[str, Any]]:
    """A PostgreSQL cluster of this test's own (initdb, a free port, a few MiB of buffers). ALTER SYSTEM and
    pg_reload_conf() change every session of a cluster: never done to the shared one other tests use."""
    bindir = _pg_bin()
    root = Path(tempfile.mkdtemp(prefix="tickflow-own-pg-"))
    as_pg: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root (dev/stack.sh runs it as `postgres` the same way)
        shutil.chown(root, "postgres", "postgres")
        as_pg = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()
    subprocess.run([*as_pg, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                    "-E", "UTF8", "--locale=C.UTF-8"], check=True, capture_output=True, timeout=120)
    opts = (f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={root} "
            "-c shared_buffers=16MB -c max_connections=20 -c fsync=off")
    subprocess.run([*as_pg, str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "log"),
                    "-w", "-t", "60", "start"], check=True, capture_output=True, timeout=90)
    try:
        yield {"host": "127.0.0.1", "port": port, "user": "postgres", "database": "postgres"}
    finally:
        subprocess.run([*as_pg, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


async def test_pooled_read_only_sessions_are_recycled(own_cluster: dict[str, Any]) -> None:
    """A failover's demoted primary: the pool's sessions turn read-only while they are open (ALTER SYSTEM +
    pg_reload_conf), then new sessions are writable again (the role's own setting, read at connect: the new
    primary) while the old sessions stay read-only. A 25006 must make the pool replace its sessions, or every
    retry is handed one of the old ones and the batch never lands."""
    admin = await asyncpg.connect(**own_cluster)
    await admin.execute("SET default_transaction_read_only = off")  # this session keeps writing throughout
    w = PostgresTickWriter(PostgresSettings(**own_cluster, db_schema="it_readonly", pool_min=3, pool_max=3))
    try:
        await w.start()
        assert (await w.write(batch(10, "a"))).inserted == 10  # three writable sessions in the pool
        await admin.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        await admin.execute("SELECT pg_reload_conf()")
        failed = 0
        for _ in range(20):  # the reload reaches each backend asynchronously: until one refuses the batch
            try:
                await w.write(batch(10, "a"))  # the same rows: a no-op while the session is still writable
            except SinkError as exc:
                assert exc.retriable and "25006" in str(exc), exc
                failed += 1
                break
            await asyncio.sleep(0.1)
        assert failed, "the sessions never turned read-only"
        # The failover completes: sessions opened from now on are writable, the open ones stay read-only.
        await admin.execute("ALTER ROLE postgres SET default_transaction_read_only = off")
        for _ in range(3):  # one retry at most may still meet an old session; the pool, three of them
            try:
                result = await w.write(batch(20, "b"))
                break
            except SinkError as exc:
                assert exc.retriable and "25006" in str(exc), exc
                failed += 1
        else:
            pytest.fail("the batch never landed: read-only sessions stayed in the pool")
        assert result.inserted == 20 and failed <= 2, failed
        assert await admin.fetchval('SELECT count(*) FROM "it_readonly".market_data') == 30
    finally:
        await w.stop()
        await admin.close()


async def test_integers_beyond_64_bits_reach_jsonb_exactly(iso: Isolation, pg: asyncpg.Connection) -> None:
    """A clean record's metadata integer beyond 64 bits is stored as the same JSON number (jsonb numeric),
    neither rounded to a double nor turned into a string."""
    w = PostgresTickWriter(PostgresSettings(host=iso.pg["host"], port=iso.pg["port"], db_schema=iso.schema))
    await w.start()
    long = int("7" * 4300)  # the longest integer the validate stage's JSON parser takes
    try:
        raw = MarketDataPoint(symbol="AAPL", timestamp=datetime(2024, 5, 2, tzinfo=UTC), source="simulated",
                              price=1.0, metadata={"big": 2**70, "neg": -(2**63) - 1, "deep": [10**40 + 1],
                                                   "long": long}).to_json()
        assert (await w.write([row_from_record(loads_record(raw))])).inserted == 1
        got = await pg.fetchrow(
            f"SELECT metadata->>'big' AS big, jsonb_typeof(metadata->'big') AS t, metadata->>'neg' AS neg, "
            f"metadata->'deep'->>0 AS deep, metadata->>'long' AS long FROM {iso.schema}.market_data")
        assert got["t"] == "number"
        assert (got["big"], got["neg"], got["deep"]) == (str(2**70), str(-(2**63) - 1), str(10**40 + 1))
        assert got["long"] == str(long)
    finally:
        await w.stop()
