from pathlib import Path

import pytest

from streams.catalog import TOPICS_FILE, catalog_of, load_catalog, parse_retention
from streams.errors import ConfigError


def test_repository_topics_yaml() -> None:
    c = load_catalog()
    assert c.one("clean").name == "ticks.clean"
    assert c.one("rejected").name == "ticks.rejected"
    assert c.one("anomalies").name == "ticks.anomalies"
    assert "simulated" in c.sources
    for t in c.by_role("raw"):
        assert t.name == f"raw.{t.source}"


def test_suffix_applies_to_every_topic() -> None:
    c = load_catalog(suffix=".t1")
    assert all(t.name.endswith(".t1") for t in c.topics)


@pytest.mark.parametrize(("text", "ms"), [("7d", 604_800_000), ("36h", 129_600_000), ("500ms", 500), ("forever", -1)])
def test_retention(text: str, ms: int) -> None:
    assert parse_retention(text) == ms


def test_bad_catalog_names_the_file_and_topic(tmp_path: Path) -> None:
    bad = tmp_path / "topics.yaml"
    bad.write_text(TOPICS_FILE.read_text().replace("retention: 7d", "retention: a week", 1))
    with pytest.raises(ConfigError, match=r"topics.yaml: topic ticks.clean: .*retention"):
        load_catalog(bad)


def test_the_environment_sets_every_topics_durability() -> None:
    from streams.config import KafkaSettings

    cat = catalog_of(KafkaSettings(replication_factor=3, min_insync_replicas=2))
    assert {t.replication_factor for t in cat.topics} == {3}
    assert all(t.kafka_config()["min.insync.replicas"] == "2" for t in cat.topics)
    local = catalog_of(KafkaSettings())
    assert {t.replication_factor for t in local.topics} == {1}  # topics.yaml's, for one local broker
    assert all("min.insync.replicas" not in t.kafka_config() for t in local.topics)


def test_min_isr_above_the_replication_factor_is_refused() -> None:
    from streams.config import KafkaSettings

    with pytest.raises(ConfigError, match=r"min\.insync\.replicas 3 > replication factor 2"):
        catalog_of(KafkaSettings(replication_factor=2, min_insync_replicas=3))
