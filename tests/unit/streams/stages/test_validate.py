"""The validate stage without a broker: a ValidateTicks built with its router, per-source breakers on a fake
clock, a list to send to and a fake consumer. One source sending garbage is held back and paused, the others go
on; after the cool-down its partitions are consumed again."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import TopicPartition

from streams.rules import SourceBreakers, Validator
from streams.settings import KafkaSettings, ValidationSettings
from streams.stages.base import BatchStage
from streams.stages.metrics import MetricsDelta
from streams.stages.publish import Outgoing
from streams.stages.topics import catalog, clean_topic_name, rejected_topic_name
from streams.stages.validate import Router, ValidateTicks

GOOD, BAD = catalog.raw("simulated").name, catalog.raw("replay").name


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Rec:
    topic: str
    offset: int
    value: bytes
    partition: int = 0
    key: bytes = b"AAPL"
    timestamp: int = 1_700_000_000_000
    headers: list = field(default_factory=list)


def good(i: int) -> Rec:
    doc = {"symbol": "AAPL", "timestamp": "2024-01-02T15:00:00Z", "source": "simulated", "price": 1.0 + i,
           "item_id": str(i)}
    return Rec(GOOD, i, orjson.dumps(doc))


def bad(i: int) -> Rec:
    return Rec(BAD, i, b'{"sym": "AAPL", "px": %d}' % i)


class FakeConsumer:
    def __init__(self, assigned: set[TopicPartition], batches: list[dict[TopicPartition, list[Rec]]]) -> None:
        self.assigned = assigned
        self.batches = batches
        self.held: set[TopicPartition] = set()
        self.seeks: dict[TopicPartition, int] = {}
        self.commits: list[dict[TopicPartition, int]] = []
        self.committed_offsets: dict[TopicPartition, int] = {}
        self.stage: BatchStage | None = None
        self.asked: list[int] = []  # max_records of every fetch

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    def pause(self, *tps: TopicPartition) -> None:
        self.held |= set(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.held -= set(tps)

    def paused(self) -> set[TopicPartition]:
        return set(self.held)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks[tp] = offset

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Rec]]:
        self.asked.append(max_records)
        if not self.batches:
            assert self.stage is not None
            self.stage._stopped.set()
            return {}
        return {tp: recs for tp, recs in self.batches.pop(0).items() if tp not in self.held}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(offsets)

    async def committed(self, tp: TopicPartition) -> int | None:
        return self.committed_offsets.get(tp)


class FakeTransactions:
    """PartitionTransactions' interface, recording: which partitions have a producer (open/close), and per
    transaction the partition, its messages and offset; `fence` names partitions whose next commit is fenced."""

    def __init__(self) -> None:
        self.producers: dict[TopicPartition, object] = {}
        self.committed: list[tuple[TopicPartition, list[Outgoing], int]] = []
        self.opened: list[set[TopicPartition]] = []
        self.fence: set[TopicPartition] = set()
        self.fenced = self.aborted = 0
        self.hook_calls = 0

    async def open(self, tps: set[TopicPartition]) -> None:
        self.opened.append(set(tps))
        self.producers.update({tp: object() for tp in tps})

    async def close(self, tps: set[TopicPartition] | None = None) -> None:
        for tp in list(self.producers):
            if tps is None or tp in tps:
                del self.producers[tp]

    async def commit(self, tp: TopicPartition, messages: Sequence[Outgoing], next_offset: int,
                     before_commit: Any = None) -> bool:
        if tp in self.fence or tp not in self.producers:
            self.fence.discard(tp)
            return False
        before_commit()
        self.hook_calls += 1
        self.committed.append((tp, list(messages), next_offset))
        return True


@dataclass
class Collected:
    sent: list[Outgoing] = field(default_factory=list)
    deltas: list[MetricsDelta] = field(default_factory=list)

    async def send(self, messages: Sequence[Outgoing]) -> None:
        self.sent.extend(messages)

    async def emit(self, delta: MetricsDelta) -> None:
        self.deltas.append(delta)


def make_stage(clock: Clock, out: Collected) -> ValidateTicks:
    return ValidateTicks(router=Router(Validator(ValidationSettings()), catalog),
                         breakers=SourceBreakers(0.5, 10, 60.0, clock=clock), send=out.send, emit=out.emit,
                         kafka=KafkaSettings(), app_id="unit", topics=[GOOD, BAD])


async def processed(stage: ValidateTicks, records: list[Any]) -> set[TopicPartition] | None:
    """A batch through `process`, whose sends go behind it (BatchStage.send_behind), and those sends done."""
    held = await stage.process(records)
    if stage._sending is not None:
        await stage._sending
    return held


async def test_a_bad_source_is_held_back_alone() -> None:
    clock, out = Clock(), Collected()
    stage = make_stage(clock, out)
    records = [good(i) for i in range(20)] + [bad(i) for i in range(20)]
    held = await processed(stage, records)
    assert held == {TopicPartition(BAD, 0)}
    assert len(out.sent) == 20 and {m.topic for m in out.sent} == {clean_topic_name}  # nothing dead-lettered
    (delta,) = out.deltas
    assert set(delta.sources) == {"simulated"} and delta.of("simulated").valid == 20  # replay counted later
    (paused,) = stage.status()["paused_sources"]
    assert paused["source"] == "replay" and paused["resumes_in_seconds"] == 60.0 and paused["rules"]

    # Within the cool-down nothing resumes; after it, the source's partitions do.
    stage.consumer = FakeConsumer({TopicPartition(GOOD, 0), TopicPartition(BAD, 0), TopicPartition(BAD, 1)}, [])
    clock.now = 59.0
    assert stage.resumable() == set()
    clock.now = 61.0
    assert stage.resumable() == {TopicPartition(BAD, 0), TopicPartition(BAD, 1)}
    assert stage.status()["paused_sources"] == []


async def test_a_mostly_good_source_is_not_paused() -> None:
    clock, out = Clock(), Collected()
    stage = make_stage(clock, out)
    records = [bad(i) if i % 3 == 0 else Rec(BAD, i, good(i).value.replace(b"simulated", b"replay"))
               for i in range(30)]
    assert await processed(stage, records) is None
    assert sum(m.topic == rejected_topic_name for m in out.sent) == 10  # dead-lettered, as usual
    assert stage.status()["paused_sources"] == []


async def test_the_batch_loop_rewinds_pauses_and_commits_only_the_healthy_partitions() -> None:
    """BatchStage._run with a fake consumer: the held partition is sought back to its first record of the batch,
    paused, left out of the commit; the others commit past the batch."""
    clock, out = Clock(), Collected()
    stage = make_stage(clock, out)
    g, b = TopicPartition(GOOD, 0), TopicPartition(BAD, 0)
    consumer = FakeConsumer({g, b}, [{g: [good(i) for i in range(5, 25)], b: [bad(i) for i in range(100, 120)]},
                                     {g: [good(i) for i in range(25, 30)], b: [bad(120)]}])
    consumer.stage = stage
    stage.consumer = consumer  # type: ignore[assignment]
    await stage._run()
    await stage.flush_commit()
    assert consumer.seeks == {b: 100} and consumer.paused() == {b}
    assert consumer.commits == [{g: 25}, {g: 30}]  # the bad partition's offsets never move
    assert [d.of("simulated").valid for d in out.deltas] == [20, 5]


async def test_with_a_latency_budget_the_next_fetch_takes_what_the_measured_cost_fits() -> None:
    """The routing loop's time per record sizes the next fetch; without a budget every fetch asks for the size."""
    g = TopicPartition(GOOD, 0)
    for budget_ms, first_is_size in ((0.0, True), (1.0, False)):
        clock, out = Clock(), Collected()
        stage = ValidateTicks(router=Router(Validator(ValidationSettings()), catalog),
                              breakers=SourceBreakers(0.5, 10, 60.0, clock=clock), send=out.send, emit=out.emit,
                              kafka=KafkaSettings(), app_id="unit", topics=[GOOD], max_records=5000,
                              latency_budget_ms=budget_ms)
        consumer = FakeConsumer({g}, [{g: [good(i) for i in range(300)]}, {g: [good(i) for i in range(300, 310)]}])
        consumer.stage = stage
        stage.consumer = consumer  # type: ignore[assignment]
        await stage._run()
        assert consumer.asked[0] == 5000  # nothing measured yet
        assert stage.record_cost is not None and stage.record_cost > 0
        if first_is_size:
            assert set(consumer.asked) == {5000}
        else:  # 1 ms holds far fewer than 5,000 records at any real cost per record
            assert 100 <= consumer.asked[1] < 5000


