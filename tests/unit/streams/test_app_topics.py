"""The worker's producer waits after creating a topic until its own metadata has it: on a cluster the broker
asked right after a CreateTopics may not know the topic yet, and a table write to a changelog missing from
the metadata crashed the worker (TypeError in aiokafka's _partition, seen on the three-broker cluster)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from faust.transport.drivers.aiokafka import Producer as AIOKafkaFaustProducer

from streams.app import IdempotentProducer


class FakeAiokafkaProducer:
    """aiokafka's producer, reduced to the one call that waits for a topic's metadata (recorded)."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def partitions_for(self, topic: str) -> set[int]:
        self.asked.append(topic)
        return {0, 1, 2, 3}


@pytest.fixture
def producer(monkeypatch: pytest.MonkeyPatch) -> tuple[IdempotentProducer, FakeAiokafkaProducer, list[str]]:
    created: list[str] = []

    async def create(self: Any, topic: str, *args: Any, **kwargs: Any) -> None:
        created.append(topic)

    monkeypatch.setattr(AIOKafkaFaustProducer, "create_topic", create)
    fake = FakeAiokafkaProducer()
    p = object.__new__(IdempotentProducer)
    p.__dict__["app"] = SimpleNamespace(conf=SimpleNamespace(topic_allow_declare=True))
    p.__dict__["_ensure_producer"] = lambda: fake
    return p, fake, created


async def test_create_topic_waits_for_the_producers_metadata(producer) -> None:
    p, fake, created = producer
    await p.create_topic("app-anomaly_state-changelog", 4, 3, config={})
    assert created == ["app-anomaly_state-changelog"]
    assert fake.asked == ["app-anomaly_state-changelog"]


async def test_no_wait_when_topic_declaration_is_off(producer) -> None:
    p, fake, created = producer
    p.__dict__["app"].conf.topic_allow_declare = False
    await p.create_topic("t", 4, 3)
    assert created == ["t"] and fake.asked == []
