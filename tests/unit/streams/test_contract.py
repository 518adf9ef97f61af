"""The published record contract: the committed JSON Schemas equal what the models generate, real records from the
validate stage's router match them (and declare every field they carry), readers ignore added fields while the
producer's model still refuses them, and the event time becomes the Kafka timestamp to the millisecond."""

from __future__ import annotations

import copy
import typing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from streams import contract
from streams.anomalies.core import AnomalyKind
from streams.models import MarketDataPoint
from streams.rules import Validator
from streams.settings import AnomalySettings, ValidationSettings
from streams.stages.detect import AnomalyTracker
from streams.stages.metrics import MetricsDelta
from streams.stages.publish import Outgoing, _shrink
from streams.stages.topics import catalog
from streams.stages.validate import Router
from streams.tools import schemas as schema_tool

SCHEMAS = Path(__file__).resolve().parents[3] / "schemas"
RAW = catalog.raw("simulated").name
T0 = datetime(2024, 1, 2, 15, 0, tzinfo=UTC)  # a Tuesday, 10:00 in New York: the market is open


@dataclass
class Rec:
    topic: str
    offset: int
    value: bytes
    partition: int = 0
    key: bytes = b"AAPL"
    timestamp: int = 1_700_000_000_000
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def committed(name: str) -> dict[str, Any]:
    return orjson.loads((SCHEMAS / name).read_bytes())


