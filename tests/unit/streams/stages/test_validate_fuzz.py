"""Property-based fuzzing of the parse-and-validate path: whatever bytes arrive, routing ends in exactly
one clean or dead-letter message and never raises (the stage would otherwise stop)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.rules import Validator
from streams.settings import ValidationSettings
from streams.stages.metrics import MetricsDelta
from streams.stages.topics import catalog, clean_topic_name, rejected_topic_name
from streams.stages.validate import Router


@dataclass
class Rec:
    value: bytes | None
    topic: str = "raw.simulated"
    partition: int = 0
    offset: int = 1
    timestamp: int = 1_700_000_000_000
    key: bytes | None = b"K"
    headers: list[tuple[str, bytes]] = field(default_factory=list)


ROUTER = Router(Validator(ValidationSettings()), catalog)

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False),
                         st.text(max_size=40))
fields = st.sampled_from(["symbol", "timestamp", "source", "data_type", "price", "volume", "bid", "ask", "open",
                          "high", "low", "close", "value", "headline", "text", "url", "sentiment", "item_id",
                          "flags", "metadata", "realtime_start", "interval", "junk"])
records = st.dictionaries(fields, json_scalars, max_size=12)


def check(value: bytes | None) -> None:
    delta = MetricsDelta()
    out = ROUTER.route(Rec(value), delta)
    final = [m for m in out if m.topic in (clean_topic_name, rejected_topic_name)]
    assert len(final) == 1
    d = delta.of("simulated")
    assert d.processed == 1 and d.valid + d.rejected == 1
    if final[0].topic == rejected_topic_name:
        assert final[0].value == value and dict(final[0].headers)["tickflow.rule"]


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_arbitrary_bytes(value: bytes) -> None:
    check(value)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records, st.booleans())
def test_json_objects_near_the_schema(doc: dict[str, Any], complete: bool) -> None:
    if complete:
        doc = {"symbol": "AAPL", "timestamp": "2024-01-02T15:00:00Z", "source": "simulated", "price": 1.0, **doc}
    check(orjson.dumps(doc))


def test_poison_symbols_and_sources() -> None:
    base = {"timestamp": "2024-01-02T15:00:00Z", "price": 1.0}
    poison = [("AAPL'; DROP TABLE market_data;--", "simulated"), ("\uff21\uff21\uff30\uff2c\U0001f4a5", "simulated"),
              ("AAPL", "unknown_source"), ("\x00", "simulated")]
    for sym, src in poison:
        (out,) = ROUTER.route(Rec(orjson.dumps({**base, "symbol": sym, "source": src})), MetricsDelta())
        assert out.topic == rejected_topic_name
