"""Consumer lag of the stages' groups, read from the cluster (committed offsets vs. end offsets), so every
worker reports the same number whatever partitions it owns."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streams.settings import KafkaSettings

logger = logging.getLogger(__name__)


Groups = Mapping[str, Sequence[str]]


class LagReader:
    """`groups`: consumer group -> its topics, or a function returning that (read at each refresh, so the
    reader can be made before the stages it measures)."""

    def __init__(self, bootstrap_servers: str, groups: Groups | Callable[[], Groups], cache_seconds: float = 1.0,
                 *, kafka: KafkaSettings | None = None) -> None:
        self.bootstrap_servers = bootstrap_servers
        self._groups = groups
        self.cache_seconds = cache_seconds
        # SSL/SASL for the two clients, passed in (the worker's settings.kafka); None: PLAINTEXT, as
        # streams/broker.py ensure_topics.
        self.kafka = kafka
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._cached: tuple[float, dict[str, int]] | None = None
        self._lock = asyncio.Lock()

    def groups(self) -> Groups:
        return self._groups() if callable(self._groups) else self._groups

    async def _clients(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        if self._admin is None or self._consumer is None:
            security = (self.kafka or KafkaSettings()).client_kwargs()
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap_servers, **security)
            consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap_servers, enable_auto_commit=False,
                                        **security)
            await admin.start()
            await consumer.start()
            self._admin, self._consumer = admin, consumer
        return self._admin, self._consumer

    async def lag_by_topic(self) -> dict[str, int]:
        async with self._lock:
            if self._cached and time.monotonic() - self._cached[0] < self.cache_seconds:
                return self._cached[1]
            admin, consumer = await self._clients()
            lag: dict[str, int] = {}
            for group, topics in self.groups().items():
                tps = []
                for topic in topics:
                    if not consumer.partitions_for_topic(topic):
                        await consumer._client.force_metadata_update()
                    for p in consumer.partitions_for_topic(topic) or ():
                        tps.append(TopicPartition(topic, p))
                if not tps:
                    continue
                committed = await admin.list_consumer_group_offsets(group, partitions=tps)
                ends = await consumer.end_offsets(tps)
                for tp, end in ends.items():
                    meta = committed.get(tp)
                    pos = meta.offset if meta is not None and meta.offset >= 0 else 0
                    lag[tp.topic] = lag.get(tp.topic, 0) + max(0, end - pos)
            self._cached = (time.monotonic(), lag)
            return lag

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
        if self._admin is not None:
            await self._admin.close()
        self._admin = self._consumer = None
