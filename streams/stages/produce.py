"""Stage 1 in the worker — the enabled sources, run only on the group's leader.

Reads: the providers (HTTP, websocket, the simulated feed). Writes: raw.<source> for each enabled source.

A timer checks leadership every second: the leader runs one task per enabled source, any other worker
runs none, so two or more workers never produce the same data twice; when the leader changes, the new
one takes over. What a source's failure means is its error's `retriable` (streams/errors.py): a retriable one
(or an unexpected exception, a network error) restarts the source with capped exponential backoff (tenacity),
counted from its last good batch; one that says it is not retriable (a bad configuration: a replay without files)
marks the source `failed` in /health and it is not restarted. A refused key is retried: a polling round in which
every call failed, and a stream whose connections keep failing, raise a retriable SourceError naming the last
cause (producers/base.py), so the source shows `failing` with it. Either way it never stops the others, and the
error shown in /health is redacted (streams/redact.py).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, cast

import aiohttp
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_never, wait_exponential
from tenacity.wait import wait_base

from producers.base import Source, encode
from producers.quota import KafkaQuotaStore
from producers.registry import Collaborators, enabled_sources
from streams.app import app, settings
from streams.errors import TickflowError
from streams.redact import redact
from streams.stages.publish import Outgoing, Send, send_all
from streams.stages.topics import catalog

logger = logging.getLogger(__name__)

MAX_ERROR_CHARS = 500


@dataclass(slots=True)
class SourceStatus:
    """One source task, as /health, the dashboard and /metrics show it."""

    source: str
    kind: str
    state: str = "idle"  # idle | running | failing (backing off) | failed (not retriable) | finished (a replay)
    sent: int = 0
    failures: int = 0
    last_error: str | None = None  # redacted
    last_sent_at: float | None = None
    failures_in_row: int = 0  # since the last good batch: what the backoff counts


def restartable(exc: BaseException) -> bool:
    """Our errors decide by `retriable`; any other Exception (a network error, a parser bug) is worth a restart.
    A cancellation (the supervisor stopping) is not an Exception and is never retried."""
    if isinstance(exc, TickflowError):
        return exc.retriable
    return isinstance(exc, Exception)


def describe(exc: BaseException) -> str:
    """An error as /health shows it: redacted (an aiohttp error prints its URL, query string and key included)."""
    return redact(f"{type(exc).__name__}: {exc}")[:MAX_ERROR_CHARS]


class _SinceLastBatch(wait_base):
    """tenacity's exponential wait with jitter, counted from the source's last good batch rather than from the
    task's start, so a feed that drops once a day does not creep up to the cap."""

    def __init__(self, st: SourceStatus, initial: float, cap: float) -> None:
        self.st = st
        self.cap = cap
        self.exponential = wait_exponential(multiplier=initial, max=cap)

    def __call__(self, retry_state: RetryCallState) -> float:
        # tenacity asks for the wait before `before_sleep` counts this failure: it is failure number n + 1.
        attempt = cast(RetryCallState, _Attempt(self.st.failures_in_row + 1))
        return min(self.cap, self.exponential(attempt) * (0.5 + random.random()))


@dataclass(slots=True)
class _Attempt:
    """The one field of a RetryCallState that tenacity's exponential wait reads."""

    attempt_number: int


