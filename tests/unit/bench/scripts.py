"""bench/ holds scripts, not a package: a test loads one by path, once per test session."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

from tests.unit.scripts import load_script

BENCH_DIR = Path(__file__).resolve().parents[3] / "bench"


def load(script: str) -> ModuleType:
    """bench/<script>.py as a module (registered as <script>_bench, so it is executed once)."""
    name = f"{script}_bench"
    mod = sys.modules.get(name)
    if mod is None:
        mod = load_script(BENCH_DIR / f"{script}.py", name)
    return mod
