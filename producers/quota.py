"""Daily call quotas that survive a restart and a leader change (Alpha Vantage: 25 calls per UTC day on the
free tier).

A count kept in memory starts again at 0 whenever the worker restarts or another worker becomes the leader
(sources run leader-only, streams/stages/produce.py), so a day's budget could be spent several times and the
provider then refuses every call until the next day. `DailyQuota` counts calls per (provider, UTC date) in a
`QuotaStore` passed in by whoever builds the source:

- `KafkaQuotaStore`: a one-partition compacted topic (`tickflow.quota<topic suffix>`) keyed by
  "provider|YYYY-MM-DD", the value the day's count. Every worker can read it, so a new leader continues from
  the old leader's count; it needs nothing beyond the broker the pipeline already has. A Faust table was the
  issue's suggestion, but a Faust table's keys live on whichever worker owns their partition (not
  necessarily the leader) and it can only be written from inside a stream; a PostgreSQL row would add a
  schema migration and a database connection to every producer.
- `MemoryQuotaStore`: the same interface in a dict (tests, or a deliberately process-local count).

A call is counted (and the count persisted, acks=all) before the request goes out: a crash right after a
call can only over-count, never let the provider see more calls than the quota. Within a day counts only
grow, so the topic is folded with max(): two leaders overlapping for a moment cannot lower a count. A store
that cannot be read or written lets no call out either (QuotaStoreUnavailable, retriable: the source fails and
the supervisor restarts it with backoff).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from typing import Any, Protocol

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from streams.config import KafkaSettings
from streams.errors import SourceError

logger = logging.getLogger(__name__)

QUOTA_TOPIC = "tickflow.quota"
_KEEP_MS = 7 * 86_400_000  # a day's count matters for a day; a week of them is kept for inspection


class QuotaBlocked(SourceError):
    """No call may go out now: retrying inside this request cannot help (http.get_json does not retry it)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retriable=True)


class QuotaSpent(QuotaBlocked):
    """The day's calls are used up; the next UTC day starts a new count."""


class QuotaStoreUnavailable(QuotaBlocked):
    """The count cannot be read or saved: no call goes out uncounted."""


class QuotaStore(Protocol):
    """Where daily counts live. `load` returns the newest count another process may have saved."""

    async def load(self, provider: str, day: date) -> int: ...

    async def save(self, provider: str, day: date, used: int) -> None: ...

    async def close(self) -> None: ...


def quota_key(provider: str, day: date) -> str:
    return f"{provider}|{day.isoformat()}"


