"""Replay a ledger through the same core the live booth uses, and snapshot the result.

Replaying a booth's JSONL ledger into a fresh :class:`~mesh.core.escrow.EscrowBook` rebuilds
exactly its balances, caps used, open escrows and the task ids it has seen;
:func:`snapshot` gives a plain dict to compare the two.

A replay applies what the ledger says happened, by the rules it was written under,
and judges nothing again by today's configuration: a lock is taken whatever today's
caps say, a lock the ledger shows released is released even if today's timeout is
shorter, an ``expire`` is applied where it is written, and no lock expires during the
replay (the book's timeout applies from then on, to the locks still open, from their
lock time). Balances are the ledger's too: tracked from its first deposit on, as a
booth that tracks them rejects every lock before its first deposit (so after the
replay, ``book.budget.track_balances`` says whether the ledger tracks them, or is left
as it was for a ledger with neither a deposit nor a lock). What a replay refuses
(LedgerError) is a ledger that contradicts itself: a settlement of a toll that is not
locked, a lock of funds its source does not hold, a second lock of an open escrow.

>>> from mesh.core.budget import BudgetBook
>>> from mesh.core.escrow import EscrowBook
>>> book = EscrowBook(BudgetBook(default_cap_micros=None), escrow_timeout_s=None)
>>> replay_events(book, [{"kind": "deposit", "ts_us": 0, "target_agent": "a", "amount_micros": 7}])
>>> book.budget.balance_micros("a")
7
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Protocol

from ledger.credits import CreditMatch, EventId, Transfer
from ledger.files import segments
from ledger.partitions import owner, partition_count, partitions
from ledger.schema import DECIDING_KINDS, EventKind
from ledger.reader import RawLine, ReadLines, event_lines, lines_of
from mesh.core.clock import day_of
from mesh.core.budget import BudgetBook
from mesh.core.errors import LedgerError
from mesh.core.escrow import EscrowBook
from mesh.core.records import Reason, TollRecord
from mesh.core.sharding import shard_of

#: Kinds of event after which a toll's record no longer changes: what a remembered task id is recalled by.
SETTLING_KINDS = frozenset({"release", "refund", "expire", "paper_release", "reject"})
_REPLAY_ERRORS = (LedgerError, KeyError, ValueError, TypeError, AssertionError)


class LedgerFiles(Protocol):
    """Where a ledger's files are read from: this disk, or another node's (``actors.run_files``)."""

    def segments(self, ledger: str) -> list[str]: ...

    def chunks(self, path: str) -> Iterator[bytes]: ...


def replay_file(book: EscrowBook, path: Path | str) -> int:
    """Apply every event of the JSONL ledger at ``path`` (all its files) to ``book``; return the next ``seq``.

    ``book`` is a fresh book; what the replay judges and what not: see the module doc.
    """
    if partition_count(path) is not None:
        raise LedgerError(f"{path} is partitioned by shard: each partition replays into a book of its own "
                          "(ledger.replay.replay_partitions)")
    # streamed: a ledger of millions of events is never held whole
    return _replay_lines(book, event_lines(segments(path)), lambda event: apply_event(book, event))


def replay_shard(book: EscrowBook, path: Path | str, *, shard: int, shards: int, files: Optional[LedgerFiles] = None) -> int:
    """Rebuild budget shard ``shard`` of ``shards`` from the JSONL ledger at ``path``; return the next ``seq``.

    The shard takes the events of the agents it holds (by :func:`~mesh.core.sharding.shard_of`
    of the source, or of the target for a deposit), every ``reset_daily``, and the
    releases other shards paid to its agents (credited to their balances). Streams the
    files, from this disk or through ``files``; an absent or empty ledger gives 0.
    """
    paths, read_lines = _sources(path, files, missing_ok=True)
    lines = event_lines(paths, read_lines=read_lines)
    return _replay_lines(book, lines, lambda event: _apply_to_shard(book, event, shard, shards))


@dataclass
class PartitionedReplay:
    """Each partition's book, the next seq of each, and the releases not credited yet (see :mod:`ledger.credits`)."""

    books: list[EscrowBook]
    next_seqs: list[int]
    uncredited: list[tuple[EventId, Transfer, Any]]  # (release, what it sent, where)

    def snapshot(self, ts_us: int) -> dict[str, Any]:
        """The whole ledger's :func:`snapshot`: the partitions' (each agent's account is in one), with
        the releases not credited yet in their targets' balances, as a restarted mesh credits them."""
        merged = merge_snapshots([snapshot(book, ts_us) for book in self.books])
        balances = merged["balances_micros"]
        for _, transfer, _ in self.uncredited:
            balances[transfer.target_agent] = balances.get(transfer.target_agent, 0) + transfer.amount_micros
        return merged


