"""PostgreSQL writer: an upsert into market_data (INSERT of the new keys, then UPDATE of newer revisions: see
upsert_sql). The write stage hands it the clean records' JSON (write_json): above SMALL_BATCH_ROWS records
the server parses them itself (upsert_records_sql), usually in a single statement. Rows (write): a small
batch (at most SMALL_BATCH_ROWS rows, no key twice) goes as one JSON parameter of rows, usually a single
statement (`_upsert_json` says when two, and why no transaction); any other is COPYed into a per-connection
staging table and upserted from it in one transaction.

The worker's single Python thread is what bounds it under load, so a large batch's parsing is the server's;
COPY is the fastest way in for rows already built (the in-process API, a NUL). The upsert keeps the write
idempotent on the natural key (a replayed batch writes nothing twice) and applies the revision policy of
sinks/base.py: immutable kinds keep their first write, revisable kinds their newest revision. market_data is
partitioned by ts (migration 6): partitions are created ahead and dropped by retention through the schema's functions.
Errors are sorted by `classify`: only errors about the data are SinkRefused; everything else is
SinkUnavailable.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any

import asyncpg
import orjson

from sinks.base import (
    CLOSED_VINTAGE_RANK,
    OPEN_VINTAGE_END,
    REVISABLE_KINDS,
    BatchWriter,
    WriteResult,
    revision_of,
)
from sinks.schema import (
    ANOMALY_COLUMNS,
    ANOMALY_KEY,
    DEAD_LETTER_COLUMNS,
    DEAD_LETTER_KEY,
    MARKET_DATA_COLUMNS,
    MARKET_DATA_KEY,
    MIGRATIONS,
    quote_ident,
)
from streams import exactjson, faults
from streams.errors import SinkError, SinkRefused, SinkUnavailable
from streams.settings import PostgresSettings

logger = logging.getLogger(__name__)

_STAGE = "tickflow_stage"
# The staging table's one column of its own: a row's position in its batch (upsert_sql says why).
_STAGE_SEQ = "stage_seq"
_STAGE_COLUMNS = (*MARKET_DATA_COLUMNS, _STAGE_SEQ)
# The statement timeout of one move of a period's rows out of the DEFAULT partition (partition_default).
_MOVE_TIMEOUT_SECONDS = 900.0
# SQLSTATE classes that are about the data itself: 22 data exception (out of range, bad text
# representation, invalid or untranslatable characters), 23 integrity constraint, 54 program limit
# exceeded (a value too large to store or index). Every other class is about the database (down,
# read-only after a failover, permissions, a missing table, a lock timeout, a bad password...).
_DATA_CLASSES = ("22", "23", "54")
# A row written through market_data always has a partition (DEFAULT takes any ts), so "violates partition
# constraint" (23514) never means the row is bad: a statement that read the partition list before a partition
# was attached routed the row to DEFAULT, whose constraint changed meanwhile. Its retry plans afresh.
_PARTITION_CONSTRAINT = "violates partition constraint"
# read_only_sql_transaction: a session that cannot write (a demoted primary, default_transaction_read_only).
READ_ONLY_SQLSTATE = "25006"


def is_data_error(exc: BaseException) -> bool:
    """Whether the database (or the driver, encoding a value for it) refused the data rather than failed.

    With a SQLSTATE: its class is one of _DATA_CLASSES. Without one: the driver could not encode a value
    (asyncpg raises TypeError/ValueError/OverflowError for a value of the wrong type or out of range, and
    UnicodeEncodeError for a lone surrogate). Anything else (OSError, timeouts, asyncpg.InterfaceError,
    an unknown exception) is not the data's fault: retried, never dead-lettered.
    """
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate == "23514" and _PARTITION_CONSTRAINT in str(exc):
        return False  # a partition attached while the statement ran (see _PARTITION_CONSTRAINT)
    if isinstance(sqlstate, str) and sqlstate:
        return sqlstate[:2] in _DATA_CLASSES
    if isinstance(exc, asyncpg.PostgresError):  # a server error without a SQLSTATE: not provably the data
        return False
    # asyncpg's client-side DataError is an InterfaceError *and* a ValueError: the ValueError side decides.
    return isinstance(exc, (TypeError, ValueError, OverflowError))


def classify(exc: BaseException, where: str) -> SinkError:
    """Map a driver exception onto our tree (SinkRefused for data errors, SinkUnavailable for everything
    else); the message carries no DSN password."""
    if isinstance(exc, SinkError):
        return exc
    cls = SinkRefused if is_data_error(exc) else SinkUnavailable
    sqlstate = getattr(exc, "sqlstate", None)
    code = f" [{sqlstate}]" if isinstance(sqlstate, str) and sqlstate else ""
    err = cls(f"{where}: {type(exc).__name__}{code}: {exc}")
    err.sqlstate = sqlstate if code else None
    err.__cause__ = exc
    return err


# NUL rule. PostgreSQL stores no U+0000 in text (22021) nor in jsonb strings (22P05), so one NUL would make
# the database refuse the whole batch and force a bisection. Every U+0000 in a text field, in flags and in
# any string of metadata (keys and values, at any depth) becomes U+FFFD, the Unicode replacement character.
# Replacing rather than stripping keeps "a\0b" apart from "ab" (item_id is part of the natural key) and
# shows where the byte was. Nothing else about the row changes.
_NUL = "\x00"
_REPLACEMENT = "\ufffd"


def _text(value: Any) -> Any:
    return value.replace(_NUL, _REPLACEMENT) if isinstance(value, str) and _NUL in value else value


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, dict):
        return {_text(k): _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def _ts(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if value is not None else None


def _date(value: Any) -> date | None:
    return date.fromisoformat(value) if value is not None else None


# Big integers: streams/exactjson.py. A record is decoded with exact integers (loads_record) and such an
# integer is written as its own digits, still a JSON number (_json_text).
loads_record = exactjson.loads


def _json_text(value: Any) -> str:
    if not value:
        return "{}"  # most records carry no metadata
    try:
        text = orjson.dumps(value).decode()
    except TypeError:  # an integer beyond 64 bits (anything else unwritable raises again below: a data error)
        value = exactjson.bigints_verbatim(value)
        text = orjson.dumps(value).decode()
    # orjson writes U+0000 as the escape \u0000 (and a literal backslash as \\): only then walk the value.
    return orjson.dumps(_scrub(value)).decode() if "\\u0000" in text else text


def row_from_record(d: dict[str, Any], *, scrub: bool = True) -> tuple[Any, ...]:
    """A canonical record (decoded JSON from ticks.clean) -> a market_data row in MARKET_DATA_COLUMNS order,
    with its revision key (sinks/base.py revision_of).

    NUL rule: every U+0000 is REPLACED by U+FFFD (not stripped) in each text field (source, symbol,
    data_type, item_id, interval, headline, text, url), in each flag, and in every string of metadata,
    keys and values at any depth. PostgreSQL refuses U+0000 in text and jsonb, which would otherwise make
    it refuse the whole batch and force a bisection.

    Big-integer rule: an integer in metadata (at any depth) that orjson cannot write, below -2**63 or above
    2**64 - 1, is written as its exact digits, a JSON number (jsonb keeps it exactly as numeric), so the row
    is built instead of raising TypeError, which would count as a data error and bisect the batch. Decode
    the record with loads_record, not orjson.loads, or such an integer is a float before it gets here.

    `scrub=False`: the caller knows the record holds no U+0000 (row_from_json), so the NUL rule is skipped.
    """
    g = d.get
    if scrub:
        source, symbol, kind, item_id = _text(d["source"]), _text(d["symbol"]), _text(g("data_type", "tick")), \
            _text(g("item_id", ""))
        interval, headline, text, url = _text(g("interval")), _text(g("headline")), _text(g("text")), _text(g("url"))
        flags = [_text(f) for f in g("flags") or ()]
    else:
        source, symbol, kind, item_id = d["source"], d["symbol"], g("data_type", "tick"), g("item_id", "")
        interval, headline, text, url = g("interval"), g("headline"), g("text"), g("url")
        flags = g("flags") or []
    realtime_end = _date(g("realtime_end"))
    ingested_at = _ts(g("ingested_at"))
    return (
        source, symbol, kind, datetime.fromisoformat(d["timestamp"]), item_id, g("price"), g("volume"), g("bid"),
        g("ask"), g("bid_size"), g("ask_size"), g("open"), g("high"), g("low"), g("close"), interval, g("value"),
        _date(g("realtime_start")), realtime_end, headline, text, url, g("sentiment"), flags,
        _json_text(g("metadata")), revision_of(kind, ingested_at, realtime_end), ingested_at,
    )


def row_from_json(raw: bytes) -> tuple[Any, ...]:
    """A clean record's JSON bytes -> its market_data row: loads_record, then row_from_record. JSON writes
    U+0000 only as the escape \\u0000, so a record whose bytes hold none has no NUL to replace, and its text
    fields are taken as decoded (8% fewer instructions per row, bench/README.md session 16)."""
    return row_from_record(loads_record(raw), scrub=b"\\u0000" in raw)


_SOURCE_AT = MARKET_DATA_COLUMNS.index("source")
_INGESTED_AT = MARKET_DATA_COLUMNS.index("ingested_at")
_REVISION_AT = MARKET_DATA_COLUMNS.index("revision")


def row_origin(row: tuple[Any, ...]) -> tuple[str, datetime | None]:
    """A row's source and ingested_at (for per-source metrics and latency), so callers need not know the layout."""
    return row[_SOURCE_AT], row[_INGESTED_AT]


