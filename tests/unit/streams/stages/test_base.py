"""The batch stage's offset commit (streams/stages/base.py `_commit`) without a broker: a fake consumer whose
commit fails as told. A Kafka error is retried with capped exponential backoff until the commit succeeds; a
refused commit (the group moved on) is counted and not retried; a bug comes out; a cancel stops the retries."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaConnectionError, RequestTimedOutError

from streams.errors import SinkUnavailable
from streams.settings import KafkaSettings
from streams.stages import base
from streams.stages.base import BatchStage

TP = TopicPartition("t", 0)


class FakeConsumer:
    def __init__(self, failures: list[BaseException]) -> None:
        self.failures = list(failures)
        self.calls: list[dict[TopicPartition, int]] = []
        self.committed: dict[TopicPartition, int] = {}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.calls.append(dict(offsets))
        if self.failures:
            raise self.failures.pop(0)
        self.committed.update(offsets)


class Stage(BatchStage):
    stage = "unit"


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The waits tenacity asks for, recorded instead of slept (tenacity sleeps with asyncio.sleep)."""
    waits: list[float] = []
    real = asyncio.sleep

    async def fake(seconds: float, *args: Any) -> None:
        waits.append(seconds)
        await real(0)

    monkeypatch.setattr(asyncio, "sleep", fake)
    return waits


def make_stage() -> Stage:
    return Stage(kafka=KafkaSettings(), app_id="unit", topics=["t"])


async def test_a_kafka_error_is_retried_with_capped_backoff_until_the_commit_succeeds(
        sleeps: list[float], caplog: pytest.LogCaptureFixture) -> None:
    consumer = FakeConsumer([KafkaConnectionError("down")] * 8 + [RequestTimedOutError()])
    stage = make_stage()
    with caplog.at_level(logging.WARNING, logger=base.__name__):
        await stage._commit(consumer, {TP: 42})  # type: ignore[arg-type]
    assert consumer.committed == {TP: 42} and len(consumer.calls) == 10
    assert sleeps == [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0, 10.0]  # 0.2 s doubling, capped at 10 s
    assert stage.commit_failures == 0
    # the first failure is logged, then each one at the cap (not every short retry)
    assert len([r for r in caplog.records if "commit failing" in r.getMessage()]) == 4


@pytest.mark.parametrize("refusal", [CommitFailedError("rebalanced"), IllegalStateError("no assignment")])
async def test_a_refused_commit_is_counted_and_not_retried(sleeps: list[float], refusal: Exception) -> None:
    consumer = FakeConsumer([KafkaConnectionError("down"), refusal])
    stage = make_stage()
    await stage._commit(consumer, {TP: 7})  # type: ignore[arg-type]
    assert len(consumer.calls) == 2 and consumer.committed == {} and sleeps == [0.2]
    assert stage.commit_failures == 1


async def test_a_bug_comes_out_unretried(sleeps: list[float]) -> None:
    consumer = FakeConsumer([TypeError("bug")])
    with pytest.raises(TypeError):
        await make_stage()._commit(consumer, {TP: 1})  # type: ignore[arg-type]
    assert len(consumer.calls) == 1 and sleeps == []


async def test_a_cancel_ends_the_retries() -> None:
    """tenacity records a CancelledError like any exception: it must not be retried."""
    consumer = FakeConsumer([asyncio.CancelledError()])
    with pytest.raises(asyncio.CancelledError):
        await make_stage()._commit(consumer, {TP: 1})  # type: ignore[arg-type]
    assert len(consumer.calls) == 1


def test_without_a_budget_or_a_measured_cost_a_batch_closes_on_size_only() -> None:
    stage = Stage(kafka=KafkaSettings(), app_id="unit", topics=["t"], max_records=2000)
    stage.observe_cost(0.05, 2000)
    assert stage.batch_limit() == 2000
    budgeted = Stage(kafka=KafkaSettings(), app_id="unit", topics=["t"], max_records=2000, latency_budget_ms=20)
    assert budgeted.batch_limit() == 2000  # nothing measured yet


