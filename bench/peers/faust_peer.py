#!/usr/bin/env python3
"""The benchmark's job in plain faust-streaming, written as its documentation shows: two agents.

    python bench/peers/faust_peer.py worker -l warn      # what bench/throughput.py runs

- `validate` (@app.agent over the raw topic): `stream.take_events(2000, within=1)` (`take` with each record's
  timestamp, which becomes the point's ingested_at, as in tickflow) -> tickflow's Validator ->
  `await clean.send(...)` per valid record; refused records to the rejected topic with their original bytes.
- `write` (@app.agent over the clean topic): `stream.take(2000, within=1)` -> rows -> one COPY + upsert per
  batch with asyncpg (tickflow's writer, sinks.postgres, so the SQL is the same as every other system's).

Faust's defaults otherwise (at-least-once, offsets acked as the stream advances and committed every 2.8 s),
on uvloop (faust's documented `--loop` option; tickflow's worker runs on it too). Its own app id, consumer
group, topics and schema (BENCH_PEER_*). What plain Faust does not do that tickflow does, added the least way:
dead letters are just the original bytes sent to a topic (no rule headers, no dead_letters table); a batch
the database refuses (SinkRefused) is not bisected: the agent crashes and the worker stops.
"""

from __future__ import annotations

import os
import sys

import faust
from common import BATCH, SOURCE, ingested_at, job_from_env

from sinks.postgres import PostgresTickWriter, row_from_record
from streams.errors import RejectedRecord
from streams.rules import Validator

try:
    import orjson

    loads = orjson.loads
except ImportError:  # pragma: no cover - tickflow's venv has orjson
    import json

    loads = json.loads

job = job_from_env()
validator = Validator(job.settings.validation)
writer = PostgresTickWriter(job.postgres())

app = faust.App(
    job.group,
    broker=";".join(f"kafka://{hp.strip()}" for hp in job.bootstrap.split(",")),
    consumer_auto_offset_reset="earliest",
    topic_partitions=4,
    web_enabled=False,  # several workers share the machine; the web view measures nothing here
    datadir=os.environ.get("BENCH_FAUST_DATADIR", f"/tmp/{job.group}-data"),
)
raw_topic = app.topic(job.raw, key_serializer="raw", value_serializer="raw")
clean_topic = app.topic(job.clean, key_serializer="raw", value_serializer="raw")
rejected_topic = app.topic(job.rejected, key_serializer="raw", value_serializer="raw")


@app.agent(raw_topic)
async def validate(stream: faust.StreamT) -> None:
    async for events in stream.take_events(BATCH, within=1):
        for event in events:
            value, message = event.value, event.message
            try:
                # Faust's message timestamp is in seconds; the raw record's, as the producer stamped it
                point = validator.check(value, source=SOURCE, ingested_at=ingested_at(round(message.timestamp * 1000)))
            except RejectedRecord:
                await rejected_topic.send(value=value)
                continue
            await clean_topic.send(key=point.symbol.encode(), value=point.to_json())


@app.agent(clean_topic)
async def write(stream: faust.StreamT) -> None:
    async for values in stream.take(BATCH, within=1):
        # the writer connects (and migrates the schema, already made by the bench) on its first batch
        await writer.write([row_from_record(loads(v)) for v in values])


if __name__ == "__main__":
    sys.argv[1:1] = [] if "--loop" in sys.argv else ["--loop", os.environ.get("BENCH_FAUST_LOOP", "uvloop")]
    app.main()
