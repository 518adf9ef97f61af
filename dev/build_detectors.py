#!/usr/bin/env python3
"""Compile the anomaly detectors with mypyc into the build directory their sources name
(streams/anomalies/native.py), so the worker runs them compiled; run by `make run` and `make test` (setup).

A no-op when that build exists. Without mypyc or a C compiler, or when the build fails, the detectors run as
Python and this says so: exit 0, unless --strict (then 1). The build is checked before it is used: it must
import in a fresh interpreter as the compiled modules.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streams.anomalies import native  # noqa: E402

# Run in a child: setuptools' `setup()` drives mypyc's build_ext (mypyc checks the types first: a type error
# fails the build, never a silent pure-Python one under --strict).
_BUILD = """
import sys
from mypyc.build import mypycify
from setuptools import setup
out, tmp, *modules = sys.argv[1:]
setup(name="tickflow-detectors", ext_modules=mypycify(["--follow-imports=silent", "--ignore-missing-imports",
      *modules], opt_level="3"), script_args=["build_ext", "--build-lib", out, "--build-temp", tmp, "-q"])
"""

_CHECK = """
import streams.anomalies as a
from streams.anomalies import native
assert a.NATIVE is not None, "the build was not taken"
import importlib
for m in native.MODULES:
    f = importlib.import_module(f"streams.anomalies.{m}").__file__
    assert f.endswith(".so"), f
"""


def build(target: Path) -> str | None:
    """Build into `target` (made complete only at the end); the reason it failed, or None."""
    try:
        import mypyc  # noqa: F401
    except ImportError:
        return "mypyc is not installed (pip install -c constraints.txt -e '.[compiled]')"
    if shutil.which(os.environ.get("CC", "cc")) is None:
        return "no C compiler (cc)"
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out, work = Path(tmp) / "out", Path(tmp) / "work"
        modules = [f"streams/anomalies/{m}.py" for m in native.MODULES]
        r = subprocess.run([sys.executable, "-c", _BUILD, str(out), str(work), *modules], cwd=ROOT,
                           env={**os.environ, "MYPY_CACHE_DIR": str(work / "mypy-cache")}, capture_output=True,
                           text=True)
        if r.returncode:
            return f"mypyc failed:\n{(r.stdout + r.stderr)[-4000:]}"
        libs = [p for p in out.glob("*__mypyc*.so")]
        wrappers = {m: list((out / "streams" / "anomalies").glob(f"{m}.*.so")) for m in native.MODULES}
        if len(libs) != 1 or any(len(w) != 1 for w in wrappers.values()):
            return f"unexpected build output: {sorted(str(p.relative_to(out)) for p in out.rglob('*.so'))}"
        staged = Path(tmp) / "staged"
        (staged / "lib").mkdir(parents=True)
        (staged / "anomalies").mkdir()
        shutil.move(str(libs[0]), staged / "lib" / libs[0].name)
        for (w,) in wrappers.values():
            shutil.move(str(w), staged / "anomalies" / w.name)
        (staged / native.COMPLETE).write_text("\n".join(native.MODULES) + "\n")
        shutil.rmtree(target, ignore_errors=True)
        shutil.move(str(staged), target)
    env = {**os.environ, "TICKFLOW_PURE_PYTHON": "", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", _CHECK], cwd=ROOT, env=env, capture_output=True, text=True)
    if r.returncode:
        shutil.rmtree(target, ignore_errors=True)
        return f"the build does not import:\n{r.stderr[-2000:]}"
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--strict", action="store_true", help="exit 1 when the detectors could not be compiled")
    args = ap.parse_args()
    target = native.build_dir()
    if (target / native.COMPLETE).is_file():
        print(f"[detectors] compiled build up to date: {target}")
        return 0
    print("[detectors] compiling the anomaly detectors with mypyc (about a minute) ...", flush=True)
    why = build(target)
    if why is None:
        print(f"[detectors] compiled: {target}")
        return 0
    print(f"[detectors] running them as Python: {why}", file=sys.stderr)
    return 1 if args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
