from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from streams import models
from streams.models import DataType, MarketDataPoint, point_from_json


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


# ------------------------------------------------------------------ point_from_json against pydantic, side by side

_pydantic_json = MarketDataPoint.__pydantic_validator__.validate_json


def _pydantic_or_error(raw: bytes) -> MarketDataPoint | ValidationError:
    try:
        return _pydantic_json(raw, strict=True)
    except ValidationError as exc:
        return exc


def _same_point(got: MarketDataPoint, want: MarketDataPoint) -> None:
    assert list(got.__dict__) == list(want.__dict__)
    for name, value in want.__dict__.items():
        other = got.__dict__[name]
        assert type(other) is type(value) and repr(other) == repr(value), name  # repr: NaN in metadata, -0.0
        if isinstance(value, datetime):
            assert other.tzinfo is value.tzinfo and other.utcoffset() == value.utcoffset(), name
    assert got.to_json() == want.to_json()
    assert got.model_dump_json(exclude_none=True) == want.model_dump_json(exclude_none=True)
    assert got.__pydantic_extra__ is None and got.__pydantic_private__ is None


def assert_parsed_as_pydantic(raw: bytes) -> None:
    """point_from_json gives pydantic's point, or raises pydantic's very error."""
    want = _pydantic_or_error(raw)
    if isinstance(want, ValidationError):
        with pytest.raises(ValidationError) as info:
            point_from_json(raw)
        assert repr(info.value.errors(include_url=False)) == repr(want.errors(include_url=False))  # NaN inputs
    else:
        _same_point(point_from_json(raw), want)


_numbers = st.one_of(
    st.integers(min_value=-(10**40), max_value=10**40).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(["1e400", "-1e400", "1e308", "1.7976931348623157e308", "4.9e-324", "1e-400", "-0.0", "0",
                     "1E5", "1.5e+3", "00", "01", "1.", ".5", "-", "NaN", "Infinity", "-Infinity", "true",
                     "null", '"1.5"', "[]", "{}"]),
)
_two = st.integers(min_value=0, max_value=99).map(lambda n: f"{n:02d}")
_fraction = st.text("0123456789", max_size=10).map(lambda digits: "." + digits if digits else "")


_offsets = st.one_of(
    st.sampled_from(["", "Z", "z", "+00:00", "-00:00", "+0000", "+00", "+05:30", "-08:00", "+14:00", "-23:59",
                     "+24:00", "+25:00", "+01:00:30", "+1:00", " Z", "UTC"]),
    st.builds(lambda sign, h, m: f"{sign}{h}:{m}", st.sampled_from("+-"), _two, _two),
)
_datetimes = st.builds(
    lambda y, mo, d, sep, h, mi, s, frac, off: f"{y}-{mo}-{d}{sep}{h}:{mi}:{s}{frac}{off}",
    st.sampled_from(["0000", "0001", "1969", "1970", "2024", "2026", "9999", "+2026", "226"]),
    st.sampled_from(["01", "02", "12", "13", "00", "1"]), st.sampled_from(["01", "28", "29", "31", "32", "00"]),
    st.sampled_from(["T", "t", " ", "_", ""]), st.sampled_from(["00", "09", "23", "24", "25"]),
    st.sampled_from(["00", "30", "59", "60"]), st.sampled_from(["00", "59", "60", "61"]),
    st.one_of(_fraction, st.sampled_from([",5", ".", ",1234567"])), _offsets,
)
_texts = st.one_of(st.text(max_size=80), st.text(min_size=60, max_size=70),
                   st.sampled_from(["", "AAPL", "é" * 64, "😀" * 64, "😀" * 65, "a\x00b"]))
_json_strings = st.one_of(_texts.map(lambda s: orjson.dumps(s).decode()),
                          st.sampled_from(['"\\ud800"', '"\\ud83d\\ude00"', '"\\u0000"', '"a\\nb"']))
