"""HTTP endpoints on every worker (Faust's web server).

GET /pipeline/metrics  the brief's keys + per source (proxied to the worker that owns the metrics table)
GET /pipeline/data/x   recent clean rows of a symbol (at most DATA_LIMIT, on the web's own read pool)
GET /health            liveness/readiness as JSON: 200 when the worker is up and not recovering

Every page but /health, /metrics and /dashboard needs the bearer token (streams/web/auth.py, installed here
on the worker's web application before it starts); Faust's /table and /router pages are off (streams/app.py).

/health is built by `health_report` from what each part says of itself: a stage's `status()`, the source
supervisor's `status()`, the lag reader; it reads no stage's internals.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

from faust.web import Request, Response, View

from streams import exactjson
from streams.app import app, settings
from streams.stages import metrics
from streams.stages.base import BatchStage, every_stage, stages
from streams.stages.db import reader
from streams.stages.produce import supervisor
from streams.web import auth
from streams.web.lag import Groups, LagReader

logger = logging.getLogger(__name__)

# Rows /pipeline/data returns at most (each costs the shared event loop its decoding and JSON).
DATA_LIMIT = 500

auth.install(app.web.web_app, settings.worker)  # type: ignore[attr-defined]  # the aiohttp driver's app


def lag_groups(of: Iterable[BatchStage]) -> Groups:
    """Each stage's consumer group (named by the stage itself) -> the topics it reads."""
    return {st.group_id: list(st.topics) for st in of}


# Every stage's group, not only this worker's: a worker that runs only `validate` reported none of the write
# stage's lag on ticks.clean, and one that runs only `write` none of the raw topics' (worker.stages).
lag_reader = LagReader(settings.kafka.bootstrap_servers, lambda: lag_groups(every_stage.values()),
                       kafka=settings.kafka)


async def queue_size() -> int | None:
    try:
        return sum((await lag_reader.lag_by_topic()).values())
    except Exception as exc:  # lag is informative; never fail the metrics page for it
        logger.warning("could not read consumer lag: %r", exc)
        return None


def health_report(*, stages: Mapping[str, BatchStage], sources: list[dict[str, Any]], lag: dict[str, int],
                  now: float, stuck_after: float, recovering: bool, leader: bool, worker: str,
                  other_assigned: Iterable[str] = ()) -> dict[str, Any]:
    """The /health body. Pure (no Faust), so it is tested with stages and a supervisor built in the test."""
    starting = [name for name, st in stages.items() if st.consumer is None]
    stuck = [name for name, st in stages.items()
             if st.stuck(sum(lag.get(t, 0) for t in st.topics), now, stuck_after)]
    status = "recovering" if recovering else "starting" if starting else "stuck" if stuck else "ok"
    by_stage = {name: st.status() for name, st in sorted(stages.items())}
    stale = [f for s in by_stage.values() for f in s.pop("stale_feeds", ())]
    paused = [p for s in by_stage.values() for p in s.get("paused_sources", ())]
    return {
        "status": status,
        "starting_stages": starting,
        "stuck_stages": stuck,
        "lag": lag,
        "worker": worker,
        "leader": leader,
        "sources": sources,
        "paused_sources": paused,
        "stages": by_stage,
        "stale_feeds": sorted(stale, key=lambda f: (f["source"], f["symbol"])),
        "assigned": sorted({a for s in by_stage.values() for a in s["assigned"]} | set(other_assigned)),
    }


@app.page("/pipeline/metrics")
class PipelineMetrics(View):
    async def get(self, request: Request) -> Response:
        try:
            return await self.routed(request)
        except (TypeError, KeyError) as exc:
            # Faust's router, asked before the metrics table's changelog is in the cluster's metadata (a worker's
            # first seconds on a fresh cluster), fails inside its assignor ('NoneType' object is not iterable):
            # the answer is "not yet", as /health's `starting`, not a traceback and a 500.
            logger.info("/pipeline/metrics before the metrics table is assigned: %r", exc)
            return self.json({"status": "starting", "error": "the metrics table is not assigned yet; retry in a few "
                                                             "seconds"}, status=503)

    @app.table_route(table=metrics.metrics_table, exact_key="all")
    async def routed(self, request: Request) -> Response:
        try:
            values = metrics.table_values()
            body = metrics.summary(values, time.time(), await queue_size())
        except (TypeError, KeyError) as exc:  # a bug of ours, not the router's "not yet": a 500, with its traceback
            raise RuntimeError(f"/pipeline/metrics failed: {exc!r}") from exc
        return self.json(body)


