"""The stages' consumer (streams/stages/fetch.py) on the real broker: its own Fetch v11 codec answers, the
records of aborted transactions are left out under read_committed (the response's aborted-transactions list is
decoded right), every committed record arrives once, and the high watermarks are the broker's."""

from __future__ import annotations

import time
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition

from streams.stages import fetch
from streams.stages.fetch import FastFetcher, StageConsumer
from tests.integration.conftest import Isolation, ensure_topics_for


async def test_a_stage_consumer_reads_committed_records_through_its_own_codec(
        iso: Isolation, producer: AIOKafkaProducer, monkeypatch: pytest.MonkeyPatch) -> None:
    decoded = []
    real_decode = fetch.FetchResponseV11.decode.__func__  # type: ignore[attr-defined]

    def counting(cls: Any, data: Any) -> Any:
        response = real_decode(cls, data)
        decoded.append(response)
        return response

    monkeypatch.setattr(fetch.FetchResponseV11, "decode", classmethod(counting))
    await ensure_topics_for(iso)
    topic = iso.raw_topic()
    expected: set[bytes] = set()
    for i in range(40):  # plain records on every partition, one of them near the broker's 1 MB limit
        value = f"plain-{i}".encode() + (b"x" * 900_000 if i == 7 else b"")
        await producer.send_and_wait(topic, value, partition=i % 4)
        expected.add(value)
    tx = AIOKafkaProducer(bootstrap_servers=iso.bootstrap, transactional_id=f"it-fetch-{iso.tag}")
    await tx.start()
    try:
        for outcome in ("commit", "abort", "commit", "abort"):
            await tx.begin_transaction()
            for p in range(4):
                await tx.send_and_wait(topic, f"{outcome}-{p}-{len(expected)}".encode(), partition=p)
                if outcome == "commit":
                    expected.add(f"{outcome}-{p}-{len(expected)}".encode())
            await (tx.commit_transaction() if outcome == "commit" else tx.abort_transaction())
    finally:
        await tx.stop()

    consumer = StageConsumer(topic, bootstrap_servers=iso.bootstrap, group_id=f"it-fetch-{iso.tag}",
                             enable_auto_commit=False, auto_offset_reset="earliest", isolation_level="read_committed",
                             max_partition_fetch_bytes=2 * 1024 * 1024)
    await consumer.start()
    try:
        assert type(consumer._fetcher) is FastFetcher
        seen: list[bytes] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(seen) < len(expected):
            for records in (await consumer.getmany(timeout_ms=500)).values():
                seen.extend(r.value for r in records)
        assert sorted(seen) == sorted(expected)  # none lost, none twice, nothing of an aborted transaction
        end_offsets = await consumer.end_offsets([TopicPartition(topic, p) for p in range(4)])
        for tp, end in end_offsets.items():
            assert consumer.highwater(tp) == end
            assert consumer.last_stable_offset(tp) == end
    finally:
        await consumer.stop()
    assert decoded, "no Fetch response went through the stages' codec"
    assert any(part[5] for _, parts in (t for r in decoded for t in r.topics) for part in parts), \
        "no response carried an aborted transaction: the test did not exercise that list"
