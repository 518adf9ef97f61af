#!/usr/bin/env python3
"""End-to-end throughput and latency on the real stack, side by side with its peers on the same job (issue 17).

    make bench                      # defaults below
    BENCH_POINTS=300000 BENCH_WORKERS=2 BENCH_LATENCY_SECONDS=30 make bench
    BENCH_PEERS=quix,bare make bench  # only these peers (default all: quix,quix-stock,faust,bare; "none")
    BENCH_SOAK=600 make bench       # and a 10-minute soak at BENCH_RATE for the worker's RSS
    BENCH_PG_STALL=60 make bench    # and the local PostgreSQL stopped 60 s under 5,000 points/s (RSS, catch-up)
    BENCH_SPLIT=1 make bench        # each tickflow worker split in two: one validates, one writes and archives

1. Preloads BENCH_POINTS simulated points (all valid; quotes and trades) into a fresh raw topic (idempotent
   producer, as fast as it can).
2. Peers (bench/peers/, BENCH_PEERS), one after the other, each its own process on the same raw topic with
   its own consumer group, clean and rejected topics and PostgreSQL schema; all validate with the same
   `streams.rules.Validator` and write the same table and natural key:
   - quix: Quix Streams 3.28.1 (in .cache/bench-quix-venv), raw -> validate -> clean -> a BatchingSink doing
     tickflow's COPY + revision upsert (its stock PostgreSQLSink cannot store mixed kinds: see quix-stock);
   - quix-stock: not a speed run: Quix's own PostgreSQLSink on a small mixed topic (quotes, trades, bars;
     BENCH_QUIX_STOCK_POINTS), with its schema auto-update and without, and what it stored as NULL or lost;
   - faust: plain faust-streaming, two `@app.agent`s with `stream.take(2000, within=1)`, asyncpg COPY + upsert;
   - bare: the floor, a bare aiokafka consumer that validates and COPYs in ONE hop (no clean topic).
3. tickflow: BENCH_WORKERS `python -m streams worker` processes drain the same topic through
   validate_ticks -> ticks.clean -> write_ticks -> PostgreSQL (its 9 detectors on). It drains the same points
   before the peers too (on topics of its own, preloaded with the raw topic), and the peers are compared with
   the mean of its two drains: the systems run one after the other on a machine whose speed drifts, and a
   before-and-after order cancels a steady drift (BENCH_TICKFLOW_TWICE=0: after them only).
   For every system alike: rows committed are counted in PostgreSQL every second; sustained rows/s and app
   CPU per row over the same window (from 10% to 90% of the rows; CPU from /proc of the system's own
   processes), peak RSS, and rows lost or duplicated against the preloaded keys.
4. Latency (every system, while it still runs after its drain): the simulated producer runs at BENCH_RATE
   points/s (default 1000) and at 80% of that system's own measured maximum for BENCH_LATENCY_SECONDS into
   the raw topic it reads; each row's latency is written_at (commit) - ingested_at (the raw record's producer
   timestamp, which every peer sets as tickflow does), read from PostgreSQL (streams/tools/measure.py, which
   `tickflow selftest` uses too).
Writes bench/results/throughput-<workers>w.json (or $BENCH_NAME.json) with a per-system table ("systems"),
and, when matplotlib is installed, two PNGs: <name>.png (tickflow over time, latency CDF) and
<name>-peers.png (the systems compared).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: E402

from producers.base import encode  # noqa: E402
from producers.runner import SourceRunner, new_producer, send_batch  # noqa: E402
from producers.simulated import SimulatedSource  # noqa: E402
from sinks.postgres import PostgresTickWriter  # noqa: E402
from streams.broker import ensure_topics  # noqa: E402
from streams.catalog import load_catalog  # noqa: E402
from streams.models import DataType, MarketDataPoint  # noqa: E402
from streams.settings import PostgresSettings, SimulatedSourceSettings, load_settings  # noqa: E402
from streams.tools import measure  # noqa: E402
from streams.tools.measure import count_rows, drop_topics, preload  # noqa: E402

# Every system's steady window (10% to 90% of the rows) lasts well over 30 s: tickflow is the fastest here, and
# 1,600,000 of 2,000,000 rows at its 40,000-44,000 rows/s on a fast stretch take 36-40 s (1,500,000 points gave
# 27 s at 43,584 rows/s in session 33; 1,000,000 gave 24-29 s at 28,000-32,000).
POINTS = int(os.environ.get("BENCH_POINTS", "2000000"))
WORKERS = int(os.environ.get("BENCH_WORKERS", "1"))
# Each "worker" as two processes by worker.stages: validate, and write + archive (each its own event loop).
SPLIT = os.environ.get("BENCH_SPLIT", "0") not in ("", "0")
RATE = float(os.environ.get("BENCH_RATE", "1000"))
LATENCY_SECONDS = float(os.environ.get("BENCH_LATENCY_SECONDS", "30"))
SOAK_SECONDS = float(os.environ.get("BENCH_SOAK", "0"))
# PostgreSQL stopped this long (the local stack's, dev/stack.sh) while points arrive at STALL_RATE: worker RSS
# must stay bounded (the write stage fetches nothing while it retries) and the backlog drain afterwards.
STALL_SECONDS = float(os.environ.get("BENCH_PG_STALL", "0"))
STALL_RATE = float(os.environ.get("BENCH_PG_STALL_RATE", "5000"))
# The peers to run beside tickflow (bench/peers/), in this order; "none" for tickflow alone.
ALL_PEERS = ("bare", "quix", "quix-stock", "faust")
PEERS = [p.strip() for p in os.environ.get("BENCH_PEERS", ",".join(ALL_PEERS)).split(",")
         if p.strip() and p.strip() != "none"]
# tickflow drains before the peers too (on the same points, topics of its own), and the table compares the peers with
# the mean of its two drains (`both_drains`); 0: only after them. Only with peers.
TWICE = bool(PEERS) and os.environ.get("BENCH_TICKFLOW_TWICE", "1") not in ("", "0")
PEER_TIMEOUT = float(os.environ.get("BENCH_PEER_TIMEOUT", "1800"))
STOCK_POINTS = int(os.environ.get("BENCH_QUIX_STOCK_POINTS", "20000"))
STACK = ROOT / "dev" / "stack.sh"
RESULTS = ROOT / "bench" / "results"
PEERS_DIR = ROOT / "bench" / "peers"
STATE = ROOT / ".cache" / "bench-state"  # the peers' local state dirs, removed after each run
QUIX_PYTHON = ROOT / ".cache" / "bench-quix-venv" / "bin" / "python"


def proc_stats(pid: int) -> tuple[float, int]:
    """(cpu seconds, rss bytes) of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(parts[11]) + int(parts[12])) / ticks
    rss = int(parts[21]) * os.sysconf("SC_PAGE_SIZE")
    return cpu, rss


