"""The mesh, measured: ``Mesh.call`` one at a time, ``Mesh.send`` in batches, ``Mesh.acall`` s at once.

Every mesh runs on a local Ray of its own (``ray.init(address="local", ...)``, as ``Mesh`` starts
one), started by :func:`mesh_session` and shut down with the mesh, so one point's actors never
share the machine with the next's; with ``--address`` every mesh joins that cluster instead (and
leaves it after). Its ledger (JSONL and Parquet, fsync per batch) goes to a
directory of its own, deleted afterwards; what the writer wrote is checked against the runs.

- :func:`run_calls`: ``Mesh.call`` one at a time (the fast lane open), a latency per call;
- :func:`run_send`: ``Mesh.send_columns`` (or ``Mesh.send``) of one batch at a time from ``inflight`` threads,
  a latency per batch;
- :func:`run_concurrent`: ``Mesh.acall`` with ``concurrency`` calls in flight, a latency per call.

Each is warmed up untimed first and timed between two process snapshots (:mod:`benchmarks.record`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Iterator, Optional

import ray

from benchmarks import agents
from benchmarks.agents import Batch, Echo
from benchmarks.plan import Layout
from benchmarks.processes import rss_by_role, snapshot
from benchmarks.record import run_record, timed
from mesh.calls.agent import CallResult, Message
from mesh.mesh import Mesh
from mesh.calls.mesh_config import MeshConfig

NAMESPACE = "tollmesh-bench"

logging.getLogger("ray.dag").setLevel(logging.WARNING)  # the fast lane's teardown, line by line
ray.cloudpickle.register_pickle_by_value(agents)  # workers need not import benchmarks/ to build Echo


class MeshSession:
    """A running mesh of the bench: the mesh, its agents' ids, and its hot sources by tag."""

    def __init__(self, mesh: Mesh, ids: list[str], layout: Layout) -> None:
        self.mesh, self.ids, self.layout = mesh, ids, layout
        self.closed: dict[str, Any] = {}
        self.setup_s = 0.0
        self.rss_after_setup: dict[str, int] = {}  # resident bytes by role once the agents are in


@contextmanager
def mesh_session(root: Path, layout: Layout, *, cores: int, hot_tags: tuple[str, ...] = (),
                 max_batch: Optional[int] = None, address: Optional[str] = None) -> Iterator[MeshSession]:
    """A local Ray of its own (or the cluster at ``address``) and a mesh laid out as ``layout`` (its
    ``hot_tags`` sources capped, batches up to ``max_batch``, default ``layout.batch``), both shut down
    (or left) after; ``session.closed`` then holds what the ledger writer wrote."""
    if ray.is_initialized():
        raise RuntimeError("the bench starts a local Ray of its own for every mesh: shut down the Ray running here first")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started = time.perf_counter()
    if address:
        from mesh.ray_session import connect

        connect(address, NAMESPACE)  # checked first: an address where nothing answers is said at once
    else:
        ray.init(address="local", num_cpus=cores, include_dashboard=False, namespace=NAMESPACE, log_to_driver=False,
                 logging_level=logging.WARNING)
    try:
        name = f"bench-{uuid.uuid4().hex[:8]}"
        caps = {source: agents.HOT_CAP_USD for tag in hot_tags for source in agents.hot_ids(tag, agents.HOT_SOURCES)}
        config = MeshConfig(
            name=name, namespace=NAMESPACE, out_dir=root / name, shards=layout.shards,
            max_batch_messages=max_batch or layout.batch, max_inflight_batches=layout.inflight, agent_daily_caps_usd=caps,
            partitioned_ledger=layout.partitioned_ledger,
        )
        mesh = Mesh(config)
        # the records name the ledger's kind the mesh chose
        session = MeshSession(mesh, agents.agent_ids(layout.agents), replace(layout, partitioned_ledger=config.partitioned_ledger))
        try:
            mesh.add_agents(Echo, session.ids)
            session.setup_s = round(time.perf_counter() - started, 2)
            session.rss_after_setup = rss_by_role(snapshot())
            yield session
        finally:
            session.closed = close_mesh(mesh)
    finally:
        ray.shutdown()



def close_mesh(mesh: Mesh) -> dict[str, Any]:
    """Shut the mesh down (flush and close its ledger); what it wrote; its directory deleted."""
    out_dir = mesh.config.out_dir
    summary = mesh.shutdown()
    closed = {"events_written": summary.get("events"), "parquet_rows": _parquet_rows(summary.get("parquet_files") or []),
              "parquet_error": summary.get("parquet_error")}
    shutil.rmtree(out_dir, ignore_errors=True)
    return closed


def _parquet_rows(files: list[str]) -> Optional[int]:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(f).metadata.num_rows for f in files) if files else None


def outcome_key(result: CallResult) -> str:
    """``released``, or the status and reason (``refunded:handler_error``)."""
    status = result.status.value
    return status if status == "released" else f"{status}:{result.reason}"


