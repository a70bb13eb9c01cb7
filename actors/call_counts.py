"""What a mesh's calls came to, as its coordinator counts them: calls and micro-USD by outcome, refusals
and refunds by reason, the micros locked now; mirrored to the Ray metrics (:mod:`actors.metrics`).

Counted from what shards answer once their events are durable (records, or a columnar call's
tally of events), from fast-lane calls, or again from the ledger after a restart (:meth:`CallCounts.recounted`).

>>> from actors.metrics import MeshMetrics
>>> counts = CallCounts(MeshMetrics("doc", False))
>>> counts.tally({"locked": 2, "locked_micros": 2_000, "released": 1, "released_micros": 1_000,
...               "refunded": 1, "refunded_micros": 1_000, "refunded:handler_error": 1})
>>> counts.counts["released"], counts.counts["refunded:handler_error"], counts.amounts["locked"]
(1, 1, 0)
"""

from __future__ import annotations

from collections import Counter as Tally
from typing import Any, Optional

from actors.budget_shard import ShardAnswer
from actors.metrics import MeshMetrics
from mesh.core.records import SettlementStatus

# Records travel as plain tuples (mesh.core.records.record_to_wire); they are read by index.
_AMOUNT, _STATUS, _REASON = 3, 5, 11
_LOCKED, _RELEASED = SettlementStatus.ESCROW_LOCKED.value, SettlementStatus.RELEASED.value
_REFUNDED, _FAILED = SettlementStatus.REFUNDED.value, SettlementStatus.FAILED.value


class CallCounts:
    """Counts (``counts``) and micro-USD (``amounts``) by outcome; see the module doc."""

    def __init__(self, metrics: MeshMetrics) -> None:
        self.metrics = metrics
        self.counts: Tally = Tally()
        self.amounts: Tally = Tally()

    def recounted(self, counts: Tally, amounts: Tally) -> None:
        """Start again from a tally of the ledger (:func:`ledger.tally.tally_ledger`); the fast lane's
        call count is kept (it counts calls, not ledger events)."""
        kept = {k: v for k, v in self.counts.items() if k == "fast_lane"}
        self.counts = Tally(kept) + counts
        self.amounts["released"], self.amounts["refunded"] = amounts["released"], amounts["refunded"]

    def answer(self, method: str, answer: ShardAnswer) -> None:
        """Count what a shard's answer to ``lock_batch`` or ``settle_batch`` changed (its events): the
        records of the ops that were no repeat, and the escrows it expired first."""
        repeats = set(answer[4])
        changed = [r for j, r in enumerate(answer[0]) if j not in repeats and r is not None]
        if method == "lock_batch":
            self.locks([(0, r) for r in changed if r[_STATUS] == _LOCKED],
                       Tally(r[_REASON] for r in changed if r[_STATUS] == _FAILED))
            paper = [r for r in changed if r[_STATUS] == _RELEASED]  # locked and released at once: no lock held
            self.counts["released"] += len(paper)
            self.amounts["released"] += sum(r[_AMOUNT] for r in paper)
        else:
            self.settled(changed)
        self.settled(answer[5])

    def tally(self, tally: dict[str, int]) -> None:
        """Count a columnar shard answer's events (:func:`actors.shard_core.tally_events`)."""
        rejected = Tally({k[len("rejected:"):]: v for k, v in tally.items() if k.startswith("rejected:")})
        self.lock_totals(tally["locked"], tally["locked_micros"], rejected)
        refunds = Tally({k[len("refunded:"):]: v for k, v in tally.items() if k.startswith("refunded:")})
        self.amounts["locked"] -= tally["released_micros"] - self._paper_micros(tally) + tally["refunded_micros"]
        self.counts["released"] += tally["released"]
        self.amounts["released"] += tally["released_micros"]
        self.counts["refunded"] += tally["refunded"]
        self.amounts["refunded"] += tally["refunded_micros"]
        for reason, count in refunds.items():
            self.counts[f"refunded:{reason}"] += count
        self.metrics.count_settled(tally["released"], tally["released_micros"], refunds)

    @staticmethod
    def _paper_micros(tally: dict[str, int]) -> int:
        return 0 if not tally.get("paper_released") else tally["paper_released_micros"]

    def locks(self, locked: list[tuple[int, tuple]], rejected: Tally) -> None:
        self.lock_totals(len(locked), sum(record[_AMOUNT] for _, record in locked), rejected)

    def lock_totals(self, locked: int, amount: int, rejected: Tally) -> None:
        self.counts["locked"] += locked
        self.amounts["locked"] += amount
        self.counts["rejected"] += sum(rejected.values())
        for reason, count in rejected.items():
            self.counts[f"rejected:{reason}"] += count
        self.metrics.count_locks(locked)
        self.metrics.count_rejections(rejected)

    def settled(self, records: list[tuple]) -> None:
        """Count settled (wire) records: released, or refunded by reason."""
        released = 0
        reasons: Tally = Tally()
        released_micros = 0
        for record in records:
            amount = record[_AMOUNT]
            if record[_STATUS] == _RELEASED:
                self.amounts["locked"] -= amount
                released += 1
                released_micros += amount
            elif record[_STATUS] == _REFUNDED:
                self.amounts["locked"] -= amount
                reasons[record[_REASON]] += 1
                self.counts[f"refunded:{record[_REASON]}"] += 1
                self.amounts["refunded"] += amount
        self.counts["released"] += released
        self.counts["refunded"] += sum(reasons.values())
        self.amounts["released"] += released_micros
        self.metrics.count_settled(released, released_micros, reasons)

    def fast_calls(self, calls: list[tuple[tuple, Optional[tuple], Any]]) -> None:
        """Count calls the fast lane ran: ``(lock record, settled record or None, _)`` each."""
        locked: list[tuple[int, tuple]] = []
        rejected: Tally = Tally()
        settled: list[tuple] = []
        for lock, settle, _ in calls:
            if lock[_STATUS] == _LOCKED:
                locked.append((0, lock))
            elif lock[_STATUS] == _FAILED:
                rejected[lock[_REASON]] += 1
            if settle is not None:
                settled.append(settle)
        self.locks(locked, rejected)
        self.settled(settled)
        self.counts["fast_lane"] += len(calls)
