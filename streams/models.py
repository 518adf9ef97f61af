"""The canonical record on ticks.clean and in PostgreSQL. A leaf module: imports nothing of ours.

Every kind of market data fits one shape without losing fields: ticks, trades and quotes use
price/volume/bid/ask, bars use open/high/low/close/volume + interval, economic observations use
value + realtime dates, news and social items use headline/text/url/sentiment. `item_id` completes
the natural key (source, symbol, data_type, timestamp, item_id) that makes every write idempotent.
`point_from_json` is how the validate stage reads a raw record into one (msgspec first, pydantic's word on
whatever msgspec does not take).
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

import msgspec
import orjson
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints


class DataType(StrEnum):
    TICK = "tick"
    TRADE = "trade"
    QUOTE = "quote"
    BAR = "bar"
    ECONOMIC = "economic"
    NEWS = "news"
    SOCIAL = "social"


def _to_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00 and the like: a data error, not an internal one
        raise ValueError("date-time out of range once converted to UTC") from None


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]
ShortStr = Annotated[str, StringConstraints(min_length=1, max_length=64)]


# The brief's `@dataclass MarketDataPoint` field order: what positional arguments mean (keywords name any field).
BRIEF_POSITIONAL = ("symbol", "timestamp", "price", "volume", "bid", "ask", "source", "data_type", "metadata")


class MarketDataPoint(BaseModel):
    """One market-data point, as the brief named it, with typed fields for every kind of data.

    Built as the brief's dataclass is, too: positional arguments are taken in the brief's field order
    (BRIEF_POSITIONAL), `MarketDataPoint("AAPL", ts, 189.5, 100, source="feed")`, then validated as keywords
    are; more than nine, or one also given by keyword, is a TypeError as with a dataclass. It is not a
    dataclass: `point.model_dump()` is `dataclasses.asdict(point)` (`model_dump(mode="json")` for JSON types).
    The JSON Schema, the field order and the serialisation are the keyword form's; the validate stage builds
    its points without __init__ (point_from_json), so none of this is on its path."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, use_enum_values=True)

    symbol: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    timestamp: UtcDatetime
    source: ShortStr
    data_type: DataType = DataType.TICK
    price: float | None = None
    volume: float | None = None
    bid: float | None = None
    ask: float | None = None
    bid_size: float | None = None
    ask_size: float | None = None
    open: float | None = None
    high: float | None = None
    low: float | None = None
    close: float | None = None
    interval: Annotated[str, StringConstraints(max_length=16)] | None = None
    value: float | None = None
    realtime_start: date | None = None
    realtime_end: date | None = None
    headline: str | None = None
    text: str | None = None
    url: Annotated[str, StringConstraints(max_length=2048)] | None = None
    sentiment: float | None = Field(default=None, ge=-1.0, le=1.0)
    item_id: Annotated[str, StringConstraints(max_length=256)] = ""
    flags: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    # When the producer published the raw record; the end-to-end latency is measured from here.
    ingested_at: UtcDatetime | None = None

    def __init__(self, /, *args: Any, **data: Any) -> None:
        __tracebackhide__ = True
        if args:
            data = _brief_positional(type(self).__name__, args, data)
        super().__init__(**data)

    # Pydantic's validators (model_validate, model_validate_json) build instances without this __init__, as they
    # do without BaseModel's: they never see positional arguments (RootModel's __init__ says the same).
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    def natural_key(self) -> tuple[str, str, str, datetime, str]:
        return (self.source, self.symbol, str(self.data_type), self.timestamp, self.item_id)

    def to_json(self) -> bytes:
        """model_dump_json(exclude_none=True)'s bytes, once per clean record. orjson writes the same bytes (the
        fields in order, UTC as Z, the same floats and escapes: tests/unit/streams/test_models.py) in about two
        thirds of the time, as pydantic's serializer takes a slow path for the timezone.utc our validator sets;
        what orjson cannot write as pydantic would (a big integer, a non-str key, a Decimal or bytes in
        metadata) is left to pydantic."""
        try:
            return _dumps({k: v for k, v in self.__dict__.items() if v is not None}, option=_UTC_Z)
        except TypeError:
            return self.__pydantic_serializer__.to_json(self, exclude_none=True)


_dumps, _UTC_Z = orjson.dumps, orjson.OPT_UTC_Z


def _brief_positional(name: str, args: tuple[Any, ...], data: dict[str, Any]) -> dict[str, Any]:
    """Positional arguments -> keywords in the brief's field order, refused as a dataclass refuses them."""
    if len(args) > len(BRIEF_POSITIONAL):
        raise TypeError(f"{name}() takes at most {len(BRIEF_POSITIONAL)} positional arguments "
                        f"({', '.join(BRIEF_POSITIONAL)}) but {len(args)} were given")
    named = dict(zip(BRIEF_POSITIONAL, args, strict=False))
    for field in named:
        if field in data:
            raise TypeError(f"{name}() got multiple values for argument {field!r}")
    return {**named, **data}


# ------------------------------------------------------------------ the validate stage's parse, msgspec first

_Kind = Literal["tick", "trade", "quote", "bar", "economic", "news", "social"]
_Short = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
_Aware = Annotated[datetime, msgspec.Meta(tz=True)]


