from datetime import UTC, datetime, timedelta

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.errors import RejectedRecord
from streams.models import DataType, MarketDataPoint, unreadable_json
from streams.rules import Validator
from streams.settings import ValidationSettings

NOW = datetime(2024, 5, 1, 15, 0, tzinfo=UTC)


def raw(**fields: object) -> bytes:
    base = {"symbol": "AAPL", "timestamp": "2024-05-01T14:59:59Z", "source": "sim", "price": 10.0}
    base.update(fields)
    return orjson.dumps({k: v for k, v in base.items() if v is not None})


def rule_of(value: bytes | None, **kw: object) -> str:
    with pytest.raises(RejectedRecord) as info:
        Validator(ValidationSettings(**kw)).check(value, source="sim", now=NOW)
    return info.value.rule


def test_valid_record_passes_and_gets_ingested_at() -> None:
    t = datetime(2024, 5, 1, 14, 59, 59, 500000, tzinfo=UTC)
    p = Validator(ValidationSettings()).check(raw(), source="sim", ingested_at=t, now=NOW)
    assert p.price == 10.0 and p.ingested_at == t


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        (b"{nope", "schema.not_json"),
        (b"", "schema.not_json"),
        (b"[]", "schema.model_type"),
        (raw(price="ten"), "schema.float_type"),
        (raw(symbol=None), "schema.missing"),
        (raw(price=0), "price.non_positive"),
        (raw(price=-3), "price.non_positive"),
        (raw(volume=-1), "volume.negative"),
        (raw(data_type="quote", bid=10.2, ask=10.1), "quote.crossed"),
        (raw(data_type="quote", bid=10.2), "quote.missing"),
        (raw(data_type="bar", open=1, high=2, low=0.5), "bar.missing"),
        (raw(data_type="bar", open=1, high=0.9, low=0.5, close=1), "bar.inconsistent"),
        (raw(data_type="trade", price=None), "price.missing"),
        (raw(data_type="news", price=None), "news.missing_headline"),
        (raw(data_type="social", price=None), "social.missing_text"),
        (raw(symbol="AA PL"), "symbol.pattern"),
        (raw(timestamp="2024-05-01T15:00:06Z"), "timestamp.future"),
        (raw(timestamp="1960-01-01T00:00:00Z"), "timestamp.too_old"),
        (raw(source="other"), "schema.source_mismatch"),
        (None, "schema.empty"),
        (unreadable_json("sim", "AAPL", where="a.csv row 2", content="2024-13-45,1", error="bad date"),
         "source.unreadable"),
        (raw(unreadable="a string, not a producer's document"), "schema.extra_forbidden"),
        (raw(unreadable={"error": "x"}, timestamp=None), "source.unreadable"),
    ],
)
def test_rules(value: bytes | None, rule: str) -> None:
    assert rule_of(value) == rule


def test_size_cap_applies_before_parsing() -> None:
    big = raw(metadata={"blob": "x" * 70_000})
    assert rule_of(big) == "size.too_large"
    assert rule_of(b"\xff" * 100, max_message_bytes=50) == "size.too_large"


def test_future_tolerance_is_configurable() -> None:
    v = Validator(ValidationSettings(future_tolerance_seconds=60))
    p = v.check(raw(timestamp=(NOW + timedelta(seconds=30)).isoformat()), source="sim", now=NOW)
    assert p.timestamp > NOW


def test_locked_quote_is_flagged_not_rejected_and_missing_economic_value_flagged() -> None:
    v = Validator(ValidationSettings())
    p = v.check(raw(data_type="quote", bid=10.0, ask=10.0), source="sim", now=NOW)
    assert p.flags == ["quote.locked"]
    e = v.check(raw(data_type="economic", price=None, symbol="GDP"), source="sim", now=NOW)
    assert e.flags == ["value.missing"]


