"""``ray up`` cluster configurations for tollmesh: machines you have (Ray's ``local`` provider), AWS, GCP.

:func:`local_cluster` builds the configuration of an on-premise cluster (a head and worker
machines reached over ssh), :func:`cloud_cluster` that of an AWS or GCP one; both as the plain dict
Ray reads, which :func:`render` writes as YAML under a comment block saying how to use it. Every
node gets the same setup: a virtualenv (``~/tollmesh-venv``) holding this version of tollmesh (the
source tree it runs from, copied by ``ray up``, or the release of the same version), the cluster's
auth token (``~/.ray/auth_token``, copied from the machine that runs ``ray up``), and a ``ray start``
with ``RAY_AUTH_MODE=token`` and the metrics export port open (Prometheus scrapes each node there).

>>> config = local_cluster(LocalNodes(head_ip="10.0.0.1", worker_ips=("10.0.0.2", "10.0.0.3"), ssh_user="ops"),
...                        Install(spec="tollmesh==0.1.0"))
>>> config["provider"], config["auth"]
({'type': 'local', 'head_ip': '10.0.0.1', 'worker_ips': ['10.0.0.2', '10.0.0.3']}, {'ssh_user': 'ops'})
>>> config["head_start_ray_commands"][-1]
'RAY_AUTH_MODE=token ~/tollmesh-venv/bin/ray start --head --port=6379 --dashboard-host=0.0.0.0 --metrics-export-port=8080 --autoscaling-config=~/ray_bootstrap_config.yaml --disable-usage-stats'
>>> LocalNodes(head_ip="10.0.0.1", worker_ips=("10.0.0.1",), ssh_user="ops")
Traceback (most recent call last):
...
mesh.core.errors.InvalidArgumentError: worker_ips=('10.0.0.1',): must not hold the head (10.0.0.1)
"""

from __future__ import annotations

import copy
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from mesh.core.errors import InvalidArgumentError

__all__ = [
    "CLOUD_PROVIDERS", "CloudNodes", "Install", "LocalNodes", "cloud_cluster", "local_cluster", "notes", "render",
    "source_checkout",
]

CLOUD_PROVIDERS = ("aws", "gcp")
VENV = "~/tollmesh-venv"  # on every node
REMOTE_SOURCE = "~/tollmesh-src"  # where ray up copies a source checkout to, on every node
TOKEN_FILE = "~/.ray/auth_token"  # Ray's default token path, here and on the nodes
GCS_PORT = 6379
DASHBOARD_PORT = 8265
DEFAULT_METRICS_PORT = 8080
#: what ray up does not copy of a source checkout (virtualenvs, runs, caches)
RSYNC_EXCLUDE = ["**/.venv", "**/.git", "**/tollmesh-out", "**/__pycache__", "**/*.egg-info", "**/.pytest_cache",
                 "**/.hypothesis"]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


def check_host(field_name: str, value: str) -> str:
    """An IP address or a host name, as given; else :class:`InvalidArgumentError`."""
    if not isinstance(value, str) or not value:
        raise InvalidArgumentError(field_name, value, "must be an IP address or a host name")
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if not _HOSTNAME.match(value) or value.replace(".", "").isdigit():
        raise InvalidArgumentError(field_name, value, "is neither an IP address nor a host name")
    return value


