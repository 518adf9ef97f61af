from datetime import UTC, datetime

import pytest
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
