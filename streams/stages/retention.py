"""Data retention for PostgreSQL (Kafka's is per topic, in topics.yaml).

Reads: nothing from Kafka. Writes: deletes rows older than sink.data_retention_days from market_data and
data_quality_metrics, in bounded batches, on the group's leader only (one worker does it).
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
    days = sink.data_retention_days
    if not days:
        return 0
    cutoff = (now or datetime.now(UTC)) - timedelta(days=days)
    deleted = await (await writer.get()).delete_older_than(cutoff, sink.retention_batch_rows)
    if deleted:
        logger.info("retention: deleted %d rows older than %s", deleted, cutoff.isoformat())
    return deleted


@app.timer(settings.sink.retention_check_seconds, on_leader=True, name="apply_retention")
async def retention_timer() -> None:
    try:
        await apply_retention(shared_writer, settings.sink)
    except Exception as exc:  # the database may be down; try again next time
        logger.warning("retention skipped: %r", exc)