def partition_book(partition: int, count: int) -> EscrowBook:
    """A fresh book for partition ``partition`` of ``count``: it owns the agents the partition holds, no caps
    or timeouts judged (a replay applies what the ledger says)."""
    budget = BudgetBook(default_cap_micros=None, owns_agent=lambda agent: owner(agent, count) == partition)
    return EscrowBook(budget, escrow_timeout_s=None)


def replay_partitions(path: Path | str) -> PartitionedReplay:
    """Replay each partition of the partitioned ledger at ``path`` into a book of its own
    (:func:`partition_book`), pairing credits with releases; LedgerError where the ledger contradicts
    itself, as :func:`replay_file` (and where a credit does not pair, see :mod:`ledger.credits`)."""
    count = partition_count(path)
    if count is None:
        raise LedgerError(f"{path} is not partitioned (it has no partition manifest): replay it with replay_file")
    match = CreditMatch()
    books, next_seqs, decided = [], [], set()
    for partition, first in enumerate(partitions(path)):
        book = partition_book(partition, count)
        kinds: set[str] = set()

        def apply(event: dict[str, Any], book: EscrowBook = book, partition: int = partition, kinds: set = kinds) -> None:
            kinds.add(event["kind"])
            _apply_paired(book, event, partition, count, match)

        next_seqs.append(_replay_lines(book, event_lines(segments(first)), apply))
        books.append(book)
        if kinds & DECIDING_KINDS:  # this partition says whether balances are tracked
            decided.add(book.budget.track_balances)
    leftover = match.unmatched()
    if leftover:
        raise LedgerError(f"{leftover[0][0]}: {leftover[0][1]}")
    if len(decided) > 1:
        raise LedgerError(f"{path}: some partitions track balances and some do not: a ledger of two kinds of booth")
    return PartitionedReplay(books, next_seqs, match.uncredited())


def _apply_paired(book: EscrowBook, event: dict[str, Any], partition: int, count: int, match: CreditMatch) -> None:
    """Apply one event of partition ``partition``, noting what it sends to or receives from another partition."""
    apply_event(book, event)
    kind = event["kind"]
    if kind == "credit":
        problems = match.received((event["from_shard"], event["from_seq"]), Transfer.of(event),
                                  partition=partition, where=f"shard={partition} seq {event['seq']}")
        if problems:
            raise LedgerError(problems[0])
    elif kind in ("release", "paper_release") and book.budget.track_balances and owner(event["target_agent"], count) != partition:
        problems = match.sent((partition, event["seq"]), Transfer.of(event), where=f"shard={partition} seq {event['seq']}")
        if problems:
            raise LedgerError(problems[0])