def test_router_quarantine_and_metrics_are_per_source() -> None:
    router = Router(Validator(ValidationSettings()), catalog)
    delta = MetricsDelta()
    routed: list[Any] = router.route(good(1), delta) + router.route(bad(1), delta)
    assert [m.topic for m in routed] == [clean_topic_name, rejected_topic_name]
    assert delta.of("simulated").valid == 1 and delta.of("replay").rejected == 1


def make_eos_stage(clock: Clock, out: Collected, txns: FakeTransactions) -> ValidateTicks:
    return ValidateTicks(router=Router(Validator(ValidationSettings()), catalog),
                         breakers=SourceBreakers(0.5, 10, 60.0, clock=clock), send=out.send, emit=out.emit,
                         transactions=txns,  # type: ignore[arg-type]
                         kafka=KafkaSettings(), app_id="unit", topics=[GOOD, BAD])


async def test_exactly_once_puts_each_partitions_outputs_and_offset_in_its_own_transaction() -> None:
    """Nothing goes through the plain sender and the consumer commits nothing itself: per input partition one
    transaction with exactly that partition's outputs and next offset; the held-back partition has none."""
    clock, out, txns = Clock(), Collected(), FakeTransactions()
    stage = make_eos_stage(clock, out, txns)
    g0, g1, b = TopicPartition(GOOD, 0), TopicPartition(GOOD, 1), TopicPartition(BAD, 0)
    second = [Rec(GOOD, i, good(i).value, partition=1) for i in range(40, 43)]
    consumer = FakeConsumer({g0, g1, b}, [{g0: [good(i) for i in range(5, 25)], g1: second,
                                           b: [bad(i) for i in range(100, 120)]}])
    consumer.stage = stage
    stage.consumer = consumer  # type: ignore[assignment]
    await stage.on_assigned({g0, g1, b})
    assert txns.opened == [{g0, g1, b}] and consumer.seeks == {}  # nothing committed yet: no seek
    await stage._run()
    await stage.flush_commit()
    assert out.sent == [] and consumer.commits == []
    by_tp = {tp: (msgs, off) for tp, msgs, off in txns.committed}
    assert set(by_tp) == {g0, g1}
    assert by_tp[g0][1] == 25 and by_tp[g1][1] == 43
    assert [orjson.loads(m.value)["item_id"] for m in by_tp[g0][0]] == [str(i) for i in range(5, 25)]
    assert [orjson.loads(m.value)["item_id"] for m in by_tp[g1][0]] == ["40", "41", "42"]
    assert consumer.seeks == {b: 100} and consumer.paused() == {b}  # held back, as at-least-once
    assert stage.status()["transactions"]["producers"] == 3


