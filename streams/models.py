"""The canonical record on ticks.clean and in PostgreSQL. A leaf module: imports nothing of ours.

Every kind of market data fits one shape without losing fields: ticks, trades and quotes use
price/volume/bid/ask, bars use open/high/low/close/volume + interval, economic observations use
value + realtime dates, news and social items use headline/text/url/sentiment. `item_id` completes
the natural key (source, symbol, data_type, timestamp, item_id) that makes every write idempotent.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Annotated, Any

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


class MarketDataPoint(BaseModel):
    """One market-data point, as the brief named it, with typed fields for every kind of data."""

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
