"""The write stage without a database or a broker: a WriteTicks built with a fake writer, a list to send to and
a fake sleep. Rows built from canonical records, retries decided by `retriable`, bisection that isolates the
rows the store refuses, and the batch's metrics delta."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from sinks.base import BatchWriter, WriteResult
from sinks.postgres import classify, row_from_json, row_from_record, row_origin
from sinks.schema import MARKET_DATA_COLUMNS
from streams.errors import SinkError, SinkRefused, SinkUnavailable
from streams.models import MarketDataPoint
from streams.settings import KafkaSettings, SinkSettings
from streams.stages.metrics import MetricsDelta
from streams.stages.publish import Outgoing
from streams.stages.write import WriteTicks

PRICE = MARKET_DATA_COLUMNS.index("price")


class FakeWriter(BatchWriter):
    """Refuses rows whose price is 13; raises the errors in `failures` first, one per call."""

    def __init__(self, failures: Sequence[BaseException] = ()) -> None:
        self.failures = list(failures)
        self.calls = 0
        self.stored: list[tuple] = []

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def write(self, rows):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        if any(r[PRICE] == 13 for r in rows):
            raise SinkRefused("numeric field overflow")
        fresh = [r for r in rows if r not in self.stored]
        self.stored.extend(fresh)
        by: dict[str, int] = {}
        dups: dict[str, int] = {}
        for r in rows:
            src = row_origin(r)[0]
            target = by if r in fresh else dups
            target[src] = target.get(src, 0) + 1
        return WriteResult(len(fresh), len(rows) - len(fresh), by, duplicates_by_source=dups)


class FakeJsonWriter(FakeWriter):
    """FakeWriter taking the records' bytes (takes_json), as PostgresTickWriter does: a record that does not
    decode refuses its batch (the database's parse would), and each record's ingested_at comes back."""

    takes_json = True

    async def write_json(self, records):  # type: ignore[no-untyped-def]
        self.json_calls = getattr(self, "json_calls", 0) + 1
        try:
            rows = [row_from_json(r) for r in records]
        except ValueError as exc:
            self.calls += 1
            raise SinkRefused(f"invalid input syntax for type json: {exc}") from None
        result = await self.write(rows)
        ingested: dict[str, list[float]] = {}
        for row in rows:
            src, at = row_origin(row)
            ingested.setdefault(src, []).append(at.timestamp())
        return dataclasses.replace(result, ingested_by_source=ingested)


WRITERS = [FakeWriter, FakeJsonWriter]


@dataclass
class Collected:
    sent: list[Outgoing] = field(default_factory=list)
    deltas: list[MetricsDelta] = field(default_factory=list)
    sleeps: list[float] = field(default_factory=list)

    async def send(self, messages: Sequence[Outgoing]) -> None:
        self.sent.extend(messages)

    async def emit(self, delta: MetricsDelta) -> None:
        self.deltas.append(delta)

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)


def make_stage(writer: BatchWriter, out: Collected, **sink: Any) -> WriteTicks:
    return WriteTicks(writer=writer, send=out.send, emit=out.emit, sleep=out.sleep,
                      sink=SinkSettings(**{"retry_initial_seconds": 0.2, "retry_max_seconds": 10.0, **sink}),
                      rejected_topic="rejected", kafka=KafkaSettings(), app_id="unit", topics=["clean"])


def make_point(price: float, i: int, source: str = "s") -> MarketDataPoint:
    return MarketDataPoint(symbol="X", timestamp=datetime(2024, 1, 2, tzinfo=UTC), source=source, price=price,
                           item_id=str(i), ingested_at=datetime(2024, 1, 2, tzinfo=UTC))


def make_rows(prices: list[float]) -> list[tuple]:
    return [row_from_record(orjson.loads(make_point(p, i).to_json())) for i, p in enumerate(prices)]


@dataclass
class Rec:
    value: bytes
    offset: int
    topic: str = "clean"
    partition: int = 0
    key: bytes = b"X"
    timestamp: int = 1_700_000_000_000
    headers: list = field(default_factory=list)


def test_row_matches_the_column_list() -> None:
    p = MarketDataPoint(symbol="X", timestamp=datetime(2024, 1, 2, tzinfo=UTC), source="s", data_type="bar",
                        open=1, high=2, low=0.5, close=1.5, interval="1d", metadata={"a": 1},
                        ingested_at=datetime(2024, 1, 2, 0, 0, 1, tzinfo=UTC))
    row = row_from_record(orjson.loads(p.to_json()))
    assert len(row) == len(MARKET_DATA_COLUMNS)
    named = dict(zip(MARKET_DATA_COLUMNS, row, strict=True))
    assert named["open"] == 1 and named["interval"] == "1d" and named["metadata"] == '{"a":1}'
    assert named["ts"] == datetime(2024, 1, 2, tzinfo=UTC)
    assert named["ingested_at"] == datetime(2024, 1, 2, 0, 0, 1, tzinfo=UTC)
    assert row_origin(row) == ("s", datetime(2024, 1, 2, 0, 0, 1, tzinfo=UTC))


async def test_outage_is_retried_in_place_with_capped_backoff() -> None:
    fake, out = FakeWriter([SinkUnavailable("connection refused")] * 12), Collected()
    stage = make_stage(fake, out, retry_initial_seconds=0.5, retry_max_seconds=4.0)
    result = await stage.write_with_retry(make_rows([1.0, 2.0]))
    assert fake.calls == 13 and result.inserted == 2
    assert len(out.sleeps) == 12
    # exponential from 0.5 s (plus up to 0.5 s of jitter), never past the cap plus the jitter
    assert 0.5 <= out.sleeps[0] <= 1.0 and 1.0 <= out.sleeps[1] <= 1.5 and 2.0 <= out.sleeps[2] <= 2.5
    assert all(4.0 <= s <= 4.5 for s in out.sleeps[4:])
    assert stage.status()["database_retries"] == 0 and stage.status()["database_error"] is None


async def test_retriable_decides_not_the_class_caught() -> None:
    odd_outage = SinkError("read-only transaction")
    odd_outage.retriable = True  # a SinkError that is not a SinkUnavailable, yet says so
    fake, out = FakeWriter([odd_outage]), Collected()
    assert (await make_stage(fake, out).write_with_retry(make_rows([1.0]))).inserted == 1 and fake.calls == 2

    refusal = SinkUnavailable("looks like an outage")
    refusal.retriable = False  # ... and the other way round: comes straight out, no sleep
    fake, out = FakeWriter([refusal]), Collected()
    with pytest.raises(SinkUnavailable):
        await make_stage(fake, out).write_with_retry(make_rows([1.0]))
    assert fake.calls == 1 and out.sleeps == []


async def test_a_bug_is_not_retried() -> None:
    fake, out = FakeWriter([KeyError("bug")]), Collected()
    with pytest.raises(KeyError):
        await make_stage(fake, out).write_with_retry(make_rows([1.0]))
    assert fake.calls == 1 and out.sleeps == []


async def test_bisection_isolates_refused_rows() -> None:
    fake = FakeWriter()
    stage = make_stage(fake, Collected())
    prices = [float(p) for p in range(1, 40)]  # 13 is refused
    rows = make_rows(prices)
    events = list(range(len(rows)))
    result, bad = await stage.write_isolating(rows, events)
    assert [ev for ev, _ in bad] == [12]
    assert isinstance(bad[0][1], SinkError) and not bad[0][1].retriable
    assert result.inserted == len(rows) - 1 and result.inserted_by_source == {"s": len(rows) - 1}
    again, bad2 = await stage.write_isolating(rows, events)
    assert again.inserted == 0 and again.duplicates == len(rows) - 1 and len(bad2) == 1


@pytest.mark.parametrize("writer", WRITERS)
async def test_a_batch_is_written_dead_lettered_and_counted(writer: type[FakeWriter]) -> None:
    """Both ways: rows decoded by the stage, or the records' bytes to a writer that takes JSON (takes_json),
    where the record that is not JSON is found by bisecting and still dead-lettered as write.decode."""
    fake, out = writer([SinkUnavailable("down")]), Collected()
    stage = make_stage(fake, out)
    recs = [Rec(make_point(p, i, "a" if i % 2 else "b").to_json(), i) for i, p in enumerate([1.0, 2.0, 13.0, 4.0])]
    recs.append(Rec(b"{not json", 4))
    assert await stage.process(recs) is None
    assert sorted((m.topic, dict(m.headers or [])["tickflow.rule"]) for m in out.sent) == [
        ("rejected", b"write.decode"), ("rejected", b"write.refused")]
    (delta,) = out.deltas
    assert delta.of("a").written == 2 and delta.of("b").written == 1
    assert delta.of("b").rules == {"write.refused": 1} and delta.of("unknown").rules == {"write.decode": 1}
    assert delta.of("a").latency_n == 2 and delta.of("b").latency_n == 1
    await stage.process(recs[:2])  # a replay: duplicates, nothing written
    assert out.deltas[1].of("b").duplicates == 1 and out.deltas[1].of("a").duplicates == 1
    assert out.deltas[1].of("a").written == 0


@pytest.mark.parametrize("writer", WRITERS)
async def test_dead_letters_keep_the_original_records_headers(writer: type[FakeWriter]) -> None:
    """A write-stage dead letter carries the clean record's own headers (a trace id, its content-type) beside
    the tickflow.* reasons, as the validate stage's do; the record's own tickflow.* ones are replaced."""
    fake, out = writer(), Collected()
    original = [("traceparent", b"00-abc-01"), ("content-type", b"application/json"),
                ("tickflow.schema", b"ticks.clean/v1")]
    recs = [Rec(make_point(13.0, 0).to_json(), 0, headers=original), Rec(b"{not json", 1, headers=original)]
    await make_stage(fake, out).process(recs)
    assert len(out.sent) == 2
    for m in out.sent:
        h = list(m.headers or [])
        assert ("traceparent", b"00-abc-01") in h and ("content-type", b"application/json") in h
        # the reasons' namespace is the dead letter's: its own version replaces the clean record's
        assert [v for k, v in h if k == "tickflow.schema"] == [b"ticks.rejected/v1"]
        assert dict(h)["tickflow.source.offset"] in (b"0", b"1") and dict(h)["tickflow.stage"] == b"write"
        assert m.timestamp == 1_700_000_000.0  # the original record's timestamp, kept


def test_classify_sorts_errors_by_family() -> None:
    class FakePgError(Exception):
        def __init__(self, sqlstate: str) -> None:
            super().__init__("x")
            self.sqlstate = sqlstate

    assert classify(ConnectionRefusedError(), "w").retriable
    assert classify(FakePgError("57P01"), "w").retriable  # admin shutdown
    assert classify(FakePgError("40001"), "w").retriable  # serialization failure
    assert not classify(FakePgError("22003"), "w").retriable  # numeric out of range
    assert not classify(FakePgError("23502"), "w").retriable  # not-null violation


async def test_integers_beyond_64_bits_in_metadata_reach_the_row_exactly() -> None:
    """The validate stage accepts any integer the JSON parser takes (up to 4,300 digits) and writes it exactly
    to ticks.clean; orjson.loads would turn 2**70 into 1.1805916207174113e+21, silently."""
    import json

    meta = {"big": 2**70, "neg": -(2**63) - 1, "over": 2**64, "edge": 2**64 - 1, "deep": [{"n": 10**40 + 1}],
            "long": int("9" * 4300), "f": 0.1}
    p = make_point(1.0, 0).model_copy(update={"metadata": meta})
    raw = p.to_json()
    assert b"1180591620717411303424" in raw  # what the validate stage writes to ticks.clean
    fake, out = FakeWriter(), Collected()
    await make_stage(fake, out).process([Rec(raw, 0)])
    assert out.sent == []  # nothing dead-lettered
    (row,) = fake.stored
    text = row[MARKET_DATA_COLUMNS.index("metadata")]
    assert json.loads(text) == meta  # every integer exact, and still a JSON number (not a string)
    assert '"big":1180591620717411303424' in text


async def test_a_record_without_a_big_integer_decodes_as_before() -> None:
    """Long digit strings, 64-bit integers and a float beyond 2**63 (which takes the exact decode) come out as
    orjson reads them."""
    p = make_point(1.0, 0).model_copy(update={"item_id": "1234567890123456789012",
                                              "metadata": {"id": 2**63, "u": 2**64 - 1, "x": 1.5, "f": 1e19}})
    fake, out = FakeWriter(), Collected()
    await make_stage(fake, out).process([Rec(p.to_json(), 0)])
    assert fake.stored == [row_from_record(orjson.loads(p.to_json()))]


async def test_a_record_without_a_value_is_dead_lettered_before_a_json_writer_sees_it() -> None:
    """An empty or missing value joined into the batch's JSON array would vanish (or break its neighbour): the
    stage dead-letters it as write.decode and writes the rest."""
    fake, out = FakeJsonWriter(), Collected()
    recs = [Rec(make_point(1.0, 0).to_json(), 0), Rec(b"", 1), Rec(None, 2)]  # type: ignore[arg-type]
    await make_stage(fake, out).process(recs)
    assert [dict(m.headers or [])["tickflow.rule"] for m in out.sent] == [b"write.decode"] * 2
    assert len(fake.stored) == 1 and out.deltas[0].of("s").written == 1 and out.deltas[0].of("s").latency_n == 1


async def test_the_workers_shared_writer_passes_the_records_json_on() -> None:
    """The worker's write stage writes through streams.stages.db.SharedWriter: unless it says it takes JSON and
    passes write_json on, the stage decodes every record itself (the first build did, and py-spy found
    row_from_json still in the worker)."""
    from streams.stages.db import SharedWriter, writer

    assert writer.takes_json  # the worker's own, around its PostgresTickWriter
    fake, out = FakeJsonWriter(), Collected()
    shared = SharedWriter(fake)  # type: ignore[arg-type]
    assert shared.takes_json and not SharedWriter(FakeWriter()).takes_json  # type: ignore[arg-type]
    await make_stage(shared, out).process([Rec(make_point(1.0, 0).to_json(), 0)])
    assert fake.json_calls == 1 and len(fake.stored) == 1 and out.deltas[0].of("s").latency_n == 1


def test_a_newer_revision_counts_as_written_a_stale_one_as_a_duplicate() -> None:
    """`written` is what changed the store: an update by a newer revision (a FRED vintage, a forming bar) is one;
    counting inserts only showed revisions as never written."""
    delta = MetricsDelta()
    WriteTicks._count(delta, WriteResult(inserted=2, duplicates=1, inserted_by_source={"fred": 2}, updated=3,
                                         updated_by_source={"fred": 3}, duplicates_by_source={"fred": 1}))
    assert (delta.of("fred").written, delta.of("fred").duplicates) == (5, 1)
