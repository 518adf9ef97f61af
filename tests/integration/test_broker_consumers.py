"""A consumer keeps consuming after its group coordinator answers a heartbeat or a committed-offset fetch with an
error aiokafka 0.14 has no case for (as a restarted broker does while it reloads the groups' offsets: it answered
OffsetCommit with COORDINATOR_LOAD_IN_PROGRESS in this suite's broker restart test). Real broker; only that one
answer is altered, in the client, because a real broker gives it for a moment that cannot be timed from a test."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError

from streams.broker import keep_consumers_going
from tests.integration.conftest import Isolation, ensure_topics_for

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
