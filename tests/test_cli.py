"""The tollmesh command line, end to end in-process."""

from __future__ import annotations

import orjson
import pytest

from mesh.cli import main


@pytest.fixture
def ledger_dir(make_booth, ledger_path):
    booth = make_booth(toll_per_message_usd="0.20", max_daily_toll_per_agent=1)
    for n in range(8):
        record = booth.charge_sync(f"t{n}", f"agent-{n % 2}", "bob")
        if n % 3:
            booth.release_sync(record.task_id)
        else:
            booth.refund_sync(record.task_id, "handler_error")
    booth.close()
    return ledger_path.parent


def test_demo(tmp_path, capsys):
    assert main(["demo", "--agents", "5", "--messages", "300", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "replay == live:    yes" in out and "ledger verify:     OK" in out
    [run] = list(tmp_path.iterdir())
    assert (run / "report.json").exists() and list((run / "parquet").rglob("*.parquet"))


def test_demo_json(tmp_path, capsys):
    assert main(["demo", "--agents", "3", "--messages", "50", "--out", str(tmp_path), "--json"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["messages"] == 50 and report["conservation_holds"]


def test_ledger_report_and_verify(ledger_dir, capsys):
    assert main(["ledger", "report", str(ledger_dir), "--json"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["calls"] == 8 and report["by_reason"]["handler_error"] == 3
    assert report["by_reason"].get("over_daily_cap", 0) == 0
    assert main(["ledger", "verify", str(ledger_dir)]) == 0
    assert "INTEGRITY: OK" in capsys.readouterr().out


def test_verify_exit_code_and_named_line(ledger_dir, capsys):
    path = ledger_dir / "toll_ledger.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    lines[4] = lines[4].replace(b'"amount_micros":200000', b'"amount_micros":200001')
    path.write_bytes(b"".join(lines))
    assert main(["ledger", "verify", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"PROBLEM: {path}:5: seal broken: the batch of seq 4..4 (lines 5-5)" in out  # a booth seals each event


def test_export_settle_plot_compact(ledger_dir, tmp_path, capsys):
    assert main(["ledger", "export", str(ledger_dir), "--format", "csv", "--out", str(tmp_path / "x.csv")]) == 0
    assert main(["ledger", "settle", str(ledger_dir), "--minimum", "0.5"]) == 0
    assert "SETTLED" in capsys.readouterr().out
    assert main(["ledger", "settle", str(ledger_dir)]) == 1
    assert main(["ledger", "plot", str(ledger_dir)]) == 0
    assert len(list((ledger_dir / "plots").glob("*.png"))) == 3
    assert main(["ledger", "compact", str(ledger_dir)]) == 0
    assert main(["ledger", "report", str(ledger_dir / "parquet")]) == 0


def test_bad_input_is_a_clear_error(tmp_path, capsys):
    assert main(["ledger", "verify", str(tmp_path / "nope.jsonl")]) == 2
    assert "ledger not found" in capsys.readouterr().err
    (tmp_path / "a.jsonl").write_text("")
    (tmp_path / "b.jsonl").write_text("")
    assert main(["ledger", "report", str(tmp_path)]) == 2
    assert "expected one ledger" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "l.jsonl").write_bytes(b'{"v":9,"seq":0,"kind":"lock"}\n{"v":1}\n')
    assert main(["ledger", "report", str(tmp_path / "bad")]) == 2
    assert "l.jsonl:1: schema version v=9" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["ledger", "export", str(tmp_path / "bad"), "--format", "xml", "--out", "x"])


def test_demo_refuses_a_one_agent_economy(tmp_path, capsys):
    assert main(["demo", "--agents", "1", "--out", str(tmp_path)]) == 2
    assert "agents=1" in capsys.readouterr().err


# -- issue 11, finding 9: exact sums, and a bad path is one line and exit 2 ------------------------


def test_report_over_ten_thousand_calls_of_a_billion_dollars_is_exact(make_booth, ledger_path, capsys):
    booth = make_booth(paper_mode=True, max_daily_toll_per_agent=None, restore_from_ledger=False)
    for n in range(10_000):
        booth.charge_sync(f"t{n}", f"agent-{n % 3}", "bob", amount_usd=1_000_000_000)
    booth.close()
    assert main(["ledger", "report", str(ledger_path)]) == 0
    assert "spend:         $10,000,000,000,000.000000" in capsys.readouterr().out  # was $-8446744073709.551616
    assert main(["ledger", "report", str(ledger_path), "--json"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["spend_micros"] == 10**19 and report["by_status"]["released"]["amount_micros"] == 10**19


def test_export_makes_the_missing_folder_of_its_file(ledger_dir, tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / "events.json"
    assert main(["ledger", "export", str(ledger_dir), "--format", "json", "--out", str(out)]) == 0
    assert len(orjson.loads(out.read_bytes())) == 16


def _bad_paths(root, ledger):
    a_file = root / "a-file"
    a_file.write_text("not a folder")
    (root / "binary.toml").write_bytes(b"\xff\xfe\x00 = 1")
    missing = root / "missing" / "toll_ledger.jsonl"
    export = ["ledger", "export", str(ledger), "--format", "csv", "--out"]
    return {
        "simulate --out FILE": (["simulate", "--out", str(a_file), "--messages", "10"], "is a file, not a directory"),
        "simulate --out FILE/sub": (["simulate", "--out", str(a_file / "sub")], "is a file, not a directory"),
        "simulate --config DIR": (["simulate", "--config", str(root)], "no such file"),
        "simulate --config binary": (["simulate", "--config", str(root / "binary.toml")], "not UTF-8 text"),
        "demo --out FILE": (["demo", "--out", str(a_file), "--agents", "3", "--messages", "5"], "is a file"),
        "export --out FILE/x.csv": (export + [str(a_file / "x.csv")], "is a file, not a directory"),
        "export --out DIR": (export + [str(root)], "is a directory"),
        "export --out existing": (export + [str(a_file)], "exists already"),
        "plot --out FILE": (["ledger", "plot", str(ledger), "--out", str(a_file)], "is a file, not a directory"),
        "plot --out FILE/sub": (["ledger", "plot", str(ledger), "--out", str(a_file / "p")], "is a file"),
        "compact --out FILE": (["ledger", "compact", str(ledger), "--out", str(a_file)], "is a file"),
        **{f"{tool} missing": (["ledger", tool, str(missing)] + (["--format", "csv", "--out", str(root / "o.csv")]
                                                                 if tool == "export" else []), "not found")
           for tool in ("report", "verify", "export", "settle", "plot", "compact")},
        "report FILE/x": (["ledger", "report", str(a_file / "x.jsonl")], "not found"),
    }


CASES = [
    "simulate --out FILE", "simulate --out FILE/sub", "simulate --config DIR", "simulate --config binary",
    "demo --out FILE", "export --out FILE/x.csv", "export --out DIR", "export --out existing", "plot --out FILE",
    "plot --out FILE/sub", "compact --out FILE",
    "report missing", "verify missing", "export missing", "settle missing", "plot missing", "compact missing",
    "report FILE/x",
]


@pytest.mark.parametrize("case", CASES)
def test_a_bad_path_is_one_line_and_exit_code_2_never_a_traceback(case, ledger_dir, tmp_path, capsys):
    cases = _bad_paths(tmp_path, ledger_dir)
    assert sorted(cases) == sorted(CASES)
    argv, said = cases[case]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tollmesh: error: ") and said in err[0], err


def test_simulate_as_a_ray_job_refuses_a_run_directory_ray_deletes_after_the_job(tmp_path, monkeypatch, capsys):
    """Under ``ray job submit --working-dir``, a relative --out lands in Ray's temporary copy: refused before Ray starts."""
    job = {"runtime_env": {"working_dir": "gcs://_ray_pkg_0123.zip"}, "metadata": {"job_submission_id": "raysubmit_x"}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", orjson.dumps(job).decode())
    monkeypatch.chdir(tmp_path)
    assert main(["simulate", "--messages", "100", "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert f"the run directory {tmp_path / 'tollmesh-out' / 'default-seed7'} is inside the copy of --working-dir" in err
    assert "give --out an absolute path on the head" in err and "Traceback" not in err
    assert not (tmp_path / "tollmesh-out").exists()
