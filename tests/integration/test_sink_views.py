"""What users query, on the real server (issue 14): the brief's queries run as written (a `timestamp`
column on both tables, indexed for the brief's queries), and the views latest_prices and bars and the function
economic_as_of answer what an oracle computed from the rows sent."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest

from sinks.postgres import PostgresTickWriter, row_from_record
from streams.models import MarketDataPoint
from streams.settings import PostgresSettings
from tests.integration.conftest import Isolation
from tests.integration.test_sink_revisions import fred_polls

T0 = datetime(2024, 5, 1, 14, 30, tzinfo=UTC)


def row(**kw: Any) -> tuple:
    return row_from_record(orjson.loads(MarketDataPoint(**kw).to_json()))


@pytest.fixture
async def writer(iso: Isolation, pg: asyncpg.Connection) -> AsyncIterator[PostgresTickWriter]:
    w = PostgresTickWriter(PostgresSettings(host=iso.pg["host"], port=iso.pg["port"], db_schema=iso.schema))
    await w.start()
    await pg.execute(f'SET search_path TO "{iso.schema}"')  # the brief's SQL names no schema
    yield w
    await w.stop()


async def test_the_brief_queries_run_as_written(writer, pg) -> None:
    rng = random.Random(3)
    stamps = [T0 + timedelta(seconds=s) for s in rng.sample(range(10_000), 40)]
    await writer.write([row(symbol="AAPL", timestamp=ts, source="s", price=1.0 + i, item_id=str(i))
                        for i, ts in enumerate(stamps)]
                       + [row(symbol="MSFT", timestamp=T0 + timedelta(days=1), source="s", price=9.0)])
    got = await pg.fetch("SELECT * FROM market_data WHERE symbol = 'AAPL' ORDER BY timestamp DESC LIMIT 10;")
    assert [r["timestamp"] for r in got] == sorted(stamps, reverse=True)[:10]
    assert all(r["timestamp"] == r["ts"] and r["symbol"] == "AAPL" for r in got)
    # the brief's query reads the (symbol, timestamp) index in order: no sort of all the symbol's rows
    await pg.execute("SET enable_seqscan = off")
    plan = "\n".join(r[0] for r in await pg.fetch(
        "EXPLAIN SELECT * FROM market_data WHERE symbol = 'AAPL' ORDER BY timestamp DESC LIMIT 10"))
    await pg.execute("RESET enable_seqscan")
    # market_data is partitioned (migration 6): each partition's copy of the index, merged in order (a Merge
    # Append prints "Sort Key:"; a sort node prints "Sort  (cost=...")
    assert "_symbol_timestamp" in plan and "Sort  (" not in plan, plan
    # The brief's "recent market data", all symbols: newest first, read from each partition's "timestamp" index
    # (migration 10), not a scan and a sort of the whole table.
    brief = "SELECT symbol, timestamp, price, volume, source FROM market_data ORDER BY timestamp DESC LIMIT 100"
    got = await pg.fetch(brief + ";")
    assert [(r["symbol"], r["timestamp"]) for r in got] == (
        [("MSFT", T0 + timedelta(days=1))] + [("AAPL", ts) for ts in sorted(stamps, reverse=True)])
    await pg.execute("SET enable_seqscan = off")
    plan = "\n".join(r[0] for r in await pg.fetch("EXPLAIN " + brief))
    await pg.execute("RESET enable_seqscan")
    assert "_timestamp_idx" in plan and "symbol_timestamp" not in plan and "Sort  (" not in plan, plan

    snap = {"processed": 1, "valid": 1, "rejected": 0, "written": 1, "duplicates": 0, "throughput_per_sec": 1.0,
            "avg_latency_ms": None, "p50_latency_ms": None, "p95_latency_ms": None, "p99_latency_ms": None,
            "rejected_by_rule": {}}
    for i in range(12):
        await writer.write_metrics("w1", {f"src{i}": {**snap, "processed": i}})
    got = await pg.fetch("SELECT * FROM data_quality_metrics ORDER BY timestamp DESC LIMIT 10;")
    assert len(got) == 10 and all(r["timestamp"] == r["recorded_at"] for r in got)
    assert [r["timestamp"] for r in got] == sorted((r["timestamp"] for r in got), reverse=True)
    assert [r["processed"] for r in got] == list(range(11, 1, -1))  # recorded in order: the newest 10


async def test_latest_prices_per_symbol_and_source(writer, pg) -> None:
    rng = random.Random(11)
    want: dict[tuple[str, str], dict[str, Any]] = {}
    rows = []
    for sym in ("AAPL", "MSFT", "SPY"):
        for src in ("finnhub", "yahoo"):
            best_px: tuple[datetime, float, str] | None = None
            best_q: tuple[datetime, float] | None = None
            for i in range(30):
                ts = T0 + timedelta(seconds=rng.randrange(100_000))
                kind = rng.choice(["trade", "tick", "quote", "bar", "news"])
                price = round(rng.uniform(10, 500), 2)
                if kind in ("trade", "tick"):
                    rows.append(row(symbol=sym, timestamp=ts, source=src, data_type=kind, price=price, volume=1,
                                    item_id=f"{kind}{i}"))
                    if best_px is None or ts > best_px[0]:
                        best_px = (ts, price, kind)
                elif kind == "quote":
                    rows.append(row(symbol=sym, timestamp=ts, source=src, data_type="quote", bid=price - 0.1,
                                    ask=price + 0.1, item_id=f"q{i}", ingested_at=ts))
                    if best_q is None or ts > best_q[0]:
                        best_q = (ts, price)
                elif kind == "bar":  # newer than everything, but not a price of this view
                    rows.append(row(symbol=sym, timestamp=T0 + timedelta(days=9), source=src, data_type="bar",
                                    open=1, high=2, low=0.5, close=1.5, interval="1m", item_id=f"b{i}"))
                else:
                    rows.append(row(symbol=sym, timestamp=T0 + timedelta(days=9), source=src, data_type="news",
                                    headline="h", item_id=f"n{i}"))
            want[(sym, src)] = {"px": best_px, "q": best_q}
    rows.append(row(symbol="NEWSONLY", timestamp=T0, source="news", data_type="news", headline="x", item_id="1"))
    rng.shuffle(rows)
    await writer.write(rows)
    got = {(r["symbol"], r["source"]): r for r in await pg.fetch("SELECT * FROM latest_prices")}
    assert set(got) == {k for k, v in want.items() if v["px"] or v["q"]}  # no row for a news-only symbol
    for k, r in got.items():
        px, q = want[k]["px"], want[k]["q"]
        assert (r["price_ts"], r["price"], r["price_kind"]) == (px if px else (None, None, None)), (k, r)
        if q is None:
            assert r["quote_ts"] is None and r["bid"] is None
        else:
            assert (r["quote_ts"], r["bid"], r["ask"]) == (q[0], pytest.approx(q[1] - 0.1), pytest.approx(q[1] + 0.1))
        assert r["timestamp"] == max(t for t in (r["price_ts"], r["quote_ts"]) if t is not None)


async def test_bars_by_interval_show_the_newest_revision(writer, pg) -> None:
    rows = []
    for interval, step in (("1m", 1), ("5m", 5)):
        for t in range(0, 30, step):
            ts = T0 + timedelta(minutes=t)
            for rev in range(3):  # the forming bar re-sent as it grows
                rows.append(row(symbol="AAPL", timestamp=ts, source="yahoo", data_type="bar", open=100, high=101 + rev,
                                low=99, close=100 + rev, volume=10 * (rev + 1), interval=interval, item_id=interval,
                                ingested_at=ts + timedelta(seconds=rev + 1)))
    rows.append(row(symbol="AAPL", timestamp=T0, source="yahoo", price=1.0, item_id="t"))  # not a bar
    random.Random(5).shuffle(rows)
    for i in range(0, len(rows), 17):
        await writer.write(rows[i:i + 17])
    five = await pg.fetch("SELECT * FROM bars WHERE symbol = 'AAPL' AND interval = '5m' ORDER BY timestamp")
    assert [r["ts"] for r in five] == [T0 + timedelta(minutes=t) for t in range(0, 30, 5)]
    assert all((r["close"], r["high"], r["volume"]) == (102, 103, 30) for r in five)
    assert await pg.fetchval("SELECT count(*) FROM bars WHERE interval = '1m'") == 30
    assert await pg.fetchval("SELECT count(*) FROM bars") == 36


async def test_economic_as_of_one_value_per_date_as_known_then(writer, pg) -> None:
    dates, vintages = 20, 4
    sent, _ = fred_polls(dates, vintages)
    random.Random(2).shuffle(sent)
    for i in range(0, len(sent), 29):
        await writer.write(sent[i:i + 29])
    starts = [date(2024, 1, 1) + timedelta(days=30 * j) for j in range(vintages)]

    def expected(as_of: date) -> dict[date, float]:
        known = [j for j, s in enumerate(starts) if s <= as_of]
        if not known:
            return {}
        j = known[-1]  # vintage j is current from its start to the day before the next one's
        return {date(2023, 1, 1) + timedelta(days=d): 100.0 + d + j / 100 for d in range(dates)}

    probes = [date(2023, 12, 31), *starts, *(s - timedelta(days=1) for s in starts[1:]), date(2030, 1, 1)]
    for as_of in probes:
        got = await pg.fetch("SELECT * FROM economic_as_of('GDP', $1)", as_of)
        assert len(got) == len({r["observation_date"] for r in got}), as_of  # one row per date
        assert {r["observation_date"]: r["value"] for r in got} == expected(as_of), as_of
    assert await pg.fetchval("SELECT count(*) FROM economic_as_of('NOPE', '2030-01-01')") == 0

    # Two vintages open at once (the close of the old one not yet arrived): still one value per date, the
    # vintage that started last.
    obs = datetime(2022, 6, 1, tzinfo=UTC)
    for start, value in ((date(2022, 7, 1), 1.0), (date(2022, 8, 1), 2.0)):
        await writer.write([row(symbol="CPI", timestamp=obs, source="fred", data_type="economic", value=value,
                                realtime_start=start, realtime_end=date(9999, 12, 31), item_id=start.isoformat(),
                                ingested_at=T0)])
    assert [tuple(r) for r in await pg.fetch(
        "SELECT observation_date, value FROM economic_as_of('CPI', '2022-09-01')")] == [(date(2022, 6, 1), 2.0)]
    assert [tuple(r) for r in await pg.fetch(
        "SELECT observation_date, value FROM economic_as_of('CPI', '2022-07-15')")] == [(date(2022, 6, 1), 1.0)]


async def test_economic_as_of_reads_fred_by_vintage_rows(writer, pg) -> None:
    """FRED output_type 2/3 rows carry only their vintage date (realtime_start; realtime_end NULL, never
    closed): economic_as_of treats them as open (migration 9), so as of a date the newest vintage published by
    then answers, one row per observation date."""
    obs = [datetime(2022, 4, 1, tzinfo=UTC), datetime(2022, 5, 1, tzinfo=UTC)]
    vintages = [(date(2022, 5, 27), 1.0), (date(2022, 6, 24), 2.0), (date(2022, 7, 29), 3.0)]
    sent = [row(symbol="PCE", timestamp=ts, source="fred", data_type="economic", value=value + k / 10,
                realtime_start=start, item_id=start.isoformat(), ingested_at=T0,
                metadata={"output_type": 3})
            for k, ts in enumerate(obs) for start, value in vintages]
    await writer.write(sent)
    assert await pg.fetchval("SELECT count(*) FROM market_data WHERE symbol = 'PCE' AND realtime_end IS NULL") == 6

    async def as_of(day: date) -> list[tuple]:
        return [tuple(r) for r in await pg.fetch(
            "SELECT observation_date, value, realtime_start, realtime_end FROM economic_as_of('PCE', $1)", day)]

    assert await as_of(date(2022, 5, 26)) == []  # nothing published yet
    assert await as_of(date(2022, 6, 1)) == [(date(2022, 4, 1), 1.0, date(2022, 5, 27), date.max),
                                             (date(2022, 5, 1), 1.1, date(2022, 5, 27), date.max)]
    assert [v for _, v, _, _ in await as_of(date(2022, 6, 24))] == [2.0, 2.1]  # the vintage's first day
    assert [v for _, v, _, _ in await as_of(date(2030, 1, 1))] == [3.0, 3.1]