def _stat_fields(pid: int | str) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()  # [0] is field 3 (state): utime is [11], cutime [13]


def stack_cpu() -> float:
    """CPU seconds of the stack the systems share, the Kafka broker and PostgreSQL (`stack_cpu_parts`). Broker
    and database work per row is part of a job's cost: on a machine of few cores it is what the job's own
    process competes with."""
    return sum(stack_cpu_parts().values())


def stack_cpu_parts() -> dict[str, float]:
    """CPU seconds of the broker's JVM and of PostgreSQL: every live postgres process, plus what its exited
    children used (a backend's CPU goes to the postmaster's cutime when it is reaped)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = {"broker": 0, "postgres": 0}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
            if comm == "java":
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if b"kafka.Kafka" not in f.read():
                        continue
            elif comm != "postgres":
                continue
            parts = _stat_fields(pid)
        except (OSError, IndexError):
            continue
        part = "broker" if comm == "java" else "postgres"
        total[part] += int(parts[11]) + int(parts[12])
        if comm == "postgres" and _is_postmaster(parts):
            total[part] += int(parts[13]) + int(parts[14])
    return {k: v / ticks for k, v in total.items()}


def _is_postmaster(parts: list[str]) -> bool:
    """A postgres process whose parent is not a postgres process (parts[1] is the parent's pid)."""
    try:
        with open(f"/proc/{parts[1]}/comm") as f:
            return f.read().strip() != "postgres"
    except OSError:
        return True


def machine_cpu() -> float:
    """CPU seconds the whole machine spent busy (every core, every process: /proc/stat), for the ceiling a
    job's total cost per row sets on this machine."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # user..steal; guest is inside user


def _stats_of(procs: list[subprocess.Popen[bytes]]) -> tuple[float, int]:
    """Summed CPU seconds and RSS bytes of running processes (a finished one counts 0)."""
    cpu = rss = 0
    for p in procs:
        try:
            c, r = proc_stats(p.pid)
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        cpu += c
        rss += r
    return cpu, rss


async def watch(procs: list[subprocess.Popen[bytes]], schema: str, n: int, conn: asyncpg.Connection,
                label: str) -> dict[str, Any]:
    """Sample rows landed in PostgreSQL and the processes' CPU and RSS every second until `n` rows landed (or
    a process ended, or nothing landed for 120 s, or BENCH_PEER_TIMEOUT). The same measure for every system:
    sustained rows/s and CPU per row over the window from 10% to 90% of the rows."""
    samples: list[tuple[float, int]] = []
    usage: list[tuple[float, float, int]] = []
    shared: list[tuple[float, float]] = []  # (stack CPU, machine CPU) seconds, sampled with `usage`
    t_start = time.perf_counter()
    last_progress = 0.0
    ended = None
    while True:
        await asyncio.sleep(1.0)
        rows = await count_rows(conn, schema)
        now = time.perf_counter() - t_start
        cpu, rss = _stats_of(procs)
        if not samples or rows > samples[-1][1]:
            last_progress = now
        samples.append((now, rows))
        usage.append((now, cpu, rss))
        shared.append((stack_cpu(), machine_cpu()))
        if rows >= n:
            break
        if any(p.poll() is not None for p in procs):
            ended = "a process ended"
            break
        if now - last_progress > 120 or now > PEER_TIMEOUT:
            ended = "no progress for 120 s" if now - last_progress > 120 else "BENCH_PEER_TIMEOUT"
            break
    if ended:
        print(f"  {label}: stopped early ({ended}) at {samples[-1][1]:,} of {n:,} rows", flush=True)
    first = next((t for t, r in samples if r > 0), samples[-1][0])
    last_t, last_rows = samples[-1]
    # steady state: from 10% to 90% of the rows, so start-up and the tail do not count
    i_lo = next((i for i, (_, r) in enumerate(samples) if r >= 0.1 * n), 0)
    i_hi = next((i for i, (_, r) in enumerate(samples) if r >= 0.9 * n), len(samples) - 1)
    lo, hi = samples[i_lo], samples[i_hi]
    span = max(hi[0] - lo[0], 1e-9)
    steady = (hi[1] - lo[1]) / span
    cpu_window = usage[i_hi][1] - usage[i_lo][1]
    window_rows = max(hi[1] - lo[1], 1)
    stack_window = shared[i_hi][0] - shared[i_lo][0]
    machine_window = shared[i_hi][1] - shared[i_lo][1]
    if span < 30:
        print(f"  note: {label}'s steady window lasted {span:.0f} s (under 30 s: raise BENCH_POINTS for a "
              "figure to quote)", flush=True)
    return {
        "rows": last_rows, "seconds_first_to_last": round(last_t - first, 2),
        "rows_per_sec_steady": round(steady, 1), "steady_seconds": round(span, 1),
        "cpu_cores_steady": round(cpu_window / span, 2),
        "cpu_us_per_row_steady": round(cpu_window / window_rows * 1e6, 1),
        # the same window's broker + PostgreSQL CPU, and the whole machine's, per row landed
        "stack_cpu_us_per_row_steady": round(stack_window / window_rows * 1e6, 1),
        "machine_cpu_us_per_row_steady": round(machine_window / window_rows * 1e6, 1),
        "machine_cores_busy_steady": round(machine_window / span, 2),
        # the whole run (start-up included) per row landed: a check on the window's figure for a system
        # whose sink lands rows in bursts (Quix flushes at each checkpoint, so CPU and rows can fall apart)
        "cpu_us_per_row_total": round((usage[-1][1] - usage[0][1]) / max(last_rows, 1) * 1e6, 1),
        "peak_rss_mb": round(max(u[2] for u in usage) / 2**20, 1),
        "stopped_early": ended,
        "samples": samples, "usage": usage,
    }


async def key_check(conn: asyncpg.Connection, schema: str, run_id: str, n: int) -> dict[str, int]:
    """Rows lost or duplicated, counted in PostgreSQL against the n preloaded keys (item_id <run_id>-1..n,
    each sent once, all valid): lost = keys missing; duplicated = rows beyond one per key (the primary key
    forbids two rows with the same natural key, so a duplicate would be the same point under another key)."""
    row = await conn.fetchrow(
        f"SELECT count(*) FILTER (WHERE item_id LIKE $1) AS rows, "
        f"count(DISTINCT item_id) FILTER (WHERE item_id LIKE $1) AS keys FROM {schema}.market_data",
        run_id + "-%")
    rows, keys = row["rows"] or 0, row["keys"] or 0
    return {"landed": rows, "lost": n - keys, "duplicated": rows - keys}


async def make_topics(settings: Any, names: list[str], partitions: int = 4) -> None:
    """The peers' own clean and rejected topics, with the raw topic's partition count."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers,
                                **settings.kafka.client_kwargs())
    await admin.start()
    try:
        rf = settings.kafka.replication_factor or 1
        await admin.create_topics([NewTopic(name, partitions, rf) for name in names])
    finally:
        await admin.close()


