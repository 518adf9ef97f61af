"""The benchmark's load generator (streams/tools/measure.py `paced_feed`) on the real broker: every point arrives
once, stamped with its send time, spread over the run at the asked rate, and in the partition a keyed send of
the same symbol goes to (the validate stage's per-symbol order depends on it); and a run's topics deleted at
its end (`drop_topics`)."""

from __future__ import annotations

import asyncio
import gc
import time
from collections import Counter, defaultdict

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.models import MarketDataPoint
from streams.settings import load_settings
from streams.tools import measure
from streams.tools.measure import drop_topics, paced_feed, read_topic
from tests.integration.conftest import Isolation, ensure_topics_for


async def test_a_paced_feed_sends_every_point_once_at_its_rate_stamped_when_sent(iso: Isolation, producer) -> None:
    await ensure_topics_for(iso)
    topic = iso.raw_topic()
    settings = load_settings()
    rate, seconds = 2000.0, 3.0
    sent = await paced_feed(settings, topic, rate, seconds, run_id=f"pace{iso.tag}")
    assert sent == 6000

    records = await read_topic(iso.bootstrap, topic)
    assert len(records) == sent
    points = [(r, MarketDataPoint.model_validate_json(r.value)) for r in records]
    assert len({p.item_id for _, p in points}) == sent  # each point once
    assert {p.item_id.rsplit("-", 1)[0] for _, p in points} == {f"pace{iso.tag}"}

    # Stamped when sent: the event time in the payload is the record's timestamp (the latency's start), to the ms.
    for r, p in points:
        assert abs(p.timestamp.timestamp() * 1000 - r.timestamp) <= 1.0, (p.timestamp, r.timestamp)

    # Paced: spread over the run, no second holding much more than its share.
    stamps = sorted(r.timestamp for r in records)
    span = (stamps[-1] - stamps[0]) / 1000
    assert seconds * 0.8 <= span <= seconds * 1.5, span
    per_second = Counter((t - stamps[0]) // 1000 for t in stamps)
    assert max(per_second.values()) <= rate * 1.3, per_second

    # Partitioned as a keyed send of the same symbol, and in send order within a partition.
    partition_of: dict[str, set[int]] = defaultdict(set)
    for r, p in points:
        partition_of[p.symbol].add(r.partition)
    assert all(len(parts) == 1 for parts in partition_of.values())
    for symbol, (partition,) in partition_of.items():
        meta = await (await producer.send(topic, b"{}", key=symbol.encode()))
        assert meta.partition == partition, symbol
    by_partition: dict[int, list[int]] = defaultdict(list)
    for r, p in sorted(points, key=lambda rp: (rp[0].partition, rp[0].offset)):
        by_partition[r.partition].append(int(p.item_id.rsplit("-", 1)[1]))
    assert all(seqs == sorted(seqs) for seqs in by_partition.values())


async def test_a_paced_feed_stamps_its_points_with_the_points_out_of_the_collectors_reach(
        iso: Isolation, monkeypatch) -> None:
    """The feed's points frozen while they are stamped and sent (a full collection walking them paused the feed),
    and the heap as it was afterwards."""
    await ensure_topics_for(iso)
    frozen_while_sending: list[int] = []

    class Clock(measure.SendClock):
        def __call__(self) -> tuple[bytes, int]:
            frozen_while_sending.append(gc.get_freeze_count())
            return super().__call__()

    monkeypatch.setattr(measure, "SendClock", Clock)
    gc.unfreeze()  # whatever an earlier test of this process froze
    sent = await paced_feed(load_settings(), iso.raw_topic(), 1000.0, 0.5, run_id=f"gc{iso.tag}")
    assert sent == len(frozen_while_sending) == 500
    assert min(frozen_while_sending) > 500  # at least every point (key and value tuples) was frozen
    assert gc.get_freeze_count() == 0


async def test_a_paced_feed_reports_its_cost_between_its_clocks_start_and_its_last_ack(
        iso: Isolation, monkeypatch) -> None:
    """FeedStats: the feed's seconds and this process's CPU from the clock's start to the last acknowledgement,
    and each probe's change over exactly that span, not over the build of the points before it."""
    await ensure_topics_for(iso)
    events: list[str] = []

    class Clock(measure.SendClock):
        def __call__(self) -> tuple[bytes, int]:
            events.append("send")
            return super().__call__()

    class Source(measure.SimulatedSource):
        def point(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            events.append("build")
            return super().point(*args, **kwargs)

    def probe() -> dict[str, float]:
        events.append("probe")
        return {"probes": float(events.count("probe")), "sends": float(events.count("send"))}

    monkeypatch.setattr(measure, "SendClock", Clock)
    monkeypatch.setattr(measure, "SimulatedSource", Source)
    stats = measure.FeedStats()
    t0 = time.monotonic()
    sent = await paced_feed(load_settings(), iso.raw_topic(), 2000.0, 1.0, run_id=f"st{iso.tag}", stats=stats,
                            probe=probe)
    took = time.monotonic() - t0
    assert sent == 2000
    first_probe = events.index("probe")
    assert events[:first_probe] == ["build"] * 2000  # the points built before the clock starts
    assert events[-1] == "probe" and events.count("probe") == 2  # and every send between the two probes
    assert stats.probed == {"probes": 1.0, "sends": 2000.0}
    assert 0.9 <= stats.seconds <= took
    assert 0 < stats.cpu_seconds <= time.process_time()

    # Without a probe nothing is probed; without stats nothing is filled in (and nothing fails).
    plain = measure.FeedStats()
    assert await paced_feed(load_settings(), iso.raw_topic(), 1000.0, 0.2, run_id=f"st2{iso.tag}", stats=plain) == 200
    assert plain.probed == {} and plain.seconds > 0


async def test_drop_topics_deletes_the_named_ones_and_every_one_holding_the_tag_and_no_other(iso: Isolation) -> None:
    settings = load_settings()
    tagged = [f"drop-{iso.tag}.a", f"x.drop-{iso.tag}-b"]
    named, bystander = f"named-{iso.tag}", f"keep-{iso.tag}"
    admin = AIOKafkaAdminClient(bootstrap_servers=iso.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, 1, 1) for t in [*tagged, named, bystander]])
        # A created topic reaches the brokers' metadata a little after CreateTopics returns (KRaft propagates it
        # asynchronously): drop_topics finds tagged topics by listing, so wait until the listing holds them all.
        for _ in range(50):
            if {t for t in await admin.list_topics() if iso.tag in t} == {*tagged, named, bystander}:
                break
            await asyncio.sleep(0.2)
        await drop_topics(settings, [named], containing=f"drop-{iso.tag}")
        left: set[str] = set()
        for _ in range(50):  # deletion is asynchronous on the broker
            left = {t for t in await admin.list_topics() if iso.tag in t}
            if left == {bystander}:
                break
            await asyncio.sleep(0.2)
        assert left == {bystander}
    finally:
        await admin.delete_topics([bystander])
        await admin.close()
    # Best effort: a broker out of reach is said, not raised (a benchmark's last step must not fail its run).
    await drop_topics(settings.model_copy(update={"kafka": settings.kafka.model_copy(
        update={"bootstrap_servers": "127.0.0.1:1"})}), ["gone"])
