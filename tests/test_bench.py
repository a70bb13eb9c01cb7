"""``tollmesh bench``: its options, its arithmetic, and the structure and consistency of its report.

No test here asserts a timing: the runs are tiny, and what is checked is that the figures agree
with each other (a ratio is its rate over the seed's, the roles add up to the total, the ceiling
follows its formula, the outcomes are those the messages were built to have).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from benchmarks import agents, booth, figures, processes
from benchmarks.plan import build_parser, make_plan
from benchmarks.report import format_table, readme_table
from benchmarks.run import finish, new_report, _booths
from benchmarks.seed import seed_installed
from mesh.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]


# -- options --------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["--shards", "0"], ["--shards", "two"], ["--shards", ","], ["--agents", "1000001"], ["--batch", "100001"],
    ["--contention", "1.5"], ["--failure-rate", "-0.1"], ["--concurrency", "0"], ["--cores", "0"],
])
def test_a_bad_option_is_an_argparse_error(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["bench", *argv])
    assert exit_info.value.code == 2
    assert argv[0] in capsys.readouterr().err


def test_the_plan_takes_the_sweeps_given_and_centres_on_them() -> None:
    plan = make_plan(build_parser().parse_args(["--shards", "4,1,2,2", "--batch", "500,50", "--agents", "30,20"]))
    assert plan.sweeps["shards"] == (1, 2, 4)
    assert (plan.centre.shards, plan.centre.batch, plan.centre.agents) == (2, 500, 20)
    quick = make_plan(build_parser().parse_args(["--quick"]))
    full = make_plan(build_parser().parse_args([]))
    assert quick.messages < full.messages and max(full.sweeps["agents"]) == 1_000_000


def test_readme_of_a_missing_file_is_exit_2(tmp_path: Path) -> None:
    assert cli_main(["bench", "--readme", str(tmp_path / "none.json")]) == 2


# -- arithmetic -----------------------------------------------------------------------------


@given(st.dictionaries(st.sampled_from(processes.ROLES), st.floats(0.001, 1_000), min_size=1),
       st.integers(1, 1_000_000))
def test_cpu_per_role_sums_to_the_total_and_the_ceiling_follows_its_formula(seconds: dict, lifecycles: int) -> None:
    split = figures.cpu_split(seconds.items(), lifecycles)
    assert split["total"] == pytest.approx(sum(v for k, v in split.items() if k != "total"), abs=1e-6)
    single = {role: split[role] for role in ("driver", "coordinator") if role in split}
    ceiling = figures.modeled_ceiling(split, single)
    _check_ceiling(split, single, ceiling)


def _check_ceiling(cpu_us: dict[str, float], single_us: dict[str, float], ceiling: dict[str, Any]) -> None:
    busiest = max(single_us.values(), default=0.0)
    limit = 1e6 / busiest if busiest > 0 else math.inf
    for cores, value in ceiling["by_cores"].items():
        expected = min(int(cores) * 1e6 / cpu_us["total"] if cpu_us["total"] > 0 else math.inf, limit)
        assert value is None if math.isinf(expected) else value == pytest.approx(expected, rel=1e-3, abs=0.1)
    if busiest > 0:
        assert ceiling["busiest_cpu_us"] == busiest
        assert single_us[ceiling["busiest_one_of_a_kind"]] == busiest
        assert ceiling["limit_lifecycles_per_s"] == pytest.approx(limit, abs=0.1)


def test_latency_percentiles_are_nearest_rank() -> None:
    assert figures.latency_ms([5_000_000]) == {"p50": 5.0, "p99": 5.0, "max": 5.0, "samples": 1}
    lat = figures.latency_ms(list(range(1_000_000, 101_000_000, 1_000_000)))  # 1..100 ms
    assert (lat["p50"], lat["p99"], lat["max"]) == (50.0, 99.0, 100.0)


def test_process_roles_come_from_ray_titles() -> None:
    assert processes.role_of_title("ray::BudgetShard") == "shards"
    assert processes.role_of_title("ray::LedgerWriterActor.append") == "writer"
    assert processes.role_of_title("ray::ParquetSink") == "parquet_sink"
    assert processes.role_of_title("ray::AgentHost.deliver") == "hosts"
    assert processes.role_of_title("ray::IDLE") == "ray" == processes.role_of_title("gcs_server")


@given(st.integers(1, 400), st.floats(0, 0.5), st.floats(0, 0.5), st.integers(0, 10))
def test_messages_carry_the_outcomes_they_were_built_for(count: int, failure: float, hot: float, seed: int) -> None:
    sources = agents.hot_ids("h", 3)
    batch = agents.make_messages(agents.agent_ids(10), count, seed=seed, failure_rate=failure, hot_share=hot,
                                 hot_sources=sources)
    assert sum(batch.expected.values()) == count == len(batch.messages)
    assert batch.expected["refunded:handler_error"] == sum(m.payload < 0 for m in batch.messages)
    hot_calls = [sum(m.source == s for m in batch.messages) for s in sources]
    assert batch.expected["failed:over_daily_cap"] == sum(max(0, n - agents.HOT_CAP_CALLS) for n in hot_calls)
    assert all(m.source != m.target for m in batch.messages)


# -- the booths' report (in process, no Ray) -----------------------------------------------


def _check_run(run: dict[str, Any], seed_rate: float | None) -> None:
    # rates are written to 0.1 (benchmarks.figures.rate): a slow run (14.3/s) is off by up to 0.05
    assert run["lifecycles_per_s"] == pytest.approx(run["lifecycles"] / run["elapsed_s"], rel=1e-3, abs=0.05)
    if seed_rate:
        assert run["x_seed"] == pytest.approx(run["lifecycles_per_s"] / seed_rate, abs=6e-4)
    cpu = run["cpu_us"]
    assert cpu["total"] == pytest.approx(sum(v for k, v in cpu.items() if k != "total"), abs=0.01)
    assert set(cpu) - {"total"} <= set(processes.ROLES)
    assert sum(p["cpu_us"] for p in run["processes"]) == pytest.approx(cpu["total"], abs=0.01 * len(run["processes"]) + 0.01)
    _check_ceiling(cpu, run["one_of_a_kind_cpu_us"], run["ceiling"])
    lat = run["latency_ms"]
    assert lat["p50"] <= lat["p99"] <= lat["max"]


def test_the_booths_report_is_consistent(tmp_path: Path) -> None:
    plan = make_plan(build_parser().parse_args(["--lifecycles", "300"]))
    report = new_report(plan)
    _booths(plan, tmp_path, report, log=lambda line: None)
    finish(report)
    kinds = [run["kind"] for run in report["runs"]]
    assert kinds == (["seed", "booth"] if seed_installed() else ["booth"])
    seed_rate = report["seed"]["lifecycles_per_s"] if report["seed"] else None
    for run in report["runs"]:
        _check_run(run, seed_rate)
        assert set(run["cpu_us"]) == {"driver", "total"} and run["ceiling"]["busiest_one_of_a_kind"] == "driver"
        assert run["outcomes"]["ledger_lines"] >= 2 * 300 and run["latency_ms"]["samples"] == 300
    if report["seed"]:
        assert report["seed"]["x_seed"] == 1.0 and not report["problems"]
    table, markdown = format_table(report), readme_table(report)
    assert all(run["name"][:34] in table and run["name"] in markdown for run in report["runs"])


# -- the whole bench, tiny, in a process of its own (it starts a Ray of its own) ------------


@pytest.mark.slow
def test_the_whole_bench_tiny_writes_a_consistent_report(tmp_path: Path) -> None:
    json_path, png_path = tmp_path / "bench.json", tmp_path / "bench.png"
    argv = ["--lifecycles", "200", "--calls", "20", "--messages", "300", "--point-messages", "200",
            "--shards", "2", "--batch", "50,150", "--agents", "40", "--concurrency", "4", "--contention", "0.9",
            "--failure-rate", "0.1", "--cores", "2", "--json", str(json_path), "--plot", str(png_path)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run([sys.executable, "-m", "benchmarks", *argv], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == (0 if seed_installed() else 1), done.stdout + done.stderr[-3_000:]
    report = orjson.loads(json_path.read_bytes())
    assert png_path.stat().st_size > 10_000
    kinds = [run["kind"] for run in report["runs"]]
    assert kinds[-4:] == ["booth", "mesh_call", "mesh_send_columns", "mesh_send"]
    seed_rate = report["seed"]["lifecycles_per_s"] if report["seed"] else None
    points = [p for sweep in report["sweeps"].values() for p in sweep]
    assert {name for name, sweep in report["sweeps"].items() if sweep} == set(report["plan"]["sweeps"])
    for run in report["runs"] + points:
        _check_run(run, seed_rate)
    for run in report["runs"][-3:] + points:
        assert {"coordinator", "shards", "writer", "hosts", "ray", "driver"} <= set(run["cpu_us"])
        assert "coordinator" in run["one_of_a_kind_cpu_us"]
    for point in points:
        if "expected" in point:
            assert point["outcomes"] == point["expected"]
    (contention,) = report["sweeps"]["contention"]
    assert contention["outcomes"]["failed:over_daily_cap"] == 180 - agents.HOT_SOURCES * agents.HOT_CAP_CALLS
    (failing,) = report["sweeps"]["failure_rate"]
    assert failing["outcomes"]["refunded:handler_error"] == 20
    assert [p["value"] for p in report["sweeps"]["batch"]] == [50, 150]
    assert [p["layout"]["batch"] for p in report["sweeps"]["batch"]] == [50, 150]
    markdown = subprocess.run([sys.executable, "-m", "benchmarks", "--readme", str(json_path)], env=env,
                              capture_output=True, text=True, check=True).stdout
    assert markdown.count("\n| ") >= len(report["runs"]) + 1 and "Mesh.send" in markdown


def test_the_seal_bench_measures_every_digest_format_and_way(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``python -m benchmarks.ledger_seal``, tiny: every row is there, and the bytes agree with the formats."""
    from benchmarks import ledger_seal

    assert ledger_seal.main(["--events", "300", "--repeats", "1", "--out", str(tmp_path)]) == 0
    report = orjson.loads((tmp_path / "ledger_seal.json").read_bytes())
    assert {"sha256", "blake2b"} <= set(report["hash"]["ns_per_event"])
    for row in report["hash"]["ns_per_event"].values():
        assert set(row) == {"chain_per_line", "seal_batch_1", "seal_batch_100", "seal_batch_10000", "merkle_root"}
    writes = {(row["batch"], row["way"], row["format"]): row for row in report["write"]}
    assert len(writes) == 3 * 3 + 2 * 2 * 3
    before, v2 = "v1, every field (before v2)", "v2"
    for batch in ledger_seal.BATCH_SIZES:
        assert writes[(batch, "bodies", v2)]["bytes_per_event"] < writes[(batch, "bodies", before)]["bytes_per_event"]
    assert writes[(100, "append", v2)]["bytes_per_event"] < writes[(1, "append", v2)]["bytes_per_event"]  # one seal a batch
    assert [row["format"] for row in report["read"]] == [before, "v2, batches of 1", "v2, batches of 10,000"]
    assert "saved" in capsys.readouterr().out