def check_port(field_name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1024 <= value <= 65535:
        raise InvalidArgumentError(field_name, value, "must be a port from 1024 to 65535")
    return value


@dataclass(frozen=True)
class LocalNodes:
    """The machines of an on-premise cluster: the head's address, the workers', the ssh user (and key)."""

    head_ip: str
    worker_ips: tuple[str, ...]
    ssh_user: str
    ssh_private_key: Optional[str] = None  # copied to the head, which reaches the workers with it

    def __post_init__(self) -> None:
        check_host("head_ip", self.head_ip)
        if not self.worker_ips:
            raise InvalidArgumentError("worker_ips", self.worker_ips, "give at least one worker")
        for ip in self.worker_ips:
            check_host("worker_ips", ip)
        if len(set(self.worker_ips)) != len(self.worker_ips):
            raise InvalidArgumentError("worker_ips", self.worker_ips, "must not repeat an address")
        if self.head_ip in self.worker_ips:
            raise InvalidArgumentError("worker_ips", self.worker_ips, f"must not hold the head ({self.head_ip})")
        if not isinstance(self.ssh_user, str) or not _USER.match(self.ssh_user):
            raise InvalidArgumentError("ssh_user", self.ssh_user, "must be a user name such as ubuntu")
        if self.ssh_private_key is not None and not str(self.ssh_private_key).strip():
            raise InvalidArgumentError("ssh_private_key", self.ssh_private_key, "must be a path to a key file")


@dataclass(frozen=True)
class CloudNodes:
    """The machines of a cloud cluster: where, which kind, how many workers (at least and at most)."""

    provider: str  # aws | gcp
    region: str
    zone: str
    machine_type: str
    min_workers: int = 2
    max_workers: int = 2
    cpus: int = 4  # CPUs of the machine type (GCP needs them said; AWS looks them up)
    project_id: Optional[str] = None  # GCP only
    ssh_user: str = "ubuntu"

    def __post_init__(self) -> None:
        if self.provider not in CLOUD_PROVIDERS:
            raise InvalidArgumentError("provider", self.provider, f"must be one of {', '.join(CLOUD_PROVIDERS)}")
        for name in ("region", "zone", "machine_type"):
            value = getattr(self, name)
            if not isinstance(value, str) or not re.match(r"^[a-z0-9][a-z0-9.,-]*$", value):
                raise InvalidArgumentError(name, value, "must be a name such as us-west-2 or m5.xlarge")
        for name in ("min_workers", "max_workers", "cpus"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < (1 if name == "cpus" else 0):
                raise InvalidArgumentError(name, value, "must be a whole number" + (" of at least 1" if name == "cpus" else ""))
        if self.min_workers > self.max_workers:
            raise InvalidArgumentError("min_workers", self.min_workers, f"must not exceed max_workers ({self.max_workers})")
        if self.provider == "gcp" and not (self.project_id and re.match(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$", self.project_id)):
            raise InvalidArgumentError("project_id", self.project_id, "GCP needs the project's id, such as my-project-123")
        if not _USER.match(self.ssh_user):
            raise InvalidArgumentError("ssh_user", self.ssh_user, "must be a user name such as ubuntu")


@dataclass(frozen=True)
class Install:
    """How every node gets tollmesh: ``spec`` for pip (``tollmesh==0.1.0``, a git URL...), or ``source``,
    a checkout that ``ray up`` copies to each node and pip installs there; ``python`` makes the virtualenv."""

    spec: Optional[str] = None
    source: Optional[Path] = None
    python: str = "python3"
    metrics_port: int = DEFAULT_METRICS_PORT
    extra_pip: tuple[str, ...] = field(default=())  # more packages for the head (a cloud provider's SDK)

    def __post_init__(self) -> None:
        if (self.spec is None) == (self.source is None):
            raise InvalidArgumentError("install", (self.spec, self.source), "give a pip spec or a source checkout, one of them")
        if self.spec is not None and (not self.spec.strip() or "\n" in self.spec):
            raise InvalidArgumentError("install", self.spec, "must be one pip requirement, such as tollmesh==0.1.0")
        if not re.match(r"^[A-Za-z0-9_./-]+$", self.python):
            raise InvalidArgumentError("python", self.python, "must be an interpreter name or path, such as python3")
        check_port("metrics_port", self.metrics_port)

    @property
    def pip_target(self) -> str:
        return REMOTE_SOURCE if self.source is not None else _shell_quote(str(self.spec))


def source_checkout() -> Optional[Path]:
    """The source tree this tollmesh runs from (a folder with its ``pyproject.toml``), or None (an installed release)."""
    root = Path(__file__).resolve().parents[2]
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and 'name = "tollmesh"' in pyproject.read_text(errors="replace"):
        return root
    return None


def local_cluster(nodes: LocalNodes, install: Install, *, name: str = "tollmesh") -> dict[str, Any]:
    """The ``ray up`` configuration of an on-premise cluster (Ray's ``local`` provider)."""
    auth: dict[str, Any] = {"ssh_user": nodes.ssh_user}
    if nodes.ssh_private_key:
        auth["ssh_private_key"] = nodes.ssh_private_key
    return {
        "cluster_name": _check_name(name),
        "provider": {"type": "local", "head_ip": nodes.head_ip, "worker_ips": list(nodes.worker_ips)},
        "auth": auth,
        "min_workers": len(nodes.worker_ips),
        "max_workers": len(nodes.worker_ips),
        **_common(install),
    }


def cloud_cluster(nodes: CloudNodes, install: Install, *, name: str = "tollmesh") -> dict[str, Any]:
    """The ``ray up`` configuration of an AWS or GCP cluster: a head and ``min..max`` workers of one machine type."""
    sdk = {"aws": ("boto3>=1.26",), "gcp": ("google-api-python-client>=2", "google-auth>=2")}[nodes.provider]
    install = Install(spec=install.spec, source=install.source, python=install.python,
                      metrics_port=install.metrics_port, extra_pip=sdk)  # the head's autoscaler talks to the cloud
    head, worker = _node_configs(nodes)
    return {
        "cluster_name": _check_name(name),
        "max_workers": nodes.max_workers,
        "provider": _cloud_provider(nodes),
        "auth": {"ssh_user": nodes.ssh_user},
        "available_node_types": {
            "tollmesh.head": {"resources": _resources(nodes), "node_config": head},
            "tollmesh.worker": {"min_workers": nodes.min_workers, "max_workers": nodes.max_workers,
                                "resources": _resources(nodes), "node_config": worker},
        },
        "head_node_type": "tollmesh.head",
        "initialization_commands": [  # cloud images may lack venv: Debian and Ubuntu ship it apart
            "command -v apt-get >/dev/null && (sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv) || true",
        ],
        **_common(install),
    }


def render(config: dict[str, Any], *, comment: str) -> str:
    """``config`` as YAML, under ``comment`` as a comment block (each line of it prefixed ``# ``)."""
    import yaml

    header = "".join(f"# {line}".rstrip() + "\n" for line in comment.strip("\n").splitlines())
    return header + "\n" + yaml.safe_dump(config, sort_keys=False, default_flow_style=False, width=120)


def notes(config: dict[str, Any], path: str) -> str:
    """The comment block of a configuration written to ``path``: what it sets up, and how to use it."""
    provider = config["provider"]
    head = provider.get("head_ip", "HEAD_IP")
    port = _metrics_port(config)
    if provider["type"] == "local":
        where = (f"machines you have (Ray's local provider): head {head}, workers {', '.join(provider['worker_ips'])};"
                 f"\nray up logs in to them over ssh as {config['auth']['ssh_user']}.")
    else:
        workers = config["available_node_types"]["tollmesh.worker"]
        count = (f"{workers['min_workers']}" if workers["min_workers"] == workers["max_workers"]
                 else f"{workers['min_workers']} to {workers['max_workers']}")
        where = f"{provider['type'].upper()}, {provider['availability_zone']}: a head and {count} workers, {_machine(config)}."
    install = ("this source tree, copied to ~/tollmesh-src by ray up" if REMOTE_SOURCE in config["file_mounts"]
               else next(c.split(" -q ", 1)[1] for c in config["setup_commands"] if " install -q " in c and "pip " in c
                         and "--upgrade pip" not in c))
    down = "stop Ray on every node" + ("" if provider["type"] == "local" else " and terminate the machines")
    return f"""\
tollmesh on a Ray cluster, for `ray up` (written by `tollmesh cluster init`):
{where}
Every node gets a virtualenv, {VENV}, with tollmesh ({install});
the cluster's auth token, {TOKEN_FILE} (copied from this machine); `ray start` with
RAY_AUTH_MODE=token and Prometheus metrics on port {port} (http://NODE:{port}/metrics; the head's
has the tollmesh_* ones).

Once, before `ray up`: a token for the cluster (every node and every client needs it):
  ray get-auth-token --generate        # writes {TOKEN_FILE} if there is none
  export RAY_AUTH_MODE=token           # without it, ray job submit and ray start --address do not send it
Then:
  ray up {path}                # install, start the head, then the workers
  ray attach {path}            # a shell on the head
  ray exec {path} 'mkdir -p /data/runs'          # a folder on the head for the runs
  ray dashboard {path}         # forwards http://127.0.0.1:{DASHBOARD_PORT} to the head (leave it running)
  ray job submit --address http://127.0.0.1:{DASHBOARD_PORT} -- tollmesh simulate --config scale --out /data/runs
      # the job's log ends with the report; the run (ledger as JSONL and Parquet, report.json)
      # stays on the head in /data/runs/scale-seed1
  ray rsync-down {path} /data/runs/scale-seed1 ./scale-seed1    # the run, here
  ray down {path}              # {down}
Grafana: `tollmesh cluster grafana` writes a dashboard of the tollmesh metrics to import.
"""


def _machine(config: dict[str, Any]) -> str:
    node = config["available_node_types"]["tollmesh.worker"]["node_config"]
    return node.get("InstanceType") or node.get("machineType") or "?"


def _metrics_port(config: dict[str, Any]) -> int:
    match = re.search(r"--metrics-export-port=(\d+)", config["head_start_ray_commands"][-1])
    return int(match.group(1)) if match else DEFAULT_METRICS_PORT


def _common(install: Install) -> dict[str, Any]:
    """What every provider's nodes share: the files, the setup, the ray start commands."""
    file_mounts = {TOKEN_FILE: TOKEN_FILE}
    if install.source is not None:
        file_mounts[REMOTE_SOURCE] = str(install.source)
    return {
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 5,
        "file_mounts": file_mounts,
        "rsync_exclude": list(RSYNC_EXCLUDE),
        "setup_commands": _setup_commands(install),
        "head_setup_commands": [f"{VENV}/bin/pip install -q {_shell_quote(p)}" for p in install.extra_pip],
        "worker_setup_commands": [],
        "head_start_ray_commands": [
            f"{VENV}/bin/ray stop",
            f"RAY_AUTH_MODE=token {VENV}/bin/ray start --head --port={GCS_PORT} --dashboard-host=0.0.0.0 "
            f"--metrics-export-port={install.metrics_port} --autoscaling-config=~/ray_bootstrap_config.yaml "
            "--disable-usage-stats",
        ],
        "worker_start_ray_commands": [
            f"{VENV}/bin/ray stop",
            f"RAY_AUTH_MODE=token {VENV}/bin/ray start --address=$RAY_HEAD_IP:{GCS_PORT} "
            f"--metrics-export-port={install.metrics_port} --disable-usage-stats",
        ],
    }


def _setup_commands(install: Install) -> list[str]:
    """A virtualenv with tollmesh (and so Ray) on every node; its bin and the token mode in the login shell."""
    return [
        f"test -x {VENV}/bin/python || {install.python} -m venv {VENV}",
        f"{VENV}/bin/pip install -q --upgrade pip",
        f"{VENV}/bin/pip install -q {install.pip_target}",
        f"grep -q tollmesh-venv ~/.bashrc || echo 'export PATH=\"$HOME/tollmesh-venv/bin:$PATH\" RAY_AUTH_MODE=token'"
        " >> ~/.bashrc",
    ]


def _cloud_provider(nodes: CloudNodes) -> dict[str, Any]:
    provider = {"type": nodes.provider, "region": nodes.region, "availability_zone": nodes.zone}
    if nodes.provider == "aws":
        provider["cache_stopped_nodes"] = False  # ray down terminates the machines (no stopped ones left to bill)
    else:
        provider["project_id"] = nodes.project_id
    return provider


def _node_configs(nodes: CloudNodes) -> tuple[dict[str, Any], dict[str, Any]]:
    if nodes.provider == "aws":  # no ImageId: Ray picks its default Ubuntu image for the region
        head = {"InstanceType": nodes.machine_type,
                "BlockDeviceMappings": [{"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": 100}}]}
        return head, {"InstanceType": nodes.machine_type}
    disk = {"boot": True, "autoDelete": True, "type": "PERSISTENT", "initializeParams": {
        "diskSizeGb": 100, "sourceImage": "projects/ubuntu-os-cloud/global/images/family/ubuntu-2204-lts"}}
    config = {"machineType": nodes.machine_type, "disks": [disk]}
    return config, copy.deepcopy(config)  # not the same objects: YAML would write them as an anchor and alias


def _resources(nodes: CloudNodes) -> dict[str, Any]:
    return {} if nodes.provider == "aws" else {"CPU": nodes.cpus}  # Ray looks AWS's up; GCP's must be said


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidArgumentError("name", name, "must be letters, digits, - and _ (at most 63), such as tollmesh")
    return name


def _shell_quote(text: str) -> str:
    import shlex

    return shlex.quote(text)
