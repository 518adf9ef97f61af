from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from streams.models import DataType, MarketDataPoint


def test_timestamp_is_converted_to_utc_and_naive_is_refused() -> None:
    p = MarketDataPoint.model_validate_json(
        b'{"symbol":"AAPL","timestamp":"2024-03-01T09:30:00-05:00","source":"s","price":1}')
    assert p.timestamp == datetime(2024, 3, 1, 14, 30, tzinfo=UTC)
    with pytest.raises(ValidationError) as info:
        MarketDataPoint.model_validate_json(b'{"symbol":"A","timestamp":"2024-03-01T09:30:00","source":"s"}')
    assert info.value.errors()[0]["type"] == "timezone_aware"


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_finite_numbers_are_refused(literal: bytes) -> None:
    raw = b'{"symbol":"A","timestamp":1700000000,"source":"s","price":' + literal + b"}"
    with pytest.raises(ValidationError) as info:
        MarketDataPoint.model_validate_json(raw)
    assert info.value.errors()[0]["type"] == "finite_number"


def test_every_kind_of_data_fits_and_round_trips() -> None:
    kinds = [
        {"data_type": "bar", "open": 1, "high": 2, "low": 0.5, "close": 1.5, "volume": 10, "interval": "1d"},
        {"data_type": "economic", "value": 3.7, "realtime_start": "2024-01-01", "realtime_end": "9999-12-31"},
        {"data_type": "news", "headline": "h", "url": "https://x", "sentiment": 0.3, "item_id": "n1"},
        {"data_type": "social", "text": "$AAPL to the moon", "sentiment": 0.8, "item_id": "t1"},
        {"data_type": "quote", "bid": 1.0, "ask": 1.1, "bid_size": 100, "ask_size": 200},
    ]
    for extra in kinds:
        p = MarketDataPoint(symbol="AAPL", timestamp=datetime(2024, 1, 2, tzinfo=UTC), source="s", **extra)
        again = MarketDataPoint.model_validate_json(p.to_json())
        assert again == p
        assert again.data_type == DataType(extra["data_type"])


def test_unknown_fields_are_refused_not_dropped() -> None:
    with pytest.raises(ValidationError) as info:
        MarketDataPoint.model_validate_json(b'{"symbol":"A","timestamp":1700000000,"source":"s","prise":1}')
    assert info.value.errors()[0]["type"] == "extra_forbidden"


def test_natural_key() -> None:
    p = MarketDataPoint(symbol="X", timestamp=datetime(2024, 1, 2, tzinfo=UTC), source="s", item_id="7")
    assert p.natural_key() == ("s", "X", "tick", datetime(2024, 1, 2, tzinfo=UTC), "7")


# --------------------------------------------------------------- to_json: pydantic's bytes, written by orjson

_FLOATS = st.floats(min_value=5e-324, allow_nan=False, allow_infinity=False)
_JSON_LEAF = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8)
_METADATA = st.dictionaries(st.text(max_size=6), st.recursive(
    _JSON_LEAF, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8), max_size=4)
_MOMENTS = st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1),
                        timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)),
                                                   timezone(timedelta(hours=-8))]))


def _pydantic_bytes(p: MarketDataPoint) -> bytes:
    return p.__pydantic_serializer__.to_json(p, exclude_none=True)


@settings(max_examples=400, deadline=None)
@given(kind=st.sampled_from([None, *DataType]), prices=st.dictionaries(st.sampled_from(
    ["price", "volume", "bid", "ask", "bid_size", "ask_size", "open", "high", "low", "close", "value"]), _FLOATS),
    ts=_MOMENTS, ingested=st.none() | _MOMENTS, symbol=st.text(min_size=1, max_size=8), metadata=_METADATA,
    flags=st.lists(st.text(max_size=5), max_size=2), day=st.none() | st.dates(),
    text=st.none() | st.text(max_size=12), revalidate=st.booleans())
def test_to_json_writes_the_bytes_pydantic_writes(kind, prices, ts, ingested, symbol, metadata, flags, day, text,
                                                  revalidate) -> None:
    """The clean record's bytes must not change with the encoder: every field, in order, UTC as Z, the same
    float digits, escapes and nested values, None fields left out; whether the model was built in Python or
    validated from JSON (the validate stage's way, with ingested_at set afterwards as the validator sets it)."""
    fields = {"data_type": kind} if kind is not None else {}
    p = MarketDataPoint(symbol=symbol, timestamp=ts, source="s", metadata=metadata, flags=flags,
                        realtime_start=day, headline=text, **fields, **prices)
    if revalidate:
        p = MarketDataPoint.model_validate_json(p.to_json())
    if ingested is not None:
        p.__dict__["ingested_at"] = ingested.astimezone(UTC)
    assert p.to_json() == _pydantic_bytes(p)


@pytest.mark.parametrize("metadata", [
    {"big": 2**64}, {"small": -2**63 - 1}, {1: "an int key"}, {"d": Decimal("1.10")}, {"b": b"\xff raw"},
    {"deep": [[[[{"x": [1]}]]]]}, {"nan": float("nan"), "inf": float("inf")}, {"s": "\ud800"},
])
def test_to_json_leaves_what_orjson_writes_otherwise_to_pydantic(metadata) -> None:
    p = MarketDataPoint(symbol="A", timestamp=datetime(2024, 1, 2, tzinfo=UTC), source="s", price=1.0)
    p.__dict__["metadata"] = metadata  # as a caller's own dict would hold it (the model keeps it as given)
    try:
        expected = _pydantic_bytes(p)
    except Exception as exc:  # what pydantic cannot write either must fail the same way
        with pytest.raises(type(exc)):
            p.to_json()
        return
    assert p.to_json() == expected
