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

from tests.integration.conftest import ROOT, ensure_topics_for, read_topic, wait_until
from tests.integration.test_pipeline import build_inputs

STACK = str(ROOT / "dev" / "stack.sh")


async def produce_all(producer, topic: str, messages: list[tuple[bytes, bytes]], start: int = 0) -> None:
    futures = [await producer.send(topic, v, key=k, headers=[("test.index", str(i).encode())])
               for i, (k, v) in enumerate(messages, start)]
    await asyncio.gather(*futures)


async def check_oracles(iso, pg, expected_rule: dict[int, str], valid_keys: set[tuple]) -> None:
    async def all_rows() -> bool:
        try:
            return await pg.fetchval(f"SELECT count(*) FROM {iso.schema}.market_data") >= len(valid_keys)
        except asyncpg.UndefinedTableError:
            return False

    await wait_until(all_rows, 240, "every valid row after the fault")
    rows = await pg.fetch(f"SELECT source, symbol, data_type, ts, item_id FROM {iso.schema}.market_data")
    got = [tuple(r) for r in rows]
    assert len(got) == len(set(got)), "a row was written twice"
    assert set(got) == valid_keys, "rows lost or invented"

    async def dead() -> dict[int, str] | None:
        by_index = {}
        for rec in await read_topic(iso.bootstrap, iso.topic("rejected")):
            h = {k: v.decode() for k, v in rec.headers}
            by_index[int(h["test.index"])] = h["tickflow.rule"]
        return by_index if set(by_index) >= set(expected_rule) else None

    try:
        seen = await wait_until(dead, 60, "every invalid record dead-lettered")
    except AssertionError:
        recs = await read_topic(iso.bootstrap, iso.topic("rejected"))
        have = {int(dict(r.headers)["test.index"].decode()) for r in recs}
        missing = sorted(set(expected_rule) - have)
        raw = await read_topic(iso.bootstrap, iso.raw_topic())
        info = [(r.partition, r.offset, dict(r.headers)["test.index"]) for r in raw
                if int(dict(r.headers)["test.index"].decode()) in missing[:20]]
        raise AssertionError(f"{len(missing)} missing of {len(expected_rule)}, {len(recs)} dead letters; "
                             f"first: {[(i, expected_rule[i]) for i in missing[:10]]}; raw: {info}") from None
    assert seen == expected_rule  # re-sent dead letters after a crash carry the same rule


async def test_kill_9_mid_flow_then_restart(iso, workers, producer, pg) -> None:
    await ensure_topics_for(iso)
    messages, expected_rule, valid_keys = build_inputs(seed=31)
    rng = random.Random(31)
    await produce_all(producer, iso.raw_topic(), messages[:5000])
    for round_ in range(3):
        w = workers(f"victim{round_}")

        async def some_rows(at_least: int = 200 * (round_ + 1)) -> bool:
            try:
                return await pg.fetchval(f"SELECT count(*) FROM {iso.schema}.market_data") > at_least
            except asyncpg.UndefinedTableError:
                return False

        await wait_until(some_rows, 90, "the worker to be writing")
        await asyncio.sleep(rng.uniform(0.0, 1.5))  # kill at a random point of a batch
        os.kill(w.pid, signal.SIGKILL)
        w.proc.wait(timeout=10)
        if round_ == 0:
            await produce_all(producer, iso.raw_topic(), messages[5000:], 5000)
    survivor = workers("survivor")
    await check_oracles(iso, pg, expected_rule, valid_keys)
    assert survivor.alive()


async def test_postgres_outage_during_flow(iso, workers, producer, pg) -> None:
    await ensure_topics_for(iso)
    messages, expected_rule, valid_keys = build_inputs(seed=37)
    w = workers()
    await produce_all(producer, iso.raw_topic(), messages[:3000])

    async def some_rows() -> bool:
        try:
            return await pg.fetchval(f"SELECT count(*) FROM {iso.schema}.market_data") > 100
        except asyncpg.UndefinedTableError:
            return False

    await wait_until(some_rows, 90, "the worker to be writing")
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
        await check_oracles(iso, conn, expected_rule, valid_keys)
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
    messages, expected_rule, valid_keys = build_inputs(seed=47)
    a, b = workers("a"), workers("b")

    def both_assigned() -> bool:
        owned = []
        for w in (a, b):
            status, h = w.get("/health")
            owned.append(status == 200 and bool(h["stages"]["validate"]["assigned"]))
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
    await check_oracles(iso, pg, expected_rule, valid_keys)
    assert b.alive()