_json_leaves = st.one_of(_numbers, _json_strings, st.sampled_from(["true", "false", "null"]))
_json_values = st.recursive(
    _json_leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda xs: "[" + ",".join(xs) + "]"),
        st.lists(st.tuples(_json_strings, inner), max_size=4).map(
            lambda kv: "{" + ",".join(f"{k}:{v}" for k, v in kv) + "}")),
    max_leaves=12)
_FIELD_VALUES: dict[str, st.SearchStrategy[str]] = {
    "symbol": _json_strings, "source": _json_strings, "item_id": _json_strings, "interval": _json_strings,
    "headline": _json_strings, "text": _json_strings, "url": _json_strings,
    "timestamp": st.one_of(_datetimes.map(lambda s: f'"{s}"'), _numbers),
    "ingested_at": st.one_of(_datetimes.map(lambda s: f'"{s}"'), _numbers),
    "data_type": st.one_of(st.sampled_from([f'"{k.value}"' for k in DataType] + ['"TICK"', '""', "1"]),
                           _json_strings),
    "realtime_start": st.one_of(_datetimes.map(lambda s: f'"{s[:10]}"'), _datetimes.map(lambda s: f'"{s}"')),
    "realtime_end": st.sampled_from(['"9999-12-31"', '"2024-02-29"', '"2023-02-29"', '"2024-1-5"', "null", "1"]),
    "flags": st.one_of(st.lists(_json_strings, max_size=3).map(lambda xs: "[" + ",".join(xs) + "]"), _json_values),
    "metadata": _json_values,
}
_NUMERIC = ("price", "volume", "bid", "ask", "bid_size", "ask_size", "open", "high", "low", "close", "value",
            "sentiment")


_aware = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                      timezones=st.one_of(st.just(UTC), st.builds(
                          lambda m: timezone(timedelta(minutes=m)), st.integers(min_value=-1439, max_value=1439))))


