"""The command line against the real stack: init, topics check, status, and replay-dlq after a fix."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from streams.models import MarketDataPoint
from streams.tools.measure import read_topic
from tests.integration.conftest import ROOT, ensure_topics_for, wait_until
from tests.integration.test_sources import KEYS, fake_provider  # noqa: F401  (a fixture, used by name)


def tickflow(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


async def test_replay_dead_letters_after_a_fix(iso, workers, producer, pg, tmp_path) -> None:
    env = {**os.environ, **iso.env}
    init = tickflow({**env, "TICKFLOW_CONFIG": ""}, "init", "--config", str(tmp_path / "c.yaml"))
    assert init.returncode == 0 and (tmp_path / "c.yaml").exists() and (tmp_path / ".env.pipeline").exists()
    await ensure_topics_for(iso)
    assert tickflow(env, "topics", "check").returncode == 0

    # A feed whose clock runs 2 minutes ahead: every record is refused as timestamp.future.
    ahead = datetime.now(UTC) + timedelta(minutes=2)
    for i in range(25):
        p = MarketDataPoint(symbol="SKEW", timestamp=ahead + timedelta(milliseconds=i), source="simulated",
                            price=10.0 + i / 100, item_id=f"skew-{i}")
        await producer.send(iso.raw_topic(), p.to_json(), key=b"SKEW")
    await producer.flush()
    w1 = workers("w1")

    async def rejected() -> bool:
        recs = await read_topic(iso.bootstrap, iso.topic("rejected"))
        return sum(1 for r in recs if dict(r.headers)["tickflow.rule"] == b"timestamp.future") == 25

    await wait_until(rejected, 60, "25 timestamp.future dead letters")

    def counted() -> Any:
        # The cluster table gets each worker's counts every 0.5 s: the dead letters can be there before them.
        status = tickflow({**env, "TICKFLOW_WORKER__WEB_PORT": str(w1.port)}, "status")
        assert status.returncode == 0, status.stderr
        return "simulated" in status.stdout and "timestamp.future 25" in status.stdout and status

    await wait_until(counted, 30, "`tickflow status` to show the 25 rejects")
    w1.stop()

    # The fix: a wider tolerance. Then replay only that rule, throttled.
    workers("w2", TICKFLOW_VALIDATION__FUTURE_TOLERANCE_SECONDS="3600")
    dry = tickflow(env, "replay-dlq", "--rule", "timestamp.future", "--dry-run")
    assert dry.returncode == 0 and "would replay 25" in dry.stdout
    out = tickflow(env, "replay-dlq", "--rule", "timestamp.future", "--rate", "200")
    assert out.returncode == 0 and "replayed 25" in out.stdout, out.stdout + out.stderr

    async def landed() -> bool:
        try:
            return await pg.fetchval(f"SELECT count(*) FROM {iso.schema}.market_data WHERE symbol = 'SKEW'") == 25
        except Exception:
            return False

    await wait_until(landed, 60, "the replayed rows")
    assert await pg.fetchval(
        f"SELECT count(DISTINCT item_id) FROM {iso.schema}.market_data WHERE symbol = 'SKEW'") == 25


async def test_python_m_producers_runs_a_provider(iso, fake_provider) -> None:  # noqa: F811
    """Not only `simulated`: a provider source, its HTTP answered by a local fake, its records on raw.finnhub."""
    await ensure_topics_for(iso)
    env = {**os.environ, **iso.env, "FINNHUB_API_KEY": KEYS["FINNHUB_API_KEY"],
           "TICKFLOW_SOURCES__FINNHUB__BASE_URL": fake_provider, "TICKFLOW_SOURCES__FINNHUB__WEBSOCKET": "false"}
    out = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "producers", "finnhub", "--symbols", "MSFT",
                                                   "--count", "1", "--seconds", "60"],
                                  cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "sent 1" in out.stdout, out.stderr[-2000:]
    recs = await read_topic(iso.bootstrap, iso.raw_topic("finnhub"))
    assert len(recs) == 1 and recs[0].key == b"MSFT"


async def test_replay_dlq_rate_is_honoured(iso, producer) -> None:
    """`replay-dlq --rate 20` re-injects 40 dead letters at no more than 20 a second: their create times in the
    raw topic span at least the 39 intervals (1.95 s; asserted >= 1.5 s), and the command takes as long;
    unthrottled (--rate 0) the same 40 go out far faster, so the span is the throttle's doing."""
    import time

    from streams.stages.publish import Rejection

    await ensure_topics_for(iso)
    env = {**os.environ, **iso.env}
    raw, dlq = iso.raw_topic(), iso.topic("rejected")
    # 40 to replay (schema.*) after 10 of another rule that --rule leaves alone. (Not the other way round:
    # replay-dlq never finishes when a partition's last dead letter does not match the filter, reported.)
    for i in range(50):
        rule = "schema.not_json" if i >= 10 else "price.non_positive"
        why = Rejection("validate", rule, "bad", "ValueError", raw, 0, i)
        await producer.send(dlq, b"{not json %d" % i, key=b"RATE", headers=why.headers())
    await producer.flush()

    def replayed() -> list:
        return [r for r in asyncio.run(read_topic(iso.bootstrap, raw))
                if any(k == "tickflow.replayed_from" for k, _ in (r.headers or []))]

    t0 = time.monotonic()
    out = await asyncio.to_thread(tickflow, env, "replay-dlq", "--rule", "schema.", "--rate", "20")
    took = time.monotonic() - t0
    assert out.returncode == 0 and "replayed 40" in out.stdout, out.stdout + out.stderr
    throttled = await asyncio.to_thread(replayed)
    assert len(throttled) == 40
    span = (max(r.timestamp for r in throttled) - min(r.timestamp for r in throttled)) / 1000
    print(f"replay-dlq --rate 20: 40 records spanning {span:.2f} s (command {took:.2f} s)")
    assert 1.5 <= span <= 15.0, span
    assert took >= 1.5

    out = await asyncio.to_thread(tickflow, env, "replay-dlq", "--rule", "schema.", "--rate", "0")
    assert out.returncode == 0 and "replayed 40" in out.stdout, out.stdout + out.stderr
    first = {(r.partition, r.offset) for r in throttled}
    second = [r for r in await asyncio.to_thread(replayed) if (r.partition, r.offset) not in first]
    assert len(second) == 40
    fast = (max(r.timestamp for r in second) - min(r.timestamp for r in second)) / 1000
    print(f"replay-dlq --rate 0: 40 records spanning {fast:.2f} s")
    assert fast < 1.0, fast