def test_circuit_breaker_trips_only_on_a_full_window_over_the_ratio() -> None:
    from streams.rules import CircuitBreaker

    b = CircuitBreaker(ratio=0.5, window=10)
    for _ in range(9):
        b.record(True)
    assert not b.tripped  # window not full yet
    b.record(True)
    assert b.tripped
    for _ in range(5):
        b.record(False)
    assert not b.tripped and b.rejected == 5  # 5 of 10: not over the limit
    b.record(True)
    assert b.tripped is False and b.rejected == 5  # one rejected in, one rejected out
    assert not CircuitBreaker(ratio=1.0, window=10).tripped


@given(window=st.integers(1, 12), runs=st.lists(st.lists(st.booleans(), max_size=30), max_size=8))
def test_a_run_of_outcomes_leaves_the_breaker_as_the_same_outcomes_one_by_one(window: int,
                                                                             runs: list[list[bool]]) -> None:
    from streams.rules import CircuitBreaker

    one_by_one, by_run = CircuitBreaker(ratio=0.3, window=window), CircuitBreaker(ratio=0.3, window=window)
    for run in runs:
        for rejected in run:
            one_by_one.record(rejected)
        by_run.record_run(len(run), [i for i, rejected in enumerate(run) if rejected])
        assert list(by_run.outcomes) == list(one_by_one.outcomes)
        assert by_run.rejected == one_by_one.rejected == sum(by_run.outcomes)
        assert by_run.tripped == one_by_one.tripped


@pytest.mark.parametrize(("kind", "fields", "rule"), [
    ("quote", {"price": None, "bid": 10.0}, "quote.missing"),
    ("trade", {"price": None}, "price.missing"),
    ("bar", {"open": 1.0, "high": 2.0, "low": 1.5, "close": 1.8}, "bar.inconsistent"),
    ("news", {"headline": ""}, "news.missing_headline"),
])
def test_kinds_set_as_enum_members_get_the_same_rules(kind: str, fields: dict[str, object], rule: str) -> None:
    """check_point compares kinds with plain strings for speed; a point built without validation may hold
    the enum member, and must be judged the same."""
    v = Validator(ValidationSettings())
    base = MarketDataPoint.model_validate_json(raw(data_type=kind))
    for p in (base.model_copy(update=fields), base.model_copy(update={**fields, "data_type": DataType(kind)})):
        with pytest.raises(RejectedRecord) as info:
            v.check_point(p, now=NOW)
        assert info.value.rule == rule


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_breakers_are_per_source_and_reopen_after_the_cool_down() -> None:
    from streams.rules import SourceBreakers

    clock = FakeClock()
    b = SourceBreakers(ratio=0.5, window=10, cooldown=60.0, clock=clock)
    for i in range(10):
        b.record("bad", True)
        b.record("good", i % 3 == 0)  # 4 of 10 rejected: under the limit
    assert b.tripped() == ["bad"]
    opened = b.trip("bad", {"schema.missing": 10})
    assert opened.rejected == 10 and b.is_open("bad") and not b.is_open("good")
    assert b.tripped() == []  # open, and its window starts afresh
    clock.now += 59.9
    assert b.due() == [] and b.is_open("bad")
    clock.now += 0.2
    assert b.due() == ["bad"] and not b.is_open("bad")
    for _ in range(9):
        b.record("bad", True)
    assert b.tripped() == []  # a fresh window: not full yet
    b.record("bad", True)
    assert b.tripped() == ["bad"]  # still bad after the pause: trips again


@pytest.mark.parametrize(("fields", "message"), [
    ({"bid": -1.0, "ask": 2.0}, "bid -1.0 <= 0"),
    ({"price": 3.0, "ask": 0.0, "bid": 0.0}, "bid 0.0 <= 0"),
    ({"data_type": "bar", "price": None, "open": 1.0, "high": 2.0, "low": -1.0, "close": 1.5}, "low -1.0 <= 0"),
    ({"volume": 5.0, "ask_size": -2.0}, "ask_size -2.0 < 0"),
])
def test_a_rejection_names_the_first_offending_field_in_field_order(fields: dict[str, object], message: str) -> None:
    # check_point reads each group of fields in one call and looks the name up only to word the rejection
    with pytest.raises(RejectedRecord) as info:
        Validator(ValidationSettings()).check(raw(**fields), source="sim", now=NOW)
    assert info.value.reason == message


