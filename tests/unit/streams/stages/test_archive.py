"""The archive stage without a database or a broker: an ArchiveEvents built with a fake sink and a fake sleep.
Records are routed by topic, an outage is retried in place, a refused row is bisected out and counted, an
undecodable event is skipped and counted."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import orjson

from sinks.schema import ANOMALY_COLUMNS, DEAD_LETTER_COLUMNS
from streams.errors import SinkRefused, SinkUnavailable
from streams.settings import KafkaSettings, SinkSettings
from streams.stages.archive import ArchiveEvents

T0 = datetime(2024, 5, 1, 14, 30, tzinfo=UTC)
A_SYMBOL = ANOMALY_COLUMNS.index("symbol")
D_OFFSET = DEAD_LETTER_COLUMNS.index("offset")


class FakeSink:
    """Refuses any batch holding the symbol BAD; raises the outages in `failures` first, one per call."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.anomalies: list[tuple[Any, ...]] = []
        self.dead: list[tuple[Any, ...]] = []

    async def write_anomalies(self, rows: Sequence[tuple[Any, ...]]) -> int:
        if self.failures:
            self.failures -= 1
            raise SinkUnavailable("down")
        if any(r[A_SYMBOL] == "BAD" for r in rows):
            raise SinkRefused("refused")
        self.anomalies.extend(rows)
        return len(rows)

    async def write_dead_letters(self, rows: Sequence[tuple[Any, ...]]) -> int:
        self.dead.extend(rows)
        return len(rows)

    async def durable(self) -> int:
        return 0


def stage(sink: FakeSink, slept: list[float]) -> ArchiveEvents:
    async def sleep(s: float) -> None:
        slept.append(s)

    return ArchiveEvents(sink=sink, sink_settings=SinkSettings(), anomalies_topic="an", rejected_topic="rej",
                         source_of_topic={"raw.x": "x"}, sleep=sleep, kafka=KafkaSettings(), app_id="app")


def event(symbol: str, i: int) -> Any:
    e = {"detector": "zscore", "symbol": symbol, "score": 5.0, "threshold": 4.0, "kind": "tick", "message": "m",
         "record": {"timestamp": T0.isoformat()}, "details": {}, "source": "x", "detected_at": T0.timestamp()}
    return SimpleNamespace(topic="an", partition=0, offset=i, key=symbol.encode(), value=orjson.dumps(e),
                           timestamp=0, headers=[])


def dead(i: int) -> Any:
    return SimpleNamespace(topic="rej", partition=1, offset=i, key=b"K", value=b"v", timestamp=0, headers=[])


async def test_routes_by_topic_retries_outages_and_bisects_refusals() -> None:
    sink, slept = FakeSink(failures=2), []
    st = stage(sink, slept)
    records = [event("AAPL", 0), dead(1), event("BAD", 2), event("MSFT", 3), dead(4),
               SimpleNamespace(topic="an", partition=0, offset=5, key=None, value=b"{oops", timestamp=0, headers=[])]
    assert await st.process(records) is None
    assert sorted(r[A_SYMBOL] for r in sink.anomalies) == ["AAPL", "MSFT"]
    assert [r[D_OFFSET] for r in sink.dead] == [1, 4]
    assert len(slept) == 2  # the two outages were waited out, not raised
    assert st.stored == {"anomaly_events": 2, "dead_letters": 2}
    assert st.skipped == 2  # the refused row and the undecodable event
    assert st.status()["stored"] == st.stored and st.status()["group"] == "app-archive"
    assert st.topics == ("an", "rej")