def peer_command(peer: str) -> list[str]:
    if peer in ("quix", "quix-stock"):
        if not QUIX_PYTHON.exists():
            raise SystemExit(f"{QUIX_PYTHON} is missing: `make bench` makes it "
                             "(bench/peers/requirements-quix.txt), or BENCH_PEERS without quix")
        script = "quix_peer.py" if peer == "quix" else "quix_stock_sink.py"
        return [str(QUIX_PYTHON), str(PEERS_DIR / script)]
    if peer == "faust":
        return [sys.executable, str(PEERS_DIR / "faust_peer.py"), "worker", "-l", "warn"]
    if peer == "bare":
        return [sys.executable, str(PEERS_DIR / "bare_peer.py")]
    raise SystemExit(f"unknown peer {peer!r} in BENCH_PEERS (known: {', '.join(ALL_PEERS)})")


async def prepare_peer(settings: Any, tag: str, peer: str, raw: str) -> dict[str, str]:
    """A peer's own topics, consumer group and migrated schema (sinks.schema through the writer)."""
    slug = peer.replace("-", "_")
    names = {"clean": f"bench-{tag}.{peer}.clean", "rejected": f"bench-{tag}.{peer}.rejected"}
    await make_topics(settings, list(names.values()))
    schema = f"bench_{tag}_{slug}"
    pg = PostgresSettings(**{**settings.postgres.model_dump(), "db_schema": schema,
                             "password": settings.postgres.password})
    writer = PostgresTickWriter(pg)
    await writer.migrate()
    return {"BENCH_PEER_RAW": raw, "BENCH_PEER_CLEAN": names["clean"], "BENCH_PEER_REJECTED": names["rejected"],
            "BENCH_PEER_SCHEMA": schema, "BENCH_PEER_GROUP": f"bench-{tag}-{peer}",
            "BENCH_QUIX_STATE_DIR": str(STATE / f"bench-{tag}-{peer}-state"),
            "BENCH_FAUST_DATADIR": str(STATE / f"bench-{tag}-{peer}-data")}


def spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """A peer process with its output in `log` (a sync helper: the bench's loop only waits on it)."""
    with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)


def latency_rates(steady: float) -> list[float]:
    """The rates a system's latency is measured at: BENCH_RATE, and 80% of its own sustained maximum."""
    return sorted({RATE, round(0.8 * steady, -2)} - {0.0})