def _iso(dt: datetime, digits: int, zulu: bool) -> str:
    """A date-time as a producer may write it: 0-9 digits of fraction, Z or an offset."""
    text = dt.replace(microsecond=0, tzinfo=None).isoformat()
    if digits:
        text += "." + f"{dt.microsecond:06d}{dt.microsecond % 1000:03d}"[:digits]
    offset = dt.utcoffset() or timedelta(0)
    if zulu and not offset:
        return text + "Z"
    minutes = int(offset.total_seconds() // 60)
    return text + f"{'+' if minutes >= 0 else '-'}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


_valid_datetimes = st.builds(_iso, _aware, st.integers(min_value=0, max_value=9), st.booleans()).map(
    lambda s: f'"{s}"')
_valid_numbers = st.one_of(st.floats(allow_nan=False, allow_infinity=False).map(repr),
                           st.integers(min_value=-(10**20), max_value=10**20).map(str))
_VALID: dict[str, st.SearchStrategy[str]] = {
    "symbol": st.text(min_size=1, max_size=64).map(lambda s: orjson.dumps(s).decode()),
    "source": st.text(min_size=1, max_size=64).map(lambda s: orjson.dumps(s).decode()),
    "timestamp": _valid_datetimes, "ingested_at": _valid_datetimes,
    "data_type": st.sampled_from([f'"{k.value}"' for k in DataType]),
    "interval": st.text(max_size=16).map(lambda s: orjson.dumps(s).decode()),
    "item_id": st.text(max_size=256).map(lambda s: orjson.dumps(s).decode()),
    "url": st.text(max_size=100).map(lambda s: orjson.dumps(s).decode()),
    "headline": _json_strings, "text": _json_strings,
    "realtime_start": st.dates().map(lambda d: f'"{d.isoformat()}"'),
    "realtime_end": st.dates().map(lambda d: f'"{d.isoformat()}"'),
    "sentiment": st.floats(min_value=-1.0, max_value=1.0).map(repr),
    "flags": st.lists(_json_strings, max_size=3).map(lambda xs: "[" + ",".join(xs) + "]"),
    "metadata": st.lists(st.tuples(_json_strings, _json_values), max_size=4).map(
        lambda kv: "{" + ",".join(f"{k}:{v}" for k, v in kv) + "}"),
    **dict.fromkeys(_NUMERIC[:-1], _valid_numbers),
}


@st.composite
def _documents(draw: st.DrawFn) -> bytes:
    """A JSON object near MarketDataPoint's shape: mostly valid values, some null, wrong or on an edge; now and
    then a required field missing, a field twice, or an unknown one."""
    fields = list(MarketDataPoint.model_fields)
    names = ["symbol", "timestamp", "source", *draw(st.lists(st.sampled_from(fields), max_size=8))]
    if draw(st.integers(min_value=0, max_value=9)) == 0:
        names.remove(draw(st.sampled_from(names[:3])))
    if draw(st.integers(min_value=0, max_value=19)) == 0:
        names.append("extra")
    pairs = []
    for name in names:
        roll = draw(st.integers(min_value=0, max_value=9))
        if name == "extra":
            value = draw(_json_leaves)
        elif roll < 7:
            value = draw(_VALID[name])
        elif roll == 7:
            value = "null"
        else:
            value = draw(_numbers if name in _NUMERIC else _FIELD_VALUES[name])
        pairs.append(f'"{name}":{value}')
    return ("{" + ",".join(pairs) + "}").encode()


@settings(max_examples=1500, deadline=None)
@given(_documents())
def test_point_from_json_builds_what_pydantic_builds(raw: bytes) -> None:
    assert_parsed_as_pydantic(raw)


@pytest.mark.parametrize("raw", [
    b'{"symbol":"A","timestamp":"2026-01-05T14:30:00Z","source":"s"}',
    b'{"symbol":"A","timestamp":"2026-01-05T14:30:00.1234567Z","source":"s"}',  # msgspec would round it
    b'{"symbol":"A","timestamp":"2026-01-05T14:30:00.123456789+05:30","source":"s"}',
    b'{"symbol":"A","timestamp":"0001-01-01T00:00:00+01:00","source":"s"}',  # out of range once in UTC
    b'{"symbol":"A","timestamp":"9999-12-31T23:59:59-01:00","source":"s"}',
    b'{"symbol":"A","timestamp":"2026-01-05T14:30:00Z","source":"s","price":1e400}',
    b'{"symbol":"A","timestamp":"2026-01-05T14:30:00Z","source":"s","metadata":{"a":1e400}}',
    b'{"symbol":"A","timestamp":"2026-01-05T14:30:00Z","source":"s","metadata":{"a":NaN,"b":-Infinity}}',
    b'{"symbol":"A","timestamp":"2026-01-05T14:30:00Z","source":"s","price":NaN}',
    b'{"symbol":"A","timestamp":"2026-01-05T14:30:00Z","source":"s","price":-0.0,"metadata":{"z":-0.0}}',
    b'{"symbol":"A","timestamp":"2026-01-05T14:30:00Z","source":"s","metadata":{"a":' + b"1" * 5000 + b"}}",
    b'{"symbol":"A","timestamp":"2026-01-05T14:30:00Z","source":"s","metadata":{"a":' + b"[" * 300 + b"]" * 300
    + b"}}",  # deeper than pydantic's recursion limit, well within msgspec's
    b'{"symbol":"A","timestamp":"2026-01-05T14:30:00Z","source":"s","metadata":{"a":' + b"[" * 100 + b"]" * 100
    + b"}}",
    b'{"symbol":"A","timestamp":"2026-01-05T14:30:00Z","source":"s","price":1,"price":"x"}',
    b'{"symbol":"A","timestamp":"2026-01-05T14:30:00Z","source":"s","extra":1}',
    b'{"symbol":"A","timestamp":"2026-01-05T14:30:00Z","source":"s"} x',
    b'{"symbol":"A","timestamp":1767623400,"source":"s"}',
    b'{"symbol":"A\xff","timestamp":"2026-01-05T14:30:00Z","source":"s"}',
    b'[]',
    b'',
])
def test_point_from_json_on_the_edges(raw: bytes) -> None:
    assert_parsed_as_pydantic(raw)


def test_point_from_json_takes_the_fast_way_for_a_usual_record() -> None:
    """A usual record does not go through pydantic's validator (or the saving is gone)."""
    raw = (b'{"symbol":"AAPL","timestamp":"2026-01-05T14:30:00.001137Z","source":"simulated","data_type":"trade",'
           b'"price":195.75,"volume":126.0,"bid":195.7,"ask":195.8,"item_id":"x","flags":[],"metadata":{"k":[1]}}')
    calls: list[bytes] = []
    real = models._validate_json

    def spy(b: bytes, strict: bool) -> MarketDataPoint:
        calls.append(b)
        return real(b, strict=strict)

    models._validate_json = spy  # type: ignore[assignment]
    try:
        p = point_from_json(raw)
    finally:
        models._validate_json = real  # type: ignore[assignment]
    assert calls == []
    _same_point(p, _pydantic_json(raw, strict=True))
    assert p.model_fields_set == set(MarketDataPoint.model_fields)


# ------------------------------------------------------------------ the brief's dataclass form: positional args

_T = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)


