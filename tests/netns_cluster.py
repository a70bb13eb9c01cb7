"""Separate hosts on one machine, for tests: Ray nodes each in its own network, PID and mount namespace.

A :class:`NamespacedCluster` is a small LAN made inside the test: a bridge in a network namespace
of its own (the switch), and one namespace set per node (``unshare --net --pid --mount``), each
plugged into the switch by a veth pair, with its own IP on a private /24 drawn for the cluster, its
own ``/tmp`` and ``/dev/shm`` (tmpfs), its own ``$HOME`` (holding the cluster's auth token), its
own host name and its own process tree, in which ``ray start ... --block`` runs. A client namespace on the same LAN plays
the user's laptop: :meth:`NamespacedCluster.client_run` runs a command there (``ray job submit``),
:meth:`NamespacedCluster.http_get` fetches a URL from there (a thread that joined its network
namespace), so nothing of the cluster is reachable from, or visible on, the machine's own network.

Nothing outlives the test: every ``unshare`` process is started with ``PR_SET_PDEATHSIG`` (it dies
with the test process, even a ``kill -9`` one) and ``--kill-child`` (its namespace's first process
dies with it, and a PID namespace whose first process dies is emptied by the kernel); a network
namespace with no process left is freed with its veth ends and the bridge. :meth:`Node.kill` is a
host that loses power: every process of that namespace gets SIGKILL at once and its link goes away.

Needs root (or CAP_SYS_ADMIN and CAP_NET_ADMIN), ``unshare``, ``nsenter`` and ``ip``;
:func:`namespaces_missing` says why not, for a skip.
"""

from __future__ import annotations

import ctypes
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

BIN = Path(sys.executable).parent  # ray and tollmesh of this virtualenv
REPO = Path(__file__).resolve().parents[1]
GCS_PORT = 6379
DASHBOARD_PORT = 8265
METRICS_PORT = 8080  # each node's metrics agent (Prometheus text format): every node has its own IP
HEAD_DISK_MOUNT = "/srv"  # the head's own disk: a folder of the test bind-mounted there, in the head only
LINK_WAIT_S = 10.0
START_TIMEOUT_S = 120.0
_CLONE_NEWNET = 0x40000000
_PR_SET_PDEATHSIG = 1

_libc = ctypes.CDLL(None, use_errno=True)


