"""Integration fixtures: the real local broker and the real PostgreSQL (`make stack-up`), never mocks.

Each test gets its own topic suffix, consumer group / app id, PostgreSQL schema and web port, so tests
run in any order and beside a user's own pipeline. A stack that is not running is a failure, not a skip.
"""

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
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from streams.catalog import Catalog, load_catalog
from streams.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test under tests/integration/ needs the stack: mark it, so `-m integration` (and `-m "not
    integration"`) select what they say. (A module-level pytestmark in conftest.py applies to nothing.)"""
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.integration)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Isolation:
    """Names that belong to one test only."""

    tag: str
    bootstrap: str
    pg: dict[str, Any]
    catalog: Catalog
    env: dict[str, str] = field(default_factory=dict)
    exactly_once: bool = False  # a worker of this test ran with kafka.exactly_once on (the fault table says so)

    @property
    def schema(self) -> str:
        return self.env["TICKFLOW_POSTGRES__DB_SCHEMA"]

    def topic(self, role: str) -> str:
        return self.catalog.one(role).name  # type: ignore[arg-type]

    def raw_topic(self, source: str = "simulated") -> str:
        return self.catalog.raw(source).name


async def _drop_isolation(iso: Isolation) -> None:
    """Delete the test's topics (its catalog and Faust's internal ones: all carry the tag) and its schema, so
    repeated `make test` runs do not grow the broker by hundreds of partitions each (a broker with ~8,000
    leftover partitions ran the benchmark at half speed). Best effort: a test may have left the stack down."""
    admin = AIOKafkaAdminClient(bootstrap_servers=iso.bootstrap, request_timeout_ms=10000)
    try:
        await asyncio.wait_for(admin.start(), 15)
        mine = [t for t in await admin.list_topics() if iso.tag in t]
        if mine:
            await admin.delete_topics(mine, timeout_ms=10000)
    except Exception:
        pass
    finally:
        await admin.close()
    try:
        conn = await asyncio.wait_for(asyncpg.connect(**iso.pg), 15)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {iso.schema} CASCADE")
        finally:
            await conn.close()
    except Exception:
        pass


@pytest.fixture
def iso(request: pytest.FixtureRequest) -> Iterator[Isolation]:
    settings = load_settings()
    tag = uuid.uuid4().hex[:10]
    pg = settings.postgres
    env = {
        "TICKFLOW_WORKER__APP_ID": f"it-{tag}",
        "TICKFLOW_KAFKA__TOPIC_SUFFIX": f".it-{tag}",
        "TICKFLOW_POSTGRES__DB_SCHEMA": f"it_{tag}",
        "TICKFLOW_SOURCES__SIMULATED__ENABLED": "false",
        "TICKFLOW_WORKER__METRICS_FLUSH_SECONDS": "1",
        "TICKFLOW_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "TICKFLOW_POSTGRES__PORT": str(pg.port),
    }
    isolation = Isolation(
        tag=tag,
        bootstrap=settings.kafka.bootstrap_servers,
        pg={"host": pg.host, "port": pg.port, "user": pg.user, "database": pg.database,
            "password": pg.password.get_secret_value() or None},
        catalog=load_catalog(suffix=env["TICKFLOW_KAFKA__TOPIC_SUFFIX"]),
        env=env,
    )
    yield isolation
    if not os.environ.get("TICKFLOW_TEST_KEEP"):
        asyncio.run(_drop_isolation(isolation))


@pytest.fixture(scope="session", autouse=True)
def stack_is_up() -> None:
    settings = load_settings()
    host, port = settings.kafka.bootstrap_servers.split(",")[0].rsplit(":", 1)
    for name, h, p in (("Kafka", host, int(port)), ("PostgreSQL", settings.postgres.host, settings.postgres.port)):
        try:
            socket.create_connection((h, p), timeout=3).close()
        except OSError as exc:
            pytest.fail(f"{name} is not reachable at {h}:{p} ({exc}); run `make stack-up` (make test does)")


TRUE = ("1", "true", "yes", "on")  # what pydantic reads as a true boolean from the environment


class Worker:
    """One `python -m streams worker` process with the test's environment."""

    def __init__(self, iso: Isolation, log_dir: Path, name: str = "w1", **extra_env: str) -> None:
        self.port = free_port()
        self.name = name
        self.env = {**os.environ, **iso.env, "TICKFLOW_WORKER__WEB_PORT": str(self.port),
                    "F_DATADIR": str(log_dir / f"data-{name}"), **extra_env}  # not in the repository's folder
        self.log_path = log_dir / f"worker-{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.exactly_once = self.env.get("TICKFLOW_KAFKA__EXACTLY_ONCE", "").strip().lower() in TRUE

    def start(self) -> Worker:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "streams", "worker", "-l", "info"], cwd=ROOT,
                                     env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def get(self, path: str) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")
        except (OSError, ValueError):
            return 0, None

    def owned(self, topic: str, stage: str | None = None) -> set[str]:
        """The partitions of `topic` this worker's stages (or one stage) own now, from its /health."""
        if not self.alive():
            raise AssertionError(f"worker {self.name} exited ({self.proc.returncode if self.proc else None}):\n"
                                 + self.log_text()[-3000:])
        status, h = self.get("/health")
        if status == 0 or not isinstance(h, dict):
            return set()
        names = h.get("assigned", []) if stage is None else h.get("stages", {}).get(stage, {}).get("assigned", [])
        return {p for p in names if p.startswith(topic + "[")}

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def problems(self, last: int = 40) -> str:
        """The log's last `last` distinct WARNING and ERROR messages (timestamps dropped), for a failure message."""
        seen: dict[str, None] = {}
        for line in self.log_text().splitlines():
            if "[WARNING]" in line or "[ERROR]" in line:
                seen.pop(line[line.find("] ") + 2:], None)
                seen[line[line.find("] ") + 2:]] = None
        return "\n".join(list(seen)[-last:])

    def task_dump(self, wait: float = 5.0) -> str:
        """Where each of the worker's asyncio tasks waits now (SIGUSR2, streams/logs.py), for a failure message."""
        if not self.alive():
            return "(the worker has exited)"
        marker = "asyncio tasks (on SIGUSR2)"
        before = self.log_text().count(marker)
        os.kill(self.pid, signal.SIGUSR2)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            text = self.log_text()
            if text.count(marker) > before:
                time.sleep(0.5)  # the rest of the entry
                text = self.log_text()
                return text[text.rfind(marker):]
            time.sleep(0.1)
        return f"(no task dump within {wait} s: the event loop is blocked?)"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=10)


