"""One PostgreSQL writer per worker, shared by the write stage, the metrics snapshots and retention; and a
separate small read pool for /pipeline/data.

`SharedWriter` starts the wrapped writer lazily, under a lock, so whichever user needs it first opens the one
pool and two never open two; `writer` is this worker's instance (the wiring), stopped when the app stops.
`ReadPool` (`reader`) serves the web pages' reads on its own 1-2 connections, read-only and with a short
statement timeout, so an HTTP client can neither take the write stage's connections nor hold one for long.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import asyncpg

from sinks.base import BatchWriter, WriteResult
from sinks.postgres import PostgresTickWriter, classify
from sinks.schema import MARKET_DATA_COLUMNS, quote_ident
from streams.app import app, settings
from streams.config import PostgresSettings


class SharedWriter(BatchWriter):
    """A BatchWriter started once, on first use, whoever uses it first."""

    def __init__(self, inner: PostgresTickWriter) -> None:
        self.inner = inner
        self._lock = asyncio.Lock()
        self._started = False

    async def start(self) -> None:
        if not self._started:
            async with self._lock:
                if not self._started:
                    await self.inner.start()
                    self._started = True

    async def get(self) -> PostgresTickWriter:
        """The started writer (for the calls beyond the BatchWriter contract: metrics, retention, reads)."""
        await self.start()
        return self.inner

    async def stop(self) -> None:
        self._started = False
        await self.inner.stop()

    async def write(self, rows: Sequence[tuple[Any, ...]]) -> WriteResult:
        return await (await self.get()).write(rows)

    @property
    def takes_json(self) -> bool:  # type: ignore[override]  # the wrapped writer's, whatever it is
        return self.inner.takes_json

    async def write_json(self, records: Sequence[bytes]) -> WriteResult:
        return await (await self.get()).write_json(records)

    async def durable(self) -> int:
        return await self.inner.durable()  # not started: nothing written, nothing to wait for


class ReadPool:
    """The web pages' own pool: at most `max_size` connections, every transaction read-only, every statement
    cut off after `statement_timeout_ms`. Opened on first use; never touches the write stage's pool."""

    def __init__(self, pg: PostgresSettings, *, max_size: int = 2, statement_timeout_ms: int = 5000,
                 application_name: str = "tickflow-web") -> None:
        self.pg = pg
        self.application_name = application_name
        self.max_size = max_size
        self.statement_timeout_ms = statement_timeout_ms
        self._q = quote_ident(pg.db_schema)
        self.pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()

    async def _pool(self) -> asyncpg.Pool:
        async with self._lock:
            if self.pool is None:
                try:
                    self.pool = await asyncpg.create_pool(
                        **self.pg.connect_kwargs(), timeout=10, command_timeout=self.statement_timeout_ms / 1000 + 1,
                        min_size=1, max_size=self.max_size,
                        server_settings={"default_transaction_read_only": "on",
                                         "application_name": self.application_name,
                                         "statement_timeout": str(self.statement_timeout_ms)})
                except Exception as exc:
                    raise classify(exc, f"read pool {self.pg.dsn_for_display()}") from None
            return self.pool

    async def recent(self, symbol: str, limit: int) -> list[dict[str, Any]]:
        """The newest `limit` rows of `symbol` in market_data, newest first."""
        pool = await self._pool()
        cols = ", ".join(f'"{c}"' for c in MARKET_DATA_COLUMNS)
        try:
            rows = await pool.fetch(
                f"SELECT {cols}, written_at FROM {self._q}.market_data WHERE symbol = $1 "
                'ORDER BY "timestamp" DESC LIMIT $2', symbol, limit)  # the indexed copy of ts (migration 3)
        except Exception as exc:
            raise classify(exc, "read market_data") from None
        return [dict(r) for r in rows]

    async def stop(self) -> None:
        pool, self.pool = self.pool, None
        if pool is not None:
            await pool.close()


writer = SharedWriter(PostgresTickWriter(settings.postgres))
reader = ReadPool(settings.postgres, application_name=f"tickflow-web {settings.worker.app_id}"[:63])


@app.on_before_shutdown.connect
async def _close_writer(sender: object = None, **kwargs: object) -> None:
    await writer.stop()
    await reader.stop()
