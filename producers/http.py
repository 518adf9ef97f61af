"""HTTP for provider sources: one place for retries, rate limits, redirects, size caps and secret redaction.

- Retries (tenacity): timeouts, connection and payload errors, 5xx and 429 are retried with capped exponential
  backoff and full jitter; 429/503 honour Retry-After (seconds or an HTTP date), capped at `max_retry_after`
  (a non-finite or negative value is ignored: the normal backoff applies). Everything else is not retriable:
  SourceError(retriable=False) at once.
- Every aiohttp error becomes a SourceError whose message is redacted: aiohttp's own messages carry the full
  request URL, query string (`apikey=`, `token=`) included.
- Bodies are read incrementally up to `max_bytes` (decompressed bytes count, so a gzip bomb is refused after
  `max_bytes`, not inflated in memory): a bigger body is a non-retriable SourceError.
- Redirects are followed here, not by aiohttp (which strips only Authorization): when the origin changes,
  every credential header and query parameter is dropped (X-Finnhub-Token, Authorization, api_key=...), and
  an https -> http redirect is refused.
- Secrets never leave this module in clear: every URL or message that can reach a log line, an exception or
  a dead-letter header goes through `redact()` first (streams/redact.py, the same function the process-wide
  log redaction uses).
- RateLimiter is aiolimiter's leaky bucket; in-worker sources run leader-only (streams/stages/produce.py), so
  one limiter per source is the limit for the whole group. A limiter may refuse with QuotaBlocked (a daily
  quota spent, producers/quota.py): that is raised at once, not retried.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

import aiohttp
import orjson
from aiolimiter import AsyncLimiter
from pydantic import SecretStr
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_random_exponential
from yarl import URL

from producers.quota import QuotaBlocked
from streams.errors import SourceError
from streams.redact import redact

__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_MAX_RETRY_AFTER", "HttpSection", "RateLimiter", "get_json", "get_text",
           "http_options", "redact", "retry_after_seconds"]

logger = logging.getLogger(__name__)

# The defaults of SourceSection.max_response_bytes / max_retry_after_seconds (streams/config.py).
DEFAULT_MAX_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_RETRY_AFTER = 300.0
MAX_REDIRECTS = 10
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_ERROR_SNIPPET_BYTES = 64 * 1024
# Dropped when a redirect leaves the origin, whatever their value.
_CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})
_CREDENTIAL_HEADER = re.compile(r"(?i)^x-[a-z0-9-]*(token|key|secret|auth)[a-z0-9-]*$")
_CREDENTIAL_PARAMS = frozenset({"api_key", "apikey", "token", "access_token", "auth_token", "key", "secret",
                                "client_secret", "password"})

Sleep = Callable[[float], Awaitable[Any]]


class HttpSection(Protocol):
    """The request settings every HTTP provider's section has (streams/config.py)."""

    @property
    def retry_attempts(self) -> int: ...
    @property
    def retry_base_delay(self) -> float: ...
    @property
    def request_timeout_seconds(self) -> float: ...
    @property
    def max_response_bytes(self) -> int: ...
    @property
    def max_retry_after_seconds(self) -> float: ...


def http_options(section: HttpSection) -> dict[str, Any]:
    """get_json's keyword arguments from a provider's section, in one place: a setting a provider forgot to
    pass would silently fall back to get_json's default whatever the user configured."""
    return {"attempts": section.retry_attempts, "base_delay": section.retry_base_delay,
            "timeout": section.request_timeout_seconds, "max_bytes": section.max_response_bytes,
            "max_retry_after": section.max_retry_after_seconds}


class RateLimiter:
    """At most `calls` per `per_seconds`, with bursts up to `calls` (aiolimiter.AsyncLimiter), and at least
    `min_interval` seconds between two calls when given (the brief's rate_limit_delay): both hold, so a delay
    added to a file that also spells the rate limit slows the calls down instead of contradicting it.

    Under one call per period (say 0.5 per 60 s) the bucket holds one call per `per_seconds / calls`,
    since a leaky bucket cannot hold less than the one call it must let through."""

    def __init__(self, calls: float, per_seconds: float = 60.0, min_interval: float = 0.0) -> None:
        if calls <= 0 or per_seconds <= 0 or min_interval < 0:
            raise ValueError("a rate limit needs calls > 0, per_seconds > 0 and min_interval >= 0")
        self.calls = calls
        self.per_seconds = per_seconds
        self.min_interval = min_interval
        if calls >= 1:
            self.limiter = AsyncLimiter(calls, per_seconds)
        else:
            self.limiter = AsyncLimiter(1, per_seconds / calls)
        self.spacing = AsyncLimiter(1, min_interval) if min_interval > 0 else None

    @classmethod
    def of(cls, settings: Any) -> RateLimiter:
        """The limiter a source section's rate_limit_calls, rate_limit_per_seconds and rate_limit_delay say."""
        return cls(settings.rate_limit_calls, settings.rate_limit_per_seconds, settings.rate_limit_delay)

    def has_capacity(self) -> bool:
        return self.limiter.has_capacity() and (self.spacing is None or self.spacing.has_capacity())

    async def acquire(self) -> None:
        if self.spacing is not None:
            await self.spacing.acquire()
        await self.limiter.acquire()


