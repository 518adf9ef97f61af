#!/usr/bin/env python3
"""End-to-end throughput and latency on the real stack, against a bare baseline measured in the same run.

    make bench                      # defaults below
    BENCH_POINTS=300000 BENCH_WORKERS=2 BENCH_LATENCY_SECONDS=30 make bench
    BENCH_SOAK=600 make bench       # and a 10-minute soak at BENCH_RATE for the worker's RSS
    BENCH_PG_STALL=60 make bench    # and the local PostgreSQL stopped 60 s under 5,000 points/s (RSS, catch-up)

1. Preloads BENCH_POINTS simulated points into a fresh raw topic (idempotent producer, as fast as it can).
2. Baseline: a bare aiokafka consumer reads that topic, validates with the same Validator (pydantic
   codec + rules), builds the same rows and writes them with the same COPY + idempotent upsert
   (sinks.postgres), committing offsets after each batch. No Faust.
3. Pipeline: BENCH_WORKERS `python -m streams worker` processes drain the same topic through
   validate_ticks -> ticks.clean -> write_ticks -> PostgreSQL. Rows committed per second are sampled
   from PostgreSQL every second; worker CPU and RSS from /proc.
4. Latency: the simulated producer runs at BENCH_RATE points/s (default 1000) for BENCH_LATENCY_SECONDS;
   each row's latency is written_at (commit) - ingested_at (producer timestamp), read from PostgreSQL
   (streams/tools/measure.py, which `tickflow selftest` uses too).
Writes bench/results/throughput-<workers>w.json (or $BENCH_NAME.json) and, when matplotlib is installed, a PNG
of the same name.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
from aiokafka import AIOKafkaConsumer  # noqa: E402

from producers.runner import SourceRunner  # noqa: E402
from producers.simulated import SimulatedSource  # noqa: E402
from sinks.postgres import PostgresTickWriter, row_from_record  # noqa: E402
from streams.tools import measure  # noqa: E402
from streams.broker import ensure_topics  # noqa: E402
from streams.catalog import load_catalog  # noqa: E402
from streams.rules import Validator  # noqa: E402
from streams.settings import PostgresSettings, SimulatedSourceSettings, load_settings  # noqa: E402
from streams.tools.measure import count_rows, preload  # noqa: E402

# Enough for the steady window (10% to 90% of the rows) to last over 60 s at ~25,000 rows/s.
POINTS = int(os.environ.get("BENCH_POINTS", "2000000"))
WORKERS = int(os.environ.get("BENCH_WORKERS", "1"))
RATE = float(os.environ.get("BENCH_RATE", "1000"))
LATENCY_SECONDS = float(os.environ.get("BENCH_LATENCY_SECONDS", "30"))
SOAK_SECONDS = float(os.environ.get("BENCH_SOAK", "0"))
# PostgreSQL stopped this long (the local stack's, dev/stack.sh) while points arrive at STALL_RATE: worker RSS
# must stay bounded (the write stage fetches nothing while it retries) and the backlog drain afterwards.
STALL_SECONDS = float(os.environ.get("BENCH_PG_STALL", "0"))
STALL_RATE = float(os.environ.get("BENCH_PG_STALL_RATE", "5000"))
STACK = ROOT / "dev" / "stack.sh"
RESULTS = ROOT / "bench" / "results"


def proc_stats(pid: int) -> tuple[float, int]:
    """(cpu seconds, rss bytes) of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(parts[11]) + int(parts[12])) / ticks
    rss = int(parts[21]) * os.sysconf("SC_PAGE_SIZE")
    return cpu, rss


async def baseline(settings: Any, topic: str, schema: str, n: int) -> dict[str, Any]:
    pg = PostgresSettings(**{**settings.postgres.model_dump(), "db_schema": schema,
                             "password": settings.postgres.password})
    writer = PostgresTickWriter(pg)
    await writer.start()
    validator = Validator(settings.validation)
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.kafka.bootstrap_servers,
                                group_id=f"bench-baseline-{uuid.uuid4().hex[:6]}", enable_auto_commit=False,
                                auto_offset_reset="earliest", max_poll_records=2000,
                                **settings.kafka.client_kwargs())
    await consumer.start()
    written = 0
    t_first = None
    try:
        while written < n:
            batches = await consumer.getmany(timeout_ms=1000, max_records=2000)
            rows = []
            for msgs in batches.values():
                for m in msgs:
                    p = validator.check(m.value, source="simulated")
                    rows.append(row_from_record(p.model_dump(mode="json")))
            if rows:
                t_first = t_first or time.perf_counter()
                r = await writer.write(rows)
                written += r.inserted + r.duplicates
                await consumer.commit()
    finally:
        await consumer.stop()
        await writer.stop()
    elapsed = time.perf_counter() - (t_first or time.perf_counter())
    return {"rows": written, "seconds": round(elapsed, 2), "rows_per_sec": round(written / elapsed, 1)}


