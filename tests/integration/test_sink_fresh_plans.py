"""The PostgreSQL writer plans every execution afresh, whether its statements are prepared once or not.

A generic plan keeps the row estimates of the moment it was made. Made on a fresh schema, the revision UPDATE
went on scanning the growing partition until autovacuum analyzed it, and the self-test's latency grew with
every row (streams/tools/selftest.py, latency_performance). A timing would make a flaky test; what the fix
changes is checked instead: after more executions than PostgreSQL's five custom plans before it considers a
generic one, no statement the writer keeps prepared has a generic plan (a statement without parameters, such
as a staged batch's, always gets one, so none is kept), and the upserts' results are right. With
postgres.prepared_statements off (a pooler in transaction mode), no prepared statement is kept at all."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import orjson
import pytest

from producers.simulated import SimulatedSource
from sinks.postgres import PostgresTickWriter, row_from_record
from streams.settings import SimulatedSourceSettings, load_settings

SMALL_BATCHES = 9  # each statement of the small-batch path runs 9 times: past the 5 custom plans of "auto"


@pytest.mark.parametrize("prepared", [True, False])
async def test_writer_plans_each_execution_afresh(prepared: bool) -> None:
    schema = f"fresh_plans_{uuid.uuid4().hex[:8]}"
    writer = PostgresTickWriter(load_settings(postgres={
        "db_schema": schema, "pool_min": 1, "pool_max": 1, "prepared_statements": prepared}).postgres)
    await writer.start()
    src = SimulatedSource(SimulatedSourceSettings(invalid_ratio=0.0, seed=5), run_id="fp")

    def rows(n: int) -> list[tuple]:
        out = []
        for p in src.batch(n):
            doc = orjson.loads(p.to_json())
            doc["ingested_at"] = datetime.now(UTC).isoformat()  # quotes: revisable, so the UPDATE runs too
            out.append(row_from_record(doc))
        return out

    sizes = [15, 2000, *[15] * (SMALL_BATCHES - 1)]
    try:
        written = 0
        for n in sizes:
            result = await writer.write(rows(n))
            written += sum(result.written_by_source.values())
        assert written == sum(sizes)
        assert writer.pool is not None
        async with writer.pool.acquire() as conn:  # the one connection the batches ran on
            kept = [r for r in await conn.fetch("SELECT statement, generic_plans, custom_plans "
                                                "FROM pg_prepared_statements") if schema in r["statement"]]
            if prepared:
                assert max(r["custom_plans"] for r in kept) >= SMALL_BATCHES, [dict(r) for r in kept]
                generic = [r["statement"][:80] for r in kept if r["generic_plans"]]
                assert generic == [], generic
            else:
                assert kept == [], [r["statement"][:80] for r in kept]
            assert await conn.fetchval(f"SELECT count(*) FROM {schema}.market_data") == sum(sizes)
    finally:
        assert writer.pool is not None
        async with writer.pool.acquire() as conn:
            await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await writer.stop()
