"""HTTP endpoints on every worker (Faust's web server).

GET /pipeline/metrics  the brief's keys + per source (proxied to the worker that owns the metrics table)
GET /health            liveness/readiness as JSON: 200 when the worker is up and not recovering
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from faust.web import Request, Response, View

from streams.app import app, settings
from streams.stages import metrics
from streams.stages.base import missing_stages, stages
from streams.stages.db import ensure_writer
from streams.stages.detect import stage as anomaly_stage
from streams.stages.produce import supervisor
from streams.stages.topics import catalog
from streams.web.lag import LagReader

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


@app.page("/pipeline/data/{symbol}")
class RecentData(View):
    """Recent clean rows of a symbol, newest first (the brief's frontend example reads this)."""

    async def get(self, request: Request, symbol: str) -> Response:
        try:
            limit = max(1, min(int(request.query.get("limit", "100")), 5000))
        except ValueError:
            return self.json({"error": "limit must be an integer"}, status=400)
        try:
            rows = await (await ensure_writer()).recent(symbol, limit)
        except Exception as exc:
            return self.json({"error": f"database unavailable: {type(exc).__name__}"}, status=503)
        return self.json({"symbol": symbol, "count": len(rows), "data": jsonable(rows)})


def jsonable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        d = {}
        for k, v in r.items():
            if v is None:
                continue
            if k == "ts":
                k = "timestamp"
            d[k] = v.isoformat() if hasattr(v, "isoformat") else (orjson.loads(v) if k == "metadata" else v)
        out.append(d)
    return out


@app.page("/health")
class Health(View):
    async def get(self, request: Request) -> Response:
        recovering = not app.tables.recovery.completed.is_set() if app.tables else False
        try:
            lag = await lag_reader.lag_by_topic()
        except Exception:
            lag = {}
        now = time.time()
        stuck = [name for name, st in stages.items()
                 if st.stuck(sum(lag.get(t, 0) for t in st.topics), now, settings.worker.stuck_after_seconds)]
        starting = missing_stages()
        status = "recovering" if recovering else "starting" if starting else "stuck" if stuck else "ok"
        body: dict[str, Any] = {
            "status": status,
            "starting_stages": starting,
            "stuck_stages": stuck,
            "lag": lag,
            "worker": app.conf.canonical_url.human_repr() if hasattr(app.conf.canonical_url, "human_repr")
            else str(app.conf.canonical_url),
            "leader": app.is_leader(),
            "sources": sorted(supervisor.status.values(), key=lambda s: (s["source"], s["kind"])),
            "stages": {name: st.status() for name, st in sorted(stages.items())},
            "stale_feeds": sorted(anomaly_stage.stale_feeds.values(), key=lambda f: (f["source"], f["symbol"])),
            "assigned": sorted({f"{tp.topic}[{tp.partition}]" for st in stages.values() for tp in st.assignment()} | {
                f"{tp.topic}[{tp.partition}]" for tp in app.consumer.assignment()}),
        }
        return self.json(body, status=200 if status == "ok" else 503)


@app.on_before_shutdown.connect
async def _close_lag_reader(sender: object = None, **kwargs: object) -> None:
    await lag_reader.close()
