"""Replication under a broker failure: the three-node loopback cluster (`dev/stack.sh cluster-start`), topics at
replication factor 3 with min.insync.replicas=2, a worker on the cluster, an acks=all idempotent producer
sending while the broker that leads the raw topic's partition 0 is killed with -9 and later brought back.

What it proves: the partition moves to another replica, writes keep being acknowledged by the two replicas
left (min ISR 2), producer, worker and sink ride through the leader change, the killed node rejoins the ISR,
and PostgreSQL ends with every valid input exactly once (the oracles in oracles.py). Named to run after the
single-broker restart test; it starts the cluster if it is not running and stops it again if it started it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from streams.catalog import load_catalog
from streams.settings import load_settings
from tests.integration.conftest import ROOT, Isolation, _drop_isolation, ensure_topics_for, wait_until
from tests.integration.oracles import check_oracles, fault_inputs, produce_all, wait_for_rows

STACK = str(ROOT / "dev" / "stack.sh")
BASE_PORT = int(os.environ.get("CLUSTER_BASE_PORT", "29092"))
NODES = {n: BASE_PORT + 2 * (n - 1) for n in (1, 2, 3)}  # node id -> broker port, as dev/stack.sh lays them out
BOOTSTRAP = ",".join(f"127.0.0.1:{p}" for p in NODES.values())
REPLICATION, MIN_ISR = 3, 2
DOWN_SECONDS = 8  # the killed node stays down this long after its partition moved


def node_pid(node: int) -> int:
    stack_dir = Path(os.environ.get("STACK_DIR", ROOT / ".cache" / "stack"))
    return int((stack_dir / "cluster" / f"node{node}" / "pid").read_text())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def stack(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([STACK, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """The three-node cluster's bootstrap list; started here (and stopped after) if it was not running."""
    started_here = False
    if stack("cluster-status").returncode != 0:
        t0 = time.monotonic()
        up = stack("cluster-start")
        assert up.returncode == 0, f"the three-node cluster did not start:\n{up.stderr[-3000:]}"
        print(f"\n[cluster] started in {time.monotonic() - t0:.1f} s")
        started_here = True
    yield BOOTSTRAP
    if started_here and not os.environ.get("TICKFLOW_TEST_KEEP"):
        stack("cluster-stop")


@pytest.fixture
def iso(cluster: str) -> Iterator[Isolation]:
    """conftest's isolation, on the cluster, with production durability for every topic (Faust's too)."""
    settings = load_settings()
    tag = uuid.uuid4().hex[:10]
    pg = settings.postgres
    env = {
        "TICKFLOW_WORKER__APP_ID": f"it-{tag}",
        "TICKFLOW_KAFKA__TOPIC_SUFFIX": f".it-{tag}",
        "TICKFLOW_POSTGRES__DB_SCHEMA": f"it_{tag}",
        "TICKFLOW_SOURCES__SIMULATED__ENABLED": "false",
        "TICKFLOW_WORKER__METRICS_FLUSH_SECONDS": "1",
        "TICKFLOW_KAFKA__BOOTSTRAP_SERVERS": cluster,
        "TICKFLOW_KAFKA__REPLICATION_FACTOR": str(REPLICATION),
        "TICKFLOW_KAFKA__MIN_INSYNC_REPLICAS": str(MIN_ISR),
        "TICKFLOW_POSTGRES__PORT": str(pg.port),
    }
    isolation = Isolation(
        tag=tag,
        bootstrap=cluster,
        pg={"host": pg.host, "port": pg.port, "user": pg.user, "database": pg.database,
            "password": pg.password.get_secret_value() or None},
        catalog=load_catalog(suffix=env["TICKFLOW_KAFKA__TOPIC_SUFFIX"]).for_cluster(REPLICATION, MIN_ISR),
        env=env,
    )
    yield isolation
    if not os.environ.get("TICKFLOW_TEST_KEEP"):
        asyncio.run(_drop_isolation(isolation))


async def partition(admin: AIOKafkaAdminClient, topic: str, index: int = 0) -> dict[str, Any]:
    """The partition as the cluster's metadata has it now (leader, replicas, isr). The admin client asks one
    node; while a node is dead that may be the dead one, so a failed ask is retried (another node answers)."""
    for attempt in range(20):
        try:
            (desc,) = await admin.describe_topics([topic])
            return next(p for p in desc["partitions"] if p["partition"] == index)
        except KafkaError:
            if attempt == 19:
                raise
            await asyncio.sleep(0.5)
    raise AssertionError("unreachable")


TOPIC_LEVEL = 1  # DescribeConfigs config_source DYNAMIC_TOPIC_CONFIG: set on the topic, not inherited


async def min_isr(admin: AIOKafkaAdminClient, topic: str, topic_level: bool = False) -> str | None:
    """The topic's min.insync.replicas; with topic_level, only if it was set on the topic itself (the cluster's
    brokers default to 2 too, so the value alone would not tell whether we set it)."""
    resp = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic,
                                                        {"min.insync.replicas": None})])
    entries = resp[0].to_object()["resources"][0]["config_entries"]
    return next((e["config_value"] for e in entries if e["config_names"] == "min.insync.replicas"
                 and (not topic_level or e.get("config_source") == TOPIC_LEVEL)), None)


