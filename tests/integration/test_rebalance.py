"""Workers joining and leaving every few seconds during a flow: after the flow drains, every valid input
is in market_data exactly once and every invalid one is dead-lettered (no offset is committed past a
record that was not processed)."""

from __future__ import annotations

import asyncio

from tests.integration.conftest import ensure_topics_for, wait_until
from tests.integration.oracles import check_oracles, fault_inputs, produce_all, produce_paced, wait_for_rows


async def test_workers_join_and_leave_during_the_flow(iso, workers, producer, pg) -> None:
    """Each churn worker is confirmed to have joined (it owned raw partitions) before it is stopped."""
    await ensure_topics_for(iso)
    inputs = fault_inputs(seed=41)
    messages = inputs.messages
    raw = iso.raw_topic()
    steady = workers("steady")
    await produce_all(producer, raw, messages[:4000])

    await wait_for_rows(iso, pg, 100, "the first rows")
    chunk = (len(messages) - 4000) // 4
    joined: list[tuple[str, set[str]]] = []
    for i in range(4):
        extra = workers(f"churn{i}")
        start = 4000 + i * chunk
        end = len(messages) if i == 3 else start + chunk
        feeder = asyncio.create_task(produce_paced(producer, raw, messages[start:end], start, every=0.2))
        try:
            owned = await wait_until(lambda extra=extra: extra.owned(raw, "validate"), 120,
                                     f"churn{i} to join and own raw partitions")
            joined.append((extra.name, owned))
            await asyncio.sleep(2)  # work a little as a member, then leave mid-flow
        finally:
            await feeder
        code = extra.stop()
        assert code == 0, f"churn{i} exited {code} on SIGTERM:\n{extra.log_text()[-3000:]}"
    assert [n for n, _ in joined] == [f"churn{i}" for i in range(4)]
    await check_oracles(iso, pg, inputs, "worker added/removed x4, each confirmed joined")
    assert steady.alive()


async def test_two_workers_start_together_on_a_backlog(iso, workers, producer, pg) -> None:
    """The case that lost rows with Faust-managed stream offsets: both join while records wait."""
    await ensure_topics_for(iso)
    inputs = fault_inputs(seed=43)
    messages = inputs.messages
    await produce_all(producer, iso.raw_topic(), messages)
    a, b = workers("a"), workers("b")
    await check_oracles(iso, pg, inputs, "two workers start on a backlog")
    assert a.alive() and b.alive()
