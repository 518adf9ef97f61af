"""What every peer process of the benchmark shares: its job, read from the environment bench/throughput.py sets.

Each peer (bench/peers/*_peer.py) runs as its own process, so its CPU and RSS are read from /proc like the
tickflow worker's. The job is the same for all: read the preloaded raw topic, validate each record with
tickflow's own `streams.rules.Validator`, send the valid ones to the peer's own clean topic (refused ones to
its own rejected topic, with the original bytes), read the clean topic and upsert each batch into the
peer's own schema with tickflow's COPY + revision upsert (sinks.postgres). This module imports only what the
Quix venv has too (no Faust, no aiokafka).
"""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from streams.settings import PostgresSettings, Settings, load_settings  # noqa: E402

SOURCE = "simulated"  # the preloaded points' source: the Validator checks each record says so
BATCH = 2000  # records per batch where the peer lets us choose (tickflow's validate batch size)


@functools.lru_cache(maxsize=256)
def ingested_at(ms: int | None) -> datetime | None:
    """A record's Kafka timestamp (the producer's, in ms) as the point's `ingested_at`, as tickflow's validate
    stage sets it: the end-to-end latency (written_at - ingested_at) is measured from it for every system
    alike. Remembered per millisecond, as tickflow does (records arrive in runs with the same one)."""
    return datetime.fromtimestamp(ms / 1000.0, UTC) if ms is not None and ms > 0 else None


@dataclass(frozen=True, slots=True)
class Job:
    """One peer's run: where it reads and writes (its own topics, group and schema, so runs never collide)."""

    raw: str
    clean: str
    rejected: str
    schema: str
    group: str
    settings: Settings

    @property
    def bootstrap(self) -> str:
        return self.settings.kafka.bootstrap_servers

    def postgres(self) -> PostgresSettings:
        """tickflow's PostgreSQL settings pointed at this peer's schema, each commit waiting for its flush: a peer
        commits its offsets after its writes return and asks nothing like tickflow's `durable` first."""
        pg = self.settings.postgres
        return PostgresSettings(**{**pg.model_dump(), "db_schema": self.schema, "password": pg.password,
                                   "async_commit": False})


def job_from_env() -> Job:
    """The job bench/throughput.py hands a peer (BENCH_PEER_* variables)."""
    e = os.environ
    return Job(raw=e["BENCH_PEER_RAW"], clean=e["BENCH_PEER_CLEAN"], rejected=e["BENCH_PEER_REJECTED"],
               schema=e["BENCH_PEER_SCHEMA"], group=e["BENCH_PEER_GROUP"], settings=load_settings())
