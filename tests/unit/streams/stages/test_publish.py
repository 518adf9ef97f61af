"""PartitionTransactions.commit and send_all (streams/stages/publish.py) without a broker: fake transactional
producers that fail as told, and the batched send replaced by a recorder (a collaborator, not a patched global).
A failed transaction is aborted and retried whole with capped, jittered backoff; fencing ends it with False and
the producer closed; a record too big for the broker is truncated before the retry; a producer that cannot abort
is replaced; a cancel is not retried. send_all resends only what was not acknowledged."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, MessageSizeTooLargeError, ProducerFenced

from streams.settings import KafkaSettings
from streams.stages import publish
from streams.stages.publish import Outgoing, PartitionTransactions

TP = TopicPartition("raw", 3)


class Txn:
    def __init__(self) -> None:
        self.open = False

    def is_in_transaction(self) -> bool:
        return self.open


class FakeProducer:
    """Fails the step named in `fail` (begin, offsets, commit, abort) with the exception given, once each."""

    def __init__(self, fail: dict[str, list[BaseException]] | None = None) -> None:
        self.fail = {k: list(v) for k, v in (fail or {}).items()}
        self._txn_manager = Txn()
        self.log: list[str] = []
        self.stopped = False

    def _step(self, name: str) -> None:
        self.log.append(name)
        errors = self.fail.get(name)
        if errors:
            raise errors.pop(0)

    async def begin_transaction(self) -> None:
        self._step("begin")
        self._txn_manager.open = True

    async def send_offsets_to_transaction(self, offsets: dict[TopicPartition, int], group_id: str) -> None:
        self._step(f"offsets {offsets[TP]}")

    async def commit_transaction(self) -> None:
        self._step("commit")
        self._txn_manager.open = False

    async def abort_transaction(self) -> None:
        self._step("abort")
        self._txn_manager.open = False

    async def stop(self) -> None:
        self.stopped = True


class Sent(list[list[Outgoing]]):
    """What each attempt sent; `results` is what the next attempts' sends return (then all acknowledged)."""

    results: list[list[BaseException | None]]


@pytest.fixture
def sent() -> Sent:
    calls = Sent()
    calls.results = []
    return calls


async def fake_send(calls: Sent, producer: Any, messages: Sequence[Outgoing]) -> list[BaseException | None]:
    """A batch sender (publish.SendBatched) that records each attempt and answers from `calls.results`."""
    calls.append(list(messages))
    return calls.results.pop(0) if calls.results else [None] * len(messages)


def txns_with(producer: FakeProducer, sent: Sent) -> PartitionTransactions:
    t = PartitionTransactions(KafkaSettings(), "grp", send_batched=lambda p, m: fake_send(sent, p, m))
    t.producers[TP] = producer  # type: ignore[assignment]
    return t


async def test_a_failed_transaction_is_aborted_and_retried_whole(sent: Sent) -> None:
    p = FakeProducer({"commit": [KafkaTimeoutError()], "offsets 10": [KafkaConnectionError("down")]})
    t = txns_with(p, sent)
    msgs = [Outgoing("clean", b"k", b"v1"), Outgoing("clean", b"k", b"v2")]
    assert await t.commit(TP, msgs, 10, max_delay=0.05) is True
    assert p.log == ["begin", "offsets 10", "abort", "begin", "offsets 10", "commit", "abort",
                     "begin", "offsets 10", "commit"]
    assert sent == [msgs, msgs, msgs] and t.aborted == 2 and t.fenced == 0


async def test_fenced_ends_with_false_and_the_producer_closed(sent: Sent) -> None:
    p = FakeProducer({"offsets 5": [ProducerFenced()]})
    t = txns_with(p, sent)
    assert await t.commit(TP, [Outgoing("clean", b"k", b"v")], 5) is False
    assert t.fenced == 1 and p.stopped and TP not in t.producers and "abort" not in p.log
    assert await t.commit(TP, [], 5) is False  # no producer for the partition any more: nothing is sent


