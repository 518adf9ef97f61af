#!/usr/bin/env python3
"""The benchmark's job in Quix Streams 3.28.1, written as its documentation shows (runs in .cache/bench-quix-venv).

One Application, two StreamingDataFrames (the two-hop topology tickflow has):
  raw topic (bytes) -> apply(validate) -> to_topic(clean | rejected)
  clean topic (JSON) -> sink(TickflowPostgresSink)
Defaults as documented: at-least-once, a checkpoint every `commit_interval` (5 s; BENCH_QUIX_COMMIT_INTERVAL),
where sinks flush their batches.

What Quix does not do that tickflow does, and the least added here to make the job comparable:
- Idempotent upserts of mixed record kinds. Its PostgreSQLSink (quixstreams.sinks.community.postgresql)
  builds each multi-row INSERT from the FIRST row's fields, so in a batch mixing kinds (quotes, trades,
  bars) the other kinds' fields are stored as NULL; with a primary key and its default schema auto-update it
  raised PostgresSQLSinkInvalidPK; and its upsert is a plain last-write-wins (no revision policy).
  bench/peers/quix_stock_sink.py measures what it stores. Here: a BatchingSink subclass (Quix's documented
  way to write a custom sink) that writes each batch with tickflow's COPY + revision upsert.
- Dead-lettering: Quix has none. Refused records go to a rejected topic with their original bytes via
  to_topic with a topic callback (no rule header, no dead_letters table).
- Bisecting a batch the database refuses: not done; a refused batch fails the checkpoint (the app stops).
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from common import SOURCE, ingested_at, job_from_env
from quixstreams import Application
from quixstreams.sinks import BatchingSink, SinkBackpressureError, SinkBatch

from sinks.postgres import PostgresTickWriter, row_from_record
from streams.errors import RejectedRecord, SinkUnavailable
from streams.rules import Validator
from streams.settings import PostgresSettings

logger = logging.getLogger("bench.quix")


class Refused(bytes):
    """A record the Validator refused: its original bytes, routed to the rejected topic."""


class TickflowPostgresSink(BatchingSink):
    """Quix's batching sink contract (write() per topic-partition batch at each checkpoint) over tickflow's
    PostgreSQL writer: COPY into a staging table, one upsert on the natural key with the revision policy.
    The writer is asyncio (asyncpg); the sink is called synchronously, so it owns a private event loop."""

    def __init__(self, pg: PostgresSettings) -> None:
        super().__init__()
        self._pg = pg
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer: PostgresTickWriter | None = None

    def setup(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._writer = PostgresTickWriter(self._pg)
        self._loop.run_until_complete(self._writer.start())

    def write(self, batch: SinkBatch) -> None:
        assert self._loop is not None and self._writer is not None
        rows = [row_from_record(item.value) for item in batch]
        try:
            self._loop.run_until_complete(self._writer.write(rows))
        except SinkUnavailable as exc:
            # Quix's documented retry: drop the batch, pause the partitions, re-read from the last commit.
            logger.warning("PostgreSQL unavailable, backing off: %s", exc)
            raise SinkBackpressureError(retry_after=1.0) from exc


def main() -> None:
    job = job_from_env()
    validator = Validator(job.settings.validation)
    app = Application(
        broker_address=job.bootstrap,
        consumer_group=job.group,
        auto_offset_reset="earliest",
        commit_interval=float(os.environ.get("BENCH_QUIX_COMMIT_INTERVAL", "5.0")),
        loglevel="WARNING",
        state_dir=os.environ.get("BENCH_QUIX_STATE_DIR", f"/tmp/{job.group}-state"),
        # the topics exist already (bench/throughput.py made them with the raw topic's partition count)
        auto_create_topics=False,
    )
    raw = app.topic(job.raw, key_deserializer="bytes", value_deserializer="bytes")
    clean = app.topic(job.clean, key_serializer="bytes", value_serializer="bytes",
                      key_deserializer="bytes", value_deserializer="json")
    rejected = app.topic(job.rejected, key_serializer="bytes", value_serializer="bytes")

    def validate(value: bytes, key: Any, timestamp: int, headers: Any) -> bytes:
        try:
            return validator.check(value, source=SOURCE, ingested_at=ingested_at(timestamp)).to_json()
        except RejectedRecord:
            return Refused(value)

    def route(value: Any, key: Any, timestamp: int, headers: Any) -> Any:
        return rejected if isinstance(value, Refused) else clean

    app.dataframe(raw).apply(validate, metadata=True).to_topic(route)
    app.dataframe(clean).sink(TickflowPostgresSink(job.postgres()))
    app.run()


if __name__ == "__main__":
    main()
