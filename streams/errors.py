"""One exception tree for tickflow.

`retriable` tells the caller what to do: bad data is never retriable (it goes to the dead-letter topic
with its rule), an outage of the broker or the database is (the stage pauses and retries in place).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from streams.redact import redact

if TYPE_CHECKING:
    from tenacity import AsyncRetrying

T = TypeVar("T")


class TickflowError(Exception):
    """Messages are redacted when the exception is made (streams/redact.py), so no str(), repr(), log line,
    dead-letter header or /health field built from one of ours can carry a password or an API key."""

    retriable: bool = False

    def __init__(self, *args: Any) -> None:
        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))


class ConfigError(TickflowError):
    """Settings or topics.yaml are wrong; the worker refuses to start."""


class TopicMismatchError(ConfigError):
    """An existing topic disagrees with topics.yaml (partition count, cleanup policy)."""


class BrokerUnavailable(TickflowError):
    """Kafka cannot be reached (down, a wrong address, refused): not about the settings' values, so a command
    exits 1, not 2, and the Python API's caller may retry."""

    retriable = True


class RejectedRecord(TickflowError):
    """A record failed a validation rule. `rule` is a stable code, `reason` a sentence for people."""

    def __init__(self, rule: str, reason: str) -> None:
        reason = redact(reason)
        super().__init__(f"{rule}: {reason}")
        self.rule = rule
        self.reason = reason


class CircuitOpen(TickflowError):
    """Too many records rejected in a row of records: the worker stops rather than dead-letter them all."""


class SinkError(TickflowError):
    """The sink could not write a batch. Callers decide by `retriable`, never by which subclass they caught.
    `sqlstate`: PostgreSQL's error code when the server gave one (28P01 a refused password, 3D000 no such
    database), so a command can say which setting to fix."""

    sqlstate: str | None = None


class SinkRefused(SinkError):
    """The database refused the data itself (a constraint, a value out of range): the rows are dead-lettered."""

    retriable = False


class SinkUnavailable(SinkError):
    """Not about the data (down, unreachable, read-only after a failover, permissions, a missing table):
    the same batch is retried later and nothing is dead-lettered."""

    retriable = True


class SourceError(TickflowError):
    """A provider request failed."""

    def __init__(self, message: str, *, retriable: bool = False) -> None:
        super().__init__(message)
        self.retriable = retriable


async def first_then_retrying(attempt: Callable[[], Awaitable[T]], retrying: Callable[[], AsyncRetrying]) -> T:
    """`attempt()` once, and only when it fails the tenacity loop `retrying()` builds, whose first attempt is that
    failure: attempt numbers, waits, logs and what comes out are as if the loop had run from the start. Why:
    building and running tenacity's loop costs ~60 µs even when the first attempt succeeds, and every batch of
    every stage goes through three or four of them (bench/README.md, session 13)."""
    try:
        return await attempt()
    except Exception as exc:  # anything else (a cancellation) tenacity would not retry either
        failure = exc
    first = True
    async for state in retrying():
        with state:
            if first:
                first = False
                raise failure
            result = await attempt()
    return result
