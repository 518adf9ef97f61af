"""/health's states on a real worker (streams/web/health.py): "recovering" and "starting" while it comes up,
"stuck" when a stage owns partitions with lag but finishes no batch for worker.stuck_after_seconds, "ok" once
it moves again. 200 only for "ok", 503 for every other state (what an orchestrator's probe acts on)."""

from __future__ import annotations

import asyncio
import time

import asyncpg

from tests.integration.conftest import ensure_topics_for, wait_until
from tests.integration.oracles import pg_count, produce_all, wait_for_rows
from tests.integration.test_pipeline import build_inputs

STUCK_AFTER = 4


def valid_messages(n: int, seed: int) -> list[tuple[bytes, bytes]]:
    messages, expected_rule, _ = build_inputs(seed=seed)
    return [m for i, m in enumerate(messages) if i not in expected_rule][:n]


async def test_health_starting_stuck_ok(iso, workers, producer, pg) -> None:
    await ensure_topics_for(iso)
    messages = valid_messages(400, seed=71)
    raw = iso.raw_topic()
    w = workers(TICKFLOW_WORKER__STUCK_AFTER_SECONDS=str(STUCK_AFTER))

    # Coming up: every answer until "ok" is a 503 naming why; the stages without a consumer are listed.
    seen: list[tuple[int, str, tuple[str, ...]]] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        code, body = await asyncio.to_thread(w.get, "/health")
        if code and isinstance(body, dict):
            seen.append((code, body["status"], tuple(body["starting_stages"])))
            if body["status"] == "ok":
                break
        await asyncio.sleep(0.05)
    states = [s for _, s, _ in seen]
    print("health while starting:", [x for i, x in enumerate(seen) if i == 0 or x != seen[i - 1]])
    assert states and states[-1] == "ok", seen
    assert states[0] in ("recovering", "starting"), seen  # never "ok" before the stages are up
    assert any(starting for _, _, starting in seen), seen  # observed before the stages had their consumers
    for code, status, starting in seen:
        assert (code == 200) == (status == "ok"), (code, status)
        assert status in ("recovering", "starting", "ok"), status
        if starting:
            assert status in ("recovering", "starting")  # recovering takes precedence, then starting
    assert seen[-1][2] == ()

    await produce_all(producer, raw, messages[:200])
    await wait_for_rows(iso, pg, 199, "the first rows")

    # The database hangs for the write stage: another session holds an exclusive lock on market_data. The
    # write stage owns partitions of ticks.clean with lag and finishes no batch: "stuck", 503.
    blocker = await asyncpg.connect(**iso.pg)
    tx = blocker.transaction()
    await tx.start()
    try:
        await blocker.execute(f"LOCK TABLE {iso.schema}.market_data IN ACCESS EXCLUSIVE MODE")
        batches_before = w.get("/health")[1]["stages"]["write"]["batches"]
        await produce_all(producer, raw, messages[200:], 200)

        def stuck() -> tuple[int, dict] | None:
            code, body = w.get("/health")
            return (code, body) if isinstance(body, dict) and body["status"] == "stuck" else None

        code, body = await wait_until(stuck, 60, "/health to say stuck")
        assert code == 503
        # The write stage alone: the archive stage shares its PostgreSQL pool, but nothing it writes waits for
        # market_data (tests/integration/test_postgres_writer.py), and validate writes no table.
        assert body["stuck_stages"] == ["write"], body["stuck_stages"]
        assert body["lag"].get(iso.topic("clean"), 0) > 0, body["lag"]
        assert body["stages"]["write"]["batches"] == batches_before  # really no batch finished meanwhile
        assert w.alive()
    finally:
        await tx.rollback()
        await blocker.close()

    # The lock is gone: the held batch commits, the lag drains, "ok" again with 200.
    def ok() -> tuple[int, dict] | None:
        code, body = w.get("/health")
        return (code, body) if isinstance(body, dict) and body["status"] == "ok" else None

    code, body = await wait_until(ok, 60, "/health to recover to ok")
    assert code == 200 and body["stuck_stages"] == []
    await wait_for_rows(iso, pg, 399, "every row after the lock")
    assert await pg_count(iso, pg) == 400
