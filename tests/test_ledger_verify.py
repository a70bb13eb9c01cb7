"""ledger verify: tampering (changed, dropped, inserted, reordered lines), torn lines, illegal transitions."""

from __future__ import annotations

import orjson
import pytest

from ledger.jsonl import JsonlWriter
from ledger.verify import verify
from mesh import LedgerError


#: What verify says of a changed line, by format: v1 chains lines, v2 seals batches (a booth's event is a batch of its own).
BROKEN = {1: "hash chain broken", 2: "seal broken"}


@pytest.fixture(params=[1, 2], ids=["v1", "v2"])
def ledger(make_booth, ledger_path, request):
    booth = make_booth(track_balances=True, toll_per_message_usd="0.25", max_daily_toll_per_agent=None,
                       ledger_format=request.param)
    booth.deposit("alice", 10)
    for n in range(6):
        booth.charge_sync(f"t{n}", "alice", "bob")
    for n in range(4):
        booth.release_sync(f"t{n}")
    booth.refund_sync("t4")
    booth.close()
    assert verify(ledger_path).ok
    return ledger_path


def broken(path):
    """What verify calls a changed line of the ledger at ``path`` (by the format of its first line)."""
    return BROKEN[orjson.loads(path.read_bytes().split(b"\n", 1)[0])["v"]]


def rewrite(path, edit):
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(edit(lines)))


def messages(path):
    return [f"{p.line}: {p.message}" for p in verify(path).problems]


def test_a_hand_edited_amount_in_the_middle_is_caught(ledger):
    rewrite(ledger, lambda lines: lines[:5] + [lines[5].replace(b'"amount_micros":250000', b'"amount_micros":25000')] + lines[6:])
    found = messages(ledger)
    assert any(m.startswith(f"6: {broken(ledger)}") for m in found)
    assert any(m.startswith("6: amount_usd=0.25 disagrees") for m in found)


def test_a_changed_line_with_a_consistent_amount_still_breaks_the_chain(ledger):
    def edit(lines):
        line = lines[3].replace(b'"amount_micros":250000', b'"amount_micros":1').replace(b'"amount_usd":0.25', b'"amount_usd":1e-06')
        return lines[:3] + [line] + lines[4:]

    rewrite(ledger, edit)
    found = messages(ledger)
    assert found[0].startswith(f"4: {broken(ledger)}")


def test_a_dropped_line_is_caught(ledger):
    rewrite(ledger, lambda lines: lines[:4] + lines[5:])
    found = messages(ledger)
    assert any("seq 5 where 4 was expected" in m for m in found)
    assert any(broken(ledger) in m for m in found)


def test_an_inserted_line_is_caught(ledger):
    rewrite(ledger, lambda lines: lines[:4] + [lines[3]] + lines[4:])
    assert any("seq 3 where 4 was expected" in m for m in messages(ledger))


def test_reordered_lines_are_caught(ledger):
    rewrite(ledger, lambda lines: lines[:3] + [lines[4], lines[3]] + lines[5:])
    found = messages(ledger)
    assert any("seq 4 where 3 was expected" in m for m in found)
    assert any(broken(ledger) in m for m in found)


def test_a_torn_last_line_is_a_warning_not_a_problem(ledger):
    with open(ledger, "ab") as f:
        f.write(b'{"v":1,"seq":12,"ts_us":')
    result = verify(ledger)
    assert result.ok and len(result.warnings) == 1 and "torn line after a crash" in str(result.warnings[0])


def test_a_torn_line_recovered_by_the_writer_is_a_warning(ledger):
    with open(ledger, "ab") as f:
        f.write(b'{"v":1,"seq":12,"ts_us":')
    JsonlWriter(ledger).close()
    result = verify(ledger)
    assert result.ok and "torn line after a crash" in str(result.warnings[0])
    assert verify(ledger).events == 13  # the 12 events and the writer's recover event


def test_garbage_in_the_middle_is_a_problem_and_verify_does_not_crash(ledger):
    rewrite(ledger, lambda lines: lines[:2] + [b"not json at all\n"] + lines[2:])
    found = messages(ledger)
    assert found[0].startswith("3: malformed JSON")


def test_schema_problems_are_named(ledger):
    def edit(lines):
        event = orjson.loads(lines[2])
        event["amount_micros"] = -5
        event["surprise"] = 1
        return lines[:2] + [orjson.dumps(event) + b"\n"] + lines[3:]

    rewrite(ledger, edit)
    found = messages(ledger)
    assert "amount_micros" in found[0] and "surprise" in found[0]


def test_illegal_transitions(tmp_path):
    path = tmp_path / "l.jsonl"
    writer = JsonlWriter(path)
    base = {"v": 1, "seq": None, "ts_us": 0, "source_agent": "a", "target_agent": "b", "amount_micros": 5, "amount_usd": 5e-06}
    writer.append([
        {**base, "kind": "lock", "task_id": "t1", "status": "escrow_locked"},
        {**base, "kind": "release", "task_id": "t1", "status": "released"},
        {**base, "kind": "refund", "task_id": "t1", "status": "refunded", "reason": "refunded_by_caller"},
        {**base, "kind": "lock", "task_id": "t1", "status": "escrow_locked"},
        {**base, "kind": "release", "task_id": "t2", "status": "released"},
        {**base, "kind": "lock", "task_id": "t3", "status": "released"},
    ])
    writer.close()
    found = messages(path)
    assert "3: refund of task_id=t1 that is not locked (state: released)" in found
    assert "4: lock of task_id=t1 that is already released: one task id, one escrow" in found
    assert "5: release of task_id=t2 that is not locked (state: none)" in found
    assert "6: lock with status 'released', expected 'escrow_locked'" in found


def test_a_missing_ledger_is_a_ledger_error(tmp_path):
    with pytest.raises(LedgerError, match="ledger not found"):
        verify(tmp_path / "none.jsonl")


def test_a_caps_only_ledger_verifies_and_a_mixed_one_is_named(make_booth, ledger_path, tmp_path):
    booth = make_booth()
    booth.charge_sync("t1", "alice", "bob")
    booth.release_sync("t1")
    booth.close()
    assert verify(ledger_path).ok
    writer = JsonlWriter(ledger_path)
    writer.append([{"v": 1, "seq": None, "ts_us": 0, "kind": "deposit", "target_agent": "a", "amount_micros": 1,
                    "amount_usd": 1e-06, "status": "released"}])
    writer.close()
    assert [p.message for p in verify(ledger_path).problems] == [
        "a deposit after locks without balances: a ledger of two kinds of booth"
    ]
