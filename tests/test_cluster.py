"""A Ray cluster that loses a node mid-run: the mesh's actors on it restart on the other node and lose nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest


@pytest.mark.slow
def test_a_mesh_loses_a_node_mid_run_and_its_actors_come_back_on_the_other(tmp_path):
    """``cluster_run.py``: a two-node cluster (``ray.cluster_utils``), 4 shards spread over the
    nodes, 4 hosts; the worker node is removed while batches go on. Its actors restart on the
    head, rebuild from the ledger and serve again; every check of the randomized fault tests holds.
    Then a mesh restored from that ledger runs on the head and a new worker node. An audit hook in
    every worker process shows that no process off the head opened or listed a file of the run
    directory: shards and hosts elsewhere read it through the ledger writer."""
    script = Path(__file__).with_name("cluster_run.py")
    run = subprocess.run([sys.executable, str(script), str(tmp_path / "mesh"), str(tmp_path / "audit")],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3_000:]
    # its one JSON line: Ray's raylet may print its own warnings to the driver's stdout after it
    seen = orjson.loads(next(line for line in reversed(run.stdout.splitlines()) if line.startswith("{")))
    on_worker = [role for role, node in seen["before"].items() if node == seen["worker"]]
    on_worker += [f"host {i}" for i, node in enumerate(seen["hosts_before"]) if node == seen["worker"]]
    assert on_worker, "some of the mesh's actors ran on the node that was lost"
    assert set(seen["after"].values()) == set(seen["hosts_after"]) == {seen["head"]}, "they all came back on the head"
    assert seen["acknowledged"] > seen["acknowledged_before_the_loss"] > 0 and seen["ok"] > 0
    # the second mesh, restored from the first one's ledger: shards and hosts on a new worker node
    # rebuilt from the head's files (the checks in cluster_run.py hold over both meshes' events)
    assert seen["new_worker"] in seen["restored_shards"].values(), "a shard rebuilt on the new node"
    assert seen["new_worker"] in seen["restored_hosts"], "a host built its agents on the new node (the heavy one, at least)"
    assert seen["restored_ok"] > 0
    # no shared filesystem needed: only processes on the head (the writer's node) touched the run directory
    access = seen["run_dir_access"]
    assert access.get(seen["head"]), "the audit saw the writer's files (it works)"
    for node in (seen["worker"], seen["new_worker"]):
        assert not access.get(node), access.get(node, [])[:5]