async def test_a_fenced_partition_is_rewound_claimed_again_and_never_reprocessed_below_its_committed_offset(
        ) -> None:
    clock, out, txns = Clock(), Collected(), FakeTransactions()
    stage = make_eos_stage(clock, out, txns)
    g = TopicPartition(GOOD, 0)
    consumer = FakeConsumer({g}, [{g: [good(i) for i in range(0, 10)]},
                                  {g: [good(i) for i in range(0, 12)]},  # fetched again from the old offset
                                  {g: [good(i) for i in range(12, 15)]}])
    consumer.stage = stage
    stage.consumer = consumer  # type: ignore[assignment]
    await stage.on_assigned({g})
    txns.fence = {g}
    consumer.committed_offsets = {g: 8}  # another owner committed up to 8 meanwhile
    await stage._run()
    # The fenced batch: rewound to its first record, then claimed (new producer, THEN the committed offset, which
    # becomes the floor: no seek to it, see ValidateTicks.claim).
    assert txns.opened == [{g}, {g}] and consumer.seeks == {g: 0} and stage.floor == {g: 8}
    assert stage.commit_failures == 1
    # Below 8 nothing is processed again; the next transactions start at 8.
    assert [(off, [orjson.loads(m.value)["item_id"] for m in msgs]) for _, msgs, off in txns.committed] == [
        (12, [str(i) for i in range(8, 12)]), (15, ["12", "13", "14"])]


