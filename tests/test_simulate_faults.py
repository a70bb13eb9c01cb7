"""``tollmesh simulate`` itself under faults: its actors SIGKILLed mid-run, its driver killed and resumed.

Each run is the real command in a process of its own, on a Ray of its own (the command starts
one), so a kill takes down real processes: a budget shard, the ledger writer, an agent host or
the escrow coordinator (Ray restarts them; they rebuild from the ledger), or the driver itself
(``--resume`` then finishes the run from its ledger). Kills land at seeded moments while the
ledger grows. Afterwards every check of the report holds, no escrow is left locked, the
ledger verifies and every call the scenario plans was made; a resumed run's ledger holds the
same events as a run that was never interrupted.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import psutil
import pytest

from ledger import read_events, verify
from mesh.scenario import Scenario
from mesh.sim_progress import save_run
from mesh.simulate import run_simulation

pytestmark = pytest.mark.slow

SCENARIO = dict(
    name="faults", seed=11, messages=8_000, days=2, ticks_per_day=12, shards=2, hosts=2, batch_size=2_000,
    escrow_timeout_s=600.0,
    groups=[
        {"name": "user", "count": 60, "balance_usd": "3.00", "daily_cap_usd": "0.60"},
        {"name": "front", "count": 12, "price_usd": "0.004", "balance_usd": "1.00", "failure_rate": 0.05,
         "onward": {"to": "back", "probability": 0.4}},
        {"name": "back", "count": 6, "price_usd": "0.001", "failure_rate": 0.05},
    ],
    traffic=[{"source": "user", "target": "front", "pattern": "power_law"},
             {"source": "user", "target": "back", "share": 0.2}],
)
ROLES = {"shard": "ray::BudgetShard", "writer": "ray::LedgerWriterActor", "host": "ray::AgentHost",
         "coordinator": "ray::EscrowCoordinator"}


def scenario_file(tmp_path: Path) -> Path:
    path = tmp_path / "faults.toml"
    lines = [f"{k} = {orjson.dumps(v).decode()}" for k, v in SCENARIO.items() if k not in ("groups", "traffic")]
    for table in ("groups", "traffic"):
        for row in SCENARIO[table]:
            lines.append(f"\n[[{table}]]")
            for key, value in row.items():
                if isinstance(value, dict):
                    lines.append(f"{key} = {{ " + ", ".join(f"{k} = {orjson.dumps(v).decode()}" for k, v in value.items()) + " }")
                else:
                    lines.append(f"{key} = {orjson.dumps(value).decode()}")
    path.write_text("\n".join(lines) + "\n")
    return path


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a Ray of its own, never the tests'
    return subprocess.Popen([sys.executable, "-m", "mesh.cli", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)


def processes_of(parent: subprocess.Popen, title: str) -> list[psutil.Process]:
    """The processes under ``parent`` whose title starts with ``title`` (Ray names its workers so)."""
    found = []
    for child in psutil.Process(parent.pid).children(recursive=True):
        try:
            if child.cmdline() and child.cmdline()[0].startswith(title):
                found.append(child)
        except psutil.Error:
            continue
    return found


def ledger_bytes(run_dir: Path) -> int:
    """The bytes of the run's ledger files (a partitioned ledger's: every partition's)."""
    return sum(p.stat().st_size for p in run_dir.glob("**/toll_ledger*.jsonl")) if run_dir.exists() else 0


def wait_for_ledger(run: subprocess.Popen, run_dir: Path, at_least_bytes: int, timeout_s: float = 120.0) -> bool:
    """Wait until the ledger holds ``at_least_bytes``; False if the run ended first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and run.poll() is None:
        if ledger_bytes(run_dir) >= at_least_bytes:
            return True
        time.sleep(0.02)
    return False


def kill_during(run: subprocess.Popen, run_dir: Path, schedule: list[tuple[str, int]], rng: random.Random) -> list[str]:
    """SIGKILL one process of each role in ``schedule`` once the ledger holds that many bytes; what was killed."""
    killed = []
    for role, at_bytes in schedule:
        if not wait_for_ledger(run, run_dir, at_bytes):
            break
        victims = processes_of(run, ROLES[role])
        if victims:
            victim = rng.choice(victims)
            victim.send_signal(signal.SIGKILL)
            killed.append(f"{role}:{victim.pid}")
    return killed


def finish(run: subprocess.Popen, timeout_s: float = 300.0) -> tuple[int, str, str]:
    out, err = run.communicate(timeout=timeout_s)
    return run.returncode, out.decode(), err.decode()


def assert_run_whole(run_dir: Path, report: dict, messages: int) -> None:
    """Every check true, nothing locked, the ledger verifies, every planned call made exactly once."""
    checks = report["checks"]
    assert checks["problems"] == [], checks["problems"]
    assert all(checks[k] is not False for k in checks if k != "problems"), checks
    result = verify(run_dir / "toll_ledger.jsonl")
    assert result.ok and result.open_escrows == 0, [str(p) for p in result.problems[:5]]
    assert not [w for w in result.warnings if "has no credit of it yet" in w.message]  # a partitioned ledger's: all credited
    assert report["memory"]["open_escrows_at_end"] == 0
    events = read_events(run_dir / "toll_ledger.jsonl").events
    driver_calls = {e["task_id"] for e in events if e["kind"] in ("lock", "reject") and ">" not in e["task_id"]}
    assert driver_calls == {f"m{n}" for n in range(messages)}
    assert sum(report["outcomes"]["driver_calls"].values()) == messages


def toll_events(run_dir: Path) -> list[tuple]:
    """The ledger's state changes without what differs between runs (seq, wall time, hash, recover events)."""
    keep = ("kind", "task_id", "source_agent", "target_agent", "amount_micros", "status", "reason", "ts_us")
    events = read_events(run_dir / "toll_ledger.jsonl").events
    return sorted(tuple(e.get(k) for k in keep) for e in events if e["kind"] != "recover")


