"""`tickflow selftest` as a user runs it: a subprocess against the real stack, its report read back, its
numbers checked for being measured (rows counted, points/s, milliseconds), and what it created gone after."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient

from streams.settings import load_settings
from tests.integration.conftest import ROOT

# The product brief's `python test_pipeline.py` check names (yfinance_connector covers three more providers too).
CHECKS = ("config_management", "data_quality", "core_functionality", "throughput_performance", "latency_performance",
          "yfinance_connector", "full_integration", "error_recovery")


def selftest(env: dict[str, str], *args: str, timeout: float = 420) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams", "selftest", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def gone(path: str) -> bool:
    return not Path(path).exists()


def count(text: str) -> int:
    return int(text.replace(",", ""))


# Their verdicts depend on the machine (the brief's 1,000 points/s and 50 ms average) and on what else runs on
# it: the test checks that the numbers are measured and that the verdict follows from them.
MACHINE_BOUND = ("throughput_performance", "latency_performance")


def line_of(out: str, check: str, *, must_pass: bool = True) -> tuple[bool, str]:
    m = re.search(rf"^  (✅|❌) {re.escape(check)}: (.*)$", out, re.M)
    assert m, f"no report line for {check!r} in:\n{out}"
    progress = re.search(rf"^(PASS|FAIL)  {re.escape(check)}\s+(.*)$", out, re.M)
    assert progress and (progress[1] == "PASS") == (m[1] == "✅") and progress[2] == m[2], out
    assert m.group(1) == "✅" or not must_pass, f"{check} failed: {m.group(2)}\n\n{out}"
    return m.group(1) == "✅", m.group(2)


async def test_selftest_reports_real_numbers_on_the_local_stack() -> None:
    """Every check that does not depend on the machine passes; throughput and latency report measured numbers
    whose verdict follows the brief's thresholds (speed is judged by bench/, never by a timed test)."""
    proc = selftest({**os.environ})
    out = proc.stdout
    verdicts = {check: line_of(out, check, must_pass=check not in MACHINE_BOUND) for check in CHECKS}
    lines = {check: text for check, (_, text) in verdicts.items()}
    passed = sum(ok for ok, _ in verdicts.values())
    assert proc.returncode == (0 if passed == 8 else 1), f"exit code {proc.returncode}\n{out}\n{proc.stderr[-4000:]}"
    assert [m.group(1) for m in re.finditer(r"^  (?:✅|❌) (\w+): ", out, re.M)] == list(CHECKS)
    assert re.search(rf"^{passed}/8 tests passed in \d+ s$", out, re.M), out
    summary = re.search(r"^Test Summary:\n  Total Tests: 8\n  Passed: (\d)\n  Failed: (\d)\n  Warnings: 0\n"
                        r"  Success Rate: ([\d.]+)%$", out, re.M)
    assert summary and int(summary[1]) == passed and int(summary[2]) == 8 - passed, out
    assert float(summary[3]) == round(100 * passed / 8, 1)

    core = re.search(r"([\d,]+) points in [\d.]+ s: ([\d,]+) rows in market_data \(([\d,]+) distinct keys, "
                     r"([\d,]+) valid sent\), (\d+) in ticks\.rejected\.selftest-[0-9a-f]{8} \((\d+)/(\d+) with",
                     lines["core_functionality"])
    assert core, lines["core_functionality"]
    points, rows, keys, valid, dead, right, invalid = (count(g) for g in core.groups())
    assert points == 2000 and rows == keys == valid == points - invalid > 0 and dead == right == invalid > 0

    tp = re.search(r"^([\d,]+) points/s: ([\d,]+)/([\d,]+) rows committed ([\d.]+) s", lines["throughput_performance"])
    assert tp, lines["throughput_performance"]
    rate, got, sent, seconds = count(tp[1]), count(tp[2]), count(tp[3]), float(tp[4])
    assert got == sent == 20000 and seconds > 0 and verdicts["throughput_performance"][0] == (rate >= 1000)
    assert abs(rate - got / seconds) <= 0.02 * rate + 1  # the rate is rows over the measured time

    lat = re.search(r"^avg ([\d.]+) ms, p50 ([\d.]+) ms, p95 ([\d.]+) ms, p99 ([\d.]+) ms, max ([\d.]+) ms over "
                    r"([\d,]+)/([\d,]+) rows", lines["latency_performance"])
    assert lat, lines["latency_performance"]
    avg, p50, p95, p99, top = (float(lat[i]) for i in range(1, 6))
    assert 0 < p50 <= p95 <= p99 <= top and 0 < avg <= top and count(lat[6]) == count(lat[7]) > 3000
    assert verdicts["latency_performance"][0] == (avg < 50)

    assert re.search(r"^YFinance connector processed (\d+) data points; .*yahoo \1 .*fred \d+ .*alpha_vantage 1 "
                     r".*finnhub 1 ", lines["yfinance_connector"])

    integ = re.search(r"GET /health 200 'ok'.*processed ([\d,]+) \(sent ([\d,]+)\), rejected (\d+) \(sent invalid "
                      r"(\d+)\), written ([\d,]+) \(rows in PostgreSQL ([\d,]+)\)", lines["full_integration"])
    assert integ, lines["full_integration"]
    assert count(integ[1]) == count(integ[2]) > 20000 and integ[3] == integ[4] == str(invalid)
    assert count(integ[5]) == count(integ[6]) > 20000

    rec = re.search(r"at ([\d,]+)/([\d,]+) rows; a new worker finished: ([\d,]+) rows = ([\d,]+) distinct natural "
                    r"keys = ([\d,]+) sent, 0 lost, 0 duplicates", lines["error_recovery"])
    assert rec, lines["error_recovery"]
    at_kill, total, rows, keys, sent = (count(g) for g in rec.groups())
    assert 0 < at_kill < total and rows == keys == sent == total

    perf = re.search(r"^Performance Metrics:\n  Throughput: ([\d.]+) data points/sec \(target: 1000\)\n"
                     r"  Average Latency: ([\d.]+)ms \(target: <50ms\)\n  95th Percentile Latency: ([\d.]+)ms$",
                     out, re.M)
    assert perf and abs(float(perf[1]) - rate) <= 1 and float(perf[2]) == avg and float(perf[3]) == p95, out

    # It cleaned up after itself: no schema, no topics, no work directory left.
    tag = re.search(r"schema (selftest_([0-9a-f]{8}))", out)
    assert tag, out
    settings = load_settings()
    pg = settings.postgres
    conn = await asyncpg.connect(host=pg.host, port=pg.port, user=pg.user, database=pg.database,
                                 password=pg.password.get_secret_value() or None)
    try:
        assert not await conn.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = $1", tag[1])
    finally:
        await conn.close()
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    await admin.start()
    try:
        left = [t for t in await admin.list_topics() if f"selftest-{tag[2]}" in t]
    finally:
        await admin.close()
    assert left == []
    workdir = re.search(r"work dir (\S+)", out)
    assert workdir
    if passed == 8:
        assert gone(workdir[1])
    else:  # a failed check keeps the worker logs for the user, and says where
        assert re.search(rf"^worker logs kept in {re.escape(workdir[1])}$", out, re.M), out
        shutil.rmtree(workdir[1])


def test_selftest_fails_clearly_without_the_stack() -> None:
    """Nothing listens on port 9: the checks that need the stack fail and say why; the in-process ones run."""
    env = {**os.environ, "TICKFLOW_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:9"}
    proc = selftest(env, timeout=120)
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    for check in ("config_management", "data_quality", "yfinance_connector"):
        assert line_of(out, check)[0]
    for check in ("core_functionality", "throughput_performance", "latency_performance", "full_integration",
                  "error_recovery"):
        assert re.search(rf"^FAIL  {check}\s+not run: Kafka is not reachable at 127\.0\.0\.1:9 .*make stack-up",
                         out, re.M), out
    assert re.search(r"^3/8 tests passed", out, re.M), out
    workdir = re.search(r"work dir (\S+)", out)
    assert workdir and gone(workdir[1]), "nothing to keep without a worker"