# The natural key leads every row, so a batch's keys are row[:5] without a lookup.
_KEY_LEN = len(MARKET_DATA_KEY)
assert MARKET_DATA_COLUMNS[:_KEY_LEN] == MARKET_DATA_KEY
# A batch of at most this many rows, every key once, is written from one JSON array of rows in one statement
# (a second, the UPDATE, when it revises stored rows) instead of BEGIN, COPY's column lookup, COPY, the INSERT
# and COMMIT. orjson writes a row in ~3 us where asyncpg's binary COPY takes ~8 (and one array per column,
# session 14's way, ~19); the server's parse costs about what COPY's does up to ~200 rows and twice as much at
# 2,000, so larger batches keep COPY (bench/README.md, session 15).
SMALL_BATCH_ROWS = 128
# The type each market_data column is cast to from its JSON text (flags: a JSON array, metadata: JSON text).
_SQL_TYPES = {
    **dict.fromkeys(("source", "symbol", "data_type", "item_id", "interval", "headline", "text", "url"), "text"),
    **dict.fromkeys(("price", "volume", "bid", "ask", "bid_size", "ask_size", "open", "high", "low", "close",
                     "value", "sentiment"), "float8"),
    "ts": "timestamptz", "ingested_at": "timestamptz", "realtime_start": "date", "realtime_end": "date",
    "flags": "jsonb", "metadata": "jsonb", "revision": "int8",
}
assert set(_SQL_TYPES) == set(MARKET_DATA_COLUMNS)
# asyncpg writes date.max and date.min as PostgreSQL's infinity and -infinity (a FRED vintage still open,
# 9999-12-31, is stored as 'infinity', and economic_as_of relies on it); JSON carries them as their ISO dates,
# so the JSON way maps them back, or the two ways would store different values.
_DATE_EXTREMES = (f"(CASE {{v}} WHEN '{date.max.isoformat()}' THEN 'infinity' "
                  f"WHEN '{date.min.isoformat()}' THEN '-infinity' ELSE {{v}} END)")



# Clean records written as they are: the batch's JSON bytes joined into one array, parsed by the server
# (json_to_recordset), which computes what row_from_record computes. The worker then neither decodes a record
# nor encodes a row: per 2,000-row write ~25 ms less client CPU than building rows and COPYing them, for about
# as much more server CPU (bench/README.md, session 17): the worker, bound by its one Python thread under load,
# hands that work to another core. A record holding the escape \u0000 takes the rows' way (the NUL rule), and
# so does its whole batch, which keeps the batch's order for its dedupe.
_RECORD_TYPES = {**_SQL_TYPES, "flags": "text[]", "realtime_start": "text", "realtime_end": "text"}
_RECORD_FIELD = {"ts": "timestamp"}  # a record's field named otherwise than its column
_RECORD_DEFAULT = {"data_type": "'tick'", "item_id": "''", "flags": "'{}'", "metadata": "'{}'"}


def _record_column(c: str) -> str:
    v = f'r."{_RECORD_FIELD.get(c, c)}"'
    if c == "revision":  # sinks/base.py revision_of, exactly: microseconds of ingested_at, closed vintages ranked
        kind = f"coalesce(r.data_type, {_RECORD_DEFAULT['data_type']})"
        revisable = ", ".join(f"'{k}'" for k in sorted(REVISABLE_KINDS))
        return (f"(CASE WHEN {kind} IN ({revisable}) THEN "
                f"coalesce((extract(epoch FROM r.ingested_at) * 1000000)::int8, 0) + "
                f"(CASE WHEN {kind} = 'economic' AND r.realtime_end IS NOT NULL AND r.realtime_end <> "
                f"'{OPEN_VINTAGE_END.isoformat()}' THEN {CLOSED_VINTAGE_RANK}::int8 ELSE 0 END) ELSE 0 END)")
    if c in _RECORD_DEFAULT:
        return f"coalesce({v}, {_RECORD_DEFAULT[c]})"
    if _SQL_TYPES[c] == "date":
        return f"{_DATE_EXTREMES.format(v=v)}::date"
    return v


def _records_sql() -> str:
    """The records of $1 (a JSON array of clean records) as market_data rows, with their position (seq)."""
    fields = [c for c in MARKET_DATA_COLUMNS if c != "revision"]
    typed = ", ".join(f'"{_RECORD_FIELD.get(c, c)}" {_RECORD_TYPES[c]}' for c in fields)
    names = ", ".join(f'"{_RECORD_FIELD.get(c, c)}"' for c in fields)
    picked = ", ".join(f'{_record_column(c)} AS "{c}"' for c in MARKET_DATA_COLUMNS)
    return (f"SELECT {picked}, r.seq FROM ROWS FROM (json_to_recordset($1::json) AS ({typed})) "
            f"WITH ORDINALITY AS r({names}, seq)")


# A newer revision whose values are the stored row's and whose flags leave out some of the stored row's is not
# applied: a bar replayed after its stream moved on (a worker's restart replays its files) is not judged again
# (streams/anomalies/suite.py: late bars), and would have dropped the flags it was stored with. A follow-up's
# flagged copy only adds flags, and a revision with other values replaces the row, flags and all.
_VALUE_COLUMNS = tuple(c for c in MARKET_DATA_COLUMNS
                       if c not in MARKET_DATA_KEY and c not in ("flags", "metadata", "revision", "ingested_at"))
