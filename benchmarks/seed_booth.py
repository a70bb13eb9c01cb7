"""The charge + release loop both benchmarks time, and nano-empire-tollbooth 0.3.0 to compare against."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

AGENTS = 1_000


async def timed_lifecycles(booth: Any, lifecycles: int) -> float:
    """Seconds for ``lifecycles`` of ``await booth.charge(...)`` then ``await booth.release(...)``."""
    started = time.perf_counter()
    for n in range(lifecycles):
        task_id = f"task-{n}"
        await booth.charge(task_id, f"agent-{n % AGENTS}", f"agent-{(n + 1) % AGENTS}")
        await booth.release(task_id)
    return time.perf_counter() - started


def seed_installed() -> bool:
    try:
        import nano_empire_tollbooth  # noqa: F401
    except ImportError:
        return False
    return True


def seed_lifecycles_elapsed_s(ledger: Path, lifecycles: int) -> float:
    """Seconds for the seed's live Tollbooth (its JSONL ledger at ``ledger``) to run ``lifecycles``."""
    from nano_empire_tollbooth import Tollbooth as SeedTollbooth
    from nano_empire_tollbooth import TollboothConfig as SeedConfig

    booth = SeedTollbooth(SeedConfig(paper_mode=False, ledger_path=ledger, max_daily_toll_per_agent=1e9))
    return asyncio.run(timed_lifecycles(booth, lifecycles))
