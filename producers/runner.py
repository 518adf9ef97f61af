"""Runs sources outside a worker: owns one idempotent Kafka producer (acks=all) and one aiohttp
session, and sends every record a source yields to its raw topic, keyed by symbol.

    python -m producers simulated --rate 5000 --seconds 60

The worker runs the same sources leader-only (streams/stages/produce.py); this runner is for producing from
separate processes (and for the benchmark's load generator).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

import aiohttp
from aiokafka import AIOKafkaProducer

from producers.base import RawRecord, Source, encode
from streams.catalog import Catalog
from streams.errors import SourceError
from streams.settings import Settings

logger = logging.getLogger(__name__)

RETRY_INITIAL_SECONDS, RETRY_MAX_SECONDS = 1.0, 60.0  # between a source's failed rounds


def new_producer(settings: Settings) -> AIOKafkaProducer:
    """The idempotent producer of every process outside the worker (runner, CLI, Python API, benchmark)."""
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        linger_ms=settings.kafka.producer_linger_ms,
        max_batch_size=settings.kafka.producer_max_batch_bytes,
        request_timeout_ms=30000,
        **settings.kafka.client_kwargs(),  # SSL/SASL
    )


async def send_batch(producer: AIOKafkaProducer, topic: str, records: Sequence[RawRecord]) -> int:
    """Send and wait for every ack (the runner's unit of durability)."""
    futures = [await producer.send(topic, r.value, key=r.key) for r in records]
    await asyncio.gather(*futures)
    return len(futures)


class SourceRunner:
    def __init__(self, settings: Settings, catalog: Catalog) -> None:
        self.settings = settings
        self.catalog = catalog

    async def run(self, source: Source, *, seconds: float | None = None, limit: int | None = None) -> int:
        topic = self.catalog.raw(source.name).name
        producer = new_producer(self.settings)
        try:
            await producer.start()
        except BaseException:
            await producer.stop()  # a failed start (no broker) leaves its client open: "Unclosed AIOKafkaProducer"
            raise
        sent = 0
        deadline = time.monotonic() + seconds if seconds else None
        backoff = RETRY_INITIAL_SECONDS
        try:
            async with aiohttp.ClientSession() as session:
                while True:
                    try:
                        async for batch in source.fetch(session):
                            backoff = RETRY_INITIAL_SECONDS  # a good round: the next failure waits the least
                            if limit is not None:
                                batch = batch[: limit - sent]
                            sent += await send_batch(producer, topic, [encode(r) for r in batch])
                            if (limit is not None and sent >= limit) or (deadline and time.monotonic() >= deadline):
                                break
                        break
                    except SourceError as exc:
                        # A round in which every call failed (no network, an outage): wait and start again, as
                        # the worker's supervisor does; an error that is not retriable ends the run.
                        if not exc.retriable or (deadline and time.monotonic() + backoff >= deadline):
                            raise
                        logger.warning("%s failed (%s); starting it again in %.0f s", source.name, exc, backoff)
                        await asyncio.sleep(backoff)
                        backoff = min(backoff * 2, RETRY_MAX_SECONDS)
        finally:
            await producer.stop()
        logger.info("%s: sent %d records to %s", source.name, sent, topic)
        return sent