_KEEPS_FLAGS = "(s.flags @> t.flags OR ({}) IS DISTINCT FROM ({}))".format(
    ", ".join(f't."{c}"' for c in _VALUE_COLUMNS), ", ".join(f's."{c}"' for c in _VALUE_COLUMNS))


def upsert_records_sql(schema: str) -> tuple[str, str]:
    """upsert_sql's two statements over the clean records of $1 (a JSON array of them: write_json), deduped as
    upsert_sql says (highest revision, then first in the batch). The INSERT answers per source: the records
    staged, the keys and revisable keys among them, the rows inserted, and each record's ingested_at (epoch
    seconds, for the latency metric). It inserts nothing unless $1 holds exactly $2 records: a Kafka value that
    is not one JSON object (two joined by a comma) must not become two rows, nor none."""
    cols = ", ".join(f'"{c}"' for c in MARKET_DATA_COLUMNS)
    key = ", ".join(f'"{c}"' for c in MARKET_DATA_KEY)
    records = f"r AS MATERIALIZED ({_records_sql()})"
    deduped = (f"s AS (SELECT DISTINCT ON ({key}) {cols} FROM r WHERE (SELECT count(*) FROM r) = $2 "
               f"ORDER BY {key}, revision DESC, seq)")
    insert = (
        f"WITH {records}, {deduped}, "
        f"ins AS (INSERT INTO {schema}.market_data AS t ({cols}) SELECT {cols} FROM s "
        f"ON CONFLICT ({key}) DO NOTHING RETURNING t.source) "
        "SELECT r.source, count(*)::int AS staged, "
        "(SELECT count(*) FROM ins WHERE ins.source = r.source)::int AS inserted, "
        "(SELECT count(*) FROM s WHERE s.source = r.source)::int AS keys, "
        "(SELECT count(*) FROM s WHERE s.source = r.source AND s.revision > 0)::int AS revisable, "
        "array_agg(extract(epoch FROM r.ingested_at)::float8) AS ingested "
        "FROM r GROUP BY r.source"
    )
    sets = ", ".join(f'"{c}" = s."{c}"' for c in MARKET_DATA_COLUMNS if c not in MARKET_DATA_KEY)
    match = " AND ".join(f't."{c}" = s."{c}"' for c in MARKET_DATA_KEY)
    update = (
        f"WITH {records}, {deduped}, "
        f"up AS (UPDATE {schema}.market_data AS t SET {sets}, written_at = clock_timestamp() "
        f"FROM s WHERE {match} AND s.revision > 0 AND s.revision > t.revision AND {_KEEPS_FLAGS} "
        "RETURNING t.source) "
        "SELECT source, count(*)::int AS n FROM up GROUP BY source"
    )
    return insert, update


def insert_new_records_sql(schema: str) -> str:
    """upsert_records_sql's INSERT for a batch of new, distinct keys only, with the same answer: no dedupe sort
    and no ON CONFLICT (together ~30% of the server's CPU per row: bench/README.md, session 28). A key twice in
    the batch, or one already stored, fails it whole (unique_violation), and nothing of it stays; so when it
    succeeds, every record was inserted and each was a key of its own."""
    cols = ", ".join(f'"{c}"' for c in MARKET_DATA_COLUMNS)
    return (
        f"WITH r AS MATERIALIZED ({_records_sql()}), "
        f"ins AS (INSERT INTO {schema}.market_data ({cols}) SELECT {cols} FROM r WHERE (SELECT count(*) FROM r) = $2) "
        "SELECT r.source, count(*)::int AS staged, count(*)::int AS inserted, count(*)::int AS keys, "
        "(count(*) FILTER (WHERE r.revision > 0))::int AS revisable, "
        "array_agg(extract(epoch FROM r.ingested_at)::float8) AS ingested "
        "FROM r GROUP BY r.source"
    )


# ------------------------------------------------------------------ anomaly events and dead letters (migration 5)

_HEADER_PREFIX = "tickflow."  # the dead-letter headers streams/stages/publish.py Rejection writes
_PEEK_LIMIT = 1 << 20  # a dead letter's value is parsed for its symbol and source only below this size


