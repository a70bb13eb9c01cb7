"""Lifecycles per second of the distributed mesh beside the seed's in-process booth; latency; a curve.

One local Ray (or ``RAY_ADDRESS``) for the whole run; each mesh is shut down before the next starts.

- **seed**: nano-empire-tollbooth 0.3.0 in process, charge + release with its JSONL ledger (``--skip-seed``);
- **mesh**: ``mesh.send(messages)`` between 1,000 light agents whose handler returns its payload:
  lock -> deliver -> release, every event durable in JSONL (and written to Parquet), and its ratio to the seed,
  with the CPU each of the mesh's processes spent per lifecycle (psutil, this node's processes);
- **latency**: ``mesh.call(source, target, payload)`` one at a time (the fast lane), p50/p90/p99/max
  in ms; the same through the coordinator (one-message ``mesh.send``); then as many ``mesh.acall`` s
  all at once (coalesced into batches): calls per second;
- **curve** (``--skip-curve``): lifecycles/s as shards, batch size and batches in flight vary one at a
  time around the main run's layout; 1,000 against 100,000 agents (host memory per agent); and
  the shards' memory per open escrow (locked through ``mesh.tollbooth(...)``).

    python benchmarks/bench_mesh.py [--messages N] [--latency-calls N] [--quick] [--out DIR] [--skip-seed] [--skip-curve]

More knobs: ``--seed-messages``, ``--curve-messages``, ``--curve-repeats``, and the main run's layout,
the centre of the curve: ``--shards`` (2), ``--batch`` (max_batch_messages, 5,000), ``--inflight``
(max_inflight_batches, 4). ``--quick``: 5,000 messages, 100 calls, two values a knob, 10,000 agents.
Exit code 1 if anything failed (each problem is printed and saved).

Prints a table and saves ``mesh-<time>.json`` under ``--out`` (default tollmesh-out/bench/), with the
curve beside it as ``mesh-<time>-curve.json`` and ``mesh-<time>-curve.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import shutil
import sys
import tempfile
import time
import traceback
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Optional

import orjson
import ray

from mesh.agent import Agent, Message
from mesh.config import TollboothConfig
from mesh.mesh import Mesh
from mesh.mesh_config import MeshConfig
from seed_booth import seed_installed, seed_lifecycles_elapsed_s

NAMESPACE = "tollmesh-bench"
RNG_SEED = 7
MESH_ACTOR_CLASSES = ("AgentHost", "BudgetShard", "EscrowCoordinator", "LedgerWriterActor", "ParquetSink")


class Echo(Agent):
    """A light agent: returns its payload (the default price, $0.001 a call)."""

    def handle(self, ctx: Any, payload: Any) -> Any:
        return payload


if __name__ != "__main__":  # imported, not run: Ray's workers cannot import this file, so ship Echo by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@dataclass(frozen=True)
class Layout:
    shards: int
    batch: int
    inflight: int
    agents: int


@dataclass(frozen=True)
class Plan:
    seed_messages: int
    messages: int
    latency_calls: int
    warmup_calls: int
    curve_messages: int
    curve_repeats: int
    layout: Layout
    shards_values: tuple[int, ...]
    batch_values: tuple[int, ...]
    inflight_values: tuple[int, ...]
    many_agents: int
    open_escrows: int


# -- plan ----------------------------------------------------------------------------------


def positive_int(text: str) -> int:
    value = int(text.replace("_", "").replace(",", ""))
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return value


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=positive_int, help="messages of the main mesh run (default 200,000; --quick 5,000)")
    parser.add_argument("--seed-messages", type=positive_int, help="lifecycles of the seed's booth (default 20,000; --quick 5,000)")
    parser.add_argument("--latency-calls", type=positive_int, help="timed mesh.call round trips (default 2,000; --quick 100)")
    parser.add_argument("--curve-messages", type=positive_int, help="messages per curve point (default 50,000; --quick 5,000)")
    parser.add_argument("--curve-repeats", type=positive_int, help="sends per curve point, the median kept (default 3; --quick 1)")
    parser.add_argument("--shards", type=positive_int, default=2, help="budget shards of the main run (default 2)")
    parser.add_argument("--batch", type=positive_int, default=5_000, help="max_batch_messages of the main run (default 5,000)")
    parser.add_argument("--inflight", type=positive_int, default=4, help="max_inflight_batches of the main run (default 4)")
    parser.add_argument("--quick", action="store_true", help="a tiny run (well under a minute)")
    parser.add_argument("--out", type=Path, default=Path("tollmesh-out") / "bench")
    parser.add_argument("--skip-seed", action="store_true", help="do not run the seed's booth")
    parser.add_argument("--skip-curve", action="store_true", help="no curve, no memory figures")
    return parser.parse_args(argv)


def make_plan(args: argparse.Namespace) -> Plan:
    quick = args.quick
    layout = Layout(args.shards, args.batch, args.inflight, agents=1_000)
    return Plan(
        seed_messages=args.seed_messages or (5_000 if quick else 20_000),
        messages=args.messages or (5_000 if quick else 200_000),
        latency_calls=args.latency_calls or (100 if quick else 2_000),
        warmup_calls=10 if quick else 100,
        curve_messages=args.curve_messages or (5_000 if quick else 50_000),
        curve_repeats=args.curve_repeats or (1 if quick else 3),
        layout=layout,
        shards_values=(1, 2) if quick else (1, 2, 4),
        batch_values=(1_000, 5_000) if quick else (1_000, 5_000, 20_000),
        inflight_values=(1, 4) if quick else (1, 4, 8),
        many_agents=10_000 if quick else 100_000,
        open_escrows=2_000 if quick else 10_000,
    )


# -- Ray, meshes, memory ---------------------------------------------------------------------


def start_ray() -> bool:
    """One Ray for the whole run: attach to ``RAY_ADDRESS``, or start a local one; True if started here."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=False)
    else:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace=NAMESPACE)
    return True


