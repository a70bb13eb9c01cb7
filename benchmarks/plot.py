"""The bench's figures as one PNG: rates and CPU by role of the measured things, and each sweep's curve."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.report import ROLES, SWEEP_LABELS


def plot(report: dict[str, Any], path: Path) -> Path:
    """Write the PNG at ``path``: rates with the seed's as a line, CPU per lifecycle stacked by role, then one
    panel a sweep (lifecycles/s, and the p99 latency on a second axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweeps = [(name, points) for name, points in report["sweeps"].items() if points]
    panels = 2 + len(sweeps)
    columns = 4
    rows = -(-panels // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.8 * rows), squeeze=False)
    flat = list(axes.flat)
    _rates(flat[0], report)
    _cpu(flat[1], report)
    for ax, (name, points) in zip(flat[2:], sweeps):
        _sweep(ax, name, points, report)
    for ax in flat[panels:]:
        ax.axis("off")
    fig.suptitle(f"tollmesh bench ({report['when']}, {report['machine']['cpus']} cores)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _short(name: str) -> str:
    return name.replace("nano-empire-tollbooth 0.3.0", "seed").replace("tollmesh Tollbooth (in process)", "Tollbooth") \
        .replace(", one at a time", "").replace(", batched", "")


def _rates(ax: Any, report: dict[str, Any]) -> None:
    runs = report["runs"]
    ax.bar(range(len(runs)), [r["lifecycles_per_s"] for r in runs], color="tab:blue")
    ax.set_xticks(range(len(runs)), [_short(r["name"]) for r in runs], rotation=20, fontsize=8)
    for i, run in enumerate(runs):
        if run.get("x_seed") is not None:
            ax.annotate(f"{run['x_seed']:.2f}x", (i, run["lifecycles_per_s"]), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("lifecycles/s")
    ax.set_title("rate (x the seed's, same run)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)


def _cpu(ax: Any, report: dict[str, Any]) -> None:
    runs = [r for r in report["runs"] if r["kind"] != "mesh_call"]  # a single call costs 100x: it would hide the rest
    bottom = [0.0] * len(runs)
    for role in ROLES:
        values = [r["cpu_us"].get(role, 0.0) for r in runs]
        if any(values):
            ax.bar(range(len(runs)), values, bottom=bottom, label=role)
            bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_xticks(range(len(runs)), [_short(r["name"]) for r in runs], rotation=20, fontsize=8)
    ax.set_ylabel("CPU us per lifecycle")
    calls = [r for r in report["runs"] if r["kind"] == "mesh_call"]
    note = f" (Mesh.call: {calls[0]['cpu_us']['total']:,.0f})" if calls else ""
    ax.set_title(f"CPU per lifecycle by process role{note}", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)


def _sweep(ax: Any, name: str, points: list[dict[str, Any]], report: dict[str, Any]) -> None:
    xs = [p["value"] for p in points]
    ax.plot(xs, [p["lifecycles_per_s"] for p in points], marker="o", color="tab:blue", label="lifecycles/s")
    if report["seed"]:
        ax.axhline(report["seed"]["lifecycles_per_s"], color="grey", linestyle="--", linewidth=1, label="seed")
    if name in ("batch", "agents", "concurrency") and len(xs) > 1 and min(xs) > 0:
        ax.set_xscale("log")
    ax.set_xticks(xs, [f"{x:.0%}" if name in ("contention", "failure_rate") else f"{x:,}" for x in xs], fontsize=8)
    ax.minorticks_off()
    ax.set_xlabel(SWEEP_LABELS[name])
    ax.set_ylabel("lifecycles/s")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    p99 = ax.twinx()
    p99.plot(xs, [p["latency_ms"]["p99"] for p in points], marker="s", color="tab:red", alpha=0.6, label="p99 ms")
    p99.set_ylabel("p99 ms", color="tab:red")
    p99.set_ylim(bottom=0)
    ax.set_title(f"sweep: {SWEEP_LABELS[name]}", fontsize=10)
    ax.legend(loc="lower left", fontsize=7)
