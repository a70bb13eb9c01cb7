"""settle(): batch netting of released tolls above a minimum, idempotent, live fails closed."""

from __future__ import annotations

import threading

import orjson
import pytest

from mesh import InvalidAmountError, LedgerError, settle


def test_settles_released_tolls_once(make_booth, ledger_path):
    booth = make_booth(toll_per_message_usd="0.10")
    for n in range(7):
        booth.charge_sync(f"t{n}", "a", "b")
    for n in range(6):
        booth.release_sync(f"t{n}")
    booth.refund_sync("t6")
    result = settle(ledger_path)
    assert result.settled and result.net_micros == 600_000 and result.call_count == 6
    assert result.net_usd == 0.6 and result.mode == "paper" and result.batch_id.startswith("settle-")
    assert result.task_ids == tuple(sorted(f"t{n}" for n in range(6)))
    [batch] = [orjson.loads(x) for x in result.settlements_path.read_bytes().splitlines()]
    assert batch["net_micros"] == 600_000 and batch["net_usd"] == "0.600000"
    again = settle(ledger_path)
    assert not again.settled and again.reason == "nothing to settle"


def test_below_minimum_and_live(make_booth, ledger_path):
    booth = make_booth(toll_per_message_usd="0.10")
    booth.charge_sync("t1", "a", "b")
    booth.release_sync("t1")
    below = settle(ledger_path)
    assert not below.settled and below.reason == "net $0.100000 below minimum $0.500000"
    live = settle(ledger_path, paper=False, minimum_usd=0)
    assert not live.settled and live.mode == "live" and "fails closed" in live.reason
    assert settle(ledger_path, minimum_usd="0.1").settled


def test_concurrent_settles_never_net_a_toll_twice(make_booth, ledger_path):
    booth = make_booth(toll_per_message_usd=1, max_daily_toll_per_agent=None)
    for n in range(50):
        booth.charge_sync(f"t{n}", "a", "b")
        booth.release_sync(f"t{n}")
    results = []
    threads = [threading.Thread(target=lambda: results.append(settle(ledger_path))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.settled for r in results) == 1
    assert sum(r.call_count for r in results if r.settled) == 50


def test_reads_a_seed_ledger(tmp_path):
    ledger = tmp_path / "toll_ledger.jsonl"
    ledger.write_text(
        '{"task_id": "a", "status": "released", "amount_usd": 0.3}\n'
        '{"task_id": "b", "status": "released", "amount_usd": 0.3}\n'
        '{"task_id": "c", "status": "failed", "amount_usd": 0.3}\n{"torn'
    )
    result = settle(ledger)
    assert result.settled and result.net_micros == 600_000 and result.call_count == 2


def test_bad_input(tmp_path):
    with pytest.raises(LedgerError, match="not found"):
        settle(tmp_path / "missing.jsonl")
    (tmp_path / "l.jsonl").write_text("")
    with pytest.raises(InvalidAmountError, match="minimum_usd"):
        settle(tmp_path / "l.jsonl", minimum_usd=-1)


# -- a ledger that fails verify is never settled (issue 11, finding 9) ---------------------------


def forge(path, line: dict) -> None:
    """Append a line as a forger would: a seed-style line, or a tollmesh event chained like the writer chains it."""
    from ledger.jsonl import JsonlWriter

    if "v" in line:
        writer = JsonlWriter(path)
        writer.append([line])
        writer.close()
    else:
        with open(path, "ab") as f:
            f.write(orjson.dumps(line) + b"\n")


FORGERIES = {
    "a seed-style line": {"task_id": "forged", "status": "released", "amount_micros": 9_000_000},
    "a chained release never locked": {
        "v": 1, "seq": None, "ts_us": 1_767_225_600_000_000, "kind": "release", "task_id": "forged",
        "source_agent": "a", "target_agent": "mallory", "amount_usd": 9.0, "amount_micros": 9_000_000,
        "status": "released",
    },
}


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_a_ledger_that_fails_verify_is_refused_and_nothing_is_written(make_booth, ledger_path, forgery):
    from ledger.verify import LedgerVerifyError

    booth = make_booth(toll_per_message_usd="0.10")
    booth.charge_sync("t1", "a", "b")
    booth.release_sync("t1")
    booth.close()
    forge(ledger_path, FORGERIES[forgery])
    settlements = ledger_path.with_name("toll_ledger.settlements.jsonl")
    with pytest.raises(LedgerVerifyError, match="fails verify") as caught:
        settle(ledger_path, minimum_usd=0)
    assert isinstance(caught.value, LedgerError) and not caught.value.result.ok
    assert not settlements.exists()


def test_a_changed_amount_is_refused(make_booth, ledger_path):
    from ledger.verify import LedgerVerifyError

    booth = make_booth(toll_per_message_usd="0.10")
    booth.charge_sync("t1", "a", "b")
    booth.release_sync("t1")
    booth.close()
    ledger_path.write_bytes(ledger_path.read_bytes().replace(b'"amount_micros":100000', b'"amount_micros":9000000'))
    with pytest.raises(LedgerVerifyError):
        settle(ledger_path, minimum_usd=0)


def test_the_cli_refuses_with_exit_code_1(make_booth, ledger_path, capsys):
    from mesh.cli import main

    booth = make_booth(toll_per_message_usd="0.10")
    booth.charge_sync("t1", "a", "b")
    booth.release_sync("t1")
    booth.close()
    forge(ledger_path, FORGERIES["a seed-style line"])
    assert main(["ledger", "settle", str(ledger_path), "--minimum", "0"]) == 1
    assert "settle refused" in capsys.readouterr().err
    assert not ledger_path.with_name("toll_ledger.settlements.jsonl").exists()


def test_only_the_events_verified_are_netted(make_booth, ledger_path, monkeypatch):
    import mesh.booth.settlement as settlement

    booth = make_booth(toll_per_message_usd="0.10")
    booth.charge_sync("t1", "a", "b")
    booth.release_sync("t1")
    verify_then_write = settlement.verified

    def verified_then_more_events(ledger):
        result = verify_then_write(ledger)
        booth.charge_sync("t2", "a", "b")  # appended between the verify pass and the netting
        booth.release_sync("t2")
        return result

    monkeypatch.setattr(settlement, "verified", verified_then_more_events)
    result = settle(ledger_path, minimum_usd=0)
    assert result.settled and result.task_ids == ("t1",)
