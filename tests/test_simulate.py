"""``tollmesh simulate`` end to end on the session's Ray: checks, totals, reproducibility, caps, Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import orjson
import pytest

from ledger import read_events, verify
from mesh import ConfigError
from mesh.cli import main
from mesh.core.clock import day_of
from mesh.scenario import Scenario
from mesh.simulate import Simulation, run_simulation
from sim_behaviours import HalfAuditor

SMALL = dict(
    messages=3_000, days=2, ticks_per_day=3, shards=2, hosts=1, batch_size=1_000,
    groups=[
        {"name": "user", "count": 30, "balance_usd": "2.00", "daily_cap_usd": "0.40"},
        {"name": "front", "count": 10, "price_usd": "0.004", "balance_usd": "1.00", "failure_rate": 0.05,
         "onward": {"to": "back", "probability": 0.5}},
        {"name": "back", "count": 5, "price_usd": "0.001", "failure_rate": 0.05,
         "latency_ms": {"distribution": "uniform", "low_ms": 0, "high_ms": 1}},
    ],
    traffic=[{"source": "user", "target": "front", "pattern": "power_law"},
             {"source": "user", "target": "back", "share": 0.2}],
)


def toll_events(run_dir: Path) -> list[tuple]:
    """The ledger's events without what differs between runs (seq, wall time, hash)."""
    keep = ("kind", "task_id", "source_agent", "target_agent", "amount_micros", "status", "reason", "ts_us")
    return sorted(tuple(e.get(k) for k in keep) for e in read_events(run_dir / "toll_ledger.jsonl").events)


def test_a_small_simulation_end_to_end(ray_session, tmp_path):
    report = run_simulation(Scenario(**SMALL), tmp_path / "run")
    assert report["checks"] == {"ledger_verifies": True, "replay_matches_live": True, "conservation_holds": True,
                                "ledger_matches_counters": True, "problems": []}
    run, outcomes = report["run"], report["outcomes"]
    assert run["messages_sent"] == 3_000 and run["ticks"] == 6 and not run["interrupted"]
    # Replay the JSONL here too: its totals are the report's.
    events = read_events(tmp_path / "run" / "toll_ledger.jsonl").events
    released = sum(e["amount_micros"] for e in events if e["kind"] == "release")
    refunded = sum(e["amount_micros"] for e in events if e["kind"] in ("refund", "expire"))
    deposits = sum(e["amount_micros"] for e in events if e["kind"] == "deposit")
    assert outcomes["released_micros"] == released and outcomes["refunded_micros"] == refunded
    assert deposits == (30 * 2 + 10 * 1) * 1_000_000
    assert outcomes["calls"] > 3_000  # the pipeline's onward calls come on top
    assert sum(outcomes["driver_calls"].values()) == 3_000
    assert outcomes["by_reason"]["handler_error"] > 0
    assert verify(tmp_path / "run" / "toll_ledger.jsonl").ok
    files = report["files"]
    assert Path(files["report"]).exists() and list(Path(files["parquet"]).rglob("*.parquet"))
    assert {Path(p).name for p in files["plots"]} >= {"run_ticks.png", "spend_over_time.png"}
    memory = report["memory"]
    assert memory["host_bytes_per_agent"] is not None and memory["shard_bytes_per_open_escrow"] > 0
    assert memory["open_escrows_at_end"] == 0
    assert report["speed"]["round_trip_ms_p50"] <= report["speed"]["round_trip_ms_p99"]


def test_a_seeded_run_is_reproducible(ray_session, tmp_path):
    first = run_simulation(Scenario(**SMALL), tmp_path / "a", plots=False)
    second = run_simulation(Scenario(**SMALL), tmp_path / "b", plots=False)
    run_simulation(Scenario(**{**SMALL, "seed": 8}), tmp_path / "c", plots=False)
    assert toll_events(tmp_path / "a") == toll_events(tmp_path / "b")
    assert toll_events(tmp_path / "a") != toll_events(tmp_path / "c")
    assert first["outcomes"]["by_status"] == second["outcomes"]["by_status"]


def test_caps_and_failures_are_refused_and_refunded(ray_session, tmp_path):
    scenario = Scenario(
        messages=2_000, days=2, ticks_per_day=4, shards=2, hosts=1,
        groups=[{"name": "buyer", "count": 10, "balance_usd": "0.15", "daily_cap_usd": "0.10"},
                {"name": "worker", "count": 4, "price_usd": "0.005", "failure_rate": 0.3}],
        traffic=[{"source": "buyer", "target": "worker"}],
    )
    report = run_simulation(scenario, tmp_path / "caps", plots=False)
    assert all(report["checks"][k] for k in ("ledger_verifies", "replay_matches_live", "conservation_holds"))
    reasons = report["outcomes"]["by_reason"]
    assert reasons["over_daily_cap"] > 0 and reasons["handler_error"] > 0 and reasons["insufficient_funds"] > 0
    assert report["caps"]["agents_capped"] == 10
    events = read_events(tmp_path / "caps" / "toll_ledger.jsonl").events
    spent = defaultdict(int)  # released per buyer and simulated day: never over the cap
    for e in events:
        if e["kind"] == "release":
            spent[(e["source_agent"], day_of(e["ts_us"]))] += e["amount_micros"]
    assert spent and max(spent.values()) <= 100_000
    assert len({day for _, day in spent}) == 2  # caps rolled over: buyers paid on both simulated days
    refunds = [e for e in events if e["kind"] == "refund"]
    assert refunds and all(e["reason"] == "handler_error" for e in refunds)
    assert report["memory"]["open_escrows_at_end"] == 0  # the run ends with nothing locked


