"""bench/latency_timeline.py's bookkeeping: /proc parsing, JVM thread names, ticks into tenths, the sampler."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.unit.bench.scripts import load

timeline = load("latency_timeline")


def test_a_stat_line_is_read_past_a_name_with_spaces_and_parentheses(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    # pid (comm) state ppid ... utime (field 14) stime (field 15)
    stat.write_text("42 (G1 Conc#0 (x) y) S 1 " + " ".join(["0"] * 9) + " 120 30 " + " ".join(["0"] * 30) + "\n")
    assert timeline._ticks(str(stat)) == ("G1 Conc#0 (x) y", 150)


def test_jvm_threads_are_grouped_by_name_without_their_number() -> None:
    names = ["G1 Conc#0", "GC Thread#1", "C2 CompilerThre", "data-plane-kafk", "kafka-1-raft-io", "VM Thread"]
    assert [timeline._THREAD_NUMBER.sub("", n).strip() for n in names] == [
        "G1 Conc", "GC Thread", "C2 CompilerThre", "data-plane-kafk", "kafka-1-raft-io", "VM Thread"]


def test_ticks_go_to_the_tenth_they_ended_in_as_cores() -> None:
    hz = timeline.TICKS
    samples = [(1000.02, {"worker": hz // 20}), (1000.07, {"worker": hz // 20, "machine": hz // 10}),
               (1000.12, {"machine": hz // 5})]
    cores = timeline.cores_by_tenth(samples)
    assert cores[10000] == {"worker": 1.0, "machine": 1.0}  # 0.1 s of CPU in 0.1 s: a whole core
    assert cores[10001] == {"machine": 2.0}


def test_the_sampler_sees_a_busy_worker_and_the_machine() -> None:
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # stands in for the worker
    try:
        sampler = timeline.Sampler(busy.pid, interval=0.02)
        sampler.start()
        time.sleep(0.6)
        sampler.halt.set()
        sampler.join()
    finally:
        busy.kill()
        busy.wait()
    total = {k: sum(s.get(k, 0) for _, s in sampler.samples) for k in ("worker", "this process", "machine")}
    assert len(sampler.samples) >= 10
    assert total["worker"] >= 0.3 * timeline.TICKS  # most of a core for most of 0.6 s
    assert total["machine"] >= total["worker"]
