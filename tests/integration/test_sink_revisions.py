"""Revision semantics per kind on the real server (issue 14): immutable kinds keep their first write,
revisable kinds their newest revision whatever the order and the re-sends; FRED-like vintages end with
exactly one current vintage per date; the sink counts what it did.

FRED's open realtime_end (9999-12-31, Python's date.max) is stored as PostgreSQL's date 'infinity' (asyncpg
maps date.max to infinity), so "current" is `realtime_end = 'infinity'`."""

from __future__ import annotations

import random
import string
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest

from sinks import postgres
from sinks.base import WriteResult
from sinks.postgres import PostgresTickWriter, row_from_record
from sinks.schema import MARKET_DATA_COLUMNS
from streams.models import MarketDataPoint
from streams.settings import PostgresSettings
from tests.integration.conftest import Isolation

T0 = datetime(2024, 5, 1, 14, 30, tzinfo=UTC)
OPEN = date(9999, 12, 31)


class Row(tuple):
    """A row as row_from_record builds it, and the clean record's bytes it was built from."""

    raw: bytes


def row(**kw: Any) -> Row:
    raw = MarketDataPoint(**kw).to_json()
    built = Row(row_from_record(orjson.loads(raw)))
    built.raw = raw
    return built


class Way:
    """One way into market_data: rows (plain tuples) to write(), or, `records`, the clean records' bytes to
    write_json (parsed by the server), as the write stage drives it."""

    def __init__(self, writer: PostgresTickWriter, records: bool) -> None:
        self.writer = writer
        self.records = records

    async def write(self, rows: list[Row]) -> WriteResult:
        if self.records:
            return await self.writer.write_json([r.raw for r in rows])
        return await self.writer.write([tuple(r) for r in rows])


@pytest.fixture(params=["json", "staged", "records"])
async def writer(request: pytest.FixtureRequest, iso: Isolation, pg: asyncpg.Connection,
                 monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Way]:
    """Every test on the three ways into market_data: rows of a small batch as one JSON parameter, rows (no
    batch small enough) by COPY into the staging table, and the clean records' own JSON (write_json)."""
    if request.param in ("staged", "records"):  # records: no batch small enough to be written as rows
        monkeypatch.setattr(postgres, "SMALL_BATCH_ROWS", 0)
    w = PostgresTickWriter(PostgresSettings(host=iso.pg["host"], port=iso.pg["port"], db_schema=iso.schema))
    await w.start()
    yield Way(w, records=request.param == "records")
    await w.stop()


async def test_newer_revision_updates_stale_and_resend_are_ignored(writer, pg, iso) -> None:
    def bar(close: float, ing_s: int) -> tuple:
        return row(symbol="X", timestamp=T0, source="y", data_type="bar", open=1, high=max(2, close), low=0.5,
                   close=close, volume=ing_s, interval="1m", item_id="1m",
                   ingested_at=T0 + timedelta(seconds=ing_s))

    first = await writer.write([bar(1.0, 10)])
    assert (first.inserted, first.updated, first.duplicates) == (1, 0, 0)
    newer = await writer.write([bar(1.5, 20)])
    assert (newer.inserted, newer.updated, newer.duplicates) == (0, 1, 0)
    assert newer.updated_by_source == {"y": 1} and newer.written_by_source == {"y": 1}
    stale = await writer.write([bar(1.2, 15), bar(1.5, 20)])  # an older revision and an exact re-send
    assert (stale.inserted, stale.updated, stale.duplicates) == (0, 0, 2)
    assert stale.duplicates_by_source == {"y": 2}
    got = await pg.fetchrow(f"SELECT close, volume, revision FROM {iso.schema}.market_data")
    assert (got["close"], got["volume"]) == (1.5, 20)
    # a tick is immutable: a later, different version of its key changes nothing
    tick = dict(symbol="X", timestamp=T0, source="y", price=5.0, item_id="t", ingested_at=T0)
    await writer.write([row(**tick)])
    again = await writer.write([row(**{**tick, "price": 6.0, "ingested_at": T0 + timedelta(hours=1)})])
    assert (again.inserted, again.updated, again.duplicates) == (0, 0, 1)
    assert await pg.fetchval(f"SELECT price FROM {iso.schema}.market_data WHERE data_type = 'tick'") == 5.0