def test_the_budget_closes_a_batch_at_the_records_its_measured_cost_fits() -> None:
    stage = Stage(kafka=KafkaSettings(), app_id="unit", topics=["t"], max_records=2000, latency_budget_ms=20)
    stage.observe_cost(0.050, 2000)  # 25 µs per record: 20 ms hold 800
    assert stage.batch_limit() == 800
    for _ in range(60):  # the work got cheaper: the smoothed cost follows, batches grow to the size limit
        stage.observe_cost(0.001, 200)
    assert stage.record_cost == pytest.approx(5e-6, rel=0.01)
    assert stage.batch_limit() == 2000
    for _ in range(60):  # and dearer: they shrink, never below the floor that keeps per-batch costs amortised
        stage.observe_cost(0.1, 100)
    assert stage.batch_limit() == base.MIN_BUDGET_RECORDS
    small = Stage(kafka=KafkaSettings(), app_id="unit", topics=["t"], max_records=50, latency_budget_ms=1)
    small.observe_cost(1.0, 10)
    assert small.batch_limit() == 50  # the floor never exceeds the configured size


def test_one_slow_batch_moves_the_estimate_only_part_of_the_way() -> None:
    stage = Stage(kafka=KafkaSettings(), app_id="unit", topics=["t"], max_records=2000, latency_budget_ms=20)
    stage.observe_cost(0.020, 1000)  # 20 µs: 1,000 records
    stage.observe_cost(0.200, 1000)  # one batch 10x slower (a GC pause, a CPU hog)
    assert stage.record_cost == pytest.approx(20e-6 + base.COST_SMOOTHING * 180e-6)
    assert 1000 > stage.batch_limit() > 100
    stage.observe_cost(-1.0, 10)  # nonsense is ignored
    stage.observe_cost(1.0, 0)
    assert stage.record_cost == pytest.approx(20e-6 + base.COST_SMOOTHING * 180e-6)


class FakeCoordinator:
    def __init__(self, coordinator_id: int | None) -> None:
        self.coordinator_id = coordinator_id


class Watched(Stage):
    """The coordinator watch with a consumer whose coordinator the test sets, and replacements recorded."""

    def __init__(self, patience: float) -> None:
        super().__init__(kafka=KafkaSettings(), app_id="unit", topics=["t"], coordinator_patience=patience)
        self.consumer = FakeConsumer([])  # type: ignore[assignment]
        self.consumer._coordinator = FakeCoordinator(1)  # type: ignore[attr-defined]
        self.replacements: list[float] = []

    def lose(self, lost: bool) -> None:
        self.consumer._coordinator.coordinator_id = None if lost else 1  # type: ignore[union-attr]

    async def _replace_consumer(self, waited: float) -> None:
        self.replacements.append(waited)
        self.lose(False)  # the new consumer finds it
        self._no_coordinator_since = None


async def _watch_for(stage: Watched, seconds: float) -> None:
    watch = asyncio.ensure_future(stage._watch_coordinator())
    await asyncio.sleep(seconds)
    stage._stopped.set()
    await asyncio.wait_for(watch, 2)


async def test_a_consumer_without_a_coordinator_for_the_patience_is_replaced_once() -> None:
    stage = Watched(patience=0.4)
    stage.lose(True)
    await _watch_for(stage, 1.0)
    assert len(stage.replacements) == 1 and stage.replacements[0] >= 0.4


async def test_a_coordinator_found_again_within_the_patience_leaves_the_consumer_alone() -> None:
    stage = Watched(patience=0.4)
    stage.lose(True)
    watch = asyncio.ensure_future(stage._watch_coordinator())
    await asyncio.sleep(0.3)
    stage.lose(False)  # found again, as after any broker restart
    await asyncio.sleep(0.3)
    stage.lose(True)  # lost again: the wait starts over
    await asyncio.sleep(0.3)
    stage._stopped.set()
    await asyncio.wait_for(watch, 2)
    assert stage.replacements == []