def _epoch(seconds: Any) -> datetime | None:
    try:
        return datetime.fromtimestamp(float(seconds), UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _float(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _identity(record: Any, name: str) -> str:
    """One of the flagged record's identity fields for the anomaly key: '' when absent or null (migration 7
    back-fills stored rows with the same rule)."""
    value = record.get(name) if isinstance(record, dict) else None
    return "" if value is None else _text(str(value))


def anomaly_row(event: Mapping[str, Any]) -> tuple[Any, ...]:
    """An anomaly event (decoded JSON from ticks.anomalies: streams/stages/detect.py event_for) -> an
    anomaly_events row in ANOMALY_COLUMNS order. `ts` is the flagged record's event time (a stale-feed event's
    record is the feed's last point), else the detection time. The record's data_type, interval and item_id
    are part of the key ('' when it has none): a 1m and a 1d bar flagged at one time are two events. The NUL
    rule of row_from_record applies."""
    record = event.get("record") or {}
    detected_at = _epoch(event.get("detected_at")) or datetime.now(UTC)
    stamp = record.get("timestamp") if isinstance(record, dict) else None
    ts = datetime.fromisoformat(stamp) if isinstance(stamp, str) else detected_at
    return (
        _text(str(event["symbol"])), _text(str(event["detector"])), ts,
        _text(str(event.get("source") or (record.get("source") if isinstance(record, dict) else None) or "")),
        _identity(record, "data_type"), _identity(record, "interval"), _identity(record, "item_id"),
        _text(str(event.get("kind") or "")), _float(event.get("score")), _float(event.get("threshold")),
        _text(str(event.get("message") or "")), _json_text(record), _json_text(event.get("details")), detected_at,
    )


def dead_letter_row(*, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
                    timestamp_ms: int | None, headers: Sequence[tuple[str, bytes]] | None,
                    source_of_topic: Mapping[str, str] | None = None) -> tuple[Any, ...]:
    """A record of ticks.rejected -> a dead_letters row in DEAD_LETTER_COLUMNS order.

    The key is where the refused record was read (tickflow.source.topic/partition/offset headers); a record
    without them is keyed by its own place in `topic`, so it is still stored once. `source`: the raw topic's
    source (`source_of_topic`), else the value's "source" field; `symbol`: the value's "symbol" field, else
    the Kafka key. The original key and value bytes are kept as they were (bytea takes any byte)."""
    hdr: dict[str, str] = {}
    for k, v in headers or ():
        hdr[_text(k)] = _text(v.decode("utf-8", "replace")) if isinstance(v, bytes | bytearray) else _text(str(v))

    def own(name: str) -> str | None:
        return hdr.get(_HEADER_PREFIX + name)

    src_topic, src_part, src_off = own("source.topic"), own("source.partition"), own("source.offset")
    if src_topic is not None and src_part is not None and src_off is not None:
        try:
            where = (src_topic, int(src_part), int(src_off))
        except ValueError:
            where = (topic, partition, offset)
    else:
        where = (topic, partition, offset)
    fields: dict[str, Any] = {}
    if value and value[:1] == b"{" and len(value) <= _PEEK_LIMIT:
        try:
            decoded = orjson.loads(value)
            fields = decoded if isinstance(decoded, dict) else {}
        except orjson.JSONDecodeError:
            pass
    source = (source_of_topic or {}).get(where[0]) or fields.get("source")
    symbol = fields.get("symbol")
    if not isinstance(symbol, str):
        symbol = key.decode("utf-8", "replace") if key else None
    record_ts = _epoch(timestamp_ms / 1000.0) if timestamp_ms and timestamp_ms > 0 else None
    refused_at = _epoch(own("time")) or record_ts or datetime.now(UTC)
    return (
        _text(where[0]), where[1], where[2], _text(own("stage") or ""), _text(own("rule") or ""),
        own("error") or "", own("exception.class"), _text(source) if isinstance(source, str) else None,
        _text(symbol), refused_at, record_ts, key, value, orjson.dumps(hdr).decode(),
    )


_PG_TYPES = {
    "symbol": "text", "detector": "text", "ts": "timestamptz", "source": "text", "kind": "text",
    "score": "float8", "threshold": "float8", "message": "text", "record": "jsonb", "details": "jsonb",
    "detected_at": "timestamptz", "data_type": "text", "interval": "text", "item_id": "text", "topic": "text",
    "partition": "int4", "offset": "int8", "stage": "text", "rule": "text", "error": "text", "exception": "text",
    "record_ts": "timestamptz", "key": "bytea", "value": "bytea", "headers": "jsonb",
}


def insert_new_sql(schema: str, table: str, columns: Sequence[str], key: Sequence[str]) -> str:
    """INSERT of a batch passed as one array per column (unnest), keeping the first write of each natural key:
    a replayed batch, or a key twice in one batch, inserts nothing twice."""
    cols = ", ".join(f'"{c}"' for c in columns)
    arrays = ", ".join(f"${i}::{_PG_TYPES[c]}[]" for i, c in enumerate(columns, 1))
    conflict = ", ".join(f'"{c}"' for c in key)
    return (f"INSERT INTO {schema}.{table} ({cols}) SELECT * FROM unnest({arrays}) "
            f"ON CONFLICT ({conflict}) DO NOTHING")


def json_rows(rows: Sequence[tuple[Any, ...]]) -> str:
    """A batch as upsert_sql(json=True) reads it. Rows hold no NaN or infinity (JSON records cannot carry them,
    and orjson would write null); naive datetimes are UTC, as asyncpg takes them (asyncpg also writes a naive
    datetime.max as infinity: clean records' times are all aware, so that case never arises). An integer orjson
    cannot write (beyond a double's range: such a number stays an exact int) raises TypeError, a data error as
    asyncpg's encoders raise it for COPY."""
    return orjson.dumps(rows, option=orjson.OPT_NAIVE_UTC).decode()


def upsert_sql(schema: str, *, dedupe: bool = True, json: bool = False) -> tuple[str, str]:
    """The two statements that apply the revision policy to a staged batch (schema: quoted identifier), run
    in this order in the batch's transaction. `json=True`: the batch is not staged but passed as $1, a JSON
    array of rows, each an array in MARKET_DATA_COLUMNS' order (`json_rows`), keys all distinct.

    1. DISTINCT ON the natural key keeps one row per key from the batch: the highest revision, and on a tie
       the first in the batch, by _STAGE_SEQ, the row's position, which the caller stages with such a batch.
       Not by ctid: COPY does not place rows in its input order. When a row does not fit the page being
       filled, the server records that page's free space and may put a later, smaller row there, so a
       tick's second version landed ahead of its first (a batch mixing bars and ticks did, on PostgreSQL 15).
       `dedupe=False` skips this sort for the usual batch whose keys are all distinct (checked by the
       caller); it stages no positions.
    2. INSERT ... ON CONFLICT DO NOTHING inserts the new keys; RETURNING counts them per source.
    3. UPDATE replaces a stored row only with a strictly larger revision; RETURNING counts them. Immutable
       kinds all have revision 0, so their first write stays (any re-send is a no-op), and a stale revision
       of a revisable kind is ignored the same way; the caller skips this statement for a batch with no
       revision above 0, and for one whose every key the INSERT inserted (then no stored row can be older).
       Nor with a revision of the same values that would drop a stored flag (_KEEPS_FLAGS).
    Two statements, not one ON CONFLICT DO UPDATE: market_data is partitioned (migration 6), and PostgreSQL
    15 returns no system column (the `xmax = 0` that told an insert from an update) from a partitioned
    table. In READ COMMITTED the UPDATE takes a new snapshot, so a key another writer inserted while the
    INSERT waited on it (and skipped) is seen and updated if ours is newer: no revision is lost.
    """
    cols = ", ".join(f'"{c}"' for c in MARKET_DATA_COLUMNS)
    key = ", ".join(f'"{c}"' for c in MARKET_DATA_KEY)
    sets = ", ".join(f'"{c}" = s."{c}"' for c in MARKET_DATA_COLUMNS if c not in MARKET_DATA_KEY)
    match = " AND ".join(f't."{c}" = s."{c}"' for c in MARKET_DATA_KEY)
    if json:
        picked = ", ".join(
            f"ARRAY(SELECT jsonb_array_elements_text(r->{i})) AS flags" if c == "flags"
            else f'(r->>{i}) AS "{c}"' if _SQL_TYPES[c] == "text"
            else f'{_DATE_EXTREMES.format(v=f"r->>{i}")}::date AS "{c}"' if _SQL_TYPES[c] == "date"
            else f'(r->>{i})::{_SQL_TYPES[c]} AS "{c}"'
            for i, c in enumerate(MARKET_DATA_COLUMNS))
        rows = f"(SELECT {picked} FROM jsonb_array_elements($1::jsonb) AS r) AS s"
    elif dedupe:
        rows = f"(SELECT DISTINCT ON ({key}) {cols} FROM {_STAGE} ORDER BY {key}, revision DESC, {_STAGE_SEQ}) AS s"
    else:
        rows = f"{_STAGE} AS s"
    insert = (
        f"WITH ins AS (INSERT INTO {schema}.market_data AS t ({cols}) SELECT {cols} FROM {rows} "
        f"ON CONFLICT ({key}) DO NOTHING RETURNING t.source) "
        "SELECT source, count(*)::int AS n FROM ins GROUP BY source"
    )
    update = (
        f"WITH up AS (UPDATE {schema}.market_data AS t SET {sets}, written_at = clock_timestamp() "
        f"FROM {rows} WHERE {match} AND s.revision > 0 AND s.revision > t.revision AND {_KEEPS_FLAGS} "
        "RETURNING t.source) "
        "SELECT source, count(*)::int AS n FROM up GROUP BY source"
    )
    return insert, update


def result_from_counts(staged: Counter[str], done: dict[str, tuple[int, int]]) -> WriteResult:
    """Per-source rows staged and (inserted, updated) by the upsert -> the WriteResult; the rest were
    ignored (duplicates or stale revisions)."""
    inserted = {src: n for src, (n, _) in done.items() if n}
    updated = {src: n for src, (_, n) in done.items() if n}
    dups = {src: n - sum(done.get(src, (0, 0))) for src, n in staged.items()}
    dups = {src: n for src, n in dups.items() if n}
    return WriteResult(sum(inserted.values()), sum(dups.values()), inserted, sum(updated.values()), updated, dups)


STATEMENT_CACHE_SIZE = 64  # the writer runs a dozen distinct statements per schema


async def _fetch_planned(conn: asyncpg.Connection, query: str, *args: Any) -> list[asyncpg.Record]:
    """Run a statement whose plan depends on a table's size (the revision UPDATEs join market_data, the metrics
    fence looks up data_quality_metrics, retention scans for old rows) prepared unnamed, so it is planned afresh
    each time. Prepared once, PostgreSQL would switch it to a generic plan that keeps the row estimates of when
    it was made (a statement without parameters has one from the start): made on an empty schema (or a new
    month's partition), the UPDATE kept scanning the partition, so each small batch cost more as the table grew
    (8 -> 22 ms per 15-row write at 42k rows) until autovacuum's ANALYZE; that was the self-test's 60-150 ms
    latency. The INSERTs read only their batch (the conflict check goes by the unique index whatever the
    estimates), so they are prepared once per connection."""
    return await (await conn.prepare(query, name="")).fetch(*args)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset on release, instead of asyncpg's default query (advisory unlock all, CLOSE ALL, UNLISTEN,
    RESET ALL): a round trip after every batch, ~20% of a small batch's write time and client CPU (bench/README.md,
    session 13), for session state this writer never leaves. Its locks are transaction-level, it sets nothing,
    its prepared statements are meant to stay, it opens no cursor and listens to nothing; and the pool still rolls
    back a transaction left open before this runs.
    tests/integration/test_postgres_writer.py checks both."""


OPTIMISTIC_AFTER = 64  # batches written with ON CONFLICT after one met a stored key (_insert_records)
# `durable`'s one statement: how many of the connections that wrote are still the same live backends (a crash
# ends every backend), in a transaction that commits synchronously and writes WAL (a transactional logical
# message: no table, no privilege), so its commit flushes the WAL past every write that had returned. Waiting
# for the WAL writer instead (pg_current_wal_flush_lsn) took up to wal_writer_delay, 200 ms, at low rates.
_DURABLE_SQL = ("SELECT set_config('synchronous_commit', 'on', true), "
                "pg_logical_emit_message(true, 'tickflow.durable', ''), "
                "(SELECT coalesce(array_agg(a.pid), '{}') FROM pg_stat_activity a "
                "JOIN unnest($1::int[], $2::timestamptz[]) AS w(pid, started) "
                "ON a.pid = w.pid AND a.backend_start = w.started)::int[]")


_OUTAGES = (OSError, asyncpg.exceptions.CannotConnectNowError, asyncpg.exceptions.ConnectionDoesNotExistError)


class _OneLineOutage(logging.Filter):
    """asyncpg's "Failed to restore the pool connection floor; retrying" carries a traceback at every retry (1-60 s
    apart) while the database is away: one line naming the error instead. Any other record is left alone."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if str(record.msg).startswith("Failed to restore the pool connection floor") and isinstance(exc, _OUTAGES):
            record.msg, record.args = "PostgreSQL unavailable: the pool could not reconnect (%r); retrying", (exc,)
            record.exc_info = record.exc_text = None
        return True


