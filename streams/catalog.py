"""topics.yaml -> typed topic specs. Pure: no Faust, no Kafka client, so producers, sinks and tests
can import it without starting anything."""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from streams.config import KafkaSettings
from streams.errors import ConfigError

# The packaged default: package data, so an installed tickflow has it (in the checkout, streams/topics.yaml
# links to the one list at the top level). TICKFLOW_TOPICS_FILE names another file: a deployment's own topics
# without rebuilding the package.
TOPICS_FILE = Path(__file__).resolve().parent / "topics.yaml"
TOPICS_FILE_ENV = "TICKFLOW_TOPICS_FILE"
_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}

Role = Literal["raw", "clean", "rejected", "anomalies"]


def parse_retention(value: str | int) -> int:
    """'7d' -> milliseconds; 'forever' -> -1 (Kafka's "keep")."""
    if isinstance(value, int):
        return value
    if value == "forever":
        return -1
    match = re.fullmatch(r"(\d+)\s*(ms|s|m|h|d)", value.strip())
    if not match:
        raise ValueError(f"retention {value!r} is not a number with a unit (ms, s, m, h, d) or 'forever'")
    return int(match.group(1)) * _UNITS_MS[match.group(2)]


class TopicSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    role: Role
    source: str | None = None
    partitions: int = Field(ge=1, le=1024)
    replication_factor: int = 1
    min_insync_replicas: int | None = None  # None: the broker's default
    retention_ms: int
    cleanup_policy: Literal["delete", "compact", "compact,delete"] = "delete"
    value: str = ""

    @field_validator("name")
    @classmethod
    def _legal_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,200}", v):
            raise ValueError(f"{v!r} is not a legal Kafka topic name")
        return v

    def with_suffix(self, suffix: str) -> TopicSpec:
        return self if not suffix else self.model_copy(update={"name": f"{self.name}{suffix}"})

    def kafka_config(self) -> dict[str, str]:
        config = {"retention.ms": str(self.retention_ms), "cleanup.policy": self.cleanup_policy}
        if self.min_insync_replicas is not None:
            config["min.insync.replicas"] = str(self.min_insync_replicas)
        return config


class Catalog(BaseModel):
    model_config = ConfigDict(frozen=True)

    topics: tuple[TopicSpec, ...]

    def by_role(self, role: Role) -> list[TopicSpec]:
        return [t for t in self.topics if t.role == role]

    def one(self, role: Role) -> TopicSpec:
        found = self.by_role(role)
        if len(found) != 1:
            raise ConfigError(f"topics.yaml must declare exactly one {role} topic, found {len(found)}")
        return found[0]

    def raw(self, source: str) -> TopicSpec:
        for t in self.by_role("raw"):
            if t.source == source:
                return t
        raise ConfigError(f"topics.yaml declares no raw topic for source {source!r}")

    @property
    def sources(self) -> list[str]:
        return [t.source for t in self.by_role("raw") if t.source]

    def with_suffix(self, suffix: str) -> Catalog:
        return Catalog(topics=tuple(t.with_suffix(suffix) for t in self.topics))

    def for_cluster(self, replication_factor: int | None, min_insync_replicas: int | None) -> Catalog:
        """The same topics with this environment's durability (kafka.replication_factor and
        kafka.min_insync_replicas override topics.yaml: 1 on a laptop, 3 and 2 in production)."""
        update: dict[str, int] = {}
        if replication_factor is not None:
            update["replication_factor"] = replication_factor
        if min_insync_replicas is not None:
            update["min_insync_replicas"] = min_insync_replicas
        if not update:
            return self
        topics = tuple(t.model_copy(update=update) for t in self.topics)
        for t in topics:
            if t.min_insync_replicas is not None and t.min_insync_replicas > t.replication_factor:
                raise ConfigError(f"topic {t.name}: min.insync.replicas {t.min_insync_replicas} > replication "
                                  f"factor {t.replication_factor}: every acks=all write would fail")
        return Catalog(topics=topics)


def topics_file() -> Path:
    """The topics file in force: $TICKFLOW_TOPICS_FILE if set, else the packaged one."""
    override = os.environ.get(TOPICS_FILE_ENV, "").strip()
    return Path(override).expanduser() if override else TOPICS_FILE


def load_catalog(path: Path | None = None, suffix: str = "") -> Catalog:
    path = topics_file() if path is None else path
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        hint = f" (set {TOPICS_FILE_ENV} to a readable topics file)" if isinstance(exc, OSError) else ""
        raise ConfigError(f"cannot read {path}: {exc}{hint}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: the top level must be a mapping with a 'topics' section")
    defaults = doc.get("defaults", {}) or {}
    specs = []
    for name, body in (doc.get("topics") or {}).items():
        body = {**defaults, **(body or {})}
        try:
            body["retention_ms"] = parse_retention(body.pop("retention", "7d"))
            specs.append(TopicSpec(name=name, **body))
        except (ValueError, ValidationError, TypeError) as exc:
            raise ConfigError(f"{path}: topic {name}: {exc}") from None
    catalog = Catalog(topics=tuple(specs))
    for role in ("clean", "rejected", "anomalies"):
        catalog.one(role)  # type: ignore[arg-type]
    for raw in catalog.by_role("raw"):
        if not raw.source:
            raise ConfigError(f"{path}: raw topic {raw.name} needs a 'source'")
    return catalog.with_suffix(suffix)


def catalog_for(suffix: str = "", replication_factor: int | None = None,
                min_insync_replicas: int | None = None) -> Catalog:
    return _catalog_for(topics_file(), suffix, replication_factor, min_insync_replicas)


@lru_cache(maxsize=8)
def _catalog_for(path: Path, suffix: str, replication_factor: int | None,
                 min_insync_replicas: int | None) -> Catalog:
    return load_catalog(path, suffix=suffix).for_cluster(replication_factor, min_insync_replicas)


def catalog_of(kafka: KafkaSettings) -> Catalog:
    """The catalog as this deployment's Kafka settings make it (suffix, replication, min ISR)."""
    return catalog_for(kafka.topic_suffix, kafka.replication_factor, kafka.min_insync_replicas)
