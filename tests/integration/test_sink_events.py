"""Anomaly events and dead letters in PostgreSQL (issue 14), on the real server: stored once per natural key
whatever the replays, NUL-safe, the original bytes kept, queryable by symbol, source, detector or rule, and
time through their indexes."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson
import pytest

from sinks.postgres import PostgresTickWriter, anomaly_row, dead_letter_row
from sinks.schema import ANOMALY_COLUMNS
from streams.anomalies.core import Anomaly
from streams.settings import PostgresSettings
from streams.stages.detect import event_for
from streams.stages.publish import Rejection
from tests.integration.conftest import Isolation

T0 = datetime(2024, 5, 1, 14, 30, tzinfo=UTC)


@pytest.fixture
async def writer(iso: Isolation, pg: asyncpg.Connection) -> AsyncIterator[PostgresTickWriter]:
    w = PostgresTickWriter(PostgresSettings(host=iso.pg["host"], port=iso.pg["port"], db_schema=iso.schema))
    await w.start()
    yield w
    await w.stop()


def anomaly(symbol: str, detector: str, ts: datetime, source: str, score: float = 9.0, **rec: object) -> tuple:
    record = {"symbol": symbol, "source": source, "timestamp": ts.isoformat(), "price": 10.0, **rec}
    a = Anomaly(detector, symbol, score, 4.0, "tick", f"{detector} says so", record, {"z": score})
    # the JSON as it travels on ticks.anomalies
    return anomaly_row(orjson.loads(orjson.dumps(event_for(a, source), default=str)))


async def test_anomaly_events_idempotent_and_queryable(writer, pg, iso) -> None:
    q = iso.schema
    batch = [anomaly(sym, det, T0 + timedelta(minutes=m), src, score=m)
             for sym in ("AAPL", "MSFT") for det in ("zscore", "fat_finger") for m in range(5)
             for src in ("finnhub",)]
    batch.append(anomaly("AAPL", "zscore", T0, "yahoo"))  # same symbol/detector/ts, another source: its own row
    assert await writer.write_anomalies(batch) == len(batch)
    # a replay (a crash before the commit, a rebalance), also with a later detection time: nothing twice
    replay = [anomaly("AAPL", "zscore", T0, "finnhub", score=99.0), *batch[:7]]
    assert await writer.write_anomalies(replay) == 0
    assert await pg.fetchval(f"SELECT count(*) FROM {q}.anomaly_events") == len(batch)
    first = await pg.fetchrow(f"SELECT * FROM {q}.anomaly_events WHERE symbol = 'AAPL' AND detector = 'zscore' "
                              "AND source = 'finnhub' AND ts = $1", T0)
    assert first["score"] == 0.0 and first["threshold"] == 4.0 and first["kind"] == "tick"  # the first write stays
    assert orjson.loads(first["record"])["price"] == 10.0 and orjson.loads(first["details"]) == {"z": 0.0}
    assert abs(first["detected_at"].timestamp() - time.time()) < 600
    # by symbol, source, detector and time
    assert await pg.fetchval(f"SELECT count(*) FROM {q}.anomaly_events WHERE symbol = 'MSFT'") == 10
    assert await pg.fetchval(f"SELECT count(*) FROM {q}.anomaly_events WHERE source = 'yahoo'") == 1
    assert await pg.fetchval(f"SELECT count(*) FROM {q}.anomaly_events WHERE detector = 'fat_finger' "
                             "AND ts >= $1", T0 + timedelta(minutes=3)) == 4
    # NUL in a message or the record is stored as U+FFFD, not refused
    assert await writer.write_anomalies([anomaly("A\x00B", "zscore", T0, "s", note="x\x00y")]) == 1
    nul = await pg.fetchrow(f"SELECT symbol, record FROM {q}.anomaly_events WHERE source = 's'")
    assert nul["symbol"] == "A\ufffdB" and orjson.loads(nul["record"])["note"] == "x\ufffdy"


async def test_anomaly_indexes_serve_symbol_source_detector_and_time(writer, pg, iso) -> None:
    await writer.write_anomalies([anomaly("AAPL", "zscore", T0, "finnhub")])
    await pg.execute("SET enable_seqscan = off")
    for where, index in (("symbol = 'AAPL' ORDER BY ts DESC", "anomaly_events_symbol_ts"),
                         ("source = 'x' ORDER BY ts DESC", "anomaly_events_source_ts"),
                         ("detector = 'x' ORDER BY ts DESC", "anomaly_events_detector_ts"),
                         ("ts > now() ORDER BY ts DESC", "anomaly_events_ts")):
        plan = "\n".join(r[0] for r in await pg.fetch(
            f"EXPLAIN SELECT * FROM {iso.schema}.anomaly_events WHERE {where} LIMIT 10"))
        assert index in plan, (where, plan)


def dead(offset: int, *, topic: str = "raw.finnhub.it", stage: str = "validate", rule: str = "price.positive",
         value: bytes = b'{"symbol": "AAPL", "price": -1}', key: bytes | None = b"AAPL",
         when: float | None = None) -> tuple:
    why = Rejection(stage, rule, f"{rule} failed", "RejectedRecord", topic, 2, offset,
                    [("traceparent", b"00-abc")])
    headers = why.headers()
    if when is not None:
        headers = [(k, v) for k, v in headers if k != "tickflow.time"] + [("tickflow.time", f"{when:.6f}".encode())]
    return dead_letter_row(topic="ticks.rejected.it", partition=0, offset=1000 + offset, key=key, value=value,
                           timestamp_ms=int(T0.timestamp() * 1000), headers=headers,
                           source_of_topic={"raw.finnhub.it": "finnhub"})


async def test_dead_letters_idempotent_bytes_kept_and_queryable(writer, pg, iso) -> None:
    q = iso.schema
    binary = bytes(range(256)) + b"\x00\xff"  # not JSON, not UTF-8, with NUL: kept as it was
    batch = [dead(i) for i in range(10)]
    batch += [dead(10, value=binary, key=None), dead(11, rule="schema.json", value=b"{not json")]
    batch.append(dead(0, topic="ticks.clean.it", stage="write", rule="write.refused",
                      value=b'{"symbol": "MSFT", "source": "yahoo", "price": 1}', key=b"MSFT"))
    assert await writer.write_dead_letters(batch) == len(batch)
    assert await writer.write_dead_letters([dead(i, when=time.time() + 60) for i in range(10)]) == 0  # replays
    assert await pg.fetchval(f"SELECT count(*) FROM {q}.dead_letters") == len(batch)
    raw = await pg.fetchrow(f'SELECT * FROM {q}.dead_letters WHERE "offset" = 10')
    assert bytes(raw["value"]) == binary and raw["key"] is None
    assert (raw["topic"], raw["partition"], raw["stage"], raw["source"], raw["symbol"]) == (
        "raw.finnhub.it", 2, "validate", "finnhub", None)
    assert raw["record_ts"] == T0 and abs(raw["ts"].timestamp() - time.time()) < 600
    headers = orjson.loads(raw["headers"])
    assert headers["tickflow.source.offset"] == "10" and headers["traceparent"] == "00-abc"
    w = await pg.fetchrow(f"SELECT * FROM {q}.dead_letters WHERE stage = 'write'")
    assert (w["source"], w["symbol"], w["rule"]) == ("yahoo", "MSFT", "write.refused")
    # by symbol, source, rule and time
    assert await pg.fetchval(f"SELECT count(*) FROM {q}.dead_letters WHERE symbol = 'AAPL'") == 11
    assert await pg.fetchval(f"SELECT count(*) FROM {q}.dead_letters WHERE source = 'finnhub' "
                             "AND rule = 'price.positive'") == 11
    assert await pg.fetchval(f"SELECT count(*) FROM {q}.dead_letters WHERE ts > now() - interval '1 hour'") == 13
    await pg.execute("SET enable_seqscan = off")
    for where, index in (("symbol = 'AAPL'", "dead_letters_symbol_ts"), ("source = 'x'", "dead_letters_source_ts"),
                         ("rule = 'x'", "dead_letters_rule_ts"), ("ts > now()", "dead_letters_ts")):
        plan = "\n".join(r[0] for r in await pg.fetch(
            f"EXPLAIN SELECT * FROM {q}.dead_letters WHERE {where} ORDER BY ts DESC LIMIT 10"))
        assert index in plan, (where, plan)


async def test_a_dead_letter_without_its_origin_headers_is_keyed_by_its_own_place(writer, pg, iso) -> None:
    row = dead_letter_row(topic="ticks.rejected.it", partition=3, offset=77, key=b"k", value=b"v",
                          timestamp_ms=None, headers=None)
    assert await writer.write_dead_letters([row, row]) == 1
    got = await pg.fetchrow(f'SELECT topic, "partition", "offset", rule, record_ts FROM {iso.schema}.dead_letters')
    assert tuple(got) == ("ticks.rejected.it", 3, 77, "", None)


async def test_retention_deletes_old_events_and_dead_letters(writer, pg, iso) -> None:
    old, new = T0 - timedelta(days=30), T0
    await writer.write_anomalies([anomaly("AAPL", "zscore", old, "s"), anomaly("AAPL", "zscore", new, "s")])
    await writer.write_dead_letters([dead(1, when=old.timestamp()), dead(2, when=new.timestamp())])
    deleted = await writer.delete_older_than(T0 - timedelta(days=1), 100)
    assert deleted == 2
    assert await pg.fetchval(f"SELECT min(ts) FROM {iso.schema}.anomaly_events") == new
    assert await pg.fetchval(f"SELECT min(ts) FROM {iso.schema}.dead_letters") == new


def bar_anomaly(interval: str, detected_at: float = 1714573800.0) -> tuple:
    """A bar of AAPL at T0, flagged by one detector: the 1m and the 1d bar differ only by interval."""
    record = {"symbol": "AAPL", "source": "yahoo", "timestamp": T0.isoformat(), "data_type": "bar",
              "interval": interval, "item_id": "", "open": 1.0, "high": 2.0, "low": 1.0, "close": 2.0}
    event = {"detector": "zscore", "symbol": "AAPL", "score": 9.0, "threshold": 4.0, "kind": "tick",
             "message": "far", "record": record, "details": {}, "source": "yahoo", "detected_at": detected_at}
    return anomaly_row(orjson.loads(orjson.dumps(event)))


async def test_bars_of_two_intervals_are_two_events(writer, pg, iso) -> None:
    """Migration 7: the flagged record's data_type, interval and item_id are part of the key."""
    assert await writer.write_anomalies([bar_anomaly("1m"), bar_anomaly("1d")]) == 2
    assert await writer.write_anomalies([bar_anomaly("1m", detected_at=1714573900.0), bar_anomaly("1d")]) == 0
    got = await pg.fetch(f'SELECT data_type, "interval", item_id FROM {iso.schema}.anomaly_events ORDER BY 2')
    assert [tuple(r) for r in got] == [("bar", "1d", ""), ("bar", "1m", "")]
    pk = await pg.fetchval(f"SELECT pg_get_constraintdef(oid) FROM pg_constraint "
                           f"WHERE conrelid = '{iso.schema}.anomaly_events'::regclass AND contype = 'p'")
    assert pk == 'PRIMARY KEY (symbol, detector, ts, source, data_type, "interval", item_id)'


