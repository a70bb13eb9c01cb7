"""The ``tollmesh`` command line.

    tollmesh demo [--agents N] [--messages N] [--seed S] [--out DIR] [--json]
    tollmesh settle --ledger PATH [--minimum USD] [--live]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional

import orjson

from mesh.demo import format_report, run_demo
from mesh.errors import TollmeshError
from mesh.money import format_usd
from mesh.settlement import DEFAULT_MINIMUM_USD, settle

DEFAULT_OUT_DIR = Path("tollmesh-out")


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except TollmeshError as exc:
        print(f"tollmesh: error: {exc}", file=sys.stderr)
        return 2


def _cmd_demo(args: argparse.Namespace) -> int:
    run_dir = args.out / f"demo-{time.strftime('%Y%m%d-%H%M%S')}-seed{args.seed}"
    if run_dir.exists():
        print(f"tollmesh: error: {run_dir} already exists", file=sys.stderr)
        return 2
    started = time.perf_counter()
    report = run_demo(run_dir, agents=args.agents, messages=args.messages, seed=args.seed)
    report["elapsed_s"] = round(time.perf_counter() - started, 3)
    (run_dir / "report.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    if args.json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        print(format_report(report))
        print(f"elapsed:           {report['elapsed_s']} s  (report: {run_dir / 'report.json'})")
    return 0 if report["replay_matches_live"] and report["conservation_holds"] else 1


def _cmd_settle(args: argparse.Namespace) -> int:
    result = settle(args.ledger, paper=not args.live, minimum_usd=args.minimum)
    if result.settled:
        print(f"SETTLED {result.batch_id}: {result.call_count} call(s) netted to ${format_usd(result.net_micros)} ({result.mode} mode)")
        print(f"record: {result.settlements_path}")
        return 0
    print(f"no settlement: {result.reason} ({result.call_count} pending call(s), net ${format_usd(result.net_micros)})")
    return 1


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tollmesh", description="Agents that pay each other per call, through escrow.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run a seeded in-process economy and print its report")
    demo.add_argument("--agents", type=_positive_int, default=50, help="number of agents (at least 2)")
    demo.add_argument("--messages", type=_positive_int, default=20_000)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--out", type=Path, default=DEFAULT_OUT_DIR, help="runs go to OUT/demo-<time>-seed<S>/")
    demo.add_argument("--json", action="store_true", help="print the report as JSON")
    demo.set_defaults(func=_cmd_demo)
    st = sub.add_parser("settle", help="net released tolls into one settlement batch")
    st.add_argument("--ledger", type=Path, default=DEFAULT_OUT_DIR / "toll_ledger.jsonl")
    st.add_argument("--minimum", default=DEFAULT_MINIMUM_USD, help="minimum net USD to settle (default 0.50)")
    st.add_argument("--live", action="store_true", help="live mode (fails closed: wire your own rail)")
    st.set_defaults(func=_cmd_settle)
    return parser


if __name__ == "__main__":
    sys.exit(main())
