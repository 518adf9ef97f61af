"""keep_consumers_going: which failures end a consumer's background routine (heartbeat, committed-offset fetch),
and which it goes on through (the end-to-end cases, on a real broker: tests/integration/test_broker_consumers.py)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.errors import GroupAuthorizationFailedError, KafkaError

from streams.broker import keep_consumers_going


def _scripted(monkeypatch: pytest.MonkeyPatch, outcomes: list[BaseException | None],
              name: str = "_heartbeat_routine") -> list[Any]:
    """Stand in for one of aiokafka's routines: each run records its arguments and raises the next outcome
    (None: ends normally)."""
    runs: list[Any] = []

    async def routine(self: Any, *args: Any) -> None:
        runs.append(args or len(runs))
        outcome = outcomes[len(runs) - 1]
        if outcome is not None:
            raise outcome

    monkeypatch.setattr(GroupCoordinator, name, routine)
    keep_consumers_going()
    return runs


def _coordinator() -> Any:
    return SimpleNamespace(group_id="g", _heartbeat_interval_ms=1, _retry_backoff_ms=1)


async def test_an_unexpected_heartbeat_error_is_heartbeated_through(monkeypatch: pytest.MonkeyPatch) -> None:
    runs = _scripted(monkeypatch, [KafkaError("Unexpected exception in heartbeat task"), KafkaError("again"), None])
    await asyncio.wait_for(GroupCoordinator._heartbeat_routine(_coordinator()), 5)
    assert runs == [0, 1, 2]


async def test_an_authorization_failure_still_ends_the_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    runs = _scripted(monkeypatch, [GroupAuthorizationFailedError("g"), None])
    with pytest.raises(GroupAuthorizationFailedError):
        await GroupCoordinator._heartbeat_routine(_coordinator())
    assert runs == [0]


async def test_a_stop_during_the_wait_ends_it_quietly(monkeypatch: pytest.MonkeyPatch) -> None:
    """aiokafka stops the task with cancel() and then awaits it: it must end, not raise CancelledError."""
    _scripted(monkeypatch, [KafkaError("x"), None])
    task = asyncio.ensure_future(GroupCoordinator._heartbeat_routine(
        SimpleNamespace(group_id="g", _heartbeat_interval_ms=60_000)))
    await asyncio.sleep(0.05)
    task.cancel()
    assert await task is None


def test_it_wraps_once(monkeypatch: pytest.MonkeyPatch) -> None:
    _scripted(monkeypatch, [None])
    wrapped = GroupCoordinator._heartbeat_routine
    keep_consumers_going()
    assert GroupCoordinator._heartbeat_routine is wrapped


async def test_the_committed_offset_fetch_goes_on_with_its_assignment(monkeypatch: pytest.MonkeyPatch) -> None:
    runs = _scripted(monkeypatch, [KafkaError("Unknown error fetching offsets"), None], "_commit_refresh_routine")
    assignment = object()
    await asyncio.wait_for(GroupCoordinator._commit_refresh_routine(_coordinator(), assignment), 5)
    assert runs == [(assignment,), (assignment,)]