class PacedSender:
    """Sends in chunks while the fault runs, noting when each chunk was acknowledged (acks=all)."""

    def __init__(self, producer: AIOKafkaProducer, topic: str, messages: list[tuple[bytes, bytes]], start: int,
                 chunk: int = 100, every: float = 0.3) -> None:
        self.producer, self.topic, self.messages, self.start = producer, topic, messages, start
        self.chunk, self.every = chunk, every
        self.acked: list[tuple[float, int]] = []  # (monotonic time, records acknowledged so far)

    async def run(self) -> None:
        for off in range(0, len(self.messages), self.chunk):
            part = self.messages[off:off + self.chunk]
            await produce_all(self.producer, self.topic, part, self.start + off)
            self.acked.append((time.monotonic(), off + len(part)))
            await asyncio.sleep(self.every)

    def acked_between(self, t0: float, t1: float) -> int:
        """Records whose acknowledgement arrived in [t0, t1]."""
        before = max((n for t, n in self.acked if t < t0), default=0)
        upto = max((n for t, n in self.acked if t <= t1), default=0)
        return upto - before


async def coordinator_ready(iso: Isolation, topic: str, timeout: float = 180) -> float:
    """Join a throwaway group and commit: on a cluster just started, the first join creates __consumer_offsets
    (RF 3) and elects its leaders, which on a loaded two-core machine can take longer than the worker's first
    poll budget. Returns the seconds it took."""
    t0 = time.monotonic()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=iso.bootstrap, group_id=f"warm-{iso.tag}",
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        async def joined() -> bool:
            await consumer.getmany(timeout_ms=500)
            if not consumer.assignment():
                return False
            await consumer.commit()
            return True

        await wait_until(joined, timeout, "a consumer group to join and commit on the cluster")
    finally:
        await consumer.stop()
    return time.monotonic() - t0


async def test_partition_leader_kill_9_in_three_broker_cluster(iso, workers, pg) -> None:
    t_test = time.monotonic()
    await ensure_topics_for(iso)
    raw = iso.raw_topic()
    inputs = fault_inputs(seed=61)
    messages = inputs.messages
    first = len(messages) // 4
    admin = AIOKafkaAdminClient(bootstrap_servers=iso.bootstrap, request_timeout_ms=10000)
    await admin.start()
    producer = AIOKafkaProducer(bootstrap_servers=iso.bootstrap, acks="all", enable_idempotence=True, linger_ms=5,
                                max_request_size=4 * 1024 * 1024, request_timeout_ms=60_000,
                                retry_backoff_ms=200)
    await producer.start()
    sending: asyncio.Task[None] = asyncio.ensure_future(asyncio.sleep(0))
    try:
        before = await partition(admin, raw)
        assert len(before["replicas"]) == REPLICATION and len(before["isr"]) == REPLICATION, before
        assert await min_isr(admin, raw) == str(MIN_ISR)

        warm = await coordinator_ready(iso, raw)
        w = workers()
        await produce_all(producer, raw, messages[:first])
        try:
            await wait_for_rows(iso, pg, 100, "the worker to be writing from the cluster", timeout=180)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; group coordinator ready after {warm:.1f} s; worker log:\n"
                                 f"{w.log_text()[-6000:]}") from None

        # Faust's own topics (table changelogs, the metrics topic) get the same min.insync.replicas.
        app_id = iso.env["TICKFLOW_WORKER__APP_ID"]
        for internal in (f"{app_id}-pipeline_metrics-changelog", f"{app_id}-anomaly_state-changelog",
                         f"{app_id}-metrics"):
            assert await min_isr(admin, internal, topic_level=True) == str(MIN_ISR), internal

        sender = PacedSender(producer, raw, messages[first:], first)
        sending = asyncio.create_task(sender.run())
        await asyncio.sleep(2)
        assert not sending.done(), "production ended before the fault"
        leader = (await partition(admin, raw))["leader"]
        assert leader in NODES, f"raw partition 0 has no leader ({leader})"
        pid = node_pid(leader)
        os.kill(pid, signal.SIGKILL)
        t_kill = time.monotonic()
        await wait_until(lambda: not alive(pid), 10, f"node {leader} (pid {pid}) to die")

        async def moved() -> dict[str, Any] | None:
            p = await partition(admin, raw)
            return p if p["leader"] in NODES and p["leader"] != leader and leader not in p["isr"] else None

        after = await wait_until(moved, 60, f"raw partition 0 to leave node {leader}")
        t_moved = time.monotonic()
        await asyncio.sleep(DOWN_SECONDS)
        t_restart = time.monotonic()
        acked_while_down = sender.acked_between(t_moved, t_restart)
        restart = await asyncio.to_thread(stack, "cluster-start", str(leader))
        assert restart.returncode == 0, restart.stderr[-3000:]
        t_back = time.monotonic()

        async def rejoined() -> dict[str, Any] | None:
            p = await partition(admin, raw)
            return p if leader in p["isr"] else None

        await wait_until(rejoined, 60, f"node {leader} back in raw partition 0's ISR")
        t_isr = time.monotonic()
        await asyncio.wait_for(sending, 180)
    finally:
        if not sending.done():
            sending.cancel()
        await producer.stop()
        await admin.close()
    # With two of three replicas in sync, acks=all writes went on while the leader was dead.
    assert acked_while_down > 0, f"no record was acknowledged while node {leader} was down: {sender.acked}"
    result = await check_oracles(iso, pg, inputs, f"partition leader (node {leader}) kill -9, 3 brokers RF=3 ISR>=2")
    assert w.alive(), w.log_text()[-3000:]
    print(f"\n[cluster] raw partition 0: leader node {leader} killed, new leader node {after['leader']} after "
          f"{t_moved - t_kill:.1f} s (isr {after['isr']}); {acked_while_down} records acknowledged while it was "
          f"down; restart took {t_back - t_restart:.1f} s, back in the ISR after {t_isr - t_restart:.1f} s; "
          f"sent {result.sent}, landed {result.landed}, rejected {result.rejected}, lost {result.lost}, "
          f"duplicated {result.duplicated}, clean dups {result.clean_dups}; "
          f"test body {time.monotonic() - t_test:.1f} s")