def open_mesh(tag: str, root: Path, layout: Layout) -> Mesh:
    """A fresh mesh laid out as ``layout``: a name of its own, its ledger in a directory of its own under ``root``."""
    name = f"bench-{tag}-{uuid.uuid4().hex[:6]}"
    config = MeshConfig(
        name=name, namespace=NAMESPACE, out_dir=root / name, shards=layout.shards,
        max_batch_messages=layout.batch, max_inflight_batches=layout.inflight, metrics_enabled=True,
    )
    return Mesh(config)


def agent_ids(count: int) -> list[str]:
    return [f"agent-{n:06d}" for n in range(count)]


def make_messages(ids: list[str], count: int) -> list[Message]:
    """``count`` messages, source and target drawn from ``ids`` by a seeded random (source != target)."""
    rng = random.Random(RNG_SEED)
    messages = []
    for n in range(count):
        source, target = rng.sample(ids, 2)
        messages.append(Message(source, target, n))
    return messages


def rss_bytes(pid: int) -> Optional[int]:
    """Resident memory of a local process (psutil, else /proc); None if it is not on this machine."""
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss
    except ImportError:
        pass
    except Exception:  # noqa: BLE001 - gone, or on another node
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def total_rss_bytes(pids: list[int]) -> Optional[int]:
    sizes = [rss_bytes(pid) for pid in pids]
    return None if not sizes or any(s is None for s in sizes) else sum(sizes)


def host_pids(mesh: Mesh) -> list[int]:
    names = ray.get(mesh._coordinator.host_names.remote())
    handles = [ray.get_actor(name, namespace=mesh.config.namespace) for name in names]
    return ray.get([handle.pid.remote() for handle in handles])


def shard_pids(mesh: Mesh) -> list[int]:
    return ray.get([mesh.actor(f"shard.{i}").ready.remote() for i in range(mesh.config.shards)])


def memory_mb(mesh: Mesh) -> dict[str, Optional[float]]:
    """RSS of the mesh's hosts (together), shards (together) and coordinator, in MB."""
    coordinator_pid = mesh.stats()["pid"]
    sizes = {
        "hosts_rss_mb": total_rss_bytes(host_pids(mesh)),
        "shards_rss_mb": total_rss_bytes(shard_pids(mesh)),
        "coordinator_rss_mb": rss_bytes(coordinator_pid),
    }
    return {key: None if size is None else round(size / 1e6, 1) for key, size in sizes.items()}


def role_pids(mesh: Mesh) -> dict[str, list[int]]:
    """The pids of the mesh's processes by role (the driver is this process)."""
    writer = mesh.actor("writer")
    sink_pid = ray.get(writer.memory.remote())["parquet_sink_pid"]
    return {
        "driver": [os.getpid()], "coordinator": [mesh.stats()["pid"]], "budget_shards": shard_pids(mesh),
        "agent_hosts": host_pids(mesh), "ledger_writer": [ray.get(writer.stats.remote())["pid"]],
        "parquet_sink": [] if sink_pid is None else [sink_pid],
    }


