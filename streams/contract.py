"""The published record contract of tickflow's output topics, for the teams that read them.

Producers of ticks.clean and ticks.anomalies stay strict (MarketDataPoint forbids unknown fields); readers
must not be: a field added to a v1 record is a compatible change, so the readers here ignore unknown fields
and a consumer keeps working while we add one. Removing or renaming a field, changing its type or adding a
`data_type` value is not compatible and becomes v2 (a new `tickflow.schema` header value, a new file under
schemas/). The JSON Schemas under schemas/ are generated from the models below (streams/tools/schemas.py) and
a unit test fails when they drift.

Every clean and anomaly record carries the headers of `headers()`, and its Kafka timestamp is the event time
(`event_time_ms`), not the time it was produced. A leaf module: imports only streams.models.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from streams.models import MarketDataPoint

CLEAN: Final = "ticks.clean"
ANOMALIES: Final = "ticks.anomalies"
REJECTED: Final = "ticks.rejected"
Kind = Literal["ticks.clean", "ticks.anomalies", "ticks.rejected"]

# One version per record type. The names are the record types, not the topic names (topics.yaml may rename
# a topic; its records keep their schema).
SCHEMA_VERSION: Final[dict[str, int]] = {CLEAN: 1, ANOMALIES: 1, REJECTED: 1}
CONTENT_TYPE: Final = "application/json"
SCHEMA_HEADER: Final = "tickflow.schema"
CONTENT_TYPE_HEADER: Final = "content-type"
JSON_SCHEMA_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"

# Kafka 4 refuses a record timestamp more than message.timestamp.after.max.ms (default 1 h) ahead of the broker's
# clock (InvalidTimestampError, checked on the local stack). The validate stage already rejects records more
# than validation.future_tolerance_seconds (5 s) ahead; this margin covers a tolerance raised past the broker's.
MAX_FUTURE_MS: Final = 50 * 60 * 1000
# A topic's time retention counts from its records' timestamps (a closed segment goes once its newest timestamp
# is older than retention.ms), so a backfill stamped with its 2020 event times would be deleted minutes after its
# segment closes, before a consumer that lags (the write stage during a database outage) has read it. An event
# older than this is stamped with the time it is published instead; its event time stays in the value. A day is
# below every retention of topics.yaml's output topics (3 days and more).
MAX_PAST_MS: Final = 24 * 60 * 60 * 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def schema_id(kind: str) -> str:
    """`ticks.clean/v1`: the value of the tickflow.schema header."""
    return f"{kind}/v{SCHEMA_VERSION[kind]}"


_HEADERS: Final[dict[str, tuple[tuple[str, bytes], ...]]] = {
    kind: ((SCHEMA_HEADER, schema_id(kind).encode()), (CONTENT_TYPE_HEADER, CONTENT_TYPE.encode()))
    for kind in (CLEAN, ANOMALIES)
}


def headers(kind: str) -> list[tuple[str, bytes]]:
    """The headers every produced clean or anomaly record carries (a fresh list: senders append to it)."""
    return list(_HEADERS[kind])


# ------------------------------------------------------------------------------------- the record timestamp


def event_time_ms(ts: datetime | str, now: float | None = None) -> int | None:
    """The Kafka record timestamp of a record: its event time (the record's `timestamp`) in whole milliseconds,
    floored. None (the producer then stamps its own time) where a broker would refuse it and the send would be
    retried for ever (more than MAX_FUTURE_MS after `now`, the wall clock), and for an event more than
    MAX_PAST_MS before `now`, which retention would delete before it is read."""
    if isinstance(ts, str):
        ts = datetime.fromisoformat(ts)
    ms = (ts - _EPOCH) // _MS
    now_ms = (time.time() if now is None else now) * 1000.0
    if ms < now_ms - MAX_PAST_MS or ms > now_ms + MAX_FUTURE_MS:
        return None
    return ms


def anomaly_time_ms(event: Mapping[str, Any], now: float | None = None) -> int | None:
    """An anomaly event's record timestamp: the event time of the record it judges (within event_time_ms's
    bounds); a feed event (a silence has no record of its own) uses when it was detected."""
    record = event.get("record") or {}
    if event.get("kind") == "feed" or "timestamp" not in record:
        detected = event.get("detected_at")
        return int(detected * 1000) if isinstance(detected, int | float) and detected >= 0 else None
    return event_time_ms(record["timestamp"], now)


def outgoing_seconds(ms: int | None) -> float | None:
    """`ms` as the float seconds streams.stages.publish.Outgoing carries. The sender truncates seconds * 1000 to
    an int; ms / 1000 would come back 1 ms short for about 0.6% of values, the half millisecond never does."""
    return None if ms is None else (ms + 0.5) / 1000.0


# ------------------------------------------------------------------------------------------ tolerant readers


class CleanRecord(MarketDataPoint):
    """A ticks.clean value as a reader sees it: MarketDataPoint, but fields added after v1 are ignored."""

    model_config = ConfigDict(extra="ignore", title="ticks.clean v1")


class AnomalyEvent(BaseModel):
    """A ticks.anomalies value: one detector's verdict on one record (or on a silent feed). Unknown fields are
    ignored. Built by streams/stages/detect.py event_for: Anomaly.to_dict() plus source and detected_at."""

    model_config = ConfigDict(extra="ignore", title="ticks.anomalies v1")

    detector: str = Field(description="the detector's name, e.g. brownlees_gallo, stale_feed")
    symbol: str
    score: float | None = Field(description="the detector's statistic; null when it was not finite")
    threshold: float | None = Field(description="the score's limit for this detector; null when not finite")
    kind: Literal["tick", "feed", "gap", "corporate_action"] = Field(
        description="tick: the record is suspect (and flagged on ticks.clean as anomaly:<detector>); feed: the "
                    "symbol's feed went silent; gap: bars are missing; corporate_action: a split or similar")
    message: str = Field(description="a sentence for a human")
    record: CleanRecord | dict[str, Any] = Field(
        union_mode="left_to_right",  # a full record as CleanRecord, even with an added field; else the dict
        description="the judged record as on ticks.clean; a feed event's record is the last update's symbol, "
                    "source and timestamp")
    details: dict[str, Any] = Field(default_factory=dict, description="the detector's extra numbers; "
                                    "follow_up=true: a verdict on an earlier bar, confirmed by a later one")
    source: str = Field(description="the source (raw topic) the record came from")
    detected_at: float = Field(description="when the worker flagged it, seconds since the epoch (UTC)")


def read_clean(data: bytes | str) -> CleanRecord:
    """Parse a ticks.clean value, ignoring fields this version does not know."""
    return CleanRecord.model_validate_json(data)


def read_anomaly(data: bytes | str) -> AnomalyEvent:
    """Parse a ticks.anomalies value, ignoring fields this version does not know."""
    return AnomalyEvent.model_validate_json(data)


# --------------------------------------------------------------------------------------------- dead letters

_UINT = r"^[0-9]+$"


class DeadLetterHeaders(BaseModel):
    """The headers of a ticks.rejected record, decoded as UTF-8. Its key, value and timestamp are the original
    record's, untouched; the original record's own headers are kept too (the extra properties), except any
    tickflow.* ones, which these replace (but tickflow.replayed_from). Built by streams/stages/publish.py
    Rejection.headers."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, title="ticks.rejected v1 headers")

    source_topic: str = Field(alias="tickflow.source.topic", description="the topic the record was read from")
    source_partition: str = Field(alias="tickflow.source.partition", pattern=_UINT,
                                  description="its partition, a decimal integer")
    source_offset: str = Field(alias="tickflow.source.offset", pattern=_UINT,
                               description="its offset, a decimal integer")
    stage: str = Field(alias="tickflow.stage", description="the stage that refused it: validate or write")
    rule: str = Field(alias="tickflow.rule", description="the rule that refused it, e.g. schema.invalid_json, "
                      "timestamp.future, anomaly.<detector> (quarantine), write.refused")
    error: str = Field(alias="tickflow.error", max_length=1000, description="why, for a human (at most 1000 "
                       "characters)")
    exception_class: str = Field(alias="tickflow.exception.class",
                                 description="the exception's class name, e.g. RejectedRecord")
    time: str = Field(alias="tickflow.time", pattern=r"^[0-9]+\.[0-9]{6}$",
                      description="when it was refused, seconds since the epoch with 6 decimals")
    schema_id: str | None = Field(default=None, alias="tickflow.schema",
                                  description="ticks.rejected/v<N>: the version of these headers (absent on dead "
                                              "letters written before it was added)")
    replayed_from: str | None = Field(
        default=None, alias="tickflow.replayed_from", pattern=r"^[0-9]+:[0-9]+$",
        description="present when a record `tickflow replay-dlq` sent back was refused again: the partition and "
                    "offset (\"3:1042\") in this topic of the dead letter it was replayed from")
    value_truncated_from: str | None = Field(
        default=None, alias="tickflow.value.truncated_from", pattern=_UINT,
        description="present only when the original value exceeded the broker's limit and was cut: its size in "
                    "bytes")


