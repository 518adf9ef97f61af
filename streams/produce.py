"""Stage 1 in the worker — the enabled in-worker sources, run leader-only.

Reads: nothing (the simulated feed makes its data). Writes: raw.simulated.

Only the group's leader produces (Faust's `on_leader` timer checks leadership on every tick), so two
or more workers never produce the same data twice; when the leader changes, the new one takes over.
"""

from __future__ import annotations

import logging

from producers.base import encode
from producers.simulated import SimulatedSource
from streams.app import app, settings
from streams.publish import Outgoing, send_all
from streams.topics import catalog

logger = logging.getLogger(__name__)

TICK_SECONDS = 0.1

if settings.sources.simulated.enabled:
    simulated = SimulatedSource(settings.sources.simulated)
    _sim_topic = catalog.raw(simulated.name).name

    @app.timer(TICK_SECONDS, on_leader=True, name="produce_simulated")
    async def produce_simulated() -> None:
        n = simulated.due()
        if not n:
            return
        records = [encode(r) for r in simulated.batch(n)]
        await send_all([Outgoing(_sim_topic, r.key, r.value) for r in records])
