"""What a new user meets in the first ten minutes (issue 15): the CLI's help, version and errors,
`ledger verify` of a file that is no ledger, output piped to `head`, numbers that agree between
tools, and plots that say what they show."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import orjson
import pyarrow as pa
import pytest

import mesh
from ledger.report import build_report, format_report, read_table
from mesh import Agent, InvalidArgumentError, Tollbooth, TollboothConfig
from mesh.cli import _parser, main
from mesh.core.money import format_usd
from mesh.scenario import Scenario

REPO = Path(__file__).resolve().parent.parent


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def _ledger_with_rejections(path: Path) -> Path:
    """10 calls of $0.10 under a $0.30 cap: t0..t4 locked (t0 and t3 refunded, which gives their room
    back; t1, t2, t4 released), t5..t9 refused (over the cap), on a booth with balances."""
    booth = Tollbooth(TollboothConfig(paper_mode=False, track_balances=True, toll_per_message_usd="0.10",
                                      max_daily_toll_per_agent="0.30", ledger_path=path))
    booth.deposit("alice", "5.00")
    for n in range(10):
        record = booth.charge_sync(f"t{n}", "alice", "bob")
        if record.status.value == "escrow_locked":
            (booth.refund_sync if n % 3 == 0 else booth.release_sync)(f"t{n}")
    booth.close()
    return path


class Once(Agent):
    """An agent for the duplicate-id test (at module level: the mesh's hosts import it)."""

    def handle(self, payload):
        return payload


# -- help, version, python -m mesh -------------------------------------------------------


def test_version_is_the_packages(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert capsys.readouterr().out.strip() == f"tollmesh {version}" == f"tollmesh {mesh.__version__}"


def test_python_dash_m_mesh_runs_the_cli():
    done = subprocess.run([sys.executable, "-m", "mesh", "--version"], capture_output=True, text=True, env=_env(),
                          timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == f"tollmesh {mesh.__version__}", done.stderr


def _every_parser(parser: argparse.ArgumentParser, name: str = "tollmesh"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _every_parser(sub, f"{name} {sub_name}")


def test_every_option_has_help_text():
    missing = [f"{name} {'/'.join(action.option_strings) or action.dest}"
               for name, parser in _every_parser(_parser())
               for action in parser._actions
               if not isinstance(action, argparse._SubParsersAction) and not action.help]
    assert not missing, missing


@pytest.mark.parametrize(("argv", "says"), [
    (["simulate", "--agents", "abc"], "argument --agents: expected a whole number, got 'abc'"),
    (["simulate", "--agents", "0"], "argument --agents: must be at least 1, got 0"),
    (["simulate", "--days", "soon"], "argument --days: expected a number of days such as 3 or 0.5, got 'soon'"),
    (["demo", "--seed", "1.5"], "argument --seed: expected a whole number, got '1.5'"),
    (["ledger", "report", "x", "--top", "ten"], "argument --top: expected a whole number, got 'ten'"),
])
def test_a_bad_number_is_named_plainly(argv, says, capsys):
    with pytest.raises(SystemExit) as done:
        main(argv)
    err = capsys.readouterr().err
    assert done.value.code == 2 and says in err and "_positive_int" not in err and "invalid" not in err


def test_a_misspelled_scenario_field_suggests_the_right_one(tmp_path, capsys):
    config = tmp_path / "economy.toml"
    config.write_text('name = "x"\nmesages = 10\n[[groups]]\nname = "a"\ncount = 2\nprce_usd = "0.01"\n'
                      '[[traffic]]\nsource = "a"\ntarget = "a"\n')
    assert main(["simulate", "--config", str(config), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "mesages=10: no such field: did you mean 'messages'?" in err
    assert "groups.0.prce_usd='0.01': no such field: did you mean 'price_usd'?" in err


def test_the_license_file_is_the_mit_license_pyproject_names():
    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["license"] == {"text": "MIT"}
    assert (REPO / "LICENSE").read_text().startswith("MIT License\n")


# -- ledger verify of what is no ledger; output cut short ---------------------------------


def test_verify_of_a_text_file_says_it_is_no_ledger_and_lists_a_bounded_number_of_lines(tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("".join(f"line {n} of something else\n" for n in range(100_000)))
    assert main(["ledger", "verify", str(text)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{text}: this is not a tollmesh ledger: none of the first 1000 lines is a tollmesh event (a JSON object with v, seq and kind)"
    assert len(out) <= 6 and out[-1] == "INTEGRITY: NOT A TOLLMESH LEDGER"
    assert re.fullmatch(r"\.\.\. and 997 more problem\(s\) \(--max-problems 0 lists them all\)", out[-2])
    assert main(["ledger", "verify", str(text), "--json"]) == 1
    result = orjson.loads(capsys.readouterr().out)
    assert result["not_a_ledger"].startswith("this is not a tollmesh ledger") and not result["ok"]
    assert result["problem_count"] == 1_000 and len(result["problems"]) == 20


def test_verify_names_a_seed_ledger_and_bounds_a_tampered_ledgers_problems(tmp_path, capsys):
    seed = tmp_path / "seed.jsonl"
    seed.write_text('{"task_id": "t1", "source_agent": "a", "target_agent": "b", "amount_usd": 0.001, "status": "released"}\n')
    assert main(["ledger", "verify", str(seed)]) == 1
    assert "look like a nano-empire-tollbooth (seed) ledger" in capsys.readouterr().out
    path = tmp_path / "l.jsonl"
    booth = Tollbooth(TollboothConfig(paper_mode=True, ledger_path=path))
    for n in range(60):
        booth.charge_sync(f"t{n}", "a", "b")
    booth.close()
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(line.replace(b'"source_agent":"a"', b'"source_agent":"z"') for line in lines))
    assert main(["ledger", "verify", str(path), "--max-problems", "5"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("PROBLEM: ") for line in out) == 5 and "this is not" not in out[0]
    assert re.fullmatch(r"\.\.\. and [\d,]+ more problem\(s\) \(--max-problems 0 lists them all\)", out[-2])
    assert out[-1].startswith("INTEGRITY: ") and out[-1].endswith(" PROBLEM(S)")


@pytest.mark.parametrize(("argv", "own_code"), [(["ledger", "verify", "--max-problems", "0"], 1), (["ledger", "report"], 0)])
def test_output_piped_to_head_ends_without_a_traceback(tmp_path, argv, own_code):
    text = tmp_path / "notes.txt"
    text.write_text("".join(f"line {n}\n" for n in range(50_000)))
    ledger = _ledger_with_rejections(tmp_path / "l.jsonl") if argv[1] == "report" else text
    command = [sys.executable, "-m", "mesh", *argv, str(ledger)]
    shell = " ".join(f"'{part}'" for part in command) + " | head -1"
    done = subprocess.run(["bash", "-o", "pipefail", "-c", shell], capture_output=True, text=True, env=_env(), timeout=120)
    assert len(done.stdout.splitlines()) == 1
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr
    assert done.returncode in (own_code, 141)  # 141: it saw its reader go (as a process SIGPIPE ends)


# -- numbers that agree ---------------------------------------------------------------------


def test_ledger_report_counts_every_call_and_says_what_each_count_is(tmp_path, capsys):
    report = build_report(read_table(_ledger_with_rejections(tmp_path / "l.jsonl")))
    assert (report["calls"], report["locked_calls"], report["rejected_calls"]) == (10, 5, 5)
    assert {s: v["tasks"] for s, v in report["by_status"].items()} == {"failed": 5, "refunded": 2, "released": 3}
    text = format_report(report)
    assert "calls:         10 (5 locked, 5 rejected before a lock)" in text
    assert "deposits:      $5.000000" in text and "refund rate 40.00% of locked calls" in text


def test_thousands_separators_in_every_text_report(tmp_path, capsys):
    path = tmp_path / "l.jsonl"
    with Tollbooth(TollboothConfig(paper_mode=True, toll_per_message_usd="1", max_daily_toll_per_agent=10_000,
                                   ledger_path=path)) as booth:
        for n in range(1_200):
            booth.charge_sync(f"t{n}", "a", "b")
    assert main(["ledger", "report", str(path)]) == 0
    out = capsys.readouterr().out
    assert "events:        1,200 " in out and "calls:         1,200 (1,200 locked, 0 rejected before a lock)" in out
    assert "spend:         $1,200.000000" in out and "a->b 1,200" in out
    assert main(["demo", "--agents", "5", "--messages", "2000", "--out", str(tmp_path / "demo")]) == 0
    assert "messages:          2,000" in capsys.readouterr().out


def test_demo_top_payers_are_what_they_paid_as_ledger_report_counts_it(tmp_path, capsys):
    assert main(["demo", "--agents", "6", "--messages", "3000", "--out", str(tmp_path), "--json"]) == 0
    demo = orjson.loads(capsys.readouterr().out)
    ledger = build_report(read_table(demo["ledger"]), top=3)
    assert demo["top_payers"] == [[r["agent"], format_usd(r["paid_micros"])] for r in ledger["top_payers"]]
    assert all(not usd.startswith("-") for _, usd in demo["top_payers"] + demo["top_earners"])


def test_the_docs_polars_example_counts_calls_as_ledger_report_does(tmp_path, monkeypatch):
    pl = pytest.importorskip("polars")
    from ledger.export import compact

    path = _ledger_with_rejections(tmp_path / "l.jsonl")
    compact(path, tmp_path / "parquet")
    readme = (REPO / "docs" / "ledger.md").read_text()  # the README points there for reading the ledger
    snippet = re.search(r"^events = pl\.read_parquet.*?\n(?:.*\n){2}", readme, re.M).group(0)
    scope: dict = {"pl": pl}
    monkeypatch.chdir(tmp_path)  # the README reads parquet/ from the current folder
    exec(snippet.replace("tolls.sort", "result = tolls.sort"), scope)
    counted = dict(scope["result"].select(pl.col("status").cast(pl.Utf8), "len").iter_rows())
    assert counted == {s: v["tasks"] for s, v in build_report(read_table(path))["by_status"].items()}
    assert scope["events"].filter(pl.col("kind") == "deposit")["status"].cast(pl.Utf8).to_list() == ["released"]


# -- plots -----------------------------------------------------------------------------------


def _drawn(monkeypatch) -> list:
    """What each chart's figure said, captured as it is saved."""
    import ledger.plot

    seen: list = []
    real = ledger.plot._save

    def save(plt, fig, path, about=""):
        out = real(plt, fig, path, about)
        seen.append({"path": path.name, "title": fig._suptitle.get_text() if fig._suptitle else "",
                     "xlabels": [ax.get_xlabel() for ax in fig.axes], "yscales": [ax.get_yscale() for ax in fig.axes],
                     "texts": [t.get_text() for ax in fig.axes for t in ax.texts],
                     "bar_widths": {round(p.get_width(), 9) for ax in fig.axes[:1] for p in ax.patches}})
        return out

    monkeypatch.setattr(ledger.plot, "_save", save)
    return seen


def test_ledger_plot_names_the_ledger_labels_counts_and_never_overwrites(tmp_path, capsys, monkeypatch):
    seen = _drawn(monkeypatch)
    path = _ledger_with_rejections(tmp_path / "l.jsonl")
    assert main(["ledger", "plot", str(path)]) == 0
    first = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "plots").iterdir()}
    assert main(["ledger", "plot", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path / 'plots'} holds plots already: writing to {tmp_path / 'plots-2'} instead" in out
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "plots").iterdir()} == first
    assert sorted(p.name for p in (tmp_path / "plots-2").iterdir()) == sorted(first)
    charts = {c["path"]: c for c in seen[:3]}
    assert all(c["title"] == f"ledger {path}" for c in charts.values())
    mix = charts["status_reason_mix.png"]
    assert mix["yscales"] == ["log", "log"] and {"2", "3", "5"} <= set(mix["texts"])  # counts on the bars
    assert all(charts["top_payers_earners.png"]["xlabels"])
    assert charts["spend_over_time.png"]["xlabels"][0] == "time (UTC)"


def test_spend_is_binned_by_whole_ticks_so_even_traffic_draws_even_bars():
    from ledger.plot import spend_bin, spend_by_bin

    tick_s = 3 * 86_400 / 200  # 200 ticks over 3 days: 21.6 min, not a divisor of an hour
    start_us = 1_767_225_600 * 1_000_000
    ts_us = pa.array([start_us + round(k * tick_s * 1e6) for k in range(200) for _ in range(5)]).to_numpy()
    amounts = pa.chunked_array([pa.array([1_000] * 1_000, pa.int64())])
    bin_s, label = spend_bin(3 * 86_400, tick_s)
    assert (bin_s, label) == (1296.0, "tick (21.6 min)")
    keys, micros = spend_by_bin(ts_us, amounts, round(bin_s * 1e6), start_us)
    assert keys == list(range(200)) and set(micros) == {5_000}  # per hour it would alternate 2 and 3 ticks
    hourly = spend_by_bin(ts_us, amounts, 3_600 * 1_000_000, start_us)[1]
    assert set(hourly) == {10_000, 15_000}  # what the old hourly bins drew: a false alternating pattern


def test_a_simulations_plots_and_report_agree_with_ledger_report(ray_session, tmp_path, capsys, monkeypatch):
    from mesh.sim_report import format_report as format_sim_report
    from mesh.simulate import run_simulation

    seen = _drawn(monkeypatch)
    scenario = Scenario(
        name="contact", messages=1_200, days=3, ticks_per_day=2, shards=2, hosts=1, batch_size=100,
        groups=[{"name": "buyer", "count": 10, "balance_usd": "1.00", "daily_cap_usd": "0.05"},
                {"name": "worker", "count": 4, "price_usd": "0.005", "failure_rate": 0.1}],
        traffic=[{"source": "buyer", "target": "worker"}],
    )
    run_dir = tmp_path / "contact-seed7"
    report = run_simulation(scenario, run_dir)
    out = report["outcomes"]
    assert out["rejected_calls"] > 0 and out["calls"] == out["locked_calls"] + out["rejected_calls"] == 1_200
    sim_calls = [line for line in format_sim_report(report).splitlines() if line.startswith("calls:")]
    assert main(["ledger", "report", str(run_dir)]) == 0
    ledger_calls = [line for line in capsys.readouterr().out.splitlines() if line.startswith("calls:")]
    assert sim_calls[0].split(None, 1)[1] == ledger_calls[0].split(None, 1)[1]
    about = "run contact-seed7: scenario 'contact', seed 7, 3 simulated days, 14 agents"
    charts = {c["path"]: c for c in seen}
    assert set(charts) == {"spend_over_time.png", "top_payers_earners.png", "status_reason_mix.png"}
    assert all(c["title"] == about for c in charts.values())
    spend = charts["spend_over_time.png"]
    assert spend["xlabels"] == ["simulated time (UTC)"] and {"day 1", "day 2", "day 3"} <= {t.strip() for t in spend["texts"]}
    assert spend["bar_widths"] == {round(0.25 * 0.85, 9)}  # a bar a tick (12 ticks of 6 h, in days, with a gap)
    assert (run_dir / "plots" / "run_ticks.png").stat().st_size > 0
    assert main(["ledger", "plot", str(run_dir)]) == 0  # drawn again, beside the run's, with the run's name
    assert "writing to" in capsys.readouterr().out and seen[-1]["title"] == about


def test_adding_an_agent_twice_is_a_clear_tollmesh_error(make_mesh):
    mesh_ = make_mesh()
    mesh_.add_agents(Once, ["solo"])
    with pytest.raises(InvalidArgumentError) as caught:
        mesh_.add_agents(Once, ["solo"])
    assert type(caught.value) is InvalidArgumentError and "\x1b[" not in str(caught.value)
    assert str(caught.value) == "agent_ids=['solo']: are already in the mesh"


class _Named:
    name = "echo"


def test_the_mesh_booth_takes_an_agent_object_and_names_paper_mode(make_mesh):
    mesh_ = make_mesh()
    booth = mesh_.tollbooth(TollboothConfig(paper_mode=True, toll_per_message_usd="0.01"))
    record = booth.charge_sync("p1", "alice", _Named())
    assert record.target_agent == "echo" and record.status.value == "released"
    assert (record.payer_wallet, record.tx_signature) == ("paper_mode", "paper_mode")
    paid = booth.charge_sync("p2", "alice", "echo", payer_wallet="0xw", tx_signature="sig")
    assert (paid.payer_wallet, paid.tx_signature) == ("0xw", "sig")