def test_ingested_at_set_by_the_stage_counts_as_a_set_field() -> None:
    t = datetime(2024, 5, 1, 14, 59, 59, tzinfo=UTC)
    p = Validator(ValidationSettings()).check(raw(), source="sim", ingested_at=t, now=NOW)
    assert p.ingested_at == t and "ingested_at" in p.model_fields_set
    assert orjson.loads(p.to_json())["ingested_at"] == "2024-05-01T14:59:59Z"


@pytest.mark.parametrize("fields", [
    {"data_type": "economic", "price": None, "value": 243.1, "timestamp": "1947-01-01T00:00:00Z"},
    {"data_type": "economic", "price": None, "value": 1073.3, "timestamp": "1970-01-01T00:00:00Z"},
    {"data_type": "bar", "price": None, "open": 17.66, "high": 17.66, "low": 17.66, "close": 17.66,
     "timestamp": "1927-12-30T00:00:00Z"},
])
def test_history_before_1970_passes_for_bars_and_economic_observations(fields: dict[str, object]) -> None:
    # FRED's GDP starts in 1947 (its 1970-01-01 quarter is real, not an unset epoch), the S&P 500's bars in 1927.
    point = Validator(ValidationSettings()).check(raw(**fields), source="sim", now=NOW)
    assert point.timestamp.year < 1971


@pytest.mark.parametrize("fields,floor", [
    ({"timestamp": "1970-01-01T00:00:00Z"}, "1970-01-02"),  # an unset epoch on a tick
    ({"data_type": "quote", "price": None, "bid": 1.0, "ask": 1.1, "timestamp": "1969-12-31T23:59:59Z"}, "1970"),
    ({"data_type": "economic", "price": None, "value": 1.0, "timestamp": "0001-01-01T00:00:00Z"}, "1000-01-01"),
    ({"data_type": "bar", "price": None, "open": 1, "high": 1, "low": 1, "close": 1,
      "timestamp": "0001-01-01T00:00:00Z"}, "1000-01-01"),
])
def test_the_floor_of_each_kind_rejects_with_its_own_instant(fields: dict[str, object], floor: str) -> None:
    with pytest.raises(RejectedRecord) as info:
        Validator(ValidationSettings()).check(raw(**fields), source="sim", now=NOW)
    assert info.value.rule == "timestamp.too_old" and floor in info.value.reason


def test_the_history_floor_is_configurable() -> None:
    bar = raw(data_type="bar", price=None, open=1, high=1, low=1, close=1, timestamp="1950-01-03T00:00:00Z")
    assert rule_of(bar, history_timestamp_floor="1960-01-01T00:00:00Z") == "timestamp.too_old"


def test_a_bar_one_float_ulp_outside_its_range_is_rounding_and_a_real_gap_is_still_rejected() -> None:
    """yfinance's split-adjusted AAPL 1985-06-10 holds a close one ulp under its low: a valid bar."""
    v = Validator(ValidationSettings())
    low = 0.05508172884583474
    ok = v.check(raw(data_type="bar", open=0.0553, high=0.0556, low=low, close=0.05508172884583473),
                 source="sim", now=NOW)
    assert ok.close == 0.05508172884583473 and ok.flags == []
    for fields in ({"close": low * (1 - 1e-5)}, {"open": 0.0556 * (1 + 1e-5)}):
        with pytest.raises(RejectedRecord) as info:
            v.check(raw(**{"data_type": "bar", "open": 0.0553, "high": 0.0556, "low": low, "close": 0.0554,
                           **fields}), source="sim", now=NOW)
        assert info.value.rule == "bar.inconsistent"