async def test_at_least_once_when_there_are_no_transactions() -> None:
    clock, out = Clock(), Collected()
    stage = make_stage(clock, out)
    g = TopicPartition(GOOD, 0)
    consumer = FakeConsumer({g}, [{g: [good(i) for i in range(3)]}])
    consumer.stage = stage
    stage.consumer = consumer  # type: ignore[assignment]
    await stage._run()
    await stage.flush_commit()
    assert len(out.sent) == 3 and consumer.commits == [{g: 3}] and stage.status()["exactly_once"] is False


def _bars_router_rows(factor_at: dict[int, float], n: int = 70) -> dict[str, list[str]]:
    """Daily replay bars through the Router with detectors; each row's flags as the sink keeps them (the newest
    revision of a bar wins)."""
    import math
    import random
    from datetime import UTC, datetime, timedelta

    from streams.config import AnomalySettings
    from streams.stages.detect import AnomalyTracker

    router = Router(Validator(ValidationSettings()), catalog, AnomalyTracker(AnomalySettings(), 1e9, {}))
    rng, c, day, k = random.Random(1), 100.0, datetime(2012, 1, 3, 21, tzinfo=UTC), 1.0
    rows: dict[str, list[str]] = {}
    for i in range(n):
        while day.weekday() >= 5:
            day += timedelta(days=1)
        o = c * math.exp(rng.gauss(0, 0.003))
        c = o * math.exp(rng.gauss(0, 0.01))
        k = factor_at.get(i, k)
        doc = {"symbol": "SPY", "timestamp": day.isoformat(), "source": "replay", "data_type": "bar",
               "interval": "1d", "open": o * k, "high": max(o, c) * k * 1.003, "low": min(o, c) * k * 0.997,
               "close": c * k, "volume": 1e6 / k}
        for out in router.route(Rec(BAD, i, orjson.dumps(doc), key=b"SPY"), MetricsDelta(), source="replay"):
            if out.topic == router.clean_topic:
                v = orjson.loads(out.value)
                rows[v["timestamp"][:10]] = list(v.get("flags", ()))
        day += timedelta(days=1)
    return {d: f for d, f in rows.items() if f}


def test_a_split_confirmed_by_the_next_bar_revises_its_row_as_a_corporate_action() -> None:
    """A 10:1 split: a decimal shift on arrival, then a split when the next bar holds the level: the row's
    newest revision says corporate_action.suspect (not anomaly:split_suspect, nor the decimal shift)."""
    rows = _bars_router_rows({50: 0.1})
    assert list(rows.values()) == [["corporate_action.suspect"]]


def test_a_split_like_bar_that_came_back_is_revised_as_a_price_error() -> None:
    rows = _bars_router_rows({50: 0.5, 51: 1.0})
    assert list(rows.values()) == [["anomaly:bar_outlier"]]