class SourceSupervisor:
    """Runs the sources while this worker leads. `send` publishes records, `topic_for` names a source's raw
    topic; `session` makes the HTTP session and `sleep` waits out the backoff (both swapped in tests)."""

    def __init__(self, sources: list[Source], *, send: Send, topic_for: Callable[[str], str],
                 session: Callable[[], aiohttp.ClientSession] = aiohttp.ClientSession,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 initial_backoff: float = 1.0, max_backoff: float = 300.0,
                 not_started: Mapping[str, str] | None = None) -> None:
        self.sources = sources
        self.send = send
        self.topic_for = topic_for
        self.session = session
        self.sleep = sleep
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.states: dict[str, SourceStatus] = {}
        for name, why in (not_started or {}).items():  # enabled, but it could not be built (a missing key)
            self.states[f"{name}:-"] = SourceStatus(name, "not started", state="failed", last_error=redact(why))

    def status(self) -> list[dict[str, Any]]:
        """Every source's state, for /health, the dashboard and /metrics (errors already redacted)."""
        by_key = {f"{s.name}:{type(s).__name__}": s for s in self.sources}
        out = []
        for key, st in sorted(self.states.items(), key=lambda kv: (kv[1].source, kv[1].kind)):
            d = asdict(st)
            del d["failures_in_row"]
            # The provider's own counters (producers/*.py keep Counters): payloads of an unexpected shape per
            # endpoint, and answers for unknown symbols (summed over symbols: labels stay bounded).
            source = by_key.get(key)
            d["unexpected"] = {str(k): int(v) for k, v in (getattr(source, "unexpected", None) or {}).items()}
            d["unknown_symbols"] = sum(int(v) for v in (getattr(source, "unknown", None) or {}).values())
            # Failed provider calls per endpoint, each warned once per cause (the news source's `errors`).
            d["errors"] = {str(k): int(v) for k, v in (getattr(source, "errors", None) or {}).items()}
            out.append(d)
        return out

    def _state(self, source: Source) -> SourceStatus:
        key = f"{source.name}:{type(source).__name__}"
        st = self.states.get(key)
        if st is None:
            st = self.states[key] = SourceStatus(source.name, type(source).__name__)
        return st

    async def reconcile(self, leader: bool) -> None:
        if leader:
            for i, source in enumerate(self.sources):
                task = self.tasks.get(i)
                if (task is None or task.done()) and self._state(source).state not in ("failed", "finished"):
                    self.tasks[i] = asyncio.create_task(self._run(source), name=f"source-{source.name}")
        else:
            await self.stop()

    async def stop(self) -> None:
        tasks, self.tasks = list(self.tasks.values()), {}
        for t in tasks:
            t.cancel()
        for t in tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        for st in self.states.values():
            if st.state not in ("failed", "finished"):
                st.state = "idle"

    async def _pump(self, source: Source, session: aiohttp.ClientSession, topic: str, st: SourceStatus) -> None:
        # Restarted after a failure, a source that yields after every good round (a polling source: its fetch
        # raises after a round in which every call failed, producers/base.py) stays `failing` until one goes well.
        st.state = "failing" if st.failures_in_row and getattr(source, "yields_every_round", False) else "running"
        async for batch in source.fetch(session):
            if batch:
                records = [encode(r) for r in batch]
                await self.send([Outgoing(topic, r.key, r.value) for r in records])
                st.sent += len(records)
                st.last_sent_at = time.time()
            st.failures_in_row = 0
            st.state = "running"

    def _failed_attempt(self, source: Source, st: SourceStatus, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        st.failures += 1
        st.failures_in_row += 1
        st.state = "failing"
        st.last_error = describe(exc) if exc is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        logger.warning("source %s failed (%s); restarting in %.0f s", source.name, st.last_error, wait)

    async def _run(self, source: Source) -> None:
        topic = self.topic_for(source.name)
        st = self._state(source)
        retrying = AsyncRetrying(
            retry=retry_if_exception(restartable),
            wait=_SinceLastBatch(st, self.initial_backoff, self.max_backoff),
            stop=stop_never,
            sleep=self.sleep,
            before_sleep=lambda state: self._failed_attempt(source, st, state),
            reraise=True,
        )
        async with self.session() as session:
            try:
                while True:  # a fetch of an endless source that ends by itself is started again
                    async for attempt in retrying:
                        with attempt:
                            await self._pump(source, session, topic, st)
                    if source.finite:
                        st.state = "finished"
                        logger.info("source %s finished (%d records sent)", source.name, st.sent)
                        return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # not retriable: retrying cannot help (a rejected key, a bad request)
                st.failures += 1
                st.state = "failed"
                st.last_error = describe(exc)
                logger.error("source %s failed and will not be restarted: %s", source.name, st.last_error)




# The Faust wiring: this worker's sources, supervised on the leader. Daily quotas (Alpha Vantage) are counted
# on a compacted topic, so a restart or a new leader continues the day's count (producers/quota.py).
quota_store = KafkaQuotaStore.for_settings(settings.kafka)
_not_started: dict[str, str] = {}
supervisor = SourceSupervisor(enabled_sources(settings.sources, collaborators=Collaborators(quota_store=quota_store),
                                              not_started=_not_started),
                              send=send_all, topic_for=lambda name: catalog.raw(name).name, not_started=_not_started)


@app.timer(1.0, name="supervise_sources")
async def supervise_sources() -> None:
    await supervisor.reconcile(app.is_leader())


@app.on_before_shutdown.connect
async def _stop_sources(sender: object = None, **kwargs: object) -> None:
    await supervisor.stop()
    await quota_store.close()
