"""Which Ray worker processes touch a mesh's run directory, and on which node (for ``cluster_run.py``).

:func:`record_run_dir_access` is a ``worker_process_setup_hook``: every worker process of the job
logs, through a Python audit hook, each file it opens, renames, removes or lists under
``TOLLMESH_AUDIT_RUN_DIR``, as ``<node id> <event> <path>`` lines in ``TOLLMESH_AUDIT_LOG_DIR/<pid>.log``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

EVENTS = frozenset({"open", "os.rename", "os.replace", "os.remove", "os.unlink", "os.listdir", "os.scandir", "os.mkdir"})


def record_run_dir_access() -> None:
    run_dir, log_dir = os.environ.get("TOLLMESH_AUDIT_RUN_DIR"), os.environ.get("TOLLMESH_AUDIT_LOG_DIR")
    if not run_dir or not log_dir:
        return
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    log = open(Path(log_dir) / f"{os.getpid()}.log", "a", buffering=1)  # noqa: SIM115 - open for the process's life

    def hook(event: str, args: tuple) -> None:
        if event not in EVENTS or not args or not isinstance(args[0], (str, bytes, os.PathLike)):
            return
        path = os.fsdecode(args[0])
        if path.startswith(run_dir):
            log.write(f"{node_id} {event} {path}\n")

    sys.addaudithook(hook)


def access_by_node(log_dir: Path) -> dict[str, list[str]]:
    """What the logs say: ``{node id: ["<event> <path>", ...]}``."""
    seen: dict[str, list[str]] = {}
    for log in log_dir.glob("*.log"):
        for line in log.read_text().splitlines():
            node_id, _, rest = line.partition(" ")
            seen.setdefault(node_id, []).append(rest)
    return seen
