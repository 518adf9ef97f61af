"""The delivery contract's oracles, checked once a faulted flow has drained, and the fault report.

- no loss: every valid input's natural key is in market_data, every invalid one is dead-lettered with
  its rule;
- no duplicates: rows = distinct natural keys;
- conservation: inputs = distinct rows landed + distinct records rejected + exact duplicates dropped.

Each check is recorded, pass or fail, and the session prints the table (conftest.py)."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from streams.tools.measure import read_topic
from tests.integration.conftest import wait_until
from tests.integration.test_pipeline import build_inputs


@dataclass
class Inputs:
    """What a fault test sends: messages tagged by index, the rule each invalid index must be rejected
    with, the natural keys that must land, and how many messages are exact re-sends of earlier ones."""

    messages: list[tuple[bytes, bytes]]
    expected_rule: dict[int, str]
    valid_keys: set[tuple]
    duplicates: int = 0


@dataclass
class FaultResult:
    fault: str
    sent: int
    landed: int
    rejected: int
    dropped_duplicates: int
    lost: int
    duplicated: int
    ok: bool = field(default=False)


RESULTS: list[FaultResult] = []


def fault_inputs(seed: int, dup_ratio: float = 0.02) -> Inputs:
    """The pipeline test's inputs (5% invalid) plus exact re-sends of valid messages, as a provider
    that polls overlapping windows produces them: the sink must drop them, not write them twice."""
    messages, expected_rule, valid_keys = build_inputs(seed=seed)
    rng = random.Random(seed)
    valid_idx = [i for i in range(len(messages)) if i not in expected_rule]
    out = list(messages)
    rule = dict(expected_rule)
    for i in sorted(rng.sample(valid_idx, int(len(messages) * dup_ratio))):
        out.append(messages[i])
    rng.shuffle(tail := out[len(messages):])
    out[len(messages):] = tail
    return Inputs(out, rule, valid_keys, len(out) - len(messages))


async def produce_all(producer: Any, topic: str, messages: list[tuple[bytes, bytes]], start: int = 0) -> None:
    futures = [await producer.send(topic, v, key=k, headers=[("test.index", str(i).encode())])
               for i, (k, v) in enumerate(messages, start)]
    await asyncio.gather(*futures)


async def wait_for_rows(iso: Any, pg: asyncpg.Connection, more_than: int, what: str,
                        timeout: float = 90) -> None:
    """Wait until market_data has more than `more_than` rows (the flow is running)."""
    async def enough() -> bool:
        try:
            return await pg.fetchval(f"SELECT count(*) FROM {iso.schema}.market_data") > more_than
        except asyncpg.UndefinedTableError:
            return False

    await wait_until(enough, timeout, what)


async def check_oracles(iso: Any, pg: asyncpg.Connection, inputs: Inputs, fault: str) -> FaultResult:
    async def all_rows() -> bool:
        try:
            return await pg.fetchval(f"SELECT count(*) FROM {iso.schema}.market_data") >= len(inputs.valid_keys)
        except asyncpg.UndefinedTableError:
            return False

    async def dead() -> dict[int, str] | None:
        by_index = {}
        for rec in await read_topic(iso.bootstrap, iso.topic("rejected")):
            h = {k: v.decode() for k, v in rec.headers}
            by_index[int(h["test.index"])] = h["tickflow.rule"]
        return by_index if set(by_index) >= set(inputs.expected_rule) else None

    try:
        await wait_until(all_rows, 240, "every valid row after the fault")
    except AssertionError:
        pass  # measured and reported below
    try:
        seen = await wait_until(dead, 60, "every invalid record dead-lettered")
    except AssertionError:
        seen = {}
        for rec in await read_topic(iso.bootstrap, iso.topic("rejected")):
            h = {k: v.decode() for k, v in rec.headers}
            seen[int(h["test.index"])] = h["tickflow.rule"]
    rows = [tuple(r) for r in await pg.fetch(
        f"SELECT source, symbol, data_type, ts, item_id FROM {iso.schema}.market_data")]
    landed = set(rows)
    lost_rows = inputs.valid_keys - landed
    lost_rejects = set(inputs.expected_rule) - set(seen)
    result = FaultResult(
        fault=fault, sent=len(inputs.messages), landed=len(landed), rejected=len(seen),
        dropped_duplicates=inputs.duplicates, lost=len(lost_rows) + len(lost_rejects),
        duplicated=len(rows) - len(landed),
    )
    RESULTS.append(result)
    assert result.duplicated == 0, f"{fault}: {result.duplicated} rows written twice"
    assert not lost_rows, f"{fault}: {len(lost_rows)} valid rows lost, e.g. {sorted(lost_rows)[:3]}"
    assert not lost_rejects, (f"{fault}: {len(lost_rejects)} invalid records not dead-lettered, e.g. "
                              f"{[(i, inputs.expected_rule[i]) for i in sorted(lost_rejects)[:5]]}")
    assert landed == inputs.valid_keys, f"{fault}: rows written that were never sent"
    assert {i: seen[i] for i in inputs.expected_rule} == inputs.expected_rule, f"{fault}: wrong rule"
    assert set(seen) == set(inputs.expected_rule), f"{fault}: a valid record was dead-lettered"
    assert result.sent == result.landed + result.rejected + result.dropped_duplicates, f"{fault}: not conserved"
    result.ok = True
    return result


def report(results: list[FaultResult]) -> list[str]:
    """The fault table: one line per fault test; lost and duplicated must be 0."""
    cols = ("fault", "sent", "landed", "rejected", "dup dropped", "lost", "duplicated", "ok")
    rows = [(r.fault, r.sent, r.landed, r.rejected, r.dropped_duplicates, r.lost, r.duplicated,
             "yes" if r.ok else "NO") for r in results]
    widths = [max(len(str(x)) for x in col) for col in zip(cols, *rows, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return [fmt.format(*cols), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows]
