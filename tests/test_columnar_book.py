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
from unittest import mock

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.budget_shard import LOCK, REJECT, ShardSpec
from record_shard import RecordShardCore as ShardCore
from ledger import verify
from ledger.jsonl import JsonlWriter
from mesh.columnar import REASON_CODE, ColumnarBook, EventColumns, _events
from mesh.core.errors import InvalidAmountError, InvalidArgumentError, InvalidColumnError, InvalidIdError, InvalidTypeError
from mesh.core.sharding import shard_of

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
    st.tuples(st.just("deposit"), st.lists(st.tuples(st.sampled_from(OWNED), st.integers(0, 40_000)), min_size=1, max_size=4)),
    st.tuples(st.just("lock"), st.lists(message, min_size=1, max_size=25)),
    st.tuples(st.just("lock"), st.lists(message, min_size=1, max_size=25)),
    st.tuples(st.just("settle"), st.lists(st.tuples(st.integers(-2, 10_000), st.booleans(), st.integers(0, 3)), min_size=1, max_size=12)),
    st.tuples(st.just("advance"), st.sampled_from([0, 1, 30, 59, 61, 3_600, 86_400])),
    st.tuples(st.just("expire")),
    st.tuples(st.just("reset")),
    st.tuples(st.just("cap"), agent_pick(), st.one_of(st.none(), st.integers(0, 30_000))),
    st.tuples(st.just("credit"), st.sampled_from(OWNED), st.integers(0, 9_000)),
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


# -- examples: each reason, exactness, strict inputs -------------------------------------

def book_with(*, cap=None, track=True, deposits=None) -> tuple[ColumnarBook, dict[str, int]]:
    book = ColumnarBook(default_cap_micros=cap, track_balances=track, escrow_timeout_s=TIMEOUT_S)
    index = dict(zip(["alice", "bob", "carol"], book.register(["alice", "bob", "carol"]).tolist()))
    for name, amount in (deposits or {}).items():
        book.deposit(np.array([index[name]]), np.array([amount]), START_US)
    return book, index


def lock_one_source(book: ColumnarBook, source: int, target: int, prices: list[int], prefix: str = "t"):
    n = len(prices)
    return book.lock([f"{prefix}{i}" for i in range(n)], np.full(n, source), np.full(n, target), np.array(prices), START_US)


def reasons(book: ColumnarBook, answer) -> list:
    return [book.reason_name(code) for code in answer.reason]


