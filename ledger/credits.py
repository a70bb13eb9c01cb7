"""Cross-partition credits: each release paid to another partition's agent is received there once.

In a partitioned ledger (:mod:`ledger.partitions`) with balances, a release in partition A
to an agent partition B holds sends the amount out of A; B receives it by a ``credit``
event naming the release by ``(from_shard, from_seq)``. :class:`CreditMatch` pairs the two
as the partitions are read, in any order, and says what does not pair: a credit of no such
release, or of other agents or another amount; a release credited twice; credits from one
partition out of that partition's seq order (a receiver skips a credit at or below the
highest it has taken, so only an ordered stream is taken exactly once); and the releases
not credited yet, which a crash between a release and its credit leaves, and which a
restarted mesh credits.

>>> match = CreditMatch()
>>> release = Transfer("t1", "a", "b", 5)
>>> match.sent((0, 7), release, where="shard=0:8")
[]
>>> match.received((0, 7), release, partition=1, where="shard=1:3")
[]
>>> match.received((0, 7), release, partition=1, where="shard=1:4")
['credit of task_id=t1 receives shard 0 seq 7 again (first at shard=1:3): a release is credited once']
>>> match.uncredited()
[]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from ledger.partitions import families, owner, partition_count
from ledger.reader import event_lines
from ledger.schema import DECIDING_KINDS, FUNDING_KINDS
from mesh.core.errors import LedgerError


class Transfer(NamedTuple):
    """What a release sends to another partition, and what its credit must name."""

    task_id: str
    source_agent: str
    target_agent: str
    amount_micros: int

    @classmethod
    def of(cls, event: dict[str, Any]) -> "Transfer":
        return cls(event.get("task_id"), event.get("source_agent"), event.get("target_agent"), event.get("amount_micros"))


EventId = tuple[int, int]  # (partition, seq)


@dataclass
class CreditMatch:
    """Releases sent out of partitions and the credits that receive them, paired as they are read."""

    _sent: dict[EventId, tuple[Transfer, Any]] = field(default_factory=dict)  # not received yet, and where
    _received: dict[EventId, tuple[Transfer, Any]] = field(default_factory=dict)  # paired, or not sent yet
    _waiting: set[EventId] = field(default_factory=set)  # received, and not (yet) sent
    _last_from: dict[tuple[int, int], int] = field(default_factory=dict)  # (partition, from partition) -> from_seq

    def sent(self, release: EventId, transfer: Transfer, *, where: Any = None) -> list[str]:
        """Partition ``release[0]``'s event ``release[1]`` (at ``where``) released ``transfer`` to another
        partition's agent: the problems with the credit already read for it, in words."""
        if release not in self._waiting:
            self._sent[release] = (transfer, where)
            return []
        self._waiting.discard(release)
        credit = self._received[release][0]
        return [] if credit == transfer else [_differs(credit, transfer, release)]

    def received(self, release: EventId, transfer: Transfer, *, partition: int, where: Any) -> list[str]:
        """A credit in ``partition`` (at ``where``, named in the problems by its ``str``) of ``release``:
        the problems with it, in words."""
        from_partition, from_seq = release
        first = self._received.get(release)
        if first is not None:
            return [f"credit of task_id={transfer.task_id} receives shard {from_partition} seq {from_seq} again "
                    f"(first at {first[1]}): a release is credited once"]
        problems = []
        last = self._last_from.get((partition, from_partition))
        if last is not None and from_seq < last:
            problems.append(f"credit of task_id={transfer.task_id} receives shard {from_partition} seq {from_seq} "
                            f"after seq {last}: credits from one partition come in its seq order")
        self._last_from[(partition, from_partition)] = max(from_seq, last if last is not None else from_seq)
        self._received[release] = (transfer, where)
        sent = self._sent.pop(release, None)
        if sent is None:
            self._waiting.add(release)
        elif sent[0] != transfer:
            problems.append(_differs(transfer, sent[0], release))
        return problems

    def unmatched(self) -> list[tuple[Any, str]]:
        """After every partition is read: each credit that names no release sending funds, as (where, problem)."""
        found = []
        for release in sorted(self._waiting):
            transfer, where = self._received[release]
            found.append((where, f"credit of task_id={transfer.task_id} names shard {release[0]} seq {release[1]}, "
                                 "which is no release that paid another partition's agent"))
        return found

    def uncredited(self) -> list[tuple[EventId, Transfer, Any]]:
        """The releases sent to another partition that no credit has received (id, transfer, where), in id order."""
        return [(release, transfer, where) for release, (transfer, where) in sorted(self._sent.items())]


def _differs(credit: Transfer, release: Transfer, at: EventId) -> str:
    return (f"credit of task_id={credit.task_id} ({credit.source_agent} -> {credit.target_agent}, {credit.amount_micros} micros) "
            f"does not match the release at shard {at[0]} seq {at[1]} (task_id={release.task_id}, "
            f"{release.source_agent} -> {release.target_agent}, {release.amount_micros} micros)")


def credit_marks(events: Any) -> dict[int, int]:
    """The highest ``from_seq`` each source partition has credited, from one partition's events in
    order: what a receiver keeps so that it takes each credit once (a credit at or below is skipped)."""
    marks: dict[int, int] = {}
    for event in events:
        if event["kind"] == "credit":
            marks[event["from_shard"]] = max(marks.get(event["from_shard"], -1), event["from_seq"])
    return marks


def all_missing_credits(ledger: Path | str, marks_of: list[dict[int, int]]) -> dict[int, list[tuple[int, dict[str, Any]]]]:
    """For each partition of the partitioned ``ledger``, ``(source partition, release)`` of every release
    another partition paid to its agents past its marks (``marks_of[k]``, see :func:`credit_marks`), in
    each source's seq order; one pass over the ledger. Only a partition that tracks balances sends funds,
    which it decides by its first deposit or credit (before any lock: see :mod:`ledger.replay`)."""
    count = partition_count(ledger)
    if count is None:
        raise LedgerError(f"{ledger} is not partitioned: it has no credits to miss")
    if len(marks_of) != count:
        raise LedgerError(f"{len(marks_of)} partitions' marks for a ledger of {count} partitions")
    missing: dict[int, list[tuple[int, dict[str, Any]]]] = {}
    for source, files in enumerate(families(ledger)):
        tracking = None
        for line in event_lines(files):
            event = line.event
            kind = event["kind"]
            if tracking is None and kind in DECIDING_KINDS:
                tracking = kind in FUNDING_KINDS
            if kind not in ("release", "paper_release") or not tracking:
                continue
            target = owner(event["target_agent"], count)
            if target != source and event["seq"] > marks_of[target].get(source, -1):
                missing.setdefault(target, []).append((source, event))
    return missing
