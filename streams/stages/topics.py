"""The catalog's topic names for this worker, and the start-up check that the cluster matches topics.yaml
(streams/broker.py does the admin work; this module binds it to the App's settings and start hook)."""

from __future__ import annotations

import asyncio
import logging

import click

from streams.app import app, settings
from streams.broker import ensure_topics
from streams.catalog import Catalog, catalog_of
from streams.errors import BrokerUnavailable, ConfigError

logger = logging.getLogger(__name__)

catalog: Catalog = catalog_of(settings.kafka)


clean_topic_name = catalog.one("clean").name
rejected_topic_name = catalog.one("rejected").name
anomalies_topic_name = catalog.one("anomalies").name
source_of_topic: dict[str, str] = {t.name: t.source or "" for t in catalog.by_role("raw")}


def ensure_topics_blocking() -> list[str]:
    """For start-up hooks that run before the worker's event loop: a private loop, closed after."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(ensure_topics(catalog, settings.kafka.bootstrap_servers, kafka=settings.kafka))
    finally:
        loop.close()


_created: list[str] = []  # by the start-up check, for log_created_topics


class _DropConnectionErrors(logging.Filter):
    """aiokafka's "Unable connect to ..." while the start-up check runs: BrokerUnavailable says it, once."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Unable connect to")


@app.on_worker_init.connect
def _ensure_topics_at_start(sender: object = None, **kwargs: object) -> None:
    """Every worker checks the cluster against topics.yaml before it consumes anything. Faust also sends this
    signal when `faust -A streams.app --help` (or a typo'd command) merely imports the App: only the `worker`
    command's own context, current while it builds the worker, means one is really starting."""
    ctx = click.get_current_context(silent=True)
    if ctx is None or ctx.info_name != "worker":
        return
    # Faust configures logging after this signal: a log line here would reach stderr through logging's last
    # resort, beside the SystemExit line that says the same.
    quiet = _DropConnectionErrors()
    aiokafka_log = logging.getLogger("aiokafka")
    aiokafka_log.addFilter(quiet)
    try:
        created = ensure_topics_blocking()
    except (ConfigError, BrokerUnavailable) as exc:
        raise SystemExit(f"tickflow: {exc}") from None
    finally:
        aiokafka_log.removeFilter(quiet)
    _created.extend(created)


@app.task
async def log_created_topics() -> None:
    """The start-up check runs before Faust configures logging, where an INFO line would be lost: said here."""
    if _created:
        logger.info("created topics: %s", ", ".join(_created))
