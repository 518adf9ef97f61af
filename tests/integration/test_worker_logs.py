"""A real worker with `worker.log_format: json`: every log line it writes (standard error, where Faust's
logging goes without -f) is one JSON object with time, level, logger and message, from the start through a
clean stop, and the secrets of its settings never show. Standard output stays empty: Faust's start-up banner
(printed by its command line before logging is set up) is not JSON, so a JSON worker runs Faust quiet."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import IO

from tests.integration.conftest import ROOT, Worker, ensure_topics_for, wait_until

TOKEN = "FAKE-SECRET-it-logs-token-8d1e4b7a9c"


def _start(w: Worker, out: IO[bytes], err: IO[bytes]) -> None:
    """The worker as conftest's Worker starts it, but with standard output and error kept apart."""
    w.proc = subprocess.Popen([sys.executable, "-m", "streams", "worker", "-l", "info"], cwd=ROOT, env=w.env,
                              stdout=out, stderr=err, start_new_session=True)


async def test_json_worker_log_lines_all_parse(iso, tmp_path: Path) -> None:
    await ensure_topics_for(iso)
    w = Worker(iso, tmp_path, "json", TICKFLOW_WORKER__LOG_FORMAT="json", TICKFLOW_WORKER__WEB_TOKEN=TOKEN)
    out_path, err_path = tmp_path / "stdout.log", tmp_path / "stderr.log"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        _start(w, out, err)
        try:
            await wait_until(lambda: w.get("/health")[0] == 200 or not w.alive(), 120, "the worker's /health 200")
            assert w.alive(), err_path.read_text(errors="replace")[-3000:]
        finally:
            assert w.stop(signal.SIGTERM) is not None
    stderr, stdout = err_path.read_text(), out_path.read_text()
    assert TOKEN not in stderr and TOKEN not in stdout

    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) >= 10, stderr[-3000:]
    parsed, bad = [], []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            bad.append(line)
    assert not bad, "log lines that are not JSON:\n" + "\n".join(bad[:20])
    for rec in parsed:
        assert isinstance(rec, dict) and {"time", "level", "logger", "message"} <= rec.keys(), rec
        assert rec["time"].endswith("Z") and datetime.fromisoformat(rec["time"]).utcoffset().total_seconds() == 0
    loggers = {rec["logger"] for rec in parsed}
    assert any(name.startswith("faust") for name in loggers), loggers
    assert any(name.startswith("streams") for name in loggers), loggers
    assert any(rec["message"].startswith("[^Worker]: Stopping") for rec in parsed), "the stop was not logged"

    # Standard output: nothing, not even Faust's banner table.
    assert stdout.strip() == "", stdout[-3000:]


async def test_sigusr2_logs_where_each_task_of_the_worker_waits(iso, workers) -> None:
    """`kill -USR2 <pid>` (README, Troubleshooting): the stages' loops show down to the client's await."""
    await ensure_topics_for(iso)
    w = workers()
    await wait_until(lambda: w.get("/health")[0] == 200 or not w.alive(), 120, "the worker's /health 200")
    dump = w.task_dump()
    assert dump.startswith("asyncio tasks (on SIGUSR2)"), dump[-2000:]
    assert "in _run" in dump and "stages/base.py" in dump, dump[-4000:]
    assert "aiokafka/" in dump and "in getmany" in dump, dump[-4000:]  # followed into the client library
    assert w.alive()


async def test_a_worker_that_creates_the_topics_logs_which(iso, workers) -> None:
    """The start-up check runs before Faust configures logging: its INFO line was lost."""
    w = workers("creates")
    await wait_until(lambda: w.get("/health")[0] == 200 or not w.alive(), 120, "the worker's /health 200")
    assert w.alive(), w.log_text()[-3000:]
    line = next((x for x in w.log_text().splitlines() if "created topics: " in x), "")
    assert iso.raw_topic() in line and iso.catalog.one("clean").name in line, w.log_text()[-3000:]
