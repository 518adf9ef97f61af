"""market_data range-partitioned by ts (issue 14, migration 6) on the real server: the conversion of a fresh
schema and of one holding rows (every row kept, the keys, index, views and grants carried over), the write
path's upsert routing into partitions, partitions created ahead with the DEFAULT partition's rows moved out,
and retention dropping whole partitions while the straddling one is trimmed row by row."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest

from sinks.postgres import PostgresTickWriter, row_from_record
from sinks.schema import MARKET_DATA_COLUMNS, MIGRATIONS, quote_ident
from streams.models import MarketDataPoint
from streams.settings import PostgresSettings
from tests.integration import test_postgres_roles
from tests.integration.conftest import Isolation
from tests.integration.test_postgres_roles import _named, readme_roles_sql

roles = test_postgres_roles.roles  # the README roles, made and dropped per test (a fixture)


def tick(i: int, ts: datetime, symbol: str = "PART", **kw: Any) -> tuple[Any, ...]:
    p = MarketDataPoint(symbol=symbol, timestamp=ts, source="simulated", price=10.0 + i, volume=1,
                        item_id=f"p-{i}", **kw)
    return row_from_record(orjson.loads(p.to_json()))


def bar(ts: datetime, close: float, ingested: datetime) -> tuple[Any, ...]:
    p = MarketDataPoint(symbol="PBAR", timestamp=ts, source="simulated", data_type="bar", interval="1m",
                        open=1.0, high=close, low=1.0, close=close, volume=1, ingested_at=ingested)
    return row_from_record(orjson.loads(p.to_json()))


def month_start(ts: datetime) -> datetime:
    return ts.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def settings_for(iso: Isolation, user: str | None = None) -> PostgresSettings:
    return PostgresSettings(host=iso.pg["host"], port=iso.pg["port"], user=user or iso.pg["user"],
                            database=iso.pg["database"], db_schema=iso.schema)


async def migrate_through(conn: asyncpg.Connection, schema: str, last: int) -> None:
    """Apply migrations 1..last only, as an older tickflow did: a schema as it was before partitioning."""
    q = quote_ident(schema)
    await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {q}")
    await conn.execute(f"CREATE TABLE {q}.schema_migrations "
                       "(version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
    for version, sql in MIGRATIONS:
        if version <= last:
            await conn.execute(sql.format(schema=q))
            await conn.execute(f"INSERT INTO {q}.schema_migrations (version) VALUES ($1)", version)


async def where_rows_are(pg: asyncpg.Connection, schema: str) -> dict[str, int]:
    rows = await pg.fetch(f"SELECT tableoid::regclass::text AS part, count(*) AS n FROM {schema}.market_data "
                          "GROUP BY 1")
    return {r["part"].split(".")[-1]: r["n"] for r in rows}


async def partitions(pg: asyncpg.Connection, schema: str) -> list[asyncpg.Record]:
    return await pg.fetch(f"SELECT * FROM {schema}.market_data_partitions()")


@pytest.fixture
async def writer(iso: Isolation, pg: asyncpg.Connection) -> AsyncIterator[PostgresTickWriter]:
    w = PostgresTickWriter(settings_for(iso))
    await w.start()
    yield w
    await w.stop()


async def test_fresh_schema_is_partitioned_with_keys_index_views(iso, pg, writer) -> None:
    s = iso.schema
    assert await pg.fetchval(f"SELECT relkind FROM pg_class WHERE oid = '{s}.market_data'::regclass") == b"p"
    assert await pg.fetchval(f"SELECT pg_get_partkeydef('{s}.market_data'::regclass)") == "RANGE (ts)"
    assert await pg.fetchval(f"SELECT to_regclass('{s}.market_data_unpartitioned')") is None  # it was empty
    pk = await pg.fetchval(f"SELECT pg_get_constraintdef(oid) FROM pg_constraint "
                           f"WHERE conrelid = '{s}.market_data'::regclass AND contype = 'p'")
    assert pk == "PRIMARY KEY (source, symbol, data_type, ts, item_id)"
    idx = await pg.fetchval(f"SELECT indexdef FROM pg_indexes WHERE schemaname = '{s}' "
                            "AND indexname = 'market_data_symbol_timestamp'")
    assert idx is not None and '(symbol, "timestamp" DESC)' in idx
    parts = await partitions(pg, s)
    now = datetime.now(UTC)
    ranges = [(p["lower_bound"], p["upper_bound"]) for p in parts if not p["is_default"]]
    assert ranges[0][0] == month_start(now) and len(ranges) == 4  # this month and 3 ahead
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))  # contiguous
    assert [p["partition_name"] for p in parts if p["is_default"]] == ["market_data_default"]

    # The write path unchanged: COPY + upsert routes rows; a newer revision of a bar replaces the older one.
    t = month_start(now) + timedelta(days=1)
    assert (await writer.write([tick(i, t + timedelta(seconds=i)) for i in range(5)])).inserted == 5
    assert (await writer.write([tick(i, t + timedelta(seconds=i)) for i in range(5)])).duplicates == 5
    old_bar = bar(t, 2.0, now - timedelta(minutes=2))
    assert (await writer.write([old_bar])).inserted == 1
    assert (await writer.write([bar(t, 3.0, now - timedelta(minutes=1))])).updated == 1
    assert (await writer.write([old_bar])).duplicates == 1  # the stale revision is ignored
    assert await where_rows_are(pg, s) == {f"market_data_{t:%Y%m01}": 6}
    # The views are bound to the partitioned table.
    assert await pg.fetchval(f"SELECT close FROM {s}.bars WHERE symbol = 'PBAR'") == 3.0
    got = await pg.fetchrow(f"SELECT price, price_ts FROM {s}.latest_prices WHERE symbol = 'PART'")
    assert (got["price"], got["price_ts"]) == (14.0, t + timedelta(seconds=4))
    assert [r["symbol"] for r in await writer.recent("PART", 2)] == ["PART", "PART"]


@pytest.fixture
async def legacy(iso: Isolation, pg: asyncpg.Connection) -> list[tuple[Any, ...]]:
    """A schema at migration 5 (unpartitioned market_data) holding rows over ~7 months, written as the old
    tickflow did; returns the rows."""
    s = iso.schema
    await migrate_through(pg, s, 5)
    t0 = datetime(2024, 1, 15, tzinfo=UTC)
    rows = [tick(i, t0 + timedelta(days=7 * i, seconds=i), metadata={"i": i}) for i in range(30)]
    await pg.copy_records_to_table("market_data", schema_name=s, records=rows, columns=MARKET_DATA_COLUMNS)
    await pg.execute(f"INSERT INTO {s}.market_data (source, symbol, data_type, ts, revision, \"close\", "
                     f"\"interval\") VALUES ('simulated', 'PBAR', 'bar', $1, 7, 5.0, '1m')", t0)
    return rows


TABLE_HASH = ("SELECT count(*) AS n, md5(string_agg(row(source, symbol, data_type, ts, item_id, price, volume, "
              "metadata, revision, \"timestamp\", written_at)::text, '|' ORDER BY source, symbol, data_type, ts, "
              "item_id)) AS h FROM {}")


async def test_existing_rows_kept_counts_equal(iso, pg, legacy) -> None:
    s = iso.schema
    before = await pg.fetchrow(TABLE_HASH.format(f"{s}.market_data"))
    assert before["n"] == 31
    await PostgresTickWriter(settings_for(iso)).migrate()
    after = await pg.fetchrow(TABLE_HASH.format(f"{s}.market_data"))
    assert (after["n"], after["h"]) == (before["n"], before["h"])  # every column of every row, written_at too
    kept = await pg.fetchrow(TABLE_HASH.format(f"{s}.market_data_unpartitioned"))
    assert (kept["n"], kept["h"]) == (before["n"], before["h"])  # left for the operator to drop
    where = await where_rows_are(pg, s)
    assert "market_data_default" not in where  # every month holding rows got its partition
    expected: dict[str, int] = {}
    for r in legacy:
        expected[f"market_data_{r[3]:%Y%m01}"] = expected.get(f"market_data_{r[3]:%Y%m01}", 0) + 1
    expected["market_data_20240101"] += 1  # the bar
    assert where == expected
    # The views read the new table: a row written after the migration shows in bars and latest_prices.
    w = PostgresTickWriter(settings_for(iso))
    await w.start()
    try:
        t = datetime(2024, 3, 1, tzinfo=UTC)
        await w.write([bar(t, 9.0, t), tick(99, t + timedelta(days=400))])
    finally:
        await w.stop()
    assert await pg.fetchval(f"SELECT count(*) FROM {s}.bars WHERE symbol = 'PBAR'") == 2
    assert await pg.fetchval(f"SELECT price_ts FROM {s}.latest_prices WHERE symbol = 'PART'") == \
        t + timedelta(days=400)
    assert await pg.fetchval(f"SELECT count(*) FROM {s}.market_data_unpartitioned") == 31


async def test_grants_carried_over(iso, pg, legacy) -> None:
    s = iso.schema
    role = f"it_{iso.tag}_r"
    await pg.execute(f'CREATE ROLE "{role}"')
    try:
        await pg.execute(f'GRANT SELECT, INSERT, UPDATE ON {s}.market_data TO "{role}"')
        await PostgresTickWriter(settings_for(iso)).migrate()
        privs = await pg.fetchval(
            "SELECT array_agg(p ORDER BY p) FROM unnest(ARRAY['SELECT','INSERT','UPDATE','DELETE']) p "
            f"WHERE has_table_privilege($1, '{s}.market_data', p)", role)
        assert privs == ["INSERT", "SELECT", "UPDATE"]
    finally:
        await pg.execute(f"DROP SCHEMA IF EXISTS {s} CASCADE")
        await pg.execute(f'DROP ROLE "{role}"')


async def test_partitions_ahead_move_default_rows(iso, pg, writer) -> None:
    s = iso.schema
    far = datetime(2031, 2, 10, 12, tzinfo=UTC)  # no partition yet: lands in DEFAULT
    rows = [tick(i, far + timedelta(days=3 * i)) for i in range(10)]  # 2031-02-10 .. 2031-03-09
    await writer.write([*rows, tick(50, far - timedelta(days=900))])
    assert await where_rows_are(pg, s) == {"market_data_default": 11}
    # A plain CREATE ... PARTITION OF for that range is refused by PostgreSQL while DEFAULT holds its rows:
    with pytest.raises(asyncpg.CheckViolationError):
        await pg.execute(f"CREATE TABLE {s}.x PARTITION OF {s}.market_data "
                         "FOR VALUES FROM ('2031-02-01 00:00+00') TO ('2031-03-01 00:00+00')")
    made = await writer.create_partitions("month", far, 1)
    assert made == ["market_data_20310201", "market_data_20310301"]
    assert await where_rows_are(pg, s) == {"market_data_20310201": 7, "market_data_20310301": 3,
                                           "market_data_default": 1}
    assert await writer.create_partitions("month", far, 1) == []  # idempotent
    # A change of period: week slots overlapping the months are clipped, the rest created.
    made = await writer.create_partitions("week", datetime(2031, 3, 27, tzinfo=UTC), 2)
    # weeks from Mon 2031-03-24: [03-24, 03-31) and [03-31, 04-07) overlap March: clipped to [04-01, 04-07),
    # then [04-07, 04-14)
    assert made == ["market_data_20310401", "market_data_20310407"]
    bounds = {p["partition_name"]: (p["lower_bound"], p["upper_bound"]) for p in await partitions(pg, s)}
    assert bounds["market_data_20310401"] == (datetime(2031, 4, 1, tzinfo=UTC), datetime(2031, 4, 7, tzinfo=UTC))
    # The upsert still works across the moved rows (their keys are unique across the partitioned table).
    assert (await writer.write(rows)).duplicates == 10
    assert await pg.fetchval(f"SELECT count(*) FROM {s}.market_data") == 11
    with pytest.raises(Exception, match="day, week or month"):
        await writer.create_partitions("year", far, 1)


async def test_retention_drops_whole_partitions_and_trims_the_straddling_one(iso, pg, writer) -> None:
    from streams.settings import SinkSettings
    from streams.stages.db import SharedWriter
    from streams.stages.retention import apply_retention

    s = iso.schema
    await writer.create_partitions("month", datetime(2030, 1, 15, tzinfo=UTC), 4)  # Jan..May 2030
    rows = []
    for month in range(1, 6):  # 20 rows on each of days 1..20 of Jan..May
        rows += [tick(month * 100 + d, datetime(2030, month, d, 12, tzinfo=UTC)) for d in range(1, 21)]
    rows.append(tick(999, datetime(2029, 6, 1, tzinfo=UTC)))  # old, in DEFAULT
    await writer.write(rows)
    await pg.execute(f"ANALYZE {s}.market_data")  # the drop reports the planner's row estimates: exact now
    now = datetime(2030, 4, 10, 12, tzinfo=UTC)  # cutoff (30 days) = 2030-03-11 12:00
    sink = SinkSettings(data_retention_days=30, retention_batch_rows=100)
    removed = await apply_retention(SharedWriter(writer), sink, now=now)
    names = [p["partition_name"] for p in await partitions(pg, s)]
    assert "market_data_20300101" not in names and "market_data_20300201" not in names  # dropped whole
    assert "market_data_20300301" in names  # straddles the cutoff: kept, trimmed
    # Exactly the rows older than the cutoff are gone; every newer row stays (in every partition: a ctid
    # alone would name rows of other partitions too).
    cutoff = now - timedelta(days=30)
    left = {r["item_id"] for r in await pg.fetch(f"SELECT item_id FROM {s}.market_data")}
    assert left == {r[4] for r in rows if r[3] >= cutoff}
    assert len(left) == 10 + 20 + 20
    assert removed == 40 + 11  # two partitions of 20 dropped, 10 + 1 deleted
    assert await where_rows_are(pg, s) == {"market_data_20300301": 10, "market_data_20300401": 20,
                                           "market_data_20300501": 20}
    assert await writer.drop_partitions_before(cutoff) == []  # nothing more to drop


async def test_least_privilege_writer_creates_partitions_owned_by_the_owner(iso, roles) -> None:
    """README "Least privilege" as written: the writer (no CREATE, not the owner) creates partitions through
    the owner's function; they belong to the owner, rows route into them, the reader reads them; dropping
    needs its own grant, and the reader can do neither."""
    as_superuser, as_owner = readme_roles_sql()
    pg = {k: v for k, v in iso.pg.items() if k != "user"}
    admin = await asyncpg.connect(**iso.pg)
    try:
        for stmt in as_superuser:
            await admin.execute(_named(stmt, iso, roles))
        await PostgresTickWriter(settings_for(iso, roles["owner"])).migrate()
        owner = await asyncpg.connect(**pg, user=roles["owner"])
        try:
            for stmt in as_owner:
                await owner.execute(_named(stmt, iso, roles))
        finally:
            await owner.close()
        w = PostgresTickWriter(settings_for(iso, roles["writer"]))
        await w.start()
        try:
            assert await w.create_partitions("day", datetime(2032, 7, 1, tzinfo=UTC), 1) == [
                "market_data_20320701", "market_data_20320702"]
            assert (await w.write([tick(1, datetime(2032, 7, 2, 9, tzinfo=UTC))])).inserted == 1
            with pytest.raises(Exception, match="permission denied"):
                await w.drop_partitions_before(datetime(2032, 8, 1, tzinfo=UTC))
        finally:
            await w.stop()
        s = iso.schema
        assert await admin.fetchval(f"SELECT pg_get_userbyid(relowner) FROM pg_class "
                                    f"WHERE oid = '{s}.market_data_20320702'::regclass") == roles["owner"]
        assert await where_rows_are(admin, s) == {"market_data_20320702": 1}
        reader = await asyncpg.connect(**pg, user=roles["reader"])
        try:
            assert await reader.fetchval(f"SELECT count(*) FROM {s}.market_data_20320702") == 1
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await reader.fetch(f"SELECT * FROM {s}.market_data_create_partitions('day', now(), now())")
        finally:
            await reader.close()
    finally:
        await admin.close()


async def test_worker_leader_creates_partitions_ahead(iso, pg, writer, workers) -> None:
    """A real worker's leader timer (sink.partition_check_seconds) creates the partitions of the configured
    period ahead, moving the DEFAULT partition's rows of their ranges into them."""
    from tests.integration.conftest import ensure_topics_for, wait_until

    s = iso.schema
    for p in await partitions(pg, s):  # as if the migration's months had run out
        if not p["is_default"]:
            await pg.execute(f"ALTER TABLE {s}.market_data DETACH PARTITION {s}.{p['partition_name']}")
            await pg.execute(f"DROP TABLE {s}.{p['partition_name']}")
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    await writer.write([tick(1, today + timedelta(days=1, hours=12))])
    assert await where_rows_are(pg, s) == {"market_data_default": 1}
    await ensure_topics_for(iso)
    w = workers(TICKFLOW_SINK__PARTITION_PERIOD="day", TICKFLOW_SINK__PARTITIONS_AHEAD="2",
                TICKFLOW_SINK__PARTITION_CHECK_SECONDS="1")
    days = [f"market_data_{today + timedelta(days=d):%Y%m%d}" for d in range(3)]

    async def made() -> list[str]:
        names = [p["partition_name"] for p in await partitions(pg, s)]
        return names if names == [*days, "market_data_default"] else []

    await wait_until(made, 120, "the worker to create today's partition and 2 days ahead")
    assert await where_rows_are(pg, s) == {days[1]: 1}
    assert "partitions: created" in w.log_text()
    assert w.alive()


