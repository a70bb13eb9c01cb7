"""Charge + release lifecycles per second of the in-process Tollbooth, beside the seed's.

Both booths run live mode with their JSONL ledger on, in the same process, one after
the other, on the same machine: ``await booth.charge(...)`` then ``await booth.release(...)``
per message, as the seed's router loop does. nano-empire-tollbooth 0.3.0 is measured
when installed (``pip install -e '.[bench]'``).

    python benchmarks/bench_tollbooth.py [--messages N] [--repeats R] [--out DIR]

Prints a table and saves the figures as JSON under ``--out`` (default tollmesh-out/bench/).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import orjson

from mesh import Tollbooth, TollboothConfig
from seed_booth import AGENTS, seed_installed, seed_lifecycles_elapsed_s, timed_lifecycles

def ours_async(ledger: Path, messages: int) -> float:
    booth = Tollbooth(TollboothConfig(
        paper_mode=False, ledger_path=ledger, max_daily_toll_per_agent=None, restore_from_ledger=False,
    ))
    elapsed = asyncio.run(timed_lifecycles(booth, messages))
    booth.close()
    return elapsed


def ours_sync(ledger: Path, messages: int) -> float:
    booth = Tollbooth(TollboothConfig(
        paper_mode=False, ledger_path=ledger, max_daily_toll_per_agent=None, restore_from_ledger=False,
    ))
    started = time.perf_counter()
    for n in range(messages):
        task_id = f"task-{n}"
        booth.charge_sync(task_id, f"agent-{n % AGENTS}", f"agent-{(n + 1) % AGENTS}")
        booth.release_sync(task_id)
    elapsed = time.perf_counter() - started
    booth.close()
    return elapsed


def measure(name: str, fn: Callable[[Path, int], float], messages: int, repeats: int) -> dict[str, Any]:
    rates, sizes = [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            ledger = Path(tmp) / "toll_ledger.jsonl"
            elapsed = fn(ledger, messages)
            rates.append(messages / elapsed)
            sizes.append(ledger.stat().st_size / messages)
    return {
        "name": name,
        "messages": messages,
        "repeats": repeats,
        "lifecycles_per_s_median": round(statistics.median(rates)),
        "lifecycles_per_s_all": [round(r) for r in rates],
        "ledger_bytes_per_lifecycle": round(statistics.median(sizes), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("tollmesh-out") / "bench")
    args = parser.parse_args(argv)
    runs = [
        measure("tollmesh Tollbooth (async charge/release)", ours_async, args.messages, args.repeats),
        measure("tollmesh Tollbooth (charge_sync/release_sync)", ours_sync, args.messages, args.repeats),
    ]
    if seed_installed():
        runs.append(measure("nano-empire-tollbooth 0.3.0", seed_lifecycles_elapsed_s, args.messages, args.repeats))
    else:
        print("nano-empire-tollbooth is not installed: pip install -e '.[bench]' to compare", file=sys.stderr)
    seed_rate = runs[-1]["lifecycles_per_s_median"] if len(runs) == 3 else None
    print(f"{'booth':48} {'lifecycles/s':>13} {'x seed':>7} {'bytes/lifecycle':>16}")
    for run in runs:
        ratio = f"{run['lifecycles_per_s_median'] / seed_rate:.1f}" if seed_rate else "-"
        run["x_seed"] = None if not seed_rate else round(run["lifecycles_per_s_median"] / seed_rate, 2)
        print(f"{run['name']:48} {run['lifecycles_per_s_median']:>13,} {ratio:>7} {run['ledger_bytes_per_lifecycle']:>16}")
    report = {
        "benchmark": "tollbooth_lifecycle",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"tollbooth-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