def test_with_balances_on_every_agent_has_an_account_and_spends_what_it_earns(ray_session, tmp_path):
    scenario = Scenario(
        messages=400, ticks_per_day=2, shards=2, hosts=1,
        groups=[{"name": "user", "count": 4, "balance_usd": "5"},
                {"name": "broker", "count": 2, "price_usd": "0.01", "onward": {"to": "maker", "probability": 0.5}},  # no balance
                {"name": "maker", "count": 2, "price_usd": "0.004"}],
        traffic=[{"source": "user", "target": "broker"}],
    )
    report = run_simulation(scenario, tmp_path / "run", plots=False)
    reasons = report["outcomes"]["by_reason"]
    assert "unknown_agent" not in reasons
    assert reasons["insufficient_funds"] > 0  # brokers start at 0: their first onward calls are refused...
    events = read_events(tmp_path / "run" / "toll_ledger.jsonl").events
    assert any(e["kind"] == "release" and e["source_agent"].startswith("broker") for e in events)  # ...then they earn
    assert report["checks"]["conservation_holds"] and report["checks"]["replay_matches_live"]


def test_custom_behaviours_from_python(ray_session, tmp_path):
    scenario = Scenario(**{**SMALL, "messages": 600})
    report = Simulation(scenario, tmp_path / "custom", behaviours={"front": HalfAuditor}, plots=False).run()
    assert report["checks"]["replay_matches_live"]
    errors = [e for e in read_events(tmp_path / "custom" / "toll_ledger.jsonl").events
              if e["kind"] == "refund" and e["target_agent"].startswith("front")]
    assert len(errors) > 0.3 * 600 * 0.8  # HalfAuditor fails about half of its calls
    with pytest.raises(ConfigError, match="name no group"):
        Simulation(scenario, tmp_path / "x", behaviours={"nobody": HalfAuditor})
    with pytest.raises(ConfigError, match="must be a subclass of mesh.SimAgent"):
        Simulation(scenario, tmp_path / "x", behaviours={"front": dict})


def test_behaviours_named_in_a_scenario_are_checked_before_anything_starts(tmp_path):
    groups = [dict(g) for g in SMALL["groups"]]
    groups[1]["behaviour"] = "sim_behaviours:HalfAuditor"
    assert Simulation(Scenario(**{**SMALL, "groups": groups}), tmp_path / "ok").behaviours == {"front": HalfAuditor}
    groups[1]["behaviour"] = "no_such_module:Agent"
    with pytest.raises(ConfigError, match="behaviour='no_such_module:Agent': cannot be imported"):
        Simulation(Scenario(**{**SMALL, "groups": groups}), tmp_path / "bad")
    groups[1]["behaviour"] = "collections:OrderedDict"
    with pytest.raises(ConfigError, match="must name a subclass of mesh.SimAgent"):
        Simulation(Scenario(**{**SMALL, "groups": groups}), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_a_run_directory_is_never_overwritten_without_asking(ray_session, tmp_path):
    scenario = Scenario(**{**SMALL, "messages": 200})
    run_simulation(scenario, tmp_path / "run", plots=False)
    before = (tmp_path / "run" / "report.json").read_bytes()
    with pytest.raises(ConfigError, match="already holds a run: choose another, or pass --overwrite"):
        run_simulation(scenario, tmp_path / "run", plots=False)
    assert (tmp_path / "run" / "report.json").read_bytes() == before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds no run: not overwriting it"):
        run_simulation(scenario, tmp_path / "other", overwrite=True, plots=False)
    report = run_simulation(scenario, tmp_path / "run", overwrite=True, plots=False)
    assert report["checks"]["ledger_verifies"]


def test_cli_simulate_json_and_bad_flags(ray_session, tmp_path, capsys):
    scenario = tmp_path / "s.toml"
    scenario.write_text('name = "tiny"\nshards = 2\nhosts = 1\n[[groups]]\nname = "a"\ncount = 6\n'
                        '[[traffic]]\nsource = "a"\ntarget = "a"\n')
    args = ["simulate", "--config", str(scenario), "--messages", "300", "--out", str(tmp_path), "--no-plots"]
    assert main(args + ["--json"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["run"]["messages_sent"] == 300 and report["run"]["run_dir"].endswith("tiny-seed7")
    assert main(args) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(args + ["--days", "0"]) == 2
    assert "days=0.0: Input should be greater than 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(args + ["--fsync", "sometimes"])
    err = capsys.readouterr().err
    assert "--fsync: invalid choice: 'sometimes'" in err and all(p in err for p in ("always", "batch", "never"))


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_the_ledger_verifies(tmp_path):
    """Ctrl-C as a terminal sends it (to the whole process group), on a run with its own local Ray."""
    command = [sys.executable, "-m", "mesh.cli", "simulate", "--messages", "2000000", "--out", str(tmp_path), "--no-plots"]
    env = {**os.environ, "RAY_ADDRESS": ""}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, env=env)
    ledger = tmp_path / "default-seed7" / "toll_ledger.jsonl"

    def written() -> int:  # the ledger's bytes, in every partition
        return sum(path.stat().st_size for path in ledger.parent.rglob("toll_ledger*.jsonl"))

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and written() < 2_000_000:
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 130, err.decode()[-2_000:]
    assert "INTERRUPTED" in out.decode() and "interrupted after tick" in err.decode()
    report = orjson.loads((tmp_path / "default-seed7" / "report.json").read_bytes())
    assert report["run"]["interrupted"] and 0 < report["run"]["messages_sent"] < 2_000_000
    assert report["memory"]["open_escrows_at_end"] == 0
    assert all(report["checks"][k] for k in ("ledger_verifies", "replay_matches_live", "conservation_holds"))
    result = verify(ledger)
    assert result.ok and result.open_escrows == 0
