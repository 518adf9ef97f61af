"""The worker's heap after start-up: frozen out of the collector's reach, and the young generation collected
every worker.gc_young_threshold net allocations instead of Python's 700 (streams/app.py settle_heap)."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator

import pytest

from streams.app import app, settle_heap, settle_worker_heap
from streams.errors import ConfigError
from streams.settings import load_settings


@pytest.fixture
def collector() -> Iterator[None]:
    """Whatever a test does to the collector is undone after it."""
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_settle_heap_freezes_and_raises_the_young_threshold(collector: None) -> None:
    gc.set_threshold(700, 10, 10)
    gc.unfreeze()
    settle_heap(50_000)
    assert gc.get_threshold() == (50_000, 10, 10)  # the older generations keep their thresholds
    assert gc.get_freeze_count() > 0


def test_zero_keeps_pythons_threshold(collector: None) -> None:
    gc.set_threshold(700, 10, 10)
    settle_heap(0)
    assert gc.get_threshold() == (700, 10, 10)


def test_the_worker_runs_it_at_start() -> None:
    assert settle_worker_heap in app._app_tasks  # Faust's start-up tasks, run once the worker is ready


def test_the_threshold_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("TICKFLOW_")]:
        monkeypatch.delenv(name)
    assert load_settings().worker.gc_young_threshold == 50_000
    monkeypatch.setenv("TICKFLOW_WORKER__GC_YOUNG_THRESHOLD", "0")
    assert load_settings().worker.gc_young_threshold == 0
    monkeypatch.setenv("TICKFLOW_WORKER__GC_YOUNG_THRESHOLD", "-1")
    with pytest.raises(ConfigError, match="gc_young_threshold"):
        load_settings()
