"""A replayed file with rows that cannot be read, through a worker, the real broker and PostgreSQL: the rows that
read land as bars, each unreadable row lands on the dead-letter topic under rule source.unreadable with the file,
the row and why, and nothing is lost in between (producers/replay.py, streams/rules.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from tests.integration.conftest import ensure_topics_for, wait_until
from tests.integration.oracles import pg_count, read


async def test_unreadable_rows_of_a_replayed_file_are_dead_lettered_with_why(iso: Any, workers: Any, pg: Any,
                                                                           tmp_path: Path) -> None:
    await ensure_topics_for(iso)
    path = tmp_path / "IBM.csv"
    path.write_text("Date,Open,High,Low,Close,Volume\n"
                    "2024-01-02,160,162,159,161,1000\n"
                    "2024-13-45,160,162,159,161,1000\n"   # no such date
                    "2024-01-03,161,n/a,160,161.5,1200\n"  # no such price
                    "2024-01-04,161.5,163,161,162,900\n"
                    "2024-01-05,null,null,null,null,null\n"  # Yahoo's row of no data: counted, not a dead letter
                    "2024-01-08,162,164,161.5,163,1100\n")
    w = workers("w1", TICKFLOW_SOURCES__REPLAY__ENABLED="true",
                TICKFLOW_SOURCES__REPLAY__FILES=orjson.dumps([str(path)]).decode(),
                TICKFLOW_SOURCES__REPLAY__SPEED="0")

    async def landed() -> bool:
        return await pg_count(iso, pg) >= 3

    await wait_until(landed, 180, "the three readable bars in PostgreSQL", interval=1.0)

    async def dead_lettered() -> bool:
        return len(await read(iso, iso.topic("rejected"))) >= 2

    await wait_until(dead_lettered, 60, "the two unreadable rows on the dead-letter topic", interval=1.0)
    assert w.alive(), w.log_text()[-3000:]
    rows = await pg.fetch(f"SELECT timestamp, close FROM {iso.schema}.market_data ORDER BY timestamp")
    assert [(r["timestamp"].date().isoformat(), r["close"]) for r in rows] == [
        ("2024-01-02", 161.0), ("2024-01-04", 162.0), ("2024-01-08", 163.0)]
    letters = await read(iso, iso.topic("rejected"))
    got = sorted((dict(r.headers)["tickflow.rule"].decode(), dict(r.headers)["tickflow.error"].decode())
                 for r in letters)
    assert [rule for rule, _ in got] == ["source.unreadable", "source.unreadable"]
    assert got[0][1].startswith("IBM.csv row 2: ValueError") and "'2024-13-45,160,162,159,161,1000'" in got[0][1]
    assert got[1][1].startswith("IBM.csv row 3: ValueError") and "n/a" in got[1][1]
    assert all(r.key == b"IBM" for r in letters)