class _FastPoint(msgspec.Struct, forbid_unknown_fields=True):
    """MarketDataPoint's fields, order, defaults and constraints, for msgspec (checked at import below)."""

    symbol: _Short
    timestamp: _Aware
    source: _Short
    data_type: _Kind = DataType.TICK  # the very default pydantic keeps (a default is not validated)
    price: float | None = None
    volume: float | None = None
    bid: float | None = None
    ask: float | None = None
    bid_size: float | None = None
    ask_size: float | None = None
    open: float | None = None
    high: float | None = None
    low: float | None = None
    close: float | None = None
    interval: Annotated[str, msgspec.Meta(max_length=16)] | None = None
    value: float | None = None
    realtime_start: date | None = None
    realtime_end: date | None = None
    headline: str | None = None
    text: str | None = None
    url: Annotated[str, msgspec.Meta(max_length=2048)] | None = None
    sentiment: Annotated[float, msgspec.Meta(ge=-1.0, le=1.0)] | None = None
    item_id: Annotated[str, msgspec.Meta(max_length=256)] = ""
    flags: list[str] = msgspec.field(default_factory=list)
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    ingested_at: _Aware | None = None


if _FastPoint.__struct_fields__ != tuple(MarketDataPoint.model_fields):  # pragma: no cover - an edit of one only
    raise ImportError("streams.models: _FastPoint's fields differ from MarketDataPoint's")

_decode_fast = msgspec.json.Decoder(_FastPoint).decode
_as_dict = msgspec.structs.asdict
_validate_json = MarketDataPoint.__pydantic_validator__.validate_json
_FIELD_NAMES = frozenset(MarketDataPoint.model_fields)
_new_instance = object.__new__
_set_fields_set = BaseModel.__pydantic_fields_set__.__set__  # type: ignore[attr-defined]
_set_extra = BaseModel.__pydantic_extra__.__set__  # type: ignore[attr-defined]
_set_private = BaseModel.__pydantic_private__.__set__  # type: ignore[attr-defined]
_set_dict = object.__setattr__
# Where msgspec and pydantic read the same text differently, the record takes pydantic's way: a fraction of a
# second with more than 6 digits (msgspec rounds it, pydantic truncates), and nesting past pydantic's recursion
# limit (~200; msgspec's is ~1,000): metadata in a document with this many brackets at all.
_LONG_FRACTION = re.compile(rb":\d\d[.,]\d{7}").search
_MAX_BRACKETS = 64


def point_from_json(raw: bytes) -> MarketDataPoint:
    """`MarketDataPoint.model_validate_json(raw, strict=True)`'s point, or its ValidationError, for less: the
    validate stage's path per record went from 14.5 to 12.7 us (bench/validate_cost.py; bench/README.md,
    session 27). msgspec decodes and checks the
    record against the same fields and constraints; what it accepts is what pydantic would have built
    (tests/unit/streams/test_models.py checks the two side by side on generated documents), and the instance is
    assembled as pydantic's own validator assembles it. Anything msgspec refuses, and the few texts the two
    read differently, go through pydantic, whose error types are the rejection rules (schema.<type>). The
    instance's fields_set names every field: the fast way does not know which ones the JSON named (nothing in
    tickflow reads it)."""
    if _LONG_FRACTION(raw) is None:
        try:
            d = _as_dict(_decode_fast(raw))
        except (msgspec.ValidationError, msgspec.DecodeError):
            d = None
        if d is not None and (not d["metadata"] or raw.count(b"[") + raw.count(b"{") < _MAX_BRACKETS):
            try:
                ts = d["timestamp"]
                if ts.tzinfo is not UTC:
                    d["timestamp"] = ts.astimezone(UTC)
                ts = d["ingested_at"]
                if ts is not None and ts.tzinfo is not UTC:
                    d["ingested_at"] = ts.astimezone(UTC)
            except OverflowError:  # out of range once in UTC: pydantic words the error
                pass
            else:
                p = _new_instance(MarketDataPoint)
                _set_dict(p, "__dict__", d)
                _set_fields_set(p, set(_FIELD_NAMES))
                _set_extra(p, None)
                _set_private(p, None)
                return p
    return _validate_json(raw, strict=True)


# What a producer read and could not make a record of (a CSV row dated 2024-13-45): sent on its raw topic as
# {"source", "symbol", "unreadable": {"where", "content", "error"}}, which no record validates as, so the validate
# stage dead-letters it under rule source.unreadable with the producer's reason, rather than it being lost in a log.
UNREADABLE = "unreadable"
_UNREADABLE_CONTENT = 2000  # characters of what was read


def unreadable_json(source: str, symbol: str, *, where: str, content: str, error: str) -> bytes:
    return orjson.dumps({"source": source, "symbol": symbol, UNREADABLE: {
        "where": where, "content": content[:_UNREADABLE_CONTENT], "error": error}})


def unreadable_reason(raw: bytes) -> str | None:
    """The producer's reason when `raw` is such a document (only asked of what failed validation), else None."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    what = doc.get(UNREADABLE) if isinstance(doc, dict) else None
    if not isinstance(what, dict):
        return None
    return f"{what.get('where', '?')}: {what.get('error', '?')}: {str(what.get('content', ''))[:200]!r}"
