"""The PostgreSQL writer plans its statements afresh: no prepared statement is kept on its connections.

A cached plan keeps the row estimates of the moment it was prepared. Prepared on a fresh schema, the revision
UPDATE went on scanning the growing partition until autovacuum analyzed it, and the self-test's latency grew
with every row (streams/tools/selftest.py, latency_performance). A timing would make a flaky test; what the
fix changes is checked instead: after batches of revisable quotes, the writer's session holds no prepared
statement, and the upserts' results are right."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import orjson

from producers.simulated import SimulatedSource
from sinks.postgres import PostgresTickWriter, row_from_record
from streams.settings import SimulatedSourceSettings, load_settings


async def test_writer_keeps_no_cached_plan() -> None:
    schema = f"fresh_plans_{uuid.uuid4().hex[:8]}"
    writer = PostgresTickWriter(load_settings(postgres={"db_schema": schema, "pool_min": 1, "pool_max": 1}).postgres)
    await writer.start()
    src = SimulatedSource(SimulatedSourceSettings(invalid_ratio=0.0, seed=5), run_id="fp")

    def rows(n: int) -> list[tuple]:
        out = []
        for p in src.batch(n):
            doc = orjson.loads(p.to_json())
            doc["ingested_at"] = datetime.now(UTC).isoformat()  # quotes: revisable, so the UPDATE runs too
            out.append(row_from_record(doc))
        return out

    try:
        written = 0
        for n in (15, 2000, 15, 15):
            result = await writer.write(rows(n))
            written += sum(result.written_by_source.values())
        assert written == 2045
        assert writer.pool is not None
        async with writer.pool.acquire() as conn:  # the one connection the batches ran on
            kept = await conn.fetch("SELECT name, statement FROM pg_prepared_statements")
            assert kept == [], [r["statement"][:80] for r in kept]
            assert await conn.fetchval(f"SELECT count(*) FROM {schema}.market_data") == 2045
    finally:
        assert writer.pool is not None
        async with writer.pool.acquire() as conn:
            await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await writer.stop()
