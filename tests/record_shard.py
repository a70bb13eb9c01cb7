"""The reference model of a budget shard: today's record book (:class:`~mesh.core.escrow.EscrowBook`)
under the shard's interface, as the shards ran before the columnar book.

Tests drive it beside :class:`actors.shard_core.ShardCore` and compare answers, events and
state call by call (tests/test_columnar_book.py, tests/test_shard_core.py).
"""

from __future__ import annotations

import hashlib
from typing import Any, Optional

from actors.run_files import LocalFiles, RunFiles
from actors.shard_core import INSTANT, LOCK, PEND, REJECT, ShardAnswer, ShardSpec
from ledger.events import record_event
from ledger.jsonl import encode_events
from ledger.replay import event_at, replay_shard, settled_event, snapshot
from mesh.core.budget import BudgetBook
from mesh.core.clock import iso_utc
from mesh.core.errors import LedgerError
from mesh.core.escrow import EscrowBook
from mesh.core.records import Reason, SettlementStatus, TollRecord
from mesh.core.sharding import shard_of


class RecordShardCore:
    """The shard as it was before the columnar book: records in an EscrowBook (the reference model)."""

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