async def test_migration_7_keeps_the_stored_events_and_grants(iso, pg) -> None:
    """A schema at migration 6 holding an event (stored under the old key) and a grant: after migrating, the
    row is there with its identity back-filled from its record, the grant stays, an exact re-send of that
    event is still a no-op and its 1d sibling is a new row."""
    from tests.integration.test_sink_partitions import migrate_through

    s = iso.schema
    await migrate_through(pg, s, 6)
    old = dict(zip(ANOMALY_COLUMNS, bar_anomaly("1m"), strict=True))
    await pg.execute(f"INSERT INTO {s}.anomaly_events (symbol, detector, ts, source, kind, score, threshold, "
                     "message, record, details, detected_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                     *(old[c] for c in ("symbol", "detector", "ts", "source", "kind", "score", "threshold",
                                        "message", "record", "details", "detected_at")))
    role = f"it_{iso.tag}_a"
    await pg.execute(f'CREATE ROLE "{role}"')
    try:
        await pg.execute(f'GRANT SELECT, INSERT ON {s}.anomaly_events TO "{role}"')
        w = PostgresTickWriter(PostgresSettings(host=iso.pg["host"], port=iso.pg["port"], db_schema=s))
        await w.start()
        try:
            assert await w.write_anomalies([bar_anomaly("1m", detected_at=1714574000.0)]) == 0
            assert await w.write_anomalies([bar_anomaly("1d")]) == 1
        finally:
            await w.stop()
        got = await pg.fetch(f'SELECT data_type, "interval", written_at FROM {s}.anomaly_events ORDER BY 2')
        assert [(r["data_type"], r["interval"]) for r in got] == [("bar", "1d"), ("bar", "1m")]
        privs = await pg.fetchval(
            "SELECT array_agg(p ORDER BY p) FROM unnest(ARRAY['SELECT','INSERT','UPDATE','DELETE']) p "
            f"WHERE has_table_privilege($1, '{s}.anomaly_events', p)", role)
        assert privs == ["INSERT", "SELECT"]
    finally:
        await pg.execute(f"DROP SCHEMA IF EXISTS {s} CASCADE")
        await pg.execute(f'DROP ROLE "{role}"')