def retry_after_seconds(value: str | None, default: float, cap: float | None = None) -> float:
    """A Retry-After header (delta seconds or an HTTP date) -> seconds to wait, at most `cap`. Missing,
    unparsable, negative or non-finite values ("1e309", "nan") give `default`."""
    seconds: float | None = None
    if value:
        try:
            seconds = float(value)
        except ValueError:
            try:
                seconds = max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
            except (TypeError, ValueError, OverflowError):
                seconds = None
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return default
    return seconds if cap is None else min(seconds, cap)


class _Retriable(SourceError):
    """One attempt failed in a way worth retrying; `retry_after` is the server's hint, if it gave one."""

    def __init__(self, message: str, retry_after: str | None = None) -> None:
        super().__init__(message, retriable=True)
        self.retry_after = retry_after


def _secret_values(secrets: Iterable[SecretStr | str | None]) -> list[str]:
    return [v for v in (s.get_secret_value() if isinstance(s, SecretStr) else s for s in secrets) if v]


def _is_credential(name: str, value: str, secrets: list[str]) -> bool:
    low = name.lower()
    return (low in _CREDENTIAL_HEADERS or low in _CREDENTIAL_PARAMS or bool(_CREDENTIAL_HEADER.match(name))
            or any(s in value for s in secrets))


def redirect_target(current: URL, location: str, headers: Mapping[str, str],
                    secrets: list[str]) -> tuple[URL, dict[str, str]]:
    """Where a redirect goes and with which headers: credentials stay with their origin; https never
    downgrades to http. Raises SourceError(retriable=False) for a redirect we will not follow."""
    shown = redact(str(current), secrets)
    try:
        target = current.join(URL(location))
    except (ValueError, TypeError):
        raise SourceError(f"bad redirect Location from {shown}", retriable=False) from None
    if target.scheme not in ("http", "https") or not target.host:
        raise SourceError(f"redirect from {shown} to a non-HTTP URL refused", retriable=False)
    if current.scheme == "https" and target.scheme == "http":
        raise SourceError(f"redirect from {shown} to plain http ({redact(str(target), secrets)}) refused",
                          retriable=False)
    out = dict(headers)
    if target.origin() != current.origin():
        out = {k: v for k, v in out.items() if not _is_credential(k, v, secrets)}
        query = [(k, v) for k, v in target.query.items() if not _is_credential(k, v, secrets)]
        target = target.with_query(query)
    return target, out


async def _read_capped(resp: aiohttp.ClientResponse, limit: int, shown: str, *, truncate: bool = False) -> bytes:
    """The (decompressed) body, read chunk by chunk; over `limit` it is refused (or cut, for error snippets)."""
    if not truncate and resp.content_length is not None and resp.content_length > limit \
            and not resp.headers.get("Content-Encoding"):
        resp.close()
        raise SourceError(f"response from {shown} is {resp.content_length} bytes, over the {limit}-byte cap "
                          f"(max_response_bytes): refused", retriable=False)
    body = bytearray()
    async for chunk in resp.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > limit:
            resp.close()  # stop reading: the connection is dropped, not drained
            if truncate:
                return bytes(body[:limit])
            raise SourceError(f"response from {shown} is over the {limit}-byte cap (max_response_bytes, "
                              f"decompressed): refused", retriable=False)
    return bytes(body)


