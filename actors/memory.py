"""What the mesh costs in memory: a process's resident size, and the heap an open escrow takes.

>>> rss_bytes() > 0
True
>>> 200 < open_escrow_bytes(500) < 20_000
True
"""

from __future__ import annotations

import hashlib
import tracemalloc

import psutil

from mesh.core.budget import BudgetBook
from mesh.core.escrow import EscrowBook
from mesh.core.records import TollRecord


def rss_bytes() -> int:
    """This process's resident memory, in bytes (psutil: Linux, macOS, Windows)."""
    return psutil.Process().memory_info().rss


def open_escrow_bytes(escrows: int = 10_000) -> int:
    """Heap bytes per open escrow in the escrow core a budget shard holds, measured with tracemalloc.

    Locks ``escrows`` tolls as a shard does (ids, agents, nonce and timestamp as the mesh
    makes them) in a scratch book, caps and balances on, and divides the heap it grew by.
    """
    if not isinstance(escrows, int) or escrows < 1:
        raise ValueError(f"escrows must be an int of at least 1, got {escrows!r}")
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    try:
        book = EscrowBook(BudgetBook(default_cap_micros=10**12, track_balances=True), escrow_timeout_s=300.0)
        agents = [f"agent-{i:06d}" for i in range(100)]
        for agent in agents:
            book.deposit(agent, 10**12, 0)
        before, _ = tracemalloc.get_traced_memory()
        for n in range(escrows):
            task_id = f"0123456789ab-{n}"
            draft = TollRecord(
                task_id, agents[n % 100], agents[(n + 1) % 100], 1_000, 0.0,
                nonce=hashlib.blake2b(task_id.encode(), digest_size=16).hexdigest(), created_at="2026-01-01T00:00:00Z",
            )
            book.charge(draft, 1_000_000)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        if not was_tracing:
            tracemalloc.stop()
    return round((after - before) / escrows)
