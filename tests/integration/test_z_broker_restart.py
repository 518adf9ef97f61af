"""The broker killed with -9 and restarted during production: producers and consumers reconnect by
themselves and the oracles hold. (Named to run last: it restarts the local stack's broker, by the pid the
stack recorded, and waits until it answers again.)"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

from tests.integration.conftest import ROOT, ensure_topics_for
from tests.integration.oracles import check_oracles, fault_inputs, produce_all, wait_for_rows

STACK = str(ROOT / "dev" / "stack.sh")


def broker_pid() -> int:
    stack_dir = Path(os.environ.get("STACK_DIR", ROOT / ".cache" / "stack"))
    return int((stack_dir / "kafka" / "pid").read_text())


async def test_broker_kill_9_and_restart_during_production(iso, workers, producer, pg) -> None:
    await ensure_topics_for(iso)
    inputs = fault_inputs(seed=53)
    messages = inputs.messages
    w = workers()
    half = len(messages) // 2
    await produce_all(producer, iso.raw_topic(), messages[:half])

    await wait_for_rows(iso, pg, 100, "the worker to be writing")
    pid = broker_pid()
    os.kill(pid, signal.SIGKILL)
    await asyncio.sleep(3)
    # After an unclean kill the broker recovers every partition's log (all the earlier tests' topics too).
    restart = await asyncio.to_thread(subprocess.run, [STACK, "start", "kafka"], timeout=300,
                                      capture_output=True, text=True)
    assert restart.returncode == 0, restart.stderr[-3000:]
    await produce_all(producer, iso.raw_topic(), messages[half:], half)
    await check_oracles(iso, pg, inputs, "broker kill -9 + restart")
    assert w.alive(), w.log_text()[-3000:]