@pytest.mark.parametrize("seed, schedule, partitioned", [
    (1, ["shard", "writer", "shard"], False),
    (3, ["host", "coordinator"], False),
    (5, ["coordinator", "shard", "host", "writer"], False),
    (7, ["writer", "coordinator", "shard", "writer"], True),  # a ledger partition and writer per shard
])
def test_simulate_survives_its_actors_killed(tmp_path, seed, schedule, partitioned):
    rng = random.Random(seed)
    out = tmp_path / "out"
    run = start(["simulate", "--config", str(scenario_file(tmp_path)), "--no-progress", "--no-plots", "--json",
                 "--out", str(out), *(["--partitioned-ledger"] if partitioned else [])], tmp_path)
    run_dir = out / "faults-seed11"
    moments = sorted(rng.randrange(40_000, 7_000_000) for _ in schedule)
    killed = kill_during(run, run_dir, list(zip(schedule, moments)), rng)
    code, stdout, stderr = finish(run)
    assert code == 0, stderr[-3000:]
    assert killed, "the run ended before any kill: make it longer"
    report = orjson.loads(stdout)  # stdout holds the report only, whatever Ray printed about the dead
    assert report == orjson.loads((run_dir / "report.json").read_bytes())
    assert_run_whole(run_dir, report, SCENARIO["messages"])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, ray_session) -> list[tuple]:
    """The events of the scenario run once, whole, on the tests' Ray."""
    run_dir = tmp_path_factory.mktemp("whole") / "run"
    report = run_simulation(Scenario(**SCENARIO), run_dir, plots=False)
    assert report["checks"]["problems"] == []
    return toll_events(run_dir)


@pytest.mark.parametrize("how, at_bytes", [("SIGKILL", 30_000), ("SIGKILL", 5_000_000), ("SIGINT", 2_000_000)])
def test_a_run_resumed_after_its_driver_died_is_the_uninterrupted_run(tmp_path, uninterrupted, how, at_bytes):
    out = tmp_path / "out"
    run = start(["simulate", "--config", str(scenario_file(tmp_path)), "--no-progress", "--no-plots", "--json",
                 "--out", str(out)], tmp_path)
    run_dir = out / "faults-seed11"
    assert wait_for_ledger(run, run_dir, at_bytes), "the run ended before the kill"
    run.send_signal(getattr(signal, how))  # the driver alone: its Ray must end with it
    code, _, _ = finish(run)
    assert code == (130 if how == "SIGINT" else -9)
    wait_for_ray_gone(run)
    resumed = start(["simulate", "--resume", str(run_dir), "--no-progress", "--no-plots", "--json"], tmp_path)
    code, stdout, stderr = finish(resumed)
    assert code == 0, stderr[-3000:]
    report = orjson.loads(stdout)
    assert report["run"]["resumed_from_tick"] is not None and not report["run"]["interrupted"]
    assert_run_whole(run_dir, report, SCENARIO["messages"])
    assert toll_events(run_dir) == uninterrupted


def wait_for_ray_gone(run: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """A killed driver's Ray ends with it (Ray's fate sharing): its raylet, its GCS and the mesh's
    actors, all that could touch the run directory. Wait until they have; then end what lingers
    (Ray's dashboard and runtime-env agents take their time), so the test leaves nothing behind."""
    deadline = time.monotonic() + timeout_s
    while True:
        alive = [p for p in _session(run.pid) if _matters(p)]
        if not alive:
            break
        assert time.monotonic() < deadline, f"the killed run's processes outlived it: {alive}"
        time.sleep(0.2)
    for process in _session(run.pid):
        process.kill()


def _session(session_id: int) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) == session_id:
                found.append(process)
        except OSError:
            continue
    return found


def _matters(process: psutil.Process) -> bool:
    try:
        title = " ".join(process.cmdline())
    except psutil.Error:
        return False
    return "raylet" in title or "gcs_server" in title or any(title.startswith(t) for t in ROLES.values())


def test_resume_refuses_what_it_cannot_resume(tmp_path):
    from mesh.cli import main

    assert main(["simulate", "--resume", str(tmp_path)]) == 2  # no run here
    save_run(tmp_path, Scenario(**SCENARIO))
    (tmp_path / "report.json").write_bytes(orjson.dumps({"run": {"interrupted": False}}))
    assert main(["simulate", "--resume", str(tmp_path)]) == 2  # a finished run
    assert main(["simulate", "--resume", str(tmp_path), "--messages", "5"]) == 2  # its own scenario only
