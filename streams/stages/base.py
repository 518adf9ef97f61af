"""The base of the data-plane stages (validate, write, archive): a mode Service run by the Faust worker that owns
its consumer group and commits a batch's offsets only after the batch is fully done.

Why not a Faust agent: on a rebalance, Faust's stream machinery can ack events that were never
processed, and then commits past them. We reproduced it (two workers starting together on 10,000
preloaded records lost 40 consecutive rows in one run of three; the benchmark with two workers lost 31
of 100,000), and faust-streaming has open reports of the same family (#221, #312, #502). The sink's
contract — offsets committed only after the rows commit, nothing lost — needs the commit in our hands:

- one aiokafka consumer per stage and worker, group `<app id>-<stage>`, auto-commit off;
- `getmany()` -> `process(batch)` -> `commit(batch's next offsets)`; `process` never raises for bad
  data (it dead-letters) and retries outages in place, so a batch is never half-acknowledged; the batches
  done within `worker.commit_interval_ms` share one commit (never a commit before its batch is done);
- a stage may send a batch's outputs behind (`send_behind`): the next batch is fetched and processed while
  they are acknowledged, and the first batch's offsets are committed after its acks (`settle`), still in order;
- on a rebalance, revocation waits for the batch in flight to finish and commit before the partitions
  move, so the next owner starts exactly after it;
- a stage whose outputs become durable only some time after they return (the database's asynchronous
  commit) says so in `durable`: offsets are committed only after it, and when it says writes may have been
  lost, the stage reads again from its committed offsets (`_rewind`);
- a commit that fails (the group moved on while this worker was paused) is logged, not fatal: the new
  owner re-reads those records, and every output is idempotent downstream (natural-key upsert);
- a consumer whose group has had no coordinator for `coordinator_patience` seconds is replaced by a new one
  (`_watch_coordinator`): aiokafka's lookup can stay parked for good after a broker restart, with the stage's
  next commit parked behind it, and nothing else would end that.

It is also ~5x faster per record than Faust's per-event stream path on this machine (bench/), because
work is per batch. The stages still run inside `faust worker` and scale by the same partitions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import faust
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from mode import Service
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_never, wait_exponential

from streams import faults
from streams.errors import first_then_retrying
from streams.settings import KafkaSettings
from streams.stages.fetch import StageConsumer

logger = logging.getLogger(__name__)
BatchStageT = TypeVar("BatchStageT", bound="BatchStage")
# An offset commit that fails with a Kafka error is retried after 0.2 s, doubling to 10 s, for as long as it fails.
COMMIT_RETRY_INITIAL, COMMIT_RETRY_MAX = 0.2, 10.0
# The latency budget (`BatchStage.batch_limit`) never closes a batch below this many records (the fixed per-batch
# costs must stay amortised), and follows the measured cost per record with this weight per batch.
MIN_BUDGET_RECORDS, COST_SMOOTHING = 100, 0.2
# How often the coordinator watch looks, and how long a replaced consumer's stop may take before it is left behind.
WATCH_INTERVAL, STOP_TIMEOUT = 5.0, 15.0


def _commit_retriable(exc: BaseException) -> bool:
    """A Kafka error other than a refusal (the group moved on: retrying cannot succeed). Only an Exception:
    tenacity also sees a CancelledError, which must stop the retries."""
    return isinstance(exc, KafkaError) and not isinstance(exc, (CommitFailedError, IllegalStateError))


class _Listener(ConsumerRebalanceListener):
    """The stage's rebalance callbacks for one consumer; once that consumer is replaced (`_replace_consumer`),
    its late callbacks do nothing: the stage already let its partitions go, and the new consumer owns the stage."""

    def __init__(self, stage: BatchStage, consumer: AIOKafkaConsumer) -> None:
        self.stage = stage
        self.consumer = consumer

    def replaced(self) -> bool:
        return self.stage.consumer is not self.consumer

    async def on_partitions_revoked(self, revoked: Any) -> None:
        if self.replaced():
            return
        if revoked:  # aiokafka also calls this, with nothing, before the first join
            faults.reach(f"{self.stage.stage}.in_revoke")
        async with self.stage.batch_lock:  # the batch in flight finishes and commits first
            if self.replaced():  # while it waited for the lock
                return
            await self.stage.flush_commit()
            for tp in revoked:  # offsets a commit left waiting (`_confirm_durable`) are the next owner's to redo
                self.stage._uncommitted.pop(tp, None)
            await self.stage.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        if not self.replaced():
            await self.stage.on_assigned(set(assigned))


def consumer_group(app_id: str, stage: str) -> str:
    """A stage's consumer group: the one place the name is made (the stage joins it, /health reads its lag)."""
    return f"{app_id}-{stage}"