@pytest.fixture
def workers(iso: Isolation, tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    started: list[Worker] = []

    def make(name: str = "w1", **extra_env: str) -> Worker:
        w = Worker(iso, tmp_path, name, **extra_env).start()
        started.append(w)
        iso.exactly_once = iso.exactly_once or w.exactly_once
        return w

    yield make
    for w in started:
        w.stop()
        if os.environ.get("TICKFLOW_TEST_SHOW_LOGS"):
            print(w.log_text()[-5000:])


async def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await check() if asyncio.iscoroutinefunction(check) else check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


@pytest.fixture
async def producer(iso: Isolation) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(bootstrap_servers=iso.bootstrap, acks="all", enable_idempotence=True, linger_ms=5,
                         max_request_size=4 * 1024 * 1024)
    await p.start()
    yield p
    await p.stop()


@pytest.fixture
async def pg(iso: Isolation) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(**iso.pg)
    yield conn
    if conn.is_closed():  # a fault test closed it to stop the server
        conn = await asyncpg.connect(**iso.pg)
    try:
        # A worker still stopping may write as the schema goes: PostgreSQL then picks the DROP as a deadlock's
        # victim (seen once after the SIGSTOP test); the drop is tried again, the worker being gone by then.
        for attempt in range(5):
            try:
                await conn.execute(f"DROP SCHEMA IF EXISTS {iso.schema} CASCADE")
                break
            except asyncpg.DeadlockDetectedError:
                if attempt == 4:
                    raise
                await asyncio.sleep(1.0)
    finally:
        await conn.close()


async def ensure_topics_for(iso: Isolation) -> None:
    from streams.broker import ensure_topics

    await ensure_topics(iso.catalog, iso.bootstrap)


FAULT_TABLE = ROOT / "bench" / "results" / "faults.txt"  # dev/fault_table.py copies it into README.md


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The fault report: every fault test's inputs against what landed (lost and duplicated must be 0), printed
    and written to FAULT_TABLE (overwritten by every run that ran a fault test)."""
    from tests.integration.oracles import RESULTS, report

    if RESULTS:
        lines = report(RESULTS)
        terminalreporter.section("faults injected: sent vs. landed")
        for line in lines:
            terminalreporter.write_line(line)
        FAULT_TABLE.parent.mkdir(parents=True, exist_ok=True)
        FAULT_TABLE.write_text("\n".join(lines) + "\n")
        terminalreporter.write_line(f"(written to {FAULT_TABLE.relative_to(ROOT)})")