async def latency_phases(settings: Any, catalog: Any, conn: asyncpg.Connection, schema: str, steady: float,
                         label: str, procs: list[subprocess.Popen[bytes]]) -> list[dict[str, Any]]:
    """End-to-end latency of a running system at each of `latency_rates`: the simulated feed into the raw
    topic it reads, rows read back from its schema (written_at - ingested_at, streams/tools/measure.py). Beside
    it, the system's CPU per row over the phase (`procs`, from /proc) and the share of a core that is at the
    phase's rate: a drain's batches are larger than a live feed's, so a rate that is 80% of the drain's maximum
    can keep a one-thread process busier than 80% of the time. And the broker's, PostgreSQL's and the load
    generator's CPU per row, and the cores each kept busy while the feed ran: a drain reads a preloaded topic,
    so the feed's own sends and their produce requests at the broker are load the drain's maximum never
    carried, on the same cores."""
    out = []
    for rate in latency_rates(steady):
        print(f"  {label}: latency at {rate:,.0f} points/s for {LATENCY_SECONDS:.0f} s ...", flush=True)
        cpu0, stack0 = _stats_of(procs)[0], stack_cpu_parts()
        feed = measure.FeedStats()
        lat = await measure.latency_run(
            settings, catalog, conn, schema, rate, LATENCY_SECONDS, stats=feed,
            probe=lambda: {"machine": machine_cpu(), "job": _stats_of(procs)[0], **stack_cpu_parts()})
        cpu = _stats_of(procs)[0] - cpu0
        stack = {k: v - stack0[k] for k, v in stack_cpu_parts().items()}
        if lat["rows"]:
            # Per row over the phase, to its last row (a system behind the feed works on after the feed ends);
            # the load generator's over the feed only (building its points before the clock starts is not
            # load on the system).
            per_row = {"cpu_us_per_row": cpu, "stack_cpu_us_per_row": sum(stack.values()),
                       "broker_cpu_us_per_row": stack["broker"], "postgres_cpu_us_per_row": stack["postgres"],
                       "generator_cpu_us_per_row": feed.cpu_seconds}
            lat.update({k: round(v / lat["rows"] * 1e6, 1) for k, v in per_row.items()})
            lat["cpu_cores_at_rate"] = round(cpu / lat["rows"] * rate, 2)
        if feed.seconds:
            # What a tail under load is read against: the cores each part kept busy while the feed ran.
            lat["cores_during_feed"] = {k: round(v / feed.seconds, 2)
                                        for k, v in {**feed.probed, "generator": feed.cpu_seconds}.items()}
        print(f"    p50 {lat['p50_ms']} ms  p95 {lat['p95_ms']} ms  p99 {lat['p99_ms']} ms  max {lat['max_ms']} ms"
              f"  ({lat['rows']:,} of {lat['sent']:,} rows)"
              + (f"; {lat['cpu_us_per_row']:.1f} µs CPU per row, {lat['cpu_cores_at_rate']:.2f} cores at this rate;"
                 f" per row, broker {lat['broker_cpu_us_per_row']:.1f} µs, PostgreSQL"
                 f" {lat['postgres_cpu_us_per_row']:.1f} µs, load generator {lat['generator_cpu_us_per_row']:.1f} µs"
                 if lat["rows"] else "")
              + ("; cores busy while fed: " + ", ".join(f"{k} {v:.2f}" for k, v in lat["cores_during_feed"].items())
                 + f" of {os.cpu_count()}" if "cores_during_feed" in lat else ""), flush=True)
        out.append(lat)
    return out


async def run_peer(settings: Any, tag: str, peer: str, raw: str, run_id: str, n: int,
                   conn: asyncpg.Connection) -> dict[str, Any]:
    """One peer on the preloaded raw topic: started, watched like tickflow, stopped, its keys checked; then its
    latency (`peer_latency`)."""
    job = await prepare_peer(settings, tag, peer, raw)
    env = {**os.environ, **job, "PYTHONUNBUFFERED": "1"}
    log = RESULTS / f"bench-peer-{peer}.log"
    proc = spawn(peer_command(peer), env, log)
    try:
        res = await watch([proc], job["BENCH_PEER_SCHEMA"], n, conn, peer)
    finally:
        _stop([proc])
    res.update(await key_check(conn, job["BENCH_PEER_SCHEMA"], run_id, n))
    res["exit_code"] = proc.returncode
    res["log"] = str(log.relative_to(ROOT))
    await drop_peer(settings, conn, job)
    res["latency"] = [] if res["stopped_early"] or not LATENCY_SECONDS else await peer_latency(
        settings, tag, peer, res["rows_per_sec_steady"], conn)
    return res


async def drop_peer(settings: Any, conn: asyncpg.Connection, job: dict[str, str]) -> None:
    await conn.execute(f"DROP SCHEMA IF EXISTS {job['BENCH_PEER_SCHEMA']} CASCADE")
    await drop_topics(settings, [job["BENCH_PEER_CLEAN"], job["BENCH_PEER_REJECTED"]])
    for key in ("BENCH_QUIX_STATE_DIR", "BENCH_FAUST_DATADIR"):
        shutil.rmtree(job[key], ignore_errors=True)


async def peer_latency(settings: Any, tag: str, peer: str, steady: float,
                       conn: asyncpg.Connection) -> list[dict[str, Any]]:
    """The peer again, on a raw topic, clean topic, group and schema of its own (the latency feed must not go
    into the preloaded topic, which the next systems drain), warmed up until a first feed lands (a peer's
    start-up is not latency), then `latency_phases`."""
    lat_catalog = load_catalog(suffix=f".bench-{tag}-{peer}-lat")
    lat_raw = lat_catalog.raw("simulated").name
    await make_topics(settings, [lat_raw])
    job = await prepare_peer(settings, tag, f"{peer}-lat", lat_raw)
    log = RESULTS / f"bench-peer-{peer}-latency.log"
    proc = spawn(peer_command(peer), {**os.environ, **job, "PYTHONUNBUFFERED": "1"}, log)
    try:
        await measure.latency_run(settings, lat_catalog, conn, job["BENCH_PEER_SCHEMA"], RATE, 3.0,
                                  wait_seconds=300)
        return await latency_phases(settings, lat_catalog, conn, job["BENCH_PEER_SCHEMA"], steady, peer, [proc])
    finally:
        _stop([proc])
        await drop_peer(settings, conn, job)
        await drop_topics(settings, [lat_raw])


