"""One measured run as the bench reports it: rate, latency, CPU per lifecycle by role, ceiling.

Every measured thing (a booth, ``Mesh.call``, ``Mesh.send``, a sweep point) is timed the same way:
a process snapshot, the timed part, a snapshot; then :func:`run_record` turns what was counted
into the figures (see :mod:`benchmarks.figures`), and :func:`with_ratio` adds the ratio to the
seed's rate of the same bench run.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

from benchmarks import figures, processes


@dataclass
class Timed:
    """What :func:`timed` measured: wall seconds and the processes' snapshots around the timed part."""

    elapsed_s: float = 0.0
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)


@contextmanager
def timed(*, in_process: bool = False) -> Iterator[Timed]:
    """Snapshot the processes, time the block, snapshot again (``in_process``: this process only)."""
    out = Timed()
    out.before = processes.snapshot(descendants=not in_process)
    started = time.perf_counter()
    yield out
    out.elapsed_s = time.perf_counter() - started
    out.after = processes.snapshot(descendants=not in_process)


def run_record(name: str, kind: str, lifecycles: int, measured: Timed, latencies_ns: list[int], *,
               latency_of: str = "lifecycle", outcomes: Optional[dict[str, int]] = None,
               layout: Optional[dict[str, Any]] = None, **extra: Any) -> dict[str, Any]:
    """The figures of one run of ``lifecycles`` lifecycles (``latency_of``: what one latency sample is)."""
    cpu = processes.cpu_between(measured.before, measured.after, lifecycles)
    return {
        "name": name, "kind": kind, "lifecycles": lifecycles, "elapsed_s": round(measured.elapsed_s, 6),
        "lifecycles_per_s": figures.rate(lifecycles, measured.elapsed_s), "x_seed": None,
        "latency_ms": {**figures.latency_ms(latencies_ns), "of": latency_of},
        "cpu_us": cpu["by_role"], "one_of_a_kind_cpu_us": cpu["one_of_a_kind"],
        "ceiling": figures.modeled_ceiling(cpu["by_role"], cpu["one_of_a_kind"]),
        "processes": cpu["processes"], "outcomes": outcomes or {}, "layout": layout or {}, **extra,
    }


def with_ratio(run: dict[str, Any], seed_lifecycles_per_s: Optional[float]) -> dict[str, Any]:
    """``run`` with ``x_seed``: its rate over the seed's rate measured in the same bench run."""
    run["x_seed"] = figures.ratio(run["lifecycles_per_s"], seed_lifecycles_per_s)
    return run
