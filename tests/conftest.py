"""Shared fixtures: a ledger in a temp dir, a manual clock, booth factories, hypothesis profiles."""

from __future__ import annotations

import os
import socket
from itertools import count
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, settings

from mesh import ManualClock, Tollbooth, TollboothConfig, reset_tollbooth, reset_usage

settings.register_profile(
    "default", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("quick", max_examples=30, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

START_S = 1_767_225_600.0  # 2026-01-01T00:00:00Z


@pytest.fixture(autouse=True)
def _clean_process_state(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.delenv("TOLLBOOTH_PAPER_MODE", raising=False)
    reset_tollbooth()
    reset_usage()
    yield
    reset_tollbooth()
    reset_usage()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def ray_session() -> Any:
    """One local Ray of its own for the whole test session (never another process's): 2 CPUs, no dashboard."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    tests_dir = str(Path(__file__).parent)  # workers import the agent classes the tests define
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (tests_dir, os.environ.get("PYTHONPATH")) if p)
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, namespace="tollmesh-tests", log_to_driver=False,
             _metrics_export_port=_free_port())
    yield ray
    ray.shutdown()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START_S)


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    return tmp_path / "toll_ledger.jsonl"


@pytest.fixture
def make_booth(ledger_path: Path, clock: ManualClock) -> Callable[..., Tollbooth]:
    booths: list[Tollbooth] = []

    def make(**overrides: Any) -> Tollbooth:
        options: dict[str, Any] = {"ledger_path": ledger_path, "paper_mode": False}
        options.update(overrides)
        booth = Tollbooth(TollboothConfig(**options), clock=clock)
        booths.append(booth)
        return booth

    yield make
    for booth in booths:
        booth.close()


_mesh_names = count()


@pytest.fixture
def make_mesh(ray_session, tmp_path: Path) -> Callable[..., Any]:
    from mesh import Mesh, MeshConfig

    meshes: list = []

    def make(**options: Any) -> Any:
        options.setdefault("name", f"test{next(_mesh_names)}-{os.getpid()}")
        options.setdefault("out_dir", tmp_path / options["name"])
        options.setdefault("shards", 2)
        options.setdefault("hosts_per_group", 1)
        options.setdefault("metrics_enabled", False)
        mesh = Mesh(MeshConfig(**options))
        meshes.append(mesh)
        return mesh

    yield make
    for mesh in meshes:
        mesh.shutdown()
