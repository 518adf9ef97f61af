#!/usr/bin/env python3
"""The floor: a bare aiokafka consumer doing the job in ONE hop (no clean topic), validate then COPY.

Reads the raw topic in batches of 2,000, validates with tickflow's Validator, builds the same rows and writes
them with the same COPY + revision upsert (sinks.postgres), committing offsets after each batch. No Faust,
no second Kafka hop, no detectors, no dead letters (refused records are counted and dropped): the least work
the job can be done with in Python, so it shows how far each framework is from the floor.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer
from common import BATCH, SOURCE, ingested_at, job_from_env

from sinks.postgres import PostgresTickWriter, row_from_record
from streams.errors import RejectedRecord
from streams.rules import Validator

logger = logging.getLogger("bench.bare")


async def run() -> None:
    job = job_from_env()
    writer = PostgresTickWriter(job.postgres())
    await writer.start()
    validator = Validator(job.settings.validation)
    consumer = AIOKafkaConsumer(job.raw, bootstrap_servers=job.bootstrap, group_id=job.group,
                                enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=BATCH,
                                **job.settings.kafka.client_kwargs())
    await consumer.start()
    refused = 0
    try:
        while True:  # until bench/throughput.py stops it (SIGTERM)
            batches = await consumer.getmany(timeout_ms=1000, max_records=BATCH)
            rows = []
            for msgs in batches.values():
                for m in msgs:
                    try:
                        p = validator.check(m.value, source=SOURCE, ingested_at=ingested_at(m.timestamp))
                    except RejectedRecord:
                        refused += 1
                        continue
                    rows.append(row_from_record(p.model_dump(mode="json")))
            if rows:
                await writer.write(rows)
            if batches:
                await consumer.commit()
    finally:
        logger.warning("bare peer: %d records refused", refused)
        await consumer.stop()
        await writer.stop()


if __name__ == "__main__":
    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
