"""topics.yaml against a real cluster: missing topics are created with their settings; a partition-count
mismatch is a clear error at start-up, for the command and for the worker."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.broker import ensure_topics
from streams.errors import TopicMismatchError
from tests.integration.conftest import ROOT


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
