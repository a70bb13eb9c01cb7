"""Property tests: random sequences of charge, release, refund, deposit, expiry, day rollover,
manual resets, x402 payments and failing ledger writes, over several agents, checked step by
step against an independent model.

Invariants: every outcome (status, reason) matches the model; a cap is never exceeded;
conservation holds; charging a task id again returns its first record; replaying the
ledger rebuilds exactly the live balances, caps used and open escrows.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from ledger import replay_file, snapshot
from mesh import LedgerError, ManualClock, SettlementStatus, Tollbooth, TollboothConfig
from mesh.core.budget import BudgetBook
from mesh.core.clock import day_of, now_us
from mesh.core.escrow import EscrowBook

AGENTS = ("a", "b", "c", "d")
TASKS = tuple(f"t{n}" for n in range(24))
START_S = 1_767_225_600.0 + 86_400 - 300  # five minutes before a midnight


@dataclass
class ModelToll:
    source: str
    target: str
    amount: int
    status: str
    reason: Optional[str]
    lock_us: int = 0
    period: tuple = (0, 0)


class EscrowMachine(RuleBasedStateMachine):
    @initialize(
        balances=st.booleans(),
        cap=st.one_of(st.none(), st.integers(0, 3_000)),
        timeout_s=st.sampled_from([1.0, 30.0, 600.0]),
        paper=st.booleans(),
        require_payment=st.booleans(),
    )
    def start(self, balances, cap, timeout_s, paper, require_payment):
        self.dir = Path(tempfile.mkdtemp(prefix="tollmesh-prop-"))
        self.clock = ManualClock(START_S)
        self.config = TollboothConfig(
            ledger_path=self.dir / "toll_ledger.jsonl", paper_mode=paper, track_balances=balances,
            max_daily_toll_per_agent=None if cap is None else f"0.{cap:06d}",
            escrow_timeout_s=timeout_s, max_settled_records=10_000,
            require_payment_before_route=require_payment,
        )
        self.booth = Tollbooth(self.config, clock=self.clock)
        self.booth.set_x402_verifier(lambda wallet, signature, amount_usd: signature == "good")
        self.cap, self.balances_on, self.timeout_us = cap, balances, round(timeout_s * 1e6)
        self.tolls: dict[str, ModelToll] = {}
        self.balance: dict[str, int] = {}
        self.deposits = 0
        self.epoch = 0
        self.first_records: dict[str, object] = {}

    def teardown(self):
        if hasattr(self, "booth"):
            self.check_replay()
            self.booth.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- the model ----------------------------------------------------------------

    def now(self) -> int:
        return now_us(self.clock)

    def model_expire(self) -> None:
        for toll in self.tolls.values():
            if toll.status == "escrow_locked" and toll.lock_us + self.timeout_us <= self.now():
                self.model_settle(toll, "refunded", "escrow_timeout")

    def model_used(self, agent: str) -> int:
        period = (day_of(self.now()), self.epoch)
        return sum(
            t.amount for t in self.tolls.values()
            if t.source == agent and t.period == period and t.status in ("escrow_locked", "released")
        )

    def model_settle(self, toll: ModelToll, status: str, reason: Optional[str]) -> None:
        toll.status, toll.reason = status, reason
        if status == "released" and self.balances_on:
            self.balance[toll.target] = self.balance.get(toll.target, 0) + toll.amount
        if status == "refunded" and self.balances_on:
            self.balance[toll.source] += toll.amount

    def model_charge(self, task, source, target, amount, instant, payment) -> tuple[str, Optional[str]]:
        self.model_expire()
        if task in self.tolls and self.tolls[task].status != "pending":
            toll = self.tolls[task]
            return toll.status, toll.reason
        if not self.config.paper_mode and self.config.require_payment_before_route and payment is None:
            self.tolls[task] = ModelToll(source, target, amount, "pending", "payment_required")
            return "pending", "payment_required"
        reason = None
        if payment == "bad":
            reason = "x402_rejected"
        elif self.balances_on and source not in self.balance:
            reason = "unknown_agent"
        elif self.balances_on and self.balance[source] < amount:
            reason = "insufficient_funds"
        elif self.cap is not None and self.model_used(source) + amount > self.cap:
            reason = "over_daily_cap"
        if reason is not None:
            self.tolls[task] = ModelToll(source, target, amount, "failed", reason)
            return "failed", reason
        toll = ModelToll(source, target, amount, "escrow_locked", None, self.now(), (day_of(self.now()), self.epoch))
        self.tolls[task] = toll
        if self.balances_on:
            self.balance[source] -= amount
        if instant:
            self.model_settle(toll, "released", None)
        return toll.status, toll.reason

    # -- rules ----------------------------------------------------------------------

    @precondition(lambda self: getattr(self, "balances_on", False))
    @rule(agent=st.sampled_from(AGENTS), amount=st.integers(0, 2_000))
    def deposit(self, agent, amount):
        self.booth.deposit(agent, f"0.{amount:06d}")
        self.balance[agent] = self.balance.get(agent, 0) + amount
        self.deposits += amount

    @rule(
        task=st.sampled_from(TASKS), source=st.sampled_from(AGENTS), payee=st.sampled_from(AGENTS),
        amount=st.integers(0, 1_500), escrow=st.sampled_from([None, True, False]),
        payment=st.sampled_from([None, None, "good", "bad"]),
    )
    def charge(self, task, source, payee, amount, escrow, payment):
        instant = (not escrow) if escrow is not None else self.config.paper_mode
        expected = self.model_charge(task, source, payee, amount, instant, payment)
        wallet = None if payment is None else "0xpayer"
        record = self.booth.charge_sync(
            task, source, payee, wallet, payment, amount_usd=f"0.{amount:06d}", escrow=escrow
        )
        assert (record.status.value, record.reason) == expected
        first = self.first_records.setdefault(task, record)
        if first.status is not SettlementStatus.PENDING:  # a PENDING toll may be retried
            identity = ("task_id", "source_agent", "target_agent", "amount_micros", "nonce", "created_at")
            assert all(getattr(record, f) == getattr(first, f) for f in identity), "a second escrow for one task id"
        else:
            self.first_records[task] = record

    @rule(task=st.sampled_from(TASKS))
    def release(self, task):
        self.model_expire()
        toll = self.tolls.get(task)
        if toll is not None and toll.status == "escrow_locked":
            self.model_settle(toll, "released", None)
        record = self.booth.release_sync(task)
        self.check_outcome(task, record)

    @rule(task=st.sampled_from(TASKS))
    def refund(self, task):
        self.model_expire()
        toll = self.tolls.get(task)
        if toll is not None and toll.status == "escrow_locked":
            self.model_settle(toll, "refunded", "refunded_by_caller")
        record = self.booth.refund_sync(task)
        self.check_outcome(task, record)

    @rule(seconds=st.sampled_from([0.000001, 0.5, 1.0, 29.0, 60.0, 600.0, 3_600.0, 86_400.0]))
    def advance(self, seconds):
        self.clock.advance(seconds)

    @precondition(lambda self: hasattr(self, "booth"))
    @rule()
    def reset_daily(self):
        self.booth.reset_daily()
        self.epoch += 1

    @precondition(lambda self: hasattr(self, "booth"))
    @rule(
        op=st.sampled_from(["charge", "release", "refund", "deposit", "reset_daily"]),
        task=st.sampled_from(TASKS), source=st.sampled_from(AGENTS), amount=st.integers(0, 1_500),
    )
    def disk_fails(self, op, task, source, amount):
        """A ledger write fails mid-operation: the call raises or needed no write; nothing changes."""
        self.booth.expire_stale()
        self.model_expire()
        before, size = self.booth.snapshot(), self.config.ledger_path.stat().st_size
        writer = self.booth._writer.jsonl

        def broken_disk(data, cut_to=None):
            raise LedgerError("injected: no space left on device")

        writer._write = broken_disk  # every append of the writer goes through _write
        try:
            if op == "charge":
                self.booth.charge_sync(task, source, "a", amount_usd=f"0.{amount:06d}")
            elif op in ("release", "refund"):
                getattr(self.booth, f"{op}_sync")(task)
            elif op == "deposit" and self.balances_on:
                self.booth.deposit(source, f"0.{amount:06d}")
            elif op == "reset_daily":
                self.booth.reset_daily()
        except LedgerError:
            pass
        finally:
            del writer._write
        assert self.booth.snapshot() == before
        assert self.config.ledger_path.stat().st_size == size

    @precondition(lambda self: hasattr(self, "booth"))
    @rule()
    def check_replay(self):
        replayed = EscrowBook(
            BudgetBook(default_cap_micros=self.config.max_daily_toll_micros, track_balances=self.balances_on),
            escrow_timeout_s=self.config.escrow_timeout_s,
        )
        replay_file(replayed, self.config.ledger_path)
        now = self.now()
        replayed.expire_due(now)  # the live booth sweeps on its next call; so does the replayed book
        assert snapshot(replayed, now) == self.booth.snapshot()

    def check_outcome(self, task, record):
        toll = self.tolls.get(task)
        if toll is None:
            assert record is None
        else:
            assert (record.status.value, record.reason) == (toll.status, toll.reason)

    # -- invariants -------------------------------------------------------------------

    @precondition(lambda self: hasattr(self, "booth"))
    @invariant()
    def caps_and_money_hold(self):
        self.booth.expire_stale()
        self.model_expire()
        budget = self.booth._book.budget
        today = day_of(self.now())
        for agent in AGENTS:
            used = budget.used_micros(agent, today)
            assert used == self.model_used(agent)
            assert self.cap is None or used <= self.cap
            open_locked = sum(
                t.amount for t in self.tolls.values() if t.source == agent and t.status == "escrow_locked"
            )
            assert budget.locked_micros(agent) == open_locked
        if self.balances_on:
            assert budget.balances() == {a: v for a, v in self.balance.items()}
            assert budget.balances_total_micros + budget.locked_total_micros == self.deposits
        opened = {r.task_id for r in self.booth._book.open_escrows()}
        assert opened == {t for t, toll in self.tolls.items() if toll.status == "escrow_locked"}


# A few thousand random programs of up to 40 steps each, whatever the profile (about 25 s).
EscrowMachine.TestCase.settings = settings(
    settings(), max_examples=int(os.environ.get("TOLLMESH_STATEFUL_EXAMPLES", "2000")), stateful_step_count=40
)
TestEscrowMachine = EscrowMachine.TestCase
