"""One task id, one escrow, for every task id a ledger holds (issue 11, finding 5).

A repeat past the ``max_settled_records`` window, on a booth reopened mid-way, on a shard
rebuilt or not, is answered with the first record and writes nothing; the ledger always
verifies and replays to the live state. Keys that collide are told apart by the event
read back. A booth never writes onto a ledger it did not read (``restore_from_ledger=False``).
"""

from __future__ import annotations

import shutil
import tempfile
import time
import tracemalloc
from pathlib import Path

import orjson
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import mesh.core.task_index as task_index
from actors.budget_shard import LOCK, ShardCore, ShardSpec
from ledger import replay_file, snapshot, verify
from ledger.replay import event_at
from ledger.jsonl import JsonlWriter
from mesh import ConfigError, LedgerError, ManualClock, SettlementStatus, Tollbooth, TollboothConfig
from mesh.core.budget import BudgetBook
from mesh.core.clock import iso_utc, now_us
from mesh.core.escrow import EscrowBook
from mesh.core.records import Reason, TollRecord
from mesh.core.task_index import TaskIndex

START_S = 1_767_225_600.0


def kinds_of(path: Path) -> list[tuple[str, str]]:
    return [(e["kind"], e.get("task_id", "")) for e in map(orjson.loads, path.read_bytes().splitlines())]


def replayed_equals_live(booth: Tollbooth, path: Path, clock: ManualClock) -> None:
    book = EscrowBook(BudgetBook(default_cap_micros=None, track_balances=booth.config.track_balances),
                      escrow_timeout_s=booth.config.escrow_timeout_s)
    booth.expire_stale()  # what the live booth does on its next call (it may write expire events)...
    replay_file(book, path)
    book.expire_due(now_us(clock))  # ...and the replayed book, whose ledger may not hold them yet
    assert snapshot(book, now_us(clock)) == booth.snapshot()


# -- examples -------------------------------------------------------------------------


def test_a_repeat_past_the_window_returns_the_first_record_and_writes_nothing(make_booth, ledger_path):
    booth = make_booth(max_settled_records=2, max_daily_toll_per_agent=None)
    first = {}
    for n in range(6):
        booth.charge_sync(f"t{n}", "a", "b")
        first[f"t{n}"] = booth.release_sync(f"t{n}")
    events = kinds_of(ledger_path)
    for n in range(6):
        assert booth.charge_sync(f"t{n}", "a", "b") == first[f"t{n}"]
        assert booth.release_sync(f"t{n}") == first[f"t{n}"]
        assert booth.refund_sync(f"t{n}") == first[f"t{n}"]
    assert kinds_of(ledger_path) == events
    assert booth.get_stats()["total_records"] == 2 and booth._book.remembered_count == 4
    assert verify(ledger_path).ok


def test_a_reopened_booth_remembers_every_task_id(make_booth, ledger_path, clock):
    booth = make_booth(max_settled_records=1, max_daily_toll_per_agent="0.0025", paper_mode=True)
    answers = [booth.charge_sync(f"t{n}", "a", "b") for n in range(4)]  # two paid, then two over the cap
    assert [r.status for r in answers] == [SettlementStatus.RELEASED] * 2 + [SettlementStatus.FAILED] * 2
    booth.close()
    again = make_booth(max_settled_records=1, max_daily_toll_per_agent="0.0025", paper_mode=True)
    clock.advance(86_400)  # a new day: room again, and still one escrow per task id
    assert [again.charge_sync(f"t{n}", "a", "b") for n in range(4)] == answers
    assert again.charge_sync("t4", "a", "b").status is SettlementStatus.RELEASED
    assert verify(ledger_path).ok
    replayed_equals_live(again, ledger_path, clock)