def mixed_points(n: int, run_id: str) -> list[Any]:
    """n valid points mixing quotes, trades and bars (every third a 1-minute bar), each with a unique item_id."""
    sim = SimulatedSource(SimulatedSourceSettings(invalid_ratio=0.0, seed=3), run_id=run_id)
    out = []
    for i, p in enumerate(sim.batch(n)):
        if i % 3 == 2:
            mid = p.price or 100.0
            p = MarketDataPoint(symbol=p.symbol, timestamp=p.timestamp, source=p.source, data_type=DataType.BAR,
                                open=mid, high=round(mid * 1.001, 4), low=round(mid * 0.999, 4),
                                close=round(mid * 1.0005, 4), volume=p.volume, interval="1m", item_id=p.item_id)
        out.append(p)
    return out


async def quix_stock_check(settings: Any, tag: str, conn: asyncpg.Connection) -> dict[str, Any]:
    """Quix's own PostgreSQLSink on STOCK_POINTS mixed points, with its default schema auto-update and without:
    whether it ran, what landed, and how many rows lost a field they were sent with (stored as NULL)."""
    raw = f"bench-{tag}.quix-stock.raw"
    await make_topics(settings, [raw])
    run_id = f"stk{tag}"
    points = mixed_points(STOCK_POINTS, run_id)
    producer = new_producer(settings)
    await producer.start()
    try:
        for i in range(0, len(points), 5000):
            await send_batch(producer, raw, [encode(p) for p in points[i:i + 5000]])
    finally:
        await producer.stop()
    sent = {k: sum(1 for p in points if getattr(p.data_type, "value", p.data_type) == k)
            for k in ("quote", "trade", "bar")}
    out: dict[str, Any] = {"points": STOCK_POINTS, "sent_by_kind": sent, "modes": {}}
    for mode in ("auto", "fixed"):
        job = await prepare_peer(settings, tag, f"quix-stock-{mode}", raw)
        env = {**os.environ, **job, "BENCH_QUIX_STOCK_MODE": mode, "PYTHONUNBUFFERED": "1"}
        log = RESULTS / f"bench-peer-quix-stock-{mode}.log"
        print(f"  quix-stock ({mode}): Quix's PostgreSQLSink on {STOCK_POINTS:,} mixed points ...", flush=True)
        proc = spawn(peer_command("quix-stock"), env, log)
        try:
            code = await asyncio.to_thread(proc.wait, 300)
        except subprocess.TimeoutExpired:
            _stop([proc])
            code = proc.returncode
        schema = job["BENCH_PEER_SCHEMA"]
        by_kind = {r["data_type"]: dict(r) for r in await conn.fetch(
            f"SELECT data_type, count(*) AS landed, "
            f"count(*) FILTER (WHERE price IS NULL OR bid IS NULL OR ask IS NULL OR volume IS NULL) "
            f"  AS quote_trade_fields_null, "
            f"count(*) FILTER (WHERE \"open\" IS NULL OR high IS NULL OR low IS NULL OR \"close\" IS NULL "
            f"  OR \"interval\" IS NULL OR volume IS NULL) AS bar_fields_null "
            f"FROM {schema}.market_data WHERE item_id LIKE $1 GROUP BY data_type", run_id + "-%")}
        landed = sum(r["landed"] for r in by_kind.values())
        nulled = sum(r["quote_trade_fields_null"] for k, r in by_kind.items() if k in ("quote", "trade")) + \
            sum(r["bar_fields_null"] for k, r in by_kind.items() if k == "bar")
        error = next((line.strip() for line in reversed(log.read_text(errors="replace").splitlines())
                      if "Error" in line or "Exception" in line or "Invalid" in line), None)
        out["modes"][mode] = {"exit_code": code, "landed": landed, "lost": STOCK_POINTS - landed,
                              "rows_with_sent_fields_null": nulled, "by_kind": by_kind, "last_error": error,
                              "log": str(log.relative_to(ROOT))}
        print(f"    exit {code}: {landed:,} of {STOCK_POINTS:,} rows landed, {nulled:,} with a sent field "
              f"stored as NULL" + (f"; {error[:160]}" if error and (code or landed < STOCK_POINTS) else ""),
              flush=True)
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await drop_topics(settings, [job["BENCH_PEER_CLEAN"], job["BENCH_PEER_REJECTED"]])
    await drop_topics(settings, [raw])
    return out


def start_workers(env: dict[str, str], count: int, log_dir: Path, split: bool = False) -> list[subprocess.Popen[bytes]]:
    """`count` workers; `split`: each as two processes, one per set of stages (worker.stages)."""
    roles = ['["validate"]', '["write", "archive"]'] if split else [None]
    procs = []
    for i in range(count * len(roles)):
        e = {**env, "TICKFLOW_WORKER__WEB_PORT": str(17100 + i), "F_DATADIR": str(log_dir / f"bench-data-{i}")}
        if (stages := roles[i % len(roles)]) is not None:
            e["TICKFLOW_WORKER__STAGES"] = stages
        log = open(log_dir / f"bench-worker-{i}.log", "wb")
        procs.append(subprocess.Popen([sys.executable, "-m", "streams", "worker", "-l", "info"], cwd=ROOT, env=e,
                                      stdout=log, stderr=subprocess.STDOUT))
    return procs


