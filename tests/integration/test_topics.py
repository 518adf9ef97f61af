"""topics.yaml against a real cluster: missing topics are created with their settings (partitions, and the
topic-level configs retention.ms, cleanup.policy, min.insync.replicas as the broker reports them); a
partition-count mismatch is a clear error at start-up, for the command and for the worker."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from streams.broker import ensure_topics
from streams.catalog import Catalog, catalog_of, load_catalog
from streams.config import KafkaSettings
from streams.errors import TopicMismatchError
from tests.integration.conftest import ROOT

# DescribeConfigs' config_source: set on the topic itself (not inherited from the broker or Kafka's default).
DYNAMIC_TOPIC_CONFIG = 1
TOPIC_CONFIGS = ("retention.ms", "cleanup.policy", "min.insync.replicas")


async def topic_configs(bootstrap: str, names: list[str]) -> dict[str, dict[str, tuple[str, int]]]:
    """Each topic's configs as the broker describes them: name -> (value, config_source). A topic created a
    moment ago may still be unknown to the broker that answers (error 3): asked again, for up to 15 s."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        out: dict[str, dict[str, tuple[str, int]]] = {}
        errors: dict[str, tuple[int, str]] = {}
        for _ in range(30):
            errors = {}
            resources = [ConfigResource(ConfigResourceType.TOPIC, n, configs=None) for n in names if n not in out]
            for resp in await admin.describe_configs(resources):
                for code, message, _, name, entries in resp.resources:
                    if code:
                        errors[name] = (code, message)
                    else:
                        out[name] = {e[0]: (e[1], e[3]) for e in entries if e[0] in TOPIC_CONFIGS}
            if not errors:
                return out
            await asyncio.sleep(0.5)
        raise AssertionError(f"describe_configs failed: {errors}")
    finally:
        await admin.close()


def assert_configs_match(catalog: Catalog, described: dict[str, dict[str, tuple[str, int]]]) -> None:
    """retention.ms and cleanup.policy (and min.insync.replicas where the catalog sets one) equal the spec's and
    are set on the topic: a value that merely equals the broker's default (7d, delete) would not prove it."""
    for t in catalog.topics:
        got = described[t.name]
        for key, want in t.kafka_config().items():
            assert got[key] == (want, DYNAMIC_TOPIC_CONFIG), f"{t.name} {key}: {got[key]}, topics.yaml says {want}"
        if t.min_insync_replicas is None:
            assert got["min.insync.replicas"][1] != DYNAMIC_TOPIC_CONFIG, f"{t.name}: min ISR set, none asked"


async def test_creates_missing_topics_with_their_settings(iso) -> None:
    created = await ensure_topics(iso.catalog, iso.bootstrap)
    assert sorted(created) == sorted(t.name for t in iso.catalog.topics)
    assert await ensure_topics(iso.catalog, iso.bootstrap) == []  # idempotent
    admin = AIOKafkaAdminClient(bootstrap_servers=iso.bootstrap)
    await admin.start()
    try:
        desc = {d["topic"]: d for d in await admin.describe_topics([t.name for t in iso.catalog.topics])}
        for t in iso.catalog.topics:
            assert len(desc[t.name]["partitions"]) == t.partitions
    finally:
        await admin.close()
    assert_configs_match(iso.catalog, await topic_configs(iso.bootstrap, [t.name for t in iso.catalog.topics]))
    # topics.yaml's own values, not only what the catalog object says: spot-check against the file's text.
    described = await topic_configs(iso.bootstrap, [iso.raw_topic(), iso.topic("rejected")])
    assert described[iso.raw_topic()]["retention.ms"][0] == str(86_400_000)  # raw.simulated: retention 1d
    assert described[iso.topic("rejected")]["retention.ms"][0] == str(14 * 86_400_000)  # ticks.rejected: 14d