def namespaces_missing() -> Optional[str]:
    """Why namespaced hosts cannot be made here (None: they can)."""
    if sys.platform != "linux":
        return f"network, PID and mount namespaces are Linux's ({sys.platform} here)"
    for tool in ("unshare", "nsenter", "ip"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (util-linux / iproute2)"
    if os.geteuid() != 0:
        return "making network namespaces, veth pairs and a bridge needs root (CI runs as root)"
    if not Path(HEAD_DISK_MOUNT).is_dir():
        return f"no {HEAD_DISK_MOUNT} to mount the head's disk on"
    probe = subprocess.run(["unshare", "--net", "--pid", "--mount", "--uts", "--fork", "--mount-proc", "sh", "-c",
                            "ip link add probe0 type bridge && mount -t tmpfs tmpfs /tmp"],
                           capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return f"cannot make namespaces here: {probe.stderr.strip() or probe.returncode}"
    return None


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the test process (the forking thread) goes."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _nsenter(pid: int, *command: str) -> list[str]:
    return ["nsenter", f"--target={pid}", "--net", "--", *command]


@dataclass
class Node:
    """One host: its name, IP and the ``unshare`` process that holds its namespaces."""

    name: str
    ip: str
    process: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """The host loses power: SIGKILL to the process holding its namespaces, which takes every
        process in them with it (``--kill-child``, then the kernel empties the PID namespace)."""
        if self.alive():
            self.process.kill()
        self.process.wait(timeout=30)

    def log_tail(self, chars: int = 3_000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@dataclass
class NamespacedCluster:
    """``with NamespacedCluster(root, token) as cluster:`` a Ray head and ``workers`` worker hosts on a LAN of their own.

    ``root`` holds the nodes' console logs and ``head_disk``, the folder the head sees as ``/srv``;
    ``token`` is the cluster's auth token (every node runs with ``RAY_AUTH_MODE=token``);
    ``system_config`` goes to the head's ``ray start --system-config``.
    """

    root: Path
    token: str
    workers: int = 2
    cpus_per_node: int = 1
    object_store_bytes: int = 150_000_000
    system_config: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.head_disk = self.root / "head-disk"
        self.subnet = f"10.{random.randrange(64, 250)}.{random.randrange(1, 250)}"  # private, and only on this LAN
        self.nodes: dict[str, Node] = {}
        self._switch: Optional[subprocess.Popen] = None
        self._client: Optional[subprocess.Popen] = None
        self._http: Optional[ThreadPoolExecutor] = None

    # -- addresses ------------------------------------------------------------------------

    @property
    def head(self) -> Node:
        return self.nodes["head"]

    @property
    def gcs_address(self) -> str:
        return f"{self.head.ip}:{GCS_PORT}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{self.head.ip}:{DASHBOARD_PORT}"

    def metrics_url(self, node: Node) -> str:
        return f"http://{node.ip}:{METRICS_PORT}/metrics"

    # -- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> NamespacedCluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> None:
        """The switch, the client, the head, then the workers; returns once they answer."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.head_disk.mkdir(parents=True, exist_ok=True)
        self._switch = self._holder("switch")
        self._in_switch("ip", "link", "add", "br0", "type", "bridge")
        self._in_switch("ip", "link", "set", "br0", "up")
        self._client = self._holder("client")
        self._plug("client", self._client.pid, f"{self.subnet}.250", configure=True)
        self._start_node("head", f"{self.subnet}.10", self._head_command())
        self._wait_for_port(self.head, DASHBOARD_PORT)
        for n in range(1, self.workers + 1):
            self._start_node(f"worker{n}", f"{self.subnet}.{10 + n}", self._worker_command())
        self.wait_for_nodes(1 + self.workers)

    def close(self) -> None:
        """Kill every namespace (their processes go with them) and wait for them; the LAN goes with the switch."""
        if self._http is not None:
            self._http.shutdown(wait=False, cancel_futures=True)
            self._http = None
        for node in self.nodes.values():
            if node.alive():
                node.process.kill()
        for holder in (self._client, self._switch):
            if holder is not None and holder.poll() is None:
                holder.kill()
        for process in [n.process for n in self.nodes.values()] + [p for p in (self._client, self._switch) if p]:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass

    # -- running things ----------------------------------------------------------------------

    def client_env(self) -> dict[str, str]:
        """The environment of a command run from the client (the user's laptop): the token, and no local Ray."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token, RAY_USAGE_STATS_ENABLED="0",
                   PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
        return env

    def client_run(self, *command: str, env: Optional[dict] = None, timeout_s: float = 120.0,
                   **options) -> subprocess.CompletedProcess:
        """``command`` in the client's network namespace (its output captured, as text)."""
        assert self._client is not None
        return subprocess.run(_nsenter(self._client.pid, *command), env=env or self.client_env(),
                              capture_output=True, text=True, timeout=timeout_s, **options)

    def http_get(self, url: str, *, timeout_s: float = 10.0, token: bool = True) -> tuple[int, str]:
        """GET ``url`` from the client's network namespace (with the cluster's token); status and text."""
        if self._http is None:
            assert self._client is not None
            self._http = ThreadPoolExecutor(max_workers=1, initializer=_join_netns, initargs=(self._client.pid,),
                                            thread_name_prefix="netns-client")
        return self._http.submit(_get, url, self.token if token else None, timeout_s).result(timeout=timeout_s + 5)

    def wait_for_nodes(self, count: int, timeout_s: float = START_TIMEOUT_S) -> list[dict]:
        """The cluster's alive nodes, once there are ``count`` of them (state API of the head's dashboard)."""
        deadline = time.monotonic() + timeout_s
        while True:
            alive = [n for n in self.list_state("nodes") if n.get("state") == "ALIVE"]
            if len(alive) >= count:
                return alive
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {n.name}:\n{n.log_tail()}" for n in self.nodes.values())
                raise RuntimeError(f"{len(alive)} of {count} nodes alive after {timeout_s:g} s\n{logs}")
            time.sleep(1)

    def list_state(self, kind: str, **filters: str) -> list[dict]:
        """Ray's state API (``/api/v0/<kind>``: nodes, actors...), from the client."""
        import json
        from urllib.parse import urlencode

        query = [("limit", "10000"), ("detail", "1")]
        for key, value in filters.items():
            query += [("filter_keys", key), ("filter_predicates", "="), ("filter_values", value)]
        try:
            status, text = self.http_get(f"{self.dashboard_url}/api/v0/{kind}?{urlencode(query)}")
        except OSError:
            return []
        if status != 200:
            return []
        return json.loads(text)["data"]["result"]["result"]

    def copy_logs(self, dest: Path) -> None:
        """Ray's logs of every node still alive (they live in its private /tmp), into ``dest``/<node>/ ."""
        for node in self.nodes.values():
            if not node.alive():
                continue
            sessions = Path(f"/proc/{node.pid}/root/tmp/ray")
            for session in sessions.glob("session_2*"):
                shutil.copytree(session / "logs", dest / node.name, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("events", "export_events", "*.sock"))

    # -- the pieces ---------------------------------------------------------------------------

    def _holder(self, name: str) -> subprocess.Popen:
        """A process that holds a network namespace of its own (the switch, the client)."""
        process = subprocess.Popen(["unshare", "--net", "--fork", "--kill-child", "sleep", "infinity"],
                                   preexec_fn=_die_with_parent, stdin=subprocess.DEVNULL)
        self._wait_for_netns(process, name)
        return process

    def _wait_for_netns(self, process: subprocess.Popen, name: str) -> None:
        """Until ``process`` is in a network namespace other than ours (unshare has run)."""
        ours = os.readlink("/proc/self/ns/net")
        deadline = time.monotonic() + LINK_WAIT_S
        while True:
            try:
                if os.readlink(f"/proc/{process.pid}/ns/net") != ours:
                    return
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the {name} namespace did not come up (exit {process.poll()})")
            time.sleep(0.02)

    def _in_switch(self, *command: str) -> None:
        assert self._switch is not None
        subprocess.run(_nsenter(self._switch.pid, *command), check=True, capture_output=True, timeout=30)

    def _plug(self, name: str, pid: int, ip: str, *, configure: bool) -> None:
        """A veth pair: ``v-<name>`` on the bridge, ``eth0`` in namespace ``pid`` (given ``ip`` here if ``configure``)."""
        port = f"v-{name}"[:15]
        self._in_switch("ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", str(pid))
        self._in_switch("ip", "link", "set", port, "master", "br0", "up")
        if configure:
            for command in (["ip", "link", "set", "lo", "up"], ["ip", "addr", "add", f"{ip}/24", "dev", "eth0"],
                            ["ip", "link", "set", "eth0", "up"]):
                subprocess.run(_nsenter(pid, *command), check=True, capture_output=True, timeout=30)

    def _start_node(self, name: str, ip: str, ray_start: list[str]) -> Node:
        """``unshare`` a node: it waits for its link, configures it, and ``exec``s ``ray start``."""
        log_path = self.root / f"{name}.log"
        log = open(log_path, "wb")
        env = self._node_env()
        env["NODE_IP"], env["NODE_TOKEN"] = ip, self.token
        head_disk = f"mount --bind {_quote(self.head_disk)} {HEAD_DISK_MOUNT}\n" if name == "head" else ""
        keep, restore = _kept_under_tmp(name)
        script = (
            "set -eu\n"
            f"hostname {name}\n"
            f"{head_disk}"
            f"{keep}"
            "mount -t tmpfs -o size=1g,mode=1777 tmpfs /tmp\n"
            f"{restore}"
            "mount -t tmpfs -o size=512m,mode=1777 tmpfs /dev/shm\n"
            "mkdir -p $HOME/.ray && printf %s \"$NODE_TOKEN\" > $HOME/.ray/auth_token && unset NODE_TOKEN\n"
            "cd $HOME\n"
            f"n=0; while ! ip link show eth0 >/dev/null 2>&1; do n=$((n+1)); [ $n -lt {int(LINK_WAIT_S * 20)} ]; sleep 0.05; done\n"
            "ip link set lo up && ip addr add $NODE_IP/24 dev eth0 && ip link set eth0 up\n"
            "echo \"node $NODE_IP up (pid $$ in its own namespace)\"\n"
            'exec "$@"\n'
        )
        try:
            process = subprocess.Popen(
                ["unshare", "--net", "--pid", "--mount", "--uts", "--fork", "--kill-child", "--mount-proc",
                 "sh", "-c", script, name, *ray_start, f"--node-ip-address={ip}"],
                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent,
            )
        finally:
            log.close()
        node = Node(name, ip, process, log_path)
        self.nodes[name] = node
        self._wait_for_netns(process, name)
        self._plug(name, process.pid, ip, configure=False)
        return node

    def _node_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PYTEST_", "TOLLMESH_AUDIT"))}
        python_path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
        env.update(HOME="/tmp/home", PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=python_path,
                   RAY_AUTH_MODE="token", RAY_USAGE_STATS_ENABLED="0")
        return env

    def _common_start(self) -> list[str]:
        return [str(BIN / "ray"), "start", "--block", f"--num-cpus={self.cpus_per_node}",
                f"--object-store-memory={self.object_store_bytes}", f"--metrics-export-port={METRICS_PORT}",
                "--disable-usage-stats"]

    def _head_command(self) -> list[str]:
        import json

        command = self._common_start() + ["--head", f"--port={GCS_PORT}", "--dashboard-host=0.0.0.0",
                                          f"--dashboard-port={DASHBOARD_PORT}"]
        if self.system_config:
            command.append(f"--system-config={json.dumps(self.system_config)}")
        return command

    def _worker_command(self) -> list[str]:
        return self._common_start() + [f"--address={self.gcs_address}"]

    def _wait_for_port(self, node: Node, port: int, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.http_get(f"http://{node.ip}:{port}/", timeout_s=2)
                return
            except OSError:
                if not node.alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"{node.name} did not answer on port {port}:\n{node.log_tail()}") from None
                time.sleep(0.5)


def _join_netns(pid: int) -> None:
    """Move the calling thread (only it) into the network namespace of process ``pid``."""
    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns into the client's network namespace failed")
    finally:
        os.close(fd)


def _get(url: str, token: Optional[str], timeout_s: float) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:
            return answer.status, answer.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


def _quote(path: Path) -> str:
    import shlex

    return shlex.quote(str(path))


__all__ = ["NamespacedCluster", "Node", "namespaces_missing"]


def _kept_under_tmp(name: str) -> tuple[str, str]:
    """Shell lines that keep this checkout and its virtualenv visible when they live under /tmp (a CI
    checkout may), across the node's private /tmp: bound aside before the tmpfs, bound back after."""
    wanted = sorted({p for p in (REPO, Path(sys.prefix).resolve()) if Path("/tmp") in p.parents})
    paths = [p for p in wanted if not any(q in p.parents for q in wanted)]
    keep, restore = "", ""
    for i, path in enumerate(paths):
        aside = f"/mnt/.tollmesh-{name}-{i}"
        keep += f"mkdir -p {aside} && mount --bind {_quote(str(path))} {aside}\n"
        restore += f"mkdir -p {_quote(str(path))} && mount --bind {aside} {_quote(str(path))}\n"
    return keep, restore