class MemoryQuotaStore:
    """A QuotaStore in a dict: shared by the sources given the same instance, gone with the process."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    async def load(self, provider: str, day: date) -> int:
        return self.counts.get(quota_key(provider, day), 0)

    async def save(self, provider: str, day: date, used: int) -> None:
        key = quota_key(provider, day)
        self.counts[key] = max(used, self.counts.get(key, 0))

    async def close(self) -> None:
        return None


class KafkaQuotaStore:
    """A QuotaStore on a compacted one-partition topic (created here if missing; see the module docstring).

    Connects on first use; `load` reads the topic up to its end offset every time, so a count saved by
    another worker (the previous leader) is seen."""

    def __init__(self, bootstrap_servers: str, topic: str = QUOTA_TOPIC, *,
                 client_kwargs: Mapping[str, Any] | None = None, replication_factor: int = 1,
                 min_insync_replicas: int | None = None) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.client_kwargs = dict(client_kwargs or {})
        self.replication_factor = replication_factor
        self.min_insync_replicas = min_insync_replicas
        self.counts: dict[str, int] = {}
        self._tp = TopicPartition(topic, 0)
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def for_settings(cls, kafka: KafkaSettings) -> KafkaQuotaStore:
        """The store of a deployment: its broker, security settings and topic suffix."""
        return cls(kafka.bootstrap_servers, f"{QUOTA_TOPIC}{kafka.topic_suffix}", client_kwargs=kafka.client_kwargs(),
                   replication_factor=kafka.replication_factor or 1, min_insync_replicas=kafka.min_insync_replicas)

    async def _create_topic(self) -> None:
        configs = {"cleanup.policy": "compact,delete", "retention.ms": str(_KEEP_MS)}
        if self.min_insync_replicas:
            configs["min.insync.replicas"] = str(self.min_insync_replicas)
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap_servers, request_timeout_ms=15000,
                                    **self.client_kwargs)
        try:
            await admin.start()
            if self.topic in set(await admin.list_topics()):
                return
            try:
                await admin.create_topics([NewTopic(self.topic, 1, self.replication_factor, topic_configs=configs)])
            except TopicAlreadyExistsError:
                pass
        finally:
            await admin.close()

    async def _start(self) -> None:
        if self._consumer is not None:
            return
        await self._create_topic()
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap_servers, acks="all", enable_idempotence=True,
                                    **self.client_kwargs)
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap_servers, group_id=None,
                                    enable_auto_commit=False, auto_offset_reset="earliest", **self.client_kwargs)
        await producer.start()
        try:
            await consumer.start()
            consumer.assign([self._tp])
            await consumer.seek_to_beginning(self._tp)
        except BaseException:
            await producer.stop()
            await consumer.stop()
            raise
        self._producer, self._consumer = producer, consumer

    async def _catch_up(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        end = (await consumer.end_offsets([self._tp]))[self._tp]
        while await consumer.position(self._tp) < end:
            batch = await consumer.getmany(self._tp, timeout_ms=1000)
            for msg in batch.get(self._tp, []):
                if msg.key is None or msg.value is None:
                    continue
                try:
                    used = int(orjson.loads(msg.value)["used"])
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                    logger.warning("quota: unreadable record at %s offset %d, ignored", self.topic, msg.offset)
                    continue
                key = msg.key.decode(errors="replace")
                self.counts[key] = max(used, self.counts.get(key, 0))

    async def load(self, provider: str, day: date) -> int:
        async with self._lock:
            try:
                await self._start()
                await self._catch_up()
            except KafkaError as exc:
                raise QuotaStoreUnavailable(f"quota topic {self.topic} unreadable: {exc!r}") from None
            return self.counts.get(quota_key(provider, day), 0)

    async def save(self, provider: str, day: date, used: int) -> None:
        key = quota_key(provider, day)
        value = orjson.dumps({"provider": provider, "day": day.isoformat(), "used": used,
                              "at": datetime.now(UTC).isoformat()})
        async with self._lock:
            try:
                await self._start()
                assert self._producer is not None
                await (await self._producer.send(self.topic, value, key=key.encode()))
            except KafkaError as exc:
                raise QuotaStoreUnavailable(f"quota topic {self.topic} not written: {exc!r}") from None
            self.counts[key] = max(used, self.counts.get(key, 0))

    async def close(self) -> None:
        producer, consumer, self._producer, self._consumer = self._producer, self._consumer, None, None
        if consumer is not None:
            await consumer.stop()
        if producer is not None:
            await producer.stop()


def utc_today() -> date:
    return datetime.now(UTC).date()


class DailyQuota:
    """At most `limit` calls per UTC day for `provider`, counted in `store`. `take()` counts one call (or raises
    QuotaSpent); `forget()` makes the next take() read the store again (a source starting to lead calls it)."""

    def __init__(self, provider: str, limit: float, store: QuotaStore, *,
                 today: Callable[[], date] = utc_today) -> None:
        self.provider = provider
        self.limit = int(limit)
        self.store = store
        self.today = today
        self.day: date | None = None
        self.used = 0
        self._lock = asyncio.Lock()

    def forget(self) -> None:
        self.day = None

    async def take(self) -> None:
        async with self._lock:
            day = self.today()
            if day != self.day:
                try:
                    self.used = await self.store.load(self.provider, day)
                except QuotaBlocked:
                    raise
                except Exception as exc:  # any store: no call goes out uncounted
                    raise QuotaStoreUnavailable(f"{self.provider}: quota store failed: {exc!r}") from None
                self.day = day
            if self.used >= self.limit:
                raise QuotaSpent(f"{self.provider}: the {self.limit} calls of {day.isoformat()} (UTC) are used up; "
                                 "the count starts again at 00:00 UTC")
            try:
                await self.store.save(self.provider, day, self.used + 1)
            except QuotaBlocked:
                raise
            except Exception as exc:
                raise QuotaStoreUnavailable(f"{self.provider}: quota store failed: {exc!r}") from None
            self.used += 1