async def test_backfilled_history_gets_partitions_that_retention_drops(iso, pg, writer) -> None:
    """Backfilled 2020 rows land in DEFAULT (partitions are made from now on); the leader's partition
    maintenance makes their months' partitions and moves them in, leaving DEFAULT empty; retention then drops
    those partitions whole. Migration 8."""
    from streams.settings import SinkSettings
    from streams.stages.db import SharedWriter
    from streams.stages.retention import apply_retention, create_partitions

    s = iso.schema
    history = [tick(i, datetime(2020, 3, 1, tzinfo=UTC) + timedelta(days=2 * i, hours=i)) for i in range(25)]
    history.append(bar(datetime(2020, 3, 2, 15, 30, tzinfo=UTC), 4.0, datetime(2020, 3, 2, 15, 31, tzinfo=UTC)))
    assert (await writer.write(history)).inserted == 26  # 2020-03-01 .. 2020-04-18 and a bar
    recent = tick(99, datetime.now(UTC))
    await writer.write([recent])
    assert (await where_rows_are(pg, s))["market_data_default"] == 26
    before = await pg.fetchrow(TABLE_HASH.format(f"{s}.market_data"))
    # DEFAULT's index on ts (the walk, the move and retention's DELETE read ranges of ts through it)
    await pg.execute("SET enable_seqscan = off")
    plan = "\n".join(r[0] for r in await pg.fetch(
        f"EXPLAIN SELECT 1 FROM {s}.market_data WHERE ts < '2021-01-01' LIMIT 10"))
    await pg.execute("RESET enable_seqscan")
    assert "market_data_default_ts" in plan, plan

    sink = SinkSettings(partition_period="month", partitions_ahead=3, data_retention_days=365)
    made = await create_partitions(SharedWriter(writer), sink)
    assert made == ["market_data_20200301", "market_data_20200401"]  # the months ahead exist already
    where = await where_rows_are(pg, s)
    assert "market_data_default" not in where
    assert (where["market_data_20200301"], where["market_data_20200401"]) == (17, 9)
    after = await pg.fetchrow(TABLE_HASH.format(f"{s}.market_data"))
    assert (after["n"], after["h"]) == (before["n"], before["h"])  # every column of every row, written_at too
    # no CHECK left behind, the partitions' indexes attached, the upsert routes into them
    assert await pg.fetchval(f"SELECT count(*) FROM pg_constraint WHERE conrelid = "
                             f"'{s}.market_data_20200301'::regclass AND contype = 'c'") == 0
    assert (await writer.write(history[:5])).duplicates == 5
    assert (await writer.write([bar(datetime(2020, 3, 2, 15, 30, tzinfo=UTC), 5.0,
                                    datetime(2020, 3, 2, 15, 32, tzinfo=UTC))])).updated == 1
    assert await create_partitions(SharedWriter(writer), sink) == []  # nothing left to do

    await pg.execute(f"ANALYZE {s}.market_data")
    removed = await apply_retention(SharedWriter(writer), sink)
    assert removed == 26
    names = [p["partition_name"] for p in await partitions(pg, s)]
    assert "market_data_20200301" not in names and "market_data_20200401" not in names
    assert await pg.fetchval(f"SELECT count(*) FROM {s}.market_data WHERE ts < '2021-01-01'") == 0
    assert await pg.fetchval(f"SELECT count(*) FROM {s}.market_data") == 1  # the recent tick


