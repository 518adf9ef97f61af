"""The shared-stack and machine CPU that bench/throughput.py reports per row next to each system's own: the
broker and PostgreSQL processes are found by name (a postgres process's exited children count through its
cutime), and the machine's busy time covers at least what one busy process burnt."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from types import ModuleType

from tests.unit.bench import scripts


def _bench() -> ModuleType:
    return scripts.load("throughput")


def _burn(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_the_machine_busy_time_covers_a_busy_process_and_no_more_than_the_cores() -> None:
    bench = _bench()
    wall0, own0, machine0 = time.monotonic(), time.process_time(), bench.machine_cpu()
    _burn(0.4)
    wall, own, machine = time.monotonic() - wall0, time.process_time() - own0, bench.machine_cpu() - machine0
    assert machine >= 0.8 * own  # what this process burnt is inside (clock ticks round to 10 ms)
    assert machine <= (os.cpu_count() or 1) * wall + 0.05  # never more than every core all the time


# A child that renames itself "postgres" (as /proc/<pid>/comm shows it), burns CPU in a grandchild it reaps, then
# burns its own: the stack counts both, its own time while it lives and the reaped child's through its cutime.
CHILD = """
import os, sys, time
with open("/proc/self/comm", "w") as f:
    f.write("postgres")
def burn(s):
    end = time.process_time() + s
    while time.process_time() < end:
        pass
pid = os.fork()
if pid == 0:
    burn(0.3)
    os._exit(0)
os.waitpid(pid, 0)
burn(0.3)
print("done", flush=True)
sys.stdin.read()
"""


def test_the_stack_counts_a_postgres_process_and_its_reaped_children() -> None:
    bench = _bench()
    before = bench.stack_cpu()
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == b"done"
        grew = bench.stack_cpu() - before
    finally:
        child.communicate(b"")
    # 0.6 s burnt under the name (other postgres or broker processes on this machine only add to it)
    assert grew >= 0.5, grew