def start_workers(env: dict[str, str], count: int, log_dir: Path) -> list[subprocess.Popen[bytes]]:
    procs = []
    for i in range(count):
        e = {**env, "TICKFLOW_WORKER__WEB_PORT": str(17100 + i), "F_DATADIR": str(log_dir / f"bench-data-{i}")}
        log = open(log_dir / f"bench-worker-{i}.log", "wb")
        procs.append(subprocess.Popen([sys.executable, "-m", "streams", "worker", "-l", "info"], cwd=ROOT, env=e,
                                      stdout=log, stderr=subprocess.STDOUT))
    return procs


async def pipeline(env: dict[str, str], schema: str, n: int, conn: asyncpg.Connection) -> dict[str, Any]:
    log_dir = RESULTS
    procs = start_workers(env, WORKERS, log_dir)
    samples: list[tuple[float, int]] = []
    usage: list[tuple[float, float, int]] = []
    t_start = time.perf_counter()
    try:
        while True:
            await asyncio.sleep(1.0)
            rows = await count_rows(conn, schema)
            now = time.perf_counter() - t_start
            samples.append((now, rows))
            cpu = rss = 0
            for p in procs:
                c, r = proc_stats(p.pid)
                cpu += c
                rss += r
            usage.append((now, cpu, rss))
            if rows >= n or now > 900 or any(p.poll() is not None for p in procs):
                break
        first = next((t for t, r in samples if r > 0), samples[-1][0])
        last_t, last_rows = samples[-1]
        # steady state: from 10% to 90% of the rows, so start-up and the tail do not count
        i_lo = next((i for i, (_, r) in enumerate(samples) if r >= 0.1 * n), 0)
        i_hi = next((i for i, (_, r) in enumerate(samples) if r >= 0.9 * n), len(samples) - 1)
        lo, hi = samples[i_lo], samples[i_hi]
        steady = (hi[1] - lo[1]) / max(hi[0] - lo[0], 1e-9)
        cpu_steady = (usage[i_hi][1] - usage[i_lo][1]) / max(hi[0] - lo[0], 1e-9)
        if hi[0] - lo[0] < 60:
            print(f"  note: the steady window lasted {hi[0] - lo[0]:.0f} s, under the 60 s the issue asks; "
                  "raise BENCH_POINTS", flush=True)
        return {
            "rows": last_rows, "seconds_first_to_last": round(last_t - first, 2),
            "rows_per_sec_steady": round(steady, 1), "steady_seconds": round(hi[0] - lo[0], 1),
            "worker_cpu_cores_steady": round(cpu_steady, 2),
            "samples": samples, "usage": usage, "procs": procs,
        }
    except BaseException:
        for p in procs:
            p.terminate()
        raise


async def latency_run(settings: Any, env: dict[str, str], schema: str, rate: float, seconds: float,
                      conn: asyncpg.Connection) -> dict[str, Any]:
    catalog = load_catalog(suffix=env["TICKFLOW_KAFKA__TOPIC_SUFFIX"])
    return await measure.latency_run(settings, catalog, conn, schema, rate, seconds)


