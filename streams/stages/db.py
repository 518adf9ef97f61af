"""One PostgreSQL writer per worker, shared by the write stage, the metrics snapshots, retention and
/pipeline/data.

`SharedWriter` starts the wrapped writer lazily, under a lock, so whichever user needs it first opens the one
pool and two never open two; `writer` is this worker's instance (the wiring), stopped when the app stops.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from sinks.base import BatchWriter, WriteResult
from sinks.postgres import PostgresTickWriter
from streams.app import app, settings


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


writer = SharedWriter(PostgresTickWriter(settings.postgres))


@app.on_before_shutdown.connect
async def _close_writer(sender: object = None, **kwargs: object) -> None:
    await writer.stop()
