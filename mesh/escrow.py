"""The escrow state machine: lock -> release | refund, idempotent by ``task_id``.

Pure state, no clock and no I/O: every method takes ``now_us``. Before any state
changes, the book hands the event to its *journal* (the ledger); if the journal
raises, nothing has changed. Open escrows are kept until settled or expired;
settled, failed and pending records are kept in a bounded LRU of
``max_settled_records`` (the ledger keeps the full history), so a repeated
``task_id`` older than that window is no longer recognised in memory.

>>> from mesh.budget import BudgetBook
>>> book = EscrowBook(BudgetBook(default_cap_micros=None), escrow_timeout_s=60)
>>> draft = TollRecord("t1", "alice", "bob", amount_micros=10)
>>> book.charge(draft, now_us=0).status.value
'escrow_locked'
>>> book.expire_due(now_us=61_000_000)[0].reason
'escrow_timeout'
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

from mesh.budget import BudgetBook
from mesh.clock import US_PER_SECOND, day_of, iso_utc
from mesh.records import Reason, SettlementStatus, TollRecord

#: ``journal(kind, record, ts_us)``: persist one state change before it is applied (ts_us: UTC microseconds).
Journal = Callable[[str, TollRecord, int], None]

DEFAULT_MAX_SETTLED_RECORDS = 100_000
_NEVER_US = 2**62


def _no_journal(kind: str, record: TollRecord, ts_us: int) -> None:
    """Keep no journal (replay and pure unit tests)."""


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
    ) -> None:
        self.budget = budget
        self.escrow_timeout_s = escrow_timeout_s
        self._timeout_us = None if escrow_timeout_s is None else round(escrow_timeout_s * US_PER_SECOND)
        self.max_settled_records = max_settled_records
        self.journal = journal
        # Insertion order is deadline order (one timeout for all, a forward clock).
        self._open: OrderedDict[str, _OpenEscrow] = OrderedDict()
        self._settled: OrderedDict[str, TollRecord] = OrderedDict()

    # -- queries --------------------------------------------------------------

    def get(self, task_id: str) -> Optional[TollRecord]:
        entry = self._open.get(task_id)
        if entry is not None:
            return entry.record
        return self._settled.get(task_id)

    @property
    def open_count(self) -> int:
        return len(self._open)

    @property
    def record_count(self) -> int:
        return len(self._open) + len(self._settled)

    def open_escrows(self) -> Iterator[TollRecord]:
        return (entry.record for entry in self._open.values())

    def expiry_due(self, now_us: int) -> bool:
        """Whether a lock's deadline has passed (the next transition would expire it first)."""
        return bool(self._open) and next(iter(self._open.values())).deadline_us <= now_us

    # -- transitions ----------------------------------------------------------

    def deposit(self, agent: str, amount_micros: int, now_us: int) -> None:
        record = TollRecord(
            task_id="", source_agent="", target_agent=agent, amount_micros=amount_micros,
            status=SettlementStatus.RELEASED, created_at=iso_utc(now_us, "seconds"),
        )
        self.journal("deposit", record, now_us)
        self.budget.deposit(agent, amount_micros)

    def charge(self, draft: TollRecord, now_us: int, *, instant_release: bool = False) -> TollRecord:
        """Lock ``draft``'s amount (or lock and release at once), or refuse it with a reason.

        A ``task_id`` already seen returns its record unchanged, unless it is PENDING.
        """
        self.expire_due(now_us)
        existing = self._existing(draft.task_id)
        if existing is not None:
            return existing
        day = day_of(now_us)
        reason = self.budget.room_check(draft.source_agent, draft.amount_micros, day)
        if reason is not None:
            return self.reject(draft, reason, now_us)
        if instant_release:
            record = draft.moved_to(SettlementStatus.RELEASED, settled_at=iso_utc(now_us, "seconds"))
            self.journal("paper_release", record, now_us)
            self.budget.reserve(record.source_agent, record.amount_micros, day)
            self.budget.commit(record.source_agent, record.target_agent, record.amount_micros)
            self._retain(record)
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
            return self._settled.get(task_id)
        record = entry.record.moved_to(SettlementStatus.RELEASED, settled_at=iso_utc(now_us, "seconds"))
        self.journal("release", record, now_us)
        self.budget.commit(record.source_agent, record.target_agent, record.amount_micros)
        self._settle(record)
        return record

    def refund(
        self, task_id: str, now_us: int, reason: Reason = Reason.REFUNDED_BY_CALLER
    ) -> Optional[TollRecord]:
        """Give a locked toll back to its source. A settled toll is returned unchanged."""
        self.expire_due(now_us)
        entry = self._open.get(task_id)
        if entry is None:
            return self._settled.get(task_id)
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

    # -- internals ------------------------------------------------------------

    def _existing(self, task_id: str) -> Optional[TollRecord]:
        record = self.get(task_id)
        if record is None or record.status is SettlementStatus.PENDING:
            return None
        return record

    def _close_unlocked(
        self, draft: TollRecord, status: SettlementStatus, kind: str, reason: Reason, now_us: int
    ) -> TollRecord:
        existing = self._existing(draft.task_id)
        if existing is not None:
            return existing
        record = draft.moved_to(status, reason=reason.value)
        self.journal(kind, record, now_us)
        self._retain(record)
        return record

    def _refund(self, entry: _OpenEscrow, now_us: int, reason: Reason, kind: str) -> TollRecord:
        record = entry.record.moved_to(
            SettlementStatus.REFUNDED, settled_at=iso_utc(now_us, "seconds"), reason=reason.value
        )
        self.journal(kind, record, now_us)
        self.budget.rollback(record.source_agent, record.amount_micros, entry.period)
        self._settle(record)
        return record

    def _settle(self, record: TollRecord) -> None:
        del self._open[record.task_id]
        self._retain(record)

    def _retain(self, record: TollRecord) -> None:
        self._settled[record.task_id] = record
        self._settled.move_to_end(record.task_id)
        while len(self._settled) > self.max_settled_records:
            self._settled.popitem(last=False)
