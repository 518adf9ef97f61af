"""Stage 1 in the worker — the enabled sources, run only on the group's leader.

Reads: the providers (HTTP, websocket, the simulated feed). Writes: raw.<source> for each enabled source.

A timer checks leadership every second: the leader runs one task per enabled source, any other worker
runs none, so two or more workers never produce the same data twice; when the leader changes, the new
one takes over. A source that fails is restarted with capped backoff and reported in /health; it never
stops the others.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

import aiohttp

from producers.base import Source, encode
from producers.registry import enabled_sources
from streams.app import app, settings
from streams.stages.publish import Outgoing, send_all
from streams.stages.topics import catalog

logger = logging.getLogger(__name__)


class SourceSupervisor:
    def __init__(self, sources: list[Source]) -> None:
        self.sources = sources
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.status: dict[str, dict[str, Any]] = {}

    def _state(self, source: Source) -> dict[str, Any]:
        key = f"{source.name}:{type(source).__name__}"
        return self.status.setdefault(key, {"source": source.name, "kind": type(source).__name__, "state": "idle",
                                            "sent": 0, "failures": 0, "last_error": None, "last_sent_at": None})

    async def reconcile(self, leader: bool) -> None:
        if leader:
            for i, source in enumerate(self.sources):
                task = self.tasks.get(i)
                if task is None or task.done():
                    self.tasks[i] = asyncio.create_task(self._run(source), name=f"source-{source.name}")
        else:
            await self.stop()

    async def stop(self) -> None:
        tasks, self.tasks = list(self.tasks.values()), {}
        for t in tasks:
            t.cancel()
        for t in tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        for st in self.status.values():
            st["state"] = "idle"

    async def _run(self, source: Source) -> None:
        topic = catalog.raw(source.name).name
        st = self._state(source)
        delay = 1.0
        async with aiohttp.ClientSession() as session:
            while True:
                st["state"] = "running"
                try:
                    async for batch in source.fetch(session):
                        if batch:
                            records = [encode(r) for r in batch]
                            await send_all([Outgoing(topic, r.key, r.value) for r in records])
                            st["sent"] += len(records)
                            st["last_sent_at"] = time.time()
                        delay = 1.0
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # sources redact their secrets before raising
                    st["failures"] += 1
                    st["state"] = "failing"
                    st["last_error"] = f"{type(exc).__name__}: {exc}"[:500]
                    logger.warning("source %s failed (%s); restarting in %.0f s", source.name, st["last_error"], delay)
                    await asyncio.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, 300.0)


supervisor = SourceSupervisor(enabled_sources(settings.sources))


@app.timer(1.0, name="supervise_sources")
async def supervise_sources() -> None:
    await supervisor.reconcile(app.is_leader())


@app.on_before_shutdown.connect
async def _stop_sources(sender: object = None, **kwargs: object) -> None:
    await supervisor.stop()
