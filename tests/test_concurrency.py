"""Many threads and asyncio tasks charging one agent together never exceed its cap or corrupt state."""

from __future__ import annotations

import asyncio
import random
import sys
import threading

import pytest

from ledger import read_events
from mesh import SettlementStatus
from mesh.core.clock import day_of, now_us

CAP_USD = "1.00"  # room for exactly 100 locks of $0.01


@pytest.fixture(autouse=True)
def _switch_threads_often():
    """Make the interpreter switch threads far more often than its 5 ms default: more interleavings."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def test_threads_race_for_one_cap(make_booth, ledger_path):
    booth = make_booth(toll_per_message_usd=0.01, max_daily_toll_per_agent=CAP_USD, escrow_timeout_s=None)
    results: list = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def worker(worker_id: int) -> None:
        rng = random.Random(worker_id)
        barrier.wait()
        for n in range(60):
            task_id = f"w{worker_id}-{n % 40}"  # repeats: idempotency under races
            record = booth.charge_sync(task_id, "alice", f"bob{worker_id}")
            if record.status is SettlementStatus.ESCROW_LOCKED and rng.random() < 0.3:
                booth.refund_sync(task_id)
            elif record.status is SettlementStatus.ESCROW_LOCKED:
                booth.release_sync(task_id)
            with lock:
                results.append(record)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    check_cap_and_ledger(booth, ledger_path)


def test_asyncio_tasks_and_threads_race_for_one_cap(make_booth, ledger_path):
    booth = make_booth(toll_per_message_usd=0.01, max_daily_toll_per_agent=CAP_USD, escrow_timeout_s=None)

    async def verifier(wallet, signature, amount_usd):
        await asyncio.sleep(0.0005)
        return True

    booth.set_x402_verifier(verifier)

    async def task(n: int) -> None:
        record = await booth.charge(f"a{n}", "alice", "bob", "0xw", "sig")
        await asyncio.sleep(0)
        if record.status is SettlementStatus.ESCROW_LOCKED:
            await (booth.refund(f"a{n}") if n % 4 == 0 else booth.release(f"a{n}"))

    async def many() -> None:
        await asyncio.gather(*(task(n) for n in range(300)))

    def in_thread(offset: int) -> None:
        for n in range(150):
            record = booth.charge_sync(f"s{offset}-{n}", "alice", "bob")
            if record.status is SettlementStatus.ESCROW_LOCKED:
                booth.release_sync(f"s{offset}-{n}")

    threads = [threading.Thread(target=in_thread, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    asyncio.run(many())
    for t in threads:
        t.join()
    check_cap_and_ledger(booth, ledger_path)


def check_cap_and_ledger(booth, ledger_path):
    stats = booth.get_stats()
    budget = booth._book.budget
    used = budget.usage_on(_today(booth))["alice"]
    assert used <= 1_000_000
    assert used == stats["released_micros"] + budget.locked_micros("alice")
    assert 0 < stats["released_micros"] <= 1_000_000
    assert stats["rejected_by_reason"].get("over_daily_cap", 0) > 0
    events = read_events(ledger_path).events
    assert [e["seq"] for e in events] == list(range(len(events)))
    released = sum(e["amount_micros"] for e in events if e["kind"] == "release")
    assert released == stats["released_micros"]
    locks = [e["task_id"] for e in events if e["kind"] == "lock"]
    assert len(locks) == len(set(locks)), "one task id, one escrow"


def _today(booth):
    return day_of(now_us(booth.clock))
