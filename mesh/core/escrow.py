"""The escrow state machine: lock -> release | refund, idempotent by ``task_id``.

Pure state, no clock and no I/O: every method takes ``now_us``. Before any state
changes, the book hands the event to its *journal* (the ledger); if the journal
raises, nothing has changed. The journal answers the event's ledger seq (or a seq
at or before it, or None when there is no ledger).

One task id, one escrow, for every id the ledger holds: open escrows are kept until
settled or expired; settled, failed and pending records are kept whole in an LRU of
``max_settled_records``; every settled or failed id that leaves it is remembered in a
:class:`~mesh.core.task_index.TaskIndex` (about 18 bytes an id) with the seq of the event
that settled it, and a repeat of it is answered from the ledger through the book's
*recall* (the event read back, its task id compared, the record rebuilt from it).
A book without a ledger (its journal answers None) remembers only its LRU: with
nothing written, a repeat older than the window can contradict nothing.

The ``apply_*`` methods are the replay's: they apply what a ledger says happened,
judging nothing again (no cap, no funds rule that the ledger does not hold, no
timeout: an ``expire`` is applied where it is written, and an open lock's deadline
is its lock time plus this book's timeout).

>>> from mesh.core.budget import BudgetBook
>>> book = EscrowBook(BudgetBook(default_cap_micros=None), escrow_timeout_s=60)
>>> draft = TollRecord("t1", "alice", "bob", amount_micros=10)
>>> book.charge(draft, now_us=0).status.value
'escrow_locked'
>>> book.expire_due(now_us=61_000_000)[0].reason
'escrow_timeout'
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

from mesh.core.budget import BudgetBook
from mesh.core.clock import US_PER_SECOND, day_of, iso_utc
from mesh.core.errors import LedgerError
from mesh.core.records import Reason, SettlementStatus, TollRecord
from mesh.core.task_index import TaskIndex

#: ``journal(kind, record, ts_us)``: persist one state change before it is applied (ts_us: UTC microseconds);
#: answers the event's seq in the ledger, or a seq at or before it, or None (no ledger).
Journal = Callable[[str, TollRecord, int], Optional[int]]

#: ``recall(task_id, seq)``: the ledger event that settled or failed ``task_id``, found from ``seq`` (what the
#: journal answered for it: the event's seq, or one before it); an event of another task id with the same key
#: may come back (the book compares); None if the ledger holds nothing there. LedgerError if it cannot read.
Recall = Callable[[str, int], Optional[dict[str, Any]]]

DEFAULT_MAX_SETTLED_RECORDS = 100_000
_NEVER_US = 2**62
_PENDING = SettlementStatus.PENDING


def _no_journal(kind: str, record: TollRecord, ts_us: int) -> None:
    """Keep no journal (replay and pure unit tests)."""
    return None


@dataclass(slots=True)
class _OpenEscrow:
    record: TollRecord
    period: tuple[int, int]  # the cap period the lock took room in
    deadline_us: int


class EscrowBook:
    """Every toll's lifecycle over one :class:`BudgetBook`."""

    def __init__(
        self,
        budget: BudgetBook,
        *,
        escrow_timeout_s: Optional[float],
        max_settled_records: int = DEFAULT_MAX_SETTLED_RECORDS,
        journal: Journal = _no_journal,
        recall: Optional[Recall] = None,
    ) -> None:
        self.budget = budget
        self.escrow_timeout_s = escrow_timeout_s
        self._timeout_us = None if escrow_timeout_s is None else round(escrow_timeout_s * US_PER_SECOND)
        self.max_settled_records = max_settled_records
        self.journal = journal
        self.recall = recall
        # Insertion order is deadline order (one timeout for all, a forward clock).
        self._open: OrderedDict[str, _OpenEscrow] = OrderedDict()
        self._settled: OrderedDict[str, TollRecord] = OrderedDict()
        # The seq of each settled or failed record of the window, in the window's order (a settled record never
        # moves again): two deques, appended and popped at their ends (no hashing, no tuples for the GC to scan).
        self._seq_ids: deque[str] = deque()
        self._seqs: deque[int] = deque()
        self._history = TaskIndex()  # every settled or failed id that left ``_settled``

    # -- queries --------------------------------------------------------------

    def get(self, task_id: str) -> Optional[TollRecord]:
        """The record of ``task_id`` if memory holds it whole (open, or in the settled window), else None."""
        entry = self._open.get(task_id)
        if entry is not None:
            return entry.record
        return self._settled.get(task_id)

    def find(self, task_id: str) -> Optional[TollRecord]:
        """The record of ``task_id`` as it stands: from memory, or past the window from the ledger; None if unknown."""
        entry = self._open.get(task_id)
        if entry is not None:
            return entry.record
        kept = self._settled.get(task_id)
        if kept is not None:
            return kept
        if not self._history.count:
            return None
        seqs = self._history.candidates(task_id)  # empty for nearly every new task id
        return self._recalled(task_id, seqs) if seqs else None

    @property
    def open_count(self) -> int:
        return len(self._open)

    @property
    def record_count(self) -> int:
        """Records held whole in memory (open escrows and the settled window)."""
        return len(self._open) + len(self._settled)

    @property
    def remembered_count(self) -> int:
        """Settled or failed task ids past the window, remembered by key and seq."""
        return self._history.count

    def history_bytes(self) -> int:
        """What the memory of ids past the window holds in its arrays and filter."""
        return self._history.nbytes()

    def open_escrows(self) -> Iterator[TollRecord]:
        return (entry.record for entry in self._open.values())

    def expiry_due(self, now_us: int) -> bool:
        """Whether a lock's deadline has passed (the next transition would expire it first)."""
        return bool(self._open) and next(iter(self._open.values())).deadline_us <= now_us

    # -- transitions ----------------------------------------------------------

    def deposit(self, agent: str, amount_micros: int, now_us: int) -> None:
        """Add funds to ``agent`` (journaled first)."""
        record = TollRecord(
            task_id="", source_agent="", target_agent=agent, amount_micros=amount_micros,
            status=SettlementStatus.RELEASED, created_at=iso_utc(now_us, "seconds"),
        )
        self.journal("deposit", record, now_us)
        self.budget.deposit(agent, amount_micros)

    def charge(self, draft: TollRecord, now_us: int, *, instant_release: bool = False, unseen: bool = False) -> TollRecord:
        """Lock ``draft``'s amount (or lock and release at once), or refuse it with a reason.

        A ``task_id`` already seen returns its record unchanged, unless it is PENDING. ``unseen``: the
        caller has just found it unknown or PENDING (:meth:`find`, under the same lock): not looked up again.
        """
        self.expire_due(now_us)  # a sweep settles open escrows only: it cannot make an unseen task id known
        existing = None if unseen else self._existing(draft.task_id)
        if existing is not None:
            return existing
        day = day_of(now_us)
        reason = self.budget.room_check(draft.source_agent, draft.amount_micros, day)
        if reason is not None:
            return self.reject(draft, reason, now_us)
        if instant_release:
            record = draft.moved_to(SettlementStatus.RELEASED, settled_at=iso_utc(now_us, "seconds"))
            seq = self.journal("paper_release", record, now_us)
            self.budget.reserve(record.source_agent, record.amount_micros, day)
            self.budget.commit(record.source_agent, record.target_agent, record.amount_micros)
            self._retain(record, seq)
            return record
        record = draft.moved_to(SettlementStatus.ESCROW_LOCKED)
        self.journal("lock", record, now_us)
        period = self.budget.reserve(record.source_agent, record.amount_micros, day)
        deadline_us = now_us + self._timeout_us if self._timeout_us is not None else _NEVER_US
        self._settled.pop(record.task_id, None)  # a PENDING record it replaces
        self._open[record.task_id] = _OpenEscrow(record, period, deadline_us)
        return record

    def reject(self, draft: TollRecord, reason: Reason, now_us: int) -> TollRecord:
        """Record ``draft`` as FAILED for ``reason`` (idempotent like :meth:`charge`)."""
        return self._close_unlocked(draft, SettlementStatus.FAILED, "reject", reason, now_us)

    def pend(self, draft: TollRecord, now_us: int) -> TollRecord:
        """Record ``draft`` as PENDING: payment required, nothing locked."""
        return self._close_unlocked(
            draft, SettlementStatus.PENDING, "pending", Reason.PAYMENT_REQUIRED, now_us
        )

    def release(self, task_id: str, now_us: int) -> Optional[TollRecord]:
        """Pay a locked toll to its target. A settled toll is returned unchanged; unknown gives None."""
        self.expire_due(now_us)
        entry = self._open.get(task_id)
        if entry is None:
            return self.find(task_id)
        record = entry.record.moved_to(SettlementStatus.RELEASED, settled_at=iso_utc(now_us, "seconds"))
        seq = self.journal("release", record, now_us)
        self.budget.commit(record.source_agent, record.target_agent, record.amount_micros)
        self._settle(record, seq)
        return record

    def refund(
        self, task_id: str, now_us: int, reason: Reason = Reason.REFUNDED_BY_CALLER
    ) -> Optional[TollRecord]:
        """Give a locked toll back to its source. A settled toll is returned unchanged."""
        self.expire_due(now_us)
        entry = self._open.get(task_id)
        if entry is None:
            return self.find(task_id)
        return self._refund(entry, now_us, reason, "refund")

    def expire_due(self, now_us: int) -> list[TollRecord]:
        """Refund every lock whose deadline has passed (reason ``escrow_timeout``)."""
        expired: list[TollRecord] = []
        while self._open:
            entry = next(iter(self._open.values()))
            if entry.deadline_us > now_us:
                break
            expired.append(self._refund(entry, now_us, Reason.ESCROW_TIMEOUT, "expire"))
        return expired

    def reset_usage(self, now_us: int) -> None:
        """The seed's ``reset_daily``: forget every agent's usage so far (journaled)."""
        self.journal("reset_daily", TollRecord("", "", ""), now_us)
        self.budget.reset_usage()

    # -- facts from the ledger (replay) ----------------------------------------

    def apply_lock(self, record: TollRecord, ts_us: int) -> None:
        """A ``lock`` the ledger holds (``record`` ESCROW_LOCKED): room and funds taken, no cap judged again."""
        self._check_opening("lock", record)
        period = self._take(record, ts_us)
        replaced = self._settled.pop(record.task_id, None)  # a PENDING record, or an old ledger's second escrow
        if replaced is not None and replaced.status is not _PENDING:  # of one task id (verify names it): rare
            self._forget_seq(record.task_id)
        deadline_us = ts_us + self._timeout_us if self._timeout_us is not None else _NEVER_US
        self._open[record.task_id] = _OpenEscrow(record, period, deadline_us)

    def apply_paper_release(self, record: TollRecord, ts_us: int, seq: Optional[int] = None) -> None:
        """A ``paper_release`` the ledger holds (``record`` RELEASED): locked and paid at once."""
        self._check_opening("paper_release", record)
        self._take(record, ts_us)
        self.budget.commit(record.source_agent, record.target_agent, record.amount_micros)
        self._retain(record, seq)

    def apply_unlocked(self, kind: str, record: TollRecord, seq: Optional[int] = None) -> None:
        """A ``reject`` or ``pending`` the ledger holds (``record`` FAILED or PENDING): nothing moves."""
        self._check_opening(kind, record)
        self._retain(record, seq)

    def apply_settle(self, kind: str, task_id: str, ts_us: int, settled_at: Optional[str], reason: Optional[Reason],
                     seq: Optional[int] = None) -> TollRecord:
        """A ``release``, ``refund`` or ``expire`` the ledger holds, applied where it is written (no sweep first)."""
        entry = self._open.get(task_id)
        if entry is None:
            raise LedgerError(f"{kind} of task_id={task_id!r} that is not locked")
        if kind == "release":
            record = entry.record.moved_to(SettlementStatus.RELEASED, settled_at=settled_at)
            self.budget.commit(record.source_agent, record.target_agent, record.amount_micros)
        else:
            why = reason.value if reason is not None else Reason.ESCROW_TIMEOUT.value
            record = entry.record.moved_to(SettlementStatus.REFUNDED, settled_at=settled_at, reason=why)
            self.budget.rollback(record.source_agent, record.amount_micros, entry.period)
        self._settle(record, seq)
        return record

    def _forget_seq(self, task_id: str) -> None:
        """Drop the seq of a record that left the window out of turn (a replay of an old ledger's second escrow)."""
        if task_id in self._seq_ids:
            at = self._seq_ids.index(task_id)
            del self._seq_ids[at]
            del self._seqs[at]

    def _check_opening(self, kind: str, record: TollRecord) -> None:
        if record.task_id in self._open:
            raise LedgerError(f"{kind} of task_id={record.task_id!r} while its escrow is locked: one task id, one escrow")

    def _take(self, record: TollRecord, ts_us: int) -> tuple[int, int]:
        """Reserve a lock the ledger holds: its funds (when balances are tracked) must be there, its cap is not judged."""
        source, amount = record.source_agent, record.amount_micros
        budget = self.budget
        if budget.track_balances:
            if not budget.has_account(source):
                raise LedgerError(f"task_id={record.task_id!r}: source_agent={source!r} locks funds but has no account (no deposit)")
            if budget.balance_micros(source) < amount:
                raise LedgerError(f"task_id={record.task_id!r}: source_agent={source!r} locks {amount} micros "
                                  f"but holds {budget.balance_micros(source)}")
        return budget.reserve(source, amount, day_of(ts_us), check_cap=False)

    # -- internals ------------------------------------------------------------

    def _existing(self, task_id: str) -> Optional[TollRecord]:
        record = self.find(task_id)
        if record is None or record.status is SettlementStatus.PENDING:
            return None
        return record

    def _recalled(self, task_id: str, seqs: list[int]) -> Optional[TollRecord]:
        """The record of a task id past the window, read back from the ledger at its candidate ``seqs``
        (None if it is not one of those ids)."""
        for seq in seqs:
            if self.recall is None:
                raise LedgerError(f"task_id={task_id!r} may be an earlier task past the book's window, and the book "
                                  "has no ledger to recall it from")
            event = self.recall(task_id, seq)
            if event is None:
                raise LedgerError(f"task_id={task_id!r} may have settled at seq {seq}, and the ledger holds no event there")
            if event.get("task_id") == task_id:  # else another id with the same key
                return TollRecord.from_dict(event)
        return None

    def _close_unlocked(
        self, draft: TollRecord, status: SettlementStatus, kind: str, reason: Reason, now_us: int
    ) -> TollRecord:
        existing = self._existing(draft.task_id)
        if existing is not None:
            return existing
        record = draft.moved_to(status, reason=reason.value)
        seq = self.journal(kind, record, now_us)
        self._retain(record, seq)
        return record

    def _refund(self, entry: _OpenEscrow, now_us: int, reason: Reason, kind: str) -> TollRecord:
        record = entry.record.moved_to(
            SettlementStatus.REFUNDED, settled_at=iso_utc(now_us, "seconds"), reason=reason.value
        )
        seq = self.journal(kind, record, now_us)
        self.budget.rollback(record.source_agent, record.amount_micros, entry.period)
        self._settle(record, seq)
        return record

    def _settle(self, record: TollRecord, seq: Optional[int]) -> None:
        del self._open[record.task_id]
        self._retain(record, seq)

    def _retain(self, record: TollRecord, seq: Optional[int]) -> None:
        settled, task_id = self._settled, record.task_id
        replaced = settled.pop(task_id, None)  # a PENDING record this one settles (two lookups, as set + move_to_end)
        settled[task_id] = record
        if replaced is not None and replaced.status is not _PENDING:  # only an old ledger's second event of a task
            self._forget_seq(task_id)
        if seq is not None and record.status is not _PENDING:  # a PENDING toll may be charged again: nothing to keep
            self._seq_ids.append(task_id)
            self._seqs.append(seq)
        while len(settled) > self.max_settled_records:  # the oldest leaves for the index (a PENDING one is dropped)
            old_id, _record = settled.popitem(last=False)
            seq_ids = self._seq_ids
            if seq_ids and seq_ids[0] == old_id:  # else a PENDING record, or one written with no ledger
                self._history.add(seq_ids.popleft(), self._seqs.popleft())