def read_dead_letter(raw: Iterable[tuple[str, bytes]]) -> DeadLetterHeaders:
    """A ticks.rejected record's headers (as a Kafka client lists them) as DeadLetterHeaders."""
    return DeadLetterHeaders.model_validate({k: v.decode("utf-8", "replace") for k, v in raw})


# ------------------------------------------------------------------------------------------- JSON Schemas

_MODELS: Final[dict[str, type[BaseModel]]] = {CLEAN: CleanRecord, ANOMALIES: AnomalyEvent,
                                              REJECTED: DeadLetterHeaders}
_WHAT: Final[dict[str, str]] = {CLEAN: "value", ANOMALIES: "value", REJECTED: "headers"}


def schema_file(kind: str) -> str:
    """The file name under schemas/: ticks.clean.v1.json, ticks.rejected.headers.v1.json."""
    part = "" if _WHAT[kind] == "value" else f".{_WHAT[kind]}"
    return f"{kind}{part}.v{SCHEMA_VERSION[kind]}.json"


def json_schemas() -> dict[str, dict[str, Any]]:
    """The published JSON Schemas by file name, generated from the models. Readers' models, so no
    `additionalProperties: false`: a record with an added field still matches its version's schema."""
    out: dict[str, dict[str, Any]] = {}
    for kind, model in _MODELS.items():
        body = model.model_json_schema(mode="serialization" if _WHAT[kind] == "value" else "validation")
        contract: dict[str, Any] = {"describes": f"the {_WHAT[kind]} of a {kind} record"}
        if kind == CLEAN:
            contract["natural_key"] = ["source", "symbol", "data_type", "timestamp", "item_id"]
            contract["revisions"] = ("bar, quote and economic records are revised under the same natural key: the "
                                     "newest revision wins (the larger ingested_at; an economic record whose "
                                     "realtime_end is a real date closes its vintage and beats an open one)")
        if _WHAT[kind] == "value":
            contract |= {"key": "the symbol, UTF-8", "headers": {SCHEMA_HEADER: schema_id(kind),
                                                                  CONTENT_TYPE_HEADER: CONTENT_TYPE},
                         "timestamp": "event time, ms since the epoch: the record's timestamp (the publish "
                                      "time when that is over a day old or 50 min ahead)"
                         if kind == CLEAN else "the judged record's event time (within the same bounds); a feed "
                                               "event's detected_at"}
        out[schema_file(kind)] = {"$schema": JSON_SCHEMA_DIALECT, "$id": f"urn:tickflow:{schema_id(kind)}",
                                  **body, "x-tickflow": contract}
    return out
