#!/usr/bin/env python3
"""End-to-end latency under a fixed load, tenth of a second by tenth of a second, beside what each process on the
machine did with the CPU meanwhile: where a p99 under load comes from.

Why: at 80% of its drain rate a worker's p99 moves from 100 ms to 500 ms from one run to the next on a shared
2-core machine, and a percentile does not say whether the pipeline stalled, the machine was full, or the broker
or PostgreSQL took the cores for a while (bench/README.md, session 22). This runs one fresh worker of a tree
(`bench/latency_ab.py`'s `fresh_worker`: its own topics, group and schema), feeds it `--rate` points/s for
`--seconds` (`streams.tools.measure.paced_feed`, the points stamped as they are sent), and meanwhile samples from
/proc every `--interval` seconds the CPU of the worker, of PostgreSQL (every postgres process), of the Kafka
broker (and of each of its JVM threads, by name: compiler, GC, request handlers), of this process (the load
generator and the sampler) and of the whole machine. Then it reads every row of the run back from PostgreSQL
(written_at - ingested_at, by the tenth of a second of ingested_at) and prints the tenths whose slowest row took
more than `--slow-ms`, each with the cores every part used in it. The stack must run (dev/stack.sh start).

    .cache/venv/bin/python bench/latency_timeline.py --rate 17400 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from latency_ab import fresh_worker  # noqa: E402

from streams.tools import measure  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
_THREAD_NUMBER = re.compile(r"[#\-]?\d+$")


def _ticks(path: str) -> tuple[str, int]:
    """(name, utime + stime in clock ticks) of a /proc/<pid>/stat or /proc/<pid>/task/<tid>/stat file."""
    with open(path) as f:
        text = f.read()
    head, tail = text.rsplit(")", 1)
    fields = tail.split()
    return head.split("(", 1)[1], int(fields[11]) + int(fields[12])


def _machine_busy() -> int:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return sum(fields[:8]) - fields[3] - fields[4]  # user..steal, less idle and iowait


def _pids_named(*names: str) -> dict[str, list[int]]:
    found: dict[str, list[int]] = defaultdict(list)
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/comm") as f:
                    comm = f.read().strip()
            except OSError:
                continue
            if comm in names:
                found[comm].append(int(pid))
    return found


class Sampler(threading.Thread):
    """CPU ticks of the parts of the machine every `interval` seconds, as (wall time, {part: ticks}) deltas."""

    def __init__(self, worker_pid: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.worker_pid, self.interval = worker_pid, interval
        self.samples: list[tuple[float, dict[str, int]]] = []
        self.halt = threading.Event()
        self.own_cpu = 0.0

    def _read(self, pids: dict[str, list[int]]) -> dict[str, int]:
        now: dict[str, int] = Counter()
        parts = [("worker", f"/proc/{self.worker_pid}/stat"), ("this process", f"/proc/{os.getpid()}/stat")]
        parts += [("postgres", f"/proc/{p}/stat") for p in pids.get("postgres", [])]
        for part, path in parts:
            try:
                now[part] += _ticks(path)[1]
            except (OSError, IndexError, ValueError):  # a process gone meanwhile
                continue
        for pid in pids.get("java", []):
            try:
                tids = os.listdir(f"/proc/{pid}/task")
            except OSError:
                continue
            for tid in tids:
                try:
                    name, ticks = _ticks(f"/proc/{pid}/task/{tid}/stat")
                except (OSError, IndexError, ValueError):
                    continue
                now["broker"] += ticks
                now[f"broker: {_THREAD_NUMBER.sub('', name).strip()}"] += ticks
        now["machine"] = _machine_busy()
        return now

    def run(self) -> None:
        started = time.thread_time()
        pids = _pids_named("postgres", "java")
        listed = time.monotonic()
        before = self._read(pids)
        while not self.halt.wait(self.interval):
            if time.monotonic() - listed > 1.0:  # backends come and go
                pids, listed = _pids_named("postgres", "java"), time.monotonic()
            now = self._read(pids)
            self.samples.append((time.time(), {k: v - before.get(k, 0) for k, v in now.items()
                                               if v > before.get(k, 0)}))
            before = now
        self.own_cpu = time.thread_time() - started


async def latency_by_tenth(conn: Any, schema: str, run_id: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        f"SELECT floor(extract(epoch FROM ingested_at) * 10) / 10 AS t, count(*) AS n, "
        f"percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) AS p50, max(ms) AS max FROM "
        f"(SELECT ingested_at, extract(epoch FROM written_at - ingested_at)::float8 * 1000 AS ms "
        f"FROM {schema}.market_data WHERE item_id LIKE $1) x GROUP BY 1 ORDER BY 1", run_id + "-%")
    return [{"t": float(r["t"]), "rows": r["n"], "p50_ms": round(r["p50"], 1), "max_ms": round(r["max"], 1)}
            for r in rows]


def cores_by_tenth(samples: list[tuple[float, dict[str, int]]]) -> dict[int, dict[str, float]]:
    """Each sample's ticks into the tenth of a second (of the epoch) it ended in, as cores used in that tenth."""
    out: dict[int, Counter[str]] = defaultdict(Counter)
    for at, ticks in samples:
        out[int(at * 10)].update(ticks)
    return {t: {k: round(v / TICKS / 0.1, 2) for k, v in c.items()} for t, c in out.items()}