async def _attempt(session: aiohttp.ClientSession, url: str, params: Mapping[str, Any] | None,
                   headers: Mapping[str, str] | None, secrets: list[str], limiter: RateLimiter | None,
                   timeout: float, max_bytes: int) -> bytes:
    """One request (following redirects by hand): the body of a 2xx, or a SourceError saying whether to retry."""
    if limiter is not None:
        await limiter.acquire()
    current: URL | str = url
    hdrs = dict(headers or {})
    query = params
    shown = redact(url, secrets)
    try:
        for _ in range(MAX_REDIRECTS + 1):
            async with session.get(current, params=query, headers=hdrs, allow_redirects=False,
                                   timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                shown = redact(str(resp.url), secrets)
                if resp.status in _REDIRECTS:
                    location = resp.headers.get("Location")
                    if not location:
                        raise SourceError(f"HTTP {resp.status} without Location from {shown}", retriable=False)
                    current, hdrs = redirect_target(resp.url, location, hdrs, secrets)
                    query = None  # the Location is the whole next URL
                    continue
                if resp.status == 429 or resp.status >= 500:
                    hint = resp.headers.get("Retry-After") if resp.status in (429, 503) else None
                    reason = "429 Too Many Requests" if resp.status == 429 else f"HTTP {resp.status}"
                    raise _Retriable(f"{reason} from {shown}", hint)
                if resp.status >= 400:
                    body = await _read_capped(resp, _ERROR_SNIPPET_BYTES, shown, truncate=True)
                    snippet = redact(body[:300].decode(errors="replace"), secrets)
                    raise SourceError(f"HTTP {resp.status} from {shown}: {snippet}", retriable=False)
                return await _read_capped(resp, max_bytes, shown)
        raise SourceError(f"too many redirects (over {MAX_REDIRECTS}), last from {shown}", retriable=False)
    except SourceError:
        raise
    except (TimeoutError, aiohttp.ClientPayloadError) as exc:
        raise _Retriable(redact(f"{type(exc).__name__} on {shown}: {exc}", secrets)) from None
    except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError) as exc:
        raise SourceError(redact(f"{type(exc).__name__} on {shown}: {exc}", secrets), retriable=False) from None
    except aiohttp.ClientConnectionError as exc:
        raise _Retriable(redact(f"{type(exc).__name__} on {shown}: {exc}", secrets)) from None
    except (aiohttp.ClientError, ValueError) as exc:
        # ClientResponseError (a header over aiohttp's line limit, a malformed response), InvalidURL, ...:
        # not worth retrying, and their text includes the full request URL.
        raise SourceError(redact(f"{type(exc).__name__} on {shown}: {exc}", secrets), retriable=False) from None


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
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
    sleep: Sleep = asyncio.sleep,
) -> Any:
    """GET a URL and decode JSON (or text), retrying what is worth retrying. `sleep` is injectable (tests)."""
    values = _secret_values(secrets)
    jitter = wait_random_exponential(multiplier=base_delay, max=max_delay)

    def wait(state: RetryCallState) -> float:
        backoff = float(jitter(state))
        exc = state.outcome.exception() if state.outcome is not None else None
        hint = exc.retry_after if isinstance(exc, _Retriable) else None
        return retry_after_seconds(hint, backoff, max_retry_after) if hint else backoff

    def log_retry(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        wait_s = state.next_action.sleep if state.next_action is not None else 0.0
        logger.debug("retry %d/%d in %.2f s: %s", state.attempt_number, attempts, wait_s, exc)

    retrying = AsyncRetrying(
        stop=stop_after_attempt(attempts), wait=wait, sleep=sleep, before_sleep=log_retry, reraise=True,
        # A limiter that says no call may go out now (a day's quota spent) is not retried within this request.
        retry=retry_if_exception(lambda e: isinstance(e, SourceError) and e.retriable
                                 and not isinstance(e, QuotaBlocked)),
    )
    try:
        body: bytes = await retrying(_attempt, session, url, params, headers, values, limiter, timeout, max_bytes)
    except _Retriable as exc:
        raise SourceError(f"gave up after {attempts} attempts: {exc}", retriable=True) from None
    shown = redact(url, values)
    if as_text:
        return body.decode(errors="replace")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        snippet = redact(body[:200].decode(errors="replace"), values)
        raise SourceError(f"response from {shown} is not JSON: {snippet!r}") from None


async def get_text(session: aiohttp.ClientSession, url: str, **kwargs: Any) -> str:
    """GET a URL whose body is not JSON (CSV, say) as text: get_json's retries, rate limit, size cap, redirects
    and redaction, without the JSON decoding. Takes get_json's keyword arguments."""
    kwargs["as_text"] = True
    text: str = await get_json(session, url, **kwargs)
    return text
