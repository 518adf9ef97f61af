"""A consumer keeps consuming after its group coordinator answers a heartbeat with an error aiokafka 0.14 has no
case for (COORDINATOR_LOAD_IN_PROGRESS: what a restarted broker answers while it reloads the groups' offsets).
Real broker; only that one heartbeat answer is altered, in the client, because a real broker gives it for a
moment that cannot be timed from a test."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError

from streams.broker import keep_heartbeating
from tests.integration.conftest import Isolation, ensure_topics_for

COORDINATOR_LOAD_IN_PROGRESS = 14


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


async def test_a_heartbeat_answered_load_in_progress_does_not_stop_the_consumer(
        iso: Isolation, producer: AIOKafkaProducer) -> None:
    keep_heartbeating()
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
        send_req = coordinator._send_req
        altered = asyncio.Event()

        async def load_in_progress_once(request):  # type: ignore[no-untyped-def]
            response = await send_req(request)
            if request.API_KEY == 12 and not altered.is_set():  # Heartbeat
                altered.set()
                fields = {name: getattr(response, name) for name in response.SCHEMA.names}
                return type(response)(**{**fields, "error_code": COORDINATOR_LOAD_IN_PROGRESS})
            return response

        coordinator._send_req = load_in_progress_once
        await asyncio.wait_for(altered.wait(), 10)
        await asyncio.sleep(1.0)  # several heartbeat intervals after the altered answer

        await producer.send_and_wait(topic, b"after", partition=0)
        value, errors = await _next_value(consumer, 20)
        assert value == b"after", f"the consumer fetched nothing after the heartbeat error; getmany raised {errors[:3]}"
        heartbeat = coordinator._heartbeat_task
        assert heartbeat is not None and not heartbeat.done(), "the heartbeat task is not running"
    finally:
        await consumer.stop()