async def soak_run(settings: Any, env: dict[str, str], procs: list[subprocess.Popen[bytes]],
                   seconds: float) -> dict[str, Any]:
    """Steady 1,000 points/s for `seconds`; worker RSS sampled every 10 s. Growth compares the mean RSS of
    the last tenth of the run with that of the second tenth (the first is warm-up)."""
    print(f"soak: {RATE:,.0f} points/s for {seconds:.0f} s ...", flush=True)
    sim = SimulatedSourceSettings(invalid_ratio=0.001, rate_per_second=RATE, seed=9)
    runner = SourceRunner(settings, load_catalog(suffix=env["TICKFLOW_KAFKA__TOPIC_SUFFIX"]))
    task = asyncio.create_task(runner.run(SimulatedSource(sim, run_id=f"soak{uuid.uuid4().hex[:6]}"),
                                          seconds=seconds))
    samples: list[tuple[float, int]] = []
    t0 = time.monotonic()
    while not task.done():
        await asyncio.sleep(10)
        samples.append((time.monotonic() - t0, sum(proc_stats(p.pid)[1] for p in procs)))
    sent = await task
    n = max(1, len(samples) // 10)
    early = sum(r for _, r in samples[n:2 * n]) / n if len(samples) >= 2 * n else samples[0][1]
    late = sum(r for _, r in samples[-n:]) / n
    growth = (late - early) / early * 100
    # A leak grows from the lowest point on; memory the heavier phases before left behind can only fall.
    low = min(r for _, r in samples)
    from_low = (late - low) / low * 100
    print(f"  RSS {early / 2**20:.1f} MB -> {late / 2**20:.1f} MB ({growth:+.1f}%; {from_low:+.1f}% from its lowest) "
          f"over {sent:,} points")
    return {"seconds": seconds, "sent": sent, "rss_mb_early": round(early / 2**20, 1),
            "rss_mb_late": round(late / 2**20, 1), "rss_growth_percent": round(growth, 2),
            "rss_mb_lowest": round(low / 2**20, 1), "rss_growth_from_lowest_percent": round(from_low, 2),
            "samples": samples}


async def stall_run(settings: Any, env: dict[str, str], procs: list[subprocess.Popen[bytes]], schema: str,
                    seconds: float) -> dict[str, Any]:
    """STALL_RATE points/s for 10 s, then PostgreSQL stopped for `seconds` while they keep coming, then
    started again; worker RSS sampled every second until the rows caught up with what was sent."""
    print(f"PostgreSQL outage: {STALL_RATE:,.0f} points/s, database stopped for {seconds:.0f} s ...", flush=True)
    pg = settings.postgres
    conn = await asyncpg.connect(**pg.connect_kwargs())
    before = await count_rows(conn, schema)
    await conn.close()
    sim = SimulatedSourceSettings(invalid_ratio=0.0, rate_per_second=STALL_RATE, seed=11)
    runner = SourceRunner(settings, load_catalog(suffix=env["TICKFLOW_KAFKA__TOPIC_SUFFIX"]))
    task = asyncio.create_task(runner.run(SimulatedSource(sim, run_id=f"stall{uuid.uuid4().hex[:6]}"),
                                          seconds=seconds + 20))
    samples: list[tuple[float, str, int]] = []
    t0 = time.monotonic()

    async def sample_until(t_end: float, phase: str) -> None:
        while time.monotonic() - t0 < t_end:
            samples.append((round(time.monotonic() - t0, 1), phase, sum(proc_stats(p.pid)[1] for p in procs)))
            await asyncio.sleep(1.0)

    await sample_until(10, "before")
    await asyncio.to_thread(subprocess.run, [str(STACK), "stop", "postgres", "immediate"], check=True, timeout=60)
    try:
        await sample_until(10 + seconds, "stopped")
    finally:
        await asyncio.to_thread(subprocess.run, [str(STACK), "start", "postgres"], check=True, timeout=120)
    restarted = time.monotonic() - t0
    sent = await task
    conn = await asyncpg.connect(**pg.connect_kwargs())
    try:
        while await count_rows(conn, schema) < before + sent and time.monotonic() - t0 < restarted + 300:
            samples.append((round(time.monotonic() - t0, 1), "after", sum(proc_stats(p.pid)[1] for p in procs)))
            await asyncio.sleep(1.0)
        caught_up = time.monotonic() - t0
        landed = await count_rows(conn, schema) - before
    finally:
        await conn.close()
    mb = lambda phase: [r / 2**20 for _, ph, r in samples if ph == phase]  # noqa: E731
    base, stopped, after = mb("before"), mb("stopped"), mb("after") or [0.0]
    growth = (max(stopped) - max(base)) / max(base) * 100
    print(f"  RSS before {max(base):.1f} MB, peak while stopped {max(stopped):.1f} MB ({growth:+.1f}%), "
          f"peak after {max(after):.1f} MB; {landed:,} of {sent:,} rows landed, "
          f"caught up {caught_up - restarted:.0f} s after the restart")
    return {"seconds": seconds, "rate": STALL_RATE, "sent": sent, "landed": landed,
            "caught_up_seconds_after_restart": round(caught_up - restarted, 1),
            "rss_mb_before_peak": round(max(base), 1), "rss_mb_stopped_peak": round(max(stopped), 1),
            "rss_mb_after_peak": round(max(after), 1), "rss_growth_stopped_percent": round(growth, 2),
            "samples": samples}


def plot(result: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    s = result["pipeline"]["samples"]
    rates = [(s[i][0], (s[i][1] - s[i - 1][1]) / (s[i][0] - s[i - 1][0])) for i in range(1, len(s))]
    a.plot([t for t, _ in rates], [r for _, r in rates], label=f"pipeline ({WORKERS} worker)")
    a.axhline(result["baseline"]["rows_per_sec"], color="gray", linestyle="--",
              label="bare aiokafka+asyncpg baseline")
    a.set_xlabel("seconds"), a.set_ylabel("rows committed / s"), a.legend(), a.set_title("throughput")
    for lat in result["latency"]:
        cdf = [(ms, q) for q, ms in lat.get("cdf", []) if ms is not None]
        b.plot([ms for ms, _ in cdf], [q for _, q in cdf], label=f"{lat['rate']:.0f} points/s")
    b.set_xscale("log")
    b.set_xlabel("ms, producer timestamp -> row committed"), b.set_ylabel("fraction of rows")
    b.legend(), b.set_title("end-to-end latency CDF")
    fig.suptitle(f"tickflow on {result['machine']['cpus']} cores, {result['machine']['platform']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


async def main() -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    settings = load_settings()
    tag = uuid.uuid4().hex[:8]
    env = {**os.environ, "TICKFLOW_WORKER__APP_ID": f"bench-{tag}", "TICKFLOW_KAFKA__TOPIC_SUFFIX": f".bench-{tag}",
           "TICKFLOW_POSTGRES__DB_SCHEMA": f"bench_{tag}", "TICKFLOW_SOURCES__SIMULATED__ENABLED": "false"}
    catalog = load_catalog(suffix=env["TICKFLOW_KAFKA__TOPIC_SUFFIX"])
    await ensure_topics(catalog, settings.kafka.bootstrap_servers, kafka=settings.kafka)
    raw = catalog.raw("simulated").name
    print(f"preloading {POINTS:,} points into {raw} ...", flush=True)
    produce_rate = await preload(settings, raw, POINTS)
    print(f"  producer: {produce_rate:,.0f} points/s")
    pg = settings.postgres
    conn = await asyncpg.connect(**pg.connect_kwargs())
    try:
        print("baseline: bare aiokafka consumer -> same validator -> same COPY upsert ...", flush=True)
        base = await baseline(settings, raw, f"bench_{tag}_base", POINTS)
        print(f"  baseline: {base['rows_per_sec']:,.0f} rows/s")
        await conn.execute(f"DROP SCHEMA IF EXISTS bench_{tag}_base CASCADE")  # not needed any more
        print(f"pipeline: {WORKERS} worker(s) draining {POINTS:,} points ...", flush=True)
        pipe = await pipeline(env, f"bench_{tag}", POINTS, conn)
        procs = pipe.pop("procs")
        print(f"  pipeline: {pipe['rows_per_sec_steady']:,.0f} rows/s steady over {pipe['steady_seconds']:.0f} s, "
              f"{pipe['worker_cpu_cores_steady']:.2f} cores "
              f"({pipe['rows']:,} rows, ratio to baseline {pipe['rows_per_sec_steady'] / base['rows_per_sec']:.2f})")
        latency = []
        try:
            for rate in sorted({RATE, round(0.8 * pipe["rows_per_sec_steady"], -2)}):
                print(f"latency at {rate:,.0f} points/s for {LATENCY_SECONDS:.0f} s ...", flush=True)
                lat = await latency_run(settings, env, f"bench_{tag}", rate, LATENCY_SECONDS, conn)
                print(f"  p50 {lat['p50_ms']} ms  p95 {lat['p95_ms']} ms  p99 {lat['p99_ms']} ms  "
                      f"max {lat['max_ms']} ms")
                latency.append(lat)
            soak = await soak_run(settings, env, procs, SOAK_SECONDS) if SOAK_SECONDS else None
            if STALL_SECONDS:
                await conn.close()  # the outage would break it
                stall = await stall_run(settings, env, procs, f"bench_{tag}", STALL_SECONDS)
                conn = await asyncpg.connect(**pg.connect_kwargs())
            else:
                stall = None
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(timeout=30)
        usage = pipe["usage"]
        cpu_s = usage[-1][1] - usage[0][1]
        result = {
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
            "points": POINTS, "workers": WORKERS, "producer_points_per_sec": round(produce_rate, 1),
            "baseline": base, "pipeline": pipe,
            "ratio_pipeline_to_baseline": round(pipe["rows_per_sec_steady"] / base["rows_per_sec"], 3),
            "worker_cpu_cores_avg": round(cpu_s / max(usage[-1][0] - usage[0][0], 1e-9), 2),
            "worker_peak_rss_mb": round(max(u[2] for u in usage) / 2**20, 1),
            "latency": latency,
            "soak": soak,
            "postgres_outage": stall,
        }
        name = os.environ.get("BENCH_NAME", f"throughput-{WORKERS}w")
        (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2))
        drew = plot(result, RESULTS / f"{name}.png")
        print(json.dumps({k: v for k, v in result.items() if k != "pipeline"}, indent=2))
        print(f"wrote {RESULTS / (name + '.json')}" + (f" and {name}.png" if drew else ""))
        for schema in (f"bench_{tag}", f"bench_{tag}_base"):
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
