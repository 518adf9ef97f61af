"""Retention on a big market_data: today's bounded DELETE against dropping whole partitions (issue 14).

    .cache/venv/bin/python bench/retention.py            # BENCH_RETENTION_ROWS=10000000 by default

On a throwaway schema (dropped afterwards, even on failure):
1. migrations 1-5 (market_data unpartitioned, as before migration 6) and N rows made in the server by
   INSERT ... SELECT generate_series, spread evenly over the 12 months from the first day of the month a
   year ago (50 symbols, ticks);
2. migration 6 (timed): market_data becomes partitioned by month, the rows copied; the old table stays as
   market_data_unpartitioned, so both hold the same rows;
3. the oldest 3 of the 12 months (~25%): the bounded DELETE tickflow ran before migration 6 (`DELETE ...
   WHERE ctid IN (SELECT ctid ... WHERE ts < $1 LIMIT 10000)` until a batch comes back short) on the
   unpartitioned copy (then the VACUUM that reclaims its dead rows, timed apart), against
   market_data_drop_partitions (DETACH + DROP: the files go at once) on the partitioned table.
Prints one JSON line with both timings in seconds (plus the generation and migration times).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402

from sinks.postgres import PostgresTickWriter  # noqa: E402
from sinks.schema import MIGRATIONS, quote_ident  # noqa: E402
from streams.settings import PostgresSettings, load_settings  # noqa: E402

BATCH = 10_000  # sink.retention_batch_rows' default


def log(msg: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


async def main() -> dict[str, object]:
    n = int(os.environ.get("BENCH_RETENTION_ROWS", "10000000"))
    pg = load_settings().postgres
    schema = f"bench_retention_{uuid.uuid4().hex[:8]}"
    q = quote_ident(schema)
    conn = await asyncpg.connect(**pg.connect_kwargs(), command_timeout=None)
    now = datetime.now(UTC)
    start = datetime(now.year - 1, now.month, 1, tzinfo=UTC)
    cutoff = datetime(start.year + (start.month + 2) // 12, (start.month + 2) % 12 + 1, 1, tzinfo=UTC)
    out: dict[str, object] = {"rows": n, "from": start.isoformat(), "cutoff": cutoff.isoformat()}
    try:
        await conn.execute(f"CREATE SCHEMA {q}")
        await conn.execute(f"CREATE TABLE {q}.schema_migrations "
                           "(version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
        for version, sql in MIGRATIONS:
            if version <= 5:
                await conn.execute(sql.format(schema=q))
                await conn.execute(f"INSERT INTO {q}.schema_migrations (version) VALUES ($1)", version)
        log(f"generating {n:,} rows in {schema}")
        t = time.perf_counter()
        await conn.execute("SET synchronous_commit = off")
        await conn.execute(
            f"INSERT INTO {q}.market_data (source, symbol, data_type, ts, item_id, price, volume, revision) "
            "SELECT 'bench', 'S' || (i % 50), 'tick', "
            "  $1::timestamptz"
            "  + make_interval(secs => extract(epoch FROM $2::timestamptz - $1::timestamptz) * i / $3::int), "
            "  i::text, "
            "  100 + (i % 1000) / 10.0, 1 + i % 7, 0 "
            "FROM generate_series(0, $3::int - 1) AS i",
            start, datetime(start.year + 1, start.month, 1, tzinfo=UTC), n)
        await conn.execute(f"VACUUM ANALYZE {q}.market_data")
        out["generate_seconds"] = round(time.perf_counter() - t, 2)
        old = await conn.fetchval(f"SELECT count(*) FROM {q}.market_data WHERE ts < $1", cutoff)
        out["old_rows"] = old
        log(f"generated in {out['generate_seconds']} s; {old:,} rows older than {cutoff:%Y-%m-%d}; migrating")

        t = time.perf_counter()
        await PostgresTickWriter(PostgresSettings(**{**pg.model_dump(), "db_schema": schema})).migrate()
        out["migration_6_seconds"] = round(time.perf_counter() - t, 2)
        assert await conn.fetchval(f"SELECT count(*) FROM {q}.market_data") == n
        await conn.execute(f"VACUUM ANALYZE {q}.market_data")
        log(f"migration 6 (copy into partitions) took {out['migration_6_seconds']} s")

        table = f"{q}.market_data_unpartitioned"
        t = time.perf_counter()
        deleted = batches = 0
        while True:
            status = await conn.execute(
                f"DELETE FROM {table} WHERE ctid IN (SELECT ctid FROM {table} WHERE ts < $1 LIMIT $2)",
                cutoff, BATCH)
            k = int(status.rsplit(" ", 1)[-1])
            deleted += k
            batches += 1
            if k < BATCH:
                break
        out["delete_seconds"] = round(time.perf_counter() - t, 2)
        out["delete_batches"] = batches
        assert deleted == old, (deleted, old)
        log(f"bounded DELETE: {deleted:,} rows in {batches} batches, {out['delete_seconds']} s")
        t = time.perf_counter()  # the DELETE leaves dead rows and index entries: VACUUM reclaims them
        await conn.execute(f"VACUUM {table}")
        out["vacuum_after_delete_seconds"] = round(time.perf_counter() - t, 2)
        log(f"VACUUM after the DELETE: {out['vacuum_after_delete_seconds']} s")

        t = time.perf_counter()
        dropped = await conn.fetch(f"SELECT * FROM {q}.market_data_drop_partitions($1)", cutoff)
        out["drop_seconds"] = round(time.perf_counter() - t, 3)
        out["dropped_partitions"] = [r["partition_name"] for r in dropped]
        assert await conn.fetchval(f"SELECT count(*) FROM {q}.market_data WHERE ts < $1", cutoff) == 0
        assert await conn.fetchval(f"SELECT count(*) FROM {q}.market_data") == n - old
        log(f"drop partitions: {len(dropped)} partitions in {out['drop_seconds']} s")
    finally:
        if conn.is_closed():  # the server restarted under us (the machine is shared): still drop the schema
            conn = await asyncpg.connect(**pg.connect_kwargs(), command_timeout=None)
        await conn.execute(f"DROP SCHEMA IF EXISTS {q} CASCADE")
        await conn.close()
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main())))
