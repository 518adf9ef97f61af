"""GET /dashboard rendered by a real headless Chromium against a running worker with data flowing.

The page's script polls /pipeline/metrics and /health; Chromium runs it with a virtual-time budget (network
fetches complete inside it), then dumps the DOM, which must show non-zero live numbers, and saves a
screenshot as a test artifact: artifacts/dashboard-browser/dashboard.png (git-ignored), with the DOM next to
it. Chromium is required (`apt-get install chromium`; .ci/run installs it; CHROMIUM=/path/to/chrome picks
another build): without it this test fails, it does not skip.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import ROOT, ensure_topics_for, wait_until

ARTIFACTS = ROOT / "artifacts" / "dashboard-browser"


def chromium_binary() -> str:
    for candidate in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and (found := shutil.which(candidate)):
            return found
    pytest.fail("no Chromium found for the dashboard browser test: install Debian's `chromium` "
                "(apt-get install -y chromium; .ci/run does) or set CHROMIUM=/path/to/chrome", pytrace=False)


def chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
           "--no-default-browser-check", "--disable-extensions", "--lang=en-US", "--hide-scrollbars",
           f"--user-data-dir={profile}", "--virtual-time-budget=6000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "LANG": "en_US.UTF-8"})


def text_of(dom: str, element_id: str) -> str:
    m = re.search(rf'id="{re.escape(element_id)}"[^>]*>([^<]*)<', dom)
    assert m, f"#{element_id} is not in the rendered page"
    return html.unescape(m.group(1)).strip()


def number(text: str) -> float:
    m = re.search(r"-?[\d,]*\.?\d+", text)
    assert m, f"no number in {text!r}"
    return float(m.group(0).replace(",", ""))


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


async def test_dashboard_renders_live_numbers_in_headless_chromium(iso, workers, pg, tmp_path) -> None:
    binary = chromium_binary()
    await ensure_topics_for(iso)
    # The worker's own simulated feed (leader-only), with a few bad records so every panel has something.
    w = workers(TICKFLOW_SOURCES__SIMULATED__ENABLED="true", TICKFLOW_SOURCES__SIMULATED__RATE_PER_SECOND="400",
                TICKFLOW_SOURCES__SIMULATED__INVALID_RATIO="0.02")

    def flowing() -> dict | None:
        try:
            status, m = w.get("/pipeline/metrics")
        except ValueError:  # a 500 with a plain-text body while the worker starts
            return None
        ok = status == 200 and m and m["written_points"] > 500 and m["rejected_points"] > 0 \
            and (m["throughput_per_sec"] or 0) > 0
        return m if ok else None

    await wait_until(flowing, 120, "rows written and rejected through the worker", interval=1.0)
    url = f"http://127.0.0.1:{w.port}/dashboard"
    profile = tmp_path / "chromium-profile"

    dom_run = chromium(binary, profile, "--dump-dom", url)
    assert dom_run.returncode == 0, f"chromium --dump-dom failed ({dom_run.returncode}): {dom_run.stderr[-2000:]}"
    dom = dom_run.stdout
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (tmp_path / "dashboard.html").write_text(dom)
    shutil.copy(tmp_path / "dashboard.html", ARTIFACTS / "dashboard.html")

    shot = tmp_path / "dashboard.png"
    shot_run = chromium(binary, profile, f"--screenshot={shot}", "--window-size=1280,1000", url)
    assert shot_run.returncode == 0, f"chromium --screenshot failed ({shot_run.returncode}): {shot_run.stderr[-2000:]}"
    assert shot.exists(), f"no screenshot written: {shot_run.stderr[-2000:]}"
    shutil.copy(shot, ARTIFACTS / "dashboard.png")

    # The script ran, both JSON pages answered, and the live numbers are on the page.
    status = text_of(dom, "status")
    assert status.startswith("live"), f"the page reports a problem: {status!r}"
    assert text_of(dom, "health") == "ok"
    assert text_of(dom, "role") == "leader"
    for element_id in ("total-processed", "total-valid", "total-written", "total-rejected", "total-throughput"):
        assert number(text_of(dom, element_id)) > 0, f"#{element_id} shows {text_of(dom, element_id)!r}"
    processed = number(text_of(dom, "total-processed"))
    assert processed >= number(text_of(dom, "total-valid")) and processed >= number(text_of(dom, "total-rejected"))
    assert re.search(r"ms$", text_of(dom, "total-p50")), text_of(dom, "total-p50")
    # Tables filled from the APIs: the per-source row, the simulated producer running, rejects by rule.
    per_source = re.search(r'id="per-source-body">(.*?)</tbody>', dom, re.S)
    assert per_source and "<td>simulated</td>" in per_source.group(1)
    sources = re.search(r'id="sources-body">(.*?)</tbody>', dom, re.S)
    assert sources and "simulated" in sources.group(1) and ">running<" in sources.group(1)
    rejects = re.search(r'id="rejects-body">(.*?)</tbody>', dom, re.S)
    assert rejects and re.search(r"<td>(schema|price|quote)\.[a-z_.]+</td>", rejects.group(1))
    line = re.search(r'id="line-throughput" points="([^"]*)"', dom)
    assert line and len(line.group(1).split()) >= 2, "the throughput chart has no points"

    width, height = png_size(shot)
    assert (width, height) == (1280, 1000), (width, height)
    assert shot.stat().st_size > 30_000, f"the screenshot is suspiciously small ({shot.stat().st_size} bytes)"
