"""What one bench run measures, and the command-line options that choose it (validated by argparse).

>>> plan = make_plan(build_parser().parse_args(["--quick", "--shards", "1,2"]))
>>> plan.sweeps["shards"], plan.centre.shards, plan.centre.batch
((1, 2), 2, 10000)
>>> build_parser().parse_args(["--shards", "0"])
Traceback (most recent call last):
...
SystemExit: 2
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional


MAX_AGENTS = 1_000_000
MAX_SHARDS = 64
MAX_BATCH = 100_000  # MeshConfig.max_batch_messages' bound
MAX_CONCURRENCY = 10_000
MAX_SHARE = 0.9  # of the messages failing, or from hot sources

FULL = {"lifecycles": 50_000, "calls": 2_000, "messages": 200_000, "point_messages": 100_000,
        "shards": (1, 2, 4), "batch": (1_000, 5_000, 20_000), "agents": (1_000, 100_000, 1_000_000),
        "concurrency": (1, 10, 100, 1_000), "contention": (0.01, 0.1, 0.5), "failure_rate": (0.0, 0.02, 0.2)}
QUICK = {"lifecycles": 5_000, "calls": 100, "messages": 20_000, "point_messages": 10_000,
         "shards": (1, 2), "batch": (2_000, 10_000), "agents": (1_000,),  # a mesh a point: Ray starts in 10-20 s here
         "concurrency": (1, 100), "contention": (0.1,), "failure_rate": (0.02,)}
SWEEPS = ("shards", "batch", "agents", "concurrency", "contention", "failure_rate")


@dataclass(frozen=True)
class Layout:
    """How one mesh of the bench is laid out."""

    shards: int = 2
    agents: int = 1_000
    batch: int = 20_000  # messages one Mesh.send carries (and the coordinator's max_batch_messages)
    inflight: int = 4  # Mesh.send calls the driver has in flight (and max_inflight_batches)
    # a ledger partition and writer per shard; None: as the mesh decides (partitioned when shards > 1)
    partitioned_ledger: Optional[bool] = None


@dataclass(frozen=True)
class Plan:
    """Sizes of the measured runs, the centre layout (the main ``Mesh.send`` run) and each sweep's values."""

    quick: bool
    cores: int
    lifecycles: int  # each in-process booth's, timed (a fifth of it first, untimed)
    calls: int  # single Mesh.call s, and Mesh.acall s a concurrency point
    messages: int  # the main Mesh.send run's
    point_messages: int  # each other sweep point's
    centre: Layout
    sweeps: dict[str, tuple] = field(default_factory=dict)
    seed: int = 7
    address: Optional[str] = None  # a Ray cluster every mesh joins (None: a local Ray of its own per mesh)

    def as_dict(self) -> dict[str, Any]:
        return {"quick": self.quick, "cores": self.cores, "lifecycles": self.lifecycles, "calls": self.calls,
                "messages": self.messages, "point_messages": self.point_messages, "seed": self.seed,
                "centre": vars(self.centre).copy(), "sweeps": {k: list(v) for k, v in self.sweeps.items()},
                "address": self.address}


def _int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.replace("_", "").replace(",", ""))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value:,} is out of range: {low:,} to {high:,}")
        return value
    return parse


def _list_of(parse: Callable[[str], Any]) -> Callable[[str], tuple]:
    def parse_list(text: str) -> tuple:
        values = tuple(parse(part) for part in text.split(",") if part.strip())
        if not values:
            raise argparse.ArgumentTypeError(f"{text!r}: give at least one value, comma-separated")
        return tuple(sorted(set(values)))
    return parse_list


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= MAX_SHARE:
        raise argparse.ArgumentTypeError(f"{value} is out of range: 0 to {MAX_SHARE}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The bench's options, on ``p`` (``tollmesh bench`` and ``python -m benchmarks`` share them)."""
    p.add_argument("--quick", action="store_true", help="small sizes and sweeps: under a minute (CI runs it)")
    p.add_argument("--json", type=Path, metavar="PATH", help="save every figure as JSON")
    p.add_argument("--plot", type=Path, metavar="PATH", help="save the figures as a PNG")
    p.add_argument("--readme", type=Path, metavar="JSON",
                   help="print the README's performance table (markdown) from a saved bench JSON, and exit")
    p.add_argument("--shards", type=_list_of(_int_in(1, MAX_SHARDS)), help="shards sweep, e.g. 1,2,4")
    p.add_argument("--batch", type=_list_of(_int_in(1, MAX_BATCH)), help="messages per Mesh.send sweep, e.g. 1000,20000")
    p.add_argument("--agents", type=_list_of(_int_in(2, MAX_AGENTS)), help=f"light agents sweep (up to {MAX_AGENTS:,})")
    p.add_argument("--concurrency", type=_list_of(_int_in(1, MAX_CONCURRENCY)), help="Mesh.acall s in flight sweep")
    p.add_argument("--contention", type=_list_of(_share), help="share of messages from hot sources at their cap")
    p.add_argument("--failure-rate", type=_list_of(_share), help="share of handlers that raise (refunded)")
    p.add_argument("--lifecycles", type=_int_in(10, 10_000_000), help="lifecycles of each in-process booth")
    p.add_argument("--calls", type=_int_in(10, 1_000_000), help="Mesh.call s, and Mesh.acall s per concurrency point")
    p.add_argument("--messages", type=_int_in(10, 10_000_000), help="messages of the main Mesh.send run")
    p.add_argument("--point-messages", type=_int_in(10, 10_000_000), help="messages of every other sweep point")
    p.add_argument("--inflight", type=_int_in(1, 256), default=4, help="Mesh.send calls in flight (default 4)")
    ledger_kind = p.add_mutually_exclusive_group()
    ledger_kind.add_argument("--partitioned-ledger", action="store_const", const=True, dest="partitioned_ledger",
                             help="every mesh writes its ledger as a partition and a writer per shard, even with one "
                                  "shard (MeshConfig.partitioned_ledger; the default with two shards or more)")
    ledger_kind.add_argument("--one-ledger", action="store_const", const=False, dest="partitioned_ledger",
                             help="every mesh writes one ledger through one writer, however many shards")
    p.add_argument("--cores", type=_int_in(1, 1_024), default=os.cpu_count() or 1,
                   help="CPUs each bench Ray is given (default: this machine's)")
    p.add_argument("--address", metavar="ADDRESS",
                   help="run every mesh on the Ray cluster at ADDRESS (host:port) instead of a local Ray of its own "
                        "(CPU and memory by role then count this machine's processes only: the driver)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description="tollmesh bench: one run, one machine")
    add_arguments(parser)
    return parser


def make_plan(args: argparse.Namespace) -> Plan:
    """The plan the options ask for: the quick or full sizes, each overridden by its option."""
    base = QUICK if args.quick else FULL
    sweeps = {name: getattr(args, name) or base[name] for name in SWEEPS}
    centre = Layout(shards=2 if 2 in sweeps["shards"] else sweeps["shards"][0], agents=sweeps["agents"][0],
                    batch=sweeps["batch"][-1], inflight=args.inflight, partitioned_ledger=args.partitioned_ledger)
    sizes = {k: getattr(args, k) or base[k] for k in ("lifecycles", "calls", "messages", "point_messages")}
    return Plan(quick=args.quick, cores=args.cores, centre=centre, sweeps=sweeps, address=args.address, **sizes)
