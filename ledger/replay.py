"""Replay a ledger through the same core the live booth uses, and snapshot the result.

Replaying a booth's JSONL ledger into a fresh :class:`~mesh.escrow.EscrowBook` built
from the same configuration rebuilds exactly its balances, caps used and open
escrows; :func:`snapshot` gives a plain dict to compare the two.

>>> from mesh.budget import BudgetBook
>>> from mesh.escrow import EscrowBook
>>> book = EscrowBook(BudgetBook(default_cap_micros=None), escrow_timeout_s=None)
>>> replay_events(book, [{"kind": "deposit", "ts_us": 0, "target_agent": "a", "amount_micros": 7}])
>>> book.budget.balance_micros("a")
7
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Protocol

from ledger.files import segments
from ledger.schema import EventKind
from ledger.reader import event_lines, lines_of
from mesh.clock import day_of
from mesh.errors import LedgerError
from mesh.escrow import EscrowBook
from mesh.records import Reason, SettlementStatus, TollRecord, status_of
from mesh.sharding import shard_of


def replay_file(book: EscrowBook, path: Path | str) -> int:
    """Apply every event of the JSONL ledger at ``path`` (all its files) to ``book``; return the next ``seq``."""
    next_seq = 0
    for line in event_lines(segments(path)):  # streamed: a ledger of millions of events is never held whole
        event = line.event
        try:
            apply_event(book, event)
        except (LedgerError, KeyError, ValueError, TypeError) as exc:
            raise LedgerError(f"{path}: event seq={event.get('seq')}: cannot replay: {exc}") from exc
        next_seq = event["seq"] + 1
    return next_seq


class LedgerFiles(Protocol):
    """Where a ledger's files are read from: this disk, or another node's (``actors.run_files``)."""

    def segments(self, ledger: str) -> list[str]: ...

    def chunks(self, path: str) -> Iterator[bytes]: ...


def replay_shard(book: EscrowBook, path: Path | str, *, shard: int, shards: int, files: Optional[LedgerFiles] = None) -> int:
    """Rebuild budget shard ``shard`` of ``shards`` from the JSONL ledger at ``path``; return the next ``seq``.

    The shard takes the events of the agents it holds (by :func:`~mesh.sharding.shard_of`
    of the source, or of the target for a deposit), every ``reset_daily``, and the
    releases other shards paid to its agents (credited to their balances). Streams the
    files, from this disk or through ``files``; an absent or empty ledger gives 0.
    """
    if files is None:
        paths, read_lines = (segments(path) if Path(path).exists() else []), None
    else:
        paths = [Path(p) for p in files.segments(str(path))]
        read_lines = lambda p: lines_of(files.chunks(str(p)))  # noqa: E731
    next_seq = 0
    for line in event_lines(paths, read_lines=read_lines):
        event = line.event
        next_seq = event["seq"] + 1
        try:
            _apply_to_shard(book, event, shard, shards)
        except (LedgerError, KeyError, ValueError, TypeError) as exc:
            raise LedgerError(f"{line.path}:{line.line_no}: event seq={event.get('seq')}: cannot replay: {exc}") from exc
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
    elif shard_of(event["source_agent"], shards) == shard:
        apply_event(book, event)
    elif kind in ("release", "paper_release") and shard_of(event["target_agent"], shards) == shard:
        book.budget.credit(event["target_agent"], event["amount_micros"])


def replay_events(book: EscrowBook, events: Iterable[dict[str, Any]]) -> None:
    """Apply ``events`` in order to ``book``."""
    for event in events:
        apply_event(book, event)


def apply_event(book: EscrowBook, event: dict[str, Any]) -> None:
    """Apply one event to ``book`` and check the outcome matches what the event says."""
    kind = _KINDS.get(event["kind"]) or EventKind(event["kind"])  # the lookup is the fast path; an unknown kind raises
    ts_us = event["ts_us"] if kind is not EventKind.RECOVER else 0
    if kind is EventKind.DEPOSIT:
        book.deposit(event["target_agent"], event["amount_micros"], ts_us)
        return
    if kind is EventKind.RESET_DAILY:
        book.reset_usage(ts_us)
        return
    if kind is EventKind.RECOVER:
        return
    task_id = event["task_id"]
    if kind is EventKind.RELEASE:
        result = book.release(task_id, ts_us)
    elif kind is EventKind.REFUND:
        result = book.refund(task_id, ts_us, _reason(event["reason"]))
    elif kind is EventKind.EXPIRE:  # refund sweeps what is due first, as the live booth did; another timeout refunds it anyway
        result = book.refund(task_id, ts_us, Reason.ESCROW_TIMEOUT)
    else:
        result = _open(book, kind, _draft(event), event, ts_us)
    expected = status_of(event.get("status", "pending"))
    if result is None or result.status is not expected:
        got = None if result is None else result.status.value
        raise LedgerError(f"{kind.value} of task_id={task_id!r} gives status {got}, ledger says {expected.value}")


def _open(book: EscrowBook, kind: EventKind, draft: TollRecord, event: dict[str, Any], ts_us: int) -> Any:
    """Replay an event that opens a toll: a lock, a paper release, a rejection or a pending payment."""
    if kind is EventKind.LOCK:
        return book.charge(draft, ts_us)
    if kind is EventKind.PAPER_RELEASE:
        return book.charge(draft, ts_us, instant_release=True)
    if kind is EventKind.REJECT:
        return book.reject(draft, _reason(event["reason"]), ts_us)
    return book.pend(draft, ts_us)


def _draft(event: dict[str, Any]) -> TollRecord:
    """The PENDING record a toll-opening event started from (what the live booth charged)."""
    return TollRecord.from_dict(event).moved_to(SettlementStatus.PENDING)


def _reason(value: str) -> Reason:
    return _REASONS.get(value) or Reason(value)


_KINDS = {kind.value: kind for kind in EventKind}
_REASONS = {reason.value: reason for reason in Reason}


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
