"""HTTP endpoints on every worker (Faust's web server).

GET /pipeline/metrics  the brief's keys + per source (proxied to the worker that owns the metrics table)
GET /health            liveness/readiness as JSON: 200 when the worker is up and not recovering
"""

from __future__ import annotations

import logging
import time
from typing import Any

from faust.web import Request, Response, View

from streams import metrics
from streams.app import app, settings
from streams.lag import LagReader
from streams.produce import supervisor
from streams.stage import stages
from streams.topics import catalog

logger = logging.getLogger(__name__)

lag_reader = LagReader(
    settings.kafka.bootstrap_servers,
    {
        f"{settings.worker.app_id}-validate": [t.name for t in catalog.by_role("raw")],
        f"{settings.worker.app_id}-write": [catalog.one("clean").name],
    },
)


async def queue_size() -> int | None:
    try:
        return sum((await lag_reader.lag_by_topic()).values())
    except Exception as exc:  # lag is informative; never fail the metrics page for it
        logger.warning("could not read consumer lag: %r", exc)
        return None


@app.page("/pipeline/metrics")
class PipelineMetrics(View):
    @app.table_route(table=metrics.metrics_table, exact_key="all")
    async def get(self, request: Request) -> Response:
        values = {k: v for k, v in metrics.metrics_table.items() if v}
        return self.json(metrics.summary(values, time.time(), await queue_size()))


@app.page("/health")
class Health(View):
    async def get(self, request: Request) -> Response:
        recovering = not app.tables.recovery.completed.is_set() if app.tables else False
        body: dict[str, Any] = {
            "status": "recovering" if recovering else "ok",
            "worker": app.conf.canonical_url.human_repr() if hasattr(app.conf.canonical_url, "human_repr")
            else str(app.conf.canonical_url),
            "leader": app.is_leader(),
            "sources": sorted(supervisor.status.values(), key=lambda s: (s["source"], s["kind"])),
            "stages": {name: st.status() for name, st in sorted(stages.items())},
            "assigned": sorted({f"{tp.topic}[{tp.partition}]" for st in stages.values() for tp in st.assignment()} | {
                f"{tp.topic}[{tp.partition}]" for tp in app.consumer.assignment()}),
        }
        return self.json(body, status=503 if recovering else 200)


@app.on_before_shutdown.connect
async def _close_lag_reader(sender: object = None, **kwargs: object) -> None:
    await lag_reader.close()