def merge_snapshots(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One :func:`snapshot` from those of books that each hold some agents (shards, partitions)."""
    merged: dict[str, Any] = {"balances_micros": {}, "locked_micros": {}, "used_today_micros": {}, "open_escrows": {}}
    for part in parts:
        for key in merged:
            merged[key].update(part[key])
    merged["locked_total_micros"] = sum(p["locked_total_micros"] for p in parts)
    merged["deposits_total_micros"] = sum(p["deposits_total_micros"] for p in parts)
    return merged


def _replay_lines(book: EscrowBook, lines: Iterable[RawLine], apply: Callable[[dict[str, Any]], None]) -> int:
    """Apply each line's event; balances as the ledger has them (see the module doc). The next seq."""
    budget = book.budget
    tracked_before, decided = budget.track_balances, False
    budget.track_balances = False  # until the ledger's first deposit
    next_seq = 0
    for line in lines:
        event = line.event
        if not decided:
            decided = event["kind"] in DECIDING_KINDS
        try:
            apply(event)
        except _REPLAY_ERRORS as exc:
            raise LedgerError(f"{line.path}:{line.line_no}: event seq={event.get('seq')}: cannot replay: {exc}") from exc
        next_seq = event["seq"] + 1
    if not decided:
        budget.track_balances = tracked_before
    return next_seq


def _apply_to_shard(book: EscrowBook, event: dict[str, Any], shard: int, shards: int) -> None:
    kind = event["kind"]
    if kind == "recover":
        return
    if kind == "reset_daily":
        apply_event(book, event)
    elif kind == "deposit":
        if shard_of(event["target_agent"], shards) == shard:
            apply_event(book, event)
        elif not book.budget.track_balances:
            start_balances(book)  # the ledger tracks balances from its first deposit, whichever shard took it
    elif shard_of(event["source_agent"], shards) == shard:
        apply_event(book, event)
    elif kind in ("release", "paper_release") and shard_of(event["target_agent"], shards) == shard:
        book.budget.credit(event["target_agent"], event["amount_micros"])


def replay_events(book: EscrowBook, events: Iterable[dict[str, Any]]) -> None:
    """Apply ``events`` in order to ``book``."""
    for event in events:
        apply_event(book, event)


def apply_event(book: EscrowBook, event: dict[str, Any]) -> None:
    """Apply one event to ``book`` as it happened (see the module doc); LedgerError if it contradicts the book."""
    kind = _KINDS.get(event["kind"]) or EventKind(event["kind"])  # the lookup is the fast path; an unknown kind raises
    if kind is EventKind.RECOVER:
        return
    ts_us = event["ts_us"]
    if kind is EventKind.DEPOSIT:
        if not book.budget.track_balances:
            start_balances(book)
        book.deposit(event["target_agent"], event["amount_micros"], ts_us)
        return
    if kind is EventKind.CREDIT:  # a partition's book: funds another partition's release sent here
        if not book.budget.track_balances:
            start_balances(book)
        book.budget.credit(event["target_agent"], event["amount_micros"])
        return
    if kind is EventKind.RESET_DAILY:
        book.reset_usage(ts_us)
        return
    status = event.get("status")
    if status != _STATUS_OF_KIND[kind]:
        raise LedgerError(f"{kind.value} of task_id={event.get('task_id')!r} with status {status!r}, "
                          f"expected {_STATUS_OF_KIND[kind]!r}")
    seq = event.get("seq")
    if kind is EventKind.LOCK:
        book.apply_lock(TollRecord.from_dict(event), ts_us)
    elif kind is EventKind.PAPER_RELEASE:
        book.apply_paper_release(TollRecord.from_dict(event), ts_us, seq)
    elif kind is EventKind.REJECT or kind is EventKind.PENDING:
        book.apply_unlocked(kind.value, TollRecord.from_dict(event), seq)
    else:
        reason = None
        if kind is EventKind.REFUND:
            reason = _reason(event["reason"])
        elif kind is EventKind.EXPIRE:
            reason = Reason.ESCROW_TIMEOUT
        book.apply_settle(kind.value, event["task_id"], ts_us, event.get("settled_at"), reason, seq)


def start_balances(book: EscrowBook) -> None:
    """Track balances from here on (a ledger's first deposit); LedgerError if a lock taken without them is open."""
    if book.open_count:
        raise LedgerError(f"a first deposit while {book.open_count} escrow(s) locked without balances are open: "
                          "a ledger of two kinds of booth")
    book.budget.track_balances = True


def ledger_has_events(path: Path | str) -> bool:
    """Whether the JSONL ledger at ``path`` exists with a file that is not empty (a partitioned one: in any partition)."""
    if partition_count(path) is not None:
        return any(p.stat().st_size > 0 for first in partitions(path) for p in segments(first))
    return Path(path).exists() and any(p.stat().st_size > 0 for p in segments(path))


def balances_conflict(book: EscrowBook, path: Path | str, track_balances: bool) -> Optional[str]:
    """Why a booth with ``track_balances`` may not write on the ledger at ``path`` that ``book`` replayed, or None.

    The ledger says whether balances are tracked (see the module doc), and a ledger of two
    kinds of booth fails ``ledger verify``: funds checked on some locks and not on others
    cannot be told apart, and would let an overdraft pass.
    """
    if book.budget.track_balances == track_balances:
        return None
    if track_balances:
        return (f"track_balances=True, but the ledger at {path} was written without balances (it holds locks "
                "before any deposit): open it with track_balances=False, or start a new ledger")
    return (f"track_balances=False, but the ledger at {path} tracks balances (it holds deposits): "
            "open it with track_balances=True, or start a new ledger")


def _reason(value: str) -> Reason:
    return _REASONS.get(value) or Reason(value)


_KINDS = {kind.value: kind for kind in EventKind}
_REASONS = {reason.value: reason for reason in Reason}
_STATUS_OF_KIND = {
    EventKind.LOCK: "escrow_locked", EventKind.PAPER_RELEASE: "released", EventKind.RELEASE: "released",
    EventKind.REFUND: "refunded", EventKind.EXPIRE: "refunded", EventKind.REJECT: "failed", EventKind.PENDING: "pending",
}


# -- reading one toll back (a task id the book remembers past its window) -------------

def event_at(path: Path | str, seq: int, *, files: Optional[LedgerFiles] = None) -> Optional[dict[str, Any]]:
    """The event numbered ``seq`` of the JSONL ledger at ``path``, or None if it has none.

    From this disk its files are bisected on seq; through ``files`` they are read from their start.
    """
    paths, read_lines = _sources(path, files, missing_ok=False)
    for line in event_lines(paths, from_seq=seq, read_lines=read_lines):
        return line.event if line.event["seq"] == seq else None
    return None


def settled_event(path: Path | str, task_id: str, from_seq: int, *, files: Optional[LedgerFiles] = None) -> Optional[dict[str, Any]]:
    """The first event at or after ``from_seq`` that settled or failed ``task_id`` (:data:`SETTLING_KINDS`), or None.

    Reads the ledger at ``path`` from this disk, or through ``files`` (from each file's start).
    """
    paths, read_lines = _sources(path, files, missing_ok=False)
    for line in event_lines(paths, from_seq=from_seq, read_lines=read_lines):
        event = line.event
        if event.get("task_id") == task_id and event["kind"] in SETTLING_KINDS:
            return event
    return None


def _sources(path: Path | str, files: Optional[LedgerFiles], *, missing_ok: bool) -> tuple[list[Path], Optional[ReadLines]]:
    """The ledger's files, and how to read them (None: from this disk)."""
    if files is None:
        return (segments(path) if not missing_ok or Path(path).exists() else []), None
    paths = [Path(p) for p in files.segments(str(path))]
    if not paths and not missing_ok:
        raise LedgerError(f"ledger not found: {path}")
    return paths, lambda p: lines_of(files.chunks(str(p)))


def snapshot(book: EscrowBook, ts_us: int) -> dict[str, Any]:
    """The state that replay must rebuild: balances, locked, caps used on ``ts_us``'s day, open escrows."""
    budget = book.budget
    open_escrows = {r.task_id: r.to_dict() for r in book.open_escrows()}
    return {
        "balances_micros": budget.balances(),
        "locked_micros": {a: budget.locked_micros(a) for a in {r["source_agent"] for r in open_escrows.values()}},
        "locked_total_micros": budget.locked_total_micros,
        "deposits_total_micros": budget.deposits_total_micros,
        "used_today_micros": budget.usage_on(day_of(ts_us)),
        "open_escrows": open_escrows,
    }


def reconcile(replayed: dict[str, Any], live: dict[str, Any]) -> list[str]:
    """Every difference between two :func:`snapshot` s (a replay and a live booth), in words.

    >>> reconcile({"balances_micros": {"a": 1}}, {"balances_micros": {"a": 2, "b": 0}})
    ["balances_micros['a']: replay 1, live 2", "balances_micros['b']: replay None, live 0"]
    """
    differences = []
    for key in sorted(replayed.keys() | live.keys()):
        mine, theirs = replayed.get(key), live.get(key)
        if isinstance(mine, dict) and isinstance(theirs, dict):
            for item in sorted(mine.keys() | theirs.keys()):
                if mine.get(item) != theirs.get(item):
                    differences.append(f"{key}[{item!r}]: replay {mine.get(item)!r}, live {theirs.get(item)!r}")
        elif mine != theirs:
            differences.append(f"{key}: replay {mine!r}, live {theirs!r}")
    return differences
