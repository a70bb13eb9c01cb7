"""What a new user meets first (issue 15, items 1, 2, 3 and 8).

- the README's first command on a machine where another process runs a Ray cluster: the run
  starts a Ray of its own and says so; joined to that cluster, a cluster that goes away mid-run
  is one line (exit 3, no traceback), and the run it left is named resumable, with the command;
- old state never comes back silently: defaults never share a ledger between runs, and a
  restore from an existing one is announced;
- custom behaviours from the current folder, even under the ``tollmesh`` script; a module
  without a main guard, or one that fails on import, is named clearly;
- ``tollmesh simulate --dashboard`` starts Ray's dashboard and prints its address, with the
  tollmesh metrics there while the run goes on.

The tests that need a Ray of their own (or a foreign one) run the command in a subprocess.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import orjson
import pytest

from foreign_ray import ForeignRay
from mesh import Agent, Mesh, MeshConfig, Message, Scenario, Simulation, Tollbooth, TollboothConfig
from mesh.core.errors import ConfigError
from mesh.booth.tollbooth import get_tollbooth

WORKTREE = Path(__file__).resolve().parent.parent
TOLLMESH = Path(sys.executable).with_name("tollmesh")  # the console script: its sys.path starts with bin/, not "."
RUN_TIMEOUT_S = 600

# A behaviour that holds the calls of every tick after the first (the driver's calls m100 and
# on) until a file named "go" exists beside it: the run is still going on, its first tick
# counted, for as long as the test needs (no timing assumed).
GATE = '''
import asyncio, os
from mesh import SimAgent

GO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "go")
with open(os.path.join(os.path.dirname(GO), "imports.log"), "a") as log:
    log.write(f"{os.getpid()}\\n")   # who imported this module (no main guard, on purpose)


class Gate(SimAgent):
    def handle(self, ctx, payload):
        first_tick = ctx.task_id[1:].isdigit() and int(ctx.task_id[1:]) < 100
        return payload if first_tick or os.path.exists(GO) else self._wait(payload)

    async def _wait(self, payload):
        while not os.path.exists(GO):
            await asyncio.sleep(0.05)
        return payload
'''

GATE_SCENARIO = '''
name = "gated"
messages = 400
ticks_per_day = 4
shards = 1
hosts = 1
handler_timeout_s = 600
escrow_timeout_s = 900

[[groups]]
name = "user"
count = 4

[[groups]]
name = "gate"
count = 2
price_usd = "0.001"
behaviour = "gatebeh:Gate"

[[traffic]]
source = "user"
target = "gate"
'''


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    env.update(PYTHONPATH=str(WORKTREE), RAY_USAGE_STATS_ENABLED="0", **extra)  # tollmesh only: not ".", not tests/
    return env


def _tollmesh(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOLLMESH), *args], cwd=cwd, env=_env(**env), capture_output=True,
                          text=True, timeout=RUN_TIMEOUT_S)


def _gated_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "gatebeh.py").write_text(GATE)
    (folder / "gated.toml").write_text(GATE_SCENARIO)
    return folder


def _wait_for(condition, what: str, deadline_s: float = 240.0) -> None:
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.25)


# -- 1. the README's first command beside a foreign Ray; a cluster that goes away ------------------


@pytest.mark.slow
def test_first_command_beside_a_foreign_ray_and_a_cluster_that_goes_away(tmp_path):
    folder = _gated_folder(tmp_path)
    with ForeignRay(tmp_path / "foreign-ray") as foreign:
        # the README's first command (small): a Ray of its own, said in one line; the foreign one untouched
        first = _tollmesh(["simulate", "--messages", "2000", "--no-plots", "--no-progress"], folder)
        assert first.returncode == 0, first.stderr[-3000:]
        said = [line for line in first.stderr.splitlines() if line.startswith("tollmesh: ray: ")]
        assert len(said) == 1 and said[0].startswith("tollmesh: ray: started a local Ray of its own"), said
        assert f":{foreign.port})" not in said[0]
        assert "checks:       ledger_verifies yes" in first.stdout and foreign.alive()

        # joined to the foreign cluster, which dies mid-run: one line, exit 3, no traceback
        run_dir = folder / "tollmesh-out" / "gated-seed7"
        args = ["simulate", "--config", "gated.toml", "--no-plots", "--no-progress"]
        joined = subprocess.Popen([sys.executable, str(TOLLMESH), *args, "--address", foreign.address], cwd=folder,
                                  env=_env(RAY_AUTH_MODE="token"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
        try:
            _wait_for(lambda: (run_dir / "toll_ledger.jsonl").is_file() and (run_dir / "toll_ledger.jsonl").stat().st_size > 0
                      or joined.poll() is not None, "the joined run's ledger")
            assert joined.poll() is None, joined.communicate()[1][-3000:]
            foreign.crash()
            out, err = joined.communicate(timeout=RUN_TIMEOUT_S)
        finally:
            if joined.poll() is None:
                joined.kill()
    assert joined.returncode == 3, err[-3000:]
    assert f"tollmesh: ray: joined the Ray cluster at {foreign.address}" in err
    assert f"the Ray cluster at {foreign.address} went away mid-run" in err
    assert f"`tollmesh simulate --resume {run_dir}`" in err and "Traceback" not in err

    # the same command again: the directory's run did not finish; said so, with both ways on
    again = _tollmesh(args, folder)
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert "holds a run that did not finish" in again.stderr and "it is resumable" in again.stderr
    assert f"`tollmesh simulate --resume {run_dir}`" in again.stderr
    assert "`tollmesh simulate --config gated.toml --no-plots --no-progress --overwrite`" in again.stderr
    assert "ray:" not in again.stderr  # refused before any Ray started

    (folder / "go").touch()
    resumed = _tollmesh(["simulate", "--resume", str(run_dir), "--no-plots", "--no-progress"], folder)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "tollmesh: ray: started a local Ray of its own" in resumed.stderr
    assert "restored" in resumed.stderr and str(run_dir / "toll_ledger.jsonl") in resumed.stderr  # announced
    assert "checks:       ledger_verifies yes, replay_matches_live yes" in resumed.stdout


def test_a_bad_address_is_one_line_and_nothing_is_left_behind(tmp_path):
    with __import__("socket").socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = _tollmesh(["simulate", "--messages", "100", "--address", f"127.0.0.1:{port}", "--no-plots"], tmp_path)
    assert result.returncode == 3
    assert f"tollmesh: error: cannot reach a Ray cluster at 127.0.0.1:{port}: connection refused" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not (tmp_path / "tollmesh-out" / "default-seed7").exists()  # no half run left to trip on


# -- 2. old state never comes back silently -----------------------------------------------------


class Translator(Agent):
    price_usd = "0.002"
    prices_usd = {"summarize": "0.01"}

    def handle(self, ctx, payload):
        return payload.upper()

    def summarize(self, ctx, payload):
        return payload[:20]


def _readme_mesh_example() -> tuple[Path, list, object]:
    with Mesh(MeshConfig(name="demo", shards=2, max_daily_toll_per_agent=5)) as mesh:
        mesh.add_agents(Translator, [f"translator-{i}" for i in range(20)])
        results = mesh.send([Message("alice", f"translator-{i % 20}", "hi", method="summarize") for i in range(500)])
        return mesh.config.out_dir, results, mesh.restored


def test_the_mesh_example_twice_starts_fresh_and_a_restore_is_announced(ray_session, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    first_dir, first, restored = _readme_mesh_example()
    assert restored is None and all(r.ok for r in first)  # 500 x $0.01 = the $5 cap
    second_dir, second, restored = _readme_mesh_example()
    assert second_dir != first_dir and restored is None
    assert [r.record.status for r in second] == [r.record.status for r in first]  # not over_daily_cap this time
    assert first_dir.parent == tmp_path / "tollmesh-out" / "mesh"

    caplog.set_level(logging.WARNING, logger="tollmesh")
    with Mesh(MeshConfig(name="demo", shards=2, max_daily_toll_per_agent=5, out_dir=first_dir)) as mesh:  # asked for
        assert mesh.restored["events"] == 1_000 and mesh.restored["agents"] == 1  # 500 locks, 500 releases: alice's
        assert mesh.restored["used_today_micros"] == 5_000_000 and mesh.restored["open_escrows"] == 0
        mesh.add_agents(Translator, ["translator-0"])
        assert mesh.call("alice", "translator-0", "hi", method="summarize").record.reason == "over_daily_cap"
    said = [r.getMessage() for r in caplog.records if "restored" in r.getMessage()]
    assert len(said) == 1 and str(first_dir / "toll_ledger.jsonl") in said[0] and "mesh 'demo'" in said[0]
    with pytest.raises(ConfigError, match="already holds a ledger and restore_from_ledger is False"):
        Mesh(MeshConfig(name="demo", out_dir=first_dir, restore_from_ledger=False))


def test_default_booths_never_share_a_ledger_across_modes_or_runs(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    from mesh import monetize

    @monetize(price_usd=0.01)
    def summarize(text: str) -> str:
        return text[:10]

    summarize("paper call")
    live = Tollbooth(TollboothConfig(paper_mode=False, toll_per_message_usd="0.001"))
    live.charge_sync("t1", "alice", "bob")
    paper_ledger, live_ledger = get_tollbooth().config.ledger_path, live.config.ledger_path
    assert paper_ledger != live_ledger and paper_ledger.parent.name.endswith("-paper") and live_ledger.parent.name.endswith("-live")
    modes = {path: {orjson.loads(line)["mode"] for line in path.read_bytes().splitlines()} for path in (paper_ledger, live_ledger)}
    assert modes == {paper_ledger: {"paper"}, live_ledger: {"live"}}
    assert live.restored is None
    live.close()

    # another process (another run) gets ledgers of its own
    other = subprocess.run([sys.executable, "-c", "from mesh import TollboothConfig; print(TollboothConfig().ledger_path)"],
                           cwd=tmp_path, env=_env(), capture_output=True, text=True, check=True)
    assert Path(other.stdout.strip()) != paper_ledger

    caplog.set_level(logging.WARNING, logger="tollmesh")
    again = Tollbooth(TollboothConfig(paper_mode=False, ledger_path=live_ledger))  # asked for: restored, and said
    assert again.restored == {"from": str(live_ledger), "events": 1, "agents": 1, "balances_total_micros": 0,
                              "open_escrows": 1, "used_today_micros": 1_000}
    assert any(f"tollbooth: restored 1 event(s) from {live_ledger}" in r.getMessage() for r in caplog.records)
    again.close()


# -- 3. behaviours of your own, from the current folder -----------------------------------------

AUDITOR = '''
import os
from mesh import SimAgent, SimulatedFailure

with open("imports.log", "a") as log:      # top-level code, and no main guard: who runs it?
    log.write(f"{os.getpid()}\\n")


class Auditor(SimAgent):
    async def handle(self, ctx, payload):
        u_fail, _, _, _ = self.draws(ctx)
        if u_fail < 0.5:
            raise SimulatedFailure("audit rejected")
        return payload
'''

AUDIT_SCENARIO = '''
name = "audit"
messages = 600
shards = 1
hosts = 2
[[groups]]
name = "user"
count = 10
[[groups]]
name = "auditor"
count = 4
price_usd = "0.01"
behaviour = "mybeh:Auditor"
[[traffic]]
source = "user"
target = "auditor"
'''


def test_a_behaviour_from_the_current_folder_under_the_tollmesh_script(tmp_path):
    (tmp_path / "mybeh.py").write_text(AUDITOR)
    (tmp_path / "audit.toml").write_text(AUDIT_SCENARIO)
    result = _tollmesh(["simulate", "--config", "audit.toml", "--json", "--no-plots"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = orjson.loads(result.stdout)
    assert 150 < report["outcomes"]["by_reason"]["handler_error"] < 450  # about half: the Auditor ran
    assert report["checks"]["ledger_verifies"] and report["checks"]["replay_matches_live"]
    assert len((tmp_path / "imports.log").read_text().split()) == 1  # the driver only: no host ran it again


def _fresh_import(monkeypatch, tmp_path: Path, name: str, source: str) -> None:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])


def _audit_scenario(spec: str) -> Scenario:
    return Scenario(messages=10, groups=[{"name": "user", "count": 2},
                                          {"name": "auditor", "count": 1, "behaviour": spec}],
                    traffic=[{"source": "user", "target": "auditor"}])


def test_a_behaviour_module_that_fails_on_import_is_named_with_its_exception(tmp_path, monkeypatch):
    _fresh_import(monkeypatch, tmp_path, "brokenbeh", """
        from mesh import SimAgent

        RATE = 1 / 0
    """)
    with pytest.raises(ConfigError) as caught:
        Simulation(_audit_scenario("brokenbeh:Auditor"), tmp_path / "run")
    assert str(caught.value) == (f"behaviour='brokenbeh:Auditor': cannot be imported: module 'brokenbeh' raised "
                                 f"ZeroDivisionError: division by zero (at {tmp_path / 'brokenbeh.py'}:4)")
    _fresh_import(monkeypatch, tmp_path, "typobeh", "from mesh import SimAgnet\n")
    with pytest.raises(ConfigError, match=r"module 'typobeh' raised ImportError: cannot import name 'SimAgnet'"):
        Simulation(_audit_scenario("typobeh:Auditor"), tmp_path / "run")
    _fresh_import(monkeypatch, tmp_path, "syntaxbeh", "class Auditor(:\n")
    with pytest.raises(ConfigError, match=r"module 'syntaxbeh' raised SyntaxError: .*syntaxbeh.py:1\)"):
        Simulation(_audit_scenario("syntaxbeh:Auditor"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_behaviour_module_without_a_main_guard_does_not_run_again(tmp_path, monkeypatch):
    _fresh_import(monkeypatch, tmp_path, "noguard", """
        from mesh import Scenario, SimAgent, Simulation

        class Auditor(SimAgent):
            pass

        # meant for `python noguard.py`, but not under `if __name__ == "__main__":`
        Simulation(Scenario(messages=10, groups=[{"name": "user", "count": 2},
                                                 {"name": "auditor", "count": 1, "behaviour": "noguard:Auditor"}],
                            traffic=[{"source": "user", "target": "auditor"}]), "nested").run()
    """)
    with pytest.raises(ConfigError, match=r"behaviour='noguard:Auditor': importing its module starts a simulation: "
                                          r"put that code under `if __name__ == \"__main__\":`"):
        Simulation(_audit_scenario("noguard:Auditor"), tmp_path / "run")
    assert not (tmp_path / "nested").exists() and not (tmp_path / "run").exists()


# -- 8. a live view ---------------------------------------------------------------------------------


def _dashboard_missing() -> str | None:
    """Why Ray's dashboard cannot start in this venv (what ``ray[default]`` adds is missing), or None."""
    import importlib.util

    missing = [m for m in ("aiohttp", "aiohttp_cors", "prometheus_client", "opencensus") if importlib.util.find_spec(m) is None]
    return f"ray[default] is not installed whole (missing: {', '.join(missing)})" if missing else None


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return answer.status, answer.read().decode("utf-8", "replace")