def test_a_pending_toll_past_the_window_may_still_be_paid(make_booth, ledger_path):
    booth = make_booth(max_settled_records=0, require_payment_before_route=True)
    booth.set_x402_verifier(lambda wallet, signature, amount_usd: True)
    assert booth.charge_sync("t1", "a", "b").status is SettlementStatus.PENDING
    assert booth.charge_sync("t1", "a", "b", "0xpayer", "sig").status is SettlementStatus.ESCROW_LOCKED
    assert booth.release_sync("t1").status is SettlementStatus.RELEASED
    assert booth.charge_sync("t1", "a", "b", "0xpayer", "sig").status is SettlementStatus.RELEASED
    assert verify(ledger_path).ok


def test_an_expired_escrow_past_the_window_is_answered_refunded(make_booth, ledger_path, clock):
    booth = make_booth(max_settled_records=0, escrow_timeout_s=10)
    booth.charge_sync("t1", "a", "b")
    clock.advance(11)
    booth.charge_sync("t2", "a", "b")  # sweeps t1 first
    record = booth.charge_sync("t1", "a", "b")
    assert (record.status, record.reason) == (SettlementStatus.REFUNDED, "escrow_timeout")
    assert verify(ledger_path).ok


def test_keys_that_collide_are_told_apart_by_the_event(make_booth, ledger_path, monkeypatch):
    monkeypatch.setattr(task_index, "hash", lambda task_id: 42, raising=False)  # every task id has one key
    booth = make_booth(max_settled_records=1, max_daily_toll_per_agent=None)
    first = {}
    for n in range(5):
        booth.charge_sync(f"t{n}", "a", "b")
        first[f"t{n}"] = booth.release_sync(f"t{n}")
    assert booth.charge_sync("new", "a", "b").status is SettlementStatus.ESCROW_LOCKED
    assert all(booth.charge_sync(t, "a", "b") == record for t, record in first.items())
    assert verify(ledger_path).ok


def test_a_booth_never_writes_onto_a_ledger_it_did_not_read(make_booth, ledger_path):
    booth = make_booth()
    booth.charge_sync("t1", "a", "b")
    booth.close()
    size = ledger_path.stat().st_size
    with pytest.raises(ConfigError, match="already holds a ledger and restore_from_ledger is False"):
        make_booth(restore_from_ledger=False)
    assert ledger_path.stat().st_size == size
    adopted = make_booth(restore_from_ledger=True)
    assert adopted.charge_sync("t1", "a", "b").status is SettlementStatus.ESCROW_LOCKED
    adopted.close()
    ledger_path.write_bytes(b"")  # an empty ledger holds nothing to contradict
    assert make_booth(restore_from_ledger=False).charge_sync("t1", "a", "b").status is SettlementStatus.ESCROW_LOCKED


def test_a_booth_without_a_ledger_keeps_its_window_only(tmp_path, clock):
    booth = Tollbooth(TollboothConfig(ledger_enabled=False, max_settled_records=1, paper_mode=True), clock=clock)
    booth.charge_sync("t1", "a", "b")
    booth.charge_sync("t2", "a", "b")
    assert booth._book.remembered_count == 0  # nothing written, nothing a repeat could contradict


def test_a_book_replayed_without_a_ledger_to_recall_from_fails_closed():
    seqs = iter(range(100))
    book = EscrowBook(BudgetBook(default_cap_micros=None), escrow_timeout_s=None, max_settled_records=0,
                      journal=lambda kind, record, ts_us: next(seqs))
    book.charge(TollRecord("t1", "a", "b", 5), 0, instant_release=True)
    with pytest.raises(LedgerError, match="no ledger to recall it from"):
        book.charge(TollRecord("t1", "a", "b", 5), 0)


