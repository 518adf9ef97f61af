"""Faults on the real stack, checked with the oracles of the delivery contract once the flow has drained:
no loss (every valid input's natural key is in market_data, every invalid one is dead-lettered), no
duplicates (count = count distinct natural key), and the worker recovers by itself. Each test kills or
stops only what it started (by pid) or the local stack's own PostgreSQL, and is bounded in time."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess

import asyncpg
import pytest

from streams.tools.measure import read_topic
from tests.integration.conftest import ROOT, ensure_topics_for, wait_until
from tests.integration.oracles import check_oracles, fault_inputs, produce_all, wait_for_rows

STACK = str(ROOT / "dev" / "stack.sh")


async def test_kill_9_mid_flow_then_restart(iso, workers, producer, pg) -> None:
    await ensure_topics_for(iso)
    inputs = fault_inputs(seed=31)
    messages = inputs.messages
    rng = random.Random(31)
    await produce_all(producer, iso.raw_topic(), messages[:5000])
    for round_ in range(3):
        w = workers(f"victim{round_}")

        await wait_for_rows(iso, pg, 200 * (round_ + 1), "the worker to be writing")
        await asyncio.sleep(rng.uniform(0.0, 1.5))  # kill at a random point of a batch
        os.kill(w.pid, signal.SIGKILL)
        w.proc.wait(timeout=10)
        if round_ == 0:
            await produce_all(producer, iso.raw_topic(), messages[5000:], 5000)
    survivor = workers("survivor")
    await check_oracles(iso, pg, inputs, "kill -9 x3, random timing")
    assert survivor.alive()


async def test_postgres_outage_during_flow(iso, workers, producer, pg) -> None:
    await ensure_topics_for(iso)
    inputs = fault_inputs(seed=37)
    messages = inputs.messages
    w = workers()
    await produce_all(producer, iso.raw_topic(), messages[:3000])

    await wait_for_rows(iso, pg, 100, "the worker to be writing")
    await pg.close()
    subprocess.run([STACK, "stop", "postgres", "immediate"], check=True, timeout=60)
    try:
        await produce_all(producer, iso.raw_topic(), messages[3000:], 3000)
        await asyncio.sleep(20)
        assert w.alive(), "the worker died while the database was down"
    finally:
        subprocess.run([STACK, "start", "postgres"], check=True, timeout=120)
    conn = await asyncpg.connect(**iso.pg)
    try:
        await check_oracles(iso, conn, inputs, "PostgreSQL stopped 20 s (immediate)")
    finally:
        await conn.execute(f"DROP SCHEMA IF EXISTS {iso.schema} CASCADE")
        await conn.close()
    assert w.alive()
    assert "PostgreSQL unavailable" in w.log_text()


async def test_circuit_breaker_stops_the_worker_instead_of_dead_lettering_everything(iso, workers, producer) -> None:
    await ensure_topics_for(iso)
    for i in range(300):  # a provider changed its format: nothing parses any more
        await producer.send(iso.raw_topic(), b'{"sym": "AAPL", "px": %d}' % i, key=b"AAPL")
    await producer.flush()
    w = workers(TICKFLOW_VALIDATION__CIRCUIT_BREAKER_WINDOW="100")

    def stopped() -> bool:
        return not w.alive()

    await wait_until(stopped, 90, "the worker to stop")
    assert w.proc.returncode != 0
    assert "circuit breaker" in w.log_text()
    assert await read_topic(iso.bootstrap, iso.topic("rejected")) == []  # nothing dead-lettered, nothing committed


async def test_paused_worker_does_not_lose_or_double_rows(iso, workers, producer, pg) -> None:
    """A worker frozen (SIGSTOP) past the session timeout loses its partitions; when it wakes up, its stale
    batch's commit is refused and the new owner's re-read writes nothing twice (natural-key upsert)."""
    await ensure_topics_for(iso)
    inputs = fault_inputs(seed=47)
    messages = inputs.messages
    a, b = workers("a"), workers("b")

    def both_assigned() -> bool:
        owned = []
        for w in (a, b):
            status, h = w.get("/health")
            owned.append(status == 200 and bool(h.get("stages", {}).get("validate", {}).get("assigned")))
        return all(owned)

    await wait_until(both_assigned, 90, "both workers to own raw partitions")
    third = len(messages) // 3
    await produce_all(producer, iso.raw_topic(), messages[:third])
    await asyncio.sleep(1.0)
    os.kill(a.pid, signal.SIGSTOP)
    try:
        await produce_all(producer, iso.raw_topic(), messages[third:2 * third], third)
        await asyncio.sleep(40)  # past the stages' 30 s session timeout: b takes a's partitions
    finally:
        os.kill(a.pid, signal.SIGCONT)
    await produce_all(producer, iso.raw_topic(), messages[2 * third:], 2 * third)
    await check_oracles(iso, pg, inputs, "worker paused (SIGSTOP) 40 s")
    assert b.alive()


@pytest.mark.parametrize("point", ["write.after_insert", "write.before_offset_commit",
                                   "validate.before_offset_commit"])
async def test_kill_9_at_a_fault_point_then_restart(iso, workers, producer, pg, point: str) -> None:
    """The worker kills itself (SIGKILL, streams/faults.py) exactly between two steps of a batch: rows
    inserted but not committed; rows committed but offsets not; clean records sent but offsets not."""
    await ensure_topics_for(iso)
    inputs = fault_inputs(seed=61 + len(point))
    await produce_all(producer, iso.raw_topic(), inputs.messages)
    nth = random.Random(point).randint(1, 3)
    victim = workers("victim", TICKFLOW_FAULT_POINT=f"{point}@{nth}")
    await wait_until(lambda: not victim.alive(), 120, f"the worker to die at {point}")
    assert victim.proc.returncode == -signal.SIGKILL
    assert f"fault point {point} reached ({nth})" in victim.log_text()
    survivor = workers("survivor")
    await check_oracles(iso, pg, inputs, f"kill -9 at {point} (batch {nth})")
    assert survivor.alive()


async def test_kill_9_inside_a_rebalance(iso, workers, producer, pg) -> None:
    """A second worker joins; the first dies while its partitions are being revoked."""
    await ensure_topics_for(iso)
    inputs = fault_inputs(seed=67)
    half = len(inputs.messages) // 2
    await produce_all(producer, iso.raw_topic(), inputs.messages[:half])
    victim = workers("victim", TICKFLOW_FAULT_POINT="validate.in_revoke")

    await wait_for_rows(iso, pg, 100, "the first worker to be writing")
    joiner = workers("joiner")
    await produce_all(producer, iso.raw_topic(), inputs.messages[half:], half)
    await wait_until(lambda: not victim.alive(), 120, "the first worker to die inside the rebalance")
    assert victim.proc.returncode == -signal.SIGKILL
    assert "fault point validate.in_revoke reached" in victim.log_text()
    await check_oracles(iso, pg, inputs, "kill -9 inside a rebalance")
    assert joiner.alive()
