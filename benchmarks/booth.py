"""The in-process booths: the seed's (nano-empire-tollbooth 0.3.0) and ours (``mesh.Tollbooth``).

Both run live mode with their JSONL ledger on, in this process, one after the other, through the
same loop (:func:`benchmarks.seed.lifecycle_latencies_ns`): ``await booth.charge(...)`` then
``await booth.release(...)`` per message. Each is warmed up first on its own ledger (this VM
charges for memory pages on first touch), then timed on a fresh one.

>>> import tempfile, pathlib
>>> run = run_ours(200, warmup=50, tmp=pathlib.Path(tempfile.mkdtemp()))
>>> run["kind"], run["lifecycles"], run["outcomes"]["ledger_lines"] >= 400
('booth', 200, True)
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Callable

from benchmarks.record import run_record, timed
from benchmarks.seed import SEED_NAME, lifecycle_latencies_ns, seed_booth
from mesh import Tollbooth, TollboothConfig


def our_booth(ledger: Path) -> Tollbooth:
    """Our live in-process Tollbooth, its JSONL ledger at ``ledger``, no cap, nothing restored."""
    return Tollbooth(TollboothConfig(
        paper_mode=False, ledger_path=ledger, max_daily_toll_per_agent=None, restore_from_ledger=False,
    ))


def run_seed(lifecycles: int, *, warmup: int, tmp: Path) -> dict[str, Any]:
    """The seed's booth: ``lifecycles`` timed after ``warmup`` untimed ones."""
    return _run(SEED_NAME, "seed", seed_booth, lifecycles, warmup, tmp)


def run_ours(lifecycles: int, *, warmup: int, tmp: Path) -> dict[str, Any]:
    """``mesh.Tollbooth``: ``lifecycles`` timed after ``warmup`` untimed ones."""
    return _run("tollmesh Tollbooth (in process)", "booth", our_booth, lifecycles, warmup, tmp)


def _run(name: str, kind: str, make: Callable[[Path], Any], lifecycles: int, warmup: int, tmp: Path) -> dict[str, Any]:
    tmp.mkdir(parents=True, exist_ok=True)
    if warmup:
        _close(make_and_loop(make, tmp / f"{kind}-warmup.jsonl", warmup)[0])
    ledger = tmp / f"{kind}.jsonl"
    booth = make(ledger)
    with timed(in_process=True) as measured:  # a booth is one process
        latencies_ns = asyncio.run(lifecycle_latencies_ns(booth, lifecycles))
    _close(booth)
    lines = sum(1 for _ in ledger.open("rb")) if ledger.exists() else 0
    return run_record(name, kind, lifecycles, measured, latencies_ns, outcomes={
        "ledger_lines": lines, "ledger_bytes": ledger.stat().st_size if ledger.exists() else 0,
    })


def make_and_loop(make: Callable[[Path], Any], ledger: Path, lifecycles: int) -> tuple[Any, list[int]]:
    booth = make(ledger)
    return booth, asyncio.run(lifecycle_latencies_ns(booth, lifecycles))


def _close(booth: Any) -> None:
    close = getattr(booth, "close", None)  # ours closes its ledger; the seed's appends line by line
    if callable(close):
        close()
