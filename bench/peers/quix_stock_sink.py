#!/usr/bin/env python3
"""What Quix Streams' own PostgreSQLSink (3.28.1) stores for this job: a correctness check, not a speed run.

Same two hops as quix_peer.py, but the clean topic goes to quixstreams.sinks.community.postgresql.PostgreSQLSink
on tickflow's market_data table (its natural key as primary_key_columns, on_conflict_do_nothing=True, as a
user would for idempotent writes). Records are mapped to the table's columns the way a user would: `timestamp`
-> `ts`, empty flags and metadata left to the column defaults, flags as an array literal (the sink registers
psycopg2's Json adapter for every list, which a text[] column refuses). include_metadata=False: its `timestamp`
column would collide with the table's generated one.

BENCH_QUIX_STOCK_MODE=auto: its default schema auto-update (primary-key lookup, ADD COLUMN per new field).
BENCH_QUIX_STOCK_MODE=fixed: schema_auto_update=False, the table as it is.
Stops by itself (Application.run(timeout=...)) once the topic has been idle for BENCH_QUIX_STOCK_IDLE seconds;
bench/throughput.py then counts in PostgreSQL what landed and which sent fields were stored as NULL.
"""

from __future__ import annotations

import os
from typing import Any

from common import SOURCE, job_from_env
from quixstreams import Application
from quixstreams.sinks.community.postgresql import PostgreSQLSink

from sinks.schema import MARKET_DATA_KEY
from streams.errors import RejectedRecord
from streams.rules import Validator


def to_columns(record: dict[str, Any]) -> dict[str, Any]:
    """A clean record (JSON, None fields already left out) -> market_data's column names."""
    row = dict(record)
    row["ts"] = row.pop("timestamp")
    if not row.get("flags"):
        row.pop("flags", None)
    else:
        row["flags"] = "{" + ",".join('"' + f.replace("\\", "\\\\").replace('"', '\\"') + '"'
                                      for f in row["flags"]) + "}"
    if not row.get("metadata"):
        row.pop("metadata", None)
    return row


def main() -> None:
    job = job_from_env()
    mode = os.environ.get("BENCH_QUIX_STOCK_MODE", "fixed")
    validator = Validator(job.settings.validation)
    pg = job.settings.postgres
    app = Application(broker_address=job.bootstrap, consumer_group=job.group, auto_offset_reset="earliest",
                      loglevel="WARNING", auto_create_topics=False,
                      state_dir=os.environ.get("BENCH_QUIX_STATE_DIR", f"/tmp/{job.group}-state"))
    raw = app.topic(job.raw, key_deserializer="bytes", value_deserializer="bytes")
    clean = app.topic(job.clean, key_serializer="bytes", value_serializer="bytes", key_deserializer="bytes",
                      value_deserializer="json")

    def validate(value: bytes) -> bytes | None:
        try:
            return validator.check(value, source=SOURCE).to_json()
        except RejectedRecord:
            return None

    app.dataframe(raw).apply(validate).filter(lambda v: v is not None).to_topic(clean)
    sink = PostgreSQLSink(
        host=pg.host, port=pg.port, dbname=pg.database, user=pg.user, password=pg.password.get_secret_value(),
        table_name="market_data", schema_name=job.schema, schema_auto_update=(mode == "auto"),
        primary_key_columns=list(MARKET_DATA_KEY), on_conflict_do_nothing=True, include_metadata=False)
    app.dataframe(clean).apply(to_columns).sink(sink)
    app.run(timeout=float(os.environ.get("BENCH_QUIX_STOCK_IDLE", "15")))


if __name__ == "__main__":
    main()