def _top_thread(cores: dict[str, float]) -> str:
    threads = [(v, k.split(": ", 1)[1]) for k, v in cores.items() if k.startswith("broker: ")]
    if not threads:
        return ""
    v, name = max(threads)
    return f"{name} {v:.2f}"


async def run(args: argparse.Namespace, tree: Path, log_dir: Path) -> dict[str, Any]:
    async with fresh_worker(tree, log_dir) as (settings, catalog, conn, schema, proc):
        sampler = Sampler(proc.pid, args.interval)
        sampler.start()
        run_id = "timeline"
        try:
            lat = await measure.latency_run(settings, catalog, conn, schema, args.rate, args.seconds, run_id=run_id)
        finally:
            sampler.halt.set()
            sampler.join()
        tenths = await latency_by_tenth(conn, schema, run_id)
    cores = cores_by_tenth(sampler.samples)
    start = tenths[0]["t"] if tenths else 0.0
    for row in tenths:
        row["cores"] = cores.get(round(row["t"] * 10), {})
        row["t"] = round(row["t"] - start, 1)
    slow = [r for r in tenths if r["max_ms"] > args.slow_ms]
    return {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "tree": str(tree),
            "rate": args.rate, "seconds": args.seconds, "interval": args.interval, "slow_ms": args.slow_ms,
            "latency": {k: lat[k] for k in ("rows", "sent", "p50_ms", "p95_ms", "p99_ms", "max_ms")},
            "rows_in_slow_tenths": sum(r["rows"] for r in slow), "sampler_cpu_seconds": round(sampler.own_cpu, 2),
            "tenths": tenths}


def report(result: dict[str, Any]) -> None:
    lat = result["latency"]
    print(f"{result['rate']:,.0f} points/s for {result['seconds']:.0f} s: p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} "
          f"ms, max {lat['max_ms']} ms ({lat['rows']:,} of {lat['sent']:,} rows); "
          f"{result['rows_in_slow_tenths']:,} rows in tenths slower than {result['slow_ms']:.0f} ms; "
          f"the sampler used {result['sampler_cpu_seconds']} s of CPU")
    print(f"{'t s':>6} {'rows':>6} {'p50 ms':>7} {'max ms':>7} | cores: {'worker':>6} {'postgres':>8} {'broker':>6} "
          f"{'this':>5} {'machine':>7}  busiest broker thread")
    for r in result["tenths"]:
        if r["max_ms"] <= result["slow_ms"]:
            continue
        c = r["cores"]
        print(f"{r['t']:6.1f} {r['rows']:6d} {r['p50_ms']:7.1f} {r['max_ms']:7.1f} |        "
              f"{c.get('worker', 0):6.2f} {c.get('postgres', 0):8.2f} {c.get('broker', 0):6.2f} "
              f"{c.get('this process', 0):5.2f} {c.get('machine', 0):7.2f}  {_top_thread(c)}")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tree", default=str(ROOT), help="the project tree whose worker runs (default: this one)")
    ap.add_argument("--rate", type=float, required=True, help="points/s")
    ap.add_argument("--seconds", type=float, default=20.0, help="seconds of load (default 20)")
    ap.add_argument("--interval", type=float, default=0.05, help="seconds between CPU samples (default 0.05)")
    ap.add_argument("--slow-ms", type=float, default=100.0, help="tenths listed: slowest row above this (100)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latency-timeline.json")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    log_dir = ROOT / ".cache" / "latency-ab"
    log_dir.mkdir(parents=True, exist_ok=True)
    result = asyncio.run(run(args, Path(args.tree).resolve(), log_dir))
    report(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
