"""keep_heartbeating: which heartbeat failures end the heartbeat, and which are heartbeated through (the
end-to-end case, on a real broker: tests/integration/test_broker_heartbeat.py)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.errors import GroupAuthorizationFailedError, KafkaError

from streams.broker import keep_heartbeating


def _scripted(monkeypatch: pytest.MonkeyPatch, outcomes: list[BaseException | None]) -> list[int]:
    """Stand in for aiokafka's heartbeat routine: each run raises the next outcome (None: ends normally)."""
    runs: list[int] = []

    async def routine(self: Any) -> None:
        runs.append(len(runs))
        outcome = outcomes[len(runs) - 1]
        if outcome is not None:
            raise outcome

    monkeypatch.setattr(GroupCoordinator, "_heartbeat_routine", routine)
    keep_heartbeating()
    return runs


def _coordinator() -> Any:
    return SimpleNamespace(group_id="g", _heartbeat_interval_ms=1)


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
    keep_heartbeating()
    assert GroupCoordinator._heartbeat_routine is wrapped
