"""The compiled detectors (streams/anomalies/native.py, dev/build_detectors.py): a build is used only for the
sources it was made from, and it decides exactly as the Python source does."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from streams.anomalies import native

ROOT = Path(__file__).resolve().parents[4]


def _fake_build(root: Path, package_dir: Path, *, complete: bool) -> Path:
    d = root / f"{native.sources_hash(package_dir)}-{sys.implementation.cache_tag}"
    (d / "anomalies").mkdir(parents=True)
    (d / "lib").mkdir()
    if complete:
        (d / native.COMPLETE).write_text("")
    return d


def test_a_build_is_taken_only_when_complete_and_not_when_turned_off(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TICKFLOW_COMPILED_DIR", str(tmp_path))
    monkeypatch.delenv("TICKFLOW_PURE_PYTHON", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    d = _fake_build(tmp_path, native.PACKAGE_DIR, complete=False)
    path: list[str] = ["src"]
    assert native.activate(path) is None and path == ["src"]  # a build still being written
    (d / native.COMPLETE).write_text("")
    assert native.activate(path) == d and path == [str(d / "anomalies"), "src"]
    assert str(d / "lib") in sys.path
    monkeypatch.setenv("TICKFLOW_PURE_PYTHON", "1")
    assert native.activate(["src"]) is None


def test_an_edited_source_no_longer_matches_its_build(tmp_path: Path) -> None:
    pkg = tmp_path / "anomalies"
    shutil.copytree(native.PACKAGE_DIR, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    before = native.sources_hash(pkg)
    assert before == native.sources_hash(native.PACKAGE_DIR)
    price = pkg / "price.py"
    price.write_text(price.read_text() + "\n# an edit\n")
    assert native.sources_hash(pkg) != before
    (pkg / "detectors.py").write_text("# not compiled: not in the hash\n")
    price.write_text(price.read_text().replace("\n# an edit\n", ""))
    assert native.sources_hash(pkg) == before


def _decisions(pure: bool) -> str:
    env = {**os.environ, "TICKFLOW_PURE_PYTHON": "1" if pure else "", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "tests.unit.streams.anomalies.native_decisions"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_the_compiled_detectors_decide_exactly_as_the_python_source() -> None:
    if not (native.build_dir() / native.COMPLETE).is_file():
        if os.environ.get("CI"):  # `make test` builds them (dev/build_detectors.py): under CI a missing build fails
            pytest.fail("no compiled build of the detectors: dev/build_detectors.py --strict says why")
        pytest.skip("no compiled build of the detectors (make test builds it: dev/build_detectors.py)")
    pure, compiled = _decisions(pure=True), _decisions(pure=False)
    assert pure.startswith("# native: False\n") and compiled.startswith("# native: True\n")
    pure_lines, compiled_lines = pure.splitlines()[1:], compiled.splitlines()[1:]
    assert len(pure_lines) > 500  # anomalies of every family and the states
    for detector in ("brownlees_gallo", "split_suspect", "bar_outlier", "stale_feed", "ohlc_inconsistent"):
        assert any(f'"detector": "{detector}"' in line for line in pure_lines), detector
    assert compiled_lines == pure_lines