def cpu_seconds(pids_by_role: dict[str, list[int]]) -> Optional[dict[str, float]]:
    """User + system CPU seconds used so far by each role's processes; None without psutil or off this node."""
    try:
        import psutil

        return {
            role: sum(sum(psutil.Process(pid).cpu_times()[:2]) for pid in pids)
            for role, pids in pids_by_role.items()
        }
    except Exception:  # noqa: BLE001 - no psutil, or a process on another node or gone
        return None


def cpu_us_per_lifecycle(before: Optional[dict], after: Optional[dict], lifecycles: int) -> Optional[dict[str, float]]:
    """Where a send's CPU went: microseconds per lifecycle by role, and their total."""
    if before is None or after is None:
        return None
    split = {role: round((after[role] - before[role]) / lifecycles * 1e6, 1) for role in before}
    return {**split, "total": round(sum(split.values()), 1)}


def mesh_actor_processes() -> Optional[int]:
    """Local worker processes still titled as a mesh actor (``ray::BudgetShard``...); None without psutil."""
    try:
        import psutil
    except ImportError:
        return None
    count = 0
    for process in psutil.process_iter(["cmdline"]):
        title = " ".join(process.info["cmdline"] or [])  # "ray::BudgetShard" or "ray::BudgetShard.lock_batch"
        if title.startswith("ray::") and title[5:].split(".")[0].strip() in MESH_ACTOR_CLASSES:
            count += 1
    return count


def leftover_processes(timeout_s: float = 5.0) -> Optional[int]:
    """Mesh actor processes still alive ``timeout_s`` after a shutdown (0 when every actor is gone)."""
    deadline = time.monotonic() + timeout_s
    while True:
        count = mesh_actor_processes()
        if not count or time.monotonic() > deadline:
            return count
        time.sleep(0.1)


def close_mesh(mesh: Mesh) -> dict[str, Any]:
    """Shut the mesh down (flush and close its ledger), then read what it left on disk, and delete it."""
    out_dir = mesh.config.out_dir
    started = time.perf_counter()
    summary = mesh.shutdown()
    closed = {"shutdown_s": round(time.perf_counter() - started, 2), "events_written": summary.get("events")}
    closed["jsonl_bytes"] = sum(p.stat().st_size for p in out_dir.glob("toll_ledger*.jsonl"))
    closed["parquet_rows"] = parquet_rows(summary.get("parquet_files") or [])
    closed["parquet_error"] = summary.get("parquet_error")
    shutil.rmtree(out_dir, ignore_errors=True)
    return closed


def parquet_rows(files: list[str]) -> Optional[int]:
    try:
        import pyarrow.parquet as pq

        return sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    except Exception:  # noqa: BLE001 - the figure is optional
        return None


# -- measurements -----------------------------------------------------------------------------


def run_seed(plan: Plan) -> dict[str, Any]:
    """The seed's in-process Tollbooth, live, its JSONL ledger on."""
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Path(tmp) / "toll_ledger.jsonl"
        elapsed_s = seed_lifecycles_elapsed_s(ledger, plan.seed_messages)
        ledger_bytes = ledger.stat().st_size
    return {
        "name": "nano-empire-tollbooth 0.3.0 (in process)",
        "messages": plan.seed_messages,
        "elapsed_s": round(elapsed_s, 3),
        "lifecycles_per_s": round(plan.seed_messages / elapsed_s),
        "ledger_bytes_per_lifecycle": round(ledger_bytes / plan.seed_messages, 1),
    }


def timed_send(mesh: Mesh, messages: list[Message]) -> dict[str, Any]:
    """``mesh.send(messages)``: seconds, lifecycles/s, and how many calls were released."""
    started = time.perf_counter()
    results = mesh.send(messages)
    elapsed_s = time.perf_counter() - started
    released = sum(1 for r in results if r.ok and r.status.value == "released")
    return {
        "messages": len(messages),
        "elapsed_s": round(elapsed_s, 3),
        "lifecycles_per_s": round(len(messages) / elapsed_s),
        "released": released,
        "not_released": len(messages) - released,
    }


