"""HTTP for provider sources: one place for retries, rate limits and secret redaction.

- Retries with capped exponential backoff and full jitter on timeouts, connection errors and 5xx.
- 429 honours Retry-After (seconds or an HTTP date), then retries.
- Other 4xx are not retriable: SourceError(retriable=False).
- Secrets never leave this module in clear: every URL or message that can reach a log line, an
  exception or a dead-letter header goes through `redact()` first (streams/redact.py, the same function
  the process-wide log redaction uses).
- RateLimiter is a token bucket; in-worker sources run leader-only (streams/stages/produce.py), so one
  limiter per source is the limit for the whole group.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import orjson
from pydantic import SecretStr

from streams.errors import SourceError
from streams.redact import redact

__all__ = ["RateLimiter", "get_json", "redact", "retry_after_seconds"]


class RateLimiter:
    """Token bucket: at most `calls` per `per_seconds`, with bursts up to `calls`."""

    def __init__(self, calls: float, per_seconds: float = 60.0) -> None:
        self.rate = calls / per_seconds
        self.capacity = max(1.0, calls)
        self.tokens = self.capacity
        self.updated = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
                self.updated = now
                if self.tokens >= 1.0:
                    self.tokens -= 1.0
                    return
                await asyncio.sleep((1.0 - self.tokens) / self.rate)


def retry_after_seconds(value: str | None, default: float) -> float:
    if not value:
        return default
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return default


async def get_json(
    session: aiohttp.ClientSession,
    url: str,
    *,
    params: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
    secrets: Iterable[SecretStr | str | None] = (),
    limiter: RateLimiter | None = None,
    attempts: int = 5,
    base_delay: float = 0.5,
    max_delay: float = 30.0,
    timeout: float = 20.0,
    as_text: bool = False,
) -> Any:
    """GET a URL and decode JSON (or text), retrying what is worth retrying."""
    secrets = list(secrets)
    last: str = ""
    for attempt in range(attempts):
        if limiter is not None:
            await limiter.acquire()
        delay = min(max_delay, base_delay * 2**attempt) * random.random()
        try:
            async with session.get(url, params=params, headers=headers,
                                   timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                body = await resp.read()
                shown = redact(str(resp.url), secrets)
                if resp.status == 429:
                    last = f"429 Too Many Requests from {shown}"
                    await asyncio.sleep(retry_after_seconds(resp.headers.get("Retry-After"), delay))
                    continue
                if resp.status >= 500:
                    last = f"HTTP {resp.status} from {shown}"
                    await asyncio.sleep(delay)
                    continue
                if resp.status >= 400:
                    snippet = redact(body[:300].decode(errors="replace"), secrets)
                    raise SourceError(f"HTTP {resp.status} from {shown}: {snippet}", retriable=False)
                if as_text:
                    return body.decode(errors="replace")
                try:
                    return orjson.loads(body)
                except orjson.JSONDecodeError:
                    snippet = redact(body[:200].decode(errors="replace"), secrets)
                    raise SourceError(f"response from {shown} is not JSON: {snippet!r}") from None
        except (TimeoutError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            last = redact(f"{type(exc).__name__} on {url}: {exc}", secrets)
            await asyncio.sleep(delay)
    raise SourceError(f"gave up after {attempts} attempts: {last}", retriable=True)