async def test_a_batch_of_new_keys_and_a_newer_revision_does_both(writer, pg, iso) -> None:
    """The write skips its UPDATE when the INSERT took every key of the batch; a batch that also holds a newer
    revision of a stored key must still run it (the INSERT took fewer keys than the batch has)."""
    def bar(item: str, close: float, ing_s: int) -> tuple:
        return row(symbol="X", timestamp=T0, source="y", data_type="bar", open=1, high=max(2, close), low=0.5,
                   close=close, volume=ing_s, interval="1m", item_id=item,
                   ingested_at=T0 + timedelta(seconds=ing_s))

    fresh = await writer.write([bar("a", 1.0, 10), bar("b", 1.0, 10), bar("b", 1.1, 11)])  # all keys new
    assert (fresh.inserted, fresh.updated, fresh.duplicates) == (2, 0, 1)
    mixed = await writer.write([bar("a", 1.7, 30), bar("c", 1.0, 10)])  # a newer revision of a, and a new key
    assert (mixed.inserted, mixed.updated, mixed.duplicates) == (1, 1, 0)
    got = dict(await pg.fetch(f"SELECT item_id, close FROM {iso.schema}.market_data ORDER BY item_id"))
    assert got == {"a": 1.7, "b": 1.1, "c": 1.0}


async def test_a_write_cut_short_after_its_insert_and_replayed_ends_as_one_whole_write(writer, pg, iso,
                                                                                       monkeypatch) -> None:
    """The worker dies after the batch's INSERT (the fault point the fault table kills at): the staged write
    rolls its transaction back, the small one has committed its INSERT but not applied its revisions. The
    replay, as the uncommitted offsets bring it, must leave what one whole write leaves."""
    def bar(item: str, close: float, ing_s: int) -> tuple:
        return row(symbol="X", timestamp=T0, source="y", data_type="bar", open=1, high=max(2, close), low=0.5,
                   close=close, volume=ing_s, interval="1m", item_id=item,
                   ingested_at=T0 + timedelta(seconds=ing_s))

    await writer.write([bar("a", 1.0, 10)])
    batch = [bar("a", 1.7, 30), bar("c", 1.0, 10)]  # a newer revision of a, and a new key

    def killed(point: str) -> None:
        if point == "write.after_insert":
            raise RuntimeError("killed")

    reach = postgres.faults.reach
    monkeypatch.setattr(postgres.faults, "reach", killed)
    with pytest.raises(Exception, match="killed"):
        await writer.write(batch)
    monkeypatch.setattr(postgres.faults, "reach", reach)
    replay = await writer.write(batch)
    assert replay.inserted + replay.duplicates == 1 and replay.updated == 1
    got = dict(await pg.fetch(f"SELECT item_id, close FROM {iso.schema}.market_data ORDER BY item_id"))
    assert got == {"a": 1.7, "c": 1.0}


