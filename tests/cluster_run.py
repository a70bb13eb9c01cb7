"""A mesh on a two-node Ray cluster (``ray.cluster_utils.Cluster``) that loses its worker node mid-run,
then a second mesh restored from its ledger on a new worker node.

Run by ``test_cluster.py`` in a process of its own (a cluster is a Ray of its own, and the test
session already has one). Prints one JSON line: where the actors were, what the run saw, and which
nodes touched the run directory (:mod:`run_dir_audit`); the checks after each mesh raise on
failure, so a failed check is a non-zero exit.

    python tests/cluster_run.py OUT_DIR AUDIT_DIR
"""

from __future__ import annotations

import os
import sys
import threading
from collections import Counter
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).parent))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).parent), os.environ.get("PYTHONPATH")) if p)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # noqa: E402

from mesh import Mesh, MeshConfig  # noqa: E402
from test_mesh_faults import AGENTS, CAP_MICROS, check_after_faults, run_batches  # noqa: E402
from test_mesh import Echo  # noqa: E402
from run_dir_audit import access_by_node  # noqa: E402


def node_of(handle) -> str:
    return ray.get(handle.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()))


def mesh_config(out_dir: Path, **options) -> MeshConfig:
    return MeshConfig(
        name="cluster", namespace="tollmesh-cluster", out_dir=out_dir, shards=4, hosts_per_group=4,
        track_balances=True, max_daily_toll_per_agent=CAP_MICROS / 1e6, escrow_timeout_s=2.0,
        sweep_interval_s=0.2, max_batch_messages=50, metrics_enabled=False, **options,
    )


def main(out_dir: Path, audit_dir: Path) -> None:
    out_dir, audit_dir = out_dir.absolute(), audit_dir.absolute()
    audit_dir.mkdir(parents=True, exist_ok=True)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=1)
    audit = {"worker_process_setup_hook": "run_dir_audit.record_run_dir_access",
             "env_vars": {"TOLLMESH_AUDIT_RUN_DIR": str(out_dir), "TOLLMESH_AUDIT_LOG_DIR": str(audit_dir)}}
    ray.init(address=cluster.address, namespace="tollmesh-cluster", log_to_driver=False, runtime_env=audit)
    try:
        mesh = Mesh(mesh_config(out_dir))
        mesh.add_agents(Echo, AGENTS)
        mesh.deposit_many({agent: "0.05" for agent in AGENTS})
        roles = [f"shard.{i}" for i in range(4)] + [mesh.config.writer_role(k) for k in range(mesh.config.writers)] + ["coordinator"]
        before = {role: node_of(mesh.actor(role)) for role in roles}
        hosts = [ray.get_actor(name, namespace="tollmesh-cluster") for name in ray.get(mesh.actor("coordinator").host_names.remote())]
        hosts_before = [node_of(host) for host in hosts]
        acknowledged: list = []
        done = threading.Event()
        sender = threading.Thread(target=run_batches, args=(mesh, acknowledged, done), kwargs={"seed": 6, "batches": 16})
        sender.start()
        while len(acknowledged) < 600 and not done.is_set():
            time.sleep(0.05)
        lost_at = len(acknowledged)
        cluster.remove_node(worker)  # the worker node dies, with every actor on it
        sender.join(timeout=300)
        assert not sender.is_alive(), "the sender is stuck"
        mesh.deposit("late-payer", "1")
        after = [mesh.call("late-payer", agent, n) for n, agent in enumerate(AGENTS)]  # every agent answers again
        assert all(r.ok for r in after), [r.error for r in after if not r.ok][:3]
        moved = {role: node_of(mesh.actor(role)) for role in roles}
        hosts_after = [node_of(host) for host in hosts]
        check_after_faults(mesh, acknowledged + after)  # replay = live, conservation, caps, verify, Parquet = JSONL
        restored = restore_on_a_new_node(cluster, out_dir)
        print(orjson.dumps({
            "head": cluster.head_node.node_id, "worker": worker.node_id, "before": before, "after": moved,
            "hosts_before": hosts_before, "hosts_after": hosts_after, "acknowledged": len(acknowledged),
            "acknowledged_before_the_loss": lost_at, "ok": sum(r.ok for r in acknowledged), **restored,
            "run_dir_access": access_by_node(audit_dir),
        }).decode())
    finally:
        ray.shutdown()
        cluster.shutdown()


def restore_on_a_new_node(cluster: Cluster, out_dir: Path) -> dict:
    """A second mesh over the first one's ledger, on the head and a new worker node: the shards that
    land on the new node rebuild their books (and caps) from the ledger on the head's disk, the hosts
    there build their agents from the head's files (a heavy agent is placed there on purpose, so one
    surely does); the same checks hold over both meshes' events."""
    new_worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    mesh = Mesh(mesh_config(out_dir, restore_from_ledger=True))
    mesh.add_agents(Echo, AGENTS)
    on_new_node = NodeAffinitySchedulingStrategy(new_worker.node_id, soft=False)
    mesh.add_agent("heavy-on-new-node", Echo, actor_options={"scheduling_strategy": on_new_node})
    shards = {f"shard.{i}": node_of(mesh.actor(f"shard.{i}")) for i in range(4)}
    hosts = [node_of(ray.get_actor(name, namespace="tollmesh-cluster"))
             for name in ray.get(mesh.actor("coordinator").host_names.remote())]
    acknowledged: list = []
    run_batches(mesh, acknowledged, threading.Event(), seed=7, batches=4)  # many of these callers are at their cap
    mesh.deposit("restored-payer", "1")
    fresh = [mesh.call("restored-payer", agent, n) for n, agent in enumerate([*AGENTS, "heavy-on-new-node"])]
    assert all(r.ok for r in fresh), [r.error for r in fresh if not r.ok][:3]
    check_after_faults(mesh, acknowledged + fresh, ledger_started_empty=False)
    return {"new_worker": new_worker.node_id, "restored_shards": shards, "restored_hosts": hosts,
            "restored_ok": sum(r.ok for r in acknowledged + fresh),
            "restored_statuses": dict(Counter(r.status.value for r in acknowledged))}


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
