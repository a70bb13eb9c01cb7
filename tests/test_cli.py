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
    assert f"PROBLEM: {path}:5: hash chain broken" in out


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