async def test_shuffled_revisions_in_many_batches_end_at_the_newest(writer, pg, iso) -> None:
    rng = random.Random(14)
    symbols, times, revisions = ["AAPL", "MSFT", "SPY"], 40, 6
    sent: list[tuple] = []
    newest: dict[tuple, tuple[float, float]] = {}
    for sym in symbols:
        for t in range(times):
            ts = T0 + timedelta(minutes=t)
            for r in range(revisions):  # a forming bar growing, and the day's quote re-polled
                ing = ts + timedelta(seconds=5 * r + 1)
                close = 100 + t + r / 10
                sent.append(row(symbol=sym, timestamp=ts, source="yahoo", data_type="bar", open=100 + t,
                                high=close + 1, low=99, close=close, volume=10 * (r + 1), interval="1m",
                                item_id="1m", ingested_at=ing))
                sent.append(row(symbol=sym, timestamp=ts, source="av", data_type="quote", price=close,
                                bid=close - 0.01, ask=close + 0.01, item_id="q", ingested_at=ing))
            newest[(sym, ts, "bar")] = (100 + t + (revisions - 1) / 10, 10 * revisions)
            newest[(sym, ts, "quote")] = (100 + t + (revisions - 1) / 10, 1.0)
    # immutable trades ride along, each sent twice
    trades = [row(symbol="AAPL", timestamp=T0 + timedelta(seconds=i), source="fh", data_type="trade",
                  price=1.0 + i, volume=1, item_id=str(i), ingested_at=T0) for i in range(50)]
    stream = sent + trades + trades
    rng.shuffle(stream)
    batches = [stream[i:i + 97] for i in range(0, len(stream), 97)]
    batches += [b for b in batches if rng.random() < 0.3]  # replays after a crash, out of order too
    rng.shuffle(batches)
    totals = {"inserted": 0, "updated": 0, "duplicates": 0}
    for b in batches:
        res = await writer.write(b)
        assert res.inserted + res.updated + res.duplicates == len(b)
        for k in totals:
            totals[k] += getattr(res, k)
    keys = len(newest) + len(trades)
    assert totals["inserted"] == keys  # every key inserted exactly once
    assert totals["updated"] > 0 and totals["duplicates"] > 0
    assert await pg.fetchval(f"SELECT count(*) FROM {iso.schema}.market_data") == keys
    rows = await pg.fetch(f"SELECT symbol, ts, data_type, close, price, volume FROM {iso.schema}.market_data "
                          "WHERE data_type IN ('bar', 'quote')")
    assert len(rows) == len(newest)
    for r in rows:
        want_close, want_vol = newest[(r["symbol"], r["ts"], r["data_type"])]
        if r["data_type"] == "bar":
            assert (r["close"], r["volume"]) == (want_close, want_vol), r
        else:
            assert r["price"] == want_close, r
    trade_prices = await pg.fetch(f"SELECT item_id, price FROM {iso.schema}.market_data WHERE data_type='trade'")
    assert {r["item_id"]: r["price"] for r in trade_prices} == {str(i): 1.0 + i for i in range(50)}


def fred_polls(dates: int, vintages: int) -> tuple[list[tuple], dict[date, tuple[date, float]]]:
    """Poll k (published on day k) answers every vintage known so far with FRED's realtime fields: the
    newest vintage of a date is open (9999-12-31); each older one closes the day before the next began."""
    out: list[tuple] = []
    current: dict[date, tuple[date, float]] = {}
    first_day = date(2024, 1, 1)
    for k in range(vintages):
        published = datetime(2024, 2, 1, tzinfo=UTC) + timedelta(days=k)
        starts = [first_day + timedelta(days=30 * j) for j in range(k + 1)]
        for d in range(dates):
            obs_day = date(2023, 1, 1) + timedelta(days=d)
            for j, start in enumerate(starts):
                end = OPEN if j == k else starts[j + 1] - timedelta(days=1)
                value = 100.0 + d + j / 100
                out.append(row(symbol="GDP", timestamp=datetime(obs_day.year, obs_day.month, obs_day.day,
                                                                tzinfo=UTC),
                               source="fred", data_type="economic", value=value, realtime_start=start,
                               realtime_end=end, item_id=start.isoformat(), ingested_at=published))
                if j == k:
                    current[obs_day] = (start, value)
    return out, current


