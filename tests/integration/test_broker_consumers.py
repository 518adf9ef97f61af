"""A consumer keeps consuming after its group coordinator answers a heartbeat or a committed-offset fetch with an
error aiokafka 0.14 has no case for (as a restarted broker does while it reloads the groups' offsets: it answered
OffsetCommit with COORDINATOR_LOAD_IN_PROGRESS in this suite's broker restart test). Real broker; only that one
answer is altered, in the client, because a real broker gives it for a moment that cannot be timed from a test.

And a stage whose consumer's coordinator lookup stays parked (as the validate group's did after a broker restart
in CI: it never found its coordinator again, and the stage's next commit waited behind it) gets a new consumer
and processes what came after. Real broker; only the lookup of that one consumer is parked."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from streams import faults
from streams.broker import keep_consumers_going
from streams.settings import KafkaSettings
from streams.stages.base import BatchStage
from tests.integration.conftest import Isolation, ensure_topics_for, wait_until

COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE = 14, 15
HEARTBEAT, OFFSET_FETCH = 12, 9  # API keys


async def _next_value(consumer: AIOKafkaConsumer, timeout: float) -> tuple[bytes | None, list[str]]:
    """The next record's value, fetching as a stage does (a KafkaError from getmany is logged and retried)."""
    errors: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            batch = await consumer.getmany(timeout_ms=500)
        except KafkaError as exc:
            errors.append(repr(exc))
            await asyncio.sleep(0.5)
            continue
        for records in batch.values():
            return records[0].value, errors
    return None, errors


def _alter_once(consumer: AIOKafkaConsumer, api_key: int, change: Callable[[dict[str, Any]], dict[str, Any]]
                ) -> asyncio.Event:
    """The broker's next answer to a request of `api_key`, its fields changed by `change`; the event is set then."""
    coordinator = consumer._coordinator
    send_req = coordinator._send_req
    altered = asyncio.Event()

    async def send_altered(request: Any) -> Any:
        response = await send_req(request)
        if request.API_KEY == api_key and not altered.is_set():
            altered.set()
            return type(response)(**change({name: getattr(response, name) for name in response.SCHEMA.names}))
        return response

    coordinator._send_req = send_altered
    return altered


async def test_a_heartbeat_answered_load_in_progress_does_not_stop_the_consumer(
        iso: Isolation, producer: AIOKafkaProducer) -> None:
    keep_consumers_going()
    await ensure_topics_for(iso)
    topic = iso.raw_topic()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=iso.bootstrap, group_id=f"it-{iso.tag}-heartbeat",
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                heartbeat_interval_ms=300, session_timeout_ms=10_000)
    await consumer.start()
    try:
        await producer.send_and_wait(topic, b"before", partition=0)
        assert (await _next_value(consumer, 30))[0] == b"before"

        coordinator = consumer._coordinator
        altered = _alter_once(consumer, HEARTBEAT, lambda f: {**f, "error_code": COORDINATOR_LOAD_IN_PROGRESS})
        await asyncio.wait_for(altered.wait(), 10)
        await asyncio.sleep(1.0)  # several heartbeat intervals after the altered answer

        await producer.send_and_wait(topic, b"after", partition=0)
        value, errors = await _next_value(consumer, 20)
        assert value == b"after", f"the consumer fetched nothing after the heartbeat error; getmany raised {errors[:3]}"
        heartbeat = coordinator._heartbeat_task
        assert heartbeat is not None and not heartbeat.done(), "the heartbeat task is not running"
    finally:
        await consumer.stop()


async def test_a_committed_offset_fetch_answered_coordinator_not_available_does_not_stop_the_consumer(
        iso: Isolation, producer: AIOKafkaProducer) -> None:
    """A new assignment's committed offsets are fetched by a background task; one refused fetch ended it."""
    keep_consumers_going()
    await ensure_topics_for(iso)
    topic = iso.raw_topic()
    await producer.send_and_wait(topic, b"first", partition=0)
    consumer = AIOKafkaConsumer(bootstrap_servers=iso.bootstrap, group_id=f"it-{iso.tag}-offsets",
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        altered = _alter_once(consumer, OFFSET_FETCH, lambda fields: {**fields, "topics": [
            (t, [(p[0], -1, "", COORDINATOR_NOT_AVAILABLE) for p in parts]) for t, parts in fields["topics"]]})
        consumer.subscribe([topic])  # joined only now, with the answer altered
        value, errors = await _next_value(consumer, 30)
        assert altered.is_set(), "no committed-offset fetch was answered: the test did not test"
        assert value == b"first", f"nothing fetched after the offset fetch error; getmany raised {errors[:3]}"
    finally:
        await consumer.stop()


class Collect(BatchStage):
    stage = "collect"
    session_timeout_ms = 6_000  # the broker's minimum: the parked member is expired soon

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.values: list[bytes] = []
        self.revoked: list[set[TopicPartition]] = []

    async def process(self, records: list[Any]) -> None:
        self.values.extend(r.value for r in records)

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        self.revoked.append(revoked)


async def _stage_with_parked_lookup(iso: Isolation, producer: AIOKafkaProducer, topic: str, patience: float
                                    ) -> Collect:
    """A started stage that processed a first record, then lost its coordinator with its lookup parked."""
    await ensure_topics_for(iso)
    stage = Collect(kafka=KafkaSettings(bootstrap_servers=iso.bootstrap), app_id=f"it-{iso.tag}", topics=[topic],
                    coordinator_patience=patience)
    await stage.start()
    await producer.send_and_wait(topic, b"before", partition=0)
    await wait_until(lambda: b"before" in stage.values, 60, "the first record")
    assert stage.consumer is not None and stage.coordinator_known()
    faults.park_lookup(stage.consumer)
    return stage


async def test_a_stage_whose_coordinator_lookup_stays_parked_gets_a_new_consumer(
        iso: Isolation, producer: AIOKafkaProducer) -> None:
    topic = iso.raw_topic()
    stage = await _stage_with_parked_lookup(iso, producer, topic, patience=3.0)
    first = stage.consumer
    try:
        for i in range(20):
            await producer.send_and_wait(topic, b"after-%d" % i, partition=i % 4)
        await wait_until(lambda: all(b"after-%d" % i in stage.values for i in range(20)), 90,
                         "the records sent after the lookup parked")
        assert stage.replaced_consumers >= 1 and stage.consumer is not first
        assert {TopicPartition(topic, p) for p in range(4)} in stage.revoked, "the old partitions were not let go"
        assert stage.coordinator_known()
    finally:
        await stage.stop()


async def test_without_the_watch_a_parked_lookup_stops_the_stage_for_good(
        iso: Isolation, producer: AIOKafkaProducer) -> None:
    """The control: the same parked lookup and no replacement. The stage takes at most one more batch (its commit
    parks behind the lookup, and the next batch waits for that commit): what CI saw after the broker restart."""
    topic = iso.raw_topic()
    stage = await _stage_with_parked_lookup(iso, producer, topic, patience=0)
    try:
        for i in range(5):
            await producer.send_and_wait(topic, b"after-%d" % i, partition=0)
            await asyncio.sleep(1.0)
        await asyncio.sleep(10)
        missing = [i for i in range(5) if b"after-%d" % i not in stage.values]
        assert missing, "every record was processed: the parked lookup did not stop the stage, the test tests nothing"
        assert stage.replaced_consumers == 0 and not stage.coordinator_known()
    finally:
        stage.consumer, stage._commit_task = None, None  # its stop would wait for the parked lookup
        await stage.stop()
