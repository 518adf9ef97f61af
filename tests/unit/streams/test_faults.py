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
