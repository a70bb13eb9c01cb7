"""Rebuild a :class:`~mesh.columnar.book.ColumnarBook` from a ledger's events (a restarted shard's state).

The rules are :mod:`ledger.replay`'s, for one shard of ``shards``: the shard takes the
events whose source it holds (the target, for a deposit), every ``reset_daily``, and
credits the releases other shards paid to its agents (in a partitioned ledger, its
partition's ``credit`` events, whose marks the book keeps: ``credit_marks``); balances are tracked from the
ledger's first deposit; nothing is judged again (no cap, no timeout: a lock the ledger
holds is taken, an ``expire`` applied where it is written); a ledger that contradicts
itself (a settlement of a toll not locked, a lock of funds not held, a second lock of
an open escrow) raises LedgerError naming the line. A ``pending`` record is kept until a
later record of its task id replaces it.

>>> import numpy as np
>>> book = rebuild_from_events(ColumnarBook(track_balances=True), [
...     {"seq": 0, "kind": "deposit", "ts_us": 0, "target_agent": "a", "amount_micros": 7}])
>>> book.snapshot(0)["balances_micros"], book.rebuilt_through_seq
({'a': 7}, 1)
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

from mesh.core.clock import US_PER_DAY, US_PER_SECOND, iso_utc
from mesh.columnar._codes import (
    ESCROW_TIMEOUT, FAILED, LOCKED, PAYMENT_REQUIRED, PENDING, REASON_CODE, REFUNDED, RELEASED,
)
from mesh.columnar._tasks import ROW_COLUMNS, task_keys
from mesh.columnar.book import ColumnarBook
from ledger.schema import DECIDING_KINDS
from mesh.core.errors import LedgerError
from mesh.core.sharding import shard_of

_STATUS_OF_KIND = {"lock": "escrow_locked", "paper_release": "released", "release": "released", "refund": "refunded",
                   "expire": "refunded", "reject": "failed", "pending": "pending"}


def rebuild_from_events(book: ColumnarBook, events: Iterable[dict[str, Any]], *, where: Optional[Any] = None) -> ColumnarBook:
    """Apply ``events`` (in ledger order) to the empty ``book``; set its ``rebuilt_through_seq``; return it.

    ``where(event) -> str``: how an error names the event's line (default: its seq).
    """
    if book.tasks.count or book.deposits_total_micros:
        raise LedgerError("a rebuild starts from an empty book")
    replay = _Replay(book)
    tracked_before, book.track_balances = book.track_balances, False  # until the ledger's first deposit
    decided, next_seq = False, 0
    for event in events:
        decided = decided or event["kind"] in DECIDING_KINDS
        try:
            replay.apply(event)
        except (LedgerError, KeyError, ValueError, TypeError, AssertionError) as exc:
            at = where(event) if where is not None else f"event seq={event.get('seq')}"
            raise LedgerError(f"{at}: cannot replay: {exc}") from exc
        next_seq = event.get("seq", next_seq - 1) + 1
    if not decided:
        book.track_balances = tracked_before
    replay.flush()
    book.rebuilt_through_seq = next_seq
    return book


def rebuild_from_ledger(book: ColumnarBook, path: Path | str, *, files: Optional[Any] = None) -> ColumnarBook:
    """:func:`rebuild_from_events` over the JSONL ledger at ``path`` (all its files, streamed; absent: empty),
    read from this disk or through ``files`` (a :class:`ledger.replay.LedgerFiles`, as a shard on another node)."""
    from ledger.reader import event_lines
    from ledger.replay import _sources

    paths, read_lines = _sources(path, files, missing_ok=True)
    lines = {}

    def stream():
        for line in event_lines(paths, read_lines=read_lines):
            lines["at"] = f"{line.path}:{line.line_no}: event seq={line.event.get('seq')}"
            yield line.event

    return rebuild_from_events(book, stream(), where=lambda event: lines["at"])


class _Replay:
    """The rows a rebuild appends (kept as Python lists until :meth:`flush`) and the moves it applies."""

    def __init__(self, book: ColumnarBook) -> None:
        self.book = book
        self.a = book._agents
        self.rows: dict[str, list] = {name: [] for name in ROW_COLUMNS}
        self.task_ids: list[str] = []
        self.nonces: list[bytes] = []
        self.open: dict[str, int] = {}  # task id -> its row, while locked
        self.pending: dict[str, int] = {}  # task id -> its row, while PENDING (a later record replaces it)
        self.forgotten: list[int] = []
        self.wallets: dict[int, str] = {}
        self.signatures: dict[int, str] = {}
        self._seconds: dict[str, int] = {}

    def apply(self, event: dict[str, Any]) -> None:
        kind, book = event["kind"], self.book
        if kind == "recover":
            return
        if kind == "reset_daily":
            book.reset_usage()
            return
        if kind == "credit":  # a partition's: a release another partition paid to its agent (ledger.partitions)
            if not self._holds(event["target_agent"]):
                raise LedgerError(f"a credit to {event['target_agent']!r}, an agent of another shard")
            self._start_balances()
            agent = self._agent(event["target_agent"])
            self.a["balance"][agent] += event["amount_micros"]
            self.a["has_account"][agent] = True
            book.transfers_in_micros += event["amount_micros"]
            marks = book.credit_marks
            marks[event["from_shard"]] = max(marks.get(event["from_shard"], -1), event["from_seq"])
            return
        if kind == "deposit":
            if self._holds(event["target_agent"]):
                self._start_balances()
                agent = self._agent(event["target_agent"])
                self.a["balance"][agent] += event["amount_micros"]
                self.a["has_account"][agent] = True
                book.deposits_total_micros += event["amount_micros"]
            else:
                self._start_balances()
            return
        if self._holds(event["source_agent"]):
            self._apply_task(kind, event)
        elif kind in ("release", "paper_release") and self._holds(event["target_agent"]):
            if book.track_balances:
                agent = self._agent(event["target_agent"])
                self.a["balance"][agent] += event["amount_micros"]
                self.a["has_account"][agent] = True
                book.transfers_in_micros += event["amount_micros"]

    def flush(self) -> None:
        """Append every row gathered (one bulk append, one index run)."""
        if not self.task_ids:
            return
        rows = {name: np.array(values, dtype) for (name, dtype), values in zip(ROW_COLUMNS.items(), self.rows.values())}
        keys, _ = task_keys(self.task_ids)
        nonces = np.frombuffer(b"".join(self.nonces), np.uint8).reshape(-1, 16)
        self.book.tasks.append(self.task_ids, keys, nonces, source=rows["source"], target=rows["target"],
                               amount=rows["amount"], state=rows["state"], reason=rows["reason"],
                               created_s=rows["created_s"], lock_us=rows["lock_us"], lock_day=rows["lock_day"],
                               lock_epoch=rows["lock_epoch"], settled_s=rows["settled_s"], tokens=rows["tokens"])
        tasks = self.book.tasks
        tasks.wallets.update(self.wallets)
        tasks.signatures.update(self.signatures)
        for row in self.forgotten:
            tasks.forget(row)

    # -- internals --------------------------------------------------------------

    def _apply_task(self, kind: str, event: dict[str, Any]) -> None:
        expected = _STATUS_OF_KIND.get(kind)
        if expected is None:
            raise LedgerError(f"unknown event kind {kind!r}")
        if event.get("status") != expected:
            raise LedgerError(f"{kind} of task_id={event.get('task_id')!r} with status {event.get('status')!r}, expected {expected!r}")
        task_id = event["task_id"]
        if kind in ("lock", "paper_release", "reject", "pending"):
            if task_id in self.open:
                raise LedgerError(f"{kind} of task_id={task_id!r} while its escrow is locked: one task id, one escrow")
            replaced = self.pending.pop(task_id, None)
            if replaced is not None:
                self.forgotten.append(replaced)
            row = self._append(event)
            if kind == "pending":
                self.rows["state"][row], self.rows["reason"][row] = PENDING, PAYMENT_REQUIRED
                self.pending[task_id] = row
                return
            if kind == "reject":
                self.rows["state"][row], self.rows["reason"][row] = FAILED, REASON_CODE[event["reason"]]
                return
            self._take(row, event)
            if kind == "lock":
                self.open[task_id] = row
            else:
                self._release(row, event)
        elif kind in ("release", "refund", "expire"):
            row = self.open.pop(task_id, None)
            if row is None:
                raise LedgerError(f"{kind} of task_id={task_id!r} that is not locked")
            if kind == "release":
                self._release(row, event)
            else:
                self._refund(row, event, ESCROW_TIMEOUT if kind == "expire" else REASON_CODE[event["reason"]])

    def _append(self, event: dict[str, Any]) -> int:
        rows = self.rows
        ts_us = event["ts_us"]
        rows["key"].append(0)
        rows["source"].append(self._agent(event["source_agent"]))
        rows["target"].append(self._agent(event["target_agent"]))
        rows["amount"].append(event["amount_micros"])
        rows["state"].append(LOCKED)
        rows["reason"].append(0)
        rows["created_s"].append(self._second(event["created_at"]))
        rows["lock_us"].append(ts_us)
        rows["settled_s"].append(-1)
        rows["lock_day"].append(ts_us // US_PER_DAY)
        rows["lock_epoch"].append(self.book.epoch)
        rows["tokens"].append(float(event.get("amount_tokens") or 0.0))
        row = len(self.task_ids)
        if event.get("payer_wallet") is not None:
            self.wallets[row] = event["payer_wallet"]
        if event.get("tx_signature") is not None:
            self.signatures[row] = event["tx_signature"]
        nonce = bytes.fromhex(event["nonce"])
        if len(nonce) != 16:
            raise LedgerError(f"task_id={event['task_id']!r}: nonce {event['nonce']!r} is not 32 hex digits")
        self.task_ids.append(event["task_id"])
        self.nonces.append(nonce)
        return len(self.task_ids) - 1

    def _take(self, row: int, event: dict[str, Any]) -> None:
        """A lock the ledger holds: its funds must be there (with balances); its cap is not judged."""
        a, book, rows = self.a, self.book, self.rows
        source, amount, day = rows["source"][row], rows["amount"][row], rows["lock_day"][row]
        if book.track_balances:
            if not a["has_account"][source]:
                raise LedgerError(f"task_id={event['task_id']!r}: source_agent={event['source_agent']!r} locks funds but has no account (no deposit)")
            if a["balance"][source] < amount:
                raise LedgerError(f"task_id={event['task_id']!r}: source_agent={event['source_agent']!r} locks {amount} micros "
                                  f"but holds {int(a['balance'][source])}")
            a["balance"][source] -= amount
        if a["used_day"][source] != day:
            a["used"][source], a["used_day"][source] = 0, day
        a["used"][source] += amount
        a["locked"][source] += amount

    def _release(self, row: int, event: dict[str, Any]) -> None:
        a, book, rows = self.a, self.book, self.rows
        source, target, amount = rows["source"][row], rows["target"][row], rows["amount"][row]
        a["locked"][source] -= amount
        if book.track_balances:
            if a["owned"][target]:
                a["balance"][target] += amount
                a["has_account"][target] = True
            else:
                book.transfers_out_micros += amount
        rows["state"][row], rows["settled_s"][row] = RELEASED, self._second(event.get("settled_at"))

    def _refund(self, row: int, event: dict[str, Any], reason: int) -> None:
        a, book, rows = self.a, self.book, self.rows
        source, amount = rows["source"][row], rows["amount"][row]
        a["locked"][source] -= amount
        if a["used_day"][source] == rows["lock_day"][row] and rows["lock_epoch"][row] == book.epoch:
            a["used"][source] -= amount
        if book.track_balances:
            a["balance"][source] += amount
        rows["state"][row], rows["reason"][row] = REFUNDED, reason
        rows["settled_s"][row] = self._second(event.get("settled_at"))

    def _holds(self, agent: str) -> bool:
        book = self.book
        return book.shard is None or shard_of(agent, book.shards) == book.shard

    def _agent(self, name: str) -> int:
        index = self.book._index.get(name)
        return index if index is not None else int(self.book.register([name])[0])

    def _start_balances(self) -> None:
        """Track balances from the ledger's first deposit on (none of the locks before it may be open)."""
        book = self.book
        if book.track_balances:
            return
        if self.open:
            raise LedgerError(f"a first deposit while {len(self.open)} escrow(s) locked without balances are open: "
                              "a ledger of two kinds of booth")
        book.track_balances = True

    def _second(self, text: Optional[str]) -> int:
        """A record time's whole second (-1 for null); LedgerError for a time the book would not write back the same."""
        if text is None:
            return -1
        second = self._seconds.get(text)
        if second is None:
            second = int(datetime.fromisoformat(text).timestamp())
            if iso_utc(second * US_PER_SECOND, "seconds") != text:
                raise LedgerError(f"time {text!r} is not a shard's (whole seconds, UTC, ISO-8601)")
            if len(self._seconds) > 4_096:
                self._seconds.clear()
            self._seconds[text] = second
        return second
