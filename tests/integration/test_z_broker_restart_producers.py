"""The broker killed with -9 while tickflow's OWN producers are producing, then restarted: the worker's
leader-only source supervisor (streams/stages/produce.py) replaying a CSV written by the test, and the
out-of-worker SourceRunner (producers/runner.py, what `python -m producers` runs) sending the simulated feed.

The fault is confirmed, not assumed: both were mid-production when the broker died (the replay had sent some but
not all of the file, the runner some but not all of its count); the broker stopped answering; while it was down
the replay's acknowledged count stood still although a bar was due every STEP_SECONDS, with the source still
`running` (its send pending: neither failed nor finished), the worker's producer logged its produce retries, and
the runner had neither finished nor given up; the runner's batch handed over before the restart was acknowledged
only after it, having waited through the outage. (The replay's records stamped before the restart beyond the
count acknowledged while down are printed, not asserted: a send can block before it stamps any record.)

Then the oracles (tests/integration/oracles.py), each source's records only: the replay's expected set is the
file (each bar once, by content, through test_producer_faults.bar_view); the runner's is what raw.simulated holds,
which must itself be exactly item ids 1..sent of its one run, each once (none lost or doubled by the producer),
with `sent` the runner's own count. Every expected record must be in PostgreSQL exactly once with its values.

Named to sort after test_z_broker_restart.py: it restarts the local stack's broker (dev/stack.sh, by the pid the
stack recorded) and, whatever happens, starts it again before it returns."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp
import orjson

from producers.base import Record, Source
from producers.runner import SourceRunner
from producers.simulated import SimulatedSource
from streams.settings import SimulatedSourceSettings, load_settings
from streams.tools.measure import read_topic
from tests.integration.conftest import ensure_topics_for, wait_until
from tests.integration.oracles import (
    RESULTS,
    DeadLetter,
    Expected,
    FaultResult,
    Inputs,
    Observed,
    bytes_hash,
    evaluate,
    sink_duplicates,
)
from tests.integration.test_producer_faults import bar_view, expected_of, view_bytes, write_bars
from tests.integration.test_z_broker_restart import STACK, broker_answers, broker_pid

STEP_SECONDS = 0.03  # the replay's wait per day of bars (5 bars): one pass over the file takes about 21 s
RUNNER_RATE = 200.0  # simulated points a second from the SourceRunner
RUNNER_COUNT = 2_500  # it stops after this many: about 12 s of production, plus the outage
RUNNER_SYMBOLS = ["SIMA", "SIMB", "SIMC"]
# How long the broker stays down before it is started again (plus about 1.5 s, plus its start-up, about 13 s here).
# The runner's producer gives up a batch older than its request timeout (30 s) only while no partition leader is
# known, so a longer outage is worth a run now and then: TICKFLOW_TEST_OUTAGE_SECONDS=35.
OUTAGE_SECONDS = float(os.environ.get("TICKFLOW_TEST_OUTAGE_SECONDS") or 3.0)
PRODUCE_RETRY = "Got error produce response"  # aiokafka's sender, each time it retries a batch


@dataclass
class Handed:
    """One batch the source handed to the runner: when, and when the runner asked for the next one (send_batch
    awaits every ack first, so that is when this batch was acknowledged; None: never)."""

    size: int
    handed: float
    acked: float | None = None


class Timed(Source):
    """The simulated source, unchanged, with the time each batch is handed over and acknowledged noted."""

    name = "simulated"

    def __init__(self, inner: SimulatedSource) -> None:
        self.inner = inner
        self.batches: list[Handed] = []

    async def fetch(self, session: aiohttp.ClientSession | None = None) -> AsyncIterator[list[Record]]:
        async for batch in self.inner.fetch(session):
            note = Handed(len(batch), time.time())
            self.batches.append(note)
            yield batch
            note.acked = time.time()


def against_count(item_ids: list[str], sent: int) -> dict[str, Any]:
    """The simulated source's item ids (`{run}-{seq}`, seq from 1 per point) in a raw topic against the count its
    runner says it sent: one run, each of seq 1..sent exactly once and nothing beyond (empty: they agree)."""
    runs = {i.rsplit("-", 1)[0] for i in item_ids}
    seqs = Counter(int(i.rsplit("-", 1)[1]) for i in item_ids)
    out: dict[str, Any] = {}
    if len(runs) != 1:
        out["runs"] = sorted(runs)[:5]
    if missing := sorted(set(range(1, sent + 1)) - set(seqs)):
        out["missing"] = (len(missing), missing[:5])
    if doubled := sorted(s for s, k in seqs.items() if k > 1):
        out["doubled"] = (len(doubled), doubled[:5])
    if beyond := sorted(s for s in seqs if not 1 <= s <= sent):
        out["beyond its count"] = (len(beyond), beyond[:5])
    return out


def source_state(health: Any, name: str) -> dict[str, Any] | None:
    """One source's entry in a worker's /health (None: not there yet)."""
    for s in (health or {}).get("sources", []) if isinstance(health, dict) else []:
        if s.get("source") == name:
            return s
    return None


def produce_retries(log: str, since: float, until: float) -> int:
    """Lines of the worker's (text) log in which its producer retried a produce request, logged in the window."""
    n = 0
    for line in log.splitlines():
        if PRODUCE_RETRY in line and line.startswith("["):
            try:
                at = datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f").timestamp()  # local time, as logged
            except ValueError:
                continue
            n += since <= at <= until
    return n


