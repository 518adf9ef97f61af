"""Bad input that used to pass validation (issue 15, item 7): each case is refused with a rule, not coerced
and not raised as an internal error."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from streams.config import ValidationSettings
from streams.errors import RejectedRecord
from streams.rules import Validator

NOW = datetime(2024, 6, 3, 15, 0, tzinfo=UTC)


def raw(**fields: object) -> bytes:
    base: dict[str, object] = {"symbol": "AAPL", "timestamp": "2024-06-03T14:59:59Z", "source": "yahoo",
                               "data_type": "trade", "price": 190.5, "volume": 100}
    base.update(fields)
    return orjson.dumps(base)


def check(data: bytes) -> object:
    return Validator(ValidationSettings()).check(data, source="yahoo", now=NOW)


def rule_of(data: bytes) -> str:
    with pytest.raises(RejectedRecord) as info:
        check(data)
    return info.value.rule


def test_a_good_record_passes_with_ints_as_numbers() -> None:
    point = check(raw(price=190, volume=100, ingested_at="2024-06-03T14:59:59.5Z"))
    assert point.price == 190.0 and point.volume == 100.0  # type: ignore[attr-defined]


@pytest.mark.parametrize("value", [True, "190.5", [190.5]])
def test_a_price_that_is_not_a_number_is_refused_not_coerced(value: object) -> None:
    assert rule_of(raw(price=value)).startswith("schema.")


def test_a_symbol_with_a_trailing_newline_is_refused() -> None:
    assert rule_of(raw(symbol="AAPL\n")) == "symbol.pattern"


@pytest.mark.parametrize("ts", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_a_timestamp_out_of_range_in_utc_is_a_schema_error_not_an_internal_one(ts: str) -> None:
    assert rule_of(raw(timestamp=ts)).startswith("schema.")


def test_ingested_at_far_in_the_future_is_refused() -> None:
    assert rule_of(raw(ingested_at="9999-01-01T00:00:00Z")) == "ingested_at.future"


def test_ingested_at_within_the_tolerance_is_kept() -> None:
    point = check(raw(ingested_at="2024-06-03T15:00:02Z"))
    assert point.ingested_at == datetime(2024, 6, 3, 15, 0, 2, tzinfo=UTC)  # type: ignore[attr-defined]


def test_ingested_at_just_past_the_tolerance_is_refused() -> None:
    # the default tolerance is 5 s (timestamp.future's); 6 s ahead is past it, not twice it
    assert rule_of(raw(ingested_at="2024-06-03T15:00:06Z")) == "ingested_at.future"
