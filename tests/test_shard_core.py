"""The shard's record API over the columnar book against the record book it replaced.

Random programs of every kind of op the per-message paths send (locks, paper releases,
pending records charged later, refusals, tokens, x402 wallets and signatures, paper and
live modes), settles, expiries, deposits and credits run through
:class:`actors.shard_core.ShardCore` and the reference :class:`record_shard.RecordShardCore`;
after every call their answers (records, decoded events, credits, repeats, expired
escrows) and snapshots must be equal. The columnar core's events then form a ledger that
verifies, and a core rebuilt from it answers every task id as the live one does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
from hypothesis import given
from hypothesis import strategies as st

from actors.shard_core import INSTANT, LOCK, PEND, REJECT, ShardCore, ShardSpec
from ledger import verify
from ledger.jsonl import JsonlWriter
from mesh.calls.coded import CodedNames
from mesh.columnar import REASON_CODE
from mesh.core.sharding import shard_of
from record_shard import RecordShardCore

START_US = 1_767_225_600_000_000
SHARDS = 2
AGENTS = [f"agent-{i}" for i in range(6)]
OWNED = [a for a in AGENTS if shard_of(a, SHARDS) == 0]
TIMEOUT_S = 60


class Twins:
    def __init__(self, root: Path, cap_micros, track_balances: bool) -> None:
        self.spec = ShardSpec(index=0, shards=SHARDS, default_cap_micros=cap_micros, track_balances=track_balances,
                              escrow_timeout_s=TIMEOUT_S)
        self.new, self.old = ShardCore(self.spec), RecordShardCore(self.spec)
        self.path = root / "ledger.jsonl"
        self.writer = JsonlWriter(self.path)
        self.now_us = START_US
        self.task_ids: list[str] = []
        self.credited = False

    def both(self, method: str, *args) -> tuple:
        new, old = getattr(self.new, method)(*args), getattr(self.old, method)(*args)
        if isinstance(new, tuple):
            records, lines, count, credits, repeats, expired = new
            assert (records, credits, repeats, expired, count) == (old[0], old[3], old[4], old[5], old[2])
            mine, theirs = [orjson.loads(x) for x in lines.splitlines()], [orjson.loads(x) for x in old[1].splitlines()]
            assert mine == theirs
            for a, b in zip(mine, theirs):
                assert {k: type(v) for k, v in a.items()} == {k: type(v) for k, v in b.items()}
            if count:
                self.writer.append_encoded(lines)
        else:
            assert new == old
        assert self.new.snapshot(self.now_us) == self.old.snapshot(self.now_us)
        return new

    def task_id(self, pick: int, fresh: bool) -> str:
        if fresh or not self.task_ids:
            self.task_ids.append(f"task-{len(self.task_ids)}")
            return self.task_ids[-1]
        return self.task_ids[pick % len(self.task_ids)]


payment = st.one_of(st.just((0.0, None, None)), st.just((0.0, "paper_mode", "paper_mode")),
                    st.tuples(st.sampled_from([0.0, 1.5]), st.sampled_from(["0xabc", None]), st.sampled_from(["sig-1", None])))
op = st.tuples(st.sampled_from([LOCK] * 4 + [INSTANT, REJECT, PEND]), st.integers(0, 1_000), st.booleans(),
               st.sampled_from(OWNED), st.sampled_from(AGENTS), st.integers(0, 9_000), payment)
step = st.one_of(
    st.tuples(st.just("lock"), st.lists(op, min_size=1, max_size=8), st.sampled_from(["live", "paper"])),
    st.tuples(st.just("settle"), st.lists(st.tuples(st.integers(-1, 1_000), st.booleans()), min_size=1, max_size=5)),
    st.tuples(st.just("deposit"), st.sampled_from(OWNED), st.integers(1, 30_000)),
    st.tuples(st.just("advance"), st.sampled_from([0, 1, 61, 86_400])),
    st.tuples(st.just("expire")),
    st.tuples(st.just("credit"), st.sampled_from(OWNED), st.integers(0, 5_000)),
)


@given(program=st.lists(step, max_size=25), cap_micros=st.sampled_from([None, 15_000]), track_balances=st.booleans())
def test_every_kind_of_op_answers_writes_and_rebuilds_as_the_record_book(tmp_path_factory, program, cap_micros,
                                                                         track_balances):
    twins = Twins(tmp_path_factory.mktemp("shard-core"), cap_micros, track_balances)
    for s in program:
        kind = s[0]
        if kind == "lock":
            ops = []
            for action, pick, fresh, source, target, price, (tokens, wallet, signature) in s[1]:
                reason = "x402_rejected" if action == REJECT else None
                ops.append((action, twins.task_id(pick, fresh), source, target, price, tokens, wallet, signature, reason))
            twins.both("lock_batch", ops, twins.now_us, s[2])
        elif kind == "settle":
            ops = [(twins.task_ids[p % len(twins.task_ids)] if twins.task_ids and p >= 0 else "never-seen", ok,
                    None if ok else "handler_error") for p, ok in s[1]]
            twins.both("settle_batch", ops, twins.now_us, "live")
        elif kind == "deposit" and track_balances:
            twins.both("deposit_batch", [(s[1], s[2])], twins.now_us, "live")
        elif kind == "advance":
            twins.now_us += s[1] * 1_000_000
        elif kind == "expire":
            twins.both("expire_due", twins.now_us, "live")
        elif kind == "credit":
            twins.credited = True
            twins.both("credit", [(s[1], s[2], 0)])
    twins.writer.close()
    if twins.credited:  # credits come from another shard's events, which this ledger does not hold
        return
    if twins.path.exists():
        result = verify(twins.path)
        assert result.ok, result.problems
    rebuilt = ShardCore(ShardSpec(**{**twins.spec.__dict__, "ledger_path": str(twins.path)}))
    assert rebuilt.snapshot(twins.now_us) == twins.new.snapshot(twins.now_us)
    for task_id in twins.task_ids:
        assert rebuilt.get(task_id) == twins.new.get(task_id) == twins.old.get(task_id)


def test_a_pending_record_is_charged_later_as_a_new_toll(tmp_path):
    core = ShardCore(ShardSpec(index=0, shards=1, default_cap_micros=None))
    pend = (PEND, "t1", "a", "b", 5, 0.0, None, None, None)
    first = core.lock_batch([pend], START_US, "live")
    assert first[0][0].status.value == "pending" and first[0][0].reason == "payment_required" and first[4] == []
    again = core.lock_batch([(LOCK, "t1", "a", "b", 5, 0.0, "0xabc", "sig", None)], START_US, "live")
    assert again[0][0].status.value == "escrow_locked" and again[0][0].payer_wallet == "0xabc" and again[4] == []
    repeat = core.lock_batch([pend], START_US, "live")
    assert repeat[0][0] == again[0][0] and repeat[4] == [0] and repeat[2] == 0


def test_the_columnar_entry_points_lock_and_settle_as_the_record_ones(tmp_path):
    spec = ShardSpec(index=0, shards=1, default_cap_micros=12, track_balances=False)
    columns, records = ShardCore(spec), ShardCore(spec)
    ids, sources, targets, prices = ["t1", "t2", "t3", "t1"], ["a", "a", "a", "a"], ["b"] * 4, [5, 5, 5, 5]
    locked = columns.lock_columns(ids, CodedNames.encode("sources", sources), CodedNames.encode("targets", targets),
                                  np.array(prices, np.int64), np.zeros(4, np.int8), START_US)
    answer = records.lock_batch([(LOCK, t, s, d, p, 0.0, None, None, None) for t, s, d, p in zip(ids, sources, targets, prices)],
                                START_US, "live")
    assert locked.lines == answer[1] and locked.event_count == answer[2] == 3
    assert [columns.book.status_name(s) for s in locked.status] == [r.status.value for r in answer[0]]
    assert locked.repeat.tolist() == [False, False, False, True]
    assert locked.tally == {"locked": 2, "locked_micros": 10, "released": 0, "released_micros": 0, "paper_released": 0,
                            "paper_released_micros": 0, "refunded": 0, "refunded_micros": 0, "rejected:over_daily_cap": 1}
    settled = columns.settle_columns(locked.rows[:2], np.array([True, False]),
                                     np.array([0, REASON_CODE["handler_error"]], np.int8), START_US + 1)
    again = records.settle_batch([("t1", True, None), ("t2", False, "handler_error")], START_US + 1, "live")
    assert settled.lines == again[1]
    assert settled.tally["released"] == 1 and settled.tally["refunded:handler_error"] == 1
    assert columns.snapshot(START_US + 1) == records.snapshot(START_US + 1)
