"""The budget shard actor: the escrow book of the agents hashed to it, driven in batches.

Each shard holds a pure :class:`~mesh.escrow.EscrowBook` over the agents whose id
:func:`~mesh.sharding.shard_of` maps to it. The escrow coordinator is its only caller
and sends it whole batches: :meth:`BudgetShard.lock_batch` (lock, reject, pend or
paper-release each draft, cap and funds checked atomically, one after another),
:meth:`BudgetShard.settle_batch` (release or refund), :meth:`BudgetShard.expire_due`,
deposits and credits. Every call answers a :data:`ShardAnswer`: the records, the
events it journaled (JSON lines encoded here, on the shard's core, for the ledger
writer), and the releases paid to agents another shard holds (credits to forward).

State lives in memory and is rebuilt from the ledger: a shard that Ray restarts after
a crash refuses work (:class:`ShardRecoveringError`) until the coordinator, having
flushed every event already handed to it, calls :meth:`BudgetShard.rebuild`.

>>> import ray                                                           # doctest: +SKIP
>>> shard = BudgetShard.remote(ShardSpec(index=0, shards=1, default_cap_micros=None))  # doctest: +SKIP
>>> records, lines, events, credits, repeats = ray.get(shard.lock_batch.remote(
...     [(LOCK, "t1", "alice", "bob", 10, 0.0, None, None, None)], 0, "live"))  # doctest: +SKIP
>>> records[0].status.value, events                                       # doctest: +SKIP
('escrow_locked', 1)
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Optional

import orjson
import ray

from actors.agent_host import OK, refund_reason
from actors.fast_lane import GO_AROUND, FastAnswer, FastPlan, fast_locked, only
from actors.gc_tuning import tune_gc
from actors.run_files import LocalFiles, RunFiles, files_from
from actors.wire import unpack
from ledger.events import record_event
from ledger.jsonl import encode_events
from ledger.replay import event_at, replay_shard, settled_event, snapshot
from mesh.budget import BudgetBook
from mesh.clock import iso_utc
from mesh.errors import LedgerError, TollmeshError
from mesh.escrow import DEFAULT_MAX_SETTLED_RECORDS, EscrowBook
from mesh.memory import rss_bytes
from mesh.records import Reason, SettlementStatus, TollRecord, record_to_wire
from mesh.sharding import shard_of

FAST_SETTLE_WAIT_S = 10.0  # an ordinary call waits at most this long for the lane's settlement to be written

# What lock_batch does with a draft (the first item of each op).
LOCK, INSTANT, REJECT, PEND = 0, 1, 2, 3

#: (records, encoded events, event count, credits as (target agent, amount_micros, event index),
#: indices of the ops that changed nothing (a task id already known, an escrow not open: the record
#: is answered as it is), the escrows the call expired before its ops (their records)).
ShardAnswer = tuple[list[Optional[TollRecord]], bytes, int, list[tuple[str, int, int]], list[int], list[TollRecord]]


class ShardRecoveringError(TollmeshError):
    """A restarted shard refuses work until the coordinator has it rebuilt from the ledger."""


@dataclass(frozen=True)
class ShardSpec:
    """What a shard needs to build (and rebuild) its book."""

    index: int
    shards: int
    default_cap_micros: Optional[int]
    agent_caps_micros: dict[str, Optional[int]] = field(default_factory=dict)
    track_balances: bool = False
    escrow_timeout_s: Optional[float] = 300.0
    max_settled_records: int = DEFAULT_MAX_SETTLED_RECORDS
    ledger_path: Optional[str] = None  # rebuild from here; None: start empty
    agent_caps_path: Optional[str] = None  # more per-agent caps, a JSON object {agent: micros or null} (large maps)
    runtime_caps_path: Optional[str] = None  # caps changed while the mesh runs (written by the coordinator)

    def caps_micros(self, files: RunFiles) -> dict[str, Optional[int]]:
        """Every per-agent cap: the file's (read at each build, so a restarted shard has them), then the spec's."""
        caps: dict[str, Optional[int]] = {}
        if self.agent_caps_path is not None:
            data = files.read(self.agent_caps_path)
            if data is None:
                raise FileNotFoundError(f"per-agent caps not found: {self.agent_caps_path}")
            caps = orjson.loads(data)
        return {**caps, **self.agent_caps_micros}

    def caps(self, files: RunFiles) -> tuple[Optional[int], dict[str, Optional[int]]]:
        """The default cap and every per-agent cap, with the changes made while the mesh runs
        (read at each build: a restarted shard keeps a cap set after the mesh started)."""
        default_cap_micros, agent_caps_micros = self.default_cap_micros, self.caps_micros(files)
        runtime = None if self.runtime_caps_path is None else files.read(self.runtime_caps_path)
        if runtime is not None:
            changed = orjson.loads(runtime)
            default_cap_micros = changed["default_cap_micros"]
            agent_caps_micros.update(changed["agent_caps_micros"])
        return default_cap_micros, agent_caps_micros


class ShardCore:
    """The shard's logic without Ray (unit-tested directly; the actor wraps it)."""

    def __init__(self, spec: ShardSpec, files: Optional[RunFiles] = None, *, build: bool = True) -> None:
        """``build``: rebuild from the ledger and read the caps now (False: an empty book, for a
        restarted shard that waits for the coordinator's :meth:`rebuild`)."""
        self.spec = spec
        self.files: RunFiles = LocalFiles() if files is None else files  # where the ledger and caps are read
        self.rebuilt_through_seq = 0  # credits of releases before this seq are in the rebuilt state
        self._events: list[dict[str, Any]] = []
        self._credits: list[tuple[str, int, int]] = []
        self._mode: Optional[str] = None
        self.book = self._new_book()
        if build:
            self.rebuild()

    # -- batches ----------------------------------------------------------------

    def lock_batch(self, ops: list[tuple], now_us: int, mode: str) -> ShardAnswer:
        """Lock, paper-release, reject or pend each op ``(action, task_id, source, target,
        amount_micros, amount_tokens, payer_wallet, tx_signature, reason)``, in order."""
        self._begin(mode)
        book, created_at = self.book, iso_utc(now_us, "seconds")
        expired = book.expire_due(now_us)  # first: no op of the batch then expires another's escrow on the way
        records: list[Optional[TollRecord]] = []
        repeats: list[int] = []
        for action, task_id, source, target, amount, tokens, wallet, signature, reason in ops:
            known = book.find(task_id)  # past the settled window too, read back from the ledger (see _recall)
            if known is not None and known.status is not SettlementStatus.PENDING:
                repeats.append(len(records))
                records.append(known)
                continue
            draft = TollRecord(
                task_id, source, target, amount, tokens, tx_signature=signature, payer_wallet=wallet,
                nonce=hashlib.blake2b(task_id.encode(), digest_size=16).hexdigest(), created_at=created_at,
            )
            if action == LOCK or action == INSTANT:
                records.append(book.charge(draft, now_us, instant_release=action == INSTANT))
            elif action == REJECT:
                records.append(book.reject(draft, Reason(reason), now_us))
            else:
                records.append(book.pend(draft, now_us))
        return self._answer(records, repeats, expired)

    def settle_batch(self, ops: list[tuple[str, bool, Optional[str]]], now_us: int, mode: str) -> ShardAnswer:
        """Release (``True``) or refund (``False``, with a reason) each ``(task_id, release, reason)``."""
        self._begin(mode)
        book = self.book
        expired = book.expire_due(now_us)  # first: an escrow past its deadline is refunded as expired, once
        records: list[Optional[TollRecord]] = []
        repeats: list[int] = []  # the ops whose escrow was not open: settled before, expired above, or unknown
        for task_id, release, reason in ops:
            known = book.get(task_id)
            if known is None or known.status is not SettlementStatus.ESCROW_LOCKED:
                repeats.append(len(records))
            records.append(book.release(task_id, now_us) if release else book.refund(task_id, now_us, Reason(reason)))
        return self._answer(records, repeats, expired)

    def expire_due(self, now_us: int, mode: str) -> ShardAnswer:
        """Refund every lock past its timeout (reason ``escrow_timeout``)."""
        self._begin(mode)
        return self._answer(self.book.expire_due(now_us))

    def deposit(self, agent: str, amount_micros: int, now_us: int, mode: str) -> ShardAnswer:
        return self.deposit_batch([(agent, amount_micros)], now_us, mode)

    def deposit_batch(self, deposits: list[tuple[str, int]], now_us: int, mode: str) -> ShardAnswer:
        """Add funds to each ``(agent, amount_micros)``, in order: one deposit event each."""
        self._begin(mode)
        for agent, amount_micros in deposits:
            self.book.deposit(agent, amount_micros, now_us)
        return self._answer([])

    def credit(self, credits: list[tuple[str, int, int]]) -> int:
        """Credit releases other shards paid to this shard's agents: ``(agent, amount_micros, seq)``.

        A credit whose release (at ledger ``seq``) a rebuild already replayed is skipped,
        so the coordinator may retry after a crash. Returns the amount credited.
        """
        credited = 0
        for agent, amount_micros, seq in credits:
            if seq >= self.rebuilt_through_seq:
                self.book.budget.credit(agent, amount_micros)
                credited += amount_micros
        return credited

    def reset_usage(self) -> None:
        """Forget every agent's daily usage (the coordinator journals one ``reset_daily`` for all shards)."""
        self.book.budget.reset_usage()

    def set_caps(self, default_cap_micros: Optional[int], agent_caps_micros: dict[str, Optional[int]]) -> None:
        budget = self.book.budget
        budget.default_cap_micros = default_cap_micros
        for agent, cap in agent_caps_micros.items():
            budget.set_cap(agent, cap)

    def rebuild(self) -> int:
        """Forget everything and replay this shard's part of the ledger; return the ledger's next seq."""
        self.book = self._new_book()
        if self.spec.ledger_path is not None:
            self.rebuilt_through_seq = replay_shard(
                self.book, self.spec.ledger_path, shard=self.spec.index, shards=self.spec.shards, files=self.files
            )
        self.book.journal = self._journal
        self.set_caps(*self.spec.caps(self.files))
        return self.rebuilt_through_seq

    # -- queries ----------------------------------------------------------------

    def get(self, task_id: str) -> Optional[TollRecord]:
        """The record of ``task_id`` as it stands (a pure read: call :meth:`expire_due` first)."""
        return self.book.get(task_id)

    def open_sources(self) -> dict[str, str]:
        """The source agent of every open escrow, by task id."""
        return {record.task_id: record.source_agent for record in self.book.open_escrows()}

    def snapshot(self, now_us: int) -> dict[str, Any]:
        """This shard's part of :func:`ledger.replay.snapshot`, plus its transfer totals."""
        state = snapshot(self.book, now_us)
        budget = self.book.budget
        state["transfers_in_micros"] = budget.transfers_in_micros
        state["transfers_out_micros"] = budget.transfers_out_micros
        state["balances_total_micros"] = budget.balances_total_micros
        return state

    def stats(self) -> dict[str, Any]:
        budget = self.book.budget
        return {
            "index": self.spec.index, "open_escrows": self.book.open_count, "records": self.book.record_count,
            "locked_total_micros": budget.locked_total_micros, "deposits_total_micros": budget.deposits_total_micros,
            "balances_total_micros": budget.balances_total_micros,
            "transfers_in_micros": budget.transfers_in_micros, "transfers_out_micros": budget.transfers_out_micros,
            "rebuilt_through_seq": self.rebuilt_through_seq,
        }

    # -- internals --------------------------------------------------------------

    def _new_book(self) -> EscrowBook:
        spec = self.spec
        budget = BudgetBook(
            default_cap_micros=None, track_balances=spec.track_balances,
            owns_agent=lambda agent: shard_of(agent, spec.shards) == spec.index,
        )
        recall = None if spec.ledger_path is None else self._recall
        return EscrowBook(budget, escrow_timeout_s=spec.escrow_timeout_s, max_settled_records=spec.max_settled_records,
                          recall=recall)

    def _journal(self, kind: str, record: TollRecord, ts_us: int) -> Optional[int]:
        """Collect one event for the answer; a seq at or before its own (the ledger's next seq at the last rebuild)."""
        events = self._events
        events.append(record_event(kind, record, ts_us=ts_us, mode=self._mode, shard=self.spec.index))
        if (kind == "release" or kind == "paper_release") and self.book.budget.track_balances:  # as the ledger has it
            if shard_of(record.target_agent, self.spec.shards) != self.spec.index:
                self._credits.append((record.target_agent, record.amount_micros, len(events) - 1))
        return None if self.spec.ledger_path is None else self.rebuilt_through_seq

    def _recall(self, task_id: str, seq: int) -> Optional[dict[str, Any]]:
        """The event that settled ``task_id``, a task id past the window: at ``seq`` if the last rebuild read it there,
        else at or after it. Not there yet (its append still on its way): LedgerError, and the coordinator rebuilds
        this shard once the ledger holds everything, then calls again."""
        ledger, files = self.spec.ledger_path, None if isinstance(self.files, LocalFiles) else self.files
        assert ledger is not None
        if seq < self.rebuilt_through_seq:
            return event_at(ledger, seq, files=files)
        event = settled_event(ledger, task_id, seq, files=files)
        if event is None:
            raise LedgerError(f"budget shard {self.spec.index}: task_id={task_id!r} was settled here, and its event is not "
                              "in the ledger yet: rebuild from the ledger")
        return event

    def _begin(self, mode: str) -> None:
        """Start a call: its mode, and no events left over from a call that raised."""
        self._mode = mode
        self._events, self._credits = [], []

    def _answer(self, records: list[Optional[TollRecord]], repeats: Optional[list[int]] = None,
                expired: Optional[list[TollRecord]] = None) -> ShardAnswer:
        events, credits = self._events, self._credits
        self._events, self._credits = [], []
        return records, encode_events(events) if events else b"", len(events), credits, repeats or [], expired or []


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
class BudgetShard:
    """A Ray actor around :class:`ShardCore`; see the module doc. Calls run one at a time, in order.

    The fast lane's stages (``fast_*``) run on the compiled graph's thread, so every method
    that touches the core holds ``_lock``; calls that write events also wait for the lane's
    last settlement to be on disk (:meth:`_book`).
    """

    def __init__(self, spec: ShardSpec, writer_name: Optional[str] = None, namespace: Optional[str] = None) -> None:
        """``writer_name`` (in ``namespace``): the mesh's ledger writer, through which the shard reads the
        ledger and the caps files on any node (:mod:`actors.run_files`); None reads them from this node's disk."""
        tune_gc()
        restarted = ray.get_runtime_context().was_current_actor_reconstructed
        # A restarted shard must not replay yet: events it made before the crash may still be on their way
        # to the ledger. It reads nothing either (a constructor that raises ends the actor for good): it
        # refuses work until the coordinator has it rebuild, which reads the ledger and the caps, with retries.
        self._core = ShardCore(spec, files_from(writer_name, namespace), build=not restarted)
        self._stale = restarted
        self._lock = threading.Lock()
        self._settle_written = threading.Event()  # cleared from a lane settlement until it is on disk
        self._settle_written.set()
        # ordinary calls that wrote events: how many this process applied, and how many of them the
        # coordinator has seen on disk (mark_durable); the lane locks only when the two are equal
        self._epoch = uuid.uuid4().hex
        self._ordinary_applied = 0
        self._ordinary_durable = 0

    def ready(self) -> int:
        """The pid of the shard's process (a cheap call that waits for the constructor)."""
        return os.getpid()

    def mark_stale(self) -> None:
        """Refuse work until :meth:`rebuild` (the coordinator is about to flush the ledger and rebuild this shard)."""
        with self._lock:
            self._stale = True

    def rebuild(self) -> int:
        """Replay the ledger (the coordinator calls this once it has flushed every event it holds)."""
        with self._lock:
            through = self._core.rebuild()
            self._stale = False
            self._settle_written.set()  # a settlement the lane never wrote is gone with the old book
            self._ordinary_durable = self._ordinary_applied  # the book is now what the ledger holds
            return through

    def mark_durable(self, epoch: str, op: int) -> None:
        """The coordinator has on disk the events of this process's ordinary calls up to ``op``
        (the third item of their answers' mark; a mark of an earlier process is ignored)."""
        with self._lock:
            if epoch == self._epoch and op > self._ordinary_durable:
                self._ordinary_durable = op

    def lock_batch(self, ops: list[tuple] | bytes, now_us: int, mode: str) -> ShardAnswer:
        with self._book():
            self._check_fresh()
            return self._mark(_to_wire(self._core.lock_batch(unpack(ops), now_us, mode)))

    def settle_batch(self, ops: list[tuple[str, bool, Optional[str]]] | bytes, now_us: int, mode: str) -> ShardAnswer:
        with self._book():
            self._check_fresh()
            return self._mark(_to_wire(self._core.settle_batch(unpack(ops), now_us, mode)))

    def expire_due(self, now_us: int, mode: str) -> ShardAnswer:
        with self._book():
            self._check_fresh()
            return self._mark(_to_wire(self._core.expire_due(now_us, mode)))

    def deposit(self, agent: str, amount_micros: int, now_us: int, mode: str) -> ShardAnswer:
        with self._book():
            self._check_fresh()
            return self._mark(_to_wire(self._core.deposit(agent, amount_micros, now_us, mode)))

    def deposit_batch(self, deposits: list[tuple[str, int]], now_us: int, mode: str) -> ShardAnswer:
        with self._book():
            self._check_fresh()
            return self._mark(_to_wire(self._core.deposit_batch(deposits, now_us, mode)))

    def credit(self, credits: list[tuple[str, int, int]] | bytes) -> int:
        with self._book():
            self._check_fresh()
            return self._core.credit(unpack(credits))

    def reset_usage(self) -> None:
        with self._book():
            self._check_fresh()
            self._core.reset_usage()

    def set_caps(self, default_cap_micros: Optional[int], agent_caps_micros: dict[str, Optional[int]]) -> None:
        with self._lock:
            self._core.spec = ShardSpec(**{**self._core.spec.__dict__, "default_cap_micros": default_cap_micros,
                                           "agent_caps_micros": {**self._core.spec.agent_caps_micros, **agent_caps_micros}})
            self._core.set_caps(default_cap_micros, agent_caps_micros)

    def get(self, task_id: str) -> Optional[tuple]:
        with self._lock:
            self._check_fresh()
            return record_to_wire(self._core.get(task_id))

    def snapshot(self, now_us: int) -> dict[str, Any]:
        with self._lock:
            self._check_fresh()
            return self._core.snapshot(now_us)

    def open_sources(self) -> dict[str, str]:
        with self._lock:
            self._check_fresh()
            return self._core.open_sources()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {**self._core.stats(), "stale": self._stale}

    def memory(self) -> dict[str, Any]:
        """This shard's process memory (RSS) and what it holds."""
        with self._lock:
            return {"rss_bytes": rss_bytes(), "open_escrows": self._core.book.open_count,
                    "records": self._core.book.record_count}

    # -- the fast lane's stages (actors.fast_lane): each acts only on its own calls --------

    def fast_lock(self, plan: FastPlan) -> Optional[ShardAnswer] | str:
        """Lock the plan's toll if its caller is this shard's (:data:`GO_AROUND` if a lock is due to expire)."""
        if plan.shard != self._core.spec.index:
            return None
        op = (LOCK, plan.task_id, plan.source, plan.target, plan.price_micros, 0.0, None, None, None)
        with self._lock:
            self._check_fresh()
            if self._ordinary_durable < self._ordinary_applied or self._core.book.expiry_due(plan.now_us):
                return GO_AROUND
            return _to_wire(self._core.lock_batch([op], plan.now_us, "live"))

    def fast_settle(self, plan: FastPlan, *answers: Any) -> Optional[ShardAnswer]:
        """Release or refund the plan's toll by the handler's outcome, if this shard locked it.

        ``answers``: every shard's lock answer, then every host's outcome.
        """
        index, shards = self._core.spec.index, self._core.spec.shards
        if plan.shard != index or not fast_locked(answers[index]):
            return None
        code, _ = only(answers[shards:])
        op = (plan.task_id, code == OK, None if code == OK else refund_reason(code))
        now_us = max(plan.now_us, time.time_ns() // 1_000)
        with self._lock:
            self._check_fresh()
            answer = _to_wire(self._core.settle_batch([op], now_us, "live"))
            self._settle_written.clear()  # ordinary calls wait until the writer has it (see _book)
            return answer

    def fast_settled(self, plan: FastPlan, answer: FastAnswer) -> int:
        """The fast lane's last stage, once the writer has the call's events on disk: the caller's
        shard lets ordinary calls in again; the target's shard credits the release the caller's shard
        paid it (with balances, on another shard). The amount credited."""
        index = self._core.spec.index
        if plan.shard == index:
            self._settle_written.set()
        settle = answer.settle
        if plan.target_shard != index or settle is None or not settle[3] or answer.seqs is None:
            return 0
        first_settle_seq = answer.seqs[0] + answer.lock[2]
        credits = [(agent, amount, first_settle_seq + i) for agent, amount, i in settle[3]]
        with self._lock:
            self._check_fresh()
            return self._core.credit(credits)

    @contextmanager
    def _book(self) -> Iterator[None]:
        """Hold the core for an ordinary call, once the lane's last settlement is on disk.

        A settlement gives room back (a refund to the caller's cap and balance, a release to the
        target's balance). A call that used that room must not reach the ledger before it: the
        lane writes from the writer's side of the graph, so ordinary calls wait for it here. If
        it never comes (the lane broke, its driver died), the shard refuses and is rebuilt from
        the ledger, where that settlement is not.
        """
        deadline = time.monotonic() + FAST_SETTLE_WAIT_S
        while True:
            if not self._settle_written.wait(max(0.0, deadline - time.monotonic())):
                self._stale = True
                self._settle_written.set()
                raise ShardRecoveringError(f"budget shard {self._core.spec.index}: a fast-lane settlement was "
                                           f"not written within {FAST_SETTLE_WAIT_S} s; rebuild from the ledger")
            self._lock.acquire()
            if self._settle_written.is_set():
                break
            self._lock.release()  # the lane settled again meanwhile: wait for that one too
        try:
            yield
        except Exception:
            self._stale = True  # the book may hold part of the call: it waits for its rebuild from the ledger
            raise
        finally:
            self._lock.release()

    def _mark(self, answer: ShardAnswer) -> tuple:
        """``answer`` with a seventh item for an ordinary call that wrote events: ``(shard, epoch, op)``,
        which the coordinator hands back through :meth:`mark_durable` once they are on disk."""
        if not answer[2]:
            return (*answer, None)
        self._ordinary_applied += 1
        return (*answer, (self._core.spec.index, self._epoch, self._ordinary_applied))

    def _check_fresh(self) -> None:
        if self._stale:
            raise ShardRecoveringError(f"budget shard {self._core.spec.index} restarted and waits for its rebuild")


def _to_wire(answer: ShardAnswer) -> ShardAnswer:
    """The answer with its records as plain tuples (:func:`~mesh.records.record_to_wire`), cheap to pickle."""
    return ([record_to_wire(r) for r in answer[0]], *answer[1:5], [record_to_wire(r) for r in answer[5]])  # type: ignore[return-value]