def test_pending_failed_and_settled_records_past_the_window_are_told_apart(make_booth, ledger_path, clock):
    options = dict(max_settled_records=16, max_daily_toll_per_agent="0.05", require_payment_before_route=True)
    booth = make_booth(**options)  # pending records leave the window too, and are not remembered (they may be paid)
    booth.set_x402_verifier(lambda wallet, signature, amount_usd: signature == "good")
    first = {}
    for n in range(300):
        paid = ("0xpayer", "good" if n % 7 else "bad") if n % 5 else (None, None)
        first[f"t{n}"] = booth.charge_sync(f"t{n}", "a", "b", *paid)
        if n % 3 == 0:
            first[f"t{n}"] = booth.release_sync(f"t{n}") or first[f"t{n}"]
    assert booth.get_stats()["total_records"] == 16 + booth.get_stats()["active_escrows"]
    for _ in range(2):
        for task_id, record in first.items():
            if record.status is not SettlementStatus.PENDING:
                assert booth.charge_sync(task_id, "a", "b", "0xpayer", "good") == record
        booth.close()
        assert verify(ledger_path).ok
        booth = make_booth(**options)
        booth.set_x402_verifier(lambda wallet, signature, amount_usd: True)


def test_an_old_ledgers_second_escrow_replays_and_verify_names_it(tmp_path):
    path = tmp_path / "toll_ledger.jsonl"
    writer = JsonlWriter(path)
    base = {"v": 1, "seq": None, "ts_us": START_US, "source_agent": "a", "target_agent": "b", "amount_micros": 5,
            "amount_usd": 5e-06}
    writer.append([  # what a booth wrote before this fix: t1 charged again once it left a window of one
        {**base, "kind": "paper_release", "task_id": "t1", "status": "released"},
        {**base, "kind": "paper_release", "task_id": "t2", "status": "released"},
        {**base, "kind": "paper_release", "task_id": "t1", "status": "released"},
        {**base, "kind": "paper_release", "task_id": "t3", "status": "released"},
    ])
    writer.close()
    book = EscrowBook(BudgetBook(default_cap_micros=None), escrow_timeout_s=None, max_settled_records=1,
                      recall=lambda task_id, seq: event_at(path, seq))
    replay_file(book, path)  # the money moved twice: the replay applies it (verify judges it)
    assert book.find("t1").status is SettlementStatus.RELEASED and book.find("t2") is not None
    assert ["one task id, one escrow" in p.message for p in verify(path).problems] == [True]


# -- random programs over a small window, reopened mid-way --------------------------------

TASKS = tuple(f"t{n}" for n in range(10))
AGENTS = ("a", "b", "c")


