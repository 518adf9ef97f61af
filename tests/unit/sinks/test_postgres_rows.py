"""Row building without a database: the revision key per kind (issue 14), the NUL rule (issue 15), and
the sink's own per-batch counts."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, date, datetime, timedelta

import orjson
import pytest

from sinks.base import CLOSED_VINTAGE_RANK, REVISABLE_KINDS, WriteResult, revision_of
from sinks.postgres import json_rows, loads_record, result_from_counts, row_from_json, row_from_record
from sinks.schema import MARKET_DATA_COLUMNS
from streams.models import DataType, MarketDataPoint

T0 = datetime(2024, 5, 1, 14, 30, tzinfo=UTC)


# The write stage builds rows from the record's bytes (row_from_json, which skips the NUL rule when the bytes
# hold no \u0000 escape); the peers and callers with a decoded record use row_from_record. Both must agree.
BUILDERS = {"record": lambda raw: row_from_record(orjson.loads(raw)), "json": row_from_json}


def named(p: MarketDataPoint, build: str = "record") -> dict:
    row = BUILDERS[build](p.to_json())
    assert len(row) == len(MARKET_DATA_COLUMNS)
    return dict(zip(MARKET_DATA_COLUMNS, row, strict=True))


def test_revisable_kinds_are_bar_quote_economic() -> None:
    assert {DataType.BAR, DataType.QUOTE, DataType.ECONOMIC} == REVISABLE_KINDS
    assert {str(k) for k in DataType} - REVISABLE_KINDS == {"tick", "trade", "news", "social"}


@pytest.mark.parametrize("kind", ["tick", "trade", "news", "social"])
def test_immutable_kinds_have_revision_zero(kind: str) -> None:
    assert revision_of(kind, T0, None) == 0
    assert revision_of(kind, T0 + timedelta(hours=1), date(2024, 1, 1)) == 0


@pytest.mark.parametrize("kind", ["bar", "quote", "economic"])
def test_revision_follows_the_publish_time_to_the_microsecond(kind: str) -> None:
    r0 = revision_of(kind, T0, None)
    assert r0 == int(T0.timestamp()) * 1_000_000
    assert revision_of(kind, T0 + timedelta(microseconds=1), None) == r0 + 1
    assert revision_of(kind, None, None) == 0 < r0  # untimed: the lowest, any timed version wins


def test_a_closed_vintage_beats_every_open_one() -> None:
    open_late = revision_of("economic", T0 + timedelta(days=3650), date(9999, 12, 31))
    closed_early = revision_of("economic", T0, date(2024, 4, 30))
    assert closed_early > open_late
    assert closed_early == revision_of("economic", T0, None) + CLOSED_VINTAGE_RANK
    # among closed ones, the publish time decides again
    assert revision_of("economic", T0 + timedelta(seconds=1), date(2024, 4, 30)) > closed_early
    # the bigint holds it for centuries
    assert revision_of("economic", datetime(2999, 1, 1, tzinfo=UTC), date(2024, 1, 1)) < 2**63


@pytest.mark.parametrize("build", BUILDERS)
def test_row_carries_its_revision_and_keeps_ingested_at_last(build: str) -> None:
    ing = T0 + timedelta(seconds=2)
    bar = named(MarketDataPoint(symbol="X", timestamp=T0, source="s", data_type="bar", open=1, high=2, low=0.5,
                                close=1.5, interval="1m", item_id="1m", ingested_at=ing), build)
    assert bar["revision"] == revision_of("bar", ing, None)
    assert MARKET_DATA_COLUMNS[-1] == "ingested_at" and bar["ingested_at"] == ing
    tick = named(MarketDataPoint(symbol="X", timestamp=T0, source="s", price=1.0, ingested_at=ing), build)
    assert tick["revision"] == 0
    fred = named(MarketDataPoint(symbol="GDP", timestamp=T0, source="fred", data_type="economic", value=1.0,
                                 realtime_start=date(2024, 1, 1), realtime_end=date(2024, 3, 1),
                                 item_id="2024-01-01", ingested_at=ing), build)
    assert fred["revision"] == revision_of("economic", ing, date(2024, 3, 1)) > CLOSED_VINTAGE_RANK


@pytest.mark.parametrize("build", BUILDERS)
def test_nul_is_replaced_in_every_text_field_flag_and_metadata_string(build: str) -> None:
    p = MarketDataPoint(symbol="A\x00B", timestamp=T0, source="s\x00", data_type="news", headline="he\x00ad",
                        text="\x00body\x00", url="https://x/\x00", item_id="id\x00", interval="1\x00m",
                        flags=["f\x00"], metadata={"k\x00": ["v\x00", {"deep": "x\x00y"}], "n": 1})
    row = named(p, build)
    for col in ("symbol", "source", "headline", "text", "url", "item_id", "interval"):
        assert "\x00" not in row[col] and "\ufffd" in row[col], col
    assert row["symbol"] == "A\ufffdB" and row["text"] == "\ufffdbody\ufffd"
    assert row["flags"] == ["f\ufffd"]
    assert "\\u0000" not in row["metadata"]
    assert orjson.loads(row["metadata"]) == {"k\ufffd": ["v\ufffd", {"deep": "x\ufffdy"}], "n": 1}


@pytest.mark.parametrize("build", BUILDERS)
def test_text_without_nul_is_untouched_even_a_literal_backslash_u0000(build: str) -> None:
    meta = {"path": "C:\\u0000dir", "a": "plain"}  # the six characters \u0000, not a NUL
    row = named(MarketDataPoint(symbol="X", timestamp=T0, source="s", price=1.0, metadata=meta,
                                headline="\\u0000"), build)
    assert orjson.loads(row["metadata"]) == meta
    assert row["headline"] == "\\u0000"


@pytest.mark.parametrize("field", ["symbol", "source", "data_type", "item_id", "interval", "headline", "text",
                                   "url", "flags"])
def test_a_nul_in_any_one_text_field_alone_is_replaced_from_the_bytes(field: str) -> None:
    """The bytes' check must see a NUL wherever it is, the only one in the record (the test above has many)."""
    record = {"symbol": "X", "timestamp": "2024-05-01T14:30:00Z", "source": "s", "data_type": "news",
              "item_id": "i", "interval": "1m", "headline": "h", "text": "t", "url": "u", "flags": ["f"]}
    record[field] = ["a\x00b"] if field == "flags" else record[field] + "\x00"
    raw = orjson.dumps(record)
    assert b"\\u0000" in raw
    row = dict(zip(MARKET_DATA_COLUMNS, row_from_json(raw), strict=True))
    assert row == dict(zip(MARKET_DATA_COLUMNS, row_from_record(orjson.loads(raw)), strict=True))
    assert "\x00" not in str(row[field]) and "\ufffd" in str(row[field])


