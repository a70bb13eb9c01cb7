"""``tollmesh simulate`` end to end, repeated: messages/s, calls/s, wall time and phases, medians.

Each repeat is a fresh ``tollmesh simulate --json`` process (cold start: it starts its own
local Ray, as the README's first command does), so the figures are the main job's.

    python -m benchmarks.simulate [--config NAME|FILE] [--repeats R] [--messages N] [--out DIR]

Prints a table and saves the figures as JSON under ``--out`` (default tollmesh-out/bench/).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import orjson

COLUMNS = ("messages_per_s", "calls_per_s", "setup_s", "run_s", "wall_s", "round_trip_ms_p50", "round_trip_ms_p99")


def one_run(config: str, messages: Optional[int], root: Path) -> dict[str, Any]:
    """One cold ``tollmesh simulate`` run; its speed figures, wall time and whether its checks passed."""
    command = [sys.executable, "-m", "mesh.cli", "simulate", "--config", config, "--json", "--no-plots", "--out", str(root)]
    if messages is not None:
        command += ["--messages", str(messages)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, check=False)
    wall_s = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"tollmesh simulate failed ({done.returncode}):\n{done.stderr.decode()[-2_000:]}")
    report = orjson.loads(done.stdout)
    return {**report["speed"], "wall_s": round(wall_s, 3), "messages": report["run"]["messages_sent"],
            "checks_pass": all(v is not False for k, v in report["checks"].items() if k != "problems")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="default", help="a built-in scenario or a TOML file (default: default)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--messages", type=int, default=None, help="override the scenario's message count")
    parser.add_argument("--out", type=Path, default=Path("tollmesh-out") / "bench")
    args = parser.parse_args()
    runs = []
    for n in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(one_run(args.config, args.messages, Path(tmp)))
        print(f"run {n + 1}: " + ", ".join(f"{k} {runs[-1][k]}" for k in COLUMNS), flush=True)
    medians = {k: statistics.median(r[k] for r in runs) for k in COLUMNS}
    print(f"median of {len(runs)} ({args.config}, {runs[0]['messages']:,} messages): "
          + ", ".join(f"{k} {v:,.3f}" for k, v in medians.items()))
    figures = {
        "benchmark": "simulate", "config": args.config, "messages": runs[0]["messages"], "runs": runs,
        "medians": medians, "checks_pass": all(r["checks_pass"] for r in runs),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"simulate-{args.config.replace('/', '_')}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
