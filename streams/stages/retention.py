"""Data retention and partition maintenance for PostgreSQL (Kafka's retention is per topic, in topics.yaml).

Reads: nothing from Kafka. On the group's leader only (one worker does it):
- every sink.partition_check_seconds, creates market_data's partitions sink.partitions_ahead periods of
  sink.partition_period ahead, then one for each period the DEFAULT partition holds rows of (a row with no
  partition, such as backfilled history, lands in DEFAULT; it is moved out when its range gets a partition);
- every sink.retention_check_seconds, drops the market_data partitions wholly older than
  sink.data_retention_days (DETACH + DROP: no row-by-row work), then deletes what is left older than the
  cutoff (the straddling partition, DEFAULT, and the other tables) in bounded batches.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from streams.app import app, settings
from streams.settings import SinkSettings
from streams.stages.db import SharedWriter
from streams.stages.db import writer as shared_writer

logger = logging.getLogger(__name__)


async def apply_retention(writer: SharedWriter, sink: SinkSettings, now: datetime | None = None) -> int:
    """Drop the whole partitions older than the cutoff, then delete the rest in batches; returns the rows
    removed (dropped partitions count by the planner's estimate)."""
    days = sink.data_retention_days
    if not days:
        return 0
    cutoff = (now or datetime.now(UTC)) - timedelta(days=days)
    pg = await writer.get()
    dropped = await pg.drop_partitions_before(cutoff)
    if dropped:
        logger.info("retention: dropped %d partitions older than %s (%s)", len(dropped), cutoff.isoformat(),
                    ", ".join(f"{name} ~{rows} rows" for name, rows in dropped))
    deleted = await pg.delete_older_than(cutoff, sink.retention_batch_rows)
    if deleted:
        logger.info("retention: deleted %d rows older than %s", deleted, cutoff.isoformat())
    return deleted + sum(rows for _, rows in dropped)


async def create_partitions(writer: SharedWriter, sink: SinkSettings, now: datetime | None = None) -> list[str]:
    """Create the partitions of the coming periods before rows arrive for them, then those of the periods the
    DEFAULT partition holds rows of (backfilled history), moving the rows in: retention drops them whole."""
    pg = await writer.get()
    made = await pg.create_partitions(sink.partition_period, now or datetime.now(UTC), sink.partitions_ahead)
    if made:
        logger.info("partitions: created %s", ", ".join(made))
    history = await pg.partition_default(sink.partition_period)
    if history:
        logger.info("partitions: created %s for the DEFAULT partition's rows, moved into them", ", ".join(history))
    return made + history


@app.timer(settings.sink.partition_check_seconds, on_leader=True, name="create_partitions")
async def partition_timer() -> None:
    try:
        await create_partitions(shared_writer, settings.sink)
    except Exception as exc:  # the database may be down, or the role lacks EXECUTE; try again next time
        logger.warning("partition maintenance skipped: %r", exc)


@app.timer(settings.sink.retention_check_seconds, on_leader=True, name="apply_retention")
async def retention_timer() -> None:
    try:
        await apply_retention(shared_writer, settings.sink)
    except Exception as exc:  # the database may be down; try again next time
        logger.warning("retention skipped: %r", exc)