def test_counts_split_into_inserted_updated_and_duplicates() -> None:
    staged = Counter({"a": 10, "b": 5, "c": 2})
    r = result_from_counts(staged, {"a": (6, 3), "b": (0, 1)})
    assert (r.inserted, r.updated, r.duplicates) == (6, 4, 1 + 4 + 2)
    assert r.inserted_by_source == {"a": 6} and r.updated_by_source == {"a": 3, "b": 1}
    assert r.duplicates_by_source == {"a": 1, "b": 4, "c": 2}
    assert r.written_by_source == {"a": 9, "b": 1}


def test_results_add_up_across_a_bisection() -> None:
    left = WriteResult(2, 1, {"a": 2}, 1, {"a": 1}, {"a": 1})
    right = WriteResult(1, 0, {"b": 1}, 2, {"a": 2}, {})
    total = left + right
    assert (total.inserted, total.updated, total.duplicates) == (3, 3, 1)
    assert total.inserted_by_source == {"a": 2, "b": 1} and total.updated_by_source == {"a": 3}
    assert total.duplicates_by_source == {"a": 1}
    assert WriteResult(5, 2).updated == 0  # positional construction stays valid for older callers


def test_integers_beyond_64_bits_in_metadata_are_written_exactly_as_json_numbers() -> None:
    meta = {"big": 2**70, "neg": -(2**70), "edge_hi": 2**64 - 1, "edge_lo": -(2**63), "over": 2**64,
            "deep": [{"n": 2**100, "ok": 7, "flag": True}], "nul\x00": 2**65}
    p = MarketDataPoint(symbol="X", timestamp=T0, source="s", price=1.0, metadata=meta)
    # a record decoded with Python ints (loads_record, pydantic's JSON mode, the stdlib json module)
    for doc in (p.model_dump(mode="json"), loads_record(p.to_json())):
        row = dict(zip(MARKET_DATA_COLUMNS, row_from_record(doc), strict=True))
        # the same numbers, not decimal strings nor floats (jsonb stores them exactly, as numeric)
        assert json.loads(row["metadata"]) == {
            "big": 2**70, "neg": -(2**70), "edge_hi": 2**64 - 1, "edge_lo": -(2**63), "over": 2**64,
            "deep": [{"n": 2**100, "ok": 7, "flag": True}], "nul\ufffd": 2**65,
        }
        assert '"big":1180591620717411303424' in row["metadata"]