async def test_fred_vintages_one_current_per_date(writer, pg, iso) -> None:
    rng = random.Random(7)
    dates, vintages = 30, 5
    sent, current = fred_polls(dates, vintages)
    # the last poll is also delayed behind a stale re-send of the first polls: reordering across batches
    rng.shuffle(sent)
    batches = [sent[i:i + 53] for i in range(0, len(sent), 53)]
    batches += [list(reversed(b)) for b in batches[::3]]
    rng.shuffle(batches)
    for b in batches:
        await writer.write(b)
    q = iso.schema
    assert await pg.fetchval(f"SELECT count(*) FROM {q}.market_data") == dates * vintages
    per_date = await pg.fetch(
        f"SELECT ts::date AS d, count(*) FILTER (WHERE realtime_end = 'infinity') AS open_n, "
        f"max(item_id) FILTER (WHERE realtime_end = 'infinity') AS open_start, "
        f"max(value) FILTER (WHERE realtime_end = 'infinity') AS open_value "
        f"FROM {q}.market_data GROUP BY 1")
    assert len(per_date) == dates
    for r in per_date:
        assert r["open_n"] == 1, r
        start, value = current[r["d"]]
        assert (r["open_start"], r["open_value"]) == (start.isoformat(), value)
    # every superseded vintage is closed the day before its successor began
    bad = await pg.fetchval(
        f"SELECT count(*) FROM {q}.market_data m WHERE isfinite(realtime_end) AND realtime_end + 1 <> "
        f"(SELECT min(realtime_start) FROM {q}.market_data n WHERE n.ts = m.ts AND n.realtime_start > "
        f"m.realtime_start)")
    assert bad == 0
    # a late re-send of the very first poll (the old vintage still open) reopens nothing
    first_poll, _ = fred_polls(dates, 1)
    res = await writer.write(first_poll)
    assert (res.inserted, res.updated, res.duplicates) == (0, 0, dates)
    assert await pg.fetchval(
        f"SELECT count(*) FROM {q}.market_data WHERE realtime_end = 'infinity'") == dates


async def test_in_one_batch_the_highest_revision_wins_and_ties_keep_the_first(writer, pg, iso) -> None:
    tick = dict(symbol="X", timestamp=T0, source="y", item_id="t", ingested_at=T0)
    quote = dict(symbol="X", timestamp=T0, source="y", data_type="quote", item_id="q")
    res = await writer.write([
        row(**tick, price=1.0), row(**tick, price=2.0),  # immutable, same key twice: the first staged stays
        row(**quote, price=5.0, ingested_at=T0 + timedelta(seconds=2)),
        row(**quote, price=9.0, ingested_at=T0 + timedelta(seconds=3)),  # the newest, staged in the middle
        row(**quote, price=4.0, ingested_at=T0 + timedelta(seconds=1)),
    ])
    assert (res.inserted, res.updated, res.duplicates) == (2, 0, 3)
    got = dict(await pg.fetch(f"SELECT data_type, price FROM {iso.schema}.market_data"))
    assert got == {"tick": 1.0, "quote": 9.0}


_LETTERS = string.ascii_letters + string.digits  # text the server cannot compress: rows keep their sizes


def _mixed_batch(rng: random.Random) -> tuple[list[tuple], dict[str, float]]:
    """Bars with metadata of random sizes (so rows do not fill pages evenly) among ticks that each come twice: a
    first version, then, further on, a different one. Returns the batch and each tick's first price."""
    batch: list[tuple] = []
    first: dict[str, float] = {}
    later: list[tuple[int, tuple]] = []
    for i in range(1500):
        if rng.random() < 0.4:
            batch.append(row(symbol="X", timestamp=T0 + timedelta(minutes=i), source="y", data_type="bar",
                             interval="1m", item_id="1m", open=1, high=2, low=0.5, close=1.5, volume=1,
                             metadata={"note": "".join(rng.choices(_LETTERS, k=rng.randrange(50, 1800)))}))
            continue
        item = f"t{i}"
        price = 100.0 + i
        batch.append(row(symbol="X", timestamp=T0, source="y", price=price, item_id=item, ingested_at=T0))
        first[item] = price
        second = row(symbol="X", timestamp=T0, source="y", price=price + 0.5, item_id=item,
                     ingested_at=T0 + timedelta(seconds=30))
        later.append((i + rng.randrange(100, 1000), second))
    for at, r in sorted(later, key=lambda p: p[0], reverse=True):
        batch.insert(min(at, len(batch)), r)
    return batch, first


