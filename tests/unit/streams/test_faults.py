"""The fault points (streams/faults.py): the spec is parsed strictly, and the armed point fires its signal at the
n-th passage only (a stop once, so a resumed zombie goes on instead of stopping again)."""

from __future__ import annotations

import signal

import pytest

from streams import faults


def test_the_spec_names_a_point_a_passage_and_a_mode() -> None:
    assert faults._parse("") == ("", 0, "kill")
    assert faults._parse("write.after_insert") == ("write.after_insert", 1, "kill")
    assert faults._parse("write.before_offset_commit@3:stop") == ("write.before_offset_commit", 3, "stop")
    with pytest.raises(ValueError, match="unknown point"):
        faults._parse("write.nowhere@1")
    with pytest.raises(ValueError, match="unknown mode"):
        faults._parse("write.after_insert@1:pause")


@pytest.mark.parametrize(("mode", "fired_at"), [("kill", [2, 3]), ("stop", [2])])
def test_the_armed_point_fires_at_its_nth_passage(monkeypatch: pytest.MonkeyPatch, mode: str,
                                                  fired_at: list[int]) -> None:
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(faults.os, "kill", lambda pid, sig: sent.append((len(seen), sig)))
    monkeypatch.setattr(faults.os, "write", lambda fd, b: len(b))
    monkeypatch.setattr(faults, "_armed", "write.before_offset_commit")
    monkeypatch.setattr(faults, "_nth", 2)
    monkeypatch.setattr(faults, "_mode", mode)
    monkeypatch.setattr(faults, "_reached", 0)
    seen: list[int] = []
    for i in range(1, 4):
        seen.append(i)
        faults.reach("validate.before_offset_commit")  # another point: never counted
        faults.reach("write.before_offset_commit")
    expected = signal.SIGKILL if mode == "kill" else signal.SIGSTOP
    assert sent == [(n, expected) for n in fired_at]


def test_a_park_fires_once_by_returning_true_and_sends_no_signal(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[int] = []
    monkeypatch.setattr(faults.os, "kill", lambda pid, sig: sent.append(sig))
    monkeypatch.setattr(faults.os, "write", lambda fd, b: len(b))
    monkeypatch.setattr(faults, "_armed", "validate.before_offset_commit")
    monkeypatch.setattr(faults, "_nth", 2)
    monkeypatch.setattr(faults, "_mode", "park")
    monkeypatch.setattr(faults, "_reached", 0)
    fired = [faults.reach("validate.before_offset_commit") for _ in range(4)]
    assert fired == [False, True, False, False] and sent == []
    assert faults._parse("validate.before_offset_commit@2:park") == ("validate.before_offset_commit", 2, "park")
    with pytest.raises(ValueError, match="parked only at"):
        faults._parse("write.after_insert@1:park")


async def test_a_parked_lookup_forgets_the_coordinator_and_never_returns() -> None:
    import asyncio

    class Coordinator:
        coordinator_id: int | None = 1

        def coordinator_dead(self) -> None:
            self.coordinator_id = None

        async def ensure_coordinator_known(self) -> None:
            raise AssertionError("not parked")

    class Consumer:
        _coordinator = Coordinator()

    consumer = Consumer()
    faults.park_lookup(consumer)
    assert consumer._coordinator.coordinator_id is None
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(consumer._coordinator.ensure_coordinator_known(), 0.1)
