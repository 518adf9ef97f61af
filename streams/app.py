"""The Faust App, alone. Stage modules import it; it imports none of them (only the Settings leaf),
which avoids the import cycles and the double App that Faust projects often hit.

Agents, tables, timers and pages are found by autodiscovery of the modules listed below.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import faust
from faust.transport.drivers.aiokafka import Producer as AIOKafkaFaustProducer

from streams.broker import keep_consumers_going
from streams.logs import install_task_dump, logging_config
from streams.settings import Settings, get_settings

STAGE_MODULES = [
    "streams.stages.validate", "streams.stages.write", "streams.stages.archive", "streams.stages.metrics",
    "streams.stages.produce",
    "streams.stages.retention", "streams.web.health", "streams.web.prometheus", "streams.web.dashboard",
]


class IdempotentProducer(AIOKafkaFaustProducer):
    """Faust's aiokafka producer with idempotence and acks=all, so a retried send never duplicates
    and an acknowledged record survives a broker restart."""

    def _settings_extra(self) -> dict[str, Any]:
        return {**super()._settings_extra(), "acks": "all", "enable_idempotence": True}

    async def create_topic(self, topic: str, *args: Any, **kwargs: Any) -> None:
        """Faust refreshes metadata once after creating a topic, but the broker asked may not know the new
        topic yet (on three loopback brokers, 7 of 10 times); a table write to that changelog then crashed
        the worker (TypeError in key_partition). Wait until the producer's metadata has the topic."""
        await super().create_topic(topic, *args, **kwargs)
        if self.app.conf.topic_allow_declare:
            await self._ensure_producer().partitions_for(topic)


class TickflowApp(faust.App):
    def _new_producer(self) -> IdempotentProducer:  # type: ignore[override]
        return IdempotentProducer(self.transport, loop=self.loop, beacon=self.beacon)


def create_app(settings: Settings) -> TickflowApp:
    keep_consumers_going()  # before any consumer (Faust's and the stages'): one survives a broker restart
    brokers = ";".join(f"kafka://{hp.strip()}" for hp in settings.kafka.bootstrap_servers.split(","))
    w = settings.worker
    return TickflowApp(
        w.app_id,
        broker=brokers,
        # SSL/SASL from settings.kafka; Faust passes them to its own consumer and producers (None: PLAINTEXT).
        broker_credentials=settings.kafka.faust_credentials(),
        store=w.store,
        autodiscover=STAGE_MODULES,
        origin="streams",
        web_host=w.web_host,
        web_port=w.web_port,
        web_bind=w.web_host,
        canonical_url=f"http://{w.advertised_host or w.web_host}:{w.web_port}",
        topic_partitions=4,
        topic_replication_factor=settings.kafka.replication_factor or 1,
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        # A dead worker's members leave Faust's own group after this (Faust's default is 60 s), and a restarted
        # or surviving worker's stages start only once that group has joined: the stages' groups use 30 s too
        # (streams/stages/base.py).
        broker_session_timeout=30.0,
        broker_commit_every=5000,
        broker_commit_interval=1.0,
        stream_buffer_maxsize=16384,
        producer_linger_ms=settings.kafka.producer_linger_ms,
        producer_max_batch_size=settings.kafka.producer_max_batch_bytes,
        # Dead letters carry the original bytes, up to the broker's message.max.bytes (4 MiB here).
        producer_max_request_size=4 * 1024 * 1024 + 64 * 1024,
        table_standby_replicas=0,
        web_transport="tcp://",
        web_tables_enabled=False, web_router_enabled=False,  # table data and cluster URLs, unauthenticated
        logging_config=logging_config(w.log_format),  # worker.log_format: json swaps mode's formatters
    )


def internal_topic_configs(settings: Settings) -> dict[str, str]:
    """Topic configs for the topics Faust creates for us (table changelogs, the metrics topic): Faust takes their
    replication factor from topic_replication_factor, but min.insync.replicas only per topic."""
    n = settings.kafka.min_insync_replicas
    return {} if n is None else {"min.insync.replicas": str(n)}


settings = get_settings()  # also installs the log redaction (streams/redact.py) for the worker
app = create_app(settings)


@app.task
async def task_dump_on_sigusr2() -> None:
    """`kill -USR2 <pid>` logs where each of the worker's tasks waits (streams/logs.py)."""
    install_task_dump(asyncio.get_running_loop())


def settle_heap(young_threshold: int) -> None:
    """Move everything allocated by start-up (Faust, pandas, the calendars, the providers' modules: over a
    million objects) out of the garbage collector's reach: each full collection otherwise walked them all, a
    150-250 ms pause of the event loop under load (measured during the self-test).

    Then collect the young generation every `young_threshold` net allocations (worker.gc_young_threshold; 0 keeps
    Python's 700). A batch's records, models and messages live across awaits, so at 700 the collector scanned
    them, promoted them and scanned them again at every collection of the older generations: 7% of the worker's
    CPU at full drain (bench/README.md, session 20). What reference counting frees (nearly everything) never waits
    for a collection; only reference cycles do, at most `young_threshold` allocations longer."""
    gc.collect()
    gc.freeze()
    if young_threshold:
        gc.set_threshold(young_threshold, *gc.get_threshold()[1:])


@app.task
async def settle_worker_heap() -> None:
    """Once the worker has started (its imports and start-up objects made)."""
    settle_heap(settings.worker.gc_young_threshold)