def test_an_anomaly_on_a_record_with_a_big_integer_keeps_it_exactly() -> None:
    """An integer beyond 64 bits in metadata is valid (pydantic reads any int); when the record is flagged, its
    anomaly event and its flagged revision carry it as the same number (orjson alone could not write it: the
    record went to ticks.rejected as internal.error)."""
    import json
    import math
    import random
    from datetime import UTC, datetime, timedelta

    from streams.config import AnomalySettings
    from streams.stages.detect import AnomalyTracker

    big = 2**70 + 1
    router = Router(Validator(ValidationSettings()), catalog, AnomalyTracker(AnomalySettings(), 1e9, {}))
    rng, c, day = random.Random(1), 100.0, datetime(2012, 1, 3, 21, tzinfo=UTC)
    outs: list[Outgoing] = []
    for i in range(53):
        while day.weekday() >= 5:
            day += timedelta(days=1)
        o = c * math.exp(rng.gauss(0, 0.003))
        c = o * math.exp(rng.gauss(0, 0.01))
        k = 0.5 if i == 50 else 1.0
        doc = {"symbol": "SPY", "timestamp": day.isoformat(), "source": "replay", "data_type": "bar",
               "interval": "1d", "open": o * k, "high": max(o, c) * k * 1.003, "low": min(o, c) * k * 0.997,
               "close": c * k, "volume": 1e6, "metadata": {"seq": big}}
        outs += router.route(Rec(BAD, i, json.dumps(doc).encode(), key=b"SPY"), MetricsDelta(), source="replay")
        day += timedelta(days=1)
    assert not [o for o in outs if o.topic == router.rejected_topic], [o.value[:200] for o in outs]
    events = [json.loads(o.value) for o in outs if o.topic == router.anomalies_topic]
    assert events and all(e["record"]["metadata"]["seq"] == big for e in events)
    clean = [json.loads(o.value) for o in outs if o.topic == router.clean_topic]
    assert len(clean) > 53 and all(r["metadata"]["seq"] == big for r in clean)  # a flagged revision too


def test_a_flagged_copy_of_an_earlier_bar_beats_the_version_it_flags_but_not_a_later_revision() -> None:
    """The follow-up verdict re-sends the earlier bar flagged: its revision time is that version's plus 1 µs, so
    the sink (newest revision wins, sinks/base.py revision_of) takes it over the version it flags, while a
    revision the provider published later keeps its values."""
    import math
    import random
    from datetime import UTC, datetime, timedelta

    from sinks.base import revision_of
    from streams.config import AnomalySettings
    from streams.stages.detect import AnomalyTracker

    router = Router(Validator(ValidationSettings()), catalog, AnomalyTracker(AnomalySettings(), 1e9, {}))
    rng, c, day = random.Random(1), 100.0, datetime(2012, 1, 3, 21, tzinfo=UTC)
    ingested: dict[str, datetime] = {}
    revisions = []
    for i in range(70):
        while day.weekday() >= 5:
            day += timedelta(days=1)
        o = c * math.exp(rng.gauss(0, 0.003))
        c = o * math.exp(rng.gauss(0, 0.01))
        k = 0.1 if i >= 50 else 1.0  # a 10:1 split at bar 50, confirmed by bar 51
        at = day + timedelta(hours=1, microseconds=123)
        ingested[day] = at
        doc = {"symbol": "SPY", "timestamp": day.isoformat(), "source": "replay", "data_type": "bar",
               "interval": "1d", "open": o * k, "high": max(o, c) * k * 1.003, "low": min(o, c) * k * 0.997,
               "close": c * k, "volume": 1e6 / k, "ingested_at": at.isoformat()}
        for out in router.route(Rec(BAD, i, orjson.dumps(doc), key=b"SPY"), MetricsDelta(), source="replay"):
            v = orjson.loads(out.value or b"")
            if out.topic == router.clean_topic and datetime.fromisoformat(v["timestamp"]) != day:
                revisions.append(v)  # a copy of an earlier bar
        day += timedelta(days=1)
    assert revisions, "the split's follow-up verdict sends no revision"
    for rev in revisions:
        flagged_version = ingested[datetime.fromisoformat(rev["timestamp"])]
        got = datetime.fromisoformat(rev["ingested_at"])
        assert got == flagged_version + timedelta(microseconds=1)
        assert revision_of("bar", flagged_version, None) < revision_of("bar", got, None) < revision_of(
            "bar", flagged_version + timedelta(milliseconds=1), None)  # a provider's later re-poll still wins