def symbol_problem(symbol: str) -> str | None:
    """Why `symbol` can have no row (validation refuses it: symbol.pattern), as the 400's message; None when it may.
    A NUL byte or a space is the client's mistake, not "database unavailable"."""
    v = settings.validation
    if len(symbol) <= v.max_symbol_length and re.fullmatch(v.symbol_pattern, symbol):
        return None
    return (f"{symbol[:40]!r} is not a symbol (validation.symbol_pattern {v.symbol_pattern}, at most "
            f"{v.max_symbol_length} characters); e.g. /pipeline/data/AAPL, /pipeline/data/EUR/USD")


# `.+`: a symbol may hold a slash (EUR/USD, BTC/USDT: validation's symbol.pattern allows it), written as it is or
# encoded (EUR%2FUSD); `{symbol}` alone stopped at the slash and answered 404.
@app.page("/pipeline/data/{symbol:.+}")
class RecentData(View):
    """Recent clean rows of a symbol, newest first: a JSON array of rows, as the brief's frontend example reads it
    (`Promise<MarketData[]>`); no row is an empty array, not a 404.

    `limit`: 1 or more (default 100; above DATA_LIMIT, DATA_LIMIT), else 400. The symbol is matched as written,
    then, when that finds no row, upper-cased (`aapl` -> AAPL: the providers store symbols upper-case, while the
    validator's symbol.pattern also lets a feed of its own store another case). Both are exact matches on the
    (symbol, timestamp) index; a case-insensitive match would scan the table."""

    async def get(self, request: Request, symbol: str) -> Response:
        try:
            limit = int(request.query.get("limit", "100"))
        except ValueError:
            return self.json({"error": "limit must be an integer"}, status=400)
        if limit < 1:
            return self.json({"error": f"limit must be at least 1 (got {limit}); at most {DATA_LIMIT} rows are "
                                       "returned"}, status=400)
        limit = min(limit, DATA_LIMIT)
        if (problem := symbol_problem(symbol)) is not None:
            return self.json({"error": problem}, status=400)
        try:
            rows = await reader.recent(symbol, limit)
            if not rows and symbol != symbol.upper():
                rows = await reader.recent(symbol.upper(), limit)
        except Exception as exc:
            return self.json({"error": f"database unavailable: {type(exc).__name__}"}, status=503)
        return self.json(jsonable(rows))


def jsonable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        d = {}
        for k, v in r.items():
            if v is None:
                continue
            if k == "ts":
                k = "timestamp"
            d[k] = v.isoformat() if hasattr(v, "isoformat") else (exactjson.loads(v, free=()) if k == "metadata" else v)
        out.append(d)
    return out


@app.page("/health")
class Health(View):
    async def get(self, request: Request) -> Response:
        try:
            lag = await lag_reader.lag_by_topic()
        except Exception:
            lag = {}
        url = app.conf.canonical_url
        body = health_report(
            stages=stages,
            sources=supervisor.status(),
            lag=lag,
            now=time.time(),
            stuck_after=settings.worker.stuck_after_seconds,
            recovering=not app.tables.recovery.completed.is_set() if app.tables else False,
            leader=app.is_leader(),
            worker=url.human_repr() if hasattr(url, "human_repr") else str(url),
            other_assigned=(f"{tp.topic}[{tp.partition}]" for tp in app.consumer.assignment()),
        )
        return self.json(body, status=200 if body["status"] == "ok" else 503)


@app.on_before_shutdown.connect
async def _close_lag_reader(sender: object = None, **kwargs: object) -> None:
    await lag_reader.close()
