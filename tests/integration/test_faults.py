"""Faults on the real stack, checked with the oracles of the delivery contract once the flow has drained
(tests/integration/oracles.py: per input, by content, in PostgreSQL and in the topics a consumer reads), and
the worker recovers by itself. Each fault is confirmed to have happened (the victim owned partitions and rows
were advancing; the other worker took the partitions over). Each test kills or
stops only what it started (by pid) or the local stack's own PostgreSQL, and is bounded in time."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson
import pytest

from streams.tools.measure import read_topic
from tests.integration.conftest import ROOT, ensure_topics_for, wait_until
from tests.integration.oracles import (
    check_oracles,
    fault_inputs,
    pg_count,
    produce_all,
    produce_paced,
    snapshots_going_back,
    stored_snapshots,
    wait_for_rows,
)

STACK = str(ROOT / "dev" / "stack.sh")


async def test_kill_9_mid_flow_then_restart(iso, workers, producer, pg) -> None:
    """Three workers in turn are killed with -9 while they own the raw partitions and rows are advancing; the
    kill time within the flow comes from an unseeded RNG whose seed is printed (rerun a failure with
    TICKFLOW_TEST_KILL_SEED)."""
    await ensure_topics_for(iso)
    inputs = fault_inputs(seed=31)
    messages = inputs.messages
    seed = int(os.environ.get("TICKFLOW_TEST_KILL_SEED") or random.SystemRandom().randrange(2**32))
    print(f"kill -9 x3: timing seed {seed} (TICKFLOW_TEST_KILL_SEED={seed} repeats it)")
    rng = random.Random(seed)
    raw = iso.raw_topic()
    third = len(messages) // 3
    parts = [(0, third), (third, 2 * third), (2 * third, len(messages))]
    feeders: list[asyncio.Task] = []
    kills: list[tuple[str, int, int]] = []
    try:
        for round_, (lo, hi) in enumerate(parts):
            w = workers(f"victim{round_}")
            # The dead victim's membership lapses after the 30 s session timeout; only then does this one own.
            await wait_until(lambda w=w: w.owned(raw, "validate"), 180, f"victim{round_} to own raw partitions")
            feeders.append(asyncio.create_task(produce_paced(producer, raw, messages[lo:hi], lo)))
            before = await pg_count(iso, pg)
            await wait_for_rows(iso, pg, before, f"rows to advance under victim{round_}", timeout=120)
            delay = rng.uniform(0.0, 2.0)
            await asyncio.sleep(delay)  # somewhere in a batch: fetch, validate, send, insert or commit
            at_kill = await pg_count(iso, pg)
            assert w.alive() and w.owned(raw, "validate"), f"victim{round_} was not working when killed"
            os.kill(w.pid, signal.SIGKILL)
            assert w.proc.wait(timeout=10) == -signal.SIGKILL
            kills.append((w.name, before, at_kill))
            print(f"killed {w.name} {delay:.2f} s after rows advanced ({before} -> {at_kill} rows)")
        await asyncio.gather(*feeders)
    finally:
        for t in feeders:
            t.cancel()
    assert len(kills) == 3 and all(b < a for _, b, a in kills), kills
    survivor = workers("survivor")
    await check_oracles(iso, pg, inputs, "kill -9 x3 mid-flow, random timing")
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


async def test_circuit_breaker_pauses_only_the_failing_source(iso, workers, producer, pg) -> None:
    """A provider changed its format: its records stop parsing. Its source's breaker pauses that source's
    partitions (nothing dead-lettered, nothing committed) while the worker stays up and the other sources
    go on."""
    await ensure_topics_for(iso)
    for i in range(300):  # nothing of the simulated source parses any more
        await producer.send(iso.raw_topic(), b'{"sym": "AAPL", "px": %d}' % i, key=b"AAPL")
    t0 = datetime(2024, 5, 29, 14, 0, tzinfo=UTC)
    for i in range(200):  # the yahoo source is fine
        ts = (t0 + timedelta(seconds=i)).isoformat()
        good = orjson.dumps({"symbol": "MSFT", "timestamp": ts, "source": "yahoo", "data_type": "trade",
                             "price": 400.0 + i / 100, "volume": 10})
        await producer.send(iso.raw_topic("yahoo"), good, key=b"MSFT")
    await producer.flush()
    w = workers(TICKFLOW_VALIDATION__CIRCUIT_BREAKER_WINDOW="100")

    await wait_until(lambda: "circuit breaker: source simulated" in w.log_text(), 90, "the breaker to trip")
    await wait_for_rows(iso, pg, 199, "the other source's rows to land")
    assert w.alive(), "the worker must stay up: only the failing source is paused"
    assert await pg_count(iso, pg) == 200
    assert await read_topic(iso.bootstrap, iso.topic("rejected")) == []  # nothing dead-lettered, nothing committed


def _stopped(pid: int) -> bool:
    """The process is stopped (state T in /proc/<pid>/stat), not merely idle."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "T"
    except OSError:
        return False