async def test_moving_history_is_safe_beside_a_writer(iso, pg, writer) -> None:
    """The move locks market_data before it starts. (1) A writer's open transaction holding a row of the month
    being made: the maintenance waits for it and moves that row too (without the lock, ATTACH would find the
    row in DEFAULT and fail). (2) A writer arriving while the maintenance runs waits, then routes its row to
    the new partition (without the lock it would route by the old partition list into DEFAULT and fail its
    new constraint)."""
    import asyncio

    s = iso.schema
    await writer.write([tick(1, datetime(2019, 5, 3, tzinfo=UTC))])
    other = await asyncpg.connect(**iso.pg)
    try:
        tx = other.transaction()
        await tx.start()
        await other.execute(f"INSERT INTO {s}.market_data (source, symbol, data_type, ts, item_id) "
                            "VALUES ('simulated', 'PART', 'tick', '2019-05-20 10:00+00', 'open-tx')")
        maintenance = asyncio.create_task(writer.partition_default("month"))
        await asyncio.sleep(1.0)
        assert not maintenance.done()  # waits for the writer's transaction
        await tx.commit()
        assert await asyncio.wait_for(maintenance, 30) == ["market_data_20190501"]
        assert await where_rows_are(pg, s) == {"market_data_20190501": 2}

        await writer.write([tick(2, datetime(2018, 7, 3, tzinfo=UTC))])
        tx = other.transaction()
        await tx.start()
        assert await other.fetchval(
            f"SELECT * FROM {s}.market_data_create_partitions('month', NULL, NULL)") == "market_data_20180701"
        write = asyncio.create_task(writer.write([tick(3, datetime(2018, 7, 9, tzinfo=UTC))]))
        await asyncio.sleep(1.0)
        assert not write.done()  # waits at market_data for the partition to be made
        await tx.commit()
        assert (await asyncio.wait_for(write, 30)).inserted == 1
        assert await where_rows_are(pg, s) == {"market_data_20190501": 2, "market_data_20180701": 2}
    finally:
        await other.close()
