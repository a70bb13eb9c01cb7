"""The processes of one bench run by role, with the CPU and memory each has used (psutil).

The bench's driver is this process; the Ray it starts (``address="local"``, a Ray of its own) runs
as its descendants: ``gcs_server``, ``raylet`` and Ray's helper processes, and the worker
processes, which Ray titles by the actor they host (``ray::BudgetShard``, or
``ray::BudgetShard.lock_batch`` while a method runs). Only descendants are read, so another
Ray on the same machine is never counted.

>>> snap = snapshot()
>>> snap[os.getpid()].role
'driver'
>>> role_of_title("ray::EscrowCoordinator.submit"), role_of_title("ray::IDLE"), role_of_title("raylet")
('coordinator', 'ray', 'ray')
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple, Optional

import psutil

from benchmarks.figures import cpu_split

ACTOR_ROLES = {
    "BudgetShard": "shards",
    "EscrowCoordinator": "coordinator",
    "LedgerWriterActor": "writer",
    "ParquetSink": "parquet_sink",
    "AgentHost": "hosts",
}
ROLES = ("driver", "coordinator", "shards", "writer", "parquet_sink", "hosts", "ray")
# Roles a mesh has one process of, however many shards and hosts it gets (the driver feeds it alone);
# a role of these with more than one process (a writer per shard) is not one of a kind.
SINGLE_ROLES = ("driver", "coordinator", "writer", "parquet_sink")
SINGLE_RAY_PROCESSES = ("gcs_server",)  # one per cluster (a raylet is one per node)


class Process(NamedTuple):
    pid: int
    role: str
    name: str
    cpu_s: float
    rss_bytes: int


def role_of_title(title: str) -> str:
    """The role of a process from its title: a mesh actor's, or ``ray`` for Ray's own (and idle workers)."""
    if title.startswith("ray::"):
        return ACTOR_ROLES.get(title[5:].split(".")[0].split()[0] if title[5:].strip() else "", "ray")
    return "ray"


def _title(process: psutil.Process) -> str:
    cmdline = process.cmdline()
    if not cmdline:
        return process.name()
    if cmdline[0].startswith("ray::"):
        return " ".join(cmdline).strip()
    scripts = [Path(arg).stem for arg in cmdline[:3] if arg.endswith(".py")]  # python .../log_monitor.py
    return scripts[0] if scripts else Path(cmdline[0]).name


def _read(process: psutil.Process, role: Optional[str]) -> Optional[Process]:
    try:
        with process.oneshot():
            title = _title(process)
            times = process.cpu_times()
            rss = process.memory_info().rss
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    role = role or role_of_title(title)
    name = title[5:].split(".")[0].split()[0] if title.startswith("ray::") else title
    return Process(process.pid, role, name, times.user + times.system, rss)


def snapshot(*, descendants: bool = True) -> dict[int, Process]:
    """This process (``driver``) and every live descendant, by pid (only this one: ``descendants=False``,
    for what runs in process, beside which a Ray someone else started in this process may idle)."""
    me = psutil.Process()
    found = {me.pid: _read(me, "driver")}
    for child in me.children(recursive=True) if descendants else ():
        found[child.pid] = _read(child, None)
    return {pid: p for pid, p in found.items() if p is not None}


def cpu_between(before: dict[int, Process], after: dict[int, Process], lifecycles: int) -> dict:
    """What each process spent between two snapshots, per lifecycle: by role (with ``total``), the
    one-of-a-kind processes by name, and every process. A process born in between counts from zero;
    one gone by ``after`` is missing (its CPU unread), and so named."""
    spent = []
    for pid, late in after.items():
        early = before.get(pid)
        spent.append((late, late.cpu_s - (early.cpu_s if early and early.name == late.name else 0.0)))
    by_role = cpu_split(((p.role, s) for p, s in spent), lifecycles)
    counts = {role: sum(1 for p, _ in spent if p.role == role) for role in by_role if role != "total"}
    single = {}
    for process, seconds in spent:
        if (process.role in SINGLE_ROLES and counts[process.role] == 1) or process.name in SINGLE_RAY_PROCESSES:
            single[process.role if process.role != "ray" else process.name] = round(seconds / lifecycles * 1e6, 2)
    return {
        "by_role": by_role,
        "one_of_a_kind": single,
        "processes": [{"pid": p.pid, "role": p.role, "name": p.name, "cpu_us": round(s / lifecycles * 1e6, 2)}
                      for p, s in sorted(spent, key=lambda ps: -ps[1])],
        "gone": sorted(pid for pid in before if pid not in after),
    }


def rss_by_role(snap: dict[int, Process]) -> dict[str, int]:
    """Resident bytes of the processes of each role, together."""
    sizes: dict[str, int] = {}
    for process in snap.values():
        sizes[process.role] = sizes.get(process.role, 0) + process.rss_bytes
    return sizes