def closed(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with every declared object closed: what we produce must declare every field it carries."""
    out = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "properties" in node:
                node["additionalProperties"] = False
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(out)
    return out


def check(schema: dict[str, Any], doc: Any) -> None:
    jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(doc)


def router() -> Router:
    return Router(Validator(ValidationSettings()), catalog, AnomalyTracker(AnomalySettings(), 1.0, {}))


def route(r: Router, docs: list[dict[str, Any]], step: float = 60.0) -> list[Outgoing]:
    out: list[Outgoing] = []
    for i, doc in enumerate(docs):
        out += r.route(Rec(RAW, i, orjson.dumps(doc)), MetricsDelta(), T0.timestamp() + step * i)
    return out


def bar(i: int, close: float) -> dict[str, Any]:
    return {"symbol": "AAPL", "timestamp": (T0 + timedelta(minutes=i)).isoformat(), "source": "simulated",
            "data_type": "bar", "interval": "1m", "open": close, "high": close, "low": close, "close": close,
            "volume": 10, "item_id": "1m"}


KINDS = [
    {"symbol": "AAPL", "timestamp": "2024-01-02T15:00:00.123456Z", "source": "simulated", "price": 185.5,
     "volume": 100, "bid": 185.4, "ask": 185.6, "item_id": "t1"},
    {"symbol": "MSFT", "timestamp": "2024-01-02T15:00:01Z", "source": "simulated", "data_type": "quote",
     "bid": 370.1, "ask": 370.2, "bid_size": 3, "ask_size": 4, "metadata": {"venue": "X"}},
    bar(0, 100.0),
    {"symbol": "GDP", "timestamp": "2023-10-01T00:00:00Z", "source": "simulated", "data_type": "economic",
     "value": 27610.1, "realtime_start": "2023-12-21", "realtime_end": "9999-12-31", "item_id": "2023-12-21"},
    {"symbol": "AAPL", "timestamp": "2024-01-02T14:00:00Z", "source": "simulated", "data_type": "news",
     "headline": "Apple does a thing", "url": "https://example.com/a", "sentiment": 0.4, "item_id": "n1"},
]


# ------------------------------------------------------------------------------------------- schema drift


def test_committed_schemas_equal_what_the_models_generate() -> None:
    assert schema_tool.differences(SCHEMAS) == [], "run: python -m streams.tools.schemas"
    assert sorted(p.name for p in SCHEMAS.glob("*.json")) == [
        "ticks.anomalies.v1.json", "ticks.clean.v1.json", "ticks.rejected.headers.v1.json"]


def test_the_check_fails_on_an_edited_missing_or_stale_file(tmp_path: Path) -> None:
    schema_tool.write(tmp_path)
    assert schema_tool.main(["--check", "--out", str(tmp_path)]) == 0
    edited = tmp_path / "ticks.clean.v1.json"
    edited.write_text(edited.read_text().replace('"maxLength": 64', '"maxLength": 65', 1))
    (tmp_path / "ticks.anomalies.v1.json").unlink()
    (tmp_path / "ticks.clean.v0.json").write_text("{}")
    assert schema_tool.main(["--check", "--out", str(tmp_path)]) == 1
    assert schema_tool.differences(tmp_path) == [
        "ticks.clean.v1.json: differs from the models", "ticks.anomalies.v1.json: missing",
        "ticks.clean.v0.json: not generated by the models (a stale version?)"]


def test_the_published_schemas_are_valid_and_open_to_added_fields() -> None:
    for name in ("ticks.clean.v1.json", "ticks.anomalies.v1.json", "ticks.rejected.headers.v1.json"):
        schema = committed(name)
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema.get("additionalProperties", True) is True, name
    assert committed("ticks.clean.v1.json")["x-tickflow"]["headers"] == {
        "tickflow.schema": "ticks.clean/v1", "content-type": "application/json"}


# -------------------------------------------------------------------------------- real records vs schemas


def test_clean_records_of_every_kind_match_the_schema_and_declare_every_field() -> None:
    out = route(router(), KINDS)
    clean = [orjson.loads(m.value) for m in out if m.topic == "ticks.clean"]
    assert [c["data_type"] for c in clean] == ["tick", "quote", "bar", "economic", "news"]
    schema = closed(committed("ticks.clean.v1.json"))
    for doc in clean:
        check(schema, doc)
        assert contract.read_clean(orjson.dumps(doc)).natural_key() == MarketDataPoint.model_validate(
            doc).natural_key()


def test_the_schema_refuses_what_is_not_a_clean_record() -> None:
    schema = committed("ticks.clean.v1.json")
    good = orjson.loads(MarketDataPoint.model_validate(KINDS[0]).to_json())
    check(schema, good)
    for broken in ({k: v for k, v in good.items() if k != "symbol"}, {**good, "data_type": "candle"},
                   {**good, "price": "185.5"}, {**good, "sentiment": 2.0}, {**good, "flags": "x"}):
        with pytest.raises(jsonschema.ValidationError):
            check(schema, broken)


def test_anomaly_events_match_the_schema_tick_follow_up_and_feed() -> None:
    r = router()
    out = route(r, [{**KINDS[0], "price": 2e12}])  # outside (0, max_price]: a tick anomaly
    closes = [100 + 0.1 * ((i * 7) % 5) for i in range(60)] + [150.0, 100.2]  # an error bar, confirmed next bar
    out += route(r, [bar(i, c) for i, c in enumerate(closes)])
    ticks = [{"symbol": "IBM", "timestamp": (T0 + timedelta(seconds=i)).isoformat(), "source": "simulated",
              "price": 160.0 + i / 100} for i in range(10)]
    out += route(r, ticks, step=1.0)
    stale, _ = r.stale_events(T0.timestamp() + 120)
    events = [orjson.loads(m.value) for m in out + stale if m.topic == "ticks.anomalies"]
    by_detector = {e["detector"]: e for e in events}
    assert {"price_out_of_range", "bar_outlier", "stale_feed"} <= by_detector.keys()
    assert by_detector["bar_outlier"]["details"]["follow_up"] is True
    assert by_detector["stale_feed"]["kind"] == "feed"
    revisions = [orjson.loads(m.value) for m in out if m.topic == "ticks.clean" and b"bar_outlier" in m.value]
    assert revisions and all(c["close"] == 150.0 for c in revisions)  # the flagged revision of the error bar
    schema, clean_schema = closed(committed("ticks.anomalies.v1.json")), closed(committed("ticks.clean.v1.json"))
    for e in events:
        check(schema, e)
        parsed = contract.read_anomaly(orjson.dumps(e))
        assert parsed.detector == e["detector"] and parsed.record is not None
    for c in revisions:
        check(clean_schema, c)


def test_the_anomaly_kinds_of_the_contract_are_the_detectors_kinds() -> None:
    kinds = typing.get_args(contract.AnomalyEvent.model_fields["kind"].annotation)
    assert set(kinds) == set(typing.get_args(AnomalyKind))


def test_dead_letter_headers_match_the_documented_list() -> None:
    bad = Rec(RAW, 7, b'{"sym": "AAPL"}', partition=2, headers=[("trace-id", b"abc"), ("tickflow.rule", b"old")])
    out = router().route(bad, MetricsDelta(), T0.timestamp())
    assert [m.topic for m in out] == ["ticks.rejected"]
    decoded = {k: v.decode() for k, v in out[0].headers or []}
    schema = committed("ticks.rejected.headers.v1.json")
    check(schema, decoded)
    ours = {k for k in decoded if k.startswith("tickflow.")}
    documented = set(schema["properties"])
    # every header we send is documented, every required one is sent; the version is optional for a reader (dead
    # letters written before it have none) but always sent
    assert ours == set(schema["required"]) | {"tickflow.schema"}
    assert decoded["tickflow.schema"] == "ticks.rejected/v1"
    assert documented - ours == {"tickflow.value.truncated_from", "tickflow.replayed_from"}  # only on some
    shrunk = _shrink(Outgoing("ticks.rejected", b"k", b"x" * 70_000, None, out[0].headers))
    check(schema, {k: v.decode() for k, v in shrunk.headers or []})
    dl = contract.read_dead_letter(shrunk.headers or [])
    assert (dl.source_topic, dl.source_partition, dl.source_offset) == (RAW, "2", "7")
    assert dl.value_truncated_from == "70000" and dl.schema_id == "ticks.rejected/v1"
    assert dl.model_extra == {"trace-id": "abc"}  # the original record's own header, kept
    with pytest.raises(jsonschema.ValidationError):
        check(schema, {**decoded, "tickflow.source.offset": "seven"})


# --------------------------------------------------------------------------------- tolerant vs strict


def test_readers_ignore_added_fields_the_producer_model_does_not() -> None:
    value = orjson.loads(MarketDataPoint.model_validate(KINDS[0]).to_json())
    newer = orjson.dumps({**value, "exchange_mic": "XNAS", "sequence": 42})
    point = contract.read_clean(newer)
    assert isinstance(point, MarketDataPoint)
    assert (point.symbol, point.price, point.timestamp) == ("AAPL", 185.5, datetime(2024, 1, 2, 15, 0, 0, 123456,
                                                                                     tzinfo=UTC))
    assert not hasattr(point, "exchange_mic")
    check(committed("ticks.clean.v1.json"), orjson.loads(newer))  # still a v1 record for a schema validator
    with pytest.raises(ValidationError, match="extra"):
        MarketDataPoint.model_validate_json(newer)  # strict where we produce
    event = {"detector": "d", "symbol": "AAPL", "score": None, "threshold": 3.0, "kind": "tick", "message": "m",
             "record": {**value, "added": 1}, "details": {}, "source": "simulated", "detected_at": 1.7e9,
             "severity": "high"}
    parsed = contract.read_anomaly(orjson.dumps(event))
    assert isinstance(parsed.record, contract.CleanRecord) and parsed.record.price == 185.5


def test_a_reader_still_refuses_a_broken_record() -> None:
    value = orjson.loads(MarketDataPoint.model_validate(KINDS[0]).to_json())
    with pytest.raises(ValidationError):
        contract.read_clean(orjson.dumps({**value, "timestamp": "yesterday"}))
    with pytest.raises(ValidationError):
        contract.read_clean(orjson.dumps({k: v for k, v in value.items() if k != "source"}))


# ------------------------------------------------------------------------------------ headers and time


def test_headers_name_the_schema_and_the_content_type() -> None:
    assert contract.headers(contract.CLEAN) == [("tickflow.schema", b"ticks.clean/v1"),
                                                ("content-type", b"application/json")]
    assert contract.headers(contract.ANOMALIES) == [("tickflow.schema", b"ticks.anomalies/v1"),
                                                    ("content-type", b"application/json")]
    a = contract.headers(contract.CLEAN)
    a.append(("x", b"y"))
    assert len(contract.headers(contract.CLEAN)) == 2  # a sender's append does not leak into the next record
    with pytest.raises(KeyError):
        contract.headers(contract.REJECTED)  # dead letters keep the original record's bytes: no content type


def test_event_time_is_the_records_timestamp_in_ms() -> None:
    p = MarketDataPoint.model_validate(KINDS[0])
    now = 1_704_207_600.0  # a fake clock: a broker refuses timestamps more than an hour ahead of its own
    assert contract.event_time_ms(p.timestamp, now) == 1_704_207_600_123
    assert contract.event_time_ms("2024-01-02T15:00:00.123999Z", now) == 1_704_207_600_123  # floored, not rounded
    assert contract.event_time_ms(datetime(1969, 12, 31, 23, 59, tzinfo=UTC)) is None
    assert contract.event_time_ms(datetime.fromtimestamp(now + 49 * 60, UTC), now) == (now + 49 * 60) * 1000
    assert contract.event_time_ms(datetime.fromtimestamp(now + 51 * 60, UTC), now) is None
    # Older than a day: the publish time instead (retention counts from record timestamps: a backfill stamped
    # with its event times would be deleted before a lagging consumer read it).
    assert contract.event_time_ms(datetime.fromtimestamp(now - 23 * 3600, UTC), now) == (now - 23 * 3600) * 1000
    assert contract.event_time_ms(datetime.fromtimestamp(now - 25 * 3600, UTC), now) is None
    assert contract.event_time_ms(p.timestamp) is None  # 2024, judged by the wall clock
    assert contract.anomaly_time_ms({"kind": "tick", "record": {"timestamp": "2024-01-02T15:00:00Z"},
                                     "detected_at": 1.8e9}, now) == 1_704_207_600_000
    assert contract.anomaly_time_ms({"kind": "feed", "record": {"timestamp": "2024-01-02T15:00:00Z"},
                                     "detected_at": 1_704_207_720.5}) == 1_704_207_720_500


@given(st.integers(min_value=0, max_value=253_402_300_799_999))
def test_the_seconds_handed_to_the_sender_come_back_as_the_same_ms(ms: int) -> None:
    # streams/stages/publish.py (and Faust) turn Outgoing.timestamp into int(seconds * 1000)
    seconds = contract.outgoing_seconds(ms)
    assert seconds is not None and int(seconds * 1000) == ms


# ------------------------------------------------------------------------- wired into the validate stage


def test_the_validate_stage_stamps_clean_and_anomaly_records() -> None:
    r = router()
    out = route(r, [*KINDS, {**KINDS[0], "price": 2e12, "item_id": "t2"}])
    closes = [100 + 0.1 * ((i * 7) % 5) for i in range(60)] + [150.0, 100.2]
    out += route(r, [bar(i, c) for i, c in enumerate(closes)])
    ticks = [{"symbol": "IBM", "timestamp": (T0 + timedelta(seconds=i)).isoformat(), "source": "simulated",
              "price": 160.0 + i / 100} for i in range(10)]
    out += route(r, ticks, step=1.0)
    stale, _ = r.stale_events(T0.timestamp() + 120)
    out += stale
    out += r.route(Rec(RAW, 99, b'{"sym": "AAPL"}'), MetricsDelta(), T0.timestamp())
    seen = {"ticks.clean": 0, "ticks.anomalies": 0, "ticks.rejected": 0}
    stamped_now = 0
    for m in out:
        seen[m.topic] += 1
        doc = orjson.loads(m.value or b"")
        if m.topic == "ticks.rejected":
            assert m.timestamp == Rec.timestamp / 1000 and "content-type" not in dict(m.headers or [])
            continue
        kind = contract.CLEAN if m.topic == "ticks.clean" else contract.ANOMALIES
        assert m.headers == contract.headers(kind)
        later = T0.timestamp() + 7200  # after every record here, less than a day after T0
        want = (contract.event_time_ms(doc["timestamp"], later) if kind == contract.CLEAN
                else contract.anomaly_time_ms(doc, later))
        if want is None:  # an economic observation dated months before: the producer's time
            stamped_now += 1
            assert m.timestamp is None and doc.get("data_type") == "economic"
            continue
        assert m.timestamp is not None
        assert int(m.timestamp * 1000) == want  # what publish.py hands the broker, to the millisecond
    assert seen["ticks.clean"] >= 70 and seen["ticks.anomalies"] >= 3 and seen["ticks.rejected"] == 1
    assert stamped_now == 1
    assert any(orjson.loads(m.value or b"")["kind"] == "feed" for m in stale)
