"""producers/base.py RepeatedFailures: a call failing round after round is warned per cause, not every round."""

from __future__ import annotations

import logging

import pytest

from producers import base
from producers.base import RepeatedFailures


def test_a_failure_is_warned_when_its_cause_changes_every_again_seconds_and_after_a_success(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    now = [1000.0]
    monkeypatch.setattr(base.time, "monotonic", lambda: now[0])
    log = logging.getLogger("tests.failures")
    f = RepeatedFailures(log)
    caplog.set_level(logging.WARNING, logger="tests.failures")

    def rounds(cause: str, n: int, step: float = 10.0) -> None:
        for _ in range(n):
            f.failed("quote|AAPL", cause, "quote for AAPL failed: %s", cause)
            now[0] += step

    rounds("HTTP 503", 6)  # a minute of an outage: once
    rounds("timeout", 2)  # another cause: news
    rounds("timeout", 30)  # 300 s on: said again once
    f.succeeded("quote|AAPL")
    rounds("timeout", 1)  # after a success: news again
    f.failed("quote|MSFT", "timeout", "quote for MSFT failed: %s", "timeout")  # another key is its own
    assert [r.getMessage() for r in caplog.records] == [
        "quote for AAPL failed: HTTP 503", "quote for AAPL failed: timeout", "quote for AAPL failed: timeout",
        "quote for AAPL failed: timeout", "quote for MSFT failed: timeout"]
