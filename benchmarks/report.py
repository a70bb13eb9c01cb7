"""The bench's report as text: the printed table, and the README's performance table (markdown).

Both read only the report's data (what :func:`benchmarks.run.run_bench` returns, or its saved
JSON), so the README's table is regenerated from a saved run:
``tollmesh bench --readme bench.json``.
"""

from __future__ import annotations

from typing import Any, Optional

ROLES = ("driver", "coordinator", "shards", "writer", "parquet_sink", "hosts", "ray")
SWEEP_LABELS = {"shards": "shards", "batch": "batch size", "agents": "agents", "concurrency": "acalls in flight",
                "contention": "hot share", "failure_rate": "failure rate"}


def _n(value: Optional[float], digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _x(run: dict[str, Any]) -> str:
    return "-" if run.get("x_seed") is None else f"{run['x_seed']:.2f}x"


def _busiest(run: dict[str, Any]) -> str:
    c = run["ceiling"]
    return "-" if c["busiest_one_of_a_kind"] is None else f"{c['busiest_one_of_a_kind']} {c['busiest_cpu_us']:.1f}"


def _value(sweep: str, value: Any) -> str:
    return f"{value:.0%}" if sweep in ("contention", "failure_rate") else f"{value:,}"


def format_table(report: dict[str, Any]) -> str:
    """The text table ``tollmesh bench`` prints: the measured things, CPU by role, the sweeps."""
    lines = [f"{'run':34} {'lifecycles/s':>12} {'x seed':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'of':>9} "
             f"{'CPU us':>7} {'busiest one-of-a-kind us':>25} {'ceiling 2c':>11} {'limit':>10}"]
    address = report.get("plan", {}).get("address")
    if address:
        lines.insert(0, f"meshes on the Ray cluster at {address}: CPU and memory by role count this machine's "
                        "processes only (the driver's), not the cluster's")
    for run in report["runs"]:
        lat, c = run["latency_ms"], run["ceiling"]
        lines.append(f"{run['name'][:34]:34} {_n(run['lifecycles_per_s']):>12} {_x(run):>7} {_n(lat['p50'], 3):>8} "
                     f"{_n(lat['p99'], 3):>8} {_n(lat['max'], 3):>8} {lat['of']:>9} {_n(run['cpu_us']['total'], 1):>7} "
                     f"{_busiest(run):>25} {_n(c['by_cores'].get('2')):>11} {_n(c['limit_lifecycles_per_s']):>10}")
    lines += ["", "CPU per lifecycle, us, by process role:", f"{'run':34} " + " ".join(f"{r:>12}" for r in ROLES + ("total",))]
    for run in report["runs"]:
        lines.append(f"{run['name'][:34]:34} " + " ".join(f"{_n(run['cpu_us'].get(r), 2):>12}" for r in ROLES + ("total",)))
    for sweep, points in report["sweeps"].items():
        if not points:
            continue
        lines += ["", f"sweep: {SWEEP_LABELS[sweep]}",
                  f"{'value':>10} {'lifecycles/s':>12} {'x seed':>7} {'p50 ms':>8} {'p99 ms':>8} {'CPU us':>7} "
                  f"{'coordinator us':>15} {'busiest one-of-a-kind us':>25} {'limit':>10}  outcomes"]
        for p in points:
            lines.append(f"{_value(sweep, p['value']):>10} {_n(p['lifecycles_per_s']):>12} {_x(p):>7} "
                         f"{_n(p['latency_ms']['p50'], 2):>8} {_n(p['latency_ms']['p99'], 2):>8} "
                         f"{_n(p['cpu_us']['total'], 1):>7} {_n(p['cpu_us'].get('coordinator'), 2):>15} "
                         f"{_busiest(p):>25} {_n(p['ceiling']['limit_lifecycles_per_s']):>10}  "
                         + ", ".join(f"{k} {v:,}" for k, v in sorted(p["outcomes"].items())))
    memory = report.get("memory")
    if memory:
        per = ", ".join(f"{role} {_n(b)} B" for role, b in memory["bytes_per_agent"].items())
        lines += ["", f"memory per agent ({memory['agents'][0]:,} -> {memory['agents'][1]:,} agents): {per}"]
    if report.get("seed_drift") is not None:
        lines.append(f"seed's booth at the end of the run: {report['seed_drift']:.2f}x its rate at the start")
    lines += [f"PROBLEM: {problem}" for problem in report["problems"]]
    return "\n".join(lines)


def readme_table(report: dict[str, Any]) -> str:
    """The README's performance table (markdown) from a bench report."""
    machine, plan = report["machine"], report["plan"]
    lines = [f"`tollmesh bench{' --quick' if plan['quick'] else ''}`, {report['when']}, {machine['cpus']} cores, "
             f"Python {machine['python']}, Ray {machine['ray']}; ratios to the seed's booth in the same run.", "",
             "| run | lifecycles/s | x seed | p50 / p99 / max ms | CPU us per lifecycle | busiest one-of-a-kind (us) "
             "| ceiling, 2 / 16 cores / limit |",
             "|---|---:|---:|---|---:|---|---|"]
    for run in report["runs"]:
        lat, c = run["latency_ms"], run["ceiling"]
        lines.append(f"| {run['name']} | {_n(run['lifecycles_per_s'])} | {_x(run)} | {_n(lat['p50'], 3)} / "
                     f"{_n(lat['p99'], 3)} / {_n(lat['max'], 3)} ({lat['of']}) | {_n(run['cpu_us']['total'], 1)} | "
                     f"{_busiest(run)} | {_n(c['by_cores'].get('2'))} / {_n(c['by_cores'].get('16'))} / "
                     f"{_n(c['limit_lifecycles_per_s'])} |")
    for sweep, points in report["sweeps"].items():
        if points:
            curve = ", ".join(f"{_value(sweep, p['value'])}: {_n(p['lifecycles_per_s'])} ({_x(p)})" for p in points)
            lines.append(f"| sweep: {SWEEP_LABELS[sweep]} | {curve} | | | | | |")
    return "\n".join(lines)
