"""One bench run: the booths, the centre mesh and its sweeps, the other meshes; the report as data.

Order: the machine's free memory touched once (:mod:`benchmarks.page_warmup`), the seed's booth and ours (in process, no Ray), then the centre mesh (``Mesh.call``, the main
``Mesh.send``, and the sweeps that need no other layout: batch size, contention, failure rate,
concurrency), then a mesh for each other shard count and agent count, then the seed's booth again
(its drift over the run, for the noise: ratios use the first). Each point's ratio is to the seed's
rate of this run. A point that fails is a problem in the report; the others go on.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Optional

from benchmarks import agents, booth
from benchmarks.page_warmup import touch_free_memory, warmup_bytes
from benchmarks.figures import per_item_bytes, ratio
from benchmarks.plan import Plan
from benchmarks.record import with_ratio
from benchmarks.seed import seed_installed

VERSION = 1
Report = dict[str, Any]


def run_bench(plan: Plan, *, log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)) -> Report:
    """Every measurement of ``plan``; see the module doc."""
    started = time.perf_counter()
    report = new_report(plan)
    say = log
    log = lambda line: say(f"[{time.perf_counter() - started:5.1f} s] {line}")  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="tollmesh-bench-") as tmp:
        root = Path(tmp)
        log("touching free memory first (this VM charges the first touch of a page) ...")
        report["page_warmup"] = touch_free_memory(root, warmup_bytes(plan.quick))
        _booths(plan, root, report, log)
        _centre(plan, root, report, log)
        _other_layouts(plan, root, report, log)
        if report["seed"]:
            log("seed's booth again (drift) ...")
            end = booth.run_seed(plan.lifecycles, warmup=plan.lifecycles // 5, tmp=root / "booths-end")
            report["seed_drift"] = ratio(end["lifecycles_per_s"], report["seed"]["lifecycles_per_s"])
    finish(report)
    report["total_s"] = round(time.perf_counter() - started, 1)
    return report


def new_report(plan: Plan) -> Report:
    import ray

    return {
        "benchmark": "tollmesh-bench", "version": VERSION, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "ray": ray.__version__},
        "plan": plan.as_dict(), "seed": None, "seed_drift": None, "runs": [],
        "sweeps": {name: [] for name in plan.sweeps}, "memory": {}, "problems": [], "page_warmup": None,
    }


def _booths(plan: Plan, root: Path, report: Report, log: Callable[[str], None]) -> None:
    warmup = plan.lifecycles // 5
    if seed_installed():
        log(f"seed's booth, {plan.lifecycles:,} lifecycles ...")
        report["seed"] = booth.run_seed(plan.lifecycles, warmup=warmup, tmp=root / "booths")
        report["runs"].append(report["seed"])
    else:
        report["problems"].append("nano-empire-tollbooth is not installed (pip install -e '.[bench]'): no ratios")
    log(f"our booth, {plan.lifecycles:,} lifecycles ...")
    report["runs"].append(booth.run_ours(plan.lifecycles, warmup=warmup, tmp=root / "booths"))


def _guarded(report: Report, what: str, fn: Callable[[], Any]) -> Optional[Any]:
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - a failed point is reported, the others go on
        report["problems"].append(describe(what, exc))
        return None


def _centre(plan: Plan, root: Path, report: Report, log: Callable[[str], None]) -> None:
    from benchmarks.mesh_runs import mesh_session, run_calls, run_concurrent, run_send

    centre, sweeps, seed = plan.centre, plan.sweeps, plan.seed
    tags = tuple(f"hot{i}" for i in range(len(sweeps["contention"])))
    log(f"centre mesh {vars(centre)} ...")
    with mesh_session(root, centre, cores=plan.cores, hot_tags=tags, max_batch=max(sweeps["batch"]),
                      address=plan.address) as session:
        ids, warm = session.ids, agents.make_messages(session.ids, max(2_000, plan.messages // 10), seed=seed + 99)
        report["runs"].append(_guarded(report, "Mesh.call", lambda: run_calls(
            session, plan.calls, warmup=max(20, plan.calls // 10), seed=seed)))
        main = _guarded(report, "main Mesh.send_columns", lambda: run_send(
            session, agents.make_messages(ids, plan.messages, seed=seed), name="Mesh.send_columns, batched", warmup=warm))
        report["runs"].append(main)
        report["runs"].append(_guarded(report, "Mesh.send", lambda: run_send(
            session, agents.make_messages(ids, plan.messages, seed=seed + 7), name="Mesh.send, batched (records back)",
            warmup=warm, columns=False)))
        for size in sweeps["batch"]:
            log(f"  batch {size:,}")
            _point(report, "batch", size, lambda: run_send(
                session, agents.make_messages(ids, plan.point_messages, seed=seed + size), batch_messages=size,
                name=f"Mesh.send_columns, batches of {size:,}"))
        for tag, share in zip(tags, sweeps["contention"]):
            log(f"  contention {share}")
            hot = agents.hot_ids(tag, agents.HOT_SOURCES)
            _point(report, "contention", share, lambda: run_send(
                session, agents.make_messages(ids, plan.point_messages, seed=seed, hot_share=share, hot_sources=hot),
                name=f"Mesh.send_columns, {share:.0%} from {len(hot)} hot sources at their cap"))
        for rate in sweeps["failure_rate"]:
            log(f"  failure rate {rate}")
            _point(report, "failure_rate", rate, lambda: run_send(
                session, agents.make_messages(ids, plan.point_messages, seed=seed + 1, failure_rate=rate),
                name=f"Mesh.send_columns, {rate:.0%} of handlers raising"))
        for concurrency in sweeps["concurrency"]:
            log(f"  concurrency {concurrency}")
            _point(report, "concurrency", concurrency, lambda: run_concurrent(
                session, plan.calls, concurrency, warmup=min(plan.calls, 10 * concurrency), seed=seed + 2))
    _check_ledger(report, "centre mesh", session.closed)
    report["runs"] = [run for run in report["runs"] if run is not None]
    if main is not None:
        for name, value in (("shards", centre.shards), ("agents", centre.agents)):
            if value in sweeps[name]:
                report["sweeps"][name].append({**main, "value": value})


def _point(report: Report, sweep: str, value: Any, fn: Callable[[], dict]) -> None:
    point = _guarded(report, f"{sweep} {value}", fn)
    if point is not None:
        report["sweeps"][sweep].append({**point, "value": value})


def _other_layouts(plan: Plan, root: Path, report: Report, log: Callable[[str], None]) -> None:
    from benchmarks.mesh_runs import mesh_session, run_send

    centre = plan.centre
    others = [("shards", v, replace(centre, shards=v)) for v in plan.sweeps["shards"] if v != centre.shards]
    others += [("agents", v, replace(centre, agents=v)) for v in plan.sweeps["agents"] if v != centre.agents]
    for sweep, value, layout in others:
        log(f"mesh with {sweep} {value:,} ...")

        def one() -> dict:
            with mesh_session(root, layout, cores=plan.cores, address=plan.address) as session:
                warm = agents.make_messages(session.ids, max(2_000, plan.point_messages // 10), seed=plan.seed + 99)
                point = run_send(session, agents.make_messages(session.ids, plan.point_messages, seed=plan.seed),
                                 name=f"Mesh.send, {sweep} {value:,}", warmup=warm, setup_s=session.setup_s)
            _check_ledger(report, f"mesh with {sweep} {value}", session.closed)
            return point

        _point(report, sweep, value, one)
        report["sweeps"][sweep].sort(key=lambda p: p["value"])


def _check_ledger(report: Report, what: str, closed: dict[str, Any]) -> None:
    events, rows = closed.get("events_written"), closed.get("parquet_rows")
    if closed.get("parquet_error"):
        report["problems"].append(f"{what}: Parquet sink error: {closed['parquet_error']}")
    if events is not None and rows is not None and events != rows:
        report["problems"].append(f"{what}: {rows} Parquet rows for {events} JSONL events")


def finish(report: Report) -> None:
    """Ratios to the seed, the outcome checks, and memory per agent from the agents sweep."""
    seed_rate = report["seed"]["lifecycles_per_s"] if report["seed"] else None
    for run in report["runs"] + [p for points in report["sweeps"].values() for p in points]:
        with_ratio(run, seed_rate)
        expected = run.get("expected")
        if expected is not None and run["outcomes"] != expected:
            report["problems"].append(f"{run['name']}: outcomes {run['outcomes']} != expected {expected}")
        if expected is None and run["kind"].startswith("mesh") and set(run["outcomes"]) != {"released"}:
            report["problems"].append(f"{run['name']}: outcomes {run['outcomes']}, not all released")
    report["memory"] = memory_per_agent(report["sweeps"].get("agents", []))


def memory_per_agent(points: list[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """Resident bytes per agent added, by role (hosts, shards, coordinator): the processes' memory once the
    agents are in (before any call), from the smallest agents point to the largest."""
    if len(points) < 2:
        return None
    small, large = points[0], points[-1]
    added = large["value"] - small["value"]
    return {"agents": [small["value"], large["value"]], "bytes_per_agent": {
        role: per_item_bytes(small["rss_after_setup_bytes"].get(role), large["rss_after_setup_bytes"].get(role), added)
        for role in ("hosts", "shards", "coordinator")}}


def describe(what: str, exc: BaseException) -> str:
    """One line: what failed, the error's first (and last) line and where it was raised."""
    where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    place = f" at {Path(where.filename).name}:{where.lineno}" if where else ""
    lines = str(exc).strip().splitlines() or [""]
    text = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"  # Ray's errors carry whole tracebacks
    return f"{what}: {type(exc).__name__}: {text}{place}"
