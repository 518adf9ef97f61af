"""The batching-writer contract every sink implements, and the one revision policy every sink applies.

A writer takes a whole batch and either commits all of it or raises a SinkError whose `retriable` decides:
retriable (SinkUnavailable: the store, not the data) -> the caller retries the same batch later and
dead-letters nothing; not retriable (SinkRefused: the data) -> the caller bisects the batch to find the bad
rows. Writes are idempotent on the natural key, so replays are harmless.

Revisions (issue 14). Immutable kinds (tick, trade, news, social) keep their first write: a re-send is a
no-op. Revisable kinds (a forming bar re-sent as it grows, the day's quote re-polled, an economic
observation whose vintage is closed on the next poll) keep their newest revision, judged by `revision_of`,
so a replay or a reordering never lets an older revision overwrite a newer one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, ClassVar, TypeVar

from streams.errors import SinkError

R = TypeVar("R")
T = TypeVar("T")

# The kinds whose stored row follows the newest revision; every other kind is immutable (first write wins).
REVISABLE_KINDS: frozenset[str] = frozenset({"bar", "quote", "economic"})
# FRED's "still current" realtime_end: an open vintage. A closed one (any other date) is final.
OPEN_VINTAGE_END = date(9999, 12, 31)
# Added to a closed vintage's revision so it beats every open one whatever the clocks said: once FRED has
# closed a vintage it never reopens, so a late re-send of the open version must not win.
CLOSED_VINTAGE_RANK = 1 << 56
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def revision_of(data_type: str, ingested_at: datetime | None, realtime_end: date | None) -> int:
    """The monotonic revision key of one record (a bigint; larger = newer).

    0 for immutable kinds (so nothing ever replaces their first write). For revisable kinds: the
    microseconds since 1970 of `ingested_at`, the producer's publish time of this version (a re-poll is
    published later than the poll it revises; an exact re-send carries the same time, so it is a no-op).
    An economic observation whose realtime_end is a real date (a closed vintage) adds CLOSED_VINTAGE_RANK.
    A revisable record without ingested_at gets the lowest revision of its rank, so any timed version wins.
    """
    if data_type not in REVISABLE_KINDS:
        return 0
    rev = (ingested_at - _EPOCH) // _MICROSECOND if ingested_at is not None else 0
    if data_type == "economic" and realtime_end is not None and realtime_end != OPEN_VINTAGE_END:
        rev += CLOSED_VINTAGE_RANK
    return rev


def _add(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    out = dict(a)
    for k, n in b.items():
        out[k] = out.get(k, 0) + n
    return out


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What the sink did with one batch, counted by the sink itself. Every row is exactly one of:
    inserted (a new natural key), updated (a newer revision replaced the stored one) or a duplicate
    (ignored: an exact re-send, a stale revision, or superseded by a newer revision in the same batch)."""

    inserted: int
    duplicates: int
    # rows inserted per source, so metrics stay exact when a batch mixes sources
    inserted_by_source: dict[str, int] = field(default_factory=dict)
    updated: int = 0
    updated_by_source: dict[str, int] = field(default_factory=dict)
    duplicates_by_source: dict[str, int] = field(default_factory=dict)
    # Per source, the ingested_at (epoch seconds) of every record of the batch that had one: filled by
    # write_json, whose caller has not decoded the records (the latency metric); empty from write.
    ingested_by_source: dict[str, list[float]] = field(default_factory=dict)

    @property
    def written_by_source(self) -> dict[str, int]:
        """Rows that changed the store (inserted or updated), per source."""
        return _add(self.inserted_by_source, self.updated_by_source)

    def __add__(self, other: WriteResult) -> WriteResult:
        return WriteResult(
            self.inserted + other.inserted, self.duplicates + other.duplicates,
            _add(self.inserted_by_source, other.inserted_by_source), self.updated + other.updated,
            _add(self.updated_by_source, other.updated_by_source),
            _add(self.duplicates_by_source, other.duplicates_by_source),
            {src: self.ingested_by_source.get(src, []) + other.ingested_by_source.get(src, [])
             for src in self.ingested_by_source.keys() | other.ingested_by_source.keys()},
        )


async def write_bisecting(write: Callable[[list[R]], Awaitable[T]], rows: list[R], join: Callable[[T, T], T],
                          nothing: T, *, first: int = 0) -> tuple[T, list[tuple[int, SinkError]]]:
    """Write `rows` with `write`; when the database refuses the batch for its data (a SinkError that is not
    retriable), bisect it: every other row is written and the refused ones come back, by their index in `rows`,
    with the error (the caller dead-letters or counts them). `join` adds two halves' results. A retriable error
    (the store, not the data) is raised: `write` is expected to have waited it out already."""
    try:
        return await write(rows), []
    except SinkError as exc:
        if exc.retriable:
            raise
        if len(rows) <= 1:
            return nothing, [(first, exc)] if rows else []
    mid = len(rows) // 2
    left, bad_left = await write_bisecting(write, rows[:mid], join, nothing, first=first)
    right, bad_right = await write_bisecting(write, rows[mid:], join, nothing, first=first + mid)
    return join(left, right), bad_left + bad_right


class BatchWriter(ABC):
    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def stop(self) -> None: ...

    @abstractmethod
    async def write(self, rows: Sequence[tuple[Any, ...]]) -> WriteResult:
        """Write all rows in one transaction, applying the revision policy above."""

    # True when write_json takes clean records' JSON bytes as they are: the write stage then hands it the
    # records undecoded (the database parses them), and takes each record's source and ingested_at from the
    # result's ingested_by_source.
    takes_json: ClassVar[bool] = False

    async def write_json(self, records: Sequence[bytes]) -> WriteResult:
        """Write clean records given as their JSON bytes, as write() writes their rows (takes_json)."""
        raise NotImplementedError(f"{type(self).__name__} takes rows, not JSON records")

    async def durable(self) -> int:
        """Wait until every write that has returned is durable, and return how many times writes that had
        returned were found possibly lost before that (a server crash drops asynchronous commits not yet
        flushed). The caller commits its input's offsets after this, and reads them again when the count grew.
        Here writes are durable when they return: 0."""
        return 0