def test_positional_arguments_follow_the_brief_dataclass_order() -> None:
    import streams

    # The brief's own call: `streams.MarketDataPoint` (the API's) defaults source as the brief does.
    p = streams.MarketDataPoint("AAPL", _T, 189.5, 100)
    assert (p.symbol, p.timestamp, p.price, p.volume, p.source) == ("AAPL", _T, 189.5, 100.0, "unknown")
    assert p == streams.MarketDataPoint(symbol="AAPL", timestamp=_T, price=189.5, volume=100)
    # All nine, in the brief's order (symbol, timestamp, price, volume, bid, ask, source, data_type, metadata).
    q = MarketDataPoint("AAPL", _T, 189.5, 100, 189.4, 189.6, "feed", "quote", {"k": 1})
    r = MarketDataPoint(symbol="AAPL", timestamp=_T, price=189.5, volume=100, bid=189.4, ask=189.6, source="feed",
                        data_type="quote", metadata={"k": 1})
    assert q == r and q.to_json() == r.to_json() and list(q.model_dump()) == list(MarketDataPoint.model_fields)
    # Mixed: positional first, the rest by keyword; then the usual validation.
    assert MarketDataPoint("AAPL", _T, source="feed", item_id="x").item_id == "x"
    with pytest.raises(ValidationError) as info:
        MarketDataPoint("AAPL", "not a time", 1.0, 1, source="feed")
    assert info.value.errors()[0]["loc"] == ("timestamp",)
    with pytest.raises(ValidationError) as info:
        MarketDataPoint("AAPL", _T, 1.0, 1)  # the canonical record has no default source
    assert info.value.errors()[0]["type"] == "missing"


def test_positional_arguments_are_refused_as_a_dataclass_refuses_them() -> None:
    ten = ("AAPL", _T, 1.0, 1, None, None, "feed", "tick", {}, "extra")
    with pytest.raises(TypeError, match=r"takes at most 9 positional arguments .* but 10 were given"):
        MarketDataPoint(*ten)
    with pytest.raises(TypeError, match="got multiple values for argument 'symbol'"):
        MarketDataPoint("AAPL", _T, symbol="MSFT", source="feed")
    with pytest.raises(TypeError, match="got multiple values for argument 'price'"):
        MarketDataPoint("AAPL", _T, 1.0, price=2.0, source="feed")


def test_validators_do_not_go_through_the_positional_init() -> None:
    """pydantic calls a model's own __init__ from model_validate(_json) unless it is marked a base init; then
    every validation (and the validate stage's fallback) would go through it."""
    import streams

    assert MarketDataPoint.__pydantic_custom_init__ is False
    assert streams.MarketDataPoint.__pydantic_custom_init__ is False
    raw = b'{"symbol":"AAPL","timestamp":"2024-01-02T14:30:00Z","source":"feed","price":1.5}'
    assert point_from_json(raw) == MarketDataPoint.model_validate_json(raw, strict=True) \
        == MarketDataPoint("AAPL", _T, 1.5, source="feed")