async def restart_broker() -> float:
    """dev/stack.sh start kafka (it waits until the broker answers an ApiVersions request); seconds taken."""
    t0 = time.monotonic()
    done = await asyncio.to_thread(subprocess.run, [STACK, "start", "kafka"], timeout=300, capture_output=True,
                                   text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return time.monotonic() - t0


async def source_count(iso: Any, pg: Any, source: str, like: str = "%") -> int:
    import asyncpg

    try:
        return await pg.fetchval(f"SELECT count(*) FROM {iso.schema}.market_data WHERE source = $1 "
                                 "AND item_id LIKE $2", source, like)
    except asyncpg.UndefinedTableError:
        return 0


def parsed_source(value: bytes | None) -> str | None:
    try:
        doc = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return None
    return doc.get("source") if isinstance(doc, dict) else None


async def read_all(iso: Any, topic: str) -> list[Any]:
    return await read_topic(iso.bootstrap, topic, isolation_level="read_committed")


async def dead_letters(iso: Any, source: str) -> list[DeadLetter]:
    """ticks.rejected's records of one source (by the original value's `source`; unreadable ones count for
    every source): none is expected, the producers sent no invalid record."""
    out = []
    for rec in await read_all(iso, iso.topic("rejected")):
        if parsed_source(rec.value) in (source, None):
            h = {k: v.decode(errors="replace") for k, v in (rec.headers or [])}
            out.append(DeadLetter(None, h.get("tickflow.rule", ""), bytes_hash(rec.value)))
    return out


async def observe_replay(iso: Any, pg: Any, raw: list[Any]) -> Observed:
    """The replay's records only (source replay), each row and record through bar_view."""
    import asyncpg

    cols = 'source, symbol, data_type, ts, item_id, "interval", "open", high, low, "close", volume, metadata'
    rows = [bar_view(dict(r)) for r in
            await pg.fetch(f"SELECT {cols} FROM {iso.schema}.market_data WHERE source = 'replay'")]
    clean = [view_bytes(r.value) for r in await read_all(iso, iso.topic("clean"))
             if parsed_source(r.value) == "replay"]
    anomalies = [r.value for r in await read_all(iso, iso.topic("anomalies"))]
    try:
        dups = await pg.fetchval(f"SELECT duplicates FROM {iso.schema}.data_quality_metrics WHERE source = 'replay' "
                                 "ORDER BY recorded_at DESC, id DESC LIMIT 1")
    except asyncpg.UndefinedTableError:
        dups = None
    return Observed([(0, view_bytes(r.value)) for r in raw], rows, clean, await dead_letters(iso, "replay"),
                    anomalies, dups)


async def observe_runner(iso: Any, pg: Any, raw: list[Any]) -> tuple[Expected, Observed]:
    """The runner's run only: expected is what raw.simulated holds (each record an input, by its position);
    rows and ticks.clean records of the source `simulated` (any run: another run's would be unexpected)."""
    messages = [(r.key or b"", r.value or b"") for r in raw]
    expected = Expected.from_inputs(Inputs(messages, {}, set()))
    cols = "source, symbol, data_type, ts, item_id, price, volume, bid, ask"
    rows = [dict(r) for r in
            await pg.fetch(f"SELECT {cols} FROM {iso.schema}.market_data WHERE source = 'simulated'")]
    clean = [r.value for r in await read_all(iso, iso.topic("clean")) if parsed_source(r.value) == "simulated"]
    anomalies = [r.value for r in await read_all(iso, iso.topic("anomalies"))]
    observed = Observed([(i, v) for i, (_, v) in enumerate(messages)], rows, clean,
                        await dead_letters(iso, "simulated"), anomalies, await sink_duplicates(iso, pg))
    return expected, observed


def record(fault: str, result: FaultResult) -> FaultResult:
    RESULTS.append(result)
    print(f"{fault}: sent {result.sent}, landed {result.landed}, dup sent {result.dup_injected}, dup dropped "
          f"{result.dup_dropped}, lost {result.lost}, duplicated {result.duplicated}, changed {result.changed}, "
          f"clean dups {result.clean_dups}, conserved {result.conserved}")
    return result


async def test_broker_kill_9_while_tickflows_producers_run(iso, workers, pg, tmp_path) -> None:
    await ensure_topics_for(iso)
    csv_path = tmp_path / "bars.csv"
    bars = write_bars(csv_path)
    n = len(bars)
    replay_topic, sim_topic = iso.raw_topic("replay"), iso.raw_topic("simulated")
    seed = int(os.environ.get("TICKFLOW_TEST_KILL_SEED") or random.SystemRandom().randrange(2**32))
    print(f"broker kill -9 under tickflow's producers: timing seed {seed} (TICKFLOW_TEST_KILL_SEED={seed} repeats it)")
    rng = random.Random(seed)

    w = workers(TICKFLOW_SOURCES__REPLAY__ENABLED="true",
                TICKFLOW_SOURCES__REPLAY__FILES=orjson.dumps([str(csv_path)]).decode(),
                TICKFLOW_SOURCES__REPLAY__SPEED="1",  # paced by max_wait_seconds: the kill lands inside the replay
                TICKFLOW_SOURCES__REPLAY__MAX_WAIT_SECONDS=str(STEP_SECONDS),
                TICKFLOW_SOURCES__REPLAY__BATCH_SIZE="50")
    await wait_until(lambda: w.alive() and (source_state(w.get("/health")[1], "replay") or {}).get("sent"), 180,
                     "the worker's replay source to send")
    timed = Timed(SimulatedSource(SimulatedSourceSettings(symbols=RUNNER_SYMBOLS, rate_per_second=RUNNER_RATE,
                                                          invalid_ratio=0.0)))
    runner = asyncio.create_task(SourceRunner(load_settings(), iso.catalog).run(timed, limit=RUNNER_COUNT))
    killed = restarted = False
    try:
        async def both_landing() -> bool:  # the whole flow runs for both producers before the fault
            return (await source_count(iso, pg, "replay") > 0 and await source_count(iso, pg, "simulated") > 0
                    and sum(b.size for b in timed.batches) >= RUNNER_RATE)
        await wait_until(both_landing, 90, "rows of both producers in PostgreSQL")
        delay = rng.uniform(0.0, 1.5)
        await asyncio.sleep(delay)

        _, health = w.get("/health")
        before = source_state(health, "replay") or {}
        assert 0 < int(before.get("sent", 0)) < n and not runner.done(), (
            f"not mid-production when killed: replay {before}, runner done {runner.done()}")
        t_kill = time.time()
        os.kill(broker_pid(), signal.SIGKILL)
        killed = True
        for _ in range(20):
            if not broker_answers(iso.bootstrap):
                break
            await asyncio.sleep(0.5)
        assert not broker_answers(iso.bootstrap), "the broker still answers after kill -9"

        # Down for a while: the producers have records to send and no broker.
        await asyncio.sleep(1.0)
        _, h1 = w.get("/health")
        await asyncio.sleep(OUTAGE_SECONDS)
        _, h2 = w.get("/health")
        during1, during2 = source_state(h1, "replay") or {}, source_state(h2, "replay") or {}
        runner_batches_down = len(timed.batches)
        t_restart = time.time()
        assert not broker_answers(iso.bootstrap), "the broker came back by itself"
        assert w.alive() and during1 and during2, f"the worker's /health did not answer during the outage: {h2}"
        s_down = int(during2["sent"])
        assert int(during1["sent"]) == s_down < n, f"the replay's count moved while down: {during1} {during2}"
        assert during2["state"] == "running", f"the replay source stopped trying during the outage: {during2}"
        assert not runner.done(), f"the SourceRunner ended during the outage: {runner}"
        retries = produce_retries(w.log_text(), t_kill, t_restart)
        assert retries >= 3, f"the worker's producer retried {retries} produce requests while the broker was down"
        print(f"kill -9 {delay:.2f} s into both producers; replay sent {before.get('sent')} of {n} at the kill, "
              f"{s_down} acknowledged while down (state {during2['state']}, failures {during2.get('failures')}, "
              f"{retries} produce retries in the worker's log); "
              f"runner handed {sum(b.size for b in timed.batches)} records in {runner_batches_down} batches")

        took = await restart_broker()
        restarted = True
        print(f"broker restarted {t_restart - t_kill:.1f} s after the kill; start took {took:.1f} s")
        sent = await asyncio.wait_for(runner, 180)  # every record acknowledged after the restart
    finally:
        if killed and not restarted and not broker_answers(iso.bootstrap):
            await restart_broker()  # never leave the shared stack down
        if not runner.done():
            runner.cancel()

    # The runner's batch that was waiting across the restart: handed over before it, acknowledged after it.
    spanning = [b for b in timed.batches if b.handed < t_restart and b.acked is not None and b.acked > t_restart]
    assert spanning, "no runner batch was pending across the outage"
    waited = spanning[0].acked - spanning[0].handed  # type: ignore[operator]
    assert waited >= t_restart - t_kill - 1.0, f"the pending batch waited only {waited:.1f} s"
    print(f"runner: a batch of {spanning[0].size} handed {spanning[0].handed - t_kill:+.2f} s from the kill was "
          f"acknowledged {waited:.1f} s later, after the restart; runner sent {sent}")
    assert sent == RUNNER_COUNT, sent

    async def replay_done() -> dict[str, Any] | None:
        st = source_state(w.get("/health")[1], "replay")
        return st if st and st["state"] == "finished" else None
    done = await wait_until(replay_done, 120, "the replay to finish after the restart")
    assert int(done["sent"]) == n, f"the replay finished having sent {done['sent']} of {n} bars"

    # The replay: records stamped before the restart beyond what had been acknowledged during the outage were
    # acknowledged after it (handed to the worker's producer while the broker was down, or in flight at the kill).
    replay_raw = await read_all(iso, replay_topic)
    stamped_before = sum(1 for r in replay_raw if r.timestamp < t_restart * 1000)
    print(f"replay: {len(replay_raw)} records in {replay_topic}, {stamped_before} stamped before the restart, "
          f"{s_down} of them acknowledged before it")
    # (Informational: a send_all blocked before it stamped any record would not show here; the count that stood
    # still while bars were due every STEP_SECONDS is what proves the replay's send was pending.)

    # The runner's raw topic holds exactly its item ids 1..sent, each once: nothing lost, nothing doubled.
    sim_raw = await read_all(iso, sim_topic)
    ids = [orjson.loads(r.value)["item_id"] for r in sim_raw]
    print(f"runner: {len(ids)} records in {sim_topic}, runs {sorted({i.rsplit('-', 1)[0] for i in ids})}")
    gaps = against_count(ids, sent)
    assert not gaps, f"{sim_topic} against the runner's {sent} sends: {gaps}"
    bars_in_raw = {(orjson.loads(r.value)["symbol"], orjson.loads(r.value)["timestamp"]) for r in replay_raw}
    assert len(replay_raw) == len(bars_in_raw) == n, (
        f"{replay_topic}: {len(replay_raw)} records, {len(bars_in_raw)} distinct bars, the file has {n}")

    async def all_rows() -> bool:
        return (await source_count(iso, pg, "replay") >= n
                and await source_count(iso, pg, "simulated") >= RUNNER_COUNT)
    try:
        await wait_until(all_rows, 120, "every record in PostgreSQL", interval=2.0)
    except AssertionError:
        pass  # measured and reported by the oracles below
    await asyncio.sleep(3)  # a metrics snapshot (every second) covers the last batches

    replay = record("broker kill -9 + restart, worker's replay source producing",
                    evaluate("broker kill -9 + restart, worker's replay source producing",
                             expected_of(bars, sent=len(replay_raw)), await observe_replay(iso, pg, replay_raw)))
    expected, observed = await observe_runner(iso, pg, sim_raw)
    runner_result = record("broker kill -9 + restart, SourceRunner (simulated) producing",
                           evaluate("broker kill -9 + restart, SourceRunner (simulated) producing", expected,
                                    observed))
    failures = [f"replay: {f}" for f in replay.failures] + [f"runner: {f}" for f in runner_result.failures]
    assert not failures, "; ".join(failures)
    assert replay.landed == n and runner_result.landed == sent
    assert replay.dup_injected == 0 and runner_result.dup_injected == 0, "a producer re-sent records"
    assert w.alive(), w.log_text()[-3000:]


def test_against_count_fails_on_a_broken_outcome() -> None:
    """Pure (no stack): a lost record, a doubled one, one beyond the runner's count, and a second run each fail
    the check; the ids 1..sent of one run, in any order, pass."""
    ids = [f"r1-{i}" for i in range(1, 11)]
    assert against_count(list(reversed(ids)), 10) == {}
    assert against_count(ids[:4] + ids[5:], 10)["missing"] == (1, [5])
    assert against_count([*ids, "r1-3"], 10)["doubled"] == (1, [3])
    assert against_count([*ids, "r1-11"], 10)["beyond its count"] == (1, [11])
    assert against_count([*ids[:9], "r2-10"], 10)["runs"] == ["r1", "r2"]