async def test_a_known_coordinator_is_never_replaced() -> None:
    stage = Watched(patience=0.2)
    await _watch_for(stage, 0.8)
    assert stage.replacements == [] and stage.coordinator_known()


def test_a_stage_this_worker_does_not_run_is_neither_started_nor_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    class FakeApp:
        def __init__(self) -> None:
            self.services: list[Any] = []

        def service(self, s: Any) -> None:
            self.services.append(s)

    monkeypatch.setattr(base, "stages", {})
    app = FakeApp()
    on, off = make_stage(), make_stage()
    off.stage = "other"
    assert base.stage_service(app, on) is on and base.stage_service(app, off, enabled=False) is off  # type: ignore[arg-type]
    assert app.services == [on] and base.stages == {"unit": on}
    assert base.missing_stages() == ["unit"]  # /health waits for the stage it runs, never for the other


class LoopConsumer(FakeConsumer):
    """A consumer for `_run`: hands out the batches given, then nothing (the stage idles)."""

    def __init__(self, batches: list[dict[TopicPartition, list[Any]]]) -> None:
        super().__init__([])
        self.batches = list(batches)

    async def getmany(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[TopicPartition, list[Any]]:
        await asyncio.sleep(0)
        return self.batches.pop(0) if self.batches else {}

    def assignment(self) -> set[TopicPartition]:
        return {TP, TP1}

    def resume(self, *tps: TopicPartition) -> None: ...

    def paused(self) -> set[TopicPartition]:
        return set()


class Rec:
    def __init__(self, offset: int) -> None:
        self.offset = offset


TP1 = TopicPartition("t", 1)


class Recording(Stage):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.commits_when_done: list[dict[TopicPartition, int]] = []

    async def process(self, records: list[Any]) -> None:
        assert self.consumer is not None
        self.commits_when_done.append(dict(self.consumer.committed))  # type: ignore[attr-defined]
        return None


async def test_batches_within_the_commit_interval_share_one_commit_made_after_they_are_done() -> None:
    stage = Recording(kafka=KafkaSettings(), app_id="unit", topics=["t"], commit_interval_ms=60_000)
    consumer = LoopConsumer([{TP: [Rec(0), Rec(1)]}, {TP: [Rec(2)], TP1: [Rec(0)]}, {TP1: [Rec(1), Rec(2)]}])
    stage.consumer = consumer  # type: ignore[assignment]
    run = asyncio.ensure_future(stage._run())
    for _ in range(50):
        await asyncio.sleep(0)
    await stage.flush_commit()
    # the first batch commits at once; the two after it within the interval wait, then go in one request when
    # the stage idles: never an offset before its batch was processed
    assert consumer.calls == [{TP: 2}, {TP: 3, TP1: 3}]
    assert consumer.committed == {TP: 3, TP1: 3}
    assert stage.commits_when_done == [{}, {TP: 2}, {TP: 2}]
    run.cancel()


async def test_without_an_interval_every_batch_commits() -> None:
    stage = Recording(kafka=KafkaSettings(), app_id="unit", topics=["t"])
    consumer = LoopConsumer([{TP: [Rec(0)]}, {TP: [Rec(1)]}, {TP1: [Rec(5)]}])
    stage.consumer = consumer  # type: ignore[assignment]
    run = asyncio.ensure_future(stage._run())
    for _ in range(50):
        await asyncio.sleep(0)
    await stage.flush_commit()
    assert consumer.calls == [{TP: 1}, {TP: 2}, {TP1: 6}]
    run.cancel()


async def test_offsets_waiting_for_the_interval_are_committed_before_partitions_move_and_at_a_stop() -> None:
    stage = make_stage()
    stage.commit_interval = 60.0
    consumer = FakeConsumer([])
    stage.consumer = consumer  # type: ignore[assignment]
    await stage.commit_offsets(consumer, {}, {TP: 10})  # type: ignore[arg-type]
    await stage.commit_offsets(consumer, {}, {TP: 12, TP1: 4})  # type: ignore[arg-type]
    await stage._await_commit()
    assert consumer.calls == [{TP: 10}]  # the second waits for the interval
    listener = base._Listener(stage, consumer)  # type: ignore[arg-type]
    await listener.on_partitions_revoked({TP, TP1})
    assert consumer.calls == [{TP: 10}, {TP: 12, TP1: 4}]
    await stage.commit_offsets(consumer, {}, {TP: 20})  # type: ignore[arg-type]
    await stage.on_stop()
    assert consumer.calls[-1] == {TP: 20} and consumer.committed == {TP: 20, TP1: 4}


async def test_an_idle_stage_waits_for_the_commit_interval_not_a_whole_second_and_counts_as_caught_up() -> None:
    stage = Recording(kafka=KafkaSettings(), app_id="unit", topics=["t"], commit_interval_ms=250)
    timeouts: list[int] = []

    class Timed(LoopConsumer):
        async def getmany(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[TopicPartition, list[Any]]:
            timeouts.append(timeout_ms)
            return await super().getmany(timeout_ms, max_records)

    consumer = Timed([{TP: [Rec(0)]}, {TP: [Rec(1)]}])
    stage.consumer = consumer  # type: ignore[assignment]
    stage.started_at = 0.0  # started long ago, never a batch: would be "stuck" with lag
    assert stage.stuck(lag=5, now=time.time(), after=60)
    run = asyncio.ensure_future(stage._run())
    for _ in range(50):
        await asyncio.sleep(0)
    run.cancel()
    # nothing waiting: a whole second; the second batch's offsets wait for the interval: a quarter second
    assert timeouts[:3] == [1000, 1000, 250], timeouts
    assert consumer.committed == {TP: 2}
    assert all(t == 1000 for t in timeouts[3:])  # committed when the stage idled: nothing waits any more
    assert stage.caught_up_at is not None
    stage.last_batch_at = None
    assert not stage.stuck(lag=5, now=stage.caught_up_at + 59, after=60)  # records just came to an idle stage
    assert stage.stuck(lag=5, now=stage.caught_up_at + 61, after=60)


class SendsBehind(Stage):
    """A stage that sends each batch's outputs behind: the test acknowledges them (or fails them) when it likes."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.acks: list[asyncio.Future[None]] = []
        self.log: list[str] = []
        self.crashes: list[BaseException] = []

    async def process(self, records: list[Any]) -> None:
        n = len(self.acks)
        self.log.append(f"processed {n}")
        await self.settle()
        self.log.append(f"sent {n}")
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.acks.append(ack)
        self.send_behind(ack)
        return None

    async def crash(self, reason: BaseException) -> None:
        self.crashes.append(reason)


async def _ticks(n: int = 50) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_the_next_batch_is_processed_while_the_acks_come_and_offsets_wait_for_them() -> None:
    stage = SendsBehind(kafka=KafkaSettings(), app_id="unit", topics=["t"])
    consumer = LoopConsumer([{TP: [Rec(0)]}, {TP: [Rec(1)], TP1: [Rec(7)]}])
    stage.consumer = consumer  # type: ignore[assignment]
    run = asyncio.ensure_future(stage._run())
    await _ticks()
    # batch 1 was fetched and processed while batch 0's outputs were unacknowledged; it sends nothing before them
    assert stage.log == ["processed 0", "sent 0", "processed 1"] and consumer.calls == []
    stage.acks[0].set_result(None)
    await _ticks()
    assert stage.log[-1] == "sent 1" and consumer.calls == [{TP: 1}]  # batch 0's offsets, after its acks only
    await _ticks()
    assert consumer.calls == [{TP: 1}]  # the stage idles, batch 1's acks have not come: nothing more committed
    stage.acks[1].set_result(None)
    await _ticks()
    assert consumer.committed == {TP: 2, TP1: 8} and stage.crashes == []
    run.cancel()


async def test_a_send_that_fails_behind_commits_nothing_of_its_batch_and_stops_the_stage() -> None:
    stage = SendsBehind(kafka=KafkaSettings(), app_id="unit", topics=["t"])
    consumer = LoopConsumer([{TP: [Rec(0)]}, {TP: [Rec(1)]}])
    stage.consumer = consumer  # type: ignore[assignment]
    run = asyncio.ensure_future(stage._run())
    await _ticks()
    stage.acks[0].set_exception(RuntimeError("a bug in the send"))
    await _ticks()
    assert consumer.calls == [] and [str(e) for e in stage.crashes] == ["a bug in the send"]
    assert stage.log == ["processed 0", "sent 0", "processed 1"]  # batch 1 sent nothing either
    run.cancel()


async def test_a_revocation_and_a_stop_wait_for_the_acks_then_commit() -> None:
    stage = SendsBehind(kafka=KafkaSettings(), app_id="unit", topics=["t"])
    consumer = LoopConsumer([{TP: [Rec(0)], TP1: [Rec(3)]}])
    stage.consumer = consumer  # type: ignore[assignment]
    run = asyncio.ensure_future(stage._run())
    await _ticks()
    run.cancel()
    listener = base._Listener(stage, consumer)  # type: ignore[arg-type]
    revoking = asyncio.ensure_future(listener.on_partitions_revoked({TP, TP1}))
    await _ticks()
    assert not revoking.done() and consumer.calls == []  # the partitions wait for the acks
    stage.acks[0].set_result(None)
    await asyncio.wait_for(revoking, 2)
    assert consumer.committed == {TP: 1, TP1: 4}
    # a batch whose acks failed is not committed at a stop; the next owner reads it again
    stage._unacked = (asyncio.get_running_loop().create_future(), {}, {TP: 9})
    stage._unacked[0].set_exception(RuntimeError("broker gone for good"))
    await stage.on_stop()
    assert consumer.committed == {TP: 1, TP1: 4}


class Durable(Stage):
    """A stage whose outputs become durable later (a database's asynchronous commit): `durable` answers from
    `answers` in turn, an exception raised, a count returned (how many times outputs may have been lost)."""

    def __init__(self, answers: list[int | BaseException], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.answers = list(answers)

    async def process(self, records: list[Any]) -> None:
        return None

    async def durable(self) -> int:
        answer = self.answers.pop(0) if self.answers else self._losses_seen
        if isinstance(answer, BaseException):
            raise answer
        return answer


class Seeking(LoopConsumer):
    """LoopConsumer with aiokafka's `committed(tp)` (the group's offsets) and seeks, recorded."""

    def __init__(self, batches: list[dict[TopicPartition, list[Any]]]) -> None:
        super().__init__(batches)
        del self.committed  # aiokafka's method, below; the commits go to `stored`
        self.stored: dict[TopicPartition, int] = {}
        self.seeks: list[tuple[TopicPartition, int | None]] = []

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.calls.append(dict(offsets))
        self.stored.update(offsets)

    async def committed(self, tp: TopicPartition) -> int | None:  # type: ignore[override]
        return self.stored.get(tp)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))

    async def seek_to_beginning(self, *tps: TopicPartition) -> None:
        self.seeks.extend((tp, None) for tp in tps)


async def run_until_idle(stage: BatchStage, consumer: Any) -> None:
    stage.consumer = consumer
    run = asyncio.ensure_future(stage._run())
    for _ in range(500):
        await asyncio.sleep(0)
    await stage.flush_commit()
    run.cancel()


async def test_a_loss_of_outputs_commits_nothing_more_and_goes_back_to_the_committed_offsets() -> None:
    stage = Durable([0, 1], kafka=KafkaSettings(), app_id="unit", topics=["t"])
    consumer = Seeking([{TP: [Rec(0), Rec(1)]}, {TP: [Rec(2)], TP1: [Rec(0)]}, {TP1: [Rec(1)]}])
    await run_until_idle(stage, consumer)
    # The first batch was durable and committed. The second's outputs may be lost: neither it nor the batch after
    # it commits, and the stage goes back to what is committed (TP) and to the start where nothing is (TP1).
    assert consumer.calls == [{TP: 2}]
    assert sorted(consumer.seeks, key=str) == [(TP, 2), (TP1, None)]
    assert not stage._uncommitted and not stage._rewind_pending


async def test_offsets_wait_while_durability_cannot_be_confirmed_and_go_with_the_next_commit(
        caplog: pytest.LogCaptureFixture) -> None:
    stage = Durable([SinkUnavailable("database down"), 0], kafka=KafkaSettings(), app_id="unit", topics=["t"])
    consumer = Seeking([{TP: [Rec(0), Rec(1)]}, {TP: [Rec(2)], TP1: [Rec(0)]}])
    with caplog.at_level(logging.WARNING):
        await run_until_idle(stage, consumer)
    assert consumer.calls == [{TP: 3, TP1: 1}]  # the first batch's offsets waited, then went with the second's
    assert consumer.seeks == []
    assert "durability is not confirmed" in caplog.text


async def test_offsets_a_failed_confirmation_left_waiting_are_dropped_for_partitions_that_move() -> None:
    down = SinkUnavailable("database down")
    stage = Durable([down, down, 0], kafka=KafkaSettings(), app_id="unit", topics=["t"])
    consumer = Seeking([])
    stage.consumer = consumer  # type: ignore[assignment]
    await stage.commit_offsets(consumer, {}, {TP: 5, TP1: 7})  # type: ignore[arg-type]
    await stage._await_commit()
    assert stage._uncommitted == {TP: 5, TP1: 7}
    await base._Listener(stage, consumer).on_partitions_revoked({TP1})  # type: ignore[arg-type]
    assert stage._uncommitted == {TP: 5}  # TP1's next owner reads its records again
    await stage.flush_commit()
    assert consumer.calls == [{TP: 5}]


class Gated(Stage):
    """A stage whose batch waits on `gate` while it is processed: a stop arrives in the middle of it."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gate = asyncio.Event()
        self.processed: list[int] = []

    async def process(self, records: list[Any]) -> None:
        await self.gate.wait()
        self.processed.extend(r.offset for r in records)


async def test_a_stop_during_a_batch_lets_it_finish_commits_it_and_then_runs_the_stop_hooks(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch in flight when a stop begins is committed by the stop (it was sent and counted: left
    uncommitted, the next owner read it again and /pipeline/metrics counted it twice); a batch fetched after the
    stop began is not processed; the stop hooks (the metrics flush) run after the commit, so the last batch's
    counts are sent (Faust's on_before_shutdown fires before the stages stop: they were lost)."""
    stage = Gated(kafka=KafkaSettings(), app_id="unit", topics=["t"])
    consumer = LoopConsumer([{TP: [Rec(0), Rec(1)]}, {TP: [Rec(2)]}])
    stage.consumer = consumer  # type: ignore[assignment]
    committed_when_hooked: list[dict[TopicPartition, int]] = []

    async def hook() -> None:
        committed_when_hooked.append(dict(consumer.committed))

    monkeypatch.setattr(base, "stop_hooks", [hook], raising=False)
    run = asyncio.ensure_future(stage._run())
    await _ticks()  # batch 0 is being processed, waiting on the gate
    stage._stopped.set()  # what mode's Service.stop does before it calls on_stop
    stopping = asyncio.ensure_future(stage.on_stop())
    await _ticks()
    assert not stopping.done()  # the stop waits for the batch in flight
    stage.gate.set()
    await asyncio.wait_for(stopping, 2)
    await asyncio.wait_for(run, 2)
    assert stage.processed == [0, 1]  # batch 1 is left to the partitions' next owner
    assert consumer.committed == {TP: 2}
    assert committed_when_hooked == [{TP: 2}]
