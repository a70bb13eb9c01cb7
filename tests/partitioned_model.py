"""An in-process model of a mesh that writes a ledger partitioned by shard (tests only).

N books of the core (:class:`~mesh.core.escrow.EscrowBook`), one per partition, each owning
the agents ``shard_of`` gives it and journaling its transitions to its partition's own
:class:`~ledger.jsonl.JsonlWriter`. A release paid to another partition's agent waits in
an outbox per (from, to) pair until :meth:`forward` delivers it, in order, as the
coordinator does: the target book is credited and its partition gets a ``credit`` event.
What is still in an outbox at the end is what a crash between a release and its credit
leaves. :meth:`snapshot` is the state a restarted mesh would hold (those credited).
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any, Optional

from ledger.events import credit_event, record_event
from ledger.jsonl import JsonlWriter
from ledger.partitions import create, owner, partition_path
from ledger.replay import merge_snapshots, snapshot
from mesh.core.budget import BudgetBook
from mesh.core.escrow import EscrowBook
from mesh.core.records import SettlementStatus, TollRecord

START_US = 1_767_225_600_000_000  # 2026-01-01


class PartitionedModel:
    def __init__(self, run_dir: Path, partitions: int, *, balances: bool, cap_micros: Optional[int] = None,
                 format_version: int = 2) -> None:
        self.ledger = run_dir / "toll_ledger.jsonl"
        self.count = partitions
        self.balances = balances
        create(self.ledger, partitions)
        self.writers = [JsonlWriter(partition_path(self.ledger, k), format_version=format_version) for k in range(partitions)]
        self.books = [self._book(k, cap_micros) for k in range(partitions)]
        self.outbox: dict[tuple[int, int], deque[dict[str, Any]]] = {}
        self.now_us = START_US
        self.released: dict[str, int] = {}  # task id -> amount, of every release

    def _book(self, k: int, cap_micros: Optional[int]) -> EscrowBook:
        budget = BudgetBook(default_cap_micros=cap_micros, track_balances=self.balances,
                            owns_agent=lambda agent: owner(agent, self.count) == k)

        def journal(kind: str, record: TollRecord, now_us: int) -> int:
            event = record_event(kind, record, ts_us=now_us, mode="live", shard=k)
            self.writers[k].append([event])
            if kind in ("release", "paper_release"):
                self.released[record.task_id] = record.amount_micros
                to = owner(record.target_agent, self.count)
                if self.balances and to != k:
                    self.outbox.setdefault((k, to), deque()).append(event)
            return event["seq"]

        return EscrowBook(budget, escrow_timeout_s=None, journal=journal)

    def tick(self, us: int = 1) -> None:
        self.now_us += us

    def deposit(self, agent: str, amount_micros: int) -> None:
        self.books[owner(agent, self.count)].deposit(agent, amount_micros, self.now_us)

    def call(self, task_id: str, source: str, target: str, amount_micros: int, outcome: str) -> TollRecord:
        """Charge ``source``; then ``release``, ``refund`` or leave it ``open`` (``paper``: lock and release at once)."""
        book = self.books[owner(source, self.count)]
        draft = TollRecord(task_id, source, target, amount_micros)
        record = book.charge(draft, self.now_us, instant_release=outcome == "paper")
        if record.status is SettlementStatus.ESCROW_LOCKED and outcome == "release":
            record = book.release(task_id, self.now_us)
        elif record.status is SettlementStatus.ESCROW_LOCKED and outcome == "refund":
            record = book.refund(task_id, self.now_us)
        return record

    def reset_daily(self) -> None:
        for book in self.books:
            book.reset_usage(self.now_us)

    def pending(self) -> list[tuple[int, int]]:
        """The (from, to) pairs with a release waiting for its credit."""
        return sorted(pair for pair, waiting in self.outbox.items() if waiting)

    def forward(self, pair: tuple[int, int]) -> None:
        """Credit the oldest release waiting from ``pair[0]`` to ``pair[1]``, as the coordinator does."""
        release = self.outbox[pair].popleft()
        to = pair[1]
        self.books[to].budget.credit(release["target_agent"], release["amount_micros"])
        self.writers[to].append([credit_event(release, from_shard=pair[0], ts_us=self.now_us, shard=to)])

    def forward_all(self) -> None:
        for pair in self.pending():
            while self.outbox[pair]:
                self.forward(pair)

    def append(self, partition: int, event: dict[str, Any]) -> dict[str, Any]:
        """Write ``event`` to a partition as it is (a tampering test's line); returns it, numbered."""
        self.writers[partition].append([event])
        return event

    def snapshot(self) -> dict[str, Any]:
        """The whole mesh's state, the releases still in an outbox credited (as a restart credits them)."""
        merged = merge_snapshots([snapshot(book, self.now_us) for book in self.books])
        for waiting in self.outbox.values():
            for release in waiting:
                agent = release["target_agent"]
                merged["balances_micros"][agent] = merged["balances_micros"].get(agent, 0) + release["amount_micros"]
        return merged

    @classmethod
    def reopen(cls, model: "PartitionedModel") -> "PartitionedModel":
        """Writers on ``model``'s closed ledger again (its books are not rebuilt: for appending lines)."""
        again = cls.__new__(cls)
        again.ledger, again.count, again.balances = model.ledger, model.count, model.balances
        again.writers = [JsonlWriter(partition_path(model.ledger, k)) for k in range(model.count)]
        return again

    def close(self) -> None:
        for writer in self.writers:
            writer.close()
