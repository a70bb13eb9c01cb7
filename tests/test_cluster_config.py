"""``tollmesh cluster init`` and ``cluster grafana``: every template passes Ray's own checks, so a
typo or a missing field fails here, not on a user's cluster.

Ray's checks are those ``ray up`` runs before it touches a machine: ``prepare_config`` (fills in the
provider's defaults, makes the node types of an on-premise cluster and refuses one without
``head_ip`` or ``worker_ips``), ``validate_config`` (the cluster-config JSON schema, in which an
unknown field is an error) and, for the on-premise provider, ``_bootstrap_config`` whole (it also
loads the provider and runs its bootstrap). A cloud provider's bootstrap talks to the cloud (boto3,
the Google API client, credentials), so AWS and GCP stop after the schema.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import ValidationError
from ray.autoscaler._private.commands import _bootstrap_config
from ray.autoscaler._private.util import prepare_config, validate_config

from mesh.cli import main
from mesh.cluster import CloudNodes, Install, LocalNodes, cloud_cluster, dashboard_json, local_cluster, notes, render
from mesh.cluster.grafana import metric_names
from mesh.core.errors import InvalidArgumentError

NODES = LocalNodes(head_ip="192.168.10.1", worker_ips=("192.168.10.2", "nodes-3.lan"), ssh_user="ops",
                   ssh_private_key="~/.ssh/id_ed25519")
SOURCE = Install(source=Path(__file__).resolve().parents[1])
RELEASE = Install(spec="tollmesh==0.1.0", metrics_port=9100)


def templates() -> dict[str, dict]:
    return {
        "local, this source tree": local_cluster(NODES, SOURCE),
        "local, a release": local_cluster(NODES, RELEASE, name="lab"),
        "aws": cloud_cluster(CloudNodes("aws", "eu-west-1", "eu-west-1a", "c6i.2xlarge", 1, 3), SOURCE),
        "gcp": cloud_cluster(CloudNodes("gcp", "europe-west4", "europe-west4-a", "n2-standard-8", 2, 2, cpus=8,
                                        project_id="tollmesh-lab-1"), RELEASE),
    }


def ray_checks(config: dict) -> dict:
    """What ``ray up`` checks before it starts a node; the configuration as Ray resolved it."""
    config = copy.deepcopy(config)
    if config["provider"]["type"] == "local":
        return _bootstrap_config(config, no_config_cache=True)
    prepared = prepare_config(config)
    validate_config(prepared)
    return prepared


@pytest.mark.parametrize("name", list(templates()))
def test_every_template_passes_rays_own_checks(name):
    config = templates()[name]
    resolved = ray_checks(yaml.safe_load(render(config, comment=notes(config, "cluster.yaml"))))  # as written
    assert resolved["cluster_name"] == config["cluster_name"]
    assert any("RAY_AUTH_MODE=token" in c and "--head" in c for c in resolved["head_start_ray_commands"])
    assert any("RAY_AUTH_MODE=token" in c and "$RAY_HEAD_IP" in c for c in resolved["worker_start_ray_commands"])
    assert resolved["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    installs = [c for c in resolved["setup_commands"] if "pip install -q" in c and "--upgrade pip" not in c]
    assert installs and ("~/tollmesh-src" in installs[0] or "tollmesh==0.1.0" in installs[0])


def test_the_on_premise_cluster_resolves_to_its_machines():
    resolved = ray_checks(local_cluster(NODES, SOURCE))
    [node_type] = resolved["available_node_types"].values()
    assert node_type["min_workers"] == node_type["max_workers"] == resolved["max_workers"] == 2
    assert resolved["provider"]["worker_ips"] == ["192.168.10.2", "nodes-3.lan"]
    assert resolved["auth"] == {"ssh_user": "ops", "ssh_private_key": "~/.ssh/id_ed25519"}
    assert resolved["file_mounts"]["~/tollmesh-src"] == str(SOURCE.source)
    assert "**/.venv" in resolved["rsync_exclude"]  # a checkout's virtualenv is not copied to every node


@given(st.sampled_from(list(templates())), st.data())
def test_a_typo_in_any_field_fails_rays_checks(name, data):
    config = templates()[name]
    field = data.draw(st.sampled_from(sorted(k for k in config if k != "provider")))
    broken = dict(config)
    broken[field[:-1] + ("x" if field[-1] != "x" else "y")] = broken.pop(field)
    with pytest.raises((ValidationError, ValueError, KeyError)):
        ray_checks(broken)


def test_an_on_premise_cluster_without_its_head_fails_rays_checks():
    config = local_cluster(NODES, SOURCE)
    del config["provider"]["head_ip"]
    with pytest.raises(Exception, match="head_ip"):  # Ray aborts with a click exception naming it
        ray_checks(config)


@pytest.mark.parametrize("bad, problem", [
    (dict(head_ip="10.0.0.1", worker_ips=(), ssh_user="ops"), "at least one worker"),
    (dict(head_ip="10.0.0.1", worker_ips=("10.0.0.2", "10.0.0.2"), ssh_user="ops"), "repeat"),
    (dict(head_ip="10.0.0.1", worker_ips=("10.0.0.1",), ssh_user="ops"), "must not hold the head"),
    (dict(head_ip="10.0.0.300", worker_ips=("10.0.0.2",), ssh_user="ops"), "neither an IP address nor a host name"),
    (dict(head_ip="10.0.0.1", worker_ips=("bad host",), ssh_user="ops"), "neither an IP address nor a host name"),
    (dict(head_ip="10.0.0.1", worker_ips=("10.0.0.2",), ssh_user="Root Admin"), "user name"),
])
def test_bad_machines_are_refused_with_the_field_named(bad, problem):
    with pytest.raises(InvalidArgumentError, match=problem):
        LocalNodes(**bad)


def test_bad_cloud_settings_are_refused_with_the_field_named():
    with pytest.raises(InvalidArgumentError, match="project_id"):
        CloudNodes("gcp", "us-west1", "us-west1-a", "n1-standard-4")
    with pytest.raises(InvalidArgumentError, match="min_workers"):
        CloudNodes("aws", "us-west-2", "us-west-2a", "m5.xlarge", min_workers=3, max_workers=2)
    with pytest.raises(InvalidArgumentError, match="install"):
        Install()


def test_cluster_init_writes_a_yaml_that_says_how_to_use_it(tmp_path, capsys):
    out = tmp_path / "lab.yaml"
    assert main(["cluster", "init", "--head-ip", "10.1.0.1", "--worker-ips", "10.1.0.2,10.1.0.3", "--ssh-user",
                 "ops", "--ssh-key", "~/.ssh/lab", "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    text = out.read_text()
    comment = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    for step in ("ray get-auth-token --generate", "export RAY_AUTH_MODE=token", f"ray up {out}", f"ray attach {out}",
                 "ray job submit --address http://127.0.0.1:8265 -- tollmesh simulate --config scale --out /data/runs",
                 f"ray down {out}"):
        assert step in comment, step
    config = yaml.safe_load(text)
    assert config["provider"] == {"type": "local", "head_ip": "10.1.0.1", "worker_ips": ["10.1.0.2", "10.1.0.3"]}
    assert ray_checks(config)["max_workers"] == 2


@pytest.mark.parametrize("argv", [
    ["--provider", "aws", "--region", "eu-central-1", "--zone", "eu-central-1b", "--min-workers", "1", "--max-workers", "4"],
    ["--provider", "gcp", "--project-id", "tollmesh-lab-1", "--machine-type", "n2-standard-4"],
    ["--head-ip", "10.1.0.1", "--worker-ips", "10.1.0.2", "--ssh-user", "ops", "--install", "tollmesh==0.1.0",
     "--metrics-port", "9100"],
])
def test_cluster_init_of_each_provider_passes_rays_checks(argv, tmp_path, capsys):
    out = tmp_path / "cluster.yaml"
    assert main(["cluster", "init", *argv, "--out", str(out)]) == 0
    resolved = ray_checks(yaml.safe_load(out.read_text()))
    assert resolved["provider"]["type"] == (argv[1] if argv[0] == "--provider" else "local")


@pytest.mark.parametrize("argv, problem", [
    (["--worker-ips", "10.1.0.2"], "needs --head-ip, --ssh-user"),
    (["--head-ip", "10.1.0.1", "--worker-ips", "10.1.0.2", "--ssh-user", "ops", "--region", "us-east-1"],
     "does not take --region"),
    (["--provider", "aws", "--head-ip", "10.1.0.1"], "does not take --head-ip"),
    (["--provider", "gcp"], "project_id"),
    (["--head-ip", "10.1.0.1", "--worker-ips", "10.1.0.1", "--ssh-user", "ops"], "must not hold the head"),
    (["--head-ip", "10.1.0.1", "--worker-ips", "10.1.0.2", "--ssh-user", "ops", "--metrics-port", "80"], "port"),
])
def test_cluster_init_names_what_is_wrong(argv, problem, tmp_path, capsys):
    assert main(["cluster", "init", *argv, "--out", str(tmp_path / "c.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tollmesh: error: ") and problem in err and "Traceback" not in err
    assert not (tmp_path / "c.yaml").exists()


def test_cluster_init_never_overwrites_without_being_told(tmp_path, capsys):
    out = tmp_path / "c.yaml"
    out.write_text("mine\n")
    args = ["cluster", "init", "--provider", "aws", "--out", str(out)]
    assert main(args) == 2 and "already exists" in capsys.readouterr().err
    assert out.read_text() == "mine\n"
    assert main([*args, "--overwrite"]) == 0 and "provider" in yaml.safe_load(out.read_text())


def _exported_names() -> set[str]:
    """The names Prometheus scrapes for the mesh's metrics (Ray's prefix; a histogram's three series)."""
    source = (Path(__file__).resolve().parents[1] / "actors" / "metrics.py").read_text()
    names = set()
    for kind, name in re.findall(r"metrics\.(Counter|Gauge|Histogram)\(\s*\"(\w+)\"", source):
        suffixes = ("_bucket", "_sum", "_count") if kind == "Histogram" else ("",)
        names |= {f"ray_{name}{suffix}" for suffix in suffixes}
    return names


def test_the_grafana_dashboard_reads_the_metrics_the_mesh_exports(tmp_path, capsys):
    out = tmp_path / "board.json"
    assert main(["cluster", "grafana", "--out", str(out)]) == 0
    board = json.loads(out.read_text())
    exported = _exported_names()
    assert len(exported) == 12  # 5 counters, 1 gauge, 2 histograms (the multi-node test scrapes them for real)
    used = metric_names(board)
    assert used <= exported, used - exported
    counted = {name.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count") for name in used}
    assert counted == {name.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count") for name in exported}
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert 'mesh=~"$mesh"' in target["expr"], target["expr"]
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
    assert out.read_text() == dashboard_json()
