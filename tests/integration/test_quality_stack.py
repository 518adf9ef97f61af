"""Data quality as it is judged: real series from PyPI packages (the classic and the `more` sets of
bench/anomaly_quality_real.py) with labelled injected anomalies, written as yfinance CSV files and replayed by a
worker's own replay source through the real broker into the real PostgreSQL (bench/anomaly_quality_stack.py, run
as a user runs it). A labelled bar is caught when it was dead-lettered or its stored row carries an anomaly or
suspect flag; the stack must flag exactly the (symbol, date) keys the in-process Router does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.integration.conftest import ROOT


def test_real_series_replayed_through_the_stack_meet_the_quality_goal_and_match_the_router(tmp_path: Path) -> None:
    out = tmp_path / "quality.json"
    run = subprocess.run([sys.executable, "bench/anomaly_quality_stack.py", "--out", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=900)
    assert out.exists(), run.stdout[-2000:] + run.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["points"] > 70_000 and result["labelled"] > 400  # every series landed, every label scored
    assert result["same_as_router"], (result["false_positives"], result["router_false_positives"])
    assert result["precision"] >= 0.95 and result["recall_spikes_decimal"] >= 0.95
    assert result["false_positive_rate"] <= 0.002
    assert run.returncode == 0, run.stdout[-2000:]
