"""A worker's replay source replays its files again at each restart (and a user replays older history after newer):
through a worker, the real broker and PostgreSQL, the stored flags stay what the first, in-order judgment gave
them. The bars come again as newer revisions of the same values; the detectors, past them, no longer judge them
(streams/anomalies/suite.py) and the sink does not let such a revision drop a flag (sinks/postgres.py
_KEEPS_FLAGS). Before: the restart dropped a fat finger's anomaly:bar_outlier, and history at 1/100 of the
stream's later level was stored as decimal shifts."""

from __future__ import annotations

import math
import random
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import orjson

from tests.integration.conftest import ensure_topics_for, wait_until
from tests.integration.oracles import pg_count


def write_bars(path: Path, start: date, n: int, level: float, fat_finger: int | None = None) -> list[str]:
    """n weekday bars of a random walk at `level`; the bar at `fat_finger` x10. Returns the dates."""
    rng = random.Random(7)
    c, lines, days, d = level, [], [], start
    while len(days) < n:
        if d.weekday() < 5:
            o = c * math.exp(rng.gauss(0, 0.003))
            c = o * math.exp(rng.gauss(0, 0.01))
            k = 10.0 if len(days) == fat_finger else 1.0
            lines.append(f"{d},{o * k:.4f},{max(o, c) * 1.004 * k:.4f},{min(o, c) * 0.996 * k:.4f},{c * k:.4f},"
                         f"{rng.randint(900_000, 1_100_000)}")
            days.append(d.isoformat())
        d += timedelta(days=1)
    path.write_text("Date,Open,High,Low,Close,Volume\n" + "\n".join(lines) + "\n")
    return days


async def test_a_restart_replaying_the_files_again_and_older_history_keep_the_first_judgment(
        iso: Any, workers: Any, pg: Any, tmp_path: Path) -> None:
    await ensure_topics_for(iso)
    newer = tmp_path / "new" / "FFY.csv"
    newer.parent.mkdir()
    days = write_bars(newer, date(2024, 1, 2), 120, 130.0, fat_finger=90)
    env = {"TICKFLOW_SOURCES__REPLAY__ENABLED": "true", "TICKFLOW_SOURCES__REPLAY__SPEED": "0",
           "TICKFLOW_SOURCES__REPLAY__FILES": orjson.dumps([str(newer)]).decode()}
    w1 = workers("w1", **env)

    async def flags() -> dict[str, list[str]]:
        rows = await pg.fetch(f"SELECT timestamp, flags FROM {iso.schema}.market_data WHERE flags <> '{{}}'")
        return {r["timestamp"].date().isoformat(): sorted(r["flags"]) for r in rows}

    async def first_replay() -> bool:
        return await pg_count(iso, pg) >= 120

    await wait_until(first_replay, 180, "the first replay's 120 bars", interval=1.0)

    async def judged() -> bool:  # the fat finger's bar_outlier comes with the next bar's verdict
        return "anomaly:bar_outlier" in (await flags()).get(days[90], [])

    await wait_until(judged, 60, "the fat finger flagged", interval=1.0)
    first = await flags()
    assert set(first) == {days[90]}, first
    last_seen = await pg.fetchval(f"SELECT max(ingested_at) FROM {iso.schema}.market_data")
    w1.stop()
    older = tmp_path / "old" / "FFY.csv"
    older.parent.mkdir()
    old_days = write_bars(older, date(2016, 1, 4), 60, 1.3)
    w2 = workers("w2", **{**env, "TICKFLOW_SOURCES__REPLAY__FILES": orjson.dumps([str(newer), str(older)]).decode()})
    async def older_history() -> bool:
        return await pg_count(iso, pg) >= 180

    await wait_until(older_history, 180, "the older history's 60 bars", interval=1.0)

    async def replayed_again() -> bool:  # the restart's re-sent bars of 2024 (same flags) applied as revisions
        return await pg.fetchval(f"SELECT min(ingested_at) FROM {iso.schema}.market_data "
                                 f"WHERE timestamp >= '2024-05-01' AND flags = '{{}}'") > last_seen

    await wait_until(replayed_again, 120, "the restart's replay of the 2024 file", interval=1.0)
    assert w2.alive(), w2.log_text()[-3000:]
    assert await flags() == first  # nothing dropped, nothing added: 2016 is no decimal shift of 2024's level
    assert old_days[0] not in await flags()
