"""``tollmesh cluster``: write a ``ray up`` configuration (``init``) or the Grafana dashboard (``grafana``).

    tollmesh cluster init --head-ip IP --worker-ips IP[,IP...] --ssh-user USER [--ssh-key PATH]
                          [--install SPEC] [--python PYTHON] [--metrics-port PORT] [--name NAME]
                          [--out FILE] [--overwrite]
    tollmesh cluster init --provider aws|gcp [--region R] [--zone Z] [--machine-type T] [--cpus N]
                          [--min-workers N] [--max-workers N] [--project-id ID] [--ssh-user USER] ...
    tollmesh cluster grafana [--out FILE] [--overwrite]

The written file starts with a comment block that says how to use it. A flag of another provider,
or a missing one, is an error that names it (exit code 2); so is a file already there, unless
``--overwrite``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mesh.core.errors import InvalidArgumentError

__all__ = ["add_arguments"]

DEFAULT_OUT = Path("tollmesh-cluster.yaml")
DEFAULT_DASHBOARD_OUT = Path("tollmesh-grafana-dashboard.json")
_CLOUD_DEFAULTS = {
    "aws": {"region": "us-west-2", "zone": "us-west-2a", "machine_type": "m5.xlarge", "cpus": 4},
    "gcp": {"region": "us-west1", "zone": "us-west1-a", "machine_type": "n1-standard-4", "cpus": 4},
}
_LOCAL_FLAGS = ("head_ip", "worker_ips", "ssh_key")
_CLOUD_FLAGS = ("region", "zone", "machine_type", "cpus", "min_workers", "max_workers", "project_id")


def add_arguments(cluster: argparse.ArgumentParser) -> None:
    """``init`` and ``grafana``, on the ``cluster`` parser."""
    tools = cluster.add_subparsers(dest="cluster_tool", required=True)
    init = tools.add_parser("init", help="write a `ray up` cluster YAML: machines you have (default), or AWS, GCP")
    init.add_argument("--provider", choices=["local", "aws", "gcp"], default="local",
                      help="local: machines you have, reached over ssh (Ray's local provider); aws, gcp: a cloud's")
    init.add_argument("--head-ip", help="local: the head machine's address")
    init.add_argument("--worker-ips", type=_address_list, help="local: the worker machines' addresses, comma-separated")
    init.add_argument("--ssh-user", help="the user ray up logs in as (local: required; aws, gcp: default ubuntu)")
    init.add_argument("--ssh-key", help="local: the private key ray up logs in with (it copies it to the head, "
                                        "which reaches the workers with it)")
    init.add_argument("--region", help="aws, gcp: the region (default us-west-2, us-west1)")
    init.add_argument("--zone", help="aws, gcp: the availability zone (default us-west-2a, us-west1-a)")
    init.add_argument("--machine-type", help="aws, gcp: the instance type of every node (default m5.xlarge, n1-standard-4)")
    init.add_argument("--cpus", type=_count, help="aws, gcp: CPUs of that machine type (default 4; GCP needs it said)")
    init.add_argument("--min-workers", type=_count, help="aws, gcp: workers kept up (default 2)")
    init.add_argument("--max-workers", type=_count, help="aws, gcp: workers at most (default: --min-workers)")
    init.add_argument("--project-id", help="gcp: the project's id (required)")
    init.add_argument("--install", metavar="SPEC",
                      help="what every node pip installs (a requirement, a git URL...; default: this source tree "
                           "if tollmesh runs from one, copied there by ray up, else tollmesh==this version)")
    init.add_argument("--python", default="python3", help="the interpreter that makes each node's virtualenv (default python3)")
    init.add_argument("--metrics-port", type=int, default=8080, help="each node's Prometheus metrics port (default 8080)")
    init.add_argument("--name", default="tollmesh", help="the cluster's name (default tollmesh)")
    init.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"the file to write (default {DEFAULT_OUT})")
    init.add_argument("--overwrite", action="store_true", help="replace the file if it exists")
    init.set_defaults(func=_cmd_init)
    grafana = tools.add_parser("grafana", help="write the Grafana dashboard of the tollmesh metrics (JSON, to import)")
    grafana.add_argument("--out", type=Path, default=DEFAULT_DASHBOARD_OUT, help=f"default {DEFAULT_DASHBOARD_OUT}")
    grafana.add_argument("--overwrite", action="store_true", help="replace the file if it exists")
    grafana.set_defaults(func=_cmd_grafana)


def _cmd_init(args: argparse.Namespace) -> int:
    from mesh.cluster.templates import notes, render

    config = _config(args)
    _write(args.out, render(config, comment=notes(config, str(args.out))), args.overwrite)
    where = "ray up reaches the machines over ssh" if args.provider == "local" else f"on {args.provider.upper()}"
    print(f"wrote {args.out}: a {args.provider} cluster ({where}); next: `ray get-auth-token --generate`, "
          f"`export RAY_AUTH_MODE=token`, `ray up {args.out}` (its first lines say more)")
    return 0


def _cmd_grafana(args: argparse.Namespace) -> int:
    from mesh.cluster.grafana import dashboard_json

    _write(args.out, dashboard_json(), args.overwrite)
    print(f"wrote {args.out}: import it in Grafana (Dashboards > New > Import), with Ray's Prometheus as its data source")
    return 0


def _config(args: argparse.Namespace) -> dict:
    from mesh.cluster.templates import CloudNodes, Install, LocalNodes, cloud_cluster, local_cluster

    install = _install(args)
    if args.provider == "local":
        _refuse(args, _CLOUD_FLAGS, "local")
        missing = [f"--{n.replace('_', '-')}" for n in ("head_ip", "worker_ips", "ssh_user") if not getattr(args, n)]
        if missing:
            raise InvalidArgumentError("cluster init", "--provider local", f"needs {', '.join(missing)}")
        nodes = LocalNodes(head_ip=args.head_ip, worker_ips=tuple(args.worker_ips), ssh_user=args.ssh_user,
                           ssh_private_key=args.ssh_key)
        return local_cluster(nodes, install, name=args.name)
    _refuse(args, _LOCAL_FLAGS, args.provider)
    defaults = _CLOUD_DEFAULTS[args.provider]
    min_workers = 2 if args.min_workers is None else args.min_workers
    nodes = CloudNodes(
        provider=args.provider, region=args.region or defaults["region"], zone=args.zone or defaults["zone"],
        machine_type=args.machine_type or defaults["machine_type"], cpus=args.cpus or defaults["cpus"],
        min_workers=min_workers, max_workers=min_workers if args.max_workers is None else args.max_workers,
        project_id=args.project_id, ssh_user=args.ssh_user or "ubuntu",
    )
    return cloud_cluster(nodes, install, name=args.name)


def _install(args: argparse.Namespace) -> Any:
    from mesh import __version__
    from mesh.cluster.templates import Install, source_checkout

    if args.install:
        return Install(spec=args.install, python=args.python, metrics_port=args.metrics_port)
    source = source_checkout()
    if source is not None:
        return Install(source=source, python=args.python, metrics_port=args.metrics_port)
    return Install(spec=f"tollmesh=={__version__}", python=args.python, metrics_port=args.metrics_port)


def _refuse(args: argparse.Namespace, flags: tuple[str, ...], provider: str) -> None:
    given = [f"--{n.replace('_', '-')}" for n in flags if getattr(args, n) is not None]
    if given:
        raise InvalidArgumentError("cluster init", f"--provider {provider}",
                                   f"does not take {', '.join(given)} (another provider's)")


def _write(path: Path, text: str, overwrite: bool) -> None:
    if path.is_dir():
        raise InvalidArgumentError("--out", str(path), "is a directory: give a file name")
    if path.exists() and not overwrite:
        raise InvalidArgumentError("--out", str(path), "already exists: choose another, or pass --overwrite")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _address_list(text: str) -> list[str]:
    values = [part.strip() for part in text.split(",") if part.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r}: give at least one address, comma-separated")
    return values


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value
