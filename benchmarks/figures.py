"""The bench's arithmetic, pure: latency percentiles, CPU per lifecycle, ratios, the modeled ceiling.

Every figure a run reports is built here from what was measured (counts, nanoseconds, CPU
seconds by process), so its consistency (a ratio is its rate over the seed's, the roles add up
to the total, the ceiling follows its formula) is checked without timing anything.

>>> latency_ms([1_000_000, 2_000_000, 3_000_000, 4_000_000])
{'p50': 2.0, 'p99': 4.0, 'max': 4.0, 'samples': 4}
>>> modeled_ceiling({"driver": 10.0, "coordinator": 20.0, "shards": 30.0, "total": 60.0},
...                 {"coordinator": 20.0}, cores=(2, 8))
{'by_cores': {'2': 33333.3, '8': 50000.0}, 'limit_lifecycles_per_s': 50000.0, 'busiest_one_of_a_kind': 'coordinator', 'busiest_cpu_us': 20.0, 'cores_to_limit': 3.0}
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Optional

CEILING_CORES = (2, 4, 8, 16, 32, 64)


def latency_ms(latencies_ns: list[int]) -> dict[str, Any]:
    """p50, p99 and max of ``latencies_ns``, in ms (nearest rank), and how many samples."""
    if not latencies_ns:
        return {"p50": None, "p99": None, "max": None, "samples": 0}
    ordered = sorted(latencies_ns)

    def at(q: float) -> float:
        rank = max(1, math.ceil(q * len(ordered)))
        return round(ordered[rank - 1] / 1e6, 3)

    return {"p50": at(0.50), "p99": at(0.99), "max": round(ordered[-1] / 1e6, 3), "samples": len(ordered)}


def rate(lifecycles: int, elapsed_s: float) -> float:
    """Lifecycles per second, to 0.1."""
    if lifecycles < 0 or not elapsed_s > 0:
        raise ValueError(f"rate of {lifecycles} lifecycles in {elapsed_s} s")
    return round(lifecycles / elapsed_s, 1)


def ratio(lifecycles_per_s: float, seed_lifecycles_per_s: Optional[float]) -> Optional[float]:
    """``lifecycles_per_s`` over the seed's rate of the same run, to 0.001 (None without the seed)."""
    if not seed_lifecycles_per_s:
        return None
    return round(lifecycles_per_s / seed_lifecycles_per_s, 3)


def cpu_split(process_cpu_s: Iterable[tuple[str, float]], lifecycles: int) -> dict[str, float]:
    """Microseconds of CPU per lifecycle by role, from ``(role, cpu_seconds)`` of each process; ``total``
    is the sum of the roles as reported (rounded to 0.01 us each)."""
    by_role: dict[str, float] = {}
    for role, seconds in process_cpu_s:
        by_role[role] = by_role.get(role, 0.0) + seconds
    split = {role: round(seconds / lifecycles * 1e6, 2) for role, seconds in sorted(by_role.items())}
    return {**split, "total": round(sum(split.values()), 2)}


def modeled_ceiling(cpu_us: dict[str, float], one_of_a_kind_us: dict[str, float],
                    cores: Iterable[int] = CEILING_CORES) -> dict[str, Any]:
    """Lifecycles/s with more cores: the smaller of ``cores / total CPU per lifecycle`` and
    ``1 / CPU per lifecycle of the busiest one-of-a-kind process`` (which no added core relieves).

    ``cpu_us`` is a :func:`cpu_split` (with ``total``); ``one_of_a_kind_us`` the CPU per lifecycle of each
    process there is exactly one of (the driver, the coordinator, a single writer...), by name.
    """
    total = cpu_us["total"]
    busiest = max(one_of_a_kind_us, key=one_of_a_kind_us.get) if one_of_a_kind_us else None
    busiest_us = one_of_a_kind_us[busiest] if busiest else 0.0
    limit = 1e6 / busiest_us if busiest_us > 0 else math.inf

    def at(n: int) -> Optional[float]:  # None: no CPU measured (a run shorter than psutil's 10 ms tick), no bound
        value = min(n * 1e6 / total if total > 0 else math.inf, limit)
        return round(value, 1) if math.isfinite(value) else None

    return {
        "by_cores": {str(n): at(n) for n in cores},
        "limit_lifecycles_per_s": round(limit, 1) if math.isfinite(limit) else None,
        "busiest_one_of_a_kind": busiest,
        "busiest_cpu_us": busiest_us,
        "cores_to_limit": round(total / busiest_us, 2) if busiest_us > 0 else None,
    }


def per_item_bytes(before_bytes: Optional[int], after_bytes: Optional[int], items: int) -> Optional[int]:
    """Bytes per item added between two memory readings (None if either is missing or no item was added)."""
    if before_bytes is None or after_bytes is None or items <= 0:
        return None
    return round((after_bytes - before_bytes) / items)