async def pipeline(env: dict[str, str], schema: str, n: int, conn: asyncpg.Connection) -> dict[str, Any]:
    procs = start_workers(env, WORKERS, RESULTS, SPLIT)
    try:
        res = await watch(procs, schema, n, conn, "tickflow")
    except BaseException:
        _stop(procs)
        raise
    res["worker_cpu_cores_steady"] = res["cpu_cores_steady"]  # the name earlier results used
    res["procs"] = procs
    return res


def tickflow_env(tag: str) -> dict[str, str]:
    """A tickflow pipeline of its own: app id (consumer groups), topics and schema named after `tag`."""
    return {**os.environ, "TICKFLOW_WORKER__APP_ID": f"bench-{tag}", "TICKFLOW_KAFKA__TOPIC_SUFFIX": f".bench-{tag}",
            "TICKFLOW_POSTGRES__DB_SCHEMA": f"bench_{tag.replace('-', '_')}",
            "TICKFLOW_SOURCES__SIMULATED__ENABLED": "false"}


async def drain_only(env: dict[str, str], n: int, run_id: str, conn: asyncpg.Connection) -> dict[str, Any]:
    """tickflow's drain of its own preloaded topic, its keys checked, its workers stopped and schema dropped."""
    schema = env["TICKFLOW_POSTGRES__DB_SCHEMA"]
    res = await pipeline(env, schema, n, conn)
    _stop(res.pop("procs"))
    res.update(await key_check(conn, schema, run_id, n))
    await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    return res


def tickflow_maximum(drains: list[dict[str, Any]]) -> float:
    """The maximum tickflow's latency phases take 80% of: the one its table row shows (the mean of its drains),
    not the second drain's alone, which a drifting machine moves as it moves that drain."""
    return float(both_drains(drains).get("rows_per_sec_steady", drains[-1]["rows_per_sec_steady"]))


# What each of tickflow's drains reports beside the other, and what the two (before and after the peers) are
# combined into for the table: rates and costs averaged, rows lost and duplicated added, the larger peak RSS.
DRAIN_KEYS = ("rows_per_sec_steady", "cpu_us_per_row_steady", "cpu_cores_steady", "stack_cpu_us_per_row_steady",
              "machine_cpu_us_per_row_steady", "machine_cores_busy_steady", "cpu_us_per_row_total", "peak_rss_mb",
              "steady_seconds", "landed", "lost", "duplicated")


def both_drains(drains: list[dict[str, Any]]) -> dict[str, Any]:
    """The systems run one after the other, so a machine whose speed drifts during the run (this one's moves by
    1.7x within an hour) moves any ratio against the system run last; tickflow drains before the peers and after
    them, and their mean is what the peers are compared with (an A-B-A order: a steady drift cancels out)."""
    if len(drains) == 1:
        return {}
    out: dict[str, Any] = {}
    for k in DRAIN_KEYS:
        vals = [d[k] for d in drains if d.get(k) is not None]
        if not vals:
            continue
        if k in ("lost", "duplicated", "landed"):
            out[k] = sum(vals)
        elif k == "peak_rss_mb":
            out[k] = max(vals)
        else:
            out[k] = round(sum(vals) / len(vals), 2 if k.endswith("cores_steady") or "busy" in k else 1)
    return out


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


def _rates(samples: list[Any]) -> list[tuple[float, float]]:
    return [(samples[i][0], (samples[i][1] - samples[i - 1][1]) / (samples[i][0] - samples[i - 1][0]))
            for i in range(1, len(samples))]