async def test_an_immutable_key_twice_in_a_batch_keeps_its_first_version_whatever_the_row_sizes(writer, pg, iso
                                                                                                 ) -> None:
    """The tie-break of the dedupe is the row's place in the batch, not where COPY put it: with rows of mixed sizes
    the server fills a page's leftover space with a later row, so ctid order is not batch order. Checked here
    first on the same rows: some tick's second version is staged at a lower ctid than its first (a dedupe by
    ctid, the writer's before, stores those second versions), so this test keeps testing what it says."""
    batch, first = _mixed_batch(random.Random(11))
    # The premise. (The table is created before the COPY's transaction, as the writer's staging table is: COPY
    # into a table created in its own transaction skips the free space map, and then keeps the order.)
    await pg.execute(f"CREATE TEMP TABLE premise (LIKE {iso.schema}.market_data INCLUDING DEFAULTS, seq int)")
    async with pg.transaction():
        await pg.copy_records_to_table("premise", records=[(*r, i) for i, r in enumerate(batch)],
                                       columns=[*MARKET_DATA_COLUMNS, "seq"])
        inverted = await pg.fetchval(
            "SELECT count(*) FROM (SELECT item_id, ctid, seq, first_value(seq) OVER (PARTITION BY item_id ORDER BY "
            "ctid) AS by_ctid, min(seq) OVER (PARTITION BY item_id) AS by_seq FROM premise WHERE data_type = "
            "'tick') o WHERE seq = by_seq AND by_ctid <> by_seq")
    assert inverted > 0, "COPY kept every tick's versions in batch order: the batch no longer tests the tie-break"

    res = await writer.write(batch)
    assert res.duplicates == len(first)
    got = dict(await pg.fetch(f"SELECT item_id, price FROM {iso.schema}.market_data WHERE data_type = 'tick' "
                              "AND item_id = ANY($1::text[])", list(first)))
    assert got == first, {k: (got.get(k), v) for k, v in first.items() if got.get(k) != v}


async def test_a_resent_bar_with_the_same_values_keeps_its_stored_flags_unless_it_adds_some(writer, pg, iso) -> None:
    """A worker's restart replays its files: the bars come again, newer revisions of the same values, and the
    detectors, already past them, judge them no more (streams/anomalies/suite.py). Such a revision replaced the
    stored row, and a fat finger's anomaly:bar_outlier was gone. A re-send with the same values and fewer flags
    is ignored now; a follow-up's flagged copy (flags added) and a revision with other values still apply."""
    def bar(close: float, ing_s: int, flags: list[str]) -> Row:
        return row(symbol="X", timestamp=T0, source="replay", data_type="bar", open=1, high=max(2, close), low=0.5,
                   close=close, volume=100, interval="1d", item_id="1d", flags=flags,
                   ingested_at=T0 + timedelta(seconds=ing_s), metadata={"file": f"run{ing_s}"})

    async def stored() -> tuple[float, list[str], str]:
        r = await pg.fetchrow(f"SELECT close, flags, metadata FROM {iso.schema}.market_data")
        return r["close"], r["flags"], orjson.loads(r["metadata"])["file"]

    fat = ["anomaly:decimal_shift", "anomaly:bar_outlier"]
    assert (await writer.write([bar(1.5, 10, fat[:1])])).inserted == 1
    assert (await writer.write([bar(1.5, 11, fat)])).updated == 1  # a follow-up's copy adds a flag
    assert await stored() == (1.5, fat, "run11")
    resent = await writer.write([bar(1.5, 20, fat[:1])])  # replayed: judged without the bars before it
    assert (resent.updated, resent.duplicates) == (0, 1)
    assert await stored() == (1.5, fat, "run11")
    assert (await writer.write([bar(1.5, 30, [])])).updated == 0
    assert (await writer.write([bar(1.5, 40, fat)])).updated == 1  # the same flags: applied (newer metadata)
    assert await stored() == (1.5, fat, "run40")
    assert (await writer.write([bar(1.75, 50, [])])).updated == 1  # other values: the provider's revision
    assert await stored() == (1.75, [], "run50")