def measure_latency(mesh: Mesh, ids: list[str], calls: int, warmup_calls: int, *, via: str = "fast_lane") -> dict[str, Any]:
    """Round trips of single calls, one at a time, after ``warmup_calls`` untimed ones: ``mesh.call``
    (``via="fast_lane"``: the compiled graph) or a one-message ``mesh.send`` (``"coordinator"``)."""
    if via == "fast_lane":
        def one(source: str, target: str, payload: Any) -> Any:
            return mesh.call(source, target, payload)
    else:
        def one(source: str, target: str, payload: Any) -> Any:
            return mesh.send([Message(source, target, payload)])[0]
    rng = random.Random(RNG_SEED + 1)
    pairs = [rng.sample(ids, 2) for _ in range(warmup_calls + calls)]
    fast_before = mesh.stats()["fast_lane_calls"]
    for source, target in pairs[:warmup_calls]:
        one(source, target, "warm-up")
    latencies_ms, failures = [], 0
    for n, (source, target) in enumerate(pairs[warmup_calls:]):
        started = time.perf_counter_ns()
        result = one(source, target, n)
        latencies_ms.append((time.perf_counter_ns() - started) / 1e6)
        failures += not result.ok
    fast_calls = mesh.stats()["fast_lane_calls"] - fast_before
    return {"via": via, "calls": calls, "warmup_calls": warmup_calls, "failures": failures,
            "fast_lane_calls": fast_calls, **percentiles_ms(latencies_ms)}


def measure_concurrent_calls(mesh: Mesh, ids: list[str], calls: int) -> dict[str, Any]:
    """``calls`` single ``mesh.acall`` s at once (coalesced into batches on their way): calls per second."""
    rng = random.Random(RNG_SEED + 2)
    pairs = [rng.sample(ids, 2) for _ in range(calls)]

    async def all_at_once() -> list:
        return await asyncio.gather(*(mesh.acall(source, target, n) for n, (source, target) in enumerate(pairs)))

    started = time.perf_counter()
    results = asyncio.run(all_at_once())
    elapsed_s = time.perf_counter() - started
    return {"calls": calls, "failures": sum(not r.ok for r in results), "elapsed_s": round(elapsed_s, 3),
            "calls_per_s": round(calls / elapsed_s)}


def percentiles_ms(latencies_ms: list[float]) -> dict[str, float]:
    ordered = sorted(latencies_ms)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {"p50_ms": at(0.50), "p90_ms": at(0.90), "p99_ms": at(0.99), "max_ms": round(ordered[-1], 2),
            "mean_ms": round(sum(ordered) / len(ordered), 2)}


def run_main(plan: Plan, root: Path) -> dict[str, Any]:
    """The main mesh: latency first (quiet mesh), then ``plan.messages`` through ``mesh.send``."""
    layout = plan.layout
    ids = agent_ids(layout.agents)
    started = time.perf_counter()
    mesh = open_mesh("main", root, layout)
    try:
        mesh.add_agents(Echo, ids)
        setup_s = time.perf_counter() - started
        memory = memory_mb(mesh)
        mesh.open_fast_lane()
        latency = measure_latency(mesh, ids, plan.latency_calls, plan.warmup_calls)
        latency_coordinator = measure_latency(mesh, ids, plan.latency_calls, plan.warmup_calls, via="coordinator")
        concurrent = measure_concurrent_calls(mesh, ids, plan.latency_calls)
        messages = make_messages(ids, plan.messages)
        pids = role_pids(mesh)
        cpu_before = cpu_seconds(pids)
        throughput = timed_send(mesh, messages)
        throughput["cpu_us_per_lifecycle"] = cpu_us_per_lifecycle(cpu_before, cpu_seconds(pids), plan.messages)
        stats = mesh.stats()
    finally:
        closed = close_mesh(mesh)
    expected_events = 2 * (plan.messages + 3 * plan.latency_calls + 2 * plan.warmup_calls)
    return {
        "layout": asdict(layout), "setup_s": round(setup_s, 2), "memory_after_setup": memory,
        "throughput": {**throughput, "lifecycles_per_s_with_shutdown": round(
            plan.messages / (throughput["elapsed_s"] + closed["shutdown_s"]))},
        "latency": latency, "latency_via_coordinator": latency_coordinator, "concurrent_calls": concurrent, "open_escrows_after": stats["open_escrows"],
        "events_expected": expected_events, **closed,
        "ledger_bytes_per_lifecycle": round(closed["jsonl_bytes"] / (expected_events / 2), 1),
    }


