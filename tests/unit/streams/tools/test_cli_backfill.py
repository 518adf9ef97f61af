"""`tickflow backfill`'s sources get the worker's collaborators: Alpha Vantage counts its backfill calls in the
Kafka quota store the worker uses (a local recording store stands in for it here, the provider is a local server
and the producer a fake: no broker in unit tests)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, date, datetime
from typing import Any

import pytest
from aiohttp import web

from producers import quota, runner
from producers.quota import MemoryQuotaStore
from streams.settings import get_settings
from streams.tools import cli
from tests.unit.producers.test_alpha_vantage import KEY, FakeAlphaVantage


class RecordingStore(MemoryQuotaStore):
    """The quota store backfill was given: what it counted, and whether it was closed."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    async def close(self) -> None:
        self.closed = True


class FakeProducer:
    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


@pytest.fixture
async def provider() -> AsyncIterator[str]:
    """A local Alpha Vantage (the recorded answers of tests/unit/producers); its base URL."""
    app_runner = web.AppRunner(FakeAlphaVantage().app(), shutdown_timeout=0.5, access_log=None)
    await app_runner.setup()
    await web.TCPSite(app_runner, "127.0.0.1", 0).start()
    host, port = app_runner.addresses[0][:2]
    yield f"http://{host}:{port}"
    await app_runner.cleanup()


@pytest.fixture
def fresh_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TICKFLOW_CONFIG", "")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


async def test_backfill_counts_alpha_vantage_calls_in_the_kafka_quota_store(
        provider: str, monkeypatch: pytest.MonkeyPatch, fresh_settings: None) -> None:
    monkeypatch.setenv("TICKFLOW_SOURCES__ALPHA_VANTAGE__BASE_URL", provider)
    monkeypatch.setenv("ALPHA_VANTAGE_API_KEY", KEY)
    store = RecordingStore()
    given: list[Any] = []

    def for_settings(kafka: Any) -> RecordingStore:
        given.append(kafka)
        return store

    sent: list[int] = []

    async def send_batch(producer: Any, topic: str, records: Sequence[Any]) -> int:
        sent.append(len(records))
        return len(records)

    monkeypatch.setattr(quota.KafkaQuotaStore, "for_settings", staticmethod(for_settings))
    monkeypatch.setattr(runner, "new_producer", lambda settings: FakeProducer())
    monkeypatch.setattr(runner, "send_batch", send_batch)
    total, done, failed = await cli.backfill_history("alpha_vantage", ["IBM"], date(2024, 11, 1),
                                                     date(2024, 11, 30), "1d")
    assert (done, failed) == (1, 0) and total == sum(sent) > 0
    assert given == [get_settings().kafka]  # the deployment's store, as the worker builds it
    today = datetime.now(UTC).date()
    assert store.counts == {quota.quota_key("alpha_vantage", today): 1} and store.closed


def test_backfill_offers_exactly_the_registry_sources_that_load_history() -> None:
    import producers.registry as registry
    from producers.base import Source

    classes = [obj for obj in vars(registry).values() if isinstance(obj, type) and issubclass(obj, Source)
               and obj is not Source]
    with_history = [name for name in registry.BUILDERS
                    if any(cls.name == name and hasattr(cls, "history") for cls in classes)]
    assert {cls.name for cls in classes} == set(registry.BUILDERS)  # every entry's class was found
    assert list(cli.BACKFILL_SOURCES) == with_history
