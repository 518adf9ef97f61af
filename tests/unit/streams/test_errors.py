"""first_then_retrying: tenacity's loop only after a failure, and then exactly as if it had run from the start."""

from __future__ import annotations

import asyncio

import pytest
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt, stop_never

from streams.errors import SinkUnavailable, first_then_retrying


class Flaky:
    def __init__(self, failures: list[BaseException]) -> None:
        self.failures = failures
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return f"done after {self.calls}"


def factory(log: list[tuple[int, str]], built: list[int], **kwargs: object):
    async def no_sleep(_: float) -> None:
        return None

    def before_sleep(state: RetryCallState) -> None:
        assert state.outcome is not None
        log.append((state.attempt_number, repr(state.outcome.exception())))

    def make() -> AsyncRetrying:
        built.append(1)
        return AsyncRetrying(retry=retry_if_exception_type(SinkUnavailable), sleep=no_sleep, before_sleep=before_sleep,
                             **({"stop": stop_never} | kwargs))  # type: ignore[arg-type]
    return make


async def test_a_first_success_builds_no_loop() -> None:
    log: list[tuple[int, str]] = []
    built: list[int] = []
    attempt = Flaky([])
    assert await first_then_retrying(attempt, factory(log, built)) == "done after 1"
    assert (attempt.calls, built, log) == (1, [], [])


async def test_failures_are_numbered_and_retried_as_by_tenacity_alone() -> None:
    log: list[tuple[int, str]] = []
    built: list[int] = []
    attempt = Flaky([SinkUnavailable("down 1"), SinkUnavailable("down 2")])
    assert await first_then_retrying(attempt, factory(log, built)) == "done after 3"
    assert attempt.calls == 3 and built == [1]
    assert log == [(1, "SinkUnavailable('down 1')"), (2, "SinkUnavailable('down 2')")]


async def test_an_error_the_loop_does_not_retry_comes_out_after_one_call() -> None:
    attempt = Flaky([ValueError("a bug")])
    with pytest.raises(ValueError, match="a bug"):
        await first_then_retrying(attempt, factory([], []))
    assert attempt.calls == 1


async def test_the_loop_stops_and_reraises_as_configured() -> None:
    log: list[tuple[int, str]] = []
    attempt = Flaky([SinkUnavailable(f"down {i}") for i in range(5)])
    with pytest.raises(SinkUnavailable, match="down 2"):
        await first_then_retrying(attempt, factory(log, [], stop=stop_after_attempt(3), reraise=True))
    assert attempt.calls == 3  # the first failure counts as tenacity's attempt 1
    assert [n for n, _ in log] == [1, 2]


async def test_a_cancellation_is_not_retried() -> None:
    built: list[int] = []
    attempt = Flaky([asyncio.CancelledError()])
    with pytest.raises(asyncio.CancelledError):
        await first_then_retrying(attempt, factory([], built))
    assert attempt.calls == 1 and built == []


def test_what_each_error_means_for_a_retry() -> None:
    """Callers decide by `retriable`: an outage is retried, bad data, bad settings and a provider's refusal
    are not (unless the provider error says so)."""
    from streams.errors import (
        BrokerUnavailable,
        CircuitOpen,
        ConfigError,
        RejectedRecord,
        SinkError,
        SinkRefused,
        SourceError,
        TickflowError,
    )

    assert BrokerUnavailable("down").retriable and SinkUnavailable("down").retriable
    for err in (TickflowError("x"), ConfigError("x"), CircuitOpen("x"), SinkError("x"), SinkRefused("x"),
                RejectedRecord("price.non_positive", "x"), SourceError("x")):
        assert not err.retriable, type(err).__name__
    assert SourceError("x", retriable=True).retriable
