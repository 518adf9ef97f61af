"""The broker killed with -9 and restarted during production: records are produced WHILE it is down (by a
producer whose retries outlast the outage), producers and consumers reconnect by themselves, and the oracles
hold. (Named to run last: it restarts the local stack's broker, by the pid the stack recorded, and waits until
it answers again.)"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
from pathlib import Path

from aiokafka import AIOKafkaProducer

from tests.integration.conftest import ROOT, ensure_topics_for
from tests.integration.oracles import check_oracles, fault_inputs, produce_all, wait_for_rows

STACK = str(ROOT / "dev" / "stack.sh")
OUTAGE_MS = 600_000  # longer than the restart may take (it recovers every partition's log)


def broker_pid() -> int:
    stack_dir = Path(os.environ.get("STACK_DIR", ROOT / ".cache" / "stack"))
    return int((stack_dir / "kafka" / "pid").read_text())


def broker_answers(bootstrap: str) -> bool:
    host, port = bootstrap.split(",")[0].rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
        return True
    except OSError:
        return False


async def test_broker_kill_9_and_restart_during_production(iso, workers, pg) -> None:
    await ensure_topics_for(iso)
    inputs = fault_inputs(seed=53)
    messages = inputs.messages
    raw = iso.raw_topic()
    # Idempotent, acks=all, and a delivery timeout longer than the outage: it keeps retrying, never gives up.
    producer = AIOKafkaProducer(bootstrap_servers=iso.bootstrap, acks="all", enable_idempotence=True,
                                linger_ms=5, max_request_size=4 * 1024 * 1024, request_timeout_ms=OUTAGE_MS,
                                retry_backoff_ms=500)
    await producer.start()
    try:
        w = workers()
        half = len(messages) // 2
        await produce_all(producer, raw, messages[:half])
        await wait_for_rows(iso, pg, 100, "the worker to be writing")

        os.kill(broker_pid(), signal.SIGKILL)
        for _ in range(20):
            if not broker_answers(iso.bootstrap):
                break
            await asyncio.sleep(0.5)
        assert not broker_answers(iso.bootstrap), "the broker still answers after kill -9"
        # The second half is handed to the producer while nothing listens on the broker's port.
        sending = asyncio.create_task(produce_all(producer, raw, messages[half:], half))
        await asyncio.sleep(3)
        assert not broker_answers(iso.bootstrap) and not sending.done(), "records were not sent during the outage"
        restart = await asyncio.to_thread(subprocess.run, [STACK, "start", "kafka"], timeout=300,
                                          capture_output=True, text=True)
        assert restart.returncode == 0, restart.stderr[-3000:]
        await asyncio.wait_for(sending, OUTAGE_MS / 1000)  # every record acknowledged after the restart
    finally:
        await producer.stop()
    try:
        await check_oracles(iso, pg, inputs, "broker kill -9 + restart, producing while down")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nthe worker's last warnings and errors:\n{w.problems()}\n"
                             f"where its tasks wait:\n{w.task_dump()}") from None
    assert w.alive(), w.log_text()[-3000:]