async def test_a_record_too_big_is_truncated_before_the_retry(sent: Sent) -> None:
    big = Outgoing("clean", b"k", b"x" * (publish.TRUNCATE_TO + 10))
    small = Outgoing("clean", b"k", b"v")
    sent.results.append([None, MessageSizeTooLargeError()])
    t = txns_with(FakeProducer(), sent)
    assert await t.commit(TP, [small, big], 1, max_delay=0.05) is True
    assert len(sent) == 2 and sent[1][0] is small
    assert len(sent[1][1].value or b"") == publish.TRUNCATE_TO
    assert ("tickflow.value.truncated_from", str(publish.TRUNCATE_TO + 10).encode()) in (sent[1][1].headers or [])


async def test_a_producer_that_cannot_abort_is_replaced(sent: Sent,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    broken = FakeProducer({"commit": [KafkaTimeoutError()], "abort": [RuntimeError("fatal state")]})
    fresh = FakeProducer()
    t = txns_with(broken, sent)
    starts: list[int] = []

    async def open_(tps: set[TopicPartition]) -> None:  # the real open() starts a producer (init_transactions)
        starts.append(1)
        if len(starts) == 1:
            raise KafkaConnectionError("broker away")
        t.producers[TP] = fresh  # type: ignore[assignment]

    monkeypatch.setattr(t, "open", open_)
    sleeps: list[float] = []
    real = asyncio.sleep

    async def fake_sleep(seconds: float, *args: Any) -> None:
        sleeps.append(seconds)
        await real(0)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    assert await t.commit(TP, [Outgoing("clean", b"k", b"v")], 9, max_delay=1.0) is True
    assert broken.stopped and len(starts) == 2 and fresh.log == ["begin", "offsets 9", "commit"]
    assert sleeps[0] == 1.0  # a producer that does not start is retried every second
    assert 0.05 <= sleeps[1] <= 0.15  # then the transaction, after 0.1 s scaled by a jitter in [0.5, 1.5)


async def test_the_backoff_doubles_to_its_cap_with_jitter(sent: Sent,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []
    real = asyncio.sleep

    async def fake_sleep(seconds: float, *args: Any) -> None:
        sleeps.append(seconds)
        await real(0)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    p = FakeProducer({"begin": [KafkaConnectionError("down")] * 8})
    assert await txns_with(p, sent).commit(TP, [], 2, max_delay=1.0) is True
    nominal = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0]
    assert len(sleeps) == 8
    assert all(0.5 * n <= s <= 1.5 * n for s, n in zip(sleeps, nominal, strict=True)), sleeps


async def test_a_cancel_is_not_retried(sent: Sent) -> None:
    p = FakeProducer({"begin": [asyncio.CancelledError()]})
    t = txns_with(p, sent)
    with pytest.raises(asyncio.CancelledError):
        await t.commit(TP, [], 1)
    assert p.log == ["begin"] and t.aborted == 0


# ---------------------------------------------------------------------------------------------- send_all


async def test_send_all_resends_only_the_unacknowledged_until_acked_with_capped_jittered_waits(sent: Sent) -> None:
    a, b, c = (Outgoing("clean", b"k", v) for v in (b"a", b"b", b"c"))
    big = Outgoing("clean", b"k", b"x" * (publish.TRUNCATE_TO + 10))
    down = KafkaConnectionError("down")
    sent.results.extend([[None, down, None, MessageSizeTooLargeError()], [down, None]] + [[down]] * 5)
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    producer = FakeProducer()
    await publish.send_all([a, b, c, big], max_delay=0.4, producer=lambda: producer,  # type: ignore[arg-type,return-value]
                           send_batched=lambda p, m: fake_send(sent, p, m), sleep=sleep)
    assert sent[0] == [a, b, c, big] and sent[1][0] is b and len(sent[1][1].value or b"") == publish.TRUNCATE_TO
    assert all(m == [b] for m in sent[2:]) and len(sent) == 8
    nominal = [0.1, 0.2, 0.4, 0.4, 0.4, 0.4, 0.4]
    assert len(waits) == 7 and all(0.5 * n <= w < 1.5 * n for w, n in zip(waits, nominal, strict=True)), waits


async def test_send_all_goes_through_faust_until_the_producer_has_started() -> None:
    each: list[list[Outgoing]] = []

    async def send_each(messages: Sequence[Outgoing]) -> list[BaseException | None]:
        each.append(list(messages))
        return [None] * len(messages)

    async def never(p: Any, m: Sequence[Outgoing]) -> list[BaseException | None]:
        raise AssertionError("no aiokafka producer yet")

    msgs = [Outgoing("clean", b"k", b"v")]
    await publish.send_all(msgs, producer=lambda: None, send_batched=never, send_each=send_each)
    assert each == [msgs]


async def test_send_all_is_not_retried_past_a_cancel(sent: Sent) -> None:
    async def cancelled(p: Any, m: Sequence[Outgoing]) -> list[BaseException | None]:
        sent.append(list(m))
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await publish.send_all([Outgoing("clean", b"k", b"v")], producer=lambda: FakeProducer(),  # type: ignore[arg-type,return-value]
                               send_batched=cancelled)
    assert len(sent) == 1


async def test_a_long_wait_for_acknowledgements_is_logged_not_silent(monkeypatch: pytest.MonkeyPatch,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(publish, "ACK_WARN_SECONDS", 0.05)
    loop = asyncio.get_running_loop()
    slow, failed = loop.create_future(), loop.create_future()
    failed.set_exception(KafkaConnectionError("down"))
    loop.call_later(0.13, slow.set_result, "ack")
    with caplog.at_level(logging.WARNING, logger=publish.__name__):
        results = await publish._acknowledged([slow, failed], 7)
    assert results[0] == "ack" and isinstance(results[1], KafkaConnectionError)
    warned = [r.getMessage() for r in caplog.records if "waited" in r.getMessage()]
    assert len(warned) == 2 and warned[0].startswith("7 sends have waited 0 s"), warned


async def test_a_cancelled_wait_for_acknowledgements_cancels_the_sends() -> None:
    pending = asyncio.get_running_loop().create_future()
    waiting = asyncio.ensure_future(publish._acknowledged([pending], 1))
    await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert pending.cancelled()


async def test_a_stop_while_sends_wait_for_acks_logs_no_error(caplog: pytest.LogCaptureFixture) -> None:
    # A worker stopped (SIGTERM) while a batch's sends wait for the broker: the cancelled wait must leave nothing
    # for asyncio to report at ERROR ("_GatheringFuture exception was never retrieved") at every clean stop.
    import gc

    loop = asyncio.get_running_loop()
    with pytest.raises(TimeoutError):  # wait_for cancels the wait, as a stop does
        await asyncio.wait_for(publish._acknowledged([loop.create_future() for _ in range(3)], 3), timeout=0.01)
    await asyncio.sleep(0.01)
    caplog.set_level(logging.ERROR, logger="asyncio")
    gc.collect()
    await asyncio.sleep(0)
    assert "never retrieved" not in caplog.text


def test_a_replayed_record_refused_again_names_the_dead_letter_it_came_from() -> None:
    """Its other tickflow.* headers are replaced; tickflow.replayed_from stays, so `replay-dlq` replays the newest
    refusal of a record only."""
    from streams import contract
    from streams.tools.cli import replaced_origins

    r = publish.Rejection("validate", "timestamp.future", "ahead", "RejectedRecord", "raw.simulated", 2, 7,
                          [("tickflow.rule", b"old"), ("tickflow.replayed_from", b"3:1042"), ("trace", b"x")])
    h = dict(r.headers())
    assert h["tickflow.replayed_from"] == b"3:1042" and h["tickflow.rule"] == b"timestamp.future"
    assert h["trace"] == b"x" and [k for k, _ in r.headers()].count("tickflow.rule") == 1
    assert contract.read_dead_letter(r.headers()).replayed_from == "3:1042"
    # a chain D -> C1 -> C2: only C2, the newest refusal, is replayed (judged by its own rule)
    assert replaced_origins([{"tickflow.rule": "a"}, {"tickflow.replayed_from": "3:1042"},
                             {"tickflow.replayed_from": "0:7"}]) == {"3:1042", "0:7"}


def test_a_dead_letters_error_header_is_capped() -> None:
    why = publish.Rejection("validate", "schema.missing", "x" * 5000, "RejectedRecord", "raw.sim", 0, 7)
    error = dict(why.headers())["tickflow.error"]
    assert error == b"x" * publish.MAX_ERROR_CHARS