async def test_a_retention_changed_in_topics_yaml_is_reported_then_set(iso) -> None:
    """A topic created with another retention (topics.yaml edited later): a worker's start warns, `topics check`
    refuses, `topics create` sets topics.yaml's value and keeps the topic's other own settings."""
    raw = iso.catalog.raw("simulated")
    admin = AIOKafkaAdminClient(bootstrap_servers=iso.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(raw.name, raw.partitions, 1, topic_configs={
            "retention.ms": "3600000", "cleanup.policy": "delete", "segment.ms": "7200000"})])
    finally:
        await admin.close()
    only = Catalog(topics=(raw,))
    assert (await topic_configs(iso.bootstrap, [raw.name]))[raw.name]["retention.ms"][0] == "3600000"  # settled
    assert await ensure_topics(only, iso.bootstrap) == []  # "warn": logged, nothing changed
    assert (await topic_configs(iso.bootstrap, [raw.name]))[raw.name]["retention.ms"][0] == "3600000"
    with pytest.raises(TopicMismatchError, match=rf"{raw.name} retention.ms is 3600000, topics.yaml says "
                                                 rf"{raw.retention_ms}"):
        await ensure_topics(only, iso.bootstrap, create=False, configs="raise")
    await ensure_topics(only, iso.bootstrap, configs="apply")
    admin = AIOKafkaAdminClient(bootstrap_servers=iso.bootstrap)
    await admin.start()
    try:
        [resp] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, raw.name)])
        got = {e[0]: e[1] for e in resp.resources[0][4]}
    finally:
        await admin.close()
    assert got["retention.ms"] == str(raw.retention_ms) and got["segment.ms"] == "7200000"
    await ensure_topics(only, iso.bootstrap, create=False, configs="raise")  # no drift left


async def test_min_insync_replicas_and_compaction_reach_the_broker(iso, tmp_path) -> None:
    """min.insync.replicas from the Kafka settings (catalog_of; RF 1 on the local single broker), and a
    cleanup policy other than the broker's default, from a deployment's own topics file."""
    suffix = f".it-{iso.tag}"
    catalog = catalog_of(KafkaSettings(topic_suffix=suffix, replication_factor=1, min_insync_replicas=1))
    assert {t.min_insync_replicas for t in catalog.topics} == {1}
    created = await ensure_topics(catalog, iso.bootstrap)
    assert sorted(created) == sorted(t.name for t in catalog.topics)
    assert_configs_match(catalog, await topic_configs(iso.bootstrap, [t.name for t in catalog.topics]))

    own = tmp_path / "topics.yaml"
    own.write_text(
        "topics:\n"
        "  raw.simulated: {role: raw, source: simulated, partitions: 2, retention: 2h, cleanup_policy: compact}\n"
        "  ticks.clean: {role: clean, partitions: 2, retention: forever, cleanup_policy: 'compact,delete'}\n"
        "  ticks.rejected: {role: rejected, partitions: 1, retention: 90m}\n"
        "  ticks.anomalies: {role: anomalies, partitions: 1, retention: 30d}\n")
    custom = load_catalog(own, suffix=f".it-{iso.tag}-own")
    assert await ensure_topics(custom, iso.bootstrap)
    described = await topic_configs(iso.bootstrap, [t.name for t in custom.topics])
    assert_configs_match(custom, described)
    assert described[custom.raw("simulated").name]["cleanup.policy"][0] == "compact"
    assert described[custom.one("clean").name]["retention.ms"][0] == "-1"


async def test_partition_mismatch_is_a_clear_error(iso, workers) -> None:
    clean = iso.catalog.one("clean")
    admin = AIOKafkaAdminClient(bootstrap_servers=iso.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(clean.name, clean.partitions + 1, 1)])
    finally:
        await admin.close()
    with pytest.raises(TopicMismatchError, match=rf"{clean.name} has {clean.partitions + 1} partitions"):
        await ensure_topics(iso.catalog, iso.bootstrap)

    cmd = subprocess.run([sys.executable, "-m", "streams", "topics", "check"], cwd=ROOT,
                         env={**os.environ, **iso.env}, capture_output=True, text=True, timeout=60)
    assert cmd.returncode == 2 and "partitions, topics.yaml says" in cmd.stderr

    w = workers()
    assert w.proc is not None
    code = w.proc.wait(timeout=60)
    assert code != 0
    assert "topics.yaml says" in w.log_text()
