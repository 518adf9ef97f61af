"""Retention against the real PostgreSQL (streams/stages/retention.py, sinks/postgres.py delete_older_than):
rows older than sink.data_retention_days go from every table it names (market_data, data_quality_metrics,
anomaly_events, dead_letters) in bounded batches, newer rows stay; a pass's DELETEs stop at the first short batch;
and a real worker's leader timer does it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest

from sinks.postgres import PostgresTickWriter, anomaly_row, dead_letter_row, row_from_record
from streams.models import MarketDataPoint
from streams.settings import PostgresSettings
from tests.integration.conftest import Isolation, ensure_topics_for, wait_until

NOW = datetime.now(UTC).replace(microsecond=0)
DAYS = 30
OLD = 1_050  # more than ten batches of 100, not a multiple of the batch
NEW = 60


def _tick(i: int, ts: datetime) -> tuple[Any, ...]:
    p = MarketDataPoint(symbol="RETN", timestamp=ts, source="simulated", price=10.0 + i / 1000, volume=1,
                        item_id=f"r-{i}")
    return row_from_record(orjson.loads(p.to_json()))


def _event(i: int, ts: datetime) -> tuple[Any, ...]:
    return anomaly_row({"symbol": "RETN", "detector": "price.zscore", "source": "simulated", "kind": "point",
                        "score": 9.0, "threshold": 5.0, "message": "x", "detected_at": ts.timestamp(),
                        "record": {"timestamp": ts.isoformat(), "item_id": f"a-{i}"}, "details": {}})


def _letter(i: int, ts: datetime) -> tuple[Any, ...]:
    headers = [("tickflow.source.topic", b"raw.simulated"), ("tickflow.source.partition", b"0"),
               ("tickflow.source.offset", str(i).encode()), ("tickflow.rule", b"schema.not_json"),
               ("tickflow.stage", b"validate"), ("tickflow.time", str(ts.timestamp()).encode())]
    return dead_letter_row(topic="ticks.rejected", partition=0, offset=i, key=b"RETN", value=b"{bad",
                           timestamp_ms=int(ts.timestamp() * 1000), headers=headers)


@pytest.fixture
async def filled(iso: Isolation, pg: asyncpg.Connection) -> AsyncIterator[PostgresTickWriter]:
    """The test's schema, migrated, with OLD rows well past the retention age and NEW ones inside it, in
    every table retention covers. No market_data partition is made for their months, so the rows sit in the
    DEFAULT partition and retention's batched DELETE (not a whole-partition drop) removes them."""
    writer = PostgresTickWriter(PostgresSettings(host=iso.pg["host"], port=iso.pg["port"], user=iso.pg["user"],
                                                 database=iso.pg["database"], db_schema=iso.schema))
    await writer.start()
    old = [NOW - timedelta(days=DAYS + 1, seconds=i) for i in range(OLD)]
    new = [NOW - timedelta(days=DAYS - 1, seconds=i) for i in range(NEW)]
    stamps = [*old, *new]
    assert (await writer.write([_tick(i, ts) for i, ts in enumerate(stamps)])).inserted == OLD + NEW
    assert await writer.write_anomalies([_event(i, ts) for i, ts in enumerate(stamps)]) == OLD + NEW
    assert await writer.write_dead_letters([_letter(i, ts) for i, ts in enumerate(stamps)]) == OLD + NEW
    await pg.executemany(
        f"INSERT INTO {iso.schema}.data_quality_metrics (recorded_at, worker, source, processed, valid, rejected,"
        " written, duplicates, throughput_per_sec) VALUES ($1, 'w', 'simulated', $2, $2, 0, $2, 0, 1.0)",
        [(ts, i) for i, ts in enumerate(stamps)])
    yield writer
    await writer.stop()


TABLES = {"market_data": "ts", "data_quality_metrics": "recorded_at", "anomaly_events": "ts", "dead_letters": "ts"}