class RepeatMachine(RuleBasedStateMachine):
    """Charge, release, refund, repeat, expire and reopen, over a window of 0 to 3 records."""

    @initialize(window=st.integers(0, 3), paper=st.booleans(), cap=st.sampled_from([None, "0.003"]))
    def start(self, window, paper, cap):
        self.dir = Path(tempfile.mkdtemp(prefix="tollmesh-idem-"))
        self.clock = ManualClock(START_S)
        self.options = dict(ledger_path=self.dir / "toll_ledger.jsonl", paper_mode=paper, max_settled_records=window,
                            max_daily_toll_per_agent=cap, escrow_timeout_s=30.0)
        self.booth = Tollbooth(TollboothConfig(**self.options), clock=self.clock)
        self.current: dict[str, TollRecord] = {}  # every toll's record as it stands, by the answers seen
        self.lock_us: dict[str, int] = {}

    def teardown(self):
        if hasattr(self, "booth"):
            self.booth.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def model_expire(self) -> None:
        now = now_us(self.clock)
        for task, record in self.current.items():
            if record.status is SettlementStatus.ESCROW_LOCKED and self.lock_us[task] + 30_000_000 <= now:
                self.current[task] = record.moved_to(SettlementStatus.REFUNDED, settled_at=iso_utc(now, "seconds"),
                                                     reason=Reason.ESCROW_TIMEOUT.value)

    @precondition(lambda self: hasattr(self, "booth"))
    @rule(task=st.sampled_from(TASKS), source=st.sampled_from(AGENTS), payee=st.sampled_from(AGENTS),
          amount=st.sampled_from(["0.001", "0.002"]))
    def charge(self, task, source, payee, amount):
        self.model_expire()
        record = self.booth.charge_sync(task, source, payee, amount_usd=amount)
        if task in self.current:
            assert record == self.current[task], "a repeat must return the first record as it stands"
        else:
            self.current[task] = record
            self.lock_us[task] = now_us(self.clock)

    @precondition(lambda self: hasattr(self, "booth"))
    @rule(task=st.sampled_from(TASKS), release=st.booleans())
    def settle(self, task, release):
        self.model_expire()
        record = self.booth.release_sync(task) if release else self.booth.refund_sync(task)
        known = self.current.get(task)
        if known is None:
            assert record is None
        elif known.status is SettlementStatus.ESCROW_LOCKED:
            assert record.status is (SettlementStatus.RELEASED if release else SettlementStatus.REFUNDED)
            assert record[:5] == known[:5]
            self.current[task] = record
        else:
            assert record == known

    @precondition(lambda self: hasattr(self, "booth"))
    @rule(seconds=st.sampled_from([1.0, 20.0, 31.0, 86_400.0]))
    def advance(self, seconds):
        self.clock.advance(seconds)

    @precondition(lambda self: hasattr(self, "booth"))
    @rule(window=st.integers(0, 3))
    def reopen(self, window):
        before = self.booth.snapshot()
        self.booth.close()
        self.options["max_settled_records"] = window
        self.booth = Tollbooth(TollboothConfig(**self.options), clock=self.clock)
        assert self.booth.snapshot() == before

    @precondition(lambda self: hasattr(self, "booth"))
    @invariant()
    def the_ledger_verifies_and_replays(self):
        self.model_expire()  # replayed_equals_live sweeps the booth now: the model's expiries are at this time too
        path = self.options["ledger_path"]
        if path.exists():
            result = verify(path)
            assert result.ok, [str(p) for p in result.problems]
            replayed_equals_live(self.booth, path, self.clock)


RepeatMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
TestRepeats = RepeatMachine.TestCase


# -- the mesh's budget shards (without Ray) -----------------------------------------------------

START_US = 1_767_225_600_000_000


class ShardLedger:
    """One shard and the ledger its answers go to, as the coordinator writes them (or holds them back)."""

    def __init__(self, root: Path, window: int) -> None:
        self.path = root / "toll_ledger.jsonl"
        self.writer = JsonlWriter(self.path)
        self.spec = ShardSpec(index=0, shards=1, default_cap_micros=None, max_settled_records=window,
                              ledger_path=str(self.path))
        self.shard = ShardCore(self.spec)
        self.held: list[bytes] = []

    def call(self, answer: tuple, *, hold: bool = False) -> tuple:
        if answer[2]:
            if hold:
                self.held.append(answer[1])
            else:
                self.writer.append_encoded(answer[1])
        return answer

    def write_held(self) -> None:
        for lines in self.held:
            self.writer.append_encoded(lines)
        self.held = []

    def lock(self, task_id: str, *, hold: bool = False) -> tuple:
        op = (LOCK, task_id, "a", "b", 5, 0.0, None, None, None)
        return self.call(self.shard.lock_batch([op], START_US, "live"), hold=hold)

    def release(self, task_id: str, *, hold: bool = False) -> tuple:
        return self.call(self.shard.settle_batch([(task_id, True, None)], START_US, "live"), hold=hold)


def test_a_shard_answers_a_repeat_past_its_window_with_the_first_record(tmp_path):
    ledger = ShardLedger(tmp_path, window=2)
    first = {}
    for n in range(6):
        ledger.lock(f"t{n}")
        first[f"t{n}"] = ledger.release(f"t{n}")[0][0]
    for rebuilt in (False, True):
        if rebuilt:
            ledger.shard.rebuild()
        for n in range(6):
            records, _, events, _, repeats, *_ = ledger.lock(f"t{n}")
            assert (records, events, repeats) == ([first[f"t{n}"]], 0, [0])
    assert verify(ledger.path).ok