@pytest.mark.parametrize("fields", [
    {"volume": 0},
    {"data_type": "quote", "price": None, "bid": 10.0, "ask": 10.1, "bid_size": 0, "ask_size": 0},
    {"data_type": "bar", "price": None, "open": 1, "high": 1, "low": 1, "close": 1, "volume": 0},
])
def test_a_size_of_zero_is_valid_not_negative(fields: dict[str, object]) -> None:
    """A bar in which nothing traded and an empty side of the book are real data, not dead letters."""
    point = Validator(ValidationSettings()).check(raw(**fields), source="sim", now=NOW)
    assert 0.0 in (point.volume, point.bid_size)


@pytest.mark.parametrize("fields", [
    {"open": 1.0, "high": 2.0, "low": 0.5, "close": 2.5},  # the close above the high
    {"open": 2.5, "high": 2.0, "low": 0.5, "close": 1.0},  # the open above the high
    {"open": 1.0, "high": 2.0, "low": 0.5, "close": 0.4},  # the close below the low
])
def test_a_bar_whose_open_or_close_is_outside_its_high_and_low_is_inconsistent(fields: dict[str, object]) -> None:
    assert rule_of(raw(data_type="bar", price=None, **fields)) == "bar.inconsistent"


def test_a_social_item_with_empty_text_is_refused() -> None:
    assert rule_of(raw(data_type="social", price=None, text="")) == "social.missing_text"


def test_a_schema_rejection_with_one_error_counts_no_more() -> None:
    with pytest.raises(RejectedRecord) as info:
        Validator(ValidationSettings()).check(raw(price="ten"), source="sim", now=NOW)
    assert info.value.rule == "schema.float_type" and info.value.reason.startswith("price: ")
    assert "more)" not in info.value.reason
    with pytest.raises(RejectedRecord) as two:
        Validator(ValidationSettings()).check(raw(price="ten", volume="x"), source="sim", now=NOW)
    assert two.value.reason.endswith("(+1 more)")


def test_a_record_of_exactly_the_size_limit_passes() -> None:
    data = raw()
    Validator(ValidationSettings(max_message_bytes=len(data))).check(data, source="sim", now=NOW)
    assert rule_of(data, max_message_bytes=len(data) - 1) == "size.too_large"


def test_a_symbol_or_text_of_exactly_its_limit_passes_one_more_character_does_not() -> None:
    v = Validator(ValidationSettings(max_symbol_length=6, max_text_length=20))
    v.check(raw(symbol="ABCDEF"), source="sim", now=NOW)
    assert rule_of(raw(symbol="ABCDEFG"), max_symbol_length=6) == "symbol.pattern"
    news = {"data_type": "news", "price": None, "headline": "h" * 20, "url": "https://example.org/a"}
    v.check(raw(**news), source="sim", now=NOW)
    assert rule_of(raw(**{**news, "headline": "h" * 21}), max_text_length=20) == "text.too_long"


def test_a_breaker_reopens_when_its_cool_down_has_passed_exactly() -> None:
    from streams.rules import SourceBreakers

    clock = FakeClock()
    b = SourceBreakers(ratio=0.5, window=2, cooldown=60.0, clock=clock)
    b.record("bad", True)
    b.record("bad", True)
    b.trip("bad")
    clock.now += 60.0
    assert b.due() == ["bad"]


def test_a_producers_unreadable_row_is_dead_lettered_with_its_reason() -> None:
    doc = unreadable_json("sim", "AAPL", where="a.csv row 2", content="2024-13-45,1,2", error="ValueError: month")
    with pytest.raises(RejectedRecord) as info:
        Validator(ValidationSettings()).check(doc, source="sim", now=NOW)
    assert info.value.reason == "a.csv row 2: ValueError: month: '2024-13-45,1,2'"
