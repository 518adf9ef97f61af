"""dev/, examples/ and bench/ hold scripts, not packages: a test loads one by its path."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def load_script(path: Path, name: str) -> ModuleType:
    """The script at `path` (absolute, or relative to the repository) executed as a new module called `name`, in
    sys.modules while it runs (a dataclass looks its module up there)."""
    spec = importlib.util.spec_from_file_location(name, path if path.is_absolute() else ROOT / path)
    assert spec is not None and spec.loader is not None
    mod = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
