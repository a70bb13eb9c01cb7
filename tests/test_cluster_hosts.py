"""A real multi-node cluster: a head and two workers, each a host of its own, and one of them lost mid-run.

Each node is a network, PID and mount namespace set of its own (:mod:`netns_cluster`): its own IP
on a private /24 made by the test, its own /tmp, /dev/shm and $HOME, its own processes, started
with ``ray start``; a bridge joins them, and a client namespace plays the user's machine. From
there, as the README's "On a cluster" says: ``ray job submit`` (with ``RAY_AUTH_MODE=token``;
without it the submission is refused) of ``tollmesh simulate --out /srv/runs``. While it runs the
test reads where the mesh's actors are (Ray's state API, by node IP), scrapes the head's
Prometheus endpoint until the mesh's metrics are there, then kills the worker that holds the most
shards and hosts: every process of its namespace at once, its link gone with it. The job must
still succeed, its log end with the report (four checks true), the ledger on the head's disk
verify with no escrow left locked, its Parquet dataset hold every event, and the actors that
were on the lost host run again on the others.

It takes one to three minutes (Ray starts three nodes; the run waits ~10 s for the head to call
the lost node dead). Skipped, with the reason, where namespaces cannot be made (not root, no
``unshare``...). The figures of the run are printed as one JSON line (``pytest -s`` shows it).
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections import Counter
from pathlib import Path

import pytest

from netns_cluster import HEAD_DISK_MOUNT, NamespacedCluster, namespaces_missing

pytestmark = pytest.mark.slow
MISSING = namespaces_missing()

SUBMISSION_ID = "tollmesh-on-three-hosts"
RUN_NAME = "cluster"  # the run directory: /srv/runs/cluster-seed7 on the head
MESSAGES = 60_000
SYSTEM_CONFIG = {
    "metrics_report_interval_ms": 2_000,  # Ray's default is 10 s: the scrape would wait that long
    # a lost node is called dead after ~5-10 s of unanswered health checks (Ray's defaults take 30-60 s)
    "health_check_period_ms": 1_000, "health_check_timeout_ms": 2_000, "health_check_failure_threshold": 5,
}
JOB_TIMEOUT_S = 300.0
MESH_ACTORS = ("BudgetShard", "AgentHost", "EscrowCoordinator", "LedgerWriterActor")


def _simulate_command(url: str) -> list[str]:
    return ["ray", "job", "submit", "--address", url, "--submission-id", SUBMISSION_ID, "--no-wait", "--",
            "tollmesh", "simulate", "--config", "default", "--messages", str(MESSAGES), "--shards", "4",
            "--hosts", "4", "--name", RUN_NAME, "--out", f"{HEAD_DISK_MOUNT}/runs", "--no-plots"]


@pytest.mark.skipif(MISSING is not None, reason=f"no namespaced hosts here: {MISSING}")
def test_a_job_on_three_hosts_loses_a_worker_mid_run_and_finishes_whole(tmp_path):
    cluster = NamespacedCluster(tmp_path / "cluster", secrets.token_hex(32), system_config=SYSTEM_CONFIG)
    with cluster:
        try:
            figures = _run(cluster)
        except BaseException:
            cluster.copy_logs(tmp_path / "ray-logs")
            raise
    print("cluster run:", json.dumps(figures, sort_keys=True))
    (tmp_path / "figures.json").write_text(json.dumps(figures, indent=2, sort_keys=True))


def _run(cluster: NamespacedCluster) -> dict:
    nodes = cluster.wait_for_nodes(3)
    ip_of = {n["node_id"]: n["node_ip"] for n in nodes}
    head, workers = cluster.head.ip, {n.ip for n in cluster.nodes.values() if n.name != "head"}
    assert sorted(ip_of.values()) == sorted([head, *workers]), "three hosts, each with its own IP"

    _token_step_is_needed(cluster)
    _a_temporary_working_dir_is_refused(cluster, cluster.root / "job-dir")

    submitted = cluster.client_run(*_simulate_command(cluster.dashboard_url))
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    scraped = _scrape_mesh_metrics(cluster)
    placed = _mesh_actors(cluster, ip_of)
    on_workers = {cls: [ip for ip in ips if ip in workers] for cls, ips in placed.items()}
    assert on_workers["BudgetShard"] and on_workers["AgentHost"], f"shards and hosts on the workers: {placed}"
    assert set(placed["LedgerWriterActor"]) == {head} and placed["EscrowCoordinator"] == [head], placed  # a writer per partition

    victim = max((n for n in cluster.nodes.values() if n.name != "head"),
                 key=lambda n: (on_workers["BudgetShard"].count(n.ip), on_workers["AgentHost"].count(n.ip)))
    run_dir = cluster.head_disk / "runs" / f"{RUN_NAME}-seed7"
    ledger_bytes_at_kill = _ledger_bytes(run_dir)
    assert _job_status(cluster) == "RUNNING", "the node is lost mid-run"
    victim.kill()

    status = _wait_for_job(cluster)
    logs = _job_logs(cluster)
    assert status == "SUCCEEDED", logs[-4_000:]
    report = json.loads((run_dir / "report.json").read_text())
    _the_log_ends_with_the_report(logs, report)
    ledger = _the_ledger_verifies(run_dir)
    assert _ledger_bytes(run_dir) > ledger_bytes_at_kill > 0, "calls were made after the loss, and before it"
    after = _mesh_actors(cluster, ip_of, alive_only=False)  # each actor's last node (the mesh has shut down)
    assert victim.ip not in {ip for ips in after.values() for ip in ips}, after
    restarted = _restarted(cluster, ip_of)
    assert any(cls == "BudgetShard" for cls, _ in restarted), f"a shard of the lost host came back: {restarted}"
    assert all(ip != victim.ip for _, ip in restarted), restarted
    dead = {n["node_ip"] for n in cluster.list_state("nodes") if n.get("state") == "DEAD"}
    assert dead == {victim.ip}, dead
    return _figures(report, ledger, placed, after, restarted, victim.ip, head, scraped, logs)


def _token_step_is_needed(cluster: NamespacedCluster) -> None:
    """The README's step: without RAY_AUTH_MODE=token, ray job submit does not send the token and is refused."""
    env = cluster.client_env()
    env.pop("RAY_AUTH_MODE")
    refused = cluster.client_run("ray", "job", "submit", "--address", cluster.dashboard_url, "--", "true", env=env)
    assert refused.returncode != 0
    assert "RAY_AUTH_MODE" in refused.stderr + refused.stdout, refused.stderr[-2_000:]