def test_over_daily_cap_and_a_later_cheaper_message_still_fits():
    book, a = book_with(cap=100, deposits={"alice": 1_000})
    answer = lock_one_source(book, a["alice"], a["bob"], [60, 50, 40, 1])
    assert reasons(book, answer) == [None, "over_daily_cap", None, "over_daily_cap"]
    assert book.used_micros(a["alice"], START_US // 86_400_000_000) == 100


def test_insufficient_funds_is_judged_before_the_cap():
    book, a = book_with(cap=50, deposits={"alice": 30})
    answer = lock_one_source(book, a["alice"], a["bob"], [20, 60, 10, 5])  # 60: over both; 5: no funds left
    assert reasons(book, answer) == [None, "insufficient_funds", None, "insufficient_funds"]
    assert book.balance_micros(a["alice"]) == 0
    book, a = book_with(cap=50, deposits={"alice": 100})
    assert reasons(book, lock_one_source(book, a["alice"], a["bob"], [20, 40, 10, 25])) == [None, "over_daily_cap", None, "over_daily_cap"]


def test_unknown_agent_with_balances_and_none_without():
    book, a = book_with(deposits={"alice": 10})
    assert reasons(book, lock_one_source(book, a["carol"], a["bob"], [0, 1])) == ["unknown_agent", "unknown_agent"]
    book, a = book_with(track=False)
    assert reasons(book, lock_one_source(book, a["carol"], a["bob"], [5])) == [None]


def test_a_rejected_reason_and_repeats_answer_the_first_record_and_write_nothing():
    book, a = book_with(deposits={"alice": 100})
    first = book.lock(["x", "y"], np.array([a["alice"]] * 2), np.array([a["bob"]] * 2), np.array([10, 10]), START_US,
                      reject_reasons=np.array([REASON_CODE["x402_rejected"], 0]))
    assert reasons(book, first) == ["x402_rejected", None]
    again = book.lock(["y", "x", "z", "z"], np.array([a["alice"]] * 4), np.array([a["bob"]] * 4), np.array([99, 99, 5, 5]), START_US)
    assert again.repeat.tolist() == [True, True, False, True]
    assert [book.status_name(s) for s in again.status] == ["escrow_locked", "failed", "escrow_locked", "escrow_locked"]
    assert len(again.events) == 1 and book.balance_micros(a["alice"]) == 85


def test_refunds_give_the_room_back_on_their_day_only_and_expiry_refunds_with_its_reason():
    book, a = book_with(cap=100, deposits={"alice": 1_000})
    answer = lock_one_source(book, a["alice"], a["bob"], [100])
    book.settle_rows(answer.rows, np.array([False]), np.array([REASON_CODE["handler_error"]]), START_US + 1)
    assert book.snapshot(START_US)["used_today_micros"] == {}
    late = lock_one_source(book, a["alice"], a["bob"], [70], prefix="u")
    rows, events = book.expire_due(START_US + TIMEOUT_S * 1_000_000)
    assert rows.tolist() == late.rows.tolist() and book.reason_name(events.reason[0]) == "escrow_timeout"
    assert book.balance_micros(a["alice"]) == 1_000


def test_huge_amounts_stay_exact_in_the_one_by_one_path():
    from mesh.core.money import MAX_AMOUNT_MICROS
    book, a = book_with(deposits={"alice": MAX_AMOUNT_MICROS})
    book.deposit(np.array([a["alice"]] * 2), np.array([MAX_AMOUNT_MICROS] * 2), START_US)
    answer = lock_one_source(book, a["alice"], a["bob"], [MAX_AMOUNT_MICROS] * 5000)  # sums past int64: judged in Python ints
    assert (answer.status == 2).sum() == 3 and book.balance_micros(a["alice"]) == 0
    assert book.locked_total_micros == 3 * MAX_AMOUNT_MICROS


@pytest.mark.parametrize("field, change, error", [
    ("price_micros", lambda m: {**m, "price_micros": np.array([1.5])}, InvalidColumnError),
    ("price_micros", lambda m: {**m, "price_micros": [1]}, InvalidColumnError),
    ("price_micros", lambda m: {**m, "price_micros": np.array([True])}, InvalidColumnError),
    ("price_micros[0]", lambda m: {**m, "price_micros": np.array([-1])}, InvalidAmountError),
    ("source_idx[0]", lambda m: {**m, "source_idx": np.array([7])}, InvalidArgumentError),
    ("target_idx", lambda m: {**m, "target_idx": np.array([0.0])}, InvalidColumnError),
    ("task_ids[0]", lambda m: {**m, "task_ids": [7]}, InvalidTypeError),
    ("task_ids[0]", lambda m: {**m, "task_ids": ["a\nb"]}, InvalidIdError),
    ("task_ids", lambda m: {**m, "task_ids": "t1"}, InvalidColumnError),
    ("now_us", lambda m: {**m, "now_us": 1.0}, InvalidTypeError),
    ("price_micros", lambda m: {**m, "price_micros": np.array([1, 2])}, InvalidArgumentError),
])
def test_bad_input_is_refused_with_an_error_naming_the_field_and_nothing_changes(field, change, error):
    book, a = book_with(deposits={"alice": 10})
    good = {"task_ids": ["t1"], "source_idx": np.array([0]), "target_idx": np.array([1]), "price_micros": np.array([1]),
            "now_us": START_US}
    before = book.snapshot(START_US)
    with pytest.raises(error) as raised:
        book.lock(**change(good))
    assert str(raised.value).startswith(field) and book.snapshot(START_US) == before and len(book.tasks) == 0


def test_names_must_be_ids():
    book = ColumnarBook()
    with pytest.raises(InvalidTypeError, match=r"names\[1\]"):
        book.register(["ok", 5])
    with pytest.raises(InvalidTypeError, match="cap_micros"):
        book.set_cap("ok", 1.5)


@given(prices=st.lists(st.one_of(st.integers(0, 10**12), st.sampled_from([0, 4_000, 9_000])), min_size=17, max_size=120),
       data=st.data())
def test_a_batchs_lines_are_the_records_lines_whichever_way_its_parts_are_folded(prices, data):
    """Batches past the one-record-at-a-time size (odd names and ids to escape, one or many times and
    amounts, rows that run on or not): the columnar lines decode to the record path's, field by field, and
    are the same bytes whether amounts are made per distinct (amount, status) or field by field."""
    book = ColumnarBook(track_balances=False, shard=0, shards=SHARDS)
    names = book.register(AGENTS + ['we"ird', "back\\slash", "ünï"])
    n = len(prices)
    ids = [f"t-{i}" if data.draw(st.booleans(), label="plain id") else f'q"{i}\\x' for i in range(n)]
    pick = st.lists(st.sampled_from(names.tolist()), min_size=n, max_size=n)
    source, target = (np.array(data.draw(pick, label=side), np.int32) for side in ("sources", "targets"))
    locked = book.lock(ids, source, target, np.array(prices, np.int64), START_US)
    ok = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n), label="ok"))
    order = np.array(data.draw(st.permutations(range(n)), label="settle order"))
    settled = book.settle_rows(locked.rows[order], ok, np.where(ok, 0, REASON_CODE["handler_error"]).astype(np.int8),
                               START_US + 7_000_001)
    for events in (locked.events, settled.events, EventColumns.concat([locked.events, settled.events])):
        if len(events) <= 16:
            continue
        records = [orjson.loads(line) for line in book._encode_records(events).splitlines()]
        folded = []
        for few in (0, 10**9):
            with mock.patch.object(_events, "_FEW_AMOUNTS", few):
                folded.append(book.encode(events))
        assert folded[0] == folded[1]
        lines = [orjson.loads(line) for line in folded[0].splitlines()]
        assert lines == records
        for a, b in zip(lines, records):
            assert {k: type(v) for k, v in a.items()} == {k: type(v) for k, v in b.items()}