# The stage services of this worker, by stage name (read by /health and /metrics through `status()`). Faust starts
# its web server before it starts the services, so /health says "starting" until every stage has its consumer.
stages: dict[str, BatchStage] = {}
# Every stage of the pipeline, this worker's or not (worker.stages): their groups' lag is the pipeline's, which
# /pipeline/metrics' queue_size and /metrics report whichever stages a worker runs.
every_stage: dict[str, BatchStage] = {}
# Run by every stage at the end of its stop, after its last batch is done and committed, while the app's producer
# still runs: the metrics stage's flush (streams/stages/metrics.py). Faust's on_before_shutdown fires when the App
# starts stopping, before its child services (these stages) finish their batch in flight, so the counts of that
# last batch were never sent: /pipeline/metrics lost them at every graceful stop.
stop_hooks: list[Callable[[], Awaitable[None]]] = []


def stage_service(app: faust.App, stage: BatchStageT, enabled: bool = True) -> BatchStageT:
    """Run `stage` with the app (an instance, built with its collaborators), recorded so /health waits for it.
    Not `enabled` (worker.stages does not name it): neither started nor reported by this worker (its group's lag
    still is: `every_stage`)."""
    every_stage[stage.stage] = stage
    if enabled:
        stages[stage.stage] = stage
        app.service(stage)  # type: ignore[arg-type]  # Faust starts an instance as it is
    return stage


def missing_stages() -> list[str]:
    return [name for name, st in stages.items() if st.consumer is None]


