"""The columnar shard book against today's record book (``ShardCore`` over ``EscrowBook``).

Random programs (deposits, lock batches with hot agents at their caps and short balances,
repeated task ids inside and across batches, x402-style rejects, settles with random
outcomes, expiries, clock moves across deadlines and days, usage resets, cap changes,
credits from other shards) run through both books; after every call the answers (the
records of every message, the repeats, the expired escrows, the credits), the events
(decoded JSON lines, field by field) and the snapshots must be equal. At the end the
columnar book's lines go through ``JsonlWriter.append_encoded``; ``ledger verify`` passes,
the record shard rebuilt from that ledger equals the columnar book, and so does a
columnar book rebuilt from it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.budget_shard import LOCK, REJECT, ShardCore, ShardSpec
from ledger import verify
from ledger.jsonl import JsonlWriter
from mesh.columnar import REASON_CODE, ColumnarBook
from mesh.errors import InvalidAmountError, InvalidArgumentError, InvalidColumnError, InvalidIdError, InvalidTypeError
from mesh.sharding import shard_of

START_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
SHARDS = 2
AGENTS = [f"agent-{i}" for i in range(8)]
OWNED = [i for i, name in enumerate(AGENTS) if shard_of(name, SHARDS) == 0]  # the shard's agents: the sources it is sent
TIMEOUT_S = 60
REFUND_REASONS = ["handler_error", "handler_timeout", "refunded_by_caller", "agent_unavailable"]


class Pair:
    """The same shard as a record book and as a columnar book, driven call by call and compared."""

    def __init__(self, root: Path, *, cap_micros, agent_caps, track_balances: bool) -> None:
        self.ledger_path = root / "columnar.jsonl"
        self.spec = ShardSpec(index=0, shards=SHARDS, default_cap_micros=cap_micros, agent_caps_micros=dict(agent_caps),
                              track_balances=track_balances, escrow_timeout_s=TIMEOUT_S)
        self.core = ShardCore(self.spec)
        self.book = ColumnarBook(default_cap_micros=cap_micros, track_balances=track_balances,
                                 escrow_timeout_s=TIMEOUT_S, shard=0, shards=SHARDS)
        self.book.register(AGENTS)
        self.book.set_caps(cap_micros, dict(agent_caps))
        self.now_us = START_US
        self.task_ids: list[str] = []
        self.lines: list[bytes] = []
        self.credited = False

    # -- the operations -----------------------------------------------------------

    def deposit(self, deposits: list[tuple[int, int]]) -> None:
        if not self.spec.track_balances:  # a mesh without balances takes no deposits (its ledger would not verify)
            return
        answer = self.core.deposit_batch([(AGENTS[a], m) for a, m in deposits], self.now_us, "live")
        events = self.book.deposit(np.array([a for a, _ in deposits], np.int64), np.array([m for _, m in deposits], np.int64), self.now_us)
        self.compare_events(answer, self.book.encode(events))

    def lock(self, messages: list[tuple[int, int, int, int, bool]]) -> None:
        ids = [self.task_id(pick, fresh) for pick, fresh, *_ in messages]
        ops = [(REJECT if rej else LOCK, ids[i], AGENTS[s], AGENTS[t], p, 0.0, None, None, "x402_rejected" if rej else None)
               for i, (_, _, s, t, p, rej) in enumerate(messages)]
        answer = self.core.lock_batch(ops, self.now_us, "live")
        rejects = np.array([REASON_CODE["x402_rejected"] if m[5] else 0 for m in messages], np.int64)
        mine = self.book.lock(ids, np.array([m[2] for m in messages], np.int64), np.array([m[3] for m in messages], np.int64),
                              np.array([m[4] for m in messages], np.int64), self.now_us, reject_reasons=rejects)
        self.compare_answer(answer, mine)

    def settle(self, ops: list[tuple[int, bool, int]]) -> None:
        ids = [self.task_ids[pick % len(self.task_ids)] if self.task_ids and pick >= 0 else f"unknown-{pick}" for pick, _, _ in ops]
        reasons = [None if ok else REFUND_REASONS[r] for _, ok, r in ops]
        answer = self.core.settle_batch([(i, ok, why) for i, (_, ok, _), why in zip(ids, ops, reasons)], self.now_us, "live")
        codes = np.array([0 if why is None else REASON_CODE[why] for why in reasons], np.int64)
        mine = self.book.settle(ids, np.array([ok for _, ok, _ in ops], bool), codes, self.now_us)
        self.compare_answer(answer, mine)
        assert answer[3] == self.book.credit_tuples(mine)

    def expire(self) -> None:
        answer = self.core.expire_due(self.now_us, "live")
        rows, events = self.book.expire_due(self.now_us)
        assert answer[0] == [self.book.record(r) for r in rows.tolist()]
        self.compare_events(answer, self.book.encode(events))

    def credit(self, agent: int, amount: int) -> None:
        self.credited = True
        assert self.core.credit([(AGENTS[agent], amount, 0)]) == self.book.credit(
            np.array([agent]), np.array([amount]), np.array([0]))

    def reset_usage(self) -> None:
        self.core.reset_usage()
        self.book.reset_usage()

    def set_cap(self, agent: int, cap) -> None:
        self.core.set_caps(self.core.book.budget.default_cap_micros, {AGENTS[agent]: cap})
        self.book.set_caps(self.book.default_cap_micros, {AGENTS[agent]: cap})

    # -- comparing ----------------------------------------------------------------

    def task_id(self, pick: int, fresh: bool) -> str:
        if fresh or not self.task_ids:
            self.task_ids.append(f"task-{len(self.task_ids)}")
            return self.task_ids[-1]
        return self.task_ids[pick % len(self.task_ids)]

    def compare_answer(self, answer: tuple, mine) -> None:
        records, _, _, _, repeats, expired = answer
        assert records == [self.book.record(r) for r in mine.rows.tolist()]
        assert [r.status.value if r else None for r in records] == [self.book.status_name(s) for s in mine.status]
        assert [r.reason if r else None for r in records] == [self.book.reason_name(c) for c in mine.reason]
        assert repeats == np.flatnonzero(mine.repeat).tolist()
        assert expired == [self.book.record(r) for r in mine.expired_rows.tolist()]
        self.compare_events(answer, self.book.encode(mine.events))

    def compare_events(self, answer: tuple, lines: bytes) -> None:
        theirs = [orjson.loads(line) for line in answer[1].splitlines()]
        mine = [orjson.loads(line) for line in lines.splitlines()]
        assert mine == theirs
        for a, b in zip(mine, theirs):  # equal as values, and of the same JSON types (a float stays a float)
            assert {k: type(v) for k, v in a.items()} == {k: type(v) for k, v in b.items()}
        assert answer[2] == len(mine)
        if lines:
            self.lines.append(lines)

    def compare_state(self) -> None:
        assert self.book.snapshot(self.now_us) == self.core.snapshot(self.now_us)
        assert self.book.open_count == self.core.book.open_count


def agent_pick():
    return st.sampled_from(range(len(AGENTS)))


HOT = st.sampled_from(OWNED[:2])  # two hot sources: most messages, at their caps and balances
price = st.one_of(st.integers(0, 3), st.integers(0, 12_000), st.just(5_000))
message = st.tuples(st.integers(0, 10_000), st.booleans(), st.one_of(HOT, st.sampled_from(OWNED)), agent_pick(),
                    price, st.sampled_from([False] * 7 + [True]))  # (pick, fresh id, source, target, price, x402 reject)
operation = st.one_of(
    st.tuples(st.just("deposit"), st.lists(st.tuples(agent_pick(), st.integers(0, 40_000)), min_size=1, max_size=4)),
    st.tuples(st.just("lock"), st.lists(message, min_size=1, max_size=25)),
    st.tuples(st.just("lock"), st.lists(message, min_size=1, max_size=25)),
    st.tuples(st.just("settle"), st.lists(st.tuples(st.integers(-2, 10_000), st.booleans(), st.integers(0, 3)), min_size=1, max_size=12)),
    st.tuples(st.just("advance"), st.sampled_from([0, 1, 30, 59, 61, 3_600, 86_400])),
    st.tuples(st.just("expire")),
    st.tuples(st.just("reset")),
    st.tuples(st.just("cap"), agent_pick(), st.one_of(st.none(), st.integers(0, 30_000))),
    st.tuples(st.just("credit"), agent_pick(), st.integers(0, 9_000)),
)


@given(
    program=st.lists(operation, max_size=40),
    cap_micros=st.sampled_from([None, 0, 20_000, 50_000]),
    agent_caps=st.dictionaries(st.sampled_from(AGENTS), st.one_of(st.none(), st.integers(0, 40_000)), max_size=3),
    track_balances=st.booleans(),
)
def test_random_programs_answer_write_and_rebuild_as_the_record_book(tmp_path_factory, program, cap_micros, agent_caps,
                                                                     track_balances):
    pair = Pair(tmp_path_factory.mktemp("columnar"), cap_micros=cap_micros, agent_caps=agent_caps, track_balances=track_balances)
    for op in program:
        kind = op[0]
        if kind == "deposit":
            pair.deposit(op[1])
        elif kind == "lock":
            pair.lock(op[1])
        elif kind == "settle":
            pair.settle(op[1])
        elif kind == "advance":
            pair.now_us += op[1] * 1_000_000
        elif kind == "expire":
            pair.expire()
        elif kind == "reset":
            pair.reset_usage()
        elif kind == "cap":
            pair.set_cap(op[1], op[2])
        else:
            pair.credit(op[1], op[2])
        pair.compare_state()
    check_ledger(pair)


def check_ledger(pair: Pair) -> None:
    """The columnar lines are a ledger: verified, and both books rebuilt from it equal the live one."""
    writer = JsonlWriter(pair.ledger_path)
    for lines in pair.lines:
        writer.append_encoded(lines)
    writer.close()
    if pair.credited:  # credits come from other shards' partitions, which this ledger does not hold
        return
    if pair.lines:
        result = verify(pair.ledger_path)
        assert result.ok, result.problems
    rebuilt = ShardCore(ShardSpec(**{**pair.spec.__dict__, "ledger_path": str(pair.ledger_path),
                                     "agent_caps_micros": {}, "default_cap_micros": None}))
    live = pair.book.snapshot(pair.now_us)
    if pair.book.epoch == 0:  # a reset is journaled by the coordinator, not by the shard: not in this ledger
        assert rebuilt.snapshot(pair.now_us) == live
        again = ColumnarBook.from_ledger(pair.ledger_path, track_balances=pair.book.track_balances,
                                         escrow_timeout_s=TIMEOUT_S, shard=0, shards=SHARDS)
        assert again.snapshot(pair.now_us) == live