def _a_temporary_working_dir_is_refused(cluster: NamespacedCluster, folder: Path) -> None:
    """With --working-dir, a relative --out would land in Ray's temporary copy: tollmesh refuses it at once."""
    folder.mkdir()
    (folder / "notes.txt").write_text("a working directory a user submits with\n")
    job = cluster.client_run("ray", "job", "submit", "--address", cluster.dashboard_url, "--working-dir", str(folder),
                             "--", "tollmesh", "simulate", "--messages", "100", "--no-plots")
    assert job.returncode != 0
    assert "inside the copy of --working-dir that Ray made" in job.stdout + job.stderr, job.stdout[-2_000:]


def _scrape_mesh_metrics(cluster: NamespacedCluster) -> dict:
    """The head's Prometheus endpoint, until the mesh's releases are counted there (the run going on)."""
    from mesh.cluster.grafana import dashboard, metric_names

    wanted = metric_names(dashboard()) - {"ray_tollmesh_rejections_total"}  # counted once a call is refused
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:
        status, text = cluster.http_get(cluster.metrics_url(cluster.head))
        lines = [line for line in text.splitlines() if 'mesh="sim-' in line and not line.startswith("#")]
        names = {line.split("{", 1)[0] for line in lines}
        if status == 200 and wanted <= names:
            released = [float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("ray_tollmesh_releases_total{")]
            return {"names": sorted(names), "released_when_scraped": sum(released)}
        job = _job_status(cluster)
        assert job in ("PENDING", "RUNNING"), f"the job ended ({job}) before its metrics were seen: {sorted(names)}"
        assert time.monotonic() < deadline, f"missing on the head's endpoint: {sorted(wanted - names)}"
        time.sleep(1)


def _mesh_actors(cluster: NamespacedCluster, ip_of: dict, *, alive_only: bool = True) -> dict[str, list[str]]:
    """The node IP of each of the mesh's actors, by class (only those alive now, unless ``alive_only`` is False)."""
    placed: dict[str, list[str]] = {cls: [] for cls in MESH_ACTORS}
    for actor in cluster.list_state("actors"):
        if actor["class_name"] in placed and (actor["state"] == "ALIVE" or not alive_only):
            placed[actor["class_name"]].append(ip_of.get(actor["node_id"], actor["node_id"]))
    return {cls: sorted(ips) for cls, ips in placed.items()}


