"""The broker, without the App: topic admin that makes the cluster match topics.yaml.

`ensure_topics` creates missing topics with their partitions, retention and cleanup policy, and refuses
(TopicMismatchError) when an existing topic's partition count differs: a worker would otherwise start
and route keys to the wrong partitions, which shows up much later as missing or misordered data.
Tools, the API and tests use it without building a Faust App (streams/stages/topics.py runs it at start).

`keep_consumers_going` mends the consumer client where it stops for good after a broker restart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.errors import GroupAuthorizationFailedError, KafkaError, TopicAlreadyExistsError

from streams.catalog import Catalog
from streams.config import KafkaSettings
from streams.errors import BrokerUnavailable, ConfigError, TopicMismatchError

logger = logging.getLogger(__name__)


async def ensure_topics(catalog: Catalog, bootstrap_servers: str, *, create: bool = True,
                        kafka: KafkaSettings | None = None) -> list[str]:
    """Create what is missing; raise TopicMismatchError for partition-count drift. Returns created names.
    `kafka` gives the SSL/SASL settings; None: PLAINTEXT (the local stack)."""
    security = (kafka or KafkaSettings()).client_kwargs()
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=15000, **security)
    try:
        await admin.start()
    except KafkaError as exc:
        raise BrokerUnavailable(f"cannot reach Kafka at {bootstrap_servers}: {exc!r} (is `make stack-up` running?)"
                                ) from None
    try:
        existing = set(await admin.list_topics())
        wanted = {t.name: t for t in catalog.topics}
        missing = [t for name, t in wanted.items() if name not in existing]
        created: list[str] = []
        if missing and create:
            try:
                resp = await admin.create_topics(
                    [NewTopic(t.name, t.partitions, t.replication_factor, topic_configs=t.kafka_config())
                     for t in missing]
                )
                for name, code, message in getattr(resp, "topic_errors", []):
                    if code == 0:
                        created.append(name)
                    elif code != TopicAlreadyExistsError.errno:
                        raise ConfigError(f"cannot create topic {name}: error {code} {message}")
            except TopicAlreadyExistsError:
                pass
        elif missing:
            raise ConfigError(f"topics missing from the cluster: {', '.join(t.name for t in missing)}")
        # Check everything we did not create just now (metadata may lag behind a fresh topic).
        present = [name for name in wanted if name not in created]
        if present:
            problems = []
            for desc in await _settled_descriptions(admin, present):
                name = desc["topic"]
                have = len(desc["partitions"])
                want = wanted[name].partitions
                if have > want:
                    problems.append(f"{name} has {have} partitions, topics.yaml says {want}: a topic's partitions "
                                    f"cannot shrink; set {have} in topics.yaml (or recreate the topic, losing its "
                                    "records)")
                elif have < want:
                    problems.append(f"{name} has {have} partitions, topics.yaml says {want}: raise them with "
                                    f"`kafka-topics.sh --bootstrap-server {bootstrap_servers} --alter --topic {name} "
                                    f"--partitions {want}` (a symbol's records then go to another partition: do it "
                                    f"with the producers stopped and the topic drained), or set {have} in "
                                    "topics.yaml")
            if problems:
                raise TopicMismatchError("existing topics disagree with topics.yaml: " + "; ".join(problems))
        return created
    finally:
        await admin.close()


async def _settled_descriptions(admin: AIOKafkaAdminClient, names: list[str], wait: float = 10.0) -> list[dict]:
    """Describe topics, asking again for those the controller has not settled yet: a topic created moments
    ago (by another worker, or a user) can describe as 0 partitions, which is not a mismatch."""
    deadline = asyncio.get_running_loop().time() + wait
    settled: dict[str, dict] = {}
    pending = list(names)
    while pending:
        for desc in await admin.describe_topics(pending):
            if desc.get("error_code", 0) == 0 and desc["partitions"]:
                settled[desc["topic"]] = desc
            elif asyncio.get_running_loop().time() >= deadline:
                settled[desc["topic"]] = desc
        pending = [n for n in names if n not in settled]
        if pending:
            await asyncio.sleep(0.25)
    return [settled[n] for n in names]


def keep_consumers_going() -> None:
    """Make every aiokafka consumer of this process survive the broker answers its background tasks have no case
    for. Idempotent; the worker calls it before it starts any consumer.

    aiokafka 0.14 ends a consumer's heartbeat task on such an answer (e.g. COORDINATOR_LOAD_IN_PROGRESS, which a
    restarted broker gives while it reloads the groups' offsets), and its committed-offset refresh task likewise
    (e.g. COORDINATOR_NOT_AVAILABLE to an offset fetch). Nothing restarts either, and every later getmany()
    raises the same error again, so the consumer never fetches again: after a broker restart the worker stayed up
    and processed nothing (tests/integration/test_broker_consumers.py reproduces both with one such answer). Here
    either task goes on after a pause, as it does after the answers it knows; a member the broker expired
    meanwhile is told so by its next heartbeat and rejoins. An authorization failure still ends them: only an
    operator can fix that."""
    _keep_going("_heartbeat_routine", lambda c: c._heartbeat_interval_ms / 1000, "heartbeat")
    _keep_going("_commit_refresh_routine", lambda c: max(c._retry_backoff_ms / 1000, 0.5), "committed-offset fetch")


def _keep_going(name: str, pause: Callable[[GroupCoordinator], float], what: str) -> None:
    """Wrap GroupCoordinator.`name` (a background routine): a KafkaError but an authorization failure is logged
    and the routine started again after `pause`. The routine returns when it is done (cancelled, the member or
    assignment gone); a cancel during the pause ends it the same way, quietly, as aiokafka expects."""
    routine = getattr(GroupCoordinator, name)
    if getattr(routine, "keeps_going", False):
        return

    async def keep_going(self: GroupCoordinator, *args: Any) -> None:
        while True:
            try:
                return await routine(self, *args)
            except GroupAuthorizationFailedError:
                raise
            except KafkaError as exc:
                wait = pause(self)
                logger.warning("group %s: %s failed (%r); again in %.1f s", self.group_id, what, exc, wait)
            try:
                await asyncio.sleep(wait)
            except asyncio.CancelledError:
                return

    keep_going.keeps_going = True  # type: ignore[attr-defined]
    setattr(GroupCoordinator, name, keep_going)
