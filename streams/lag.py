"""Consumer lag of the worker's group, read from the cluster (committed offsets vs. end offsets), so
every worker reports the same number whatever partitions it owns."""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

logger = logging.getLogger(__name__)


class LagReader:
    def __init__(self, bootstrap_servers: str, group_id: str, topics: list[str], cache_seconds: float = 1.0) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.group_id = group_id
        self.topics = topics
        self.cache_seconds = cache_seconds
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._cached: tuple[float, dict[str, int]] | None = None
        self._lock = asyncio.Lock()

    async def _clients(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        if self._admin is None or self._consumer is None:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap_servers)
            consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap_servers, enable_auto_commit=False)
            await admin.start()
            await consumer.start()
            self._admin, self._consumer = admin, consumer
        return self._admin, self._consumer

    async def lag_by_topic(self) -> dict[str, int]:
        async with self._lock:
            if self._cached and time.monotonic() - self._cached[0] < self.cache_seconds:
                return self._cached[1]
            admin, consumer = await self._clients()
            tps = []
            for topic in self.topics:
                for p in consumer.partitions_for_topic(topic) or ():
                    tps.append(TopicPartition(topic, p))
                if not consumer.partitions_for_topic(topic):
                    await consumer._client.force_metadata_update()
            committed = await admin.list_consumer_group_offsets(self.group_id, partitions=tps or None)
            ends = await consumer.end_offsets(tps) if tps else {}
            lag: dict[str, int] = {t: 0 for t in self.topics}
            for tp, end in ends.items():
                meta = committed.get(tp)
                pos = meta.offset if meta is not None and meta.offset >= 0 else 0
                lag[tp.topic] += max(0, end - pos)
            self._cached = (time.monotonic(), lag)
            return lag

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
        if self._admin is not None:
            await self._admin.close()
        self._admin = self._consumer = None
