"""PostgresTickWriter.durable (sinks/postgres.py) after the writer's own stop, on a fake pool.

The fake plays asyncpg's part only where `durable` depends on it: the pool calls the writer's `init` on a new
connection and its `reset` (_released) when a connection comes back (a write), and the server answers
`durable`'s one statement with which of the given backends are still alive. The real server's side of the same
story is tests/integration/test_postgres_writer.py test_connections_our_pool_or_our_stop_closes_are_no_loss.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from sinks.postgres import _DURABLE_SQL, PostgresTickWriter
from streams.settings import PostgresSettings
from streams.stages.db import SharedWriter

T0 = datetime(2024, 5, 6, 14, 0, tzinfo=UTC)


class Server:
    """The backends alive on the server (pid -> start), and the `durable` checks it answered."""

    def __init__(self) -> None:
        self.backends: dict[int, datetime] = {}
        self.checks: list[list[int]] = []

    def crash(self) -> None:
        self.backends.clear()


class Conn:
    """One pooled connection: its backend's pid, started when the pool opened it."""

    def __init__(self, server: Server, pid: int, started: datetime) -> None:
        self.server, self.pid, self.started = server, pid, started
        server.backends[pid] = started

    def get_server_pid(self) -> int:
        return self.pid

    async def execute(self, sql: str, *args: Any) -> str:
        return "SET"

    async def fetchrow(self, sql: str, *args: Any) -> tuple[Any, ...]:
        if sql == _DURABLE_SQL:
            pids, starts = args
            self.server.checks.append(list(pids))
            alive = [p for p, s in zip(pids, starts, strict=True) if self.server.backends.get(p) == s]
            return "on", "0/0", alive
        assert "pg_backend_pid()" in sql, sql  # _init_connection's
        return "", self.pid, self.started


class Pool:
    """asyncpg.Pool's part: `init` on a connection's first use, `reset` when it is released, `close`."""

    def __init__(self, writer: PostgresTickWriter, conn: Conn) -> None:
        self.conn = conn
        self.init: Callable[[Any], Awaitable[None]] = writer._init_connection
        self.reset: Callable[[Any], Awaitable[None]] = writer._released
        self.opened: set[int] = set()
        self.closed = False

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[Conn]:
        assert not self.closed, "a closed pool handed a connection out"
        if self.conn.pid not in self.opened:
            self.opened.add(self.conn.pid)
            await self.init(self.conn)
        yield self.conn
        await self.reset(self.conn)

    async def write(self) -> None:
        """A write: a connection out of the pool and back (its commit is asynchronous: not yet known flushed)."""
        async with self.acquire():
            pass

    async def close(self) -> None:
        self.closed = True


def open_pool(writer: PostgresTickWriter, server: Server, pid: int, started: datetime) -> Pool:
    """What writer.start() does, minus the migration: a new pool on one new backend."""
    pool = Pool(writer, Conn(server, pid, started))
    writer.pool = pool  # type: ignore[assignment]
    return pool


async def test_durable_after_our_own_stop_returns_the_losses_so_far_without_a_pool() -> None:
    """After our stop closed the pool, `durable` returns the losses so far: no check, no error, no new loss."""
    server, writer = Server(), PostgresTickWriter(PostgresSettings())
    shared = SharedWriter(writer)  # the worker's: stopped at shutdown while its stages may still ask
    pool = open_pool(writer, server, 101, T0)
    await pool.write()
    server.crash()  # a real loss first: the backend that wrote is gone before the flush was confirmed
    assert await shared.durable() == 1
    pool = open_pool(writer, server, 102, T0 + timedelta(seconds=5))
    await pool.write()  # written, not yet confirmed
    await shared.stop()
    assert pool.closed and writer.pool is None
    assert await shared.durable() == 1  # the count so far: neither reset nor grown by our own stop
    assert await writer.durable() == 1 and writer.losses == 1
    assert server.checks == [[101]]  # nothing asked of a server after the stop


async def test_backends_our_own_stop_closed_are_no_loss_on_the_next_pool() -> None:
    """A backend our own stop closed is no loss when the next pool's `durable` finds it gone (no false rewind)."""
    server, writer = Server(), PostgresTickWriter(PostgresSettings())
    old = open_pool(writer, server, 101, T0)
    await old.write()
    await writer.stop()
    del server.backends[101]  # the pool's close ended its backend (its commits reached the WAL: not lost)
    new = open_pool(writer, server, 202, T0 + timedelta(seconds=5))
    await new.write()
    assert await writer.durable() == 0 and writer.losses == 0
    assert server.checks == [[101, 202]]
    assert await writer.durable() == 0 and server.checks == [[101, 202]]  # both confirmed: nothing left to check


async def test_a_pid_our_stop_closed_is_judged_again_once_a_new_backend_reuses_it() -> None:
    """Our stop excuses the pids it closed once: a new backend that reuses such a pid and dies is a loss."""
    server, writer = Server(), PostgresTickWriter(PostgresSettings())
    old = open_pool(writer, server, 101, T0)
    await old.write()
    await writer.stop()
    del server.backends[101]
    new = open_pool(writer, server, 202, T0 + timedelta(seconds=5))
    await new.write()
    assert await writer.durable() == 0  # 101: closed by our stop, excused (and now confirmed, forgotten)
    await writer.stop()
    del server.backends[202]
    # The server, up all along, gives pid 101 to a new backend (pids wrap); that one writes, then the server crashes.
    reused = open_pool(writer, server, 101, T0 + timedelta(hours=1))
    await reused.write()
    server.crash()
    assert await writer.durable() == 1