class BatchStage(Service):
    """Subclasses set `stage` and implement `process(records)`; the consumer's settings come in."""

    stage: str = "stage"
    poll_timeout_ms: int = 100
    session_timeout_ms: int = 30_000

    def __init__(self, *, kafka: KafkaSettings, app_id: str, topics: Sequence[str], max_records: int = 2000,
                 latency_budget_ms: float = 0.0, coordinator_patience: float = 120.0, commit_interval_ms: float = 0.0,
                 **kwargs: Any) -> None:
        """`coordinator_patience`: seconds without a group coordinator after which the consumer is replaced
        (0: never). Longer than a broker restart takes to load the groups, so a healthy consumer is left alone.
        `commit_interval_ms`: the batches done within it commit their offsets together (`commit_offsets`); 0:
        each batch its own."""
        super().__init__(**kwargs)
        self.kafka = kafka
        self.group_id = consumer_group(app_id, self.stage)
        self.topics = tuple(topics)
        self.max_records = max_records
        # A batch closes on size or on this budget (0: size only): see `batch_limit`.
        self.latency_budget = latency_budget_ms / 1000.0
        self.record_cost: float | None = None  # seconds of work per record, smoothed (`observe_cost`)
        self.batch_lock = asyncio.Lock()
        self.consumer: AIOKafkaConsumer | None = None
        self.batches = 0
        self.last_batch_at: float | None = None
        self.caught_up_at: float | None = None  # the last fetch that found nothing to do
        self.commit_failures = 0
        self.started_at = time.time()
        self._commit_task: asyncio.Future[None] | None = None
        self.commit_interval = commit_interval_ms / 1000.0
        self._uncommitted: dict[TopicPartition, int] = {}  # next offsets of batches done, not yet being committed
        self._commit_started = float("-inf")  # monotonic time the last commit was started
        # `durable`'s count of possibly lost writes as of the last commit, and whether the stage must read again
        # from its committed offsets (`_rewind`) before it commits anything more.
        self._losses_seen = 0
        self._rewind_pending = False
        self._durable_failures = 0
        self._run_future: asyncio.Future[Any] | None = None
        self.coordinator_patience = coordinator_patience
        self._no_coordinator_since: float | None = None
        self.replaced_consumers = 0
        # Per partition, the first offset this owner may process (set by a subclass that reads the committed
        # offsets itself on assignment): records below it, fetched before, are dropped, never re-processed.
        self.floor: dict[TopicPartition, int] = {}
        # The outputs of the batch just processed, still being acknowledged (`send_behind`), and the batch whose
        # offsets wait for those acks (`settle`): the next batch is fetched and processed meanwhile.
        self._sending: asyncio.Future[Any] | None = None
        self._unacked: tuple[asyncio.Future[Any], dict[TopicPartition, list[Any]], dict[TopicPartition, int]] | None \
            = None

    def observe_cost(self, seconds: float, records: int) -> None:
        """A subclass reports the time its per-record work took for a batch (not the fixed waits, such as an
        ack, that do not grow with the batch): the budget sizes the next fetches from it."""
        if records > 0 and seconds >= 0:
            cost = seconds / records
            self.record_cost = cost if self.record_cost is None else self.record_cost + COST_SMOOTHING * (
                cost - self.record_cost)

    def batch_limit(self) -> int:
        """How many records the next fetch may take. Under load every record of a batch waits for the whole
        batch (its outputs go out, and its offsets are committed, when the batch is done), so a 2,000-record
        batch of validation adds ~50 ms to each record's latency while most of those records were already
        waiting. Closing the batch at the number of records the budget covers bounds that wait, at the price of
        more per-batch round trips (bench/README.md, session 18: with validate's acks overlapping its next batch,
        25 ms showed no gain on a 2-core machine; off by default)."""
        if not self.latency_budget or not self.record_cost:
            return self.max_records
        fits = int(self.latency_budget / self.record_cost)
        return min(self.max_records, max(fits, MIN_BUDGET_RECORDS))

    def stuck(self, lag: int, now: float, after: float) -> bool:
        """Owns partitions with lag, yet neither finished a batch nor found nothing to do for `after` seconds. (A
        stage idle for longer than `after` is not stuck the moment records come: it was caught up until then.)"""
        last = max(t for t in (self.started_at, self.last_batch_at, self.caught_up_at) if t is not None)
        return bool(self.assignment()) and lag > 0 and now - last > after

    def status(self) -> dict[str, Any]:
        """What /health shows for this stage (a subclass adds its own; a `stale_feeds` list is lifted to the
        top of /health)."""
        return {
            "group": self.group_id,
            "assigned": sorted(f"{tp.topic}[{tp.partition}]" for tp in self.assignment()),
            "batches": self.batches,
            "last_batch_at": self.last_batch_at,
            "commit_failures": self.commit_failures,
            "replaced_consumers": self.replaced_consumers,
        }

    def _new_consumer(self) -> AIOKafkaConsumer:
        consumer = StageConsumer(
            bootstrap_servers=self.kafka.bootstrap_servers,
            group_id=self.group_id,
            client_id=f"tickflow-{self.stage}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # Only records of committed transactions (the validate stage's outputs, streams/stages/validate.py);
            # records of non-transactional producers (the raw topics) are read as before.
            isolation_level="read_committed",
            max_poll_records=self.max_records,
            fetch_max_wait_ms=self.poll_timeout_ms,
            max_partition_fetch_bytes=2 * 1024 * 1024,
            session_timeout_ms=self.session_timeout_ms,
            heartbeat_interval_ms=self.session_timeout_ms // 10,
            # A database outage holds a batch for as long as it lasts; stay in the group meanwhile.
            max_poll_interval_ms=30 * 60 * 1000,
            **self.kafka.client_kwargs(),  # SSL/SASL (streams/config.py KafkaSettings)
        )
        return consumer

    def _subscribe(self, consumer: AIOKafkaConsumer) -> None:
        consumer.subscribe(topics=list(self.topics), listener=_Listener(self, consumer))

    async def on_start(self) -> None:
        self.consumer = self._new_consumer()
        self._subscribe(self.consumer)
        await self.consumer.start()
        logger.info("%s: consuming %s as group %s", self.stage, ", ".join(self.topics), self.group_id)
        self._run_future = self.add_future(self._run())
        if self.coordinator_patience > 0:
            self.add_future(self._watch_coordinator())

    def coordinator_known(self) -> bool:
        """Whether the consumer knows its group's coordinator (aiokafka has no public call for it; the tests of
        `_watch_coordinator` fail if the attribute goes)."""
        coordinator = getattr(self.consumer, "_coordinator", None)
        return coordinator is None or coordinator.coordinator_id is not None

    async def _watch_coordinator(self, clock: Any = time.monotonic) -> None:
        """Replace the consumer once its group has had no coordinator for `coordinator_patience` seconds."""
        while not self.should_stop:
            await self.sleep(min(WATCH_INTERVAL, self.coordinator_patience / 4))
            if self.should_stop:
                return
            now = clock()
            if self.coordinator_known():
                self._no_coordinator_since = None
                continue
            if self._no_coordinator_since is None:
                self._no_coordinator_since = now
            elif now - self._no_coordinator_since >= self.coordinator_patience:
                await self._replace_consumer(now - self._no_coordinator_since)

    async def _replace_consumer(self, waited: float) -> None:
        """A new consumer (a new client: new connections, new metadata) joins the group; the old one's loop, its
        commit and its late callbacks end, and its records not committed are read again (outputs are idempotent).
        While the broker does not answer the new consumer cannot start: the old one stays, and this runs again."""
        logger.error("%s: group %s has had no coordinator for %.0f s; replacing its consumer (its uncommitted "
                     "records are read again)", self.stage, self.group_id, waited)
        new = self._new_consumer()
        try:
            await asyncio.wait_for(new.start(), timeout=STOP_TIMEOUT)  # not subscribed yet: connects, joins nothing
        except (TimeoutError, KafkaError) as exc:
            logger.warning("%s: the new consumer could not start (%r); the old one stays for now", self.stage, exc)
            await self._stop_consumer(new)
            self._no_coordinator_since = None  # another full wait before the next try
            return
        run, self._run_future = self._run_future, None
        commit, self._commit_task = self._commit_task, None
        self._uncommitted.clear()  # the old consumer's: the new one reads them again from the group's offsets
        self._drop_unacked()
        ending = [t for t in (run, commit) if t is not None and not t.done()]
        for task in ending:
            task.cancel()
        if ending:
            await asyncio.wait(ending, timeout=STOP_TIMEOUT)
        async with self.batch_lock:
            old, self.consumer = self.consumer, new  # from here the old consumer's callbacks do nothing
            # The old partitions are let go before the new consumer can be given any of them again.
            self.floor.clear()
            await self.on_revoked(set(old.assignment()) if old is not None else set())
        self._subscribe(new)
        self._no_coordinator_since = None
        self.replaced_consumers += 1
        if old is not None:
            self.add_future(self._stop_consumer(old))
        self._run_future = self.add_future(self._run())

    async def _stop_consumer(self, consumer: AIOKafkaConsumer) -> None:
        """Stop a consumer, or leave it behind if its stop hangs (it waits for its coordination task, which can be
        parked for good: the reason it is being left)."""
        try:
            await asyncio.wait_for(consumer.stop(), timeout=STOP_TIMEOUT)
        except TimeoutError:
            logger.warning("%s: a consumer of group %s did not stop within %.0f s; left behind", self.stage,
                           self.group_id, STOP_TIMEOUT)
        except Exception as exc:  # it is going away either way
            logger.warning("%s: a consumer of group %s failed to stop (%r)", self.stage, self.group_id, exc)

    async def _await_commit(self) -> None:
        task, self._commit_task = self._commit_task, None
        if task is not None:
            await task

    async def _start_commit(self, consumer: AIOKafkaConsumer) -> None:
        """Commit the offsets waiting, once the commit before is done (commits stay in order); not awaited."""
        await self._await_commit()
        if self._uncommitted:
            offsets, self._uncommitted = self._uncommitted, {}
            self._commit_started = time.monotonic()
            self._commit_task = asyncio.ensure_future(self._commit(consumer, offsets))

    def send_behind(self, sends: Any) -> None:
        """Called by `process` with its outputs' sends (an awaitable that ends when every output is
        acknowledged), instead of awaiting them: the next batch is fetched and processed while the acks come,
        and this batch's offsets are committed only after them (`settle`). `process` must call `settle` before
        it sends anything, so the outputs of two batches never interleave and commits stay in order."""
        self._sending = asyncio.ensure_future(sends)

    async def settle(self) -> None:
        """Wait for the acks of the batch sent behind, then hand its offsets to `commit_offsets`. A failed send
        raises here (the batch's offsets are not committed: its records are read again)."""
        pending = self._unacked
        if pending is None:
            return
        acks, batch, offsets = pending
        try:
            await asyncio.shield(acks)  # a cancelled waiter (a stop) leaves the batch to the next settle
        finally:
            owner = acks.done() and self._unacked is pending  # one of two waiters (a loop and a stop) commits
            if owner:
                self._unacked = None
        if owner and self.consumer is not None:
            await self.commit_offsets(self.consumer, batch, offsets)

    def _drop_unacked(self) -> None:
        """Forget the batch sent behind (its partitions are gone, or its consumer was replaced): its offsets are
        never committed by this owner, its records are read again, and its outputs are idempotent downstream."""
        pending, self._unacked = self._unacked, None
        if pending is not None and not pending[0].done():
            pending[0].cancel()

    async def flush_commit(self) -> None:
        """Commit every offset waiting and wait for it (before partitions move, at a stop)."""
        try:
            await self.settle()
        except Exception as exc:  # not committed: the partitions' next owner reads those records again
            logger.warning("%s: the last batch's outputs were not acknowledged (%r); its offsets are not "
                           "committed", self.stage, exc)
        if self._uncommitted and self.consumer is not None:
            await self._start_commit(self.consumer)
        await self._await_commit()

    async def on_stop(self) -> None:
        try:
            await asyncio.wait_for(self._finish_and_commit(), timeout=10)
        except Exception as exc:  # the next owner re-reads what was not committed
            logger.warning("%s: last commit not confirmed at stop (%r)", self.stage, exc)
        consumer, self.consumer = self.consumer, None
        if consumer is not None:
            await self._stop_consumer(consumer)
        for hook in stop_hooks:
            try:
                await hook()
            except Exception as exc:  # a hook must not keep the others, or the worker, from stopping
                logger.warning("%s: a stop hook failed (%r)", self.stage, exc)

    async def _finish_and_commit(self) -> None:
        """The batch in flight (if any) finishes first, and no new one starts (`_run` checks `should_stop` under
        the lock): without the lock a batch could send its outputs and count them after this commit, and its
        offsets were never committed, so the next owner read it again (re-sent, and counted twice)."""
        async with self.batch_lock:
            await self.flush_commit()

    def assignment(self) -> set[TopicPartition]:
        return set(self.consumer.assignment()) if self.consumer is not None else set()

    async def _run(self) -> None:
        consumer = self.consumer
        if consumer is None:  # stopped (SIGTERM) before the loop got to run: nothing to do, nothing to commit
            return
        while not self.should_stop:
            if self._rewind_pending:
                async with self.batch_lock:
                    if not await self._rewind(consumer):
                        await asyncio.sleep(1.0)
                        continue
            resume = self.resumable() & self.assignment()
            if resume:
                consumer.resume(*resume)
            # Idle, offsets waiting for the commit interval go out when it ends, not after a whole idle second.
            wait_ms = max(1, int(self.commit_interval * 1000)) if self._uncommitted or self._unacked else 1000
            try:
                batch = await consumer.getmany(timeout_ms=min(wait_ms, 1000), max_records=self.batch_limit())
            except (KafkaError, IllegalStateError) as exc:
                logger.warning("%s: fetch failed (%r); retrying", self.stage, exc)
                await asyncio.sleep(1.0)
                continue
            if not batch:
                if not consumer.paused():  # a paused partition's lag is work held back, not caught up
                    self.caught_up_at = time.time()
                if self._uncommitted or self._unacked:  # the stage idles: what the last batches left waiting is
                    async with self.batch_lock:            # committed now
                        try:
                            await self.settle()
                        except Exception as exc:  # a send that cannot succeed is a bug, as in `process`
                            logger.exception("%s: sending a batch's outputs failed; stopping the worker (its "
                                             "offsets are not committed)", self.stage)
                            await self.crash(exc)
                            return
                        await self._start_commit(consumer)
                continue
            async with self.batch_lock:
                if self.should_stop:  # stopping: on_stop committed what was done; these are read again
                    break
                if self.floor:
                    batch = self.above_floor(batch)
                    if not batch:
                        continue
                try:
                    held = await self.process_batch(batch) or set()
                    sending, self._sending = self._sending, None
                    if sending is None:  # nothing sent behind, nor the batch before settled by process: in order
                        await self.settle()
                except Exception as exc:  # a bug, not bad data: stop loudly, commit nothing
                    self._sending = None
                    logger.exception("%s: processing failed; stopping the worker (nothing committed)", self.stage)
                    await self.crash(exc)
                    return
                if held:
                    # Partitions whose records this batch did not take: rewound to their first record here and
                    # paused, committed no further, until `resumable()` names them.
                    for tp in held:
                        if batch.get(tp):
                            consumer.seek(tp, batch[tp][0].offset)
                    consumer.pause(*held)
                offsets = {tp: msgs[-1].offset + 1 for tp, msgs in batch.items() if msgs and tp not in held}
                if sending is None:
                    await self.commit_offsets(consumer, batch, offsets)
                else:
                    self._unacked = (sending, batch, offsets)
                self.batches += 1
                self.last_batch_at = time.time()

    def above_floor(self, batch: dict[TopicPartition, list[Any]]) -> dict[TopicPartition, list[Any]]:
        out = {}
        for tp, msgs in batch.items():
            low = self.floor.get(tp)
            kept = msgs if low is None or not msgs or msgs[0].offset >= low else [m for m in msgs if m.offset >= low]
            if kept:
                out[tp] = kept
        return out

    async def commit_offsets(self, consumer: AIOKafkaConsumer, batch: dict[TopicPartition, list[Any]],
                             offsets: dict[TopicPartition, int]) -> None:
        """At-least-once: the batch's outputs are acknowledged (process returned); commit its offsets. A stage
        that commits its offsets inside a transaction overrides this."""
        self.reach_fault(f"{self.stage}.before_offset_commit")
        self._uncommitted.update(offsets)  # empty when every partition of the batch was held back
        if time.monotonic() - self._commit_started < self.commit_interval:
            # Committed with the first batch after the interval, when the stage idles, or before its partitions
            # move: at 1,000 points/s a batch is a few records, and one commit request per batch was ~8% of the
            # worker's CPU (bench/README.md, session 13). A crash re-reads these few batches (idempotent outputs).
            return
        # The commit overlaps the next fetch (one round trip off every record's latency); the next
        # batch's commit, a revocation and a stop all wait for it first, so commits stay in order.
        await self._start_commit(consumer)

    def reach_fault(self, point: str) -> None:
        """A fault point (streams/faults.py) where this stage's consumer can also be parked."""
        if faults.reach(point) and self.consumer is not None:
            faults.park_lookup(self.consumer)

    async def durable(self) -> int:
        """Wait until the outputs of the batches done are durable; return the count of times outputs that had
        been done were found possibly lost (sinks/base.py BatchWriter.durable). Outputs durable when done: 0."""
        return 0

    async def _confirm_durable(self, offsets: dict[TopicPartition, int]) -> bool:
        """Whether `offsets` may be committed: their batches' outputs are durable. When `durable` cannot tell
        (the database is out of reach), they wait for the next commit; when outputs may have been lost, nothing
        is committed until the stage has read again from its committed offsets (`_rewind`)."""
        if self._rewind_pending:
            return False
        try:
            losses = await self.durable()
        except Exception as exc:
            self._uncommitted = {**offsets, **self._uncommitted}  # the newer offsets of later batches win
            self._durable_failures += 1
            if self._durable_failures == 1 or self._durable_failures % 100 == 0:
                logger.warning("%s: the outputs' durability is not confirmed (%r, %d times); their offsets wait",
                               self.stage, exc, self._durable_failures)
            return False
        self._durable_failures = 0
        if losses != self._losses_seen:
            self._losses_seen = losses
            self._rewind_pending = True
            logger.warning("%s: outputs done since the last commit may have been lost; reading again from the "
                           "committed offsets", self.stage)
            return False
        return True

    async def _rewind(self, consumer: AIOKafkaConsumer) -> bool:
        """Drop every offset not committed and go back to the committed ones (the partitions' start where none
        is), as a new owner of the partitions would; the outputs are idempotent. False: try again."""
        await self._await_commit()
        self._drop_unacked()
        self._uncommitted.clear()
        try:
            for tp in self.assignment():
                offset = await consumer.committed(tp)
                if offset is None:
                    await consumer.seek_to_beginning(tp)
                else:
                    consumer.seek(tp, offset)
        except (KafkaError, IllegalStateError) as exc:
            logger.warning("%s: could not read the committed offsets to go back to (%r); retrying", self.stage, exc)
            return False
        self._rewind_pending = False
        return True

    async def _commit(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
        """Commit, once the batches' outputs are durable (`_confirm_durable`), retrying a Kafka error with capped
        exponential backoff (0.2 s doubling to 10 s) until it succeeds. A refused commit is not retried: the group
        rebalanced away from us (e.g. we were paused past the session timeout), the partitions' new owner re-reads
        these records and our outputs were idempotent. Anything else (a bug) comes out."""
        if not await self._confirm_durable(offsets):
            return
        def retrying() -> AsyncRetrying:
            return AsyncRetrying(
                retry=retry_if_exception(_commit_retriable),
                wait=wait_exponential(multiplier=COMMIT_RETRY_INITIAL, max=COMMIT_RETRY_MAX),
                stop=stop_never,
                before_sleep=self._log_commit_retry,
                reraise=True,
            )

        try:
            await first_then_retrying(lambda: consumer.commit(offsets), retrying)
        except (CommitFailedError, IllegalStateError) as exc:
            self.commit_failures += 1
            logger.warning("%s: commit refused (%r); the partitions' new owner will re-read them", self.stage, exc)

    def _log_commit_retry(self, state: RetryCallState) -> None:
        """The first failure, then every one once the wait reached its cap (a broker down for long)."""
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        if state.attempt_number == 1 or wait >= COMMIT_RETRY_MAX:
            exc = state.outcome.exception() if state.outcome is not None else None
            logger.warning("%s: commit failing (%r, attempt %d); retrying in %.1f s", self.stage, exc,
                           state.attempt_number, wait)

    async def process(self, records: list[Any]) -> set[TopicPartition] | None:
        """Handle a batch; return the partitions to hold back (not committed, paused), or None for none."""
        raise NotImplementedError

    async def process_batch(self, batch: dict[TopicPartition, list[Any]]) -> set[TopicPartition] | None:
        """The batch as the consumer hands it, by partition: `process` of its records, partition after partition
        in order. A stage that works a partition's records as one run overrides this."""
        return await self.process([r for tp in sorted(batch) for r in batch[tp]])

    def resumable(self) -> set[TopicPartition]:
        """Paused partitions to consume again (checked before every fetch)."""
        return set()

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Called with the batch lock held, after the batch in flight committed."""

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        """Called when partitions arrive; the consumer starts at their committed offsets."""
