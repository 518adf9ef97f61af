"""The package as a user installs it: a wheel built from this tree, installed in a fresh venv, run from a
directory that is not the checkout, so nothing can be found by accident next to the sources (topics.yaml is
package data). Dependencies come from the registry through pip's cache, pinned by constraints.txt."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import ROOT, ensure_topics_for

pytestmark = pytest.mark.integration
PACKAGE_FILES = ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "streams", "producers", "sinks")


def sh(*cmd: str | Path, cwd: Path, env: dict[str, str] | None = None,
       timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """bin/ of a fresh venv with only the built wheel (and its dependencies) installed."""
    tmp = tmp_path_factory.mktemp("wheel")
    # Built from a copy of what the package is made of: setuptools' build/ in the checkout could carry a
    # deleted module into the wheel, and the test leaves the checkout as it found it.
    src = tmp / "src"
    src.mkdir()
    for name in PACKAGE_FILES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif (ROOT / name).exists():
            shutil.copy2(ROOT / name, src / name)
    built = sh(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", ".", "-w", tmp / "dist", cwd=src)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp / "dist").glob("tickflow-*.whl")
    assert "streams/topics.yaml" in zipfile.ZipFile(wheel).namelist()
    venv = sh(sys.executable, "-m", "venv", tmp / "venv", cwd=tmp)
    assert venv.returncode == 0, venv.stderr
    bin_ = tmp / "venv" / "bin"
    # --no-compile: byte-compiling pandas and friends is most of an install's time, and none of it is tested.
    pip = sh(bin_ / "python", "-m", "pip", "install", "-q", "--no-compile", "-c", ROOT / "constraints.txt", wheel,
             cwd=tmp)
    assert pip.returncode == 0, pip.stderr[-3000:]
    yield bin_


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TICKFLOW_", "PYTHON", "VIRTUAL_ENV"))}
    return {**env, **extra}


def test_version_and_help_outside_the_checkout(installed: Path, tmp_path: Path) -> None:
    from importlib.metadata import version

    out = sh(installed / "tickflow", "--version", cwd=tmp_path, env=clean_env())
    assert out.returncode == 0 and out.stdout.strip() == f"tickflow {version('tickflow')}", out.stderr
    out = sh(installed / "tickflow", "topics", "check", "--help", cwd=tmp_path, env=clean_env())
    assert out.returncode == 0 and "Usage: tickflow topics" in out.stdout, out.stderr
    out = sh(installed / "tickflow", "--help", cwd=tmp_path, env=clean_env())
    assert out.returncode == 0 and "replay-dlq" in out.stdout and "worker" in out.stdout, out.stderr
    where = sh(installed / "python", "-c", "import streams; print(streams.__file__)", cwd=tmp_path, env=clean_env())
    assert str(ROOT) not in where.stdout and "site-packages" in where.stdout  # the wheel's, not the checkout's


async def test_topics_check_uses_the_packaged_topics_file(installed: Path, tmp_path: Path, iso) -> None:
    """Against the real broker: the installed package reads its own topics.yaml (the same topics as ours)."""
    await ensure_topics_for(iso)
    out = sh(installed / "tickflow", "topics", "check", cwd=tmp_path, env=clean_env(**iso.env), timeout=120)
    assert out.returncode == 0, out.stderr
    assert all(t.name in out.stdout for t in iso.catalog.topics)

    # The override: a deployment's own file, named by TICKFLOW_TOPICS_FILE.
    missing = tmp_path / "nope" / "topics.yaml"
    out = sh(installed / "tickflow", "topics", "check", cwd=tmp_path,
             env=clean_env(**iso.env, TICKFLOW_TOPICS_FILE=str(missing)), timeout=120)
    assert out.returncode == 2 and f"cannot read {missing}" in out.stderr and "Traceback" not in out.stderr
