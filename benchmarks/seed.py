"""The charge + release loop both in-process booths are timed with, and the seed's booth to compare against.

nano-empire-tollbooth 0.3.0 (the ``bench`` extra: ``pip install -e '.[bench]'``) runs live, its
JSONL ledger on, as the seed's router loop drives it: ``await booth.charge(...)`` then
``await booth.release(...)`` per message, between 1,000 agents.

>>> import asyncio, tempfile, pathlib
>>> from mesh import Tollbooth, TollboothConfig
>>> booth = Tollbooth(TollboothConfig(paper_mode=False, max_daily_toll_per_agent=None,
...     ledger_path=pathlib.Path(tempfile.mkdtemp()) / "toll_ledger.jsonl"))
>>> len(asyncio.run(lifecycle_latencies_ns(booth, 10)))
10
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

AGENTS = 1_000
SEED_NAME = "nano-empire-tollbooth 0.3.0"


async def timed_lifecycles(booth: Any, lifecycles: int) -> float:
    """Seconds for ``lifecycles`` of ``await booth.charge(...)`` then ``await booth.release(...)``."""
    started = time.perf_counter()
    for n in range(lifecycles):
        task_id = f"task-{n}"
        await booth.charge(task_id, f"agent-{n % AGENTS}", f"agent-{(n + 1) % AGENTS}")
        await booth.release(task_id)
    return time.perf_counter() - started


async def lifecycle_latencies_ns(booth: Any, lifecycles: int, *, first: int = 0) -> list[int]:
    """The loop of :func:`timed_lifecycles` (task ids from ``first`` on), each lifecycle's nanoseconds."""
    latencies_ns = []
    clock = time.perf_counter_ns
    for n in range(first, first + lifecycles):
        task_id = f"task-{n}"
        started = clock()
        await booth.charge(task_id, f"agent-{n % AGENTS}", f"agent-{(n + 1) % AGENTS}")
        await booth.release(task_id)
        latencies_ns.append(clock() - started)
    return latencies_ns


def seed_installed() -> bool:
    try:
        import nano_empire_tollbooth  # noqa: F401
    except ImportError:
        return False
    return True


def seed_booth(ledger: Path) -> Any:
    """The seed's live Tollbooth, its JSONL ledger at ``ledger``, caps out of the way."""
    from nano_empire_tollbooth import Tollbooth as SeedTollbooth
    from nano_empire_tollbooth import TollboothConfig as SeedConfig

    return SeedTollbooth(SeedConfig(paper_mode=False, ledger_path=ledger, max_daily_toll_per_agent=1e9))


def seed_lifecycles_elapsed_s(ledger: Path, lifecycles: int) -> float:
    """Seconds for the seed's live Tollbooth (its JSONL ledger at ``ledger``) to run ``lifecycles``."""
    return asyncio.run(timed_lifecycles(seed_booth(ledger), lifecycles))
