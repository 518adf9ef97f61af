"""Sending from agents: every message is awaited until the broker acknowledges it, and a failed send
is retried with capped backoff, so an agent never lets Faust ack (and later commit) a source offset
whose output is not durably in Kafka. Also builds the dead-letter record (Kafka Connect's DLQ
headers are the model): original key, value and timestamp plus `tickflow.*` headers.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiokafka.errors import MessageSizeTooLargeError

from streams.app import app

logger = logging.getLogger(__name__)

HEADER_PREFIX = "tickflow."
MAX_ERROR_CHARS = 1000
TRUNCATE_TO = 64 * 1024


@dataclass(slots=True)
class Outgoing:
    topic: str
    key: bytes | None
    value: bytes | None
    timestamp: float | None = None  # seconds since the epoch; None lets the producer stamp it
    headers: list[tuple[str, bytes]] | None = None
    partition: int | None = None


@dataclass(slots=True)
class Rejection:
    """Why a record was refused, and where it came from."""

    stage: str
    rule: str
    error: str
    exception: str
    topic: str
    partition: int
    offset: int
    original_headers: list[tuple[str, bytes]] = field(default_factory=list)

    def headers(self) -> list[tuple[str, bytes]]:
        own = [
            ("source.topic", self.topic),
            ("source.partition", str(self.partition)),
            ("source.offset", str(self.offset)),
            ("stage", self.stage),
            ("rule", self.rule),
            ("error", self.error[:MAX_ERROR_CHARS]),
            ("exception.class", self.exception),
            ("time", f"{time.time():.6f}"),
        ]
        kept = [(k, v) for k, v in self.original_headers if not k.startswith(HEADER_PREFIX)]
        return kept + [(HEADER_PREFIX + k, v.encode()) for k, v in own]


def _shrink(m: Outgoing) -> Outgoing:
    """A record larger than the broker takes can only go on truncated; the headers say so and how big it was."""
    size = len(m.value or b"")
    logger.error("%s: a %d-byte record exceeds the broker's limit; sending its first %d bytes", m.topic, size,
                 TRUNCATE_TO)
    headers = [*(m.headers or []), (HEADER_PREFIX + "value.truncated_from", str(size).encode())]
    return Outgoing(m.topic, m.key, (m.value or b"")[:TRUNCATE_TO], m.timestamp, headers, m.partition)


async def send_all(messages: Sequence[Outgoing], *, max_delay: float = 10.0) -> None:
    """Send all messages and wait for every ack; retry the failed ones until they are acked."""
    pending = list(messages)
    delay = 0.1
    while pending:
        futures = []
        failed: list[Outgoing] = []
        for i, m in enumerate(pending):
            try:
                futures.append(
                    await app.producer.send(m.topic, m.key, m.value, m.partition, m.timestamp, m.headers)
                )
            except Exception as exc:
                logger.warning("send to %s failed (%r); %d messages will be retried", m.topic, exc, len(pending) - i)
                failed = pending[i:]
                pending = pending[:i]
                break
        results = await asyncio.gather(*futures, return_exceptions=True)
        failed = [_shrink(m) if isinstance(r, MessageSizeTooLargeError) else m
                  for m, r in zip(pending, results, strict=True) if isinstance(r, BaseException)] + failed
        if failed:
            first = next((r for r in results if isinstance(r, BaseException)), None)
            logger.warning("%d sends not acknowledged (%r); retrying in %.1f s", len(failed), first, delay)
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, max_delay)
        pending = failed
