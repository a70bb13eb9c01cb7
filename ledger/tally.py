"""The mesh's outcome counters, counted again from the ledger's events.

The escrow coordinator counts every call it settles (``locked``, ``released``, ``refunded``,
``rejected``, by reason, with amounts). Those counters live in its memory, so a restarted
coordinator, or a run resumed from its ledger, counts the events already written again here:
the ledger is the truth, and the counters are a tally of it.

>>> events = [{"kind": "lock", "amount_micros": 5}, {"kind": "release", "amount_micros": 5},
...           {"kind": "reject", "amount_micros": 7, "reason": "over_daily_cap"}]
>>> tally = tally_events(events)
>>> tally.counts["locked"], tally.counts["released"], tally.counts["rejected:over_daily_cap"], tally.amounts["released"]
(1, 1, 1, 5)
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from itertools import takewhile
from pathlib import Path
from typing import Any, Iterable

from ledger.files import segments
from ledger.partitions import families, partition_count
from ledger.reader import event_lines
from ledger.schema import EventKind
from mesh.core.errors import InvalidArgumentError

_LOCK, _PAPER, _RELEASE = EventKind.LOCK.value, EventKind.PAPER_RELEASE.value, EventKind.RELEASE.value
_REFUNDS = frozenset({EventKind.REFUND.value, EventKind.EXPIRE.value})
_REJECT = EventKind.REJECT.value


@dataclass
class Tally:
    """Counts (``locked``, ``released``, ``refunded``, ``rejected``, ``refunded:<reason>``,
    ``rejected:<reason>``) and amounts in micros (``released``, ``refunded``) of some events."""

    counts: Counter = field(default_factory=Counter)
    amounts: Counter = field(default_factory=Counter)

    def add(self, event: dict[str, Any]) -> None:
        """Count one event (kinds that are no call outcome, deposits say, count nothing)."""
        kind, amount = event["kind"], event.get("amount_micros") or 0
        if kind == _LOCK:
            self.counts["locked"] += 1
        elif kind == _RELEASE or kind == _PAPER:
            self.counts["released"] += 1
            self.amounts["released"] += amount
        elif kind in _REFUNDS:
            self.counts["refunded"] += 1
            self.counts[f"refunded:{event.get('reason')}"] += 1
            self.amounts["refunded"] += amount
        elif kind == _REJECT:
            self.counts["rejected"] += 1
            self.counts[f"rejected:{event.get('reason')}"] += 1


def tally_events(events: Iterable[dict[str, Any]]) -> Tally:
    """The :class:`Tally` of ``events``."""
    tally = Tally()
    for event in events:
        tally.add(event)
    return tally


def tally_ledger(ledger: Path | str, *, from_seq: int = 0, to_seq: int | None = None) -> Tally:
    """The :class:`Tally` of a JSONL ledger's events with ``from_seq <= seq < to_seq`` (an absent ledger: empty).

    Of a partitioned ledger: every partition's events (a seq range names one partition: tally its file).
    """
    if partition_count(ledger) is not None:
        if from_seq or to_seq is not None:
            raise InvalidArgumentError("from_seq", (from_seq, to_seq), "a seq range names one partition of a "
                                       "partitioned ledger: tally that partition's file")
        return tally_events(line.event for files in families(ledger) for line in event_lines(files))
    if not Path(ledger).exists():
        return Tally()
    events = (line.event for line in event_lines(segments(ledger), from_seq=from_seq))
    return tally_events(takewhile(lambda e: to_seq is None or e["seq"] < to_seq, events))