async def test_paused_worker_does_not_lose_or_double_rows(iso, workers, producer, pg) -> None:
    """A worker stops itself (SIGSTOP, streams/faults.py) with a write batch in flight: its rows are committed in
    PostgreSQL, its offsets are not. Past the 30 s session timeout the other worker owns every partition of both
    stages; woken up (SIGCONT), the zombie goes on to commit that batch's offsets, and the group refuses the
    commit. The new owner re-reads the batch: nothing lost, nothing written twice."""
    await ensure_topics_for(iso)
    inputs = fault_inputs(seed=47)
    messages = inputs.messages
    raw, clean = iso.raw_topic(), iso.topic("clean")
    raw_parts = {f"{raw}[{p}]" for p in range(iso.catalog.raw("simulated").partitions)}
    clean_parts = {f"{clean}[{p}]" for p in range(iso.catalog.one("clean").partitions)}
    point = "write.before_offset_commit"
    a = workers("a", TICKFLOW_FAULT_POINT=f"{point}@3:stop")
    b = workers("b")

    def split() -> bool:
        return all(bool(mine and theirs and mine | theirs == parts)
                   for topic, stage, parts in ((raw, "validate", raw_parts), (clean, "write", clean_parts))
                   for mine, theirs in [(a.owned(topic, stage), b.owned(topic, stage))])

    await wait_until(split, 120, "both workers to own raw and clean partitions")
    a_before = a.owned(clean, "write")
    third = len(messages) // 3
    feeder = asyncio.create_task(produce_paced(producer, raw, messages[:2 * third], 0, every=0.3))
    try:
        # a's third write batch: rows committed, offsets not; a stops itself there.
        await wait_until(lambda: _stopped(a.pid), 120, f"the worker to stop itself at {point}")
        stopped_at = time.monotonic()
        assert f"fault point {point} reached (3): SIGSTOP" in a.log_text()
        try:
            # Past the stages' 30 s session timeout: b must own every partition of both stages, a's included.
            await wait_until(lambda: b.owned(raw, "validate") == raw_parts
                             and b.owned(clean, "write") == clean_parts, 120,
                             "b to take over the paused worker's partitions")
            assert _stopped(a.pid), "the zombie must still be stopped when b took over"
            # Surely past Faust's own 30 s session timeout too, so the woken worker must know its table is stale.
            await asyncio.sleep(max(0.0, stopped_at + 36 - time.monotonic()))
        finally:
            os.kill(a.pid, signal.SIGCONT)
        await feeder
    finally:
        feeder.cancel()
    await produce_all(producer, raw, messages[2 * third:], 2 * third)
    assert a_before and a_before < clean_parts

    # Awake, the zombie's write stage commits its stale batch's offsets with its old membership: refused by the
    # group coordinator (streams/stages/base.py logs it and counts it in /health's commit_failures).
    await wait_until(lambda: "write: commit refused" in a.log_text(), 60, "the zombie's late commit to be refused")
    await check_oracles(iso, pg, inputs, "worker stopped (SIGSTOP) mid-batch past session timeout")
    # Its metrics agent stopped writing its stale copy of the table to the changelog (streams/stages/metrics.py
    # PauseFence): a restore taking that copy as the last word is how the sink's duplicate count once went back.
    assert "is lost, the metrics table is not written until the worker rejoins" in a.log_text()
    # Awake, the zombie still believed it owned the metrics table for a few seconds: its stale snapshots must
    # not be stored between the new owner's.
    assert snapshots_going_back(await stored_snapshots(iso, pg)) == []
    assert b.alive() and a.alive()
    _, health = a.get("/health")
    assert health["stages"]["write"]["commit_failures"] >= 1, health["stages"]["write"]


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


@pytest.mark.parametrize("exactly_once", [False, True], ids=["at-least-once", "EOS"])
async def test_a_stage_whose_coordinator_lookup_parks_gets_a_new_consumer(iso, workers, producer, pg,
                                                                          exactly_once: bool) -> None:
    """The stall CI saw after a broker restart, placed exactly: at its second batch's commit the validate stage's
    consumer forgets its coordinator and its lookup never returns (streams/faults.py `:park`). The stage replaces
    the consumer after worker.consumer_replace_after_seconds, and nothing is lost or, with exactly-once,
    duplicated."""
    await ensure_topics_for(iso)
    inputs = fault_inputs(seed=83)
    point = "validate.before_offset_commit"
    w = workers("w1", TICKFLOW_FAULT_POINT=f"{point}@2:park", TICKFLOW_WORKER__CONSUMER_REPLACE_AFTER_SECONDS="15",
                TICKFLOW_KAFKA__EXACTLY_ONCE=str(exactly_once).lower())
    half = len(inputs.messages) // 2
    await produce_all(producer, iso.raw_topic(), inputs.messages[:half])
    await wait_until(lambda: "replacing its consumer" in w.log_text() or not w.alive(), 120,
                     "the stage to replace its consumer")
    assert f"fault point {point} reached (2): park" in w.log_text(), "the fault never fired: the test tested nothing"
    await produce_all(producer, iso.raw_topic(), inputs.messages[half:], half)  # to the new consumer
    mode = "exactly-once" if exactly_once else "at-least-once"
    await check_oracles(iso, pg, inputs, f"validate's coordinator lookup parked, consumer replaced, {mode}")
    assert w.alive()


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