# -- Mesh.call ------------------------------------------------------------------------------


def run_calls(session: MeshSession, calls: int, *, warmup: int, seed: int) -> dict[str, Any]:
    """``calls`` single ``Mesh.call`` s one at a time (after ``warmup`` untimed), the fast lane open."""
    mesh = session.mesh
    mesh.open_fast_lane()
    batch = agents.make_messages(session.ids, warmup + calls, seed=seed)
    for source, target, payload, *_ in batch.messages[:warmup]:
        mesh.call(source, target, payload)
    latencies_ns, outcomes, clock = [], Counter(), time.perf_counter_ns
    fast_before = mesh.stats()["fast_lane_calls"]
    with timed() as measured:
        for source, target, payload, *_ in batch.messages[warmup:]:
            started = clock()
            result = mesh.call(source, target, payload)
            latencies_ns.append(clock() - started)
            outcomes[outcome_key(result)] += 1
    fast_calls = mesh.stats()["fast_lane_calls"] - fast_before
    return run_record("Mesh.call, one at a time", "mesh_call", calls, measured, latencies_ns, latency_of="call",
                      outcomes=dict(outcomes), layout=asdict(session.layout), fast_lane_calls=fast_calls,
                      rss_bytes=rss_by_role(measured.after))


# -- Mesh.send ------------------------------------------------------------------------------


def run_send(session: MeshSession, batch: Batch, *, name: str, batch_messages: Optional[int] = None,
             warmup: Optional[Batch] = None, columns: bool = True, **extra: Any) -> dict[str, Any]:
    """``batch`` through ``Mesh.send_columns`` (``columns``, the bulk path) or ``Mesh.send`` (a record
    per call back), ``batch_messages`` a call, ``layout.inflight`` calls at once (one thread each); a
    latency per batch. ``warmup`` is sent first, untimed."""
    size = batch_messages or session.layout.batch
    if warmup is not None:
        _send_all(session, warmup.messages, size, columns)
    with timed() as measured:
        latencies_ns, outcomes = _send_all(session, batch.messages, size, columns)
    layout = {**asdict(session.layout), "batch": size}
    return run_record(name, "mesh_send_columns" if columns else "mesh_send", len(batch.messages), measured, latencies_ns,
                      latency_of="batch",
                      outcomes=dict(outcomes), layout=layout, expected=dict(batch.expected),
                      rss_bytes=rss_by_role(measured.after), rss_after_setup_bytes=session.rss_after_setup, **extra)


def _send_all(session: MeshSession, messages: list[Message], size: int, columns: bool) -> tuple[list[int], Counter]:
    chunks = [messages[i:i + size] for i in range(0, len(messages), size)]
    if columns:  # the caller's columns, made before the clock starts
        chunks = [([m.source for m in c], [m.target for m in c], [m.payload for m in c]) for c in chunks]

    def one(chunk: Any) -> tuple[int, Counter]:
        started = time.perf_counter_ns()
        if columns:
            counts = session.mesh.send_columns(*chunk).counts()
        else:
            counts = Counter(outcome_key(r) for r in session.mesh.send(chunk, max_batch_messages=size))
        return time.perf_counter_ns() - started, counts

    outcomes: Counter = Counter()
    latencies_ns = []
    with ThreadPoolExecutor(max_workers=session.layout.inflight, thread_name_prefix="bench-send") as pool:
        for latency_ns, counts in pool.map(one, chunks):
            latencies_ns.append(latency_ns)
            outcomes.update(counts)
    return latencies_ns, outcomes


# -- Mesh.acall -----------------------------------------------------------------------------


def run_concurrent(session: MeshSession, calls: int, concurrency: int, *, warmup: int, seed: int) -> dict[str, Any]:
    """``calls`` ``Mesh.acall`` s, ``concurrency`` in flight at a time (coalesced into batches on their
    way), after ``warmup`` untimed; a latency per call."""
    latencies_ns: list[int] = []
    outcomes: Counter = Counter()

    async def all_calls(batch: Batch) -> None:
        gate = asyncio.Semaphore(concurrency)

        async def one(message: Message) -> None:
            async with gate:
                started = time.perf_counter_ns()
                result = await session.mesh.acall(message.source, message.target, message.payload)
                latencies_ns.append(time.perf_counter_ns() - started)
                outcomes[outcome_key(result)] += 1

        await asyncio.gather(*(one(m) for m in batch.messages))

    asyncio.run(all_calls(agents.make_messages(session.ids, warmup, seed=seed + 1)))
    latencies_ns.clear()
    outcomes.clear()
    batch = agents.make_messages(session.ids, calls, seed=seed)
    with timed() as measured:
        asyncio.run(all_calls(batch))
    return run_record(f"Mesh.acall, {concurrency} in flight", "mesh_acall", calls, measured, latencies_ns,
                      latency_of="call", outcomes=dict(outcomes), layout=asdict(session.layout),
                      concurrency=concurrency, rss_bytes=rss_by_role(measured.after))


