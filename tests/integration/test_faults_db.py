"""Database and source faults on the real stack (issue 15's targets), checked with the delivery contract's
oracles (tests/integration/oracles.py) once the flow has drained:

- PostgreSQL read-only for 30 s mid-flow, as after a failover (the worker's role gets
  default_transaction_read_only and its sessions are ended; then undone the same way);
- INSERT and UPDATE on market_data revoked from the worker's role for 20 s, then granted back;
- one source sending 60% bad records while another is fine: only that source's breaker opens.

The worker runs as a least-privilege writer role made from the README's SQL (test_postgres_roles.py), so a
fault aimed at that role touches no other test's session. Each fault is confirmed to have happened: rows
stop advancing, the write stage reports the database error in /health, and the log says it waited."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import asyncpg
import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from sinks.postgres import PostgresTickWriter
from streams.settings import PostgresSettings
from streams.tools.measure import read_topic
from tests.integration.conftest import Isolation, Worker, ensure_topics_for, wait_until
from tests.integration.oracles import check_oracles, fault_inputs, pg_count, produce_paced, wait_for_rows
from tests.integration.test_postgres_roles import _named, readme_roles_sql


@pytest.fixture
async def writer_role(iso: Isolation) -> AsyncIterator[dict[str, str]]:
    """The README's owner, writer and reader roles for this test's schema; the schema migrated by the owner and
    the writer granted what the README grants. Yields the role names."""
    names = {"owner": f"it_{iso.tag}_owner", "writer": f"it_{iso.tag}_writer", "reader": f"it_{iso.tag}_reader"}
    as_superuser, as_owner = readme_roles_sql()
    pg = {k: v for k, v in iso.pg.items() if k not in ("user", "password")}
    admin = await asyncpg.connect(**iso.pg)
    try:
        for stmt in as_superuser:
            await admin.execute(_named(stmt, iso, names))
    finally:
        await admin.close()
    try:
        await PostgresTickWriter(PostgresSettings(host=pg["host"], port=pg["port"], database=pg["database"],
                                                  user=names["owner"], db_schema=iso.schema)).migrate()
        owner = await asyncpg.connect(**pg, user=names["owner"])
        try:
            for stmt in as_owner:
                await owner.execute(_named(stmt, iso, names))
        finally:
            await owner.close()
        yield names
    finally:  # a new connection: the test's may have been ended (another session restarting the server)
        admin = await asyncpg.connect(**iso.pg)
        try:
            await admin.execute(f'DROP SCHEMA IF EXISTS "{iso.schema}" CASCADE')
            for role in names.values():
                if await admin.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role):
                    await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
                                        role)
                    await admin.execute(f'DROP OWNED BY "{role}" CASCADE')
                    await admin.execute(f'DROP ROLE "{role}"')
        finally:
            await admin.close()


def write_status(w: Worker) -> dict:
    _, body = w.get("/health")
    return body["stages"]["write"] if isinstance(body, dict) else {}


async def confirm_outage(iso: Isolation, pg: asyncpg.Connection, w: Worker, seconds: float,
                         error: str) -> tuple[int, int, int]:
    """During the fault: rows stop advancing and the write stage retries `error`; returns (rows at start,
    rows after a settle, rows at the end) and the most retries the stage reported."""
    at_start = await pg_count(iso, pg)
    retries = 0

    def retrying() -> dict | None:
        st = write_status(w)
        return st if st.get("database_retries", 0) > 0 and error in (st.get("database_error") or "") else None

    st = await wait_until(retrying, 30, f"the write stage to retry on {error}")
    settled = await pg_count(iso, pg)  # a batch committed just before the fault may land by now; no more after
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds - 2
    while loop.time() < end:
        await asyncio.sleep(2)
        retries = max(retries, write_status(w).get("database_retries", 0))
        assert w.alive(), "the worker died during the database fault"
    at_end = await pg_count(iso, pg)
    print(f"{error}: rows {at_start} at the fault, {settled} once retrying, {at_end} at its end; "
          f"{max(retries, st['database_retries'])} retries of the batch in flight")
    assert at_end == settled, f"rows were written while the database refused them ({settled} -> {at_end})"
    return at_start, settled, at_end


async def test_postgres_read_only_for_30_s_mid_flow(iso, writer_role, workers, producer, pg) -> None:
    await ensure_topics_for(iso)
    inputs = fault_inputs(seed=73)
    writer = writer_role["writer"]
    w = workers(TICKFLOW_POSTGRES__USER=writer)
    feeder = asyncio.create_task(produce_paced(producer, iso.raw_topic(), inputs.messages))
    try:
        await wait_for_rows(iso, pg, 500, "rows flowing as the writer role")
        # A failover's demoted primary: every new session of the role is read-only, the old ones are ended.
        await pg.execute(f'ALTER ROLE "{writer}" SET default_transaction_read_only = on')
        await pg.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", writer)
        try:
            await confirm_outage(iso, pg, w, 30, "ReadOnlySQLTransaction")
        finally:
            await pg.execute(f'ALTER ROLE "{writer}" RESET default_transaction_read_only')
            await pg.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", writer)
        await feeder
    finally:
        feeder.cancel()
    await check_oracles(iso, pg, inputs, "PostgreSQL read-only 30 s mid-flow")
    assert w.alive()
    assert "PostgreSQL unavailable" in w.log_text()
    assert "write.refused" not in w.log_text()


async def test_insert_revoked_then_granted(iso, writer_role, workers, producer, pg) -> None:
    await ensure_topics_for(iso)
    inputs = fault_inputs(seed=79)
    writer, owner = writer_role["writer"], writer_role["owner"]
    w = workers(TICKFLOW_POSTGRES__USER=writer)
    as_owner = await asyncpg.connect(**{k: v for k, v in iso.pg.items() if k not in ("user", "password")},
                                     user=owner)
    table = f'"{iso.schema}".market_data'
    feeder = asyncio.create_task(produce_paced(producer, iso.raw_topic(), inputs.messages))
    try:
        await wait_for_rows(iso, pg, 500, "rows flowing as the writer role")
        await as_owner.execute(f'REVOKE INSERT, UPDATE ON {table} FROM "{writer}"')
        try:
            await confirm_outage(iso, pg, w, 20, "InsufficientPrivilege")
        finally:
            await as_owner.execute(f'GRANT INSERT, UPDATE ON {table} TO "{writer}"')
        await feeder
    finally:
        feeder.cancel()
        await as_owner.close()
    await check_oracles(iso, pg, inputs, "INSERT/UPDATE revoked 20 s, then granted")
    assert w.alive()
    assert "PostgreSQL unavailable" in w.log_text()


BAD_EVERY = (0, 1, 3)  # of each 5 consecutive yahoo records: 60% bad, and so in every window of 10 or more


def yahoo_records(n: int) -> list[tuple[bytes, bytes]]:
    """n records of the yahoo source, 60% garbage (a format change), the rest valid ticks."""
    out = []
    for i in range(n):
        sym = ("MSFT", "NVDA", "AMZN")[i % 3]
        if i % 5 in BAD_EVERY:
            out.append((sym.encode(), b'{"sym": "%s", "px": %d}' % (sym.encode(), i)))
        else:
            ts = f"2024-05-29T14:{(i // 60) % 60:02d}:{i % 60:02d}+00:00"
            out.append((sym.encode(), orjson.dumps({"symbol": sym, "timestamp": ts, "source": "yahoo",
                                                    "data_type": "trade", "price": 400.0 + i / 100,
                                                    "volume": 10, "item_id": f"y-{i}"})))
    return out


async def committed(iso: Isolation, group: str, topic: str) -> dict[int, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=iso.bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp.partition: m.offset for tp, m in offsets.items() if tp.topic == topic and m.offset >= 0}


async def test_one_source_sending_60_percent_bad(iso, workers, producer, pg) -> None:
    """raw.yahoo turns 60% garbage while raw.simulated is fine: yahoo's breaker pauses only yahoo's partitions,
    re-trips after each cool-down while the cause remains (README "Troubleshooting"), and nothing of it is
    committed, written or dead-lettered meanwhile; every simulated input lands, once."""
    await ensure_topics_for(iso)
    inputs = fault_inputs(seed=83)
    yahoo = yahoo_records(1000)
    y_topic = iso.raw_topic("yahoo")
    for key, value in yahoo:
        await producer.send(y_topic, value, key=key)
    await producer.flush()
    w = workers(TICKFLOW_VALIDATION__CIRCUIT_BREAKER_WINDOW="100",
                TICKFLOW_VALIDATION__CIRCUIT_BREAKER_COOLDOWN_SECONDS="15")
    await wait_until(lambda: "circuit breaker: source yahoo" in w.log_text(), 120, "yahoo's breaker to trip")
    feeder = asyncio.create_task(produce_paced(producer, iso.raw_topic(), inputs.messages))
    paused_seen = False
    try:
        while not feeder.done():
            _, body = w.get("/health")
            if isinstance(body, dict):
                paused = {p["source"] for p in body.get("paused_sources", [])}
                assert "simulated" not in paused, body["paused_sources"]
                paused_seen |= paused == {"yahoo"}
            await asyncio.sleep(1)
        await feeder
    finally:
        feeder.cancel()
    assert paused_seen, "/health never listed yahoo under paused_sources"
    # A source still bad is read again after each 15 s cool-down and trips again.
    await wait_until(lambda: len(re.findall(r"circuit breaker: source yahoo", w.log_text())) >= 2, 60,
                     "yahoo's breaker to trip again after its cool-down")
    assert "consuming " in w.log_text() and "again after the 15 s cool-down" in w.log_text()
    assert "circuit breaker: source simulated" not in w.log_text()

    # The oracles: every simulated input lands once, and rows, clean records or dead letters of yahoo (none
    # carries a test index) would count as unexpected.
    await check_oracles(iso, pg, inputs, "one source 60% bad (per-source breaker)")
    assert await pg.fetchval(f"SELECT count(*) FROM {iso.schema}.market_data WHERE source = 'yahoo'") == 0
    assert not [r for r in await read_topic(iso.bootstrap, iso.topic("clean")) if b'"yahoo"' in (r.value or b"")]
    assert await committed(iso, f"{iso.env['TICKFLOW_WORKER__APP_ID']}-validate", y_topic) in ({}, {0: 0})
    assert await committed(iso, f"{iso.env['TICKFLOW_WORKER__APP_ID']}-validate", iso.raw_topic())
    assert w.alive()
