"""The batching-writer contract every sink implements.

A writer takes a whole batch and either commits all of it or raises: SinkUnavailable (retriable, the
caller retries the same batch later) or SinkError (the batch holds data the store refuses; the caller
bisects it to find the bad rows). Writes are idempotent on the natural key, so replays are harmless.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class WriteResult:
    inserted: int
    duplicates: int
    # rows inserted per source, so metrics stay exact when a batch mixes sources
    inserted_by_source: dict[str, int] = field(default_factory=dict)


class BatchWriter(ABC):
    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def stop(self) -> None: ...

    @abstractmethod
    async def write(self, rows: Sequence[tuple[Any, ...]]) -> WriteResult:
        """Write all rows in one transaction; duplicates of existing natural keys are skipped."""
