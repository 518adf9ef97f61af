#!/usr/bin/env python3
"""Data quality through the whole stack, as it is judged: the injected real series of
bench/anomaly_quality_real.py, written as yfinance CSV files, replayed by a worker's own `replay` source through
the real broker into the real PostgreSQL; a labelled bar is caught when it was dead-lettered or its row in
market_data carries a flag containing "anomal" or "suspect" (the row holds the newest revision: a verdict
reached at the next bar must have updated it). Scored per (symbol, date) like shared/tools/score_anomalies.py.

    dev/stack.sh start   # the local broker and PostgreSQL
    .cache/venv/bin/python bench/anomaly_quality_stack.py                         # classic,more; seed 20240501
    .cache/venv/bin/python bench/anomaly_quality_stack.py --series classic --seed 7 --out /tmp/q.json

The same series and seed go through bench/anomaly_quality_real.py's in-process Router too; the run says whether
the stack flagged exactly the (symbol, date) keys the Router did (the stack adds partitions, the changelog-backed
detector state, the sink's revisions and the dead-letter topic). The worker runs with an app id, topic suffix
and schema of its own, dropped at the end. Results: bench/results/anomaly_quality_stack.json (--out).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402

import bench.anomaly_quality_real as real  # noqa: E402
from producers.replay import ReplaySource  # noqa: E402
from streams.config import ReplaySettings  # noqa: E402
from streams.settings import Settings, load_settings  # noqa: E402
from streams.tools.measure import drop_topics  # noqa: E402

OUT = ROOT / "bench" / "results" / "anomaly_quality_stack.json"
FLAGS = ("anomal", "suspect")


def worker_env(tag: str, folder: Path, data_dir: Path) -> dict[str, str]:
    """A pipeline of its own on the local stack: the replay source on `folder`, nothing else."""
    return {"TICKFLOW_WORKER__APP_ID": f"quality-{tag}", "TICKFLOW_KAFKA__TOPIC_SUFFIX": f".quality-{tag}",
            "TICKFLOW_POSTGRES__DB_SCHEMA": f"quality_{tag}", "TICKFLOW_WORKER__WEB_PORT": "17190",
            "TICKFLOW_SOURCES__SIMULATED__ENABLED": "false", "TICKFLOW_SOURCES__REPLAY__ENABLED": "true",
            "TICKFLOW_SOURCES__REPLAY__FILES": json.dumps([str(folder)]), "F_DATADIR": str(data_dir)}


def _key(symbol: str, ts: Any) -> tuple[str, str]:
    text = ts.astimezone(UTC).isoformat() if hasattr(ts, "astimezone") else str(ts)
    return symbol.upper(), text[:10]


async def stored(conn: asyncpg.Connection, schema: str) -> tuple[int, dict[tuple[str, str], set[str]],
                                                                 set[tuple[str, str]]]:
    """(rows + dead letters, flagged or dead-lettered (symbol, date) -> flags or rules, bar_gap event keys)."""
    flagged: dict[tuple[str, str], set[str]] = defaultdict(set)
    rows = await conn.fetch(f"SELECT symbol, timestamp, flags FROM {schema}.market_data WHERE source = 'replay'")
    for r in rows:
        if hits := {f for f in r["flags"] or () if any(w in f for w in FLAGS)}:
            flagged[_key(r["symbol"], r["timestamp"])] |= hits
    letters = await conn.fetch(f"SELECT rule, convert_from(value, 'UTF8') AS v FROM {schema}.dead_letters")
    for r in letters:
        try:
            doc = json.loads(r["v"])
            flagged[_key(str(doc["symbol"]), doc["timestamp"])].add(f"dead-lettered:{r['rule']}")
        except (ValueError, KeyError, TypeError):
            flagged[("?", "?")].add(f"dead-lettered:{r['rule']}")  # unreadable: counted, never matched
    gaps = {_key(r["symbol"], r["ts"]) for r in await conn.fetch(
        f"SELECT symbol, ts FROM {schema}.anomaly_events WHERE detector = 'bar_gap'")}
    return len(rows) + len(letters), dict(flagged), gaps


def run_stack(env: dict[str, str], total: int, timeout: float, log: Path) -> tuple[
        dict[tuple[str, str], set[str]], set[tuple[str, str]], float]:
    """Topics and tables, one worker until every point is a row or a dead letter (and stays so), its results;
    the worker stopped, its schema and topics dropped."""
    for cmd in (["topics", "create"], ["db", "migrate"]):
        subprocess.run([sys.executable, "-m", "streams", *cmd], cwd=ROOT, env=env, check=True, capture_output=True)
    os.environ.update(env)  # this process's settings (the schema, the topics) are the worker's
    settings = load_settings()
    with open(log, "wb") as out:
        worker = subprocess.Popen([sys.executable, "-m", "streams", "worker", "-l", "info"], cwd=ROOT, env=env,
                                  stdout=out, stderr=subprocess.STDOUT)
    try:
        return asyncio.run(watch(settings, worker, total, timeout, log))
    finally:
        worker.send_signal(signal.SIGINT)
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
        asyncio.run(drop(settings))


async def connect(settings: Settings) -> asyncpg.Connection:
    pg = settings.postgres
    return await asyncpg.connect(host=pg.host, port=pg.port, user=pg.user, database=pg.database,
                                 password=pg.password.get_secret_value() or None)


async def watch(settings: Settings, worker: subprocess.Popen[bytes], total: int, timeout: float, log: Path
                ) -> tuple[dict[tuple[str, str], set[str]], set[tuple[str, str]], float]:
    schema = settings.postgres.db_schema
    conn = await connect(settings)
    t0 = time.monotonic()
    try:
        seen, same = -1, 0
        while same < 3:  # three looks in a row at every point landed: the revisions too
            await asyncio.sleep(2.0)
            if worker.poll() is not None:
                raise SystemExit(f"the worker exited ({worker.returncode}); its log: {log}")
            if time.monotonic() - t0 > timeout:
                raise SystemExit(f"{seen} of {total} points landed after {timeout:.0f} s; the worker's log: {log}")
            n = (await stored(conn, schema))[0]
            same = same + 1 if n == seen and n >= total else 0
            seen = n
        _, flagged, gaps = await stored(conn, schema)
        return flagged, gaps, time.monotonic() - t0
    finally:
        await conn.close()


async def drop(settings: Settings) -> None:
    conn = await connect(settings)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {settings.postgres.db_schema} CASCADE")
    finally:
        await conn.close()
    await drop_topics(settings, containing=settings.worker.app_id)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--series", type=real.series_sets, default={"classic", "more"}, metavar="SETS",
                    help=f"series sets, comma-separated: {', '.join(real.SETS)} (default classic,more)")
    ap.add_argument("--seed", type=int, default=real.SEED, help="the injection's seed (default %(default)s)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds for every point to land")
    ap.add_argument("--out", type=Path, default=OUT, help="the JSON results (default %(default)s)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    series = real.load(args.series)
    labels = real.inject(series, random.Random(args.seed))
    tag = f"{args.seed}_{os.getpid()}"
    with tempfile.TemporaryDirectory(prefix="tickflow-quality-") as tmp:
        folder = Path(tmp) / "csv"
        folder.mkdir()
        for sym, (_, bars) in series.items():
            real.write_csv(folder, sym, bars)
        total = len(ReplaySource(ReplaySettings(files=[str(folder)])).load())
        env = {**os.environ, **worker_env(tag, folder, Path(tmp) / "data")}
        flagged, gaps, elapsed = run_stack(env, total, args.timeout, Path(tmp) / "worker.log")
        inproc = Path(tmp) / "inprocess.json"
        with contextlib.redirect_stdout(io.StringIO()):  # its own report: only its JSON is compared here
            real.main(["--series", ",".join(sorted(args.series)), "--seed", str(args.seed), "--out", str(inproc)])
        router = json.loads(inproc.read_text())
    totals = real.score(labels, flagged, gaps, total)
    router_fps = sorted(" ".join(fp.split(" ")[:2]) for fp in router["false_positives"])
    stack_fps = sorted(" ".join(fp.split(" ")[:2]) for fp in totals["false_positives"])
    result = {
        "command": " ".join(["python bench/anomaly_quality_stack.py", *(argv if argv is not None else sys.argv[1:])]),
        "seed": args.seed, "series": sorted(series), "points": total, "labelled": totals["labelled"],
        "seconds_to_land": round(elapsed, 1), **totals,
        "same_as_router": stack_fps == router_fps and all(
            totals[k] == router[k] for k in ("precision", "recall_spikes_decimal", "false_positive_rate")),
        "router": {k: router[k] for k in ("precision", "recall_spikes_decimal", "false_positive_rate")},
        "router_false_positives": router["false_positives"],
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{total} points landed in {elapsed:.0f} s; precision {totals['precision']:.3f}, recall spikes+decimal "
          f"{totals['recall_spikes_decimal']:.3f}, false-positive rate {totals['false_positive_rate']:.4%}; "
          f"router: {result['router']}; same flags as the router: {result['same_as_router']}")
    for fp in totals["false_positives"]:
        print("  false positive:", fp)
    ok = (totals["precision"] >= 0.95 and totals["recall_spikes_decimal"] >= 0.95
          and totals["false_positive_rate"] <= 0.002 and result["same_as_router"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
