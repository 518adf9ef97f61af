#!/usr/bin/env python3
"""`make run`: start what is missing of the local stack, create topics and tables, start one Faust worker on
the simulated feed, and print live progress until Ctrl-C (or RUN_SECONDS). Then stop what it started and
print a summary with the row count in PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
STACK = str(ROOT / "dev" / "stack.sh")


def stack_status() -> dict[str, bool]:
    out = subprocess.run([STACK, "status"], capture_output=True, text=True, check=True).stdout
    return {line.split(":")[0]: "running" in line for line in out.splitlines() if ":" in line}


def metrics(port: int, headers: dict[str, str] | None = None) -> dict | None:
    try:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/pipeline/metrics", headers=headers or {})
        with urllib.request.urlopen(request, timeout=2) as resp:
            return json.loads(resp.read())
    except Exception:
        return None


async def row_count() -> int:
    import asyncpg

    from sinks.schema import quote_ident
    from streams.settings import get_settings

    pg = get_settings().postgres
    conn = await asyncpg.connect(**pg.connect_kwargs())
    try:
        return await conn.fetchval(f"SELECT count(*) FROM {quote_ident(pg.db_schema)}.market_data")
    finally:
        await conn.close()


def fmt(v: float | None, unit: str = "") -> str:
    return "-" if v is None else f"{v:,.1f}{unit}"


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something already listens where the worker's web server would (the worker's own bind would fail)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0


def stop_started(started: list[str]) -> None:
    """Stop the parts of the stack this run started (a stack that was already up is left running)."""
    for name in started:
        subprocess.run([STACK, "stop", name], check=False)


def start_stack(started: list[str]) -> int | None:
    """Start the stack, create the topics and migrate the schema. None when all went well; else the exit code,
    after one line saying what happened and stopping what this run started: Ctrl-C while the broker starts, or a
    step that failed and said why itself (a port in use, a setting), is no traceback and leaves no broker
    behind (its JVM ignores the Ctrl-C: a background job of dev/stack.sh)."""
    py = sys.executable
    try:
        subprocess.run([STACK, "start"], check=True)
        for cmd in (["-m", "streams", "topics", "create"], ["-m", "streams", "db", "migrate"]):
            subprocess.run([py, *cmd], check=True, cwd=ROOT)
    except KeyboardInterrupt:
        print("make run: interrupted while starting" + (f"; stopping what it started ({', '.join(started)})"
                                                        if started else ""), file=sys.stderr, flush=True)
        stop_started(started)
        return 130
    except subprocess.CalledProcessError as exc:
        step = " ".join({STACK: "dev/stack.sh", py: "python"}.get(a, a) for a in exc.cmd)
        print(f"make run: `{step}` failed (exit code {exc.returncode}; its message is above)"
              + (f"; stopping what it started ({', '.join(started)})" if started else ""), file=sys.stderr,
              flush=True)
        stop_started(started)
        return 1
    return None


def main() -> int:
    run_seconds = float(os.environ.get("RUN_SECONDS", "0") or 0)
    before = stack_status()
    started = [name for name, up in before.items() if not up]
    if (failed := start_stack(started)) is not None:
        return failed
    py = sys.executable

    from streams.settings import get_settings

    port = get_settings().worker.web_port
    if port_in_use(port):
        # Else the new worker died on its bind after joining the group, while this loop printed the other
        # worker's numbers as its own.
        print(f"make run: 127.0.0.1:{port} is already in use (another `make run` or worker?); stop it, or give this "
              f"one another port: TICKFLOW_WORKER__WEB_PORT=... make run", file=sys.stderr, flush=True)
        stop_started(started)
        return 1
    log_path = ROOT / ".cache" / "stack" / "logs" / "worker.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    rows_before = asyncio.run(row_count())
    print(f"worker log: {log_path}   metrics: http://127.0.0.1:{port}/pipeline/metrics")
    with open(log_path, "ab") as log:
        level = {"WARNING": "warn", "CRITICAL": "crit"}.get(lvl := get_settings().pipeline.log_level or "INFO",
                                                            lvl.lower())  # PIPELINE_LOG_LEVEL=DEBUG make run
        worker = subprocess.Popen([py, "-m", "streams", "worker", "-l", level], cwd=ROOT,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    stop = {"now": False}
    signal.signal(signal.SIGINT, lambda *_: stop.update(now=True))
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    t0 = time.monotonic()
    last: dict | None = None
    print(f"{'time':>6} {'points/s':>10} {'processed':>11} {'rejected':>9} {'written':>10} "
          f"{'p50 ms':>8} {'p99 ms':>8} {'lag':>7}")
    try:
        while not stop["now"]:
            time.sleep(1.0)
            if worker.poll() is not None:
                print(f"worker exited with code {worker.returncode}; see {log_path}", file=sys.stderr)
                break
            m = metrics(port, get_settings().worker.web_headers())
            if m:
                last = m
                print(f"{time.monotonic() - t0:6.0f} {fmt(m['throughput_per_sec']):>10} {m['total_processed']:>11,} "
                      f"{m['rejected_points']:>9,} {m['written_points']:>10,} {fmt(m['p50_latency_ms']):>8} "
                      f"{fmt(m['p99_latency_ms']):>8} {m['queue_size'] if m['queue_size'] is not None else '-':>7}",
                      flush=True)
            if run_seconds and time.monotonic() - t0 >= run_seconds:
                break
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
        rows = asyncio.run(row_count())
        print("\n== summary ==")
        if last:
            # The metrics table's counts: since it was created (earlier runs included), at the last poll, before
            # the stop wrote the batches in flight.
            print(f"processed {last['total_processed']:,}  valid {last['valid_points']:,}  "
                  f"rejected {last['rejected_points']:,}  written {last['written_points']:,}  "
                  "(the worker's counts at the last poll, earlier runs included)")
            print(f"latency avg {fmt(last['avg_latency_ms'], ' ms')}  p50 {fmt(last['p50_latency_ms'], ' ms')}  "
                  f"p95 {fmt(last['p95_latency_ms'], ' ms')}  p99 {fmt(last['p99_latency_ms'], ' ms')}")
            for name, entry in sorted(last["sources"].items()):  # every source's (make run with a replay too)
                if rules := entry.get("rejected_by_rule"):
                    print(f"rejected by rule ({name}): " + ", ".join(f"{k} {v}" for k, v in sorted(rules.items())))
        print(f"rows in PostgreSQL market_data: {rows:,} ({rows - rows_before:,} written by this run, its stop "
              "included)")
        stop_started(started)
    return 0 if worker.returncode in (0, None, -signal.SIGTERM) else 1


if __name__ == "__main__":
    sys.exit(main())