def test_loads_record_refuses_what_orjson_refuses_on_either_path() -> None:
    for tail in (b"NaN", b"Infinity", b"-Infinity", b"1e400"):
        for head in (b"1", b"12345678901234567890"):  # the fast path, and the exact one (a 19+ digit number)
            with pytest.raises(ValueError):
                loads_record(b'{"a": ' + head + b', "b": ' + tail + b"}")
    assert loads_record(b'{"a": 12345678901234567890, "b": 0.1}') == {"a": 12345678901234567890, "b": 0.1}
    # orjson refuses an integer beyond a double's range (309 digits and more); the stdlib reads it exactly
    assert loads_record(b'{"metadata": {"n": -' + b"9" * 400 + b"}}") == {"metadata": {"n": -int("9" * 400)}}
    with pytest.raises(ValueError):
        loads_record(b'{"metadata": {"n": 1}, "x": nope}')  # not JSON, whichever path


    # no big integer: the fast path writes the same text as before
    small = {"a": 1, "b": [2**63, -(2**63)]}
    d = MarketDataPoint(symbol="X", timestamp=T0, source="s", price=1.0).model_dump(mode="json") | {"metadata": small}
    assert row_from_record(d)[MARKET_DATA_COLUMNS.index("metadata")] == orjson.dumps(small).decode()


def test_metadata_orjson_cannot_write_for_another_reason_is_still_a_data_error() -> None:
    d = MarketDataPoint(symbol="X", timestamp=T0, source="s", price=1.0).model_dump(mode="json")
    with pytest.raises(TypeError):
        row_from_record(d | {"metadata": {"raw": b"bytes"}})


def test_json_rows_write_each_row_in_column_order_naive_times_as_utc() -> None:
    """What the small-batch upsert reads: a row's values at its columns' positions, dates and times as
    PostgreSQL parses them, a naive datetime as UTC (asyncpg's reading for COPY)."""
    built = row_from_record(orjson.loads(MarketDataPoint(
        symbol="AAPL", timestamp=T0, source="s", price=1.5, flags=["a", "b"], metadata={"k": 1},
        realtime_start=date(2024, 5, 1)).to_json()))
    naive = (*built[:3], T0.replace(tzinfo=None), *built[4:])
    doc = orjson.loads(json_rows([built, naive]))
    assert [len(r) for r in doc] == [len(MARKET_DATA_COLUMNS)] * 2
    at = dict(zip(MARKET_DATA_COLUMNS, doc[0], strict=True))
    assert (at["symbol"], at["price"], at["flags"], at["realtime_start"]) == ("AAPL", 1.5, ["a", "b"], "2024-05-01")
    assert orjson.loads(at["metadata"]) == {"k": 1}
    assert datetime.fromisoformat(at["ts"]) == T0
    assert datetime.fromisoformat(doc[1][MARKET_DATA_COLUMNS.index("ts")]) == T0
    with pytest.raises(TypeError):  # a data error, as asyncpg's encoders raise it
        json_rows([(*built[:6], 10**400, *built[7:])])


async def test_a_record_that_does_not_decode_is_refused_not_retried() -> None:
    """write_json's small batch is decoded here: a record that is not JSON is the data's fault (bisected and
    dead-lettered). Were it retriable, the write stage would retry the same batch forever."""
    from sinks.postgres import PostgresTickWriter
    from streams.errors import SinkRefused
    from streams.settings import PostgresSettings

    writer = PostgresTickWriter(PostgresSettings())
    with pytest.raises(SinkRefused) as info:
        await writer.write_json([b'{"symbol": "AAPL", "source": "sim"', b"not json"])
    assert not info.value.retriable
    assert writer.pool is None  # refused before any connection was opened


def test_only_an_economic_observation_ranks_by_its_closed_vintage() -> None:
    """The server's revision (upsert_records_sql) adds the closed-vintage rank to economic records only."""
    at = datetime(2024, 5, 1, tzinfo=UTC)
    assert revision_of("bar", at, date(2024, 5, 2)) == revision_of("bar", at, None)
    assert revision_of("quote", at, date(2024, 5, 2)) == revision_of("quote", at, None)
    assert revision_of("economic", at, date(2024, 5, 2)) == revision_of("economic", at, None) + CLOSED_VINTAGE_RANK