def test_a_verdict_on_an_earlier_trade_is_an_event_not_a_second_copy_of_the_trade() -> None:
    """A trade at half after the close that comes back is relabelled a price error by the next trade (a follow-up
    verdict). A trade is immutable (sinks/base.py): the sink keeps its first write, so a flagged copy would change
    no row, or, sent by a worker whose detector state is ahead of its committed offsets, could come before an
    earlier version of the same key and be stored instead. The verdict goes to ticks.anomalies only."""
    import math
    import random
    from datetime import UTC, datetime, timedelta

    from streams.config import AnomalySettings
    from streams.stages.detect import AnomalyTracker

    router = Router(Validator(ValidationSettings()), catalog, AnomalyTracker(AnomalySettings(), 1e9, {}))
    rng, p = random.Random(5), 100.0
    t0, day2 = datetime(2024, 5, 6, 14, tzinfo=UTC), datetime(2024, 5, 7, 10, tzinfo=UTC)
    times = [t0 + timedelta(seconds=2 * i) for i in range(200)] + [day2 + timedelta(seconds=2 * i) for i in range(200)]
    clean, events = [], []
    for i, ts in enumerate(times):
        p *= math.exp(rng.gauss(0, 3e-4))
        price = round(p / 2 if i == 200 else p, 4)  # a bad print at the second day's open
        doc = {"symbol": "AAPL", "timestamp": ts.isoformat(), "source": "replay", "data_type": "trade",
               "price": price, "volume": 100.0, "item_id": f"t{i}"}
        for out in router.route(Rec(BAD, i, orjson.dumps(doc)), MetricsDelta(), source="replay"):
            (clean if out.topic == router.clean_topic else events).append(orjson.loads(out.value or b""))
    follow_ups = [e for e in events if e.get("details", {}).get("follow_up")]
    assert [e["record"]["item_id"] for e in follow_ups] == ["t200"], "the price error got no verdict"
    assert [r["item_id"] for r in clean] == [f"t{i}" for i in range(len(times))]  # each trade once, in order


def test_a_run_of_records_is_routed_as_each_record_on_its_own() -> None:
    """route_run (the stage's way) gives the outputs, counts and breaker positions that routing the same records
    one by one gives: clean records, anomaly events and follow-up revisions, quarantined and unreadable ones."""
    import math
    import random
    from datetime import UTC, datetime, timedelta

    from streams.config import AnomalySettings
    from streams.stages.detect import AnomalyTracker

    def router() -> Router:
        return Router(Validator(ValidationSettings()), catalog, AnomalyTracker(AnomalySettings(), 1e9, {}),
                      quarantine=["replay"])

    rng, c, day, recs = random.Random(3), 100.0, datetime(2012, 1, 3, 21, tzinfo=UTC), []
    for i in range(90):
        while day.weekday() >= 5:
            day += timedelta(days=1)
        o = c * math.exp(rng.gauss(0, 0.003))
        c = o * math.exp(rng.gauss(0, 0.01))
        k = 10.0 if i in (40, 41, 70) else 1.0  # jumps: a held suspect, a split-like level, a lone outlier
        doc = {"symbol": "SPY", "timestamp": day.isoformat(), "source": "replay", "data_type": "bar",
               "interval": "1d", "open": o * k, "high": max(o, c) * k * 1.003, "low": min(o, c) * k * 0.997,
               "close": c * k, "volume": 1e6}
        value = b'{"sym": 1}' if i % 17 == 5 else orjson.dumps(doc)
        recs.append(Rec(BAD, i, value, key=b"SPY", timestamp=1_700_000_000_000 + i))
        day += timedelta(days=1)
    one, whole = router(), router()
    d_one, d_whole = MetricsDelta(), MetricsDelta()
    by_one, rejected_one = [], []
    for i, rec in enumerate(recs):
        routed = one.route(rec, d_one, 1_700_000_100.0, "replay")
        by_one += routed
        if routed[-1].topic == rejected_topic_name:
            rejected_one.append(i)
    by_whole, rejected_whole = whole.route_run(recs, "replay", d_whole, 1_700_000_100.0)
    assert len({m.topic for m in by_whole}) == 3 and len(rejected_one) > len(recs) // 17  # all three outcomes met

    def same(m: Outgoing) -> tuple[Any, ...]:  # but the wall clock: the dead letter's time, an event's detected_at
        value = m.value
        if m.topic != rejected_topic_name and value and b'"detected_at"' in value:
            value = orjson.dumps({k: v for k, v in orjson.loads(value).items() if k != "detected_at"})
        return m.topic, m.key, value, m.timestamp, [h for h in m.headers or [] if h[0] != "tickflow.time"]

    assert [same(m) for m in by_whole] == [same(m) for m in by_one]
    assert rejected_whole == rejected_one
    # a quarantined record's dead letter comes after the anomaly event that quarantined it
    quarantined = [i for i, m in enumerate(by_whole) if m.topic == rejected_topic_name
                   and dict(m.headers or [])["tickflow.rule"].startswith(b"anomaly.")]
    assert quarantined and all(by_whole[i - 1].topic == router().anomalies_topic for i in quarantined)
    counts = [d.of("replay").to_dict() for d in (d_whole, d_one)]
    for c in counts:
        c["recent"] = [{k: v for k, v in r.items() if k != "detected_at"} for r in c["recent"]]
    assert counts[0] == counts[1] and counts[0]["processed"] == len(recs)


