"""The detectors compiled with mypyc, when a build matching these very sources exists (dev/build_detectors.py,
run by `make run` and `make test`): the same code, about 1.6x faster per record (bench/README.md).

Why not compiled in place: Python loads a module's .so before its .py whatever their dates, so an edited
detector would silently keep running its old compiled code. Here a build lives in a directory named by the
hash of the compiled sources and the interpreter (`build_dir`); the package's `__path__` takes it first only
when that directory exists and is complete, so any edit falls back to the Python source until the next build.
TICKFLOW_PURE_PYTHON=1 turns it off; TICKFLOW_COMPILED_DIR moves the builds. A leaf: imports nothing of ours.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import MutableSequence
from pathlib import Path

# The modules compiled, in their package; the others (detectors, calendars, native) stay Python. All or none:
# an interpreted class cannot subclass a compiled one (Detector is in core).
MODULES = ("windows", "core", "price", "bars", "feed", "suite")
PACKAGE_DIR = Path(__file__).resolve().parent
COMPLETE = "complete"  # written last by the build: a directory without it is never used


def builds_root() -> Path:
    return Path(os.environ.get("TICKFLOW_COMPILED_DIR") or PACKAGE_DIR.parents[1] / ".cache" / "compiled")


def sources_hash(package_dir: Path = PACKAGE_DIR) -> str:
    h = hashlib.sha256()
    for name in MODULES:
        h.update(name.encode() + b"\0" + (package_dir / f"{name}.py").read_bytes() + b"\0")
    return h.hexdigest()[:20]


def build_dir(package_dir: Path = PACKAGE_DIR) -> Path:
    """Where the build of these sources for this interpreter is (or goes)."""
    return builds_root() / f"{sources_hash(package_dir)}-{sys.implementation.cache_tag}"


def activate(package_path: MutableSequence[str]) -> Path | None:
    """Put a complete build of these sources first on the package's `__path__` (before any detector module is
    imported); returns its directory, or None when the detectors run as Python."""
    if os.environ.get("TICKFLOW_PURE_PYTHON", "").strip() not in ("", "0"):
        return None
    try:
        d = build_dir()
    except OSError:  # a source file unreadable: nothing to match a build against
        return None
    if not (d / COMPLETE).is_file():
        return None
    lib = str(d / "lib")  # mypyc's shared library, a top-level module the compiled modules import by name
    if lib not in sys.path:
        sys.path.append(lib)
    package_path.insert(0, str(d / "anomalies"))
    return d
