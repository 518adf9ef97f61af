"""The broker, without the App: topic admin that makes the cluster match topics.yaml.

`ensure_topics` creates missing topics with their partitions, retention and cleanup policy, and refuses
(TopicMismatchError) when an existing topic's partition count differs: a worker would otherwise start
and route keys to the wrong partitions, which shows up much later as missing or misordered data. An existing
topic whose retention, cleanup policy or min.insync.replicas differ from topics.yaml is logged (a worker's start),
refused (`topics check`) or set (`topics create`).
Tools, the API and tests use it without building a Faust App (streams/stages/topics.py runs it at start).

`keep_consumers_going` mends the consumer client where it stops for good after a broker restart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.errors import GroupAuthorizationFailedError, KafkaError, TopicAlreadyExistsError

from streams.catalog import Catalog, TopicSpec
from streams.config import KafkaSettings
from streams.errors import BrokerUnavailable, ConfigError, TopicMismatchError

logger = logging.getLogger(__name__)


async def ensure_topics(catalog: Catalog, bootstrap_servers: str, *, create: bool = True,
                        kafka: KafkaSettings | None = None, configs: str = "warn") -> list[str]:
    """Create what is missing; raise TopicMismatchError for partition-count drift. Returns created names.
    `kafka` gives the SSL/SASL settings; None: PLAINTEXT (the local stack). `configs`: what to do about an existing
    topic whose retention.ms, cleanup.policy or min.insync.replicas differ from topics.yaml: "warn" (log it; a
    worker's start), "raise" (a TopicMismatchError: `topics check`), "apply" (set them: `topics create`)."""
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
            specs = [wanted[name] for name in present]
            drift = await config_drift(admin, specs)
            if drift and configs == "apply":
                await apply_configs(admin, specs, drift)
                logger.warning("set the topics' configuration to topics.yaml's: %s", "; ".join(drift))
            elif drift and configs == "raise":
                raise TopicMismatchError("existing topics' configuration disagrees with topics.yaml: "
                                         + "; ".join(drift) + " (`tickflow topics create` sets topics.yaml's)")
            elif drift:
                logger.warning("existing topics' configuration disagrees with topics.yaml (`tickflow topics create` "
                               "sets topics.yaml's): %s", "; ".join(drift))
        return created
    finally:
        await admin.close()


# DescribeConfigs' config_source of a value set on the topic itself (not the broker's or Kafka's default).
_TOPIC_CONFIG = 1


async def _described_configs(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, list[tuple[Any, ...]]]:
    """Each topic's config entries as the broker describes them: (name, value, read_only, config_source, ...)."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    for resp in await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names]):
        for code, _message, _type, name, entries in resp.resources:
            if not code:
                out[name] = list(entries)
    return out


async def config_drift(admin: AIOKafkaAdminClient, specs: list[TopicSpec]) -> list[str]:
    """"raw.yahoo retention.ms is 86400000, topics.yaml says 2592000000" for every setting topics.yaml gives
    that the cluster holds otherwise (a retention raised in topics.yaml after the topic was created)."""
    described = await _described_configs(admin, [t.name for t in specs])
    out = []
    for t in specs:
        have = {e[0]: e[1] for e in described.get(t.name, ())}
        if t.name in described:
            out += [f"{t.name} {key} is {have.get(key)}, topics.yaml says {want}"
                    for key, want in t.kafka_config().items() if have.get(key) != want]
    return out


async def apply_configs(admin: AIOKafkaAdminClient, specs: list[TopicSpec], drift: list[str]) -> None:
    """Set topics.yaml's settings on the topics that drifted. AlterConfigs replaces a topic's whole set of its own
    settings, so the others it has (segment.ms set by an operator, say) are sent along unchanged."""
    names = {d.split(" ", 1)[0] for d in drift}
    described = await _described_configs(admin, sorted(names))
    resources = []
    for t in specs:
        if t.name in names:
            own = {e[0]: e[1] for e in described.get(t.name, ()) if e[3] == _TOPIC_CONFIG}
            hidden = sorted(k for k, v in own.items() if v is None and k not in t.kafka_config())
            if hidden:  # a sensitive setting is described without its value: sending the set would reset it
                raise ConfigError(f"cannot set topic {t.name}'s configuration to topics.yaml's: its own "
                                  f"{', '.join(hidden)} cannot be read back (sensitive); set retention.ms and "
                                  "cleanup.policy with kafka-configs.sh --alter --add-config")
            resources.append(ConfigResource(ConfigResourceType.TOPIC, t.name, configs={**own, **t.kafka_config()}))
    for resp in await admin.alter_configs(resources):
        for code, message, _type, name in getattr(resp, "resources", ()):
            if code:
                raise ConfigError(f"cannot set the configuration of topic {name}: error {code} {message}")


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
