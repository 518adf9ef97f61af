"""The PostgreSQL writer plans the statements that scan its tables afresh at every run (the revision UPDATEs,
the metrics fence, retention); its INSERTs are prepared once.

A generic plan keeps the row estimates of the moment it was made. Made on a fresh schema, the revision UPDATE
(a join with market_data) went on scanning the growing partition until autovacuum analyzed it, and the
self-test's latency grew with every row (streams/tools/selftest.py, latency_performance). A timing would make a
flaky test; what the fix changes is checked instead: after more runs than PostgreSQL's five custom plans before
it considers a generic one, the writer's session keeps none of those prepared, keeps its INSERTs prepared (the
round trip and plan they save), and the upserts' and revisions' results are right. With
postgres.prepared_statements off (a pooler in transaction mode), no prepared statement is kept at all."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from producers.simulated import SimulatedSource
from sinks.postgres import PostgresTickWriter, row_from_record
from streams.settings import SimulatedSourceSettings, load_settings

ROUNDS = 7  # each statement of the small-batch path runs 7 times: past the 5 custom plans of "auto"


@pytest.mark.parametrize("prepared", [True, False])
async def test_writer_plans_updates_afresh(prepared: bool) -> None:
    schema = f"fresh_plans_{uuid.uuid4().hex[:8]}"
    writer = PostgresTickWriter(load_settings(postgres={
        "db_schema": schema, "pool_min": 1, "pool_max": 1, "prepared_statements": prepared}).postgres)
    await writer.start()
    src = SimulatedSource(SimulatedSourceSettings(invalid_ratio=0.0, seed=5), run_id="fp")

    def docs(n: int) -> list[dict]:
        return [orjson.loads(p.to_json()) for p in src.batch(n)]

    def rows(batch: list[dict], at: datetime) -> list[tuple]:
        return [row_from_record({**d, "ingested_at": at.isoformat()}) for d in batch]  # a revisable kind's revision

    try:
        stored = updated = 0
        for n in [2000, *[15] * ROUNDS]:  # 2,000: the staged path; 15: the small batches' JSON path
            batch, first = docs(n), datetime.now(UTC)
            result = await writer.write(rows(batch, first))
            stored += sum(result.written_by_source.values())
            result = await writer.write(rows(batch, first + timedelta(seconds=1)))  # same keys, newer: UPDATE
            updated += result.updated
        for _ in range(ROUNDS):  # batches of clean records as JSON (more than SMALL_BATCH_ROWS): parsed by the server
            batch, first = docs(200), datetime.now(UTC)
            for at in (first, first + timedelta(seconds=1)):
                result = await writer.write_json([orjson.dumps({**d, "ingested_at": at.isoformat()}) for d in batch])
                stored += result.inserted
                updated += result.updated
        assert stored == 2000 + 15 * ROUNDS + 200 * ROUNDS
        snapshot = {"processed": 1, "valid": 1, "rejected": 0, "written": 1, "duplicates": 0,
                    "throughput_per_sec": 1.0, "avg_latency_ms": 1.0, "p50_latency_ms": 1.0, "p95_latency_ms": 1.0,
                    "p99_latency_ms": 1.0, "rejected_by_rule": {}}
        for i in range(ROUNDS):  # the metrics fence (a lookup in data_quality_metrics) and retention (a scan)
            assert await writer.write_metrics("app@w", {"simulated": {**snapshot, "processed": i}}, cluster="app") == []
            assert await writer.delete_older_than(datetime(2000, 1, 1, tzinfo=UTC), 100) == 0
        assert updated > 0
        assert writer.pool is not None
        async with writer.pool.acquire() as conn:  # the one connection the batches ran on
            kept = [r for r in await conn.fetch("SELECT statement, generic_plans + custom_plans AS runs "
                                                "FROM pg_prepared_statements") if schema in r["statement"]]
            if prepared:
                sized = [r["statement"][:80] for r in kept
                         if any(w in r["statement"] for w in ("UPDATE", "DELETE", "NOT EXISTS"))]
                assert sized == [], sized
                assert max(r["runs"] for r in kept) >= 2 * ROUNDS, [dict(r) for r in kept]  # the INSERT, 2x/round
            else:
                assert kept == [], [r["statement"][:80] for r in kept]
            assert await conn.fetchval(f"SELECT count(*) FROM {schema}.market_data") == stored
            # every revisable row (quotes, bars) took its newer revision; ticks and trades kept their first write
            assert await conn.fetchval(f"SELECT count(*) FROM {schema}.market_data WHERE revision > 0") == updated
    finally:
        assert writer.pool is not None
        async with writer.pool.acquire() as conn:
            await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await writer.stop()
