"""The worker's one PostgreSQL writer, shared by the sink agent and the metrics agent.

Started lazily by whichever agent needs it first (agents start before Faust's extra services), under a
lock so two agents never open two pools; stopped when the app stops.
"""

from __future__ import annotations

import asyncio

from sinks.postgres import PostgresTickWriter
from streams.app import app, settings

writer = PostgresTickWriter(settings.postgres)
_lock = asyncio.Lock()


async def ensure_writer() -> PostgresTickWriter:
    if writer.pool is None:
        async with _lock:
            if writer.pool is None:
                await writer.start()
    return writer


@app.on_before_shutdown.connect
async def _close_writer(sender: object = None, **kwargs: object) -> None:
    await writer.stop()
