"""dev/run.py (`make run`) while it starts the stack: Ctrl-C, or a step that fails (a port in use), ends in one line
and stops what this run started, never a traceback with a broker left running."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.unit.scripts import load_script

SCRIPT = Path(__file__).resolve().parents[3] / "dev" / "run.py"


def _script() -> ModuleType:
    return load_script(SCRIPT, "run_script")


class Calls:
    """subprocess.run as dev/run.py calls it: `fail_on` (a word of the command) raises `error` there."""

    def __init__(self, fail_on: str, error: BaseException) -> None:
        self.fail_on, self.error, self.seen = fail_on, error, []  # type: list[list[str]]

    def __call__(self, cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.seen.append([Path(c).name if c.endswith("stack.sh") else c for c in cmd])
        if self.fail_on in cmd:
            raise self.error
        return subprocess.CompletedProcess(cmd, 0, "", "")


@pytest.mark.parametrize("fail_on, error, code, says", [
    ("start", KeyboardInterrupt(), 130, "interrupted while starting"),
    ("start", subprocess.CalledProcessError(1, ["stack.sh", "start"]), 1, "failed (exit code 1"),
    ("migrate", KeyboardInterrupt(), 130, "interrupted while starting"),
    ("create", subprocess.CalledProcessError(2, [sys.executable, "-m", "streams", "topics", "create"]), 1,
     "`python -m streams topics create` failed"),
])
def test_a_failed_or_interrupted_start_stops_what_it_started(monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str], fail_on: str,
                                                             error: BaseException, code: int, says: str) -> None:
    run = _script()
    calls = Calls(fail_on, error)
    monkeypatch.setattr(run.subprocess, "run", calls)
    if isinstance(error, subprocess.CalledProcessError) and error.cmd[0] == "stack.sh":
        error.cmd = [run.STACK, "start"]
    assert run.start_stack(["kafka", "postgres"]) == code
    err = capsys.readouterr().err
    assert says in err and "stopping what it started (kafka, postgres)" in err and "Traceback" not in err
    assert calls.seen[-2:] == [["stack.sh", "stop", "kafka"], ["stack.sh", "stop", "postgres"]]


def test_a_stack_that_was_already_up_is_left_running(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    run = _script()
    calls = Calls("start", KeyboardInterrupt())
    monkeypatch.setattr(run.subprocess, "run", calls)
    assert run.start_stack([]) == 130
    assert "stopping" not in capsys.readouterr().err and all("stop" not in c for c in calls.seen)


def test_a_start_that_goes_well_returns_none(monkeypatch: pytest.MonkeyPatch) -> None:
    run = _script()
    calls = Calls("never", KeyboardInterrupt())
    monkeypatch.setattr(run.subprocess, "run", calls)
    assert run.start_stack(["kafka"]) is None
    assert [c[-1] for c in calls.seen] == ["start", "create", "migrate"]


def test_a_port_in_use_is_seen_before_a_worker_is_started() -> None:
    """A second `make run` beside the first: its worker joined the group, then died on its web port, while the
    progress loop printed the first worker's numbers."""
    import socket

    run = _script()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert run.port_in_use(port)
    assert not run.port_in_use(port)
