"""Stage 2 — validate_ticks.

Reads: every raw.<source> topic in topics.yaml (bytes as the producer wrote them).
Writes: ticks.clean (canonical MarketDataPoint JSON, key = symbol) for valid records;
ticks.rejected (original key, value, timestamp and headers + tickflow.* reason headers) for the rest.

Bad data is caught per record and dead-lettered; nothing is dropped silently and the worker never dies
of a record. A batch's source offsets are acked only after every output of the batch is acknowledged
by the broker. The anomaly detectors (streams/anomalies.py) plug in after the rules here.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from streams import metrics
from streams.app import app, settings
from streams.errors import RejectedRecord
from streams.publish import Outgoing, Rejection, send_all
from streams.rules import Validator
from streams.topics import clean_topic, raw_topics, rejected_topic_name, source_of_topic

logger = logging.getLogger(__name__)

STAGE = "validate"
BATCH = 1000
WITHIN = 0.005
CLEAN_TOPIC = clean_topic.get_topic_name()


def _headers(message: Any) -> list[tuple[str, bytes]]:
    raw = message.headers or []
    items = raw.items() if isinstance(raw, dict) else raw
    return [(k, v if isinstance(v, bytes) else str(v).encode()) for k, v in items]


def route(validator: Validator, event: Any, deltas: dict[str, dict[str, Any]]) -> Outgoing:
    """One raw event -> its clean or dead-letter message (and the metrics delta it counts toward)."""
    msg = event.message
    source = source_of_topic.get(msg.topic, msg.topic)
    d = deltas[source]
    d["processed"] += 1
    ts_seconds = msg.timestamp if msg.timestamp and msg.timestamp > 0 else None
    try:
        ingested = datetime.fromtimestamp(ts_seconds, UTC) if ts_seconds else None
        point = validator.check(event.value, source=source, ingested_at=ingested)
        d["valid"] += 1
        return Outgoing(CLEAN_TOPIC, point.symbol.encode(), point.to_json())
    except RejectedRecord as rej:
        rule, error, exc_name = rej.rule, rej.reason, type(rej).__name__
    except Exception as exc:  # a bug in a rule must dead-letter the record, not kill the worker
        logger.exception("validator failed on %s[%d]@%d", msg.topic, msg.partition, msg.offset)
        rule, error, exc_name = "internal.error", repr(exc), type(exc).__name__
    d["rejected"] += 1
    d["rules"][rule] = d["rules"].get(rule, 0) + 1
    why = Rejection(STAGE, rule, error, exc_name, msg.topic, msg.partition, msg.offset, _headers(msg))
    return Outgoing(rejected_topic_name, event.key, event.value, ts_seconds, why.headers())


@app.agent(raw_topics, name="validate_ticks", concurrency=1)
async def validate_ticks(stream: Any) -> None:
    validator = Validator(settings.validation)
    async for events in stream.take_events(BATCH, within=WITHIN):
        deltas: dict[str, dict[str, Any]] = defaultdict(metrics.new_delta)
        await send_all([route(validator, ev, deltas) for ev in events])
        await metrics.emit(deltas)
