"""The validate stage's CPU per record, in-process (no Kafka): raw bytes through Router.route_run, all detectors on.

Why: the worker's CPU per row is mostly this path (rules, pydantic, the detector suite, the clean record's
bytes), and wall time on a shared 2-core machine moves by 10-20% from one minute to the next. This script feeds
the same deterministic records (producers/simulated.py's seeded quotes and trades, fixed event times) to the
path and reports

- wall time per record (best of --repeat runs, each from a fresh router), and
- with --callgrind: CPU instructions per record under `valgrind --tool=callgrind`, from two runs that differ
  only in the number of measured records (start-up, imports and warm-up cancel out). Instruction counts are
  stable to a fraction of a percent where wall times are not.

It runs against any tree of the project that has the same simulated producer: `--tree /tmp/old` measures a
`git worktree` of an older commit with this venv (the layout before 0360ada, streams/validate.py `route`, is
supported too), so two commits are compared with one command each:

    .cache/venv/bin/python bench/validate_cost.py                       # this tree, wall time
    .cache/venv/bin/python bench/validate_cost.py --callgrind           # + instructions per record
    .cache/venv/bin/python bench/validate_cost.py --tree /tmp/old --callgrind
    .cache/venv/bin/python bench/validate_cost.py --profile 25          # cProfile, top 25 by own time
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BASE_TIME = datetime(2026, 1, 5, 14, 30, tzinfo=UTC)  # a Monday, NYSE open: fixed, so every run sees the same data
STEP_US = 1000  # event time between two records (all symbols): 1,000 points/s, the simulated feed's default rate
SEND_MS = 10  # the simulated producer sends a batch every 10 ms: its records share the producer's timestamp
RUN = 200  # records routed together: the validate stage's YIELD_EVERY, its longest run of one partition's records


class RawRecord:
    """What aiokafka hands the stage: the fields Router.route_run reads."""

    __slots__ = ("headers", "key", "offset", "partition", "timestamp", "topic", "value")

    def __init__(self, topic: str, offset: int, key: bytes, value: bytes, timestamp: int) -> None:
        self.topic, self.partition, self.offset = topic, 0, offset
        self.key, self.value, self.timestamp, self.headers = key, value, timestamp, []


def records(n: int, symbols: int, seed: int) -> list[RawRecord]:
    """n raw records of raw.simulated: seeded quotes and trades (alternating), valid, fixed event times."""
    from producers.simulated import SimulatedSource
    from streams.settings import SimulatedSourceSettings

    names = [f"SYM{i:02d}" for i in range(symbols)]
    src = SimulatedSource(SimulatedSourceSettings(symbols=names, seed=seed, invalid_ratio=0.0), run_id="bench")
    base_us = int(BASE_TIME.timestamp()) * 1_000_000
    out = []
    for i in range(n):
        us = base_us + i * STEP_US + 137 * (i % 7)  # event times with microseconds, strictly increasing
        p = src.point(now=datetime.fromtimestamp(us // 1_000_000, UTC).replace(microsecond=us % 1_000_000))
        sent_ms = (us // 1000 // SEND_MS + 1) * SEND_MS  # the end of the 10 ms send slot
        out.append(RawRecord("raw.simulated", i, p.symbol.encode(), p.model_dump_json(exclude_none=True).encode(),
                             sent_ms))
    return out


def make_route(detect: bool) -> Callable[[list[Any], float], list[Any]]:
    """A fresh validate path (empty detector state) of whichever tree is on sys.path: route(run, now) -> the
    outputs of a run of records (one partition's, at most the stage's YIELD_EVERY), as the stage routes them."""
    try:
        from streams.stages import validate as v  # the layout from 0360ada on
    except ImportError:
        v = None
    if v is not None:
        from streams.stages.detect import AnomalyTracker
        from streams.stages.metrics import MetricsDelta
        from streams.stages.topics import catalog

        s = v.settings
        tracker = AnomalyTracker(s.anomalies, s.validation.anomaly_state_flush_seconds, {}) if detect else None
        router = v.Router(v.Validator(s.validation), catalog, tracker, s.validation.quarantine_sources)
        delta = MetricsDelta()
        if hasattr(router, "route_run"):  # session 34 on: the stage routes runs of a partition's records
            return lambda run, now: router.route_run(run, "simulated", delta, now)[0]
        return lambda run, now: [out for rec in run for out in router.route(rec, delta, now, "simulated")]
    # Before 0360ada: module-level route() over module-level detector state.
    from collections import defaultdict

    from streams import detect as old_detect
    from streams import metrics
    from streams import validate as old_v

    old_detect.anomaly_state = {}  # the Faust table, replaced by a dict (nothing is saved while measuring)
    old_detect.stage = old_detect.AnomalyStage(old_v.settings.anomalies,
                                               old_v.settings.validation.anomaly_state_flush_seconds)
    old_v.anomaly_stage = old_detect.stage
    old_v.DETECT = detect
    validator = old_v.Validator(old_v.settings.validation)
    deltas: dict[str, dict[str, Any]] = defaultdict(metrics.new_delta)
    return lambda run, now: [out for rec in run for out in old_v.route(validator, rec, deltas, now)]


def worker_gc() -> str:
    """The garbage collector set as the measured tree's worker sets it after start-up (streams/app.py settle_heap,
    from session 20 on; before it, Python's thresholds): its collections are part of the path's cost."""
    try:
        from streams.app import settings, settle_heap
    except ImportError:
        return "python's"
    settle_heap(settings.worker.gc_young_threshold)
    return f"young generation every {gc.get_threshold()[0]:,}"


def run(recs: list[RawRecord], warmup: int, detect: bool) -> tuple[float, dict[str, int]]:
    """Warm up on the first `warmup` records, then route the rest: (seconds, output topics counted)."""
    route = make_route(detect)
    now = time.time()
    for i in range(0, warmup, RUN):
        route(recs[i:min(i + RUN, warmup)], now)
    counts: dict[str, int] = {}
    measured = recs[warmup:]
    runs = [measured[i:i + RUN] for i in range(0, len(measured), RUN)]
    t0 = time.perf_counter()
    for run_ in runs:
        for out in route(run_, now):
            counts[out.topic] = counts.get(out.topic, 0) + 1
    return time.perf_counter() - t0, counts


def callgrind_instructions(argv: list[str], n: int, generate: int) -> int:
    """Total instructions (Ir) of this script routing `n` measured records under callgrind."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, __file__, *argv,
               "-n", str(n), "--generate", str(generate), "--repeat", "1", "--quiet"]
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        m = re.search(r"^summary:\s+(\d+)", out.read_text(), re.MULTILINE)
        if m is None:
            raise RuntimeError("no summary line in the callgrind output")
        return int(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tree", type=Path, default=ROOT, help="the project tree to measure (default: this one)")
    ap.add_argument("-n", type=int, default=20_000, help="measured records (default 20,000)")
    ap.add_argument("--warmup", type=int, default=2_000, help="records routed first, not measured")
    ap.add_argument("--symbols", type=int, default=8, help="simulated symbols (default 8)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=5, help="timed runs, each from a fresh router; the best is kept")
    ap.add_argument("--no-detect", action="store_true", help="rules only (validation.detect_anomalies off)")
    ap.add_argument("--profile", type=int, metavar="TOP", help="cProfile one run, print the TOP functions")
    ap.add_argument("--callgrind", action="store_true", help="also count instructions per record (valgrind)")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    ap.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--generate", type=int, default=0, help=argparse.SUPPRESS)  # records made (>= n), see callgrind
    args = ap.parse_args()

    tree = args.tree.resolve()
    sys.path.insert(0, str(tree))
    detect = not args.no_detect
    # Under callgrind both runs make the same records, so making them cancels out of the difference too.
    recs = records(args.warmup + max(args.n, args.generate), args.symbols, args.seed)[:args.warmup + args.n]
    collector = worker_gc()

    if args.profile:
        import cProfile
        import pstats

        run(recs, args.warmup, detect)  # imports and first-call costs outside the profile
        prof = cProfile.Profile()
        prof.enable()
        run(recs, args.warmup, detect)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(args.profile)
        return

    best, counts = min((run(recs, args.warmup, detect) for _ in range(max(1, args.repeat))), key=lambda r: r[0])
    if args.quiet:
        return
    result: dict[str, Any] = {
        "tree": str(tree), "commit": _commit(tree), "records": args.n, "warmup": args.warmup,
        "symbols": args.symbols, "detectors": detect, "us_per_record": round(best / args.n * 1e6, 2),
        "outputs": counts, "gc": collector,
    }
    if args.callgrind:
        common = ["--tree", str(tree), "--warmup", str(args.warmup), "--symbols", str(args.symbols),
                  "--seed", str(args.seed)] + (["--no-detect"] if args.no_detect else [])
        small, large = args.n // 4, args.n
        ir_small = callgrind_instructions(common, small, large)
        ir_large = callgrind_instructions(common, large, large)
        result["instructions_per_record"] = round((ir_large - ir_small) / (large - small))
        result["callgrind_runs"] = {str(small): ir_small, str(large): ir_large}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        line = f"{result['commit']}  {result['us_per_record']:.2f} us/record"
        if "instructions_per_record" in result:
            line += f"  {result['instructions_per_record']:,} instructions/record"
        print(f"{line}  ({args.n:,} records, {args.symbols} symbols, detectors {'on' if detect else 'off'}, "
              f"outputs {counts}, gc: {collector})")


def _commit(tree: Path) -> str:
    try:
        sha = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--", "streams", "producers"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "?"


if __name__ == "__main__":
    main()
