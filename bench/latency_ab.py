#!/usr/bin/env python3
"""End-to-end latency at fixed rates, A/B: one tickflow worker of each given tree, alternating, fresh per round.

Why: on this shared 2-core machine one latency run under load moves by 10x from one minute to the next (session
11's probe gave p50 from 58 ms to 3 s at 8,000 points/s with the same code), so two versions are compared only
over several rounds that alternate them, each on its own topics, group and schema, the worker started fresh.

Each round, for each tree in turn: a worker (`python -m streams worker` run from that tree, with this checkout's
compiled detectors when they match its sources), warmed up until a 3-second feed at 1,000 points/s has landed,
then `streams.tools.measure.latency_run` at each rate for --seconds (the paced simulated feed; rows read back
from PostgreSQL, written_at - ingested_at); the worker's CPU over each phase from /proc. The stack must run
(dev/stack.sh start). Prints one line per phase, the per-tree medians at the end, and writes --out as JSON.

    git worktree add /tmp/base <commit>
    .cache/venv/bin/python bench/latency_ab.py --trees /tmp/base,. --rates 4000,6000 --rounds 4
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402

from streams.broker import ensure_topics  # noqa: E402
from streams.catalog import load_catalog  # noqa: E402
from streams.settings import load_settings  # noqa: E402
from streams.tools import measure  # noqa: E402

WARMUP_RATE, WARMUP_SECONDS = 1000.0, 3.0


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def start_worker(tree: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    e = {**env, "PYTHONPATH": str(tree), "TICKFLOW_COMPILED_DIR": str(ROOT / ".cache" / "compiled"),
         "F_DATADIR": str(log.with_suffix(".data"))}
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "streams", "worker", "-l", "info"], cwd=tree, env=e,
                                stdout=out, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@contextlib.asynccontextmanager
async def fresh_worker(tree: Path, log_dir: Path) -> AsyncIterator[tuple[Any, Any, asyncpg.Connection, str,
                                                                         subprocess.Popen[bytes]]]:
    """A worker of `tree` on topics, group and schema of its own, warmed up until a 3-second feed at 1,000
    points/s has landed: (settings, catalog, connection, schema, process). All of it is dropped afterwards."""
    settings = load_settings()
    tag = uuid.uuid4().hex[:8]
    suffix, schema = f".ab-{tag}", f"ab_{tag}"
    env = {**os.environ, "TICKFLOW_WORKER__APP_ID": f"ab-{tag}", "TICKFLOW_KAFKA__TOPIC_SUFFIX": suffix,
           "TICKFLOW_POSTGRES__DB_SCHEMA": schema, "TICKFLOW_SOURCES__SIMULATED__ENABLED": "false",
           "TICKFLOW_WORKER__WEB_PORT": "17180"}
    catalog = load_catalog(suffix=suffix)
    await ensure_topics(catalog, settings.kafka.bootstrap_servers, kafka=settings.kafka)
    conn = await asyncpg.connect(**settings.postgres.connect_kwargs())
    proc = start_worker(tree, env, log_dir / f"ab-{tag}.log")
    try:
        await measure.latency_run(settings, catalog, conn, schema, WARMUP_RATE, WARMUP_SECONDS, wait_seconds=300)
        yield settings, catalog, conn, schema, proc
    finally:
        stop(proc)
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await conn.close()
        await measure.drop_topics(settings, containing=f"ab-{tag}")


async def one(tree: Path, rates: list[float], seconds: float, log_dir: Path) -> list[dict[str, Any]]:
    """One fresh worker of `tree`: its latency at each rate."""
    out = []
    async with fresh_worker(tree, log_dir) as (settings, catalog, conn, schema, proc):
        for rate in rates:
            cpu0, t0 = _cpu_seconds(proc.pid), time.monotonic()
            lat = await measure.latency_run(settings, catalog, conn, schema, rate, seconds)
            cores = (_cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0)
            row = {"tree": str(tree), "rate": rate, "p50_ms": lat["p50_ms"], "p99_ms": lat["p99_ms"],
                   "max_ms": lat["max_ms"], "rows": lat["rows"], "sent": lat["sent"], "worker_cores": round(cores, 2)}
            print(f"  {tree.name or tree}: {rate:,.0f}/s  p50 {lat['p50_ms']} ms  p99 {lat['p99_ms']} ms  "
                  f"max {lat['max_ms']} ms  {cores:.2f} cores  ({lat['rows']:,} of {lat['sent']:,} rows)", flush=True)
            out.append(row)
    return out


def summary(rows: list[dict[str, Any]], trees: list[Path], rates: list[float]) -> list[dict[str, Any]]:
    out = []
    for rate in rates:
        for tree in trees:
            mine = [r for r in rows if r["tree"] == str(tree) and r["rate"] == rate and r["p99_ms"] is not None]
            if mine:
                out.append({"tree": str(tree), "rate": rate, "runs": len(mine),
                            "p50_ms_median": statistics.median(r["p50_ms"] for r in mine),
                            "p99_ms_median": statistics.median(r["p99_ms"] for r in mine),
                            "p99_ms_all": [r["p99_ms"] for r in mine]})
    return out


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trees", required=True, help="comma-separated project trees (each run with this venv)")
    ap.add_argument("--rates", default="4000,6000", help="points/s, comma-separated (default 4000,6000)")
    ap.add_argument("--seconds", type=float, default=20.0, help="seconds at each rate (default 20)")
    ap.add_argument("--rounds", type=int, default=4, help="rounds; each runs every tree once (default 4)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latency-ab.json")
    return ap.parse_args()


async def run(trees: list[Path], rates: list[float], seconds: float, rounds: int, log_dir: Path
              ) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for n in range(rounds):
        order = trees if n % 2 == 0 else trees[::-1]  # neither tree always first
        print(f"round {n + 1} of {rounds}", flush=True)
        for tree in order:
            rows += [{**r, "round": n + 1} for r in await one(tree, rates, seconds, log_dir)]
    return rows


def main() -> None:
    args = parse_args()
    trees = [Path(t).resolve() for t in args.trees.split(",") if t]
    rates = [float(r) for r in args.rates.split(",") if r]
    log_dir = ROOT / ".cache" / "latency-ab"
    log_dir.mkdir(parents=True, exist_ok=True)
    rows = asyncio.run(run(trees, rates, args.seconds, args.rounds, log_dir))
    result = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "seconds": args.seconds,
              "rates": rates, "trees": [str(t) for t in trees], "rows": rows, "summary": summary(rows, trees, rates)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    for s in result["summary"]:
        print(f"{s['tree']}: {s['rate']:,.0f}/s over {s['runs']} runs: median p50 {s['p50_ms_median']} ms, "
              f"median p99 {s['p99_ms_median']} ms (p99s {s['p99_ms_all']})")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
