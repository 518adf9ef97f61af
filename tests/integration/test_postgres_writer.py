"""The PostgreSQL writer on the real server: idempotent migrations, COPY + upsert, duplicates counted,
errors sorted into retriable and data errors."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, date, datetime, timedelta, timezone

import asyncpg
import orjson
import pytest

from sinks import postgres
from sinks.postgres import (
    SMALL_BATCH_ROWS,
    PostgresTickWriter,
    anomaly_row,
    dead_letter_row,
    loads_record,
    row_from_record,
)
from sinks.schema import MARKET_DATA_COLUMNS, MARKET_DATA_KEY, MIGRATIONS
from streams.errors import SinkError, SinkRefused, SinkUnavailable
from streams.models import MarketDataPoint
from streams.settings import PostgresSettings

_KEY = len(MARKET_DATA_KEY)


def settings_for(iso) -> PostgresSettings:
    return PostgresSettings(port=iso.pg["port"], host=iso.pg["host"], db_schema=iso.schema)


def rows(n: int, source: str = "simulated") -> list[tuple]:
    t0 = datetime(2024, 5, 1, 14, 30, tzinfo=UTC)
    out = []
    for i in range(n):
        p = MarketDataPoint(symbol="AAPL", timestamp=t0 + timedelta(milliseconds=i), source=source,
                            price=100 + i / 100, volume=10, item_id=str(i), metadata={"i": i})
        out.append(row_from_record(orjson.loads(p.to_json())))
    return out


async def test_migrate_twice_write_and_replay(iso, pg) -> None:
    w = PostgresTickWriter(settings_for(iso))
    await w.migrate()
    await w.migrate()  # idempotent
    await w.start()
    try:
        batch = rows(1500) + rows(10, source="other")
        r1 = await w.write(batch)
        assert (r1.inserted, r1.updated, r1.duplicates) == (1510, 0, 0)
        assert r1.inserted_by_source == {"simulated": 1500, "other": 10}
        r2 = await w.write(batch[:700])  # a replay after a crash
        assert (r2.inserted, r2.updated, r2.duplicates) == (0, 0, 700)
        assert r2.duplicates_by_source == {"simulated": 700}
        assert await pg.fetchval(f"SELECT count(*) FROM {iso.schema}.market_data") == 1510
        meta = await pg.fetchval(
            f"SELECT metadata->>'i' FROM {iso.schema}.market_data WHERE item_id='42' AND source='simulated'")
        assert meta == "42"
        versions = await pg.fetch(f"SELECT version FROM {iso.schema}.schema_migrations")
        assert sorted(r["version"] for r in versions) == [v for v, _ in MIGRATIONS]
    finally:
        await w.stop()


async def test_data_error_is_not_retriable_and_outage_is(iso, pg) -> None:
    w = PostgresTickWriter(settings_for(iso))
    await w.start()
    try:
        bad = list(rows(1)[0])
        bad[5] = "not a number"  # price
        with pytest.raises(SinkError) as info:
            await w.write([tuple(bad)])
        assert not info.value.retriable
    finally:
        await w.stop()
    down = PostgresTickWriter(PostgresSettings(port=1, db_schema=iso.schema))
    with pytest.raises(SinkUnavailable) as info2:
        await down.start()
    assert info2.value.retriable


def snap(**counts: int) -> dict:
    base = {"processed": 0, "valid": 0, "rejected": 0, "written": 0, "duplicates": 0, "throughput_per_sec": 1.5,
            "avg_latency_ms": 2.0, "p50_latency_ms": 1.0, "p95_latency_ms": None, "p99_latency_ms": 9.0,
            "rejected_by_rule": {"price_positive": 1}}
    return {**base, **counts}


async def test_metrics_snapshots_of_a_cluster_never_go_back(iso, pg) -> None:
    """A worker woken from a pause writes its stale copy of the cluster's table: fenced out, per source and per
    counter, by the newest snapshot of the same app in the window; other apps and the unfenced path are not."""
    w = PostgresTickWriter(settings_for(iso))
    await w.migrate()
    await w.start()
    q = f"{iso.schema}.data_quality_metrics"
    try:
        owner = snap(processed=100, valid=90, rejected=10, written=80, duplicates=5)
        assert await w.write_metrics("app@b", {"s1": owner, "s2": snap(processed=7)}, cluster="app") == []
        zombie = {"s1": snap(processed=60, valid=50, rejected=10, written=40), "s2": snap(processed=7),
                  "s3": snap(processed=1)}
        assert await w.write_metrics("app@a", zombie, cluster="app") == ["s1"]  # s2 equal, s3 new: stored
        # one counter behind is enough (a write-only delta moves duplicates alone)
        assert await w.write_metrics("app@a", {"s1": {**owner, "duplicates": 4}}, cluster="app") == ["s1"]
        assert await w.write_metrics("app@a", {"s1": {**owner, "duplicates": 6}}, cluster="app") == []
        # another app with the same prefix, and the unfenced in-process path, are not fenced by app's rows
        assert await w.write_metrics("app2@x", {"s1": snap(processed=1)}, cluster="app2") == []
        assert await w.write_metrics("app@a", {"s1": snap(processed=2)}) == []
        rows_ = await pg.fetch(f"SELECT worker, source, processed, duplicates, p95_latency_ms, rejected_by_rule "
                               f"FROM {q} ORDER BY id")
        assert [(r["worker"], r["source"], r["processed"], r["duplicates"]) for r in rows_] == [
            ("app@b", "s1", 100, 5), ("app@b", "s2", 7, 0), ("app@a", "s2", 7, 0), ("app@a", "s3", 1, 0),
            ("app@a", "s1", 100, 6), ("app2@x", "s1", 1, 0), ("app@a", "s1", 2, 0)]
        assert rows_[0]["p95_latency_ms"] is None and rows_[0]["rejected_by_rule"] == '{"price_positive": 1}'
        # past the window, an old higher snapshot no longer fences (a reset table starts counting again)
        await pg.execute(f"UPDATE {q} SET recorded_at = recorded_at - interval '10 minutes'")
        assert await w.write_metrics("app@a", {"s1": snap(processed=3)}, cluster="app") == []
        assert await w.write_metrics("app@a", {"s1": snap(processed=2)}, cluster="app",
                                     window_seconds=3600) == ["s1"]
    finally:
        await w.stop()


async def test_a_released_connection_keeps_its_session_but_no_open_transaction(iso, pg) -> None:
    """The pool's release sends no reset query (a round trip after every batch), and a transaction left open
    is still rolled back before the connection is handed out again."""
    w = PostgresTickWriter(settings_for(iso).model_copy(update={"pool_min": 1, "pool_max": 1}))
    await w.start()
    try:
        assert w.pool is not None
        r = await w.write(rows(SMALL_BATCH_ROWS + 5))  # a batch staged by COPY
        assert r.inserted == SMALL_BATCH_ROWS + 5
        async with w.pool.acquire() as conn:
            pid = conn.get_server_pid()
        last = await pg.fetchval("SELECT query FROM pg_stat_activity WHERE pid = $1", pid)
        assert "RESET ALL" not in last and "pg_advisory_unlock_all" not in last, last
        async with w.pool.acquire() as conn:
            await conn.execute("BEGIN")
            await conn.execute(f"CREATE TEMP TABLE left_open_{iso.schema} (x int)")
            assert conn.is_in_transaction()
        async with w.pool.acquire() as conn:
            assert conn.get_server_pid() == pid  # the same session, handed out again
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT to_regclass($1)", f"pg_temp.left_open_{iso.schema}") is None
        assert (await w.write(rows(SMALL_BATCH_ROWS + 8))).inserted == 3  # the staging table survived the releases
    finally:
        await w.stop()


async def test_async_commit_sessions_and_durable_waits_for_the_flush(iso, pg) -> None:
    """postgres.async_commit: the writer's sessions commit without waiting for the flush, a metrics snapshot still
    waits for it, and `durable` returns only once the WAL is flushed past every write that had returned."""
    w = PostgresTickWriter(settings_for(iso))
    await w.start()
    try:
        assert w.pool is not None
        for n in (SMALL_BATCH_ROWS + 5, 3):  # COPY through the staging table, and one JSON statement
            assert (await w.write(rows(n, source=f"s{n}"))).inserted == n
            written_to = await pg.fetchval("SELECT pg_current_wal_insert_lsn()::text")
            assert await w.durable() == 0
            assert await pg.fetchval("SELECT pg_current_wal_flush_lsn() >= $1::text::pg_lsn", written_to)
        async with w.pool.acquire() as conn:
            assert await conn.fetchval("SHOW synchronous_commit") == "off"
            async with conn.transaction():  # what write_metrics sets for its own transaction
                await conn.execute("SET LOCAL synchronous_commit = on")
                assert await conn.fetchval("SHOW synchronous_commit") == "on"
        fields = ("processed", "valid", "rejected", "written", "duplicates", "throughput_per_sec", "avg_latency_ms",
                  "p50_latency_ms", "p95_latency_ms", "p99_latency_ms")
        snapshot = {"s": {**dict.fromkeys(fields, 0), "rejected_by_rule": {}}}
        assert await w.write_metrics("w", snapshot) == []
        assert await w.write_metrics("w", snapshot, cluster="c") == []
        assert await pg.fetchval(f"SELECT count(*) FROM {iso.schema}.data_quality_metrics") == 2
    finally:
        await w.stop()
    sync = PostgresTickWriter(settings_for(iso).model_copy(update={"async_commit": False}))
    await sync.start()
    try:
        assert sync.pool is not None
        assert (await sync.write(rows(2, source="sync"))).inserted == 2
        assert await sync.pool.fetchval("SHOW synchronous_commit") == "on"
        assert await sync.durable() == 0 and not sync._unflushed
    finally:
        await sync.stop()


async def test_durable_counts_a_loss_when_a_connection_that_wrote_ended_before_the_flush_was_confirmed(
        iso, pg) -> None:
    """A crash of the server drops asynchronous commits not yet flushed and ends every backend: a connection that
    wrote and is gone before `durable` confirmed its writes counts as a loss (its caller reads them again)."""
    w = PostgresTickWriter(settings_for(iso).model_copy(update={"pool_min": 1, "pool_max": 1}))
    await w.start()
    try:
        assert w.pool is not None
        assert (await w.write(rows(3))).inserted == 3
        assert await w.durable() == 0
        assert (await w.write(rows(3, source="later"))).inserted == 3
        async with w.pool.acquire() as conn:
            pid = conn.get_server_pid()
        assert await pg.fetchval("SELECT pg_terminate_backend($1)", pid)
        for _ in range(50):  # the pool may hand the dead connection out once more before it opens a new one
            with contextlib.suppress(SinkUnavailable):
                if await w.durable() == 1:
                    break
            await asyncio.sleep(0.1)
        assert w.losses == 1
        assert (await w.write(rows(3, source="after"))).inserted == 3  # on a new connection
        assert await w.durable() == 1  # no new loss
    finally:
        await w.stop()


async def test_connections_our_pool_or_our_stop_closes_are_no_loss(iso, pg) -> None:
    """A clean stop logged "1 of 2 PostgreSQL connections that wrote ended before their writes were known flushed"
    and made the archive stage read its records again: the writer was stopped (its pool closed) while a stage still
    wrote, on a new pool, and its `durable` then found the old backends gone. And asyncpg replaced a connection
    after 50,000 queries, which read as a crash too. A backend that exits keeps its commits (only a crash of the
    server drops them)."""
    w = PostgresTickWriter(settings_for(iso).model_copy(update={"pool_min": 2, "pool_max": 2}))
    await w.start()
    try:
        assert w.pool is not None
        assert (w.pool._max_queries, w.pool._max_inactive_connection_lifetime) == (2**62, 0)  # never replaced
        assert (await w.write(rows(3))).inserted == 3
        assert w._unflushed  # written, not yet confirmed
        await w.stop()  # the worker's shutdown closes the pool ...
        assert (await w.write(rows(3, source="late"))).inserted == 3  # ... while a stage still writes: a new pool
        assert await w.durable() == 0 and w.losses == 0
    finally:
        await w.stop()


async def test_a_locked_market_data_holds_up_its_writes_only(iso, pg) -> None:
    """While another session holds market_data, a market_data write waits; dead letters and anomaly events
    are still stored on the pool's other connections (a new connection makes no staging table until it
    writes market_data: `CREATE TEMP TABLE ... LIKE market_data` would wait for the lock too)."""
    w = PostgresTickWriter(settings_for(iso).model_copy(update={"pool_min": 1, "pool_max": 3}))
    await w.start()
    blocker = await asyncpg.connect(**iso.pg)
    held = None
    try:
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute(f"LOCK TABLE {iso.schema}.market_data IN ACCESS EXCLUSIVE MODE")
        held = asyncio.create_task(w.write(rows(5)))  # takes the pool's one open connection, then waits
        await asyncio.sleep(0.5)
        assert not held.done()
        letter = dead_letter_row(topic="raw.x", partition=0, offset=1, key=b"k", value=b"{", timestamp_ms=0,
                                 headers=[("tickflow.rule", b"json")])
        event = {"symbol": "AAPL", "detector": "zscore", "source": "simulated", "kind": "price",
                 "record": {"timestamp": "2024-05-01T14:30:00+00:00"}, "detected_at": 1714574000.0}
        assert await asyncio.wait_for(w.write_dead_letters([letter]), 10) == 1  # a new connection, not held up
        assert await asyncio.wait_for(w.write_anomalies([anomaly_row(event)]), 10) == 1
        assert not held.done()
        await tx.rollback()
        assert (await asyncio.wait_for(held, 10)).inserted == 5
        # Whichever connection the pool hands out next makes its staging table with its first staged batch.
        n = SMALL_BATCH_ROWS + 1
        assert [(await w.write(rows(n + k))).inserted for k in (0, 2, 4)] == [n - 5, 2, 2]
    finally:
        if held is not None and not held.done():
            held.cancel()
        await blocker.close()
        await w.stop()



@pytest.mark.parametrize("way", ["json", "staged", "records"])
async def test_every_column_round_trips_both_ways_in(iso, pg, monkeypatch: pytest.MonkeyPatch, way: str) -> None:
    """A small batch goes in as one JSON parameter, a larger one by COPY, and the clean records' own JSON
    (write_json) is parsed by the server: all store every column as row_from_record builds it, flags
    (text[]), metadata, dates, revisions and NULLs included."""
    if way in ("staged", "records"):  # records: no batch small enough to be written as rows
        monkeypatch.setattr(postgres, "SMALL_BATCH_ROWS", 0)
    t0 = datetime(2024, 5, 1, 14, 30, tzinfo=UTC)
    flags = ['quote"d', "{brace,comma}", "back\\slash", "ünïcode", "", "NULL"]
    points = [
        MarketDataPoint(symbol="AAPL", timestamp=t0, source="s", price=1.5, volume=0, item_id="a",
                        flags=flags, metadata={"n": [1, {"k": None}], "s": "x"}),
        MarketDataPoint(symbol="AAPL", timestamp=t0, source="s", data_type="bar", interval="1d", open=1.0,
                        high=2.0, low=0.5, close=1.25, volume=10.0),
        MarketDataPoint(symbol="GDP", timestamp=t0, source="fred", data_type="economic", value=3.25,
                        realtime_start=t0.date()),
        MarketDataPoint(symbol="AAPL", timestamp=t0, source="news", data_type="news", headline="h", text="t",
                        url="https://example.com/a?b=c", sentiment=-0.5, item_id="n1"),
        MarketDataPoint(symbol="AAPL", timestamp=datetime(2024, 5, 1, 20, 0, 0, 123456,
                                                          tzinfo=timezone(timedelta(hours=5, minutes=30))),
                        source="s", price=0.1 + 0.2, volume=1e300, item_id="b", sentiment=5e-324),
        MarketDataPoint(symbol="CPI", timestamp=t0, source="fred", data_type="economic", value=1.0,
                        realtime_start=date.min, realtime_end=date.max),
        MarketDataPoint(symbol="CPI", timestamp=t0, source="fred", data_type="economic", value=1.1,
                        realtime_start=t0.date(), realtime_end=date(2024, 6, 1), item_id="closed",
                        ingested_at=datetime(2024, 6, 2, 1, 2, 3, 456789, tzinfo=UTC)),
        MarketDataPoint(symbol="AAPL", timestamp=t0, source="q", data_type="quote", bid=1.0, ask=1.5,
                        bid_size=2, ask_size=3, ingested_at=datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
                        metadata={"big": 10**30, "tiny": 1.5e-7, "esc": "a\"b\\c\n\u00e9"}),
    ]
    batch = [row_from_record(loads_record(p.to_json())) for p in points]
    w = PostgresTickWriter(settings_for(iso))
    await w.start()
    try:
        if way == "records":
            result = await w.write_json([p.to_json() for p in points])
            assert result.ingested_by_source == {"fred": [1717290123.456789], "q": [-1e-06]}
        else:
            result = await w.write(batch)
        assert result.inserted == len(points)
        cols = ", ".join(f'"{c}"' for c in MARKET_DATA_COLUMNS)
        stored = {tuple(r[:_KEY]): r for r in await pg.fetch(f"SELECT {cols} FROM {iso.schema}.market_data")}
        # asyncpg reads infinity back as date.max, so only SQL tells it from the finite 9999-12-31.
        extremes = await pg.fetchrow(
            f"SELECT count(*) FILTER (WHERE realtime_end = 'infinity') AS open_end, "
            f"count(*) FILTER (WHERE realtime_start = '-infinity') AS open_start FROM {iso.schema}.market_data")
    finally:
        await w.stop()
    assert dict(extremes) == {"open_end": 1, "open_start": 1}
    assert stored[tuple(batch[0][:_KEY])]["flags"] == flags
    for built in batch:
        got = stored[tuple(built[:_KEY])]
        for c, want in zip(MARKET_DATA_COLUMNS, built, strict=True):
            have = got[c]
            if c == "metadata":
                have, want = orjson.loads(have), orjson.loads(want)
            assert have == want, (c, have, want)


@pytest.mark.parametrize("way", ["json", "staged"])
async def test_an_integer_beyond_a_double_is_refused_the_same_both_ways(iso, pg, monkeypatch: pytest.MonkeyPatch,
                                                                        way: str) -> None:
    """A clean record's number beyond a double's range stays an exact integer (streams/exactjson.py): JSON
    cannot carry it (orjson refuses it), so a small batch holding one goes by COPY like any other, and is
    refused as data either way (the write stage bisects it to that one record)."""
    if way == "staged":
        monkeypatch.setattr(postgres, "SMALL_BATCH_ROWS", 0)
    rows = [row_from_record(loads_record(
        f'{{"symbol": "AAPL", "timestamp": "2024-05-01T14:30:00Z", "source": "s", "item_id": "{i}", '
        f'"price": 1.0, "volume": {v}}}'.encode())) for i, v in enumerate((7, 10**400))]
    assert rows[1][MARKET_DATA_COLUMNS.index("volume")] == 10**400
    w = PostgresTickWriter(settings_for(iso))
    await w.start()
    try:
        with pytest.raises(SinkRefused):
            await w.write(rows)
        assert (await w.write(rows[:1])).inserted == 1
    finally:
        await w.stop()


async def test_write_json_refuses_what_is_not_one_clean_record_and_stores_nothing_of_its_batch(
        iso, pg, monkeypatch: pytest.MonkeyPatch) -> None:
    """write_json hands the server the records' bytes joined: a value holding two objects must not become two
    rows, an empty array none, and bytes that are not JSON or not UTF-8 are refused as data (SinkRefused, not
    retried), so the write stage bisects the batch down to them."""
    monkeypatch.setattr(postgres, "SMALL_BATCH_ROWS", 0)  # the server's parse, not the rows' way
    good = MarketDataPoint(symbol="AAPL", timestamp=datetime(2024, 5, 1, tzinfo=UTC), source="s", price=1.0,
                           item_id="ok").to_json()
    other = MarketDataPoint(symbol="MSFT", timestamp=datetime(2024, 5, 1, tzinfo=UTC), source="s", price=2.0,
                            item_id="x").to_json()
    w = PostgresTickWriter(settings_for(iso))
    await w.start()
    try:
        for bad in (good + b"," + other, b"[]", b"{not json", b'{"symbol": "\xff"}', b"[" + good + b"]", b"{}"):
            with pytest.raises(SinkRefused):
                await w.write_json([good, bad])
            assert await pg.fetchval(f"SELECT count(*) FROM {iso.schema}.market_data") == 0, bad
        assert (await w.write_json([good])).inserted == 1
    finally:
        await w.stop()


@pytest.mark.parametrize("small", [SMALL_BATCH_ROWS, 0])
@pytest.mark.parametrize("at_record", [0, 2])
async def test_write_json_writes_a_batch_with_a_nul_as_rows_with_the_nul_rule(
        iso, pg, monkeypatch: pytest.MonkeyPatch, small: int, at_record: int) -> None:
    """The server's JSON parse refuses U+0000 in text: a batch holding the escape in any of its records goes the
    rows' way, whose NUL rule replaces it, and still reports each record's ingested_at (small=0: a batch the
    server would otherwise parse)."""
    monkeypatch.setattr(postgres, "SMALL_BATCH_ROWS", small)
    at = datetime(2024, 5, 2, tzinfo=UTC)
    records = [MarketDataPoint(symbol="AAPL", timestamp=datetime(2024, 5, 1, tzinfo=UTC), source="s", price=1.0,
                               item_id=f"n{i}", flags=[f"a\x00{i}" if i == at_record else "b"],
                               ingested_at=at).to_json() for i in range(3)]
    assert b"\\u0000" in records[at_record]
    w = PostgresTickWriter(settings_for(iso))
    await w.start()
    try:
        result = await w.write_json(records)
    finally:
        await w.stop()
    assert result.inserted == 3 and result.ingested_by_source == {"s": [at.timestamp()] * 3}
    assert await pg.fetchval(f"SELECT flags FROM {iso.schema}.market_data WHERE item_id = $1",
                             f"n{at_record}") == [f"a\ufffd{at_record}"]


class _Spy:
    """A pool that names the INSERT each write_json statement was (the plain one or the ON CONFLICT one)."""

    def __init__(self, pool: asyncpg.Pool, writer: PostgresTickWriter) -> None:
        self._pool, self._writer, self.ran = pool, writer, []

    async def fetch(self, query: str, *args):  # type: ignore[no-untyped-def]
        if query == self._writer._insert_new_records:
            self.ran.append("plain")
        elif query == self._writer._upsert_records[0]:
            self.ran.append("on conflict")
        return await self._pool.fetch(query, *args)

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self._pool, name)


async def test_write_json_tries_the_plain_insert_first_and_the_on_conflict_one_after_a_stored_key(
        iso, pg, monkeypatch: pytest.MonkeyPatch) -> None:
    """New keys go in by the plain INSERT; a key stored, or twice in the batch, fails it whole (nothing of it
    stays) and the batch is written by the ON CONFLICT statement, as are the next OPTIMISTIC_AFTER batches (a
    replay conflicts batch after batch); a batch of those that meets a stored key starts the count again."""
    monkeypatch.setattr(postgres, "SMALL_BATCH_ROWS", 0)
    monkeypatch.setattr(postgres, "OPTIMISTIC_AFTER", 2)
    t0 = datetime(2024, 5, 1, tzinfo=UTC)

    def records(first: int, n: int) -> list[bytes]:
        return [MarketDataPoint(symbol="AAPL", timestamp=t0 + timedelta(seconds=i), source="s", price=1.0 + i,
                                item_id=str(i)).to_json() for i in range(first, first + n)]

    w = PostgresTickWriter(settings_for(iso))
    await w.start()
    spy = _Spy(w.pool, w)
    w.pool = spy  # type: ignore[assignment]
    try:
        steps = [
            (records(0, 5), (5, 0), ["plain"]),
            (records(0, 5), (0, 5), ["plain", "on conflict"]),  # a replay: the plain INSERT fails whole
            (records(3, 4), (2, 2), ["on conflict"]),  # still careful; it met stored keys: the count starts again
            (records(7, 3), (3, 0), ["on conflict"]),
            (records(10, 3), (3, 0), ["on conflict"]),
            (records(13, 3), (3, 0), ["plain"]),  # OPTIMISTIC_AFTER batches without a conflict: plain again
            (records(16, 3) + records(16, 1), (3, 1), ["plain", "on conflict"]),  # a key twice in the batch
            (records(19, 2), (2, 0), ["on conflict"]),
        ]
        for batch, (inserted, duplicates), ran in steps:
            spy.ran.clear()
            result = await w.write_json(batch)
            assert (result.inserted, result.duplicates, spy.ran) == (inserted, duplicates, ran), batch
    finally:
        w.pool = spy._pool
        await w.stop()
    stored = await pg.fetch(f"SELECT item_id, price FROM {iso.schema}.market_data ORDER BY ts")
    assert [(r["item_id"], r["price"]) for r in stored] == [(str(i), 1.0 + i) for i in range(21)]


async def test_write_json_parses_in_the_server_only_above_the_small_batch_size(iso, pg, monkeypatch) -> None:
    """Up to SMALL_BATCH_ROWS records go the rows' way (the stage's decode, then one JSON parameter of rows),
    where the server's parse would cost more time than it saves; above it, the records' own JSON."""
    seen: list[str] = []
    w = PostgresTickWriter(settings_for(iso))
    real = w._write_json_as_rows

    async def as_rows(records):  # type: ignore[no-untyped-def]
        seen.append("rows")
        return await real(records)

    monkeypatch.setattr(w, "_write_json_as_rows", as_rows)
    points = [MarketDataPoint(symbol="AAPL", timestamp=datetime(2024, 5, 1, tzinfo=UTC), source="s", price=1.0,
                              item_id=str(i)).to_json() for i in range(SMALL_BATCH_ROWS + 1)]
    await w.start()
    try:
        assert (await w.write_json(points[:SMALL_BATCH_ROWS])).inserted == SMALL_BATCH_ROWS
        assert seen == ["rows"]
        assert (await w.write_json(points)).duplicates == SMALL_BATCH_ROWS and seen == ["rows"]
    finally:
        await w.stop()
    assert await pg.fetchval(f"SELECT count(*) FROM {iso.schema}.market_data") == SMALL_BATCH_ROWS + 1
