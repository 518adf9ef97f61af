"""Incremental fetch sessions on the real broker: every record once and in order through pauses, seeks, a session
the broker no longer knows and a second consumer joining the group, with most requests incremental; the stages
fetch through them unless kafka.fetch_sessions is off."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.settings import KafkaSettings
from streams.stages.base import BatchStage
from streams.stages.fetch_session import SessionConsumer
from tests.integration.conftest import Isolation, wait_until

Seen = dict[tuple[str, int], list[bytes]]


async def _topics(iso: Isolation, n: int, partitions: int = 4) -> list[str]:
    names = [f"fetch-session-{i}.it-{iso.tag}" for i in range(n)]
    admin = AIOKafkaAdminClient(bootstrap_servers=iso.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, partitions, 1) for t in names])
    finally:
        await admin.close()
    return names


def _consumer(iso: Isolation, topics: list[str]) -> SessionConsumer:
    return SessionConsumer(*topics, bootstrap_servers=iso.bootstrap, group_id=f"it-{iso.tag}",
                           auto_offset_reset="earliest", enable_auto_commit=False,
                           isolation_level="read_committed", fetch_max_wait_ms=100)


async def _read(consumer: SessionConsumer, seen: Seen, until: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while sum(len(v) for v in seen.values()) < until:
        assert time.monotonic() < deadline, f"{sum(len(v) for v in seen.values())} of {until} records read"
        for tp, msgs in (await consumer.getmany(timeout_ms=200)).items():
            seen[(tp.topic, tp.partition)].extend(m.value for m in msgs)  # type: ignore[misc]


async def _send(producer: AIOKafkaProducer, topics: list[str], sent: Seen, start: int, n: int) -> None:
    """`n` records over the first two topics' partitions (the last topic stays idle), acknowledged one by one."""
    for i in range(start, start + n):
        key = (topics[(i // 4) % 2], i % 4)
        await producer.send_and_wait(key[0], str(i).encode(), partition=key[1])
        sent[key].append(str(i).encode())


async def test_every_record_once_in_order_through_pause_seek_and_a_lost_session(iso: Isolation) -> None:
    topics = await _topics(iso, 3)
    producer = AIOKafkaProducer(bootstrap_servers=iso.bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    consumer = _consumer(iso, topics)
    await consumer.start()
    sent: Seen = defaultdict(list)
    seen: Seen = defaultdict(list)
    try:
        await asyncio.gather(_send(producer, topics, sent, 0, 300), _read(consumer, seen, 300))
        assert seen == sent

        paused = TopicPartition(topics[0], 1)
        consumer.pause(paused)
        held = len(seen[(paused.topic, paused.partition)])
        await asyncio.gather(_send(producer, topics, sent, 300, 200), _read(consumer, seen, 475))
        await asyncio.sleep(0.5)
        assert len(seen[(paused.topic, paused.partition)]) == held  # nothing of a paused partition
        consumer.resume(paused)
        await _read(consumer, seen, 500)
        assert seen == sent

        # read one partition again from offset 10: its records come again, from there, in order
        again = TopicPartition(topics[1], 2)
        consumer.seek(again, 10)
        await _read(consumer, seen, 500 + len(sent[(again.topic, again.partition)]) - 10)
        assert seen[(again.topic, again.partition)][len(sent[(again.topic, again.partition)]):] == \
            sent[(again.topic, again.partition)][10:]

        sessions = consumer.fetch_sessions()
        (session,) = sessions.values()
        assert session.id != 0 and session.incremental_requests > 10 * session.full_requests

        # the broker no longer knows the session (evicted, or the broker restarted): a full request starts anew
        full_before = session.full_requests
        session.id = session.id + 1 if session.id < 2**31 - 1 else 1  # a session id the broker never gave
        later: Seen = defaultdict(list)
        seen_later: Seen = defaultdict(list)
        await asyncio.gather(_send(producer, topics, later, 500, 40), _read(consumer, seen_later, 40))
        assert session.full_requests > full_before and session.id != 0
        assert seen_later == later
    finally:
        await consumer.stop()
        await producer.stop()


async def test_a_second_consumer_joining_gets_its_partitions_read_from_the_committed_offsets(iso: Isolation) -> None:
    topics = await _topics(iso, 2)
    producer = AIOKafkaProducer(bootstrap_servers=iso.bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    first, second = _consumer(iso, topics), _consumer(iso, topics)
    sent: Seen = defaultdict(list)
    seen_first: Seen = defaultdict(list)
    seen_second: Seen = defaultdict(list)
    await first.start()
    try:
        await asyncio.gather(_send(producer, topics, sent, 0, 200), _read(first, seen_first, 200))
        await first.commit()
        await second.start()

        async def both_read_until(total: int) -> None:
            deadline = time.monotonic() + 60
            while sum(len(v) for d in (seen_first, seen_second) for v in d.values()) < total:
                assert time.monotonic() < deadline
                for consumer, seen in ((first, seen_first), (second, seen_second)):
                    for tp, msgs in (await consumer.getmany(timeout_ms=100)).items():
                        seen[(tp.topic, tp.partition)].extend(m.value for m in msgs)  # type: ignore[misc]
                    if seen:
                        await consumer.commit()

        await asyncio.gather(_send(producer, topics, sent, 200, 200), both_read_until(400))
        await asyncio.sleep(1)
        await both_read_until(400)
        assert second.assignment() and first.assignment()  # the group spread the partitions
        for key, values in sent.items():
            assert set(seen_first.get(key, []) + seen_second.get(key, [])) == set(values)  # each one, none made up
            for seen in (seen_first, seen_second):  # what each read of a partition: in order, without a gap
                mine = seen.get(key, [])
                if mine:
                    start = values.index(mine[0])
                    assert mine == values[start:start + len(mine)]
        assert all(s.incremental_requests > 0 for c in (first, second) for s in c.fetch_sessions().values())
    finally:
        await second.stop()
        await first.stop()
        await producer.stop()


class _Collect(BatchStage):
    stage = "collect"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.values: list[bytes] = []

    async def process(self, records: list[Any]) -> None:
        self.values.extend(r.value for r in records)


async def test_a_stage_fetches_through_sessions_unless_told_not_to(iso: Isolation) -> None:
    topics = await _topics(iso, 2)
    producer = AIOKafkaProducer(bootstrap_servers=iso.bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for sessions in (True, False):
            stage = _Collect(kafka=KafkaSettings(bootstrap_servers=iso.bootstrap, fetch_sessions=sessions),
                             app_id=f"it-{iso.tag}-{sessions}", topics=topics)
            await stage.start()
            try:
                sent = [b"%s-%d" % (str(sessions).encode(), i) for i in range(30)]
                for i, value in enumerate(sent):
                    await producer.send_and_wait(topics[i % 2], value, partition=i % 4)
                await wait_until(lambda s=stage, v=sent: set(v) <= set(s.values), 60, "the records")
                requests = stage.status()["fetch_requests"]
                if sessions:
                    assert isinstance(stage.consumer, SessionConsumer)
                    assert requests["full"] >= 1 and requests["incremental"] > requests["full"]
                else:
                    assert type(stage.consumer) is AIOKafkaConsumer and requests == {"full": 0, "incremental": 0}
            finally:
                await stage.stop()
    finally:
        await producer.stop()