@pytest.mark.slow
def test_simulate_dashboard_starts_it_and_shows_the_metrics_while_the_run_goes_on(tmp_path):
    missing = _dashboard_missing()
    if missing:
        pytest.skip(missing)
    folder = _gated_folder(tmp_path)
    run = subprocess.Popen([sys.executable, str(TOLLMESH), "simulate", "--config", "gated.toml", "--dashboard",
                            "--no-plots", "--no-progress"], cwd=folder, env=_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    seen: list[str] = []
    try:
        line = ""
        while not line.startswith("tollmesh: dashboard: "):
            line = run.stderr.readline()
            assert line or run.poll() is None, "".join(seen)[-3000:]
            seen.append(line)
        dashboard = re.search(r"dashboard: (http://\S+)", line).group(1)
        metrics = re.search(r"raw: (http://\S+/metrics)", line).group(1)
        status, page = _get(dashboard)
        assert status == 200 and "<html" in page.lower()  # Ray's dashboard answers
        found: dict[str, str] = {}

        def counted() -> bool:  # the calls held at the gate are locked: the run is going on
            found["text"] = _get(metrics)[1]
            return re.search(r'^\w*tollmesh_releases_total\{[^}]*mesh="sim-gated', found["text"], re.M) is not None
        _wait_for(counted, "tollmesh_releases_total on the metrics endpoint")
        assert "tollmesh_locks_total" in found["text"] and "tollmesh_batch_latency_ms" in found["text"]
        assert run.poll() is None  # still running: its second tick is held at the gate
    finally:
        (folder / "go").touch()
        try:
            out, err = run.communicate(timeout=RUN_TIMEOUT_S)
        finally:
            if run.poll() is None:
                run.kill()
    assert run.returncode == 0, err[-3000:]
    assert "checks:       ledger_verifies yes" in out
