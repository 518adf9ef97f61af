"""bench/ holds scripts, not a package: a test loads one by path, once per test session."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH_DIR = Path(__file__).resolve().parents[3] / "bench"


def load(script: str) -> ModuleType:
    """bench/<script>.py as a module (registered as <script>_bench, so it is executed once)."""
    name = f"{script}_bench"
    mod = sys.modules.get(name)
    if mod is None:
        spec = importlib.util.spec_from_file_location(name, BENCH_DIR / f"{script}.py")
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return mod