def test_a_shard_answers_a_repeat_from_memory_before_and_after_its_settlement_is_on_disk(tmp_path):
    ledger = ShardLedger(tmp_path, window=0)  # the columnar book keeps every task row: no window to read past
    ledger.lock("t1")
    settled = ledger.release("t1", hold=True)[0][0]  # its append is still on its way to the writer
    records, _, events, _, repeats, *_ = ledger.lock("t1")
    assert (records, events, repeats) == ([settled], 0, [0])
    ledger.write_held()  # what the coordinator flushes before it rebuilds the shard
    ledger.shard.rebuild()
    records, _, events, _, repeats, *_ = ledger.lock("t1")
    assert (records, events, repeats) == ([settled], 0, [0])
    assert verify(ledger.path).ok


def test_the_mesh_answers_a_repeat_past_its_window_and_its_ledger_verifies(make_mesh):
    mesh = make_mesh(max_settled_records=2)
    booth = mesh.tollbooth(TollboothConfig(paper_mode=False, toll_per_message_usd="0.01"))
    first = {}
    for n in range(8):
        booth.charge_sync(f"t{n}", f"a{n % 3}", "b")
        first[f"t{n}"] = booth.release_sync(f"t{n}")
    assert {t: booth.charge_sync(t, f"a{int(t[1:]) % 3}", "b") for t in first} == first
    result = verify(mesh.config.ledger_path)
    assert result.ok and result.events == 16, [str(p) for p in result.problems]


# -- a million task ids -------------------------------------------------------------------------


def test_the_index_holds_a_million_ids_in_about_18_bytes_each():
    ids = [f"task-{n}" for n in range(1_000_000)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        index = TaskIndex()
        for seq, task_id in enumerate(ids):
            index.add(task_id, seq)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    print(f"\nTaskIndex: {held / len(ids):.1f} bytes per id over {len(ids):,} ids ({index.nbytes() / len(ids):.1f} in arrays)")
    assert held / len(ids) < 32
    assert all(index.candidates(ids[n]) == [n] for n in range(0, len(ids), 997))
    assert sum(bool(index.candidates(f"new-{n}")) for n in range(10_000)) == 0


@pytest.mark.slow
def test_a_booth_keeps_one_escrow_per_task_id_over_a_million_ids(tmp_path, clock):
    path = tmp_path / "toll_ledger.jsonl"
    options = dict(ledger_path=path, paper_mode=True, max_settled_records=1_000, max_daily_toll_per_agent=None)
    booth = Tollbooth(TollboothConfig(**options), clock=clock)
    started = time.perf_counter()
    for n in range(1_000_000):
        booth.charge_sync(f"task-{n}", "a", "b")
    elapsed = time.perf_counter() - started
    book = booth._book
    assert book.remembered_count == 999_000
    size = path.stat().st_size
    samples = range(0, 1_000_000, 4_999)
    assert all(booth.charge_sync(f"task-{n}", "a", "b").task_id == f"task-{n}" for n in samples)
    assert path.stat().st_size == size  # no repeat wrote anything
    print(f"\n1,000,000 ids in {elapsed:.1f} s; memory of the ids past the window: "
          f"{book.history_bytes() / book.remembered_count:.1f} bytes per id (arrays and filter)")
    booth.close()
    again = Tollbooth(TollboothConfig(**options), clock=clock)
    assert again._book.remembered_count == 999_000
    assert all(again.charge_sync(f"task-{n}", "a", "b").status is SettlementStatus.RELEASED for n in samples)
    assert again.charge_sync("task-new", "a", "b").status is SettlementStatus.RELEASED
    assert path.stat().st_size > size
    again.close()
    result = verify(path)
    assert result.ok and result.events == 1_000_001