async def _counts(pg: asyncpg.Connection, schema: str) -> dict[str, tuple[int, int]]:
    """Per table: (rows older than the cutoff, rows newer)."""
    cutoff = NOW - timedelta(days=DAYS)
    out = {}
    for table, col in TABLES.items():
        r = await pg.fetchrow(f"SELECT count(*) FILTER (WHERE {col} < $1) AS old, "
                              f"count(*) FILTER (WHERE {col} >= $1) AS new FROM {schema}.{table}", cutoff)
        out[table] = (r["old"], r["new"])
    return out


async def test_retention_deletes_old_rows_of_every_table_in_bounded_batches(iso, pg, filled) -> None:
    from streams.settings import SinkSettings
    from streams.stages.db import SharedWriter
    from streams.stages.retention import apply_retention

    assert await _counts(pg, iso.schema) == {t: (OLD, NEW) for t in TABLES}
    statements: list[int] = []
    execute = filled._execute_planned

    async def counting(sql: str, *args: Any) -> str:
        """The real statement; each DELETE's row count is noted."""
        status = await execute(sql, *args)
        if sql.startswith("DELETE"):
            statements.append(int(status.rsplit(" ", 1)[-1]))
        return status

    filled._execute_planned = counting  # type: ignore[method-assign]
    sink = SinkSettings(data_retention_days=DAYS, retention_batch_rows=100)
    deleted = await apply_retention(SharedWriter(filled), sink, now=NOW)

    assert deleted == 4 * OLD
    del filled._execute_planned
    assert await _counts(pg, iso.schema) == {t: (0, NEW) for t in TABLES}
    assert max(statements) == 100, statements  # never more than one batch per statement
    assert len(statements) >= 4 * (OLD // 100 + 1), statements  # each table took more than ten batches
    survivors = await pg.fetchval(f"SELECT count(DISTINCT item_id) FROM {iso.schema}.market_data")
    assert survivors == NEW
    # Nothing more to do: a second pass deletes nothing; 0 days keeps everything.
    assert await apply_retention(SharedWriter(filled), sink, now=NOW) == 0
    assert await apply_retention(SharedWriter(filled), SinkSettings(data_retention_days=0), now=NOW + timedelta(
        days=365)) == 0
    assert await _counts(pg, iso.schema) == {t: (0, NEW) for t in TABLES}


async def test_worker_leader_applies_retention(iso, pg, filled, workers) -> None:
    """The leader's timer (retention_check_seconds) runs it in a real worker, batch size from the settings."""
    await ensure_topics_for(iso)
    w = workers(TICKFLOW_SINK__DATA_RETENTION_DAYS=str(DAYS), TICKFLOW_SINK__RETENTION_CHECK_SECONDS="2",
                TICKFLOW_SINK__RETENTION_BATCH_ROWS="100")

    async def done() -> bool:
        c = await _counts(pg, iso.schema)
        return all(old == 0 for old, _ in c.values())

    await wait_until(done, 180, "the worker's retention to delete every old row")
    counts = await _counts(pg, iso.schema)
    # data_quality_metrics also gains the worker's own (new) snapshots; the other tables keep exactly NEW.
    assert {t: c for t, c in counts.items() if t != "data_quality_metrics"} == {
        t: (0, NEW) for t in TABLES if t != "data_quality_metrics"}
    assert counts["data_quality_metrics"][1] >= NEW
    assert "retention: deleted" in w.log_text()
    assert w.alive()


# The statements of one pass (delete_older_than): per table, DELETEs of at most BATCH rows each, repeated until one
# deletes fewer (a full batch may hide more), and not one more.
CUTOFF = NOW - timedelta(days=DAYS)
BATCH = 100
OLD_TICKS = 250  # two full batches and a short one
OLD_EVENTS = 200  # exactly two batches: the third DELETE, of 0 rows, is how the loop knows it is done
NEW_ROWS = 20


def _stamps(old: int) -> list[datetime]:
    return ([CUTOFF - timedelta(days=1, seconds=i) for i in range(old)]
            + [CUTOFF + timedelta(days=1, seconds=i) for i in range(NEW_ROWS)])


@pytest.fixture
async def writer(iso: Isolation, pg: asyncpg.Connection) -> AsyncIterator[PostgresTickWriter]:
    """The test's schema with OLD_TICKS old ticks (in DEFAULT: no partition for their month, so they go by the
    batched DELETE), OLD_EVENTS old anomaly events, NEW newer rows of each, and no metrics nor dead letters."""
    w = PostgresTickWriter(PostgresSettings(host=iso.pg["host"], port=iso.pg["port"], user=iso.pg["user"],
                                            database=iso.pg["database"], db_schema=iso.schema))
    await w.start()
    ticks, events = _stamps(OLD_TICKS), _stamps(OLD_EVENTS)
    assert (await w.write([_tick(i, ts) for i, ts in enumerate(ticks)])).inserted == len(ticks)
    assert await w.write_anomalies([_event(i, ts) for i, ts in enumerate(events)]) == len(events)
    yield w
    await w.stop()


def recording(w: PostgresTickWriter) -> list[tuple[str, int, int]]:
    """Each DELETE the writer runs, as (table, LIMIT bound, rows deleted), the statement itself still run."""
    statements: list[tuple[str, int, int]] = []
    execute = w._execute_planned

    async def counting(sql: str, *args: Any) -> str:
        status = await execute(sql, *args)
        if sql.startswith("DELETE"):
            table = sql.split(" ", 3)[2].rsplit(".", 1)[-1]
            statements.append((table, args[-1], int(status.rsplit(" ", 1)[-1])))
        return status

    w._execute_planned = counting  # type: ignore[method-assign]
    return statements


async def test_a_pass_deletes_in_bounded_batches_until_a_short_one_and_stops_there(iso, pg, writer) -> None:
    """Per table: DELETEs of at most BATCH, until one deletes fewer (0 after an exact multiple), and no more."""
    statements = recording(writer)
    assert await writer.delete_older_than(CUTOFF, BATCH) == OLD_TICKS + OLD_EVENTS
    assert statements == [
        ("market_data", BATCH, 100), ("market_data", BATCH, 100), ("market_data", BATCH, 50),
        ("data_quality_metrics", BATCH, 0),
        ("anomaly_events", BATCH, 100), ("anomaly_events", BATCH, 100), ("anomaly_events", BATCH, 0),
        ("dead_letters", BATCH, 0),
    ]
    for table in ("market_data", "anomaly_events"):
        assert await pg.fetchval(f"SELECT count(*) FROM {iso.schema}.{table} WHERE ts < $1", CUTOFF) == 0
        assert await pg.fetchval(f"SELECT count(*) FROM {iso.schema}.{table} WHERE ts >= $1", CUTOFF) == NEW_ROWS


async def test_a_pass_with_nothing_old_runs_one_empty_delete_per_table(iso, pg, writer) -> None:
    """Nothing older than the cutoff: one empty DELETE per table, and the pass ends (no loop on nothing)."""
    statements = recording(writer)
    assert await writer.delete_older_than(CUTOFF - timedelta(days=365), BATCH) == 0
    assert statements == [(table, BATCH, 0) for table in TABLES]


async def test_one_batch_never_deletes_more_than_its_bound(iso, pg, writer) -> None:
    """The LIMIT is the caller's batch_rows: with 1000, the 250 old ticks go in one statement."""
    statements = recording(writer)
    assert await writer.delete_older_than(CUTOFF, 1000) == OLD_TICKS + OLD_EVENTS
    assert [(t, n) for t, _, n in statements] == [("market_data", 250), ("data_quality_metrics", 0),
                                                  ("anomaly_events", 200), ("dead_letters", 0)]