def _quiet_pool_outages() -> None:
    pool_log = logging.getLogger("asyncpg.pool")
    if not any(isinstance(f, _OneLineOutage) for f in pool_log.filters):
        pool_log.addFilter(_OneLineOutage())


class PostgresTickWriter(BatchWriter):
    """Owns an asyncpg pool; `start` migrates the schema (under an advisory lock) and opens the pool."""

    def __init__(self, settings: PostgresSettings) -> None:
        self.settings = settings
        self.schema = settings.db_schema
        # The schema is the one name from settings that reaches SQL text: checked and quoted (sinks/schema.py);
        # every value is a bound parameter.
        self._q = quote_ident(self.schema)
        self.pool: asyncpg.Pool | None = None
        self._warned_transport = False
        self._upsert = upsert_sql(self._q)
        self._upsert_distinct = upsert_sql(self._q, dedupe=False)
        self._upsert_rows_json = upsert_sql(self._q, json=True)
        self._upsert_records = upsert_records_sql(self._q)
        self._insert_new_records = insert_new_records_sql(self._q)
        self._careful_batches = 0  # batches left to write with ON CONFLICT before trying the plain INSERT again
        # Asynchronous commit (postgres.async_commit): each connection's backend (pid -> its start), the
        # connections released since `durable` last confirmed them (pid -> release number), and how many times
        # `durable` found a connection that wrote gone before its writes were flushed.
        self._async_commit = settings.async_commit
        self._backend_start: dict[int, datetime] = {}
        self._unflushed: dict[int, int] = {}
        self._closed_by_us: set[int] = set()  # backends our own stop closed (see stop)
        self._releases = 0
        self._confirming: int | None = None  # the connection `durable` is using
        self.losses = 0

    async def _failed(self, exc: BaseException, where: str) -> SinkError:
        """classify(exc), and recycle the pool when a session turned out read-only (SQLSTATE 25006).

        A failover leaves pooled sessions on the demoted server (or a session keeps the read-only default it
        started with): they stay read-only while the new primary takes writes, and the pool would hand them
        out to every retry. Expiring the pool's connections makes the next acquire open a fresh session; the
        one in use is closed as it is released. The error is still SinkUnavailable: the caller retries."""
        if getattr(exc, "sqlstate", None) == READ_ONLY_SQLSTATE and self.pool is not None:
            await self.pool.expire_connections()
            logger.info("%s: a read-only session (25006); the pool's connections are replaced", where)
        return classify(exc, where)

    def _connect_kwargs(self) -> dict[str, Any]:
        if not self._warned_transport:
            self._warned_transport = True
            warning = self.settings.transport_warning()
            if warning:
                logger.warning("%s", warning)
        return {**self.settings.connect_kwargs(), "timeout": 10, "command_timeout": 60}

    async def migrate(self) -> None:
        try:
            # No statement timeout: migration 6 copies market_data into its partitions (minutes for 10M rows).
            conn = await asyncpg.connect(**{**self._connect_kwargs(), "command_timeout": None})
        except Exception as exc:
            raise classify(exc, f"connect {self.settings.dsn_for_display()}") from None
        try:
            if not await self._pending(conn):
                return
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"tickflow:{self.schema}")
                # Even with IF NOT EXISTS, CREATE SCHEMA needs the CREATE privilege on the database.
                if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
                                           self.schema):
                    await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self._q}")
                await conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {self._q}.schema_migrations "
                    "(version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
                )
                done = {r["version"] for r in await conn.fetch(f"SELECT version FROM {self._q}.schema_migrations")}
                for version, sql in MIGRATIONS:
                    if version in done:
                        continue
                    await conn.execute(sql.format(schema=self._q))
                    await conn.execute(f"INSERT INTO {self._q}.schema_migrations (version) VALUES ($1)", version)
                    logger.info("applied migration %d to schema %s", version, self.schema)
        finally:
            await conn.close()

    async def _pending(self, conn: asyncpg.Connection) -> bool:
        """Whether a migration is missing, asked read-only first: a worker running as a least-privilege writer
        role (README "Security": no CREATE privilege, so not even CREATE ... IF NOT EXISTS) starts on a
        schema the owner role migrated."""
        if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{self._q}.schema_migrations"):
            return True
        done = {r["version"] for r in await conn.fetch(f"SELECT version FROM {self._q}.schema_migrations")}
        return any(version not in done for version, _ in MIGRATIONS)

    async def _create_stage(self, conn: asyncpg.Connection) -> None:
        """The session's staging table, made by the first market_data write on each connection rather than when
        the pool opens it: `LIKE market_data` waits for any lock on market_data, and in the pool's connection
        setup it held every new connection up with it, so while market_data was locked (a migration, a long
        transaction) the archive stage, metrics snapshots and retention stopped too."""
        await conn.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} "
            f"(LIKE {self._q}.market_data INCLUDING DEFAULTS, {_STAGE_SEQ} int) ON COMMIT DELETE ROWS"
        )

    async def start(self) -> None:
        if self.pool is not None:
            return
        await self.migrate()
        _quiet_pool_outages()
        try:
            self.pool = await asyncpg.create_pool(
                **self._connect_kwargs(),
                min_size=self.settings.pool_min,
                max_size=self.settings.pool_max,
                # Statements prepared once per connection (a round trip, the parse and the plan off every write:
                # bench/README.md, session 21), but the UPDATEs (_fetch_planned); or all prepared unnamed at each
                # run when postgres.prepared_statements is off (a pooler in transaction mode that drops them).
                statement_cache_size=STATEMENT_CACHE_SIZE if self.settings.prepared_statements else 0,
                init=self._init_connection,
                reset=self._released,
                # Never replaced by the pool itself (asyncpg closes a connection after 50,000 queries or 300 s idle):
                # `durable` reads a backend that ended as a crash that may have dropped its asynchronous commits,
                # and reads everything since the last commit again.
                max_queries=2**62,
                max_inactive_connection_lifetime=0,
            )
        except Exception as exc:
            raise classify(exc, f"pool {self.settings.dsn_for_display()}") from None
        logger.info("connected to %s (schema %s)", self.settings.dsn_for_display(), self.schema)

    async def stop(self) -> None:
        pool, self.pool = self.pool, None
        if pool is not None:
            # Ours to close: their commits reached the WAL buffers, which outlive a backend that exits (only a
            # crash of the server loses them). A stage still busy as the worker stops writes again on a new pool,
            # and its next `durable` must not read these as a crash (a clean stop logged a loss and a rewind).
            self._closed_by_us |= set(self._unflushed)
            await pool.close()

    async def _init_connection(self, conn: asyncpg.Connection) -> None:
        """A new pool connection: asynchronous commit for its session (postgres.async_commit), unless the server
        replicates synchronously (a commit's wait covers the standbys, `durable` would not) or a pooler stands
        between (the backend is not the one the connection names, so `durable` could not tell it is alive)."""
        if not self._async_commit:
            return
        standbys, pid, started = await conn.fetchrow(
            "SELECT current_setting('synchronous_standby_names'), pg_backend_pid(), "
            "(SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid())")
        why = (f"the server replicates synchronously (synchronous_standby_names = {standbys!r})" if standbys else
               "a connection pooler stands between" if pid != conn.get_server_pid() or started is None else None)
        if why:
            self._async_commit = False
            logger.info("%s: the sink's commits wait for their flush", why)
            return
        await conn.execute("SET synchronous_commit = off")
        self._backend_start[conn.get_server_pid()] = started

    async def _released(self, conn: asyncpg.Connection) -> None:
        """The pool's reset (_keep_session), noting the connection for `durable`: what it committed asynchronously
        is durable only once the server has flushed it."""
        await _keep_session(conn)
        pid = conn.get_server_pid()
        if pid == self._confirming:  # `durable`'s own: it wrote nothing (a later check must not wait on it)
            self._confirming = None
        elif self._async_commit:
            self._releases += 1
            self._unflushed[pid] = self._releases

    async def durable(self) -> int:
        """Make every write that has returned durable, and return `losses`. Asynchronous commits are visible at
        once but reach the disk with the WAL writer, and a crash of the server drops those not yet flushed; a
        crash also ends every backend. So: if each connection released since the last call is still the same
        backend, their commits are in the WAL before this statement's synchronous commit, which flushes them;
        if one is gone, they may be lost, and `losses` grows (the caller reads its records again)."""
        if not self._unflushed or self.pool is None:
            return self.losses
        upto = self._releases
        pids = list(self._unflushed)
        try:
            async with self.pool.acquire() as conn:
                self._confirming = conn.get_server_pid()
                *_, alive = await conn.fetchrow(_DURABLE_SQL, pids, [self._backend_start.get(p) for p in pids])
        except Exception as exc:
            raise classify(exc, "confirm the WAL flush") from None
        # A backend our own stop closed (a stop running beside this check) exited: its commits are not lost.
        gone = [p for p in pids if p not in set(alive) and p not in self._closed_by_us]
        if gone:
            self.losses += 1
            logger.warning("%d of %d PostgreSQL connections that wrote ended before their writes were known flushed "
                           "(a crash of the server drops them): their records are read again", len(gone), len(pids))
        self._unflushed = {pid: n for pid, n in self._unflushed.items() if n > upto}
        self._closed_by_us &= set(self._unflushed)
        return self.losses

    async def write(self, rows: Sequence[tuple[Any, ...]]) -> WriteResult:
        if not rows:
            return WriteResult(0, 0)
        if self.pool is None:
            await self.start()
        assert self.pool is not None
        try:
            if len(rows) <= SMALL_BATCH_ROWS and len({r[:_KEY_LEN] for r in rows}) == len(rows):
                inserted, updated = await self._upsert_json(rows)
            else:
                inserted, updated = await self._upsert_staged(rows)
        except Exception as exc:
            raise await self._failed(exc, "write market_data") from None
        return result_from_counts(Counter(r[0] for r in rows),
                                  {src: (inserted.get(src, 0), updated.get(src, 0))
                                   for src in inserted.keys() | updated.keys()})

    takes_json = True

    async def write_json(self, records: Sequence[bytes]) -> WriteResult:
        """Clean records as their JSON bytes, parsed by the server (upsert_records_sql): the INSERT, one
        statement in autocommit, and the UPDATE only when it left keys of revisable records out (_upsert_json
        says why no transaction is needed). Written as rows (row_from_json, then write) instead: a batch of at
        most SMALL_BATCH_ROWS records, where the server's parse costs more time than the decode saves, and a
        batch with a record holding the escape \\u0000, whose NUL rule the server's parse does not apply."""
        if not records:
            return WriteResult(0, 0)
        if len(records) <= SMALL_BATCH_ROWS:
            return await self._write_json_as_rows(records)
        body = b",".join(records)
        if b"\\u0000" in body:  # one search for the batch: a comma between two records completes no escape
            return await self._write_json_as_rows(records)
        if self.pool is None:
            await self.start()
        assert self.pool is not None
        update = self._upsert_records[1]
        try:
            doc = "[" + body.decode() + "]"  # bytes not UTF-8: UnicodeDecodeError, a data error (bisected)
            got = await self._insert_records(doc, len(records))
            staged = sum(r["staged"] for r in got)
            if staged != len(records):
                raise SinkRefused(f"write market_data: {len(records)} Kafka records held {staged} JSON records")
            faults.reach("write.after_insert")
            inserted = {r["source"]: r["inserted"] for r in got}
            updated: dict[str, int] = {}
            if any(r["revisable"] for r in got) and sum(inserted.values()) < sum(r["keys"] for r in got):
                updated = {r["source"]: r["n"] for r in await self._fetch_planned(update, doc, len(records))}
        except Exception as exc:
            raise await self._failed(exc, "write market_data") from None
        result = result_from_counts(Counter({r["source"]: r["staged"] for r in got}),
                                    {src: (inserted.get(src, 0), updated.get(src, 0))
                                     for src in inserted.keys() | updated.keys()})
        ingested = {r["source"]: [t for t in r["ingested"] if t is not None] for r in got}
        return dataclasses.replace(result, ingested_by_source={src: at for src, at in ingested.items() if at})

    async def _insert_records(self, doc: str, n: int) -> list[asyncpg.Record]:
        """write_json's INSERT. Most batches bring only new, distinct keys, and for them the dedupe sort and ON
        CONFLICT DO NOTHING are ~30% of the server's CPU per row, so insert_new_records_sql goes first. It fails
        whole on a key stored or twice in the batch (a replay after a crash, a revision, a feed that re-sends),
        and nothing of it stays (one statement in autocommit); upsert_records_sql's INSERT then writes the batch.
        After a conflict, the next OPTIMISTIC_AFTER batches go that way at once: a replay or a revising feed
        conflicts batch after batch, and a failed try costs a statement. Each failed try is one ERROR line in the
        server's log (duplicate key value violates unique constraint "market_data_pkey"), at most one in
        OPTIMISTIC_AFTER + 1 batches: expected, not a fault."""
        assert self.pool is not None
        if self._careful_batches <= 0:
            try:
                return await self.pool.fetch(self._insert_new_records, doc, n)
            except asyncpg.UniqueViolationError:
                self._careful_batches = OPTIMISTIC_AFTER
        else:
            self._careful_batches -= 1
        got = await self.pool.fetch(self._upsert_records[0], doc, n)
        if sum(r["inserted"] for r in got) < sum(r["keys"] for r in got):
            self._careful_batches = OPTIMISTIC_AFTER
        return got

    async def _write_json_as_rows(self, records: Sequence[bytes]) -> WriteResult:
        rows = []
        for raw in records:
            try:
                rows.append(row_from_json(raw))
            except Exception as exc:  # not a clean record: the data's fault, found by bisecting
                raise SinkRefused(f"write market_data: a record does not decode: {type(exc).__name__}: {exc}"
                                  ) from exc
        ingested: dict[str, list[float]] = {}
        for row in rows:
            src, at = row_origin(row)
            if at is not None:
                ingested.setdefault(src, []).append(at.timestamp())
        return dataclasses.replace(await self.write(rows), ingested_by_source=ingested)

    async def _upsert_json(self, rows: Sequence[tuple[Any, ...]]) -> tuple[dict[str, int], dict[str, int]]:
        """A small batch with distinct keys, as one JSON parameter: the INSERT, one statement in autocommit, and
        only when it left keys of revisable rows out, the UPDATE of newer revisions as a second one.

        No transaction around the two (BEGIN and COMMIT would add two round trips to a one-statement write): the
        batch's offsets are committed only after both, so a crash between them replays the batch, whose INSERT
        then inserts nothing and whose UPDATE applies the revisions; the rows end the same. What differs is
        that a reader may see the batch's new keys a moment before its revisions of stored ones, and that a
        retry after a failure between the two counts the first attempt's inserted rows as duplicates."""
        assert self.pool is not None
        doc = json_rows(rows)
        insert, update = self._upsert_rows_json
        inserted = {r["source"]: r["n"] for r in await self.pool.fetch(insert, doc)}
        faults.reach("write.after_insert")
        if sum(inserted.values()) == len(rows) or not any(r[_REVISION_AT] for r in rows):
            return inserted, {}
        return inserted, {r["source"]: r["n"] for r in await self._fetch_planned(update, doc)}

    async def _fetch_planned(self, query: str, *args: Any) -> list[asyncpg.Record]:
        assert self.pool is not None
        async with self.pool.acquire() as conn:
            return await _fetch_planned(conn, query, *args)

    async def _execute_planned(self, query: str, *args: Any) -> str:
        """_fetch_planned for a statement whose command tag is the answer ("DELETE 100")."""
        assert self.pool is not None
        async with self.pool.acquire() as conn:
            stmt = await conn.prepare(query, name="")
            await stmt.fetch(*args)
            return stmt.get_statusmsg()

    async def _upsert_staged(self, rows: Sequence[tuple[Any, ...]]) -> tuple[dict[str, int], dict[str, int]]:
        """A batch through the connection's staging table (COPY), made by the connection's first such write."""
        assert self.pool is not None
        async with self.pool.acquire() as conn:
            try:
                return await self._upsert_batch(conn, rows)
            except asyncpg.UndefinedTableError as exc:  # this session's first staged write: no staging table yet
                if _STAGE not in str(exc):
                    raise
                await self._create_stage(conn)
            return await self._upsert_batch(conn, rows)

    async def _upsert_batch(self, conn: asyncpg.Connection,
                            rows: Sequence[tuple[Any, ...]]) -> tuple[dict[str, int], dict[str, int]]:
        """Stage rows and apply the revision policy in one transaction: (inserted, updated) rows per source."""
        keys = len({r[:_KEY_LEN] for r in rows})
        async with conn.transaction():
            if keys == len(rows):
                await conn.copy_records_to_table(_STAGE, records=rows, columns=MARKET_DATA_COLUMNS)
                insert, update = self._upsert_distinct
            else:  # a key twice: each row staged with its position, the tie-break of the dedupe
                await conn.copy_records_to_table(_STAGE, records=[(*r, i) for i, r in enumerate(rows)],
                                                  columns=_STAGE_COLUMNS)
                insert, update = self._upsert
            inserted = {r["source"]: r["n"] for r in await conn.fetch(insert)}
            # The UPDATE can only change a stored row whose key the INSERT skipped: when the INSERT took every key
            # of the batch (the usual batch of new points), there is none, and the statement is not run.
            revisable = any(r[_REVISION_AT] for r in rows) and sum(inserted.values()) < keys
            updated = {r["source"]: r["n"] for r in await _fetch_planned(conn, update)} if revisable else {}
            faults.reach("write.after_insert")
        return inserted, updated

    async def _insert_new(self, table: str, columns: Sequence[str], key: Sequence[str],
                          rows: Sequence[tuple[Any, ...]]) -> int:
        """Insert rows (in `columns` order) in one statement, keeping the first write per key; returns how
        many were new."""
        if not rows:
            return 0
        if self.pool is None:
            await self.start()
        assert self.pool is not None
        arrays = [list(col) for col in zip(*rows, strict=True)]
        try:
            status = await self.pool.execute(insert_new_sql(self._q, table, columns, key), *arrays)
        except Exception as exc:
            raise await self._failed(exc, f"write {table}") from None
        return int(status.rsplit(" ", 1)[-1])

    async def write_anomalies(self, rows: Sequence[tuple[Any, ...]]) -> int:
        """Store anomaly events (rows from anomaly_row); idempotent on ANOMALY_KEY (symbol, detector, ts, source
        and the record's data_type, interval, item_id).
        Returns the rows that were new."""
        return await self._insert_new("anomaly_events", ANOMALY_COLUMNS, ANOMALY_KEY, rows)

    async def write_dead_letters(self, rows: Sequence[tuple[Any, ...]]) -> int:
        """Store dead letters (rows from dead_letter_row); idempotent on the source (topic, partition,
        offset). Returns the rows that were new."""
        return await self._insert_new("dead_letters", DEAD_LETTER_COLUMNS, DEAD_LETTER_KEY, rows)

    async def delete_older_than(self, cutoff: datetime, batch_rows: int) -> int:
        """Delete rows older than `cutoff` a batch at a time (short transactions, no long locks)."""
        if self.pool is None:
            await self.start()
        assert self.pool is not None
        deleted = 0
        targets = ((f"{self._q}.market_data", "ts"), (f"{self._q}.data_quality_metrics", "recorded_at"),
                   (f"{self._q}.anomaly_events", "ts"), (f"{self._q}.dead_letters", "ts"))
        try:
            for table, column in targets:
                # A ctid is unique only within one table: on the partitioned market_data a batch is named by
                # (tableoid, ctid), and the outer `column < $1` prunes it to the partitions that can hold old
                # rows (the straddling one and DEFAULT once retention dropped the whole ones).
                sql = (f"DELETE FROM {table} WHERE {column} < $1 AND (tableoid, ctid) IN "
                       f"(SELECT tableoid, ctid FROM {table} WHERE {column} < $1 LIMIT $2)")
                while True:
                    status = await self._execute_planned(sql, cutoff, batch_rows)
                    n = int(status.rsplit(" ", 1)[-1])
                    deleted += n
                    if n < batch_rows:
                        break
        except Exception as exc:
            raise await self._failed(exc, "retention delete") from None
        return deleted

    async def create_partitions(self, period: str, now: datetime, ahead: int) -> list[str]:
        """Create the missing market_data partitions of `period`: now's period and the `ahead` next ones
        (migration 6's SECURITY DEFINER function: the writer role needs only EXECUTE on it). Rows the DEFAULT
        partition holds for a new range are moved into it. Returns the partitions created."""
        if self.pool is None:
            await self.start()
        assert self.pool is not None
        try:
            rows = await self.pool.fetch(
                f"SELECT * FROM {self._q}.market_data_create_partitions($1::text, $2::timestamptz, "
                "date_trunc($1::text, $2::timestamptz, 'UTC') + ($3::int + 1) * ('1 ' || $1::text)::interval)",
                period, now, ahead)
        except Exception as exc:
            raise await self._failed(exc, "create market_data partitions") from None
        return [r[0] for r in rows]

    async def partition_default(self, period: str, *, limit: int = 1000) -> list[str]:
        """Create a market_data partition of `period` for each period the DEFAULT partition holds rows of
        (backfilled history: partitions are otherwise made from now on), moving those rows into it, so that
        retention drops them whole (migration 8: the same SECURITY DEFINER function, both bounds NULL). One
        partition per call of the function, each its own transaction, so market_data is locked for one
        period's move at a time; at most `limit` partitions. Returns the partitions created."""
        if self.pool is None:
            await self.start()
        assert self.pool is not None
        made: list[str] = []
        try:
            while len(made) < limit:
                # A period of history can be millions of rows: longer than the pool's 60 s command timeout.
                got = await self.pool.fetchval(
                    f"SELECT * FROM {self._q}.market_data_create_partitions($1::text, NULL, NULL)", period,
                    timeout=_MOVE_TIMEOUT_SECONDS)
                if got is None:
                    break
                made.append(got)
        except Exception as exc:
            raise await self._failed(exc, "partition the DEFAULT partition's rows") from None
        return made

    async def drop_partitions_before(self, cutoff: datetime) -> list[tuple[str, int]]:
        """Detach and drop the market_data partitions whose whole range is older than `cutoff` (one short
        catalog change each, whatever their size). Returns (partition, planner's row estimate) per drop."""
        if self.pool is None:
            await self.start()
        assert self.pool is not None
        try:
            rows = await self.pool.fetch(f"SELECT * FROM {self._q}.market_data_drop_partitions($1)", cutoff)
        except Exception as exc:
            raise await self._failed(exc, "drop market_data partitions") from None
        return [(r["partition_name"], r["approx_rows"]) for r in rows]

    async def partitions(self) -> list[dict[str, Any]]:
        """market_data's partitions and their [lower_bound, upper_bound) ranges, DEFAULT last."""
        if self.pool is None:
            await self.start()
        assert self.pool is not None
        try:
            rows = await self.pool.fetch(f"SELECT * FROM {self._q}.market_data_partitions()")
        except Exception as exc:
            raise await self._failed(exc, "list market_data partitions") from None
        return [dict(r) for r in rows]

    async def recent(self, symbol: str, limit: int) -> list[dict[str, Any]]:
        if self.pool is None:
            await self.start()
        assert self.pool is not None
        cols = ", ".join(f'"{c}"' for c in MARKET_DATA_COLUMNS)
        try:
            rows = await self.pool.fetch(
                f"SELECT {cols}, written_at FROM {self._q}.market_data WHERE symbol = $1 "
                'ORDER BY "timestamp" DESC LIMIT $2', symbol, limit)  # the indexed copy of ts (migration 3)
        except Exception as exc:
            raise await self._failed(exc, "read market_data") from None
        return [dict(r) for r in rows]

    async def write_metrics(self, worker: str, snapshots: dict[str, dict[str, Any]], *, cluster: str | None = None,
                            window_seconds: float = 60.0) -> list[str]:
        """One data_quality_metrics row per source. With `cluster` (the Faust app id: `worker` is then
        "<cluster>@<url>"), the snapshots are of a cluster-wide table whose counts never go back, so a source's
        row behind the newest one any worker of that cluster stored in the last `window_seconds` is stale (a
        worker woken from a pause, or mid-rebalance, still thinks it owns the table) and is not written.
        Returns the sources skipped."""
        if self.pool is None:
            await self.start()
        assert self.pool is not None
        records = [
            (
                worker, source, s["processed"], s["valid"], s["rejected"], s["written"], s["duplicates"],
                s["throughput_per_sec"], s["avg_latency_ms"], s["p50_latency_ms"], s["p95_latency_ms"],
                s["p99_latency_ms"], orjson.dumps(s["rejected_by_rule"]).decode(),
            )
            for source, s in snapshots.items()
        ]
        cols = ("worker, source, processed, valid, rejected, written, duplicates, throughput_per_sec, avg_latency_ms,"
                " p50_latency_ms, p95_latency_ms, p99_latency_ms, rejected_by_rule")
        try:
            # A snapshot commits synchronously whatever postgres.async_commit says: nothing re-sends a lost one.
            async with self.pool.acquire() as conn, conn.transaction():
                if cluster is None:
                    await conn.execute("SET LOCAL synchronous_commit = on")
                    await conn.executemany(
                        f"INSERT INTO {self._q}.data_quality_metrics ({cols})"
                        " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13::jsonb)", records)
                    return []
                # One fenced writer at a time per cluster, so the check and the insert order agree.
                await conn.execute("SELECT set_config('synchronous_commit', 'on', true), "
                                   "pg_advisory_xact_lock(hashtext('tickflow.metrics:' || $1))", cluster)
                written = {r["source"] for r in await _fetch_planned(
                    conn, f"INSERT INTO {self._q}.data_quality_metrics (recorded_at, {cols})"
                    " SELECT clock_timestamp(), $1, n.* FROM unnest($2::text[], $3::bigint[], $4::bigint[],"
                    " $5::bigint[], $6::bigint[], $7::bigint[], $8::float8[], $9::float8[], $10::float8[],"
                    " $11::float8[], $12::float8[], $13::text[]::jsonb[]) AS n(source, processed, valid, rejected,"
                    " written, duplicates, tp, avg, p50, p95, p99, rules)"
                    f" WHERE NOT EXISTS (SELECT 1 FROM {self._q}.data_quality_metrics m WHERE m.source = n.source"
                    " AND m.recorded_at > now() - make_interval(secs => $15)"
                    " AND left(m.worker, length($14) + 1) = $14 || '@'"
                    " AND (m.processed > n.processed OR m.valid > n.valid OR m.rejected > n.rejected"
                    " OR m.written > n.written OR m.duplicates > n.duplicates)) RETURNING source",
                    worker, *([r[i] for r in records] for i in range(1, 13)), cluster, window_seconds)}
        except Exception as exc:
            raise await self._failed(exc, "write data_quality_metrics") from None
        return [source for source in snapshots if source not in written]
