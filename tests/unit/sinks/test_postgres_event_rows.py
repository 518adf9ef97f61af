"""Anomaly-event and dead-letter rows without a database (issue 14): the natural key, where each field comes
from, the NUL rule, and the one INSERT statement per table."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

from sinks.postgres import anomaly_row, dead_letter_row, insert_new_sql
from sinks.schema import ANOMALY_COLUMNS, ANOMALY_KEY, DEAD_LETTER_COLUMNS, DEAD_LETTER_KEY

T0 = datetime(2024, 5, 1, 14, 30, tzinfo=UTC)


def event(**kw: object) -> dict:
    base = {"detector": "zscore", "symbol": "AAPL", "score": 7.5, "threshold": 4.0, "kind": "tick",
            "message": "far", "record": {"symbol": "AAPL", "timestamp": T0.isoformat(), "price": 1.0},
            "details": {"z": 7.5}, "source": "finnhub", "detected_at": T0.timestamp() + 2}
    return {**base, **kw}


def named(row: tuple, cols: tuple[str, ...]) -> dict:
    assert len(row) == len(cols)
    return dict(zip(cols, row, strict=True))


def test_anomaly_row_is_keyed_by_the_flagged_records_time() -> None:
    r = named(anomaly_row(event()), ANOMALY_COLUMNS)
    # a tick record has a data_type and an item_id but no interval: '' keeps the key NOT NULL
    assert tuple(r[c] for c in ANOMALY_KEY) == ("AAPL", "zscore", T0, "finnhub", "", "", "")
    assert r["detected_at"] == datetime.fromtimestamp(T0.timestamp() + 2, UTC)
    assert (r["score"], r["threshold"], r["kind"], r["message"]) == (7.5, 4.0, "tick", "far")
    assert orjson.loads(r["record"])["price"] == 1.0 and orjson.loads(r["details"]) == {"z": 7.5}


def test_anomaly_without_a_record_time_uses_the_detection_time_and_scrubs_nul() -> None:
    r = named(anomaly_row(event(record={}, source=None, message="a\x00b", score=None, details=None)),
              ANOMALY_COLUMNS)
    assert r["ts"] == r["detected_at"] and r["source"] == "" and r["score"] is None
    assert r["message"] == "a\ufffdb" and r["record"] == "{}" and r["details"] == "{}"
    # the source falls back to the record's
    assert named(anomaly_row(event(source=None, record={"source": "yahoo"})), ANOMALY_COLUMNS)["source"] == "yahoo"


def test_anomaly_key_tells_bars_of_two_intervals_apart() -> None:
    """A 1m and a 1d bar of one symbol at one time, flagged by one detector, are two events (migration 7)."""
    bar = {"symbol": "AAPL", "source": "yahoo", "timestamp": T0.isoformat(), "data_type": "bar", "close": 1.0}
    one_minute = named(anomaly_row(event(record={**bar, "interval": "1m"})), ANOMALY_COLUMNS)
    one_day = named(anomaly_row(event(record={**bar, "interval": "1d"})), ANOMALY_COLUMNS)
    assert (one_minute["data_type"], one_minute["interval"], one_day["interval"]) == ("bar", "1m", "1d")
    assert tuple(one_minute[c] for c in ANOMALY_KEY) != tuple(one_day[c] for c in ANOMALY_KEY)
    # an exact re-send keeps its key (a later detection time is not part of it)
    again = named(anomaly_row(event(record={**bar, "interval": "1m"}, detected_at=T0.timestamp() + 60)),
                  ANOMALY_COLUMNS)
    assert tuple(again[c] for c in ANOMALY_KEY) == tuple(one_minute[c] for c in ANOMALY_KEY)
    news = named(anomaly_row(event(record={"timestamp": T0.isoformat(), "data_type": "news",
                                           "item_id": "n\x00-7", "interval": None})), ANOMALY_COLUMNS)
    assert (news["data_type"], news["interval"], news["item_id"]) == ("news", "", "n\ufffd-7")
    assert set(ANOMALY_KEY) <= set(ANOMALY_COLUMNS)


def headers(**own: str) -> list[tuple[str, bytes]]:
    return [("trace", b"t\x00"), *((f"tickflow.{k.replace('_', '.')}", v.encode()) for k, v in own.items())]


def test_dead_letter_row_is_keyed_by_where_the_record_was_read() -> None:
    h = headers(source_topic="raw.finnhub", source_partition="2", source_offset="41", stage="validate",
                rule="price.positive", error="negative", exception_class="RejectedRecord", time="1714573800.5")
    r = named(dead_letter_row(topic="ticks.rejected", partition=0, offset=9, key=b"K", value=b'{"symbol": "AAPL"}',
                              timestamp_ms=int(T0.timestamp() * 1000), headers=h,
                              source_of_topic={"raw.finnhub": "finnhub"}), DEAD_LETTER_COLUMNS)
    assert tuple(r[c] for c in DEAD_LETTER_KEY) == ("raw.finnhub", 2, 41)
    assert (r["stage"], r["rule"], r["error"], r["exception"]) == ("validate", "price.positive", "negative",
                                                                    "RejectedRecord")
    assert (r["source"], r["symbol"], r["key"], r["value"]) == ("finnhub", "AAPL", b"K", b'{"symbol": "AAPL"}')
    assert r["ts"] == datetime.fromtimestamp(1714573800.5, UTC) and r["record_ts"] == T0
    assert orjson.loads(r["headers"])["trace"] == "t\ufffd"


def test_dead_letter_row_fallbacks() -> None:
    # no origin headers: its own place; not JSON: the symbol is the key; no time header: the record's time
    r = named(dead_letter_row(topic="ticks.rejected", partition=1, offset=5, key=b"MSFT", value=b"\xff\x00",
                              timestamp_ms=int(T0.timestamp() * 1000), headers=None), DEAD_LETTER_COLUMNS)
    assert tuple(r[c] for c in DEAD_LETTER_KEY) == ("ticks.rejected", 1, 5)
    assert (r["symbol"], r["source"], r["value"], r["ts"], r["rule"]) == ("MSFT", None, b"\xff\x00", T0, "")
    # a garbled offset header cannot key the row: its own place again
    bad = headers(source_topic="raw.x", source_partition="zero", source_offset="1")
    r = named(dead_letter_row(topic="ticks.rejected", partition=1, offset=6, key=None, value=None,
                              timestamp_ms=None, headers=bad), DEAD_LETTER_COLUMNS)
    assert tuple(r[c] for c in DEAD_LETTER_KEY) == ("ticks.rejected", 1, 6) and r["symbol"] is None
    # the write stage's dead letters come from ticks.clean: the source is in the value
    h = headers(source_topic="ticks.clean", source_partition="0", source_offset="3")
    r = named(dead_letter_row(topic="ticks.rejected", partition=0, offset=7, key=b"X",
                              value=b'{"symbol": "X", "source": "yahoo"}', timestamp_ms=None, headers=h,
                              source_of_topic={"raw.yahoo": "yahoo"}), DEAD_LETTER_COLUMNS)
    assert (r["source"], r["symbol"]) == ("yahoo", "X")


def test_insert_new_sql_keeps_the_first_write_per_key() -> None:
    sql = insert_new_sql('"s"', "dead_letters", DEAD_LETTER_COLUMNS, DEAD_LETTER_KEY)
    assert sql.startswith('INSERT INTO "s".dead_letters ("topic", "partition", "offset",')
    assert '$12::bytea[]' in sql and '$14::jsonb[]' in sql
    assert sql.endswith('ON CONFLICT ("topic", "partition", "offset") DO NOTHING')
