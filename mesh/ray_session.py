"""Which Ray a mesh runs on: a local one of its own, or the cluster it was told to join.

A mesh starts a Ray of its own (``address="local"``) unless it is given an address
(``address=``, ``--address``, or ``RAY_ADDRESS``): a Ray another process happens to run on
the machine is never joined by surprise. :func:`connect` says which it did
(:attr:`RaySession.summary`, one line), checks a given address answers before handing it to
Ray (which would otherwise retry for minutes), and can start Ray's dashboard with the
metrics it shows. :func:`explain_ray_error` turns Ray's errors (a cluster that went away, a
refused connection) into one sentence for the command line.

>>> RaySession(started=True, address="127.0.0.1:6379").summary
'ray: started a local Ray of its own (127.0.0.1:6379)'
>>> RaySession(started=False, address="10.0.0.5:6379", joined="10.0.0.5:6379").summary
'ray: joined the Ray cluster at 10.0.0.5:6379'
>>> explain_ray_error(ConnectionError("Could not find any running Ray instance."))
'could not reach Ray: Could not find any running Ray instance.'
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

from mesh.core.errors import RayUnavailableError

__all__ = ["ClusterWatch", "RaySession", "RayUnavailableError", "connect", "explain_ray_error", "probe"]

#: How long a given address may take to accept a TCP connection before it is called unreachable.
PROBE_TIMEOUT_S = 5.0
#: How often Ray's metrics agent reports what the mesh's actors count (Ray's default: 10 s).
DASHBOARD_METRICS_INTERVAL_MS = 2_000


@dataclass(frozen=True)
class RaySession:
    """The Ray a mesh uses: ``started`` by it (and shut down with it) or ``joined`` at an address."""

    started: bool
    address: str
    joined: Optional[str] = None  # the address it was told to join
    dashboard_url: Optional[str] = None
    metrics_url: Optional[str] = None  # the Prometheus endpoint of this node's metrics agent

    @property
    def summary(self) -> str:
        """One line: which Ray the run uses."""
        if self.started:
            return f"ray: started a local Ray of its own ({self.address})"
        if self.joined is not None:
            return f"ray: joined the Ray cluster at {self.joined}"
        return f"ray: uses the Ray this process had already started ({self.address})"


def connect(address: Optional[str], namespace: str, *, dashboard: bool = False) -> RaySession:
    """Start a local Ray, or join ``address`` (else ``RAY_ADDRESS``); the :class:`RaySession`.

    ``dashboard=True`` starts Ray's dashboard with a local Ray (a cluster's dashboard is the
    cluster's own). A Ray this process already initialized is used as it is.
    """
    import ray

    if ray.is_initialized():
        return _describe(ray, started=False, joined=None)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = address or os.environ.get("RAY_ADDRESS") or None
    try:
        if address:
            probe(address)
            ray.init(address=address, namespace=namespace, log_to_driver=False)
            return _describe(ray, started=False, joined=address)
        options = {"include_dashboard": False}
        if dashboard:
            options = {"include_dashboard": True, "dashboard_port": _free_port(),
                       "_metrics_export_port": _free_port(),
                       "_system_config": {"metrics_report_interval_ms": DASHBOARD_METRICS_INTERVAL_MS}}
        # "local": a Ray of our own, never one another process happens to run on this machine
        ray.init(address="local", namespace=namespace, log_to_driver=False, **options)
    except RayUnavailableError:
        raise
    except Exception as exc:  # ray.init raises ConnectionError, RuntimeError, ValueError... for a bad address
        message = explain_ray_error(exc) or f"Ray could not start or connect: {type(exc).__name__}: {_first_line(exc)}"
        raise RayUnavailableError(f"{message}{_given(address)}{_auth_hint(address)}") from None
    return _describe(ray, started=True, joined=None)


class ClusterWatch:
    """A daemon thread that checks the Ray cluster's GCS still answers (a TCP connection every
    ``interval_s``); after ``lost_after_s`` without an answer it calls ``on_lost(message)``.

    Ray's own driver, when its cluster goes away, waits about a minute and then ends the process
    with no word on stderr (or raises ``ActorDiedError ... Owner's node has crashed``): the
    command line uses this to say so at once, in one line. Stop it before shutting Ray down.
    """

    def __init__(self, session: RaySession, on_lost: Callable[[str], None], *, interval_s: float = 1.0,
                 lost_after_s: float = 10.0) -> None:
        self.session = session
        self._on_lost = on_lost
        self._interval_s = interval_s
        self._lost_after_s = lost_after_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="tollmesh-ray-watch", daemon=True)

    def start(self) -> ClusterWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self._interval_s + PROBE_TIMEOUT_S)

    def _watch(self) -> None:
        host, _, port = self.session.address.rpartition(":")
        last_answer = time.monotonic()
        while not self._stop.wait(self._interval_s):
            try:
                socket.create_connection((host, int(port)), timeout=min(PROBE_TIMEOUT_S, self._lost_after_s)).close()
                last_answer = time.monotonic()
            except OSError:
                if time.monotonic() - last_answer >= self._lost_after_s and not self._stop.is_set():
                    which = (f"the Ray cluster at {self.session.joined}" if self.session.joined
                             else "the local Ray it started" if self.session.started else "the Ray cluster")
                    self._on_lost(f"{which} went away mid-run: its GCS ({self.session.address}) has not answered for "
                                  f"{self._lost_after_s:g} s")
                    return


def probe(address: str) -> None:
    """Raise :class:`RayUnavailableError` unless ``host:port`` accepts a TCP connection (other forms:
    ``auto``, ``ray://...``, are left to Ray)."""
    host, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit():
        return
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=PROBE_TIMEOUT_S).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        if isinstance(exc, socket.timeout):
            reason = f"no answer within {PROBE_TIMEOUT_S:g} s"
        raise RayUnavailableError(f"cannot reach a Ray cluster at {address}: {reason.lower()}"
                                  " (is it running? start one with `ray start --head`, or drop the address"
                                  " to start a local Ray)") from None


def explain_ray_error(exc: BaseException) -> Optional[str]:
    """One sentence for an error Ray raised (None: not one of Ray's)."""
    from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError, RayError

    first = _first_line(exc)
    if isinstance(exc, ActorDiedError) and ("node has crashed" in str(exc) or "Owner" in str(exc)):
        return ("the Ray cluster went away mid-run (an actor's node or owner died: "
                f"{type(exc).__name__}); nothing more can be sent")
    if isinstance(exc, (ActorDiedError, ActorUnavailableError)):
        return f"an actor of the mesh died and did not come back ({type(exc).__name__}): {_short(first)}"
    if isinstance(exc, GetTimeoutError):
        return f"Ray did not answer in time: {_short(first)}"
    if isinstance(exc, RayError):
        return f"Ray failed: {type(exc).__name__}: {_short(first)}"
    if isinstance(exc, ConnectionError):
        return f"could not reach Ray: {_short(first)}"
    return None


def _describe(ray: object, *, started: bool, joined: Optional[str]) -> RaySession:
    context = ray.get_runtime_context()  # type: ignore[attr-defined]
    address = context.gcs_address
    dashboard_url = getattr(ray, "_private").worker.get_dashboard_url() or None  # type: ignore[attr-defined]
    if dashboard_url and "://" not in dashboard_url:
        dashboard_url = f"http://{dashboard_url}"
    node = getattr(ray, "_private").worker.global_worker.node  # type: ignore[attr-defined]
    port = getattr(node, "metrics_export_port", None)
    metrics_url = f"http://{node.node_ip_address}:{port}/metrics" if dashboard_url and port else None
    return RaySession(started=started, address=address, joined=joined, dashboard_url=dashboard_url,
                      metrics_url=metrics_url)


def _auth_hint(address: Optional[str]) -> str:
    """Ray joins an explicit address without its token unless RAY_AUTH_MODE=token says so (Ray 2.5x)."""
    if not address or os.environ.get("RAY_AUTH_MODE") is not None:
        return ""
    from pathlib import Path

    if not (Path.home() / ".ray" / "auth_token").is_file():
        return ""
    return "; if that cluster uses token authentication (`ray start` turns it on), set RAY_AUTH_MODE=token"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return _short(text.splitlines()[0]) if text else type(exc).__name__


def _given(address: Optional[str]) -> str:
    return f" (address {address})" if address else ""


def _short(text: str) -> str:
    return text if len(text) <= 200 else text[:197] + "..."


def _free_port() -> int:
    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        return probe_socket.getsockname()[1]
