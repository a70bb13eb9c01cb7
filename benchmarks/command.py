"""``tollmesh bench`` and ``python -m benchmarks``: run the bench, print its table, save JSON and PNG.

    tollmesh bench [--quick] [--json PATH] [--plot PATH] [--shards 1,2,4] [--batch 1000,20000]
                   [--agents 1000,100000,1000000] [--concurrency 1,100] [--contention 0.1,0.5]
                   [--failure-rate 0,0.02] [--lifecycles N] [--calls N] [--messages N] [--cores N]
                   [--address ADDRESS]
    tollmesh bench --readme PATH.json      # the README's performance table, from a saved run

The exit code is 0 when every run's outcomes and ledger checks pass, 1 when one does not (each
problem is printed), 2 on a bad option, 3 when no Ray cluster answers at ``--address``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

import orjson

from benchmarks.plan import build_parser, make_plan


def run(args: argparse.Namespace) -> int:
    """Run what ``args`` (parsed by :func:`benchmarks.plan.add_arguments`) ask for; the exit code."""
    from benchmarks.report import format_table, readme_table

    if args.readme is not None:
        try:
            report = orjson.loads(args.readme.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            print(f"tollmesh bench: error: --readme {args.readme}: {exc}", file=sys.stderr)
            return 2
        print(readme_table(report))
        return 0
    from benchmarks.run import run_bench

    plan = make_plan(args)
    if plan.address:
        from mesh.core.errors import RayUnavailableError
        from mesh.ray_session import probe

        try:
            probe(plan.address)  # before the booths' runs: an address where nothing answers is said at once
        except RayUnavailableError as exc:
            print(f"tollmesh bench: error: {exc}", file=sys.stderr)
            return 3
    report = run_bench(plan)
    print(format_table(report))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
        print(f"saved {args.json}")
    if args.plot is not None:
        from benchmarks.plot import plot

        print(f"saved {plot(report, args.plot)}")
    print(f"total {report['total_s']} s")
    return 1 if report["problems"] else 0


def main(argv: Optional[list[str]] = None) -> int:
    return run(build_parser().parse_args(argv))