def _restarted(cluster: NamespacedCluster, ip_of: dict) -> list[tuple[str, str]]:
    """(class, node IP it runs on now) of each mesh actor Ray restarted."""
    return sorted((a["class_name"], ip_of.get(a["node_id"], a["node_id"])) for a in cluster.list_state("actors")
                  if a["class_name"] in MESH_ACTORS and int(a.get("num_restarts") or 0) > 0)


def _job_status(cluster: NamespacedCluster) -> str:
    status, text = cluster.http_get(f"{cluster.dashboard_url}/api/jobs/{SUBMISSION_ID}")
    return json.loads(text)["status"] if status == 200 else f"HTTP {status}"


def _wait_for_job(cluster: NamespacedCluster) -> str:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while (status := _job_status(cluster)) in ("PENDING", "RUNNING"):
        assert time.monotonic() < deadline, "the job did not end"
        time.sleep(1)
    return status


def _job_logs(cluster: NamespacedCluster) -> str:
    status, text = cluster.http_get(f"{cluster.dashboard_url}/api/jobs/{SUBMISSION_ID}/logs")
    assert status == 200, text
    return json.loads(text)["logs"]


def _ledger_bytes(run_dir: Path) -> int:
    return sum(p.stat().st_size for p in run_dir.rglob("toll_ledger*.jsonl"))  # every partition's


def _the_log_ends_with_the_report(logs: str, report: dict) -> None:
    lines = [line for line in logs.splitlines() if line.strip()]
    start = max(i for i, line in enumerate(lines) if line.startswith("run:"))
    tail = lines[start:]
    labels = ["run", "speed", "calls", "by status", "by reason", "money", "cap hits", "top earners", "top payers",
              "memory", "checks", "output"]
    assert [line.split(":", 1)[0] for line in tail] == labels, tail  # the report, and nothing after it
    said = f"tollmesh: ray job {SUBMISSION_ID}: the run directory is {HEAD_DISK_MOUNT}/runs/{RUN_NAME}-seed7 on head "
    assert said in logs, logs[:2_000]  # named whole, on which host, at the start
    assert f"{MESSAGES:,} of {MESSAGES:,} messages" in tail[0], tail[0]
    checks = tail[-2]
    assert checks.count(" yes") == 4 and "NO" not in checks, checks
    assert tail[-1] == f"output:       {HEAD_DISK_MOUNT}/runs/{RUN_NAME}-seed7/report.json", tail[-1]
    assert all(report["checks"][k] for k in ("ledger_verifies", "replay_matches_live", "conservation_holds",
                                             "ledger_matches_counters")), report["checks"]
    assert report["run"]["messages_sent"] == MESSAGES and not report["run"]["interrupted"]


def _the_ledger_verifies(run_dir: Path) -> dict:
    """verify over the JSONL on the head's disk (no escrow left locked), and the Parquet dataset holds every event."""
    import pyarrow.dataset as ds

    from ledger.verify import verify

    result = verify(run_dir)
    assert result.ok, [str(p) for p in result.problems[:5]]
    assert result.open_escrows == 0
    rows = ds.dataset(run_dir / "parquet", format="parquet", partitioning="hive").count_rows()
    assert rows == result.events, (rows, result.events)
    return {"events": result.events, "parquet_rows": rows, "open_escrows": result.open_escrows,
            "files": len(result.files)}


def _figures(report: dict, ledger: dict, placed: dict, after: dict, restarted: list, victim: str, head: str,
             scraped: dict, logs: str) -> dict:
    outcomes = report["outcomes"]
    return {
        "hosts": {"head": head, "lost": victim},
        "placed_before_the_loss": {cls: dict(Counter(ips)) for cls, ips in placed.items()},
        "last_node_at_the_end": {cls: dict(Counter(ips)) for cls, ips in after.items()},
        "restarted_on": [f"{cls} -> {ip}" for cls, ip in restarted],
        "calls": outcomes["calls"], "driver_calls": outcomes["driver_calls"], "by_status": outcomes["by_status"], "by_reason": outcomes["by_reason"],
        "ticks_sent_again": len(re.findall(r"sending the tick again", logs)),
        "slowest_tick": max(report["ticks"], key=lambda t: t["wall_s"]),
        "median_tick_s": sorted(t["wall_s"] for t in report["ticks"])[len(report["ticks"]) // 2],
        "driver_said": [line for line in logs.splitlines() if line.startswith("tollmesh: ")],
        "speed": report["speed"], "ledger": ledger, "checks": report["checks"],
        "metrics_seen": scraped,
    }
