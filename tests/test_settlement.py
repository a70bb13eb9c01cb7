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