def plot(result: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    rates = _rates(result["pipeline"]["samples"])
    a.plot([t for t, _ in rates], [r for _, r in rates], label=f"tickflow ({WORKERS} worker)")
    bare = result["peers"].get("bare")
    if bare:
        a.axhline(bare["rows_per_sec_steady"], color="gray", linestyle="--", label="bare one-hop floor (steady)")
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
    plt.close(fig)
    return True


def plot_peers(result: dict[str, Any], path: Path) -> bool:
    """The systems side by side: rows committed per second over time, then sustained rows/s, CPU per row and
    peak RSS (lost or duplicated rows written on the bars)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    systems = result["systems"]
    series = {"tickflow": result["pipeline"], **result["peers"]}
    fig, axes = plt.subplots(1, 5, figsize=(22, 4.5), gridspec_kw={"width_ratios": [2, 1, 1, 1, 1.3]})
    for name, res in series.items():
        r = _rates(res["samples"])
        axes[0].plot([t for t, _ in r], [v for _, v in r], label=name)
    axes[0].set_xlabel("seconds from start"), axes[0].set_ylabel("rows committed / s")
    axes[0].set_title("throughput over time"), axes[0].legend()
    names = [s["system"] for s in systems]
    for ax, key, title in ((axes[1], "rows_per_sec", "sustained rows/s (10-90%)"),
                           (axes[2], "cpu_us_per_row", "app CPU µs per row"),
                           (axes[3], "peak_rss_mb", "peak RSS, MB")):
        bars = ax.bar(names, [s[key] or 0 for s in systems], color=[f"C{i}" for i in range(len(systems))])
        ax.set_title(title), ax.tick_params(axis="x", rotation=30)
        if key == "rows_per_sec":
            for bar, s in zip(bars, systems, strict=True):
                if s["lost"] or s["duplicated"]:
                    ax.annotate(f"lost {s['lost']:,}\ndup {s['duplicated']:,}", (bar.get_x(), bar.get_height()),
                                fontsize=7, color="red")
    width = 0.4
    for i, (which, label) in enumerate((("low", f"{RATE:,.0f}/s"), ("load", "80% of max"))):
        xs = [j + (i - 0.5) * width for j in range(len(systems))]
        axes[4].bar(xs, [s.get(f"{which}_p99_ms") or 0 for s in systems], width, label=f"p99 at {label}")
    axes[4].set_xticks(range(len(systems)), names, rotation=30)
    axes[4].set_yscale("log"), axes[4].set_title("latency p99, ms (log)"), axes[4].legend(fontsize=7)
    fig.suptitle(f"same job, {result['points']:,} preloaded points, {result['machine']['cpus']} cores "
                 f"({result['when']})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def detectors_compiled() -> bool:
    """Whether the tickflow worker ran its detectors compiled (the bench's own interpreter sees the same build)."""
    from streams import anomalies

    return anomalies.NATIVE is not None


def system_row(name: str, res: dict[str, Any]) -> dict[str, Any]:
    """One line of the per-system table; latency at BENCH_RATE ("low") and at 80% of the system's maximum."""
    lat = {(f"{'low' if i == 0 else 'load'}_{k}"): run.get(k) for i, run in enumerate(res.get("latency") or [])
           for k in ("rate", "p50_ms", "p99_ms", "cpu_us_per_row", "cpu_cores_at_rate", "stack_cpu_us_per_row",
                     "broker_cpu_us_per_row", "postgres_cpu_us_per_row", "generator_cpu_us_per_row",
                     "cores_during_feed")}
    return {"system": name, "rows_per_sec": res["rows_per_sec_steady"], "cpu_us_per_row": res["cpu_us_per_row_steady"],
            "cpu_us_per_row_whole_run": res["cpu_us_per_row_total"],
            "stack_cpu_us_per_row": res.get("stack_cpu_us_per_row_steady"),
            "machine_cpu_us_per_row": res.get("machine_cpu_us_per_row_steady"),
            "machine_cores_busy": res.get("machine_cores_busy_steady"),
            "cpu_cores": res["cpu_cores_steady"], "peak_rss_mb": res["peak_rss_mb"], "rows": res["landed"],
            "lost": res["lost"], "duplicated": res["duplicated"], "steady_seconds": res["steady_seconds"],
            "stopped_early": res["stopped_early"], **lat}


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:,.1f}"


def print_table(systems: list[dict[str, Any]]) -> None:
    print(f"{'system':<10} {'rows/s':>9} {'CPU µs/row':>11} {'cores':>6} {'stack µs':>9} {'machine µs':>11} "
          f"{'peak RSS MB':>12} {'lost':>7} {'dup':>5} {'window s':>9}  latency p50/p99 ms at {RATE:,.0f}/s and "
          "at 80% of max")
    for s in systems:
        print(f"{s['system']:<10} {s['rows_per_sec']:>9,.0f} {s['cpu_us_per_row']:>11.1f} {s['cpu_cores']:>6.2f} "
              f"{s.get('stack_cpu_us_per_row') or 0:>9.1f} {s.get('machine_cpu_us_per_row') or 0:>11.1f} "
              f"{s['peak_rss_mb']:>12.1f} {s['lost']:>7,} {s['duplicated']:>5,} {s['steady_seconds']:>9.1f}  "
              f"{_ms(s.get('low_p50_ms'))} / {_ms(s.get('low_p99_ms'))}; "
              f"{_ms(s.get('load_p50_ms'))} / {_ms(s.get('load_p99_ms'))} at {s.get('load_rate') or 0:,.0f}/s"
              + (f" ({s['load_cpu_cores_at_rate']:.2f} cores)" if s.get("load_cpu_cores_at_rate") else "")
              + (f", machine {s['load_cores_during_feed']['machine']:.2f} of {os.cpu_count()} cores busy"
                 if (s.get("load_cores_during_feed") or {}).get("machine") is not None else ""))


async def main() -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    for peer in PEERS:
        peer_command(peer)  # an unknown name, or the Quix venv missing: say so before preloading
    settings = load_settings()
    tag = uuid.uuid4().hex[:8]
    env = tickflow_env(tag)
    catalog = load_catalog(suffix=env["TICKFLOW_KAFKA__TOPIC_SUFFIX"])
    await ensure_topics(catalog, settings.kafka.bootstrap_servers, kafka=settings.kafka)
    raw = catalog.raw("simulated").name
    run_id = f"pre{tag}"
    print(f"preloading {POINTS:,} points into {raw} ...", flush=True)
    produce_rate = await preload(settings, raw, POINTS, run_id=run_id)
    print(f"  producer: {produce_rate:,.0f} points/s")
    env_before = tickflow_env(f"{tag}-before") if TWICE else None
    if env_before is not None:  # the same points again, on topics of its own: the peers drain `raw`
        catalog_before = load_catalog(suffix=env_before["TICKFLOW_KAFKA__TOPIC_SUFFIX"])
        await ensure_topics(catalog_before, settings.kafka.bootstrap_servers, kafka=settings.kafka)
        print(f"  and into {catalog_before.raw('simulated').name}, for tickflow's drain before the peers", flush=True)
        await preload(settings, catalog_before.raw("simulated").name, POINTS, run_id=run_id)
    pg = settings.postgres
    conn = await asyncpg.connect(**pg.connect_kwargs())
    try:
        before = None
        if env_before is not None:
            print(f"tickflow, before the peers: {WORKERS} worker(s) draining {POINTS:,} points ...", flush=True)
            before = await drain_only(env_before, POINTS, run_id, conn)
            print(f"  tickflow (before): {before['rows_per_sec_steady']:,.0f} rows/s steady over "
                  f"{before['steady_seconds']:.0f} s, {before['cpu_us_per_row_steady']:.1f} µs CPU per row; "
                  f"{before['landed']:,} rows, {before['lost']:,} lost, {before['duplicated']:,} duplicated",
                  flush=True)
        peers: dict[str, dict[str, Any]] = {}
        stock = None
        for peer in PEERS:
            if peer == "quix-stock":
                print("quix-stock: Quix Streams' own PostgreSQLSink, correctness only ...", flush=True)
                stock = await quix_stock_check(settings, tag, conn)
                continue
            print(f"{peer}: draining {POINTS:,} points (bench/peers/, log in bench/results/bench-peer-{peer}.log) ...",
                  flush=True)
            res = await run_peer(settings, tag, peer, raw, run_id, POINTS, conn)
            peers[peer] = res
            print(f"  {peer}: {res['rows_per_sec_steady']:,.0f} rows/s steady over {res['steady_seconds']:.0f} s, "
                  f"{res['cpu_us_per_row_steady']:.1f} µs CPU per row, peak RSS {res['peak_rss_mb']:.1f} MB; "
                  f"{res['landed']:,} rows, {res['lost']:,} lost, {res['duplicated']:,} duplicated", flush=True)
        print(f"tickflow{', after the peers' if before else ''}: {WORKERS} worker(s)"
              f"{' split by stage' if SPLIT else ''} draining {POINTS:,} points ...", flush=True)
        pipe = await pipeline(env, f"bench_{tag}", POINTS, conn)
        procs = pipe.pop("procs")
        pipe.update(await key_check(conn, f"bench_{tag}", run_id, POINTS))
        print(f"  tickflow{' (after)' if before else ''}: {pipe['rows_per_sec_steady']:,.0f} rows/s steady over "
              f"{pipe['steady_seconds']:.0f} s, {pipe['cpu_us_per_row_steady']:.1f} µs CPU per row, "
              f"{pipe['worker_cpu_cores_steady']:.2f} cores; {pipe['landed']:,} rows, {pipe['lost']:,} lost, "
              f"{pipe['duplicated']:,} duplicated", flush=True)
        drains = [d for d in (before, pipe) if d is not None]
        try:
            latency = await latency_phases(settings, catalog, conn, f"bench_{tag}", tickflow_maximum(drains),
                                           "tickflow", procs)
            pipe["latency"] = latency
            soak = await soak_run(settings, env, procs, SOAK_SECONDS) if SOAK_SECONDS else None
            if STALL_SECONDS:
                await conn.close()  # the outage would break it
                stall = await stall_run(settings, env, procs, f"bench_{tag}", STALL_SECONDS)
                conn = await asyncpg.connect(**pg.connect_kwargs())
            else:
                stall = None
        finally:
            _stop(procs)
        usage = pipe["usage"]
        cpu_s = usage[-1][1] - usage[0][1]
        headline = {**pipe, **both_drains(drains)}  # the latency phases run on the second drain's workers
        systems = [system_row("tickflow", headline)] + [system_row(k, v) for k, v in peers.items()]
        bare = peers.get("bare")
        result = {
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
            "detectors_compiled": detectors_compiled(),
            "points": POINTS, "valid_points": POINTS, "workers": WORKERS, "split_stages": SPLIT,
            "producer_points_per_sec": round(produce_rate, 1),
            "systems": systems,
            "ratios": {f"tickflow_to_{k}": round(headline["rows_per_sec_steady"] / v["rows_per_sec_steady"], 3)
                       for k, v in peers.items() if v["rows_per_sec_steady"]},
            "tickflow_drains": [{k: d[k] for k in DRAIN_KEYS} for d in drains],
            "quix_stock_sink": stock,
            "pipeline": pipe, "pipeline_before_peers": before, "peers": peers,
            "baseline": {"rows_per_sec": bare["rows_per_sec_steady"]} if bare else None,
            "ratio_pipeline_to_baseline": round(headline["rows_per_sec_steady"] / bare["rows_per_sec_steady"], 3)
            if bare and bare["rows_per_sec_steady"] else None,
            "worker_cpu_cores_avg": round(cpu_s / max(usage[-1][0] - usage[0][0], 1e-9), 2),
            "worker_peak_rss_mb": pipe["peak_rss_mb"],
            "latency": latency,
            "soak": soak,
            "postgres_outage": stall,
        }
        name = os.environ.get("BENCH_NAME", f"throughput-{WORKERS}w" + ("-split" if SPLIT else ""))
        (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2))
        drew = plot(result, RESULTS / f"{name}.png") and plot_peers(result, RESULTS / f"{name}-peers.png")
        print(json.dumps({k: v for k, v in result.items() if k not in ("pipeline", "peers")}, indent=2))
        print_table(systems)
        print(f"wrote {RESULTS / (name + '.json')}" + (f", {name}.png and {name}-peers.png" if drew else ""))
        await conn.execute(f"DROP SCHEMA IF EXISTS bench_{tag} CASCADE")
    finally:
        await conn.close()
        await drop_topics(settings, containing=f"bench-{tag}")


if __name__ == "__main__":
    asyncio.run(main())
