"""DailyQuota over a QuotaStore: counted before the call, per UTC day, refused when spent, never uncounted."""

from __future__ import annotations

from datetime import date

import pytest

from producers.quota import DailyQuota, MemoryQuotaStore, QuotaSpent, QuotaStoreUnavailable, quota_key


async def test_counts_each_call_in_the_store_and_refuses_when_spent() -> None:
    store = MemoryQuotaStore()
    quota = DailyQuota("p", 2, store, today=lambda: date(2026, 12, 2))
    await quota.take()
    assert store.counts == {quota_key("p", date(2026, 12, 2)): 1}  # saved before the call goes out
    await quota.take()
    with pytest.raises(QuotaSpent, match="2026-12-02"):
        await quota.take()
    assert store.counts == {"p|2026-12-02": 2}


async def test_a_new_instance_continues_from_the_store_and_a_new_day_starts_at_zero() -> None:
    store = MemoryQuotaStore()
    day = [date(2026, 12, 2)]
    await store.save("p", day[0], 4)
    quota = DailyQuota("p", 5, store, today=lambda: day[0])
    await quota.take()
    with pytest.raises(QuotaSpent):
        await quota.take()
    day[0] = date(2026, 12, 3)
    await quota.take()
    assert store.counts == {"p|2026-12-02": 5, "p|2026-12-03": 1}


async def test_forget_reads_the_store_again() -> None:
    store = MemoryQuotaStore()
    quota = DailyQuota("p", 3, store, today=lambda: date(2026, 12, 2))
    await quota.take()
    await store.save("p", date(2026, 12, 2), 3)  # another worker spent the rest
    quota.forget()
    with pytest.raises(QuotaSpent):
        await quota.take()


class BrokenStore(MemoryQuotaStore):
    async def save(self, provider: str, day: date, used: int) -> None:
        raise OSError("disk gone")


async def test_a_failing_store_lets_no_call_out() -> None:
    quota = DailyQuota("p", 3, BrokenStore(), today=lambda: date(2026, 12, 2))
    with pytest.raises(QuotaStoreUnavailable, match="disk gone"):
        await quota.take()
    assert quota.used == 0