def test_a_dead_letter_keeps_the_records_key_and_value() -> None:
    rec = bad(3)
    [m] = Router(Validator(ValidationSettings()), catalog).route(rec, MetricsDelta())
    assert (m.topic, m.key, m.value) == (rejected_topic_name, rec.key, rec.value)


def test_a_bug_in_a_rule_dead_letters_the_record_instead_of_stopping_the_stage() -> None:
    class Broken(Validator):
        def check(self, raw: bytes | None, **kw: Any) -> Any:  # type: ignore[override]
            raise RuntimeError("a rule's bug")

    delta = MetricsDelta()
    [m] = Router(Broken(ValidationSettings()), catalog).route(good(1), delta)
    headers = dict(m.headers or [])
    assert m.topic == rejected_topic_name and m.key == b"AAPL"
    assert headers["tickflow.rule"] == b"internal.error" and headers["tickflow.exception.class"] == b"RuntimeError"
    assert delta.of("simulated").rejected == 1


async def test_rows_a_producer_could_not_read_do_not_trip_the_breaker() -> None:
    """A replayed file's unreadable rows (rule source.unreadable) are sent first, in a run: an S&P 500 file with
    unquoted thousands separators has thousands of them. Counted by the breaker, each batch read from the
    partition's committed offset tripped it, was held, and was read again after the cool-down: the replay never
    got past them. They are dead-lettered and counted, and the readable rows behind them are validated."""
    from producers.base import unreadable_record

    clock, out = Clock(), Collected()
    stage = make_stage(clock, out)  # a window of 10, ratio 0.5
    rows = [Rec(BAD, i, unreadable_record("replay", "SPX", where=f"SPX.csv row {i}", content="1990-01-02,1,234.5",
                                          error="7 cells, the header has 6").value, key=b"SPX") for i in range(15)]
    rows += [Rec(BAD, 15 + i, good(i).value.replace(b"simulated", b"replay"), key=b"SPX") for i in range(4)]
    assert await processed(stage, rows) is None
    assert stage.status()["paused_sources"] == []
    letters = [m for m in out.sent if m.topic == rejected_topic_name]
    assert len(letters) == 15 and {dict(m.headers)["tickflow.rule"] for m in letters} == {b"source.unreadable"}
    assert sum(m.topic == clean_topic_name for m in out.sent) == 4
    (delta,) = out.deltas
    assert (delta.of("replay").rejected, delta.of("replay").valid) == (15, 4)
    # anything else a source sends that the rules refuse still trips it
    more = [bad(100 + i) for i in range(20)]
    assert await processed(stage, more) == {TopicPartition(BAD, 0)}