def run_point(plan: Plan, root: Path, knob: str, layout: Layout) -> dict[str, Any]:
    """One point of the curve: a fresh mesh with ``layout``; ``plan.curve_messages`` through ``send``,
    ``plan.curve_repeats`` times; the median send (by rate) with every rate."""
    ids = agent_ids(layout.agents)
    started = time.perf_counter()
    mesh = open_mesh(f"{knob}", root, layout)
    try:
        mesh.add_agents(Echo, ids)
        setup_s = time.perf_counter() - started
        memory = memory_mb(mesh)
        messages = make_messages(ids, plan.curve_messages)
        sends = sorted((timed_send(mesh, messages) for _ in range(plan.curve_repeats)),
                       key=lambda send: send["lifecycles_per_s"])
    finally:
        closed = close_mesh(mesh)
    return {"knob": knob, **asdict(layout), "setup_s": round(setup_s, 2), **sends[len(sends) // 2],
            "lifecycles_per_s_all": [send["lifecycles_per_s"] for send in sends], **memory,
            "shutdown_s": closed["shutdown_s"], "events_written": closed["events_written"]}


def curve_layouts(plan: Plan) -> list[tuple[str, Layout]]:
    """The centre layout once, then one knob at a time around it (shards, batch, in flight, agents)."""
    centre = plan.layout
    layouts = [("centre", centre)]
    layouts += [("shards", replace(centre, shards=v)) for v in plan.shards_values if v != centre.shards]
    layouts += [("batch", replace(centre, batch=v)) for v in plan.batch_values if v != centre.batch]
    layouts += [("inflight", replace(centre, inflight=v)) for v in plan.inflight_values if v != centre.inflight]
    layouts.append(("agents", replace(centre, agents=plan.many_agents)))
    return layouts


def run_curve(plan: Plan, root: Path, problems: list[str]) -> list[dict[str, Any]]:
    points = []
    for knob, layout in curve_layouts(plan):
        try:
            points.append(run_point(plan, root, knob, layout))
        except Exception as exc:  # noqa: BLE001 - report it and go on with the other points
            problems.append(describe(f"curve point {knob} {asdict(layout)}", exc))
            continue
        point = points[-1]
        print(f"  curve {knob:8} shards={layout.shards} batch={layout.batch:>6} inflight={layout.inflight} "
              f"agents={layout.agents:>7,}: {point['lifecycles_per_s']:>8,} lifecycles/s (median of "
              f"{point['lifecycles_per_s_all']})", flush=True)
    return points


def agent_memory(points: list[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """Host memory per agent: the hosts' RSS with many agents against the centre's, over the extra agents."""
    centre = next((p for p in points if p["knob"] == "centre"), None)
    many = next((p for p in points if p["knob"] == "agents"), None)
    if centre is None or many is None or None in (centre["hosts_rss_mb"], many["hosts_rss_mb"]):
        return None
    extra = many["agents"] - centre["agents"]
    return {
        "agents": [centre["agents"], many["agents"]],
        "hosts_rss_mb": [centre["hosts_rss_mb"], many["hosts_rss_mb"]],
        "coordinator_rss_mb": [centre["coordinator_rss_mb"], many["coordinator_rss_mb"]],
        "host_bytes_per_agent": round((many["hosts_rss_mb"] - centre["hosts_rss_mb"]) * 1e6 / extra),
        "coordinator_bytes_per_agent": round((many["coordinator_rss_mb"] - centre["coordinator_rss_mb"]) * 1e6 / extra),
        "lifecycles_per_s": [centre["lifecycles_per_s"], many["lifecycles_per_s"]],
    }


async def charge_open(booth: Any, first: int, stop: int, sources: list[str], chunk: int = 500) -> None:
    """Charge (lock, never settle) tolls ``first``..``stop - 1``, ``chunk`` at a time concurrently."""
    for start in range(first, stop, chunk):
        await asyncio.gather(*(
            booth.charge(f"open-{n}", sources[n % len(sources)], sources[(n + 1) % len(sources)])
            for n in range(start, min(start + chunk, stop))
        ))


def charge_sync_per_s(booth: Any, count: int, sources: list[str]) -> float:
    """Lock tolls 0..``count - 1`` through ``charge_sync``, one round trip each; the rate."""
    started = time.perf_counter()
    for n in range(count):
        booth.charge_sync(f"open-{n}", sources[n % len(sources)], sources[(n + 1) % len(sources)])
    return count / (time.perf_counter() - started)


def charge_concurrent_per_s(booth: Any, first: int, stop: int, sources: list[str]) -> Optional[float]:
    started = time.perf_counter()
    asyncio.run(charge_open(booth, first, stop, sources))
    return (stop - first) / (time.perf_counter() - started) if stop > first else None


def escrow_memory(plan: Plan, root: Path) -> dict[str, Any]:
    """Shard (and coordinator) memory per open escrow, locked through ``mesh.tollbooth(...)``.

    The first 200 through ``charge_sync`` (timed), the rest concurrently through ``charge``;
    memory before, at half way and at the end (the second half gives the marginal cost).
    """
    count, sources = plan.open_escrows, agent_ids(plan.layout.agents)
    sync_count, half = min(200, count), max(min(200, count), count // 2)
    mesh = open_mesh("escrows", root, plan.layout)
    try:
        try:
            booth = mesh.tollbooth(TollboothConfig(
                paper_mode=False, toll_per_message_usd="0.001", max_daily_toll_per_agent=None))
        except Exception as exc:  # noqa: BLE001 - the mesh's Tollbooth API may not be there yet
            return {"skipped": describe("mesh.tollbooth(...)", exc)}
        if not hasattr(booth, "charge_sync"):
            return {"skipped": f"{type(booth).__name__} has no charge_sync yet"}
        before = memory_mb(mesh)
        sync_per_s = charge_sync_per_s(booth, sync_count, sources)
        first_half_per_s = charge_concurrent_per_s(booth, sync_count, half, sources)
        mid = memory_mb(mesh)
        second_half_per_s = charge_concurrent_per_s(booth, half, count, sources)
        after = memory_mb(mesh)
        open_escrows = mesh.stats()["open_escrows"]
    finally:
        closed = close_mesh(mesh)
    rates = [r for r in (first_half_per_s, second_half_per_s) if r]
    return {
        "open_escrows": open_escrows, "requested": count, "charge_sync_calls": sync_count,
        "charge_sync_per_s": round(sync_per_s), "charge_concurrent_per_s": round(min(rates)) if rates else None,
        "shards_rss_mb": [before["shards_rss_mb"], mid["shards_rss_mb"], after["shards_rss_mb"]],
        "coordinator_rss_mb": [before["coordinator_rss_mb"], mid["coordinator_rss_mb"], after["coordinator_rss_mb"]],
        "shard_bytes_per_open_escrow": per_item_bytes(before["shards_rss_mb"], after["shards_rss_mb"], open_escrows),
        "shard_bytes_per_open_escrow_second_half": per_item_bytes(mid["shards_rss_mb"], after["shards_rss_mb"], count - half),
        "coordinator_bytes_per_open_escrow": per_item_bytes(
            before["coordinator_rss_mb"], after["coordinator_rss_mb"], open_escrows),
        "coordinator_bytes_per_open_escrow_second_half": per_item_bytes(
            mid["coordinator_rss_mb"], after["coordinator_rss_mb"], count - half),
        "events_written": closed["events_written"],
    }


def per_item_bytes(before_mb: Optional[float], after_mb: Optional[float], items: int) -> Optional[int]:
    if before_mb is None or after_mb is None or not items:
        return None
    return round((after_mb - before_mb) * 1e6 / items)


def describe(what: str, exc: BaseException) -> str:
    where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    place = f" at {Path(where.filename).name}:{where.lineno}" if where else ""
    lines = str(exc).strip().splitlines() or [""]
    text = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"  # Ray's errors carry whole tracebacks
    return f"{what}: {type(exc).__name__}: {text}{place}"


# -- report ------------------------------------------------------------------------------------


def print_table(report: dict[str, Any]) -> None:
    seed, main = report.get("seed"), report.get("mesh")
    seed_rate = seed["lifecycles_per_s"] if seed else None
    print(f"\n{'run':58} {'messages':>9} {'lifecycles/s':>13} {'x seed':>7}")
    if seed:
        print(f"{seed['name']:58} {seed['messages']:>9,} {seed_rate:>13,} {'1.0':>7}")
    if main:
        lay, tp = main["layout"], main["throughput"]
        name = f"mesh.send (shards={lay['shards']} batch={lay['batch']} inflight={lay['inflight']} agents={lay['agents']:,})"
        ratio = f"{tp['lifecycles_per_s'] / seed_rate:.2f}" if seed_rate else "-"
        print(f"{name:58} {tp['messages']:>9,} {tp['lifecycles_per_s']:>13,} {ratio:>7}")
        if tp.get("cpu_us_per_lifecycle"):
            split = ", ".join(f"{role} {us}" for role, us in tp["cpu_us_per_lifecycle"].items())
            print(f"  CPU per lifecycle in us, by process: {split}")
        lat = main["latency"]
        print(f"\nmesh.call round trip, fast lane ({lat['calls']:,} calls, {lat['fast_lane_calls']:,} took it): "
              f"p50 {lat['p50_ms']} ms  p90 {lat['p90_ms']} ms  p99 {lat['p99_ms']} ms  max {lat['max_ms']} ms")
        lat = main["latency_via_coordinator"]
        print(f"one-message mesh.send, through the coordinator ({lat['calls']:,} calls): "
              f"p50 {lat['p50_ms']} ms  p90 {lat['p90_ms']} ms  p99 {lat['p99_ms']} ms  max {lat['max_ms']} ms")
        together = main["concurrent_calls"]
        print(f"mesh.acall, {together['calls']:,} at once (coalesced): {together['calls_per_s']:,} calls/s")
    print_curve(report)
    print(f"\nmesh actor processes alive after the last shutdown: {report.get('leftover_actor_processes')}")
    for problem in report["problems"]:
        print(f"PROBLEM: {problem}")


def print_curve(report: dict[str, Any]) -> None:
    points = report.get("curve") or []
    if points:
        print(f"\n{'curve knob':10} {'shards':>6} {'batch':>6} {'inflight':>8} {'agents':>8} {'lifecycles/s':>13} "
              f"{'hosts MB':>9} {'shards MB':>9} {'coord MB':>9}")
    for p in points:
        print(f"{p['knob']:10} {p['shards']:>6} {p['batch']:>6} {p['inflight']:>8} {p['agents']:>8,} "
              f"{p['lifecycles_per_s']:>13,} {p['hosts_rss_mb']!s:>9} {p['shards_rss_mb']!s:>9} {p['coordinator_rss_mb']!s:>9}")
    agents = report.get("agent_memory")
    if agents:
        print(f"\nmemory per agent ({agents['agents'][0]:,} -> {agents['agents'][1]:,} agents): "
              f"hosts {agents['host_bytes_per_agent']:,} B, coordinator {agents['coordinator_bytes_per_agent']:,} B")
    escrows = report.get("escrow_memory")
    if escrows and "skipped" in escrows:
        print(f"memory per open escrow: skipped ({escrows['skipped']})")
    elif escrows:
        print(f"memory per open escrow ({escrows['open_escrows']:,} open): shards {escrows['shard_bytes_per_open_escrow']} B "
              f"(second half {escrows['shard_bytes_per_open_escrow_second_half']} B), coordinator "
              f"{escrows['coordinator_bytes_per_open_escrow']} B (second half {escrows['coordinator_bytes_per_open_escrow_second_half']} B)")
        print(f"mesh.tollbooth charge: charge_sync {escrows['charge_sync_per_s']:,}/s (one at a time), "
              f"charge {escrows['charge_concurrent_per_s']}/s (500 concurrent)")


def plot_curve(points: list[dict[str, Any]], path: Path) -> None:
    """Lifecycles/s against each knob, one panel a knob (the centre point in every panel)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centre = next((p for p in points if p["knob"] == "centre"), None)
    panels = [("shards", "shards"), ("batch", "max_batch_messages"), ("inflight", "max_inflight_batches"),
              ("agents", "light agents")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4), sharey=True)
    for ax, (knob, label) in zip(axes, panels):
        chosen = sorted([p for p in points if p["knob"] == knob] + ([centre] if centre else []), key=lambda p: p[knob])
        ax.plot([p[knob] for p in chosen], [p["lifecycles_per_s"] for p in chosen], marker="o")
        ax.set_xscale("log" if knob in ("batch", "agents") else "linear")
        ax.set_xticks([p[knob] for p in chosen], [f"{p[knob]:,}" for p in chosen])
        ax.minorticks_off()
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("lifecycles/s")
    axes[0].set_ylim(0, 1.15 * max(p["lifecycles_per_s"] for p in points))
    fig.suptitle("tollmesh mesh.send: lifecycles/s, one knob at a time")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save(report: dict[str, Any], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = out / f"mesh-{stamp}.json"
    if report.get("curve"):
        curve_path = out / f"mesh-{stamp}-curve.json"
        curve = {"benchmark": "mesh_curve", "when": report["when"], "points": report["curve"],
                 "agent_memory": report.get("agent_memory"), "escrow_memory": report.get("escrow_memory")}
        curve_path.write_bytes(orjson.dumps(curve, option=orjson.OPT_INDENT_2))
        plot_curve(report["curve"], out / f"mesh-{stamp}-curve.png")
        report["curve_files"] = [str(curve_path), str(out / f"mesh-{stamp}-curve.png")]
    path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    return path


# -- main ---------------------------------------------------------------------------------------


def run(plan: Plan, args: argparse.Namespace, root: Path, report: dict[str, Any]) -> None:
    problems = report["problems"]
    if not args.skip_seed and not seed_installed():
        problems.append("nano-empire-tollbooth is not installed: pip install -e '.[bench]' to compare")
    elif not args.skip_seed:
        print("seed's booth ...", flush=True)
        report["seed"] = run_seed(plan)
    print("main mesh: latency, then send ...", flush=True)
    try:
        report["mesh"] = run_main(plan, root)
    except Exception as exc:  # noqa: BLE001 - report exactly what failed, go on
        problems.append(describe("main mesh run", exc))
    if report.get("seed") and report.get("mesh"):
        report["mesh"]["x_seed"] = round(
            report["mesh"]["throughput"]["lifecycles_per_s"] / report["seed"]["lifecycles_per_s"], 2)
    check_main(report.get("mesh"), problems)
    if args.skip_curve:
        return
    print("curve ...", flush=True)
    report["curve"] = run_curve(plan, root, problems)
    report["agent_memory"] = agent_memory(report["curve"])
    print("open escrows ...", flush=True)
    try:
        report["escrow_memory"] = escrow_memory(plan, root)
    except Exception as exc:  # noqa: BLE001
        problems.append(describe("memory per open escrow", exc))


def check_main(main: Optional[dict[str, Any]], problems: list[str]) -> None:
    """Every call released, no escrow left open, every event in the JSONL and in the Parquet dataset."""
    if not main:
        return
    checks = [
        (main["throughput"]["not_released"] == 0, f"{main['throughput']['not_released']} messages not released"),
        (main["latency"]["failures"] == 0, f"{main['latency']['failures']} mesh.call round trips failed"),
        (main["concurrent_calls"]["failures"] == 0, f"{main['concurrent_calls']['failures']} concurrent acalls failed"),
        (main["open_escrows_after"] == 0, f"{main['open_escrows_after']} escrows still open after send"),
        (main["events_written"] == main["events_expected"],
         f"ledger events {main['events_written']} != expected {main['events_expected']}"),
        (main["parquet_rows"] == main["events_written"],
         f"Parquet rows {main['parquet_rows']} != JSONL events {main['events_written']}"),
        (not main["parquet_error"], f"Parquet sink error: {main['parquet_error']}"),
    ]
    problems.extend(f"main mesh: {what}" for ok, what in checks if not ok)


def check_leftovers(report: dict[str, Any]) -> None:
    """A problem if mesh actor processes outlive the last ``mesh.shutdown()`` by 10 s (a leak)."""
    left = report["leftover_actor_processes"] = leftover_processes(timeout_s=10.0)
    if left:
        report["problems"].append(f"{left} mesh actor processes still alive 10 s after the last mesh.shutdown()")


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    plan = make_plan(args)
    started = time.perf_counter()
    started_ray = start_ray()
    report: dict[str, Any] = {
        "benchmark": "mesh_lifecycle",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "ray": ray.__version__, "ray_address": os.environ.get("RAY_ADDRESS")},
        "quick": args.quick, "plan": asdict(plan), "problems": [],
    }
    root = Path(tempfile.mkdtemp(prefix="tollmesh-bench-"))
    try:
        run(plan, args, root, report)
        check_leftovers(report)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if started_ray:
            ray.shutdown()
    report["total_s"] = round(time.perf_counter() - started, 1)
    print_table(report)
    path = save(report, args.out)
    print(f"\nsaved {path}" + "".join(f"\nsaved {p}" for p in report.get("curve_files", [])))
    print(f"total {report['total_s']} s")
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
