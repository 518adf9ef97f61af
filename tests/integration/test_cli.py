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

    # A feed whose clock runs 10 minutes ahead: every record is refused as timestamp.future.
    ahead = datetime.now(UTC) + timedelta(minutes=10)  # still ahead when the first replay (no fix) comes
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
        if "503" in status.stderr:
            return False  # the metrics table not assigned yet (a fresh cluster's first seconds): `starting`
        assert status.returncode == 0, status.stderr
        return "simulated" in status.stdout and "timestamp.future 25" in status.stdout and status

    await wait_until(counted, 30, "`tickflow status` to show the 25 rejects")

    # A replay before the fix is refused again: 25 more dead letters, each naming the one it came from. The next
    # replay sends each record once (it sent the originals and their copies: 50, then 100, ...).
    again = tickflow(env, "replay-dlq", "--rule", "timestamp.future")
    assert again.returncode == 0 and "replayed 25" in again.stdout, again.stdout + again.stderr

    async def refused_twice() -> bool:
        recs = await read_topic(iso.bootstrap, iso.topic("rejected"))
        copies = [r for r in recs if "tickflow.replayed_from" in dict(r.headers)]
        return len(recs) == 50 and len(copies) == 25

    await wait_until(refused_twice, 60, "25 dead letters of the refused replay, naming their origins")
    w1.stop()

    # The fix: a wider tolerance. Then replay only that rule, throttled.
    workers("w2", TICKFLOW_VALIDATION__FUTURE_TOLERANCE_SECONDS="3600")
    dry = tickflow(env, "replay-dlq", "--rule", "timestamp.future", "--dry-run")
    assert dry.returncode == 0 and "would replay 25" in dry.stdout
    typo = tickflow(env, "replay-dlq", "--rule", "timestamp.futur3", "--dry-run")  # finds none: says what there is
    assert "would replay 0" in typo.stdout
    listed = typo.stdout.split("rules of the replayable dead letters: ", 1)[-1]
    assert "timestamp.future 25" in listed.strip().splitlines()[0].split(", "), typo.stdout
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


async def test_replay_dlq_into_the_clean_topic_carries_the_contract(iso, producer) -> None:
    """The write stage dead-letters a refused row keeping the clean record's own headers; `replay-dlq` puts it
    back on the clean topic as the validate stage publishes one: the contract headers (tickflow.schema,
    content-type, once each), the record's own other headers, and its event time as the Kafka timestamp, not
    the dead letter's or the producer's. A value with no readable time keeps the dead letter's timestamp."""
    import time
    from dataclasses import dataclass, field

    from sinks.base import BatchWriter
    from streams import contract
    from streams.errors import SinkRefused
    from streams.settings import KafkaSettings, SinkSettings
    from streams.stages.publish import Outgoing
    from streams.stages.write import WriteTicks

    class Refusing(BatchWriter):
        async def start(self) -> None: ...

        async def stop(self) -> None: ...

        async def write(self, rows):  # type: ignore[no-untyped-def]
            raise SinkRefused("numeric field overflow")

    @dataclass
    class Rec:  # a ticks.clean record as the write stage reads it
        value: bytes
        offset: int
        timestamp: int
        headers: list
        topic: str = field(default_factory=lambda: iso.topic("clean"))
        partition: int = 0
        key: bytes = b"HDRS"

    await ensure_topics_for(iso)
    env = {**os.environ, **iso.env}
    clean, dlq = iso.topic("clean"), iso.topic("rejected")
    event = datetime.now(UTC).replace(microsecond=123000) - timedelta(hours=1)
    event_ms = contract.event_time_ms(event)
    point = MarketDataPoint(symbol="HDRS", timestamp=event, source="simulated", price=1.0, item_id="h-1")
    own = [*contract.headers(contract.CLEAN), ("traceparent", b"00-abc-01")]
    sent: list[Outgoing] = []

    async def collect(messages: list[Outgoing]) -> None:
        sent.extend(messages)

    async def emit(delta: Any) -> None: ...

    stage = WriteTicks(writer=Refusing(), send=collect, emit=emit, sink=SinkSettings(), rejected_topic=dlq,
                       kafka=KafkaSettings(), app_id="it", topics=[clean])
    await stage.process([Rec(point.to_json(), 7, event_ms, own), Rec(b"{not json", 8, event_ms - 5000, own)])
    sent.sort(key=lambda m: m.value or b"")  # the decode failure is dead-lettered before the write
    assert [dict(m.headers)["tickflow.rule"] for m in sent] == [b"write.refused", b"write.decode"]
    assert all(("traceparent", b"00-abc-01") in m.headers for m in sent)  # the write stage kept them
    # an older pipeline stamped its dead letters with the producer's time: the replay must not rely on it
    stale_ms = int(time.time() * 1000) - 2 * 3600 * 1000
    for m, stamp in zip(sent, (stale_ms, event_ms - 5000), strict=True):
        await producer.send(dlq, m.value, key=m.key, headers=m.headers, timestamp_ms=stamp)
    await producer.flush()

    out = await asyncio.to_thread(tickflow, env, "replay-dlq", "--rule", "write.", "--rate", "0")
    assert out.returncode == 0 and "replayed 2" in out.stdout, out.stdout + out.stderr
    replayed = await read_topic(iso.bootstrap, clean)
    by_value = {r.value: r for r in replayed}
    assert len(replayed) == 2 and set(by_value) == {point.to_json(), b"{not json"}
    for value, stamp in ((point.to_json(), event_ms), (b"{not json", event_ms - 5000)):
        r = by_value[value]
        names = [k for k, _ in r.headers]
        assert names.count(contract.SCHEMA_HEADER) == 1 and names.count(contract.CONTENT_TYPE_HEADER) == 1, names
        h = dict(r.headers)
        assert h[contract.SCHEMA_HEADER] == b"ticks.clean/v1" and h["content-type"] == b"application/json"
        assert h["traceparent"] == b"00-abc-01" and b":" in h["tickflow.replayed_from"]
        # the dead letter's reasons stay on the dead letter
        assert {k for k in names if k.startswith("tickflow.")} == {contract.SCHEMA_HEADER, "tickflow.replayed_from"}
        assert r.timestamp == stamp, (value, r.timestamp, stamp)
        assert r.key == b"HDRS"
