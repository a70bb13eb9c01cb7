"""A budget shard's logic without Ray: a :class:`~mesh.columnar.ColumnarBook` driven a batch at a time.

Two ways in, one book:

* **records** (:meth:`ShardCore.lock_batch`, :meth:`ShardCore.settle_batch`, ...): ops as tuples,
  answers as :class:`~mesh.core.records.TollRecord` s, for the per-message paths (single calls,
  the Tollbooth API, x402-paid messages, the fast lane). Runs of plain locks and refusals go
  to the book as columns; a paper release, a pending record, or a toll with tokens or a
  payment is applied one at a time, in its place.
* **columns** (:meth:`ShardCore.lock_columns`, :meth:`ShardCore.settle_columns`): the batched
  hot path. Messages and answers are arrays (status and reason codes, task rows); no record
  and no Python object per message.

Every call answers a :data:`ShardAnswer` (or a :class:`ColumnsAnswer`) holding its events
encoded as the ledger's JSON lines, and the releases paid to agents another shard holds
(credits to forward). State is rebuilt from the ledger (:meth:`ShardCore.rebuild`).

>>> core = ShardCore(ShardSpec(index=0, shards=1, default_cap_micros=None))
>>> records, lines, events, credits, repeats, expired = core.lock_batch(
...     [(LOCK, "t1", "alice", "bob", 10, 0.0, None, None, None)], 0, "live")
>>> records[0].status.value, events
('escrow_locked', 1)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import orjson

from actors.run_files import LocalFiles, RunFiles
from ledger.events import credit_event
from ledger.jsonl import encode_events
from ledger.parquet import fields_to_ipc
from mesh.calls.coded import CodedNames
from mesh.columnar import REASON_CODE, ColumnarBook, EventColumns
from mesh.columnar.rebuild import rebuild_from_ledger
from mesh.core.escrow import DEFAULT_MAX_SETTLED_RECORDS
from mesh.core.records import TollRecord

SCALAR_OPS = 8  # a run of this many ops or fewer is applied one at a time in Python scalars, not as arrays

# What lock_batch does with a draft (the first item of each op).
LOCK, INSTANT, REJECT, PEND = 0, 1, 2, 3

#: (records, encoded events, event count, credits as (target agent, amount_micros, event index),
#: indices of the ops that changed nothing (a task id already known, an escrow not open: the record
#: is answered as it is), the escrows the call expired before its ops (their records)).
ShardAnswer = tuple[list[Optional[TollRecord]], bytes, int, list[tuple[str, int, int]], list[int], list[TollRecord]]


@dataclass(frozen=True)
class ShardSpec:
    """What a shard needs to build (and rebuild) its book."""

    index: int
    shards: int
    default_cap_micros: Optional[int]
    agent_caps_micros: dict[str, Optional[int]] = field(default_factory=dict)
    track_balances: bool = False
    escrow_timeout_s: Optional[float] = 300.0
    max_settled_records: int = DEFAULT_MAX_SETTLED_RECORDS  # kept for configs; the book keeps every task row
    ledger_path: Optional[str] = None  # rebuild from here; None: start empty
    agent_caps_path: Optional[str] = None  # more per-agent caps, a JSON object {agent: micros or null} (large maps)
    runtime_caps_path: Optional[str] = None  # caps changed while the mesh runs (written by the coordinator)
    partitioned: bool = False  # the ledger is partitioned (ledger_path is this shard's partition): credits are events

    def caps_micros(self, files: RunFiles) -> dict[str, Optional[int]]:
        """Every per-agent cap: the file's (read at each build, so a restarted shard has them), then the spec's."""
        caps: dict[str, Optional[int]] = {}
        if self.agent_caps_path is not None:
            data = files.read(self.agent_caps_path)
            if data is None:
                raise FileNotFoundError(f"per-agent caps not found: {self.agent_caps_path}")
            caps = orjson.loads(data)
        return {**caps, **self.agent_caps_micros}

    def caps(self, files: RunFiles) -> tuple[Optional[int], dict[str, Optional[int]]]:
        """The default cap and every per-agent cap, with the changes made while the mesh runs
        (read at each build: a restarted shard keeps a cap set after the mesh started)."""
        default_cap_micros, agent_caps_micros = self.default_cap_micros, self.caps_micros(files)
        runtime = None if self.runtime_caps_path is None else files.read(self.runtime_caps_path)
        if runtime is not None:
            changed = orjson.loads(runtime)
            default_cap_micros = changed["default_cap_micros"]
            agent_caps_micros.update(changed["agent_caps_micros"])
        return default_cap_micros, agent_caps_micros


@dataclass(frozen=True)
class ColumnsAnswer:
    """A columnar call's answer: per message its task row, status and reason codes and whether it was a
    repeat; the events as JSON lines and their count; the credits to forward (agent names, micros,
    event indices); and the counts the coordinator keeps (see :meth:`ShardCore.lock_columns`)."""

    rows: np.ndarray
    status: np.ndarray
    reason: np.ndarray
    repeat: np.ndarray
    lines: Any  # bytes; on the coordinator, the ObjectRef of them where they travelled apart (actors.budget_shard)
    event_count: int
    credit_agents: list[str]
    credit_micros: np.ndarray
    credit_events: np.ndarray
    tally: dict[str, int]  # "locked", "locked_micros", "released", ..., "rejected:<reason>", "refunded:<reason>"
    parquet_rows: Any = None  # the events' Parquet fields made as columns, an Arrow IPC stream (None: from the lines; or a ref, as lines)
    credit_details: Optional[list[tuple[str, str]]] = None  # a partitioned shard's: each credit's (task id, source agent)

    def credits(self) -> list[tuple]:
        """The credits as :data:`ShardAnswer` holds them: ``(agent, micros, event index[, task id, source])``."""
        plain = zip(self.credit_agents, self.credit_micros.tolist(), self.credit_events.tolist())
        if self.credit_details is None:
            return list(plain)
        return [(*credit, *detail) for credit, detail in zip(plain, self.credit_details)]

    def as_log_answer(self) -> tuple:
        """The ``(_, lines, count, ...)`` shape the coordinator's ordered log reads."""
        return (None, self.lines, self.event_count, None, None, None)


class ShardCore:
    """The shard's logic without Ray (unit-tested directly; the actor wraps it)."""

    def __init__(self, spec: ShardSpec, files: Optional[RunFiles] = None, *, build: bool = True) -> None:
        """``build``: rebuild from the ledger and read the caps now (False: an empty book, for a
        restarted shard that waits for the coordinator's :meth:`rebuild`)."""
        self.spec = spec
        self.files: RunFiles = LocalFiles() if files is None else files  # where the ledger and caps are read
        self.book = self._new_book()
        if build:
            self.rebuild()

    @property
    def rebuilt_through_seq(self) -> int:
        """Credits of releases before this ledger seq are in the rebuilt state."""
        return self.book.rebuilt_through_seq

    # -- records ----------------------------------------------------------------

    def lock_batch(self, ops: list[tuple], now_us: int, mode: str) -> ShardAnswer:
        """Lock, paper-release, reject or pend each op ``(action, task_id, source, target,
        amount_micros, amount_tokens, payer_wallet, tx_signature, reason)``, in order."""
        book = self._begin(mode)
        expired_rows, expired = book.expire_due(now_us)  # first: no op then expires another's escrow on the way
        parts, records, repeats = [expired], [], []
        start = 0
        while start < len(ops):
            end = start
            while end < len(ops) and _plain(ops[end]):
                end += 1
            if 0 < end - start <= SCALAR_OPS:
                end = start  # a few ops: one at a time in Python scalars, cheaper than arrays
            if end > start:
                answer = self._lock_plain(ops[start:end], now_us)
                parts.append(answer.events)
                repeats.extend(start + i for i in np.flatnonzero(answer.repeat).tolist())
                records.extend(book.record(row) for row in answer.rows.tolist())
            if end < len(ops):
                row, repeat, events = self._one(ops[end], now_us)
                parts.append(events)
                if repeat:
                    repeats.append(end)
                records.append(book.record(row))  # now: a later op of its task id may replace a PENDING record
                end += 1
            start = end
        return self._answer(records, EventColumns.concat(parts), repeats, expired_rows)

    def settle_batch(self, ops: list[tuple[str, bool, Optional[str]]], now_us: int, mode: str) -> ShardAnswer:
        """Release (``True``) or refund (``False``, with a reason) each ``(task_id, release, reason)``."""
        book = self._begin(mode)
        if len(ops) <= SCALAR_OPS:
            return self._settle_one_by_one(ops, now_us)
        task_ids = [task_id for task_id, _, _ in ops]
        ok = np.fromiter((release for _, release, _ in ops), bool, len(ops))
        reasons = np.fromiter((0 if release else REASON_CODE[reason] for _, release, reason in ops), np.int8, len(ops))
        answer = book.settle(task_ids, ok, reasons, now_us)
        records = [book.record(row) for row in answer.rows.tolist()]
        return self._answer(records, answer.events, np.flatnonzero(answer.repeat).tolist(), answer.expired_rows)

    def expire_due(self, now_us: int, mode: str) -> ShardAnswer:
        """Refund every lock past its timeout (reason ``escrow_timeout``)."""
        book = self._begin(mode)
        rows, events = book.expire_due(now_us)
        return self._answer([book.record(row) for row in rows.tolist()], events, [], np.zeros(0, np.int64))

    def deposit(self, agent: str, amount_micros: int, now_us: int, mode: str) -> ShardAnswer:
        return self.deposit_batch([(agent, amount_micros)], now_us, mode)

    def deposit_batch(self, deposits: list[tuple[str, int]], now_us: int, mode: str) -> ShardAnswer:
        """Add funds to each ``(agent, amount_micros)``, in order: one deposit event each."""
        book = self._begin(mode)
        agents = book.register([agent for agent, _ in deposits])
        amounts = np.array([amount for _, amount in deposits], np.int64)
        return self._answer([], book.deposit(agents, amounts, now_us), [], np.zeros(0, np.int64))

    # -- columns (the batched hot path) -------------------------------------------

    def lock_columns(self, task_ids: list[str], sources: CodedNames, targets: CodedNames, price_micros: np.ndarray,
                     reject_codes: np.ndarray, now_us: int) -> ColumnsAnswer:
        """Lock (or refuse, where ``reject_codes`` is not 0) each message, in order, as :meth:`lock_batch`
        does for plain locks; the answer holds no record. The book registers each distinct name once."""
        book = self._begin("live")
        answer = book.lock(task_ids, book.register(sources.names)[sources.codes], book.register(targets.names)[targets.codes],
                           price_micros, now_us, reject_reasons=reject_codes)
        return self._columns_answer(answer.rows, answer.status, answer.reason, answer.repeat, answer.events)

    def settle_columns(self, rows: np.ndarray, ok: np.ndarray, reason_codes: np.ndarray, now_us: int) -> ColumnsAnswer:
        """Release (``ok``) or refund each task row that :meth:`lock_columns` answered (-1: skipped)."""
        book = self._begin("live")
        answer = book.settle_rows(rows, ok, reason_codes, now_us)
        return self._columns_answer(answer.rows, answer.status, answer.reason, answer.repeat, answer.events)

    # -- money and caps -------------------------------------------------------------

    def credit(self, credits: list[tuple[str, int, int]]) -> int:
        """Credit releases other shards paid to this shard's agents: ``(agent, amount_micros, seq)``.

        A credit whose release (at ledger ``seq``) a rebuild already replayed is skipped,
        so the coordinator may retry after a crash. Returns the amount credited.
        """
        if not credits:
            return 0
        book = self.book
        agents = book.register([agent for agent, _, _ in credits])
        amounts = np.array([amount for _, amount, _ in credits], np.int64)
        seqs = np.array([seq for _, _, seq in credits], np.int64)
        return book.credit(agents, amounts, seqs)

    def credit_events(self, credits: list[tuple[str, int, int, str, str]], from_shard: int, now_us: int) -> ShardAnswer:
        """Receive releases partition ``from_shard`` paid to this partition's agents, each ``(agent,
        amount_micros, from_seq, task_id, source_agent)`` in ``from_seq`` order: credited, and answered
        as ``credit`` events for this partition's ledger. A credit at or below the highest ``from_seq``
        this book has from ``from_shard`` (its :attr:`credit_marks`, rebuilt from the partition) is
        skipped, so the coordinator may send a batch again after a crash."""
        book = self.book
        mark = book.credit_marks.get(from_shard, -1)
        fresh = [credit for credit in credits if credit[2] > mark]
        if not fresh:
            return [], b"", 0, [], [], []
        agents = book.register([agent for agent, *_ in fresh])
        book.credit(agents, np.array([amount for _, amount, *_ in fresh], np.int64))
        book.credit_marks[from_shard] = max(credit[2] for credit in fresh)
        index = self.spec.index
        events = [credit_event({"task_id": task_id, "source_agent": source, "target_agent": agent, "amount_micros": amount,
                                "seq": from_seq}, from_shard=from_shard, ts_us=now_us, shard=index)
                  for agent, amount, from_seq, task_id, source in fresh]
        return [], encode_events(events), len(events), [], [], []

    def credit_marks(self) -> dict[int, int]:
        """The highest ``from_seq`` credited, by source partition (see :meth:`credit_events`)."""
        return dict(self.book.credit_marks)

    def reset_usage(self) -> None:
        """Forget every agent's daily usage (the coordinator journals one ``reset_daily`` for all shards)."""
        self.book.reset_usage()

    def set_caps(self, default_cap_micros: Optional[int], agent_caps_micros: dict[str, Optional[int]]) -> None:
        self.book.set_caps(default_cap_micros, agent_caps_micros)

    def rebuild(self) -> int:
        """Forget everything and replay this shard's part of the ledger; return the ledger's next seq."""
        book = self._new_book()
        if self.spec.ledger_path is not None:
            files = None if isinstance(self.files, LocalFiles) else self.files
            rebuild_from_ledger(book, self.spec.ledger_path, files=files)
        book.set_caps(*self.spec.caps(self.files))
        self.book = book
        return book.rebuilt_through_seq

    # -- queries ----------------------------------------------------------------

    def get(self, task_id: str) -> Optional[TollRecord]:
        """The record of ``task_id`` as it stands (a pure read: call :meth:`expire_due` first)."""
        return self.book.record(int(self.book.find([task_id])[0]))

    def cap_micros(self, agent: str) -> Optional[int]:
        """``agent``'s daily cap as it stands (None: no cap)."""
        index = self.book.index_of(agent)
        return self.book.default_cap_micros if index is None else self.book.cap_micros(index)

    def open_sources(self) -> dict[str, str]:
        """The source agent of every open escrow, by task id."""
        book = self.book
        sources = book.tasks.col("source")
        return {book.tasks.task_ids[row]: book.names[sources[row]] for row in book.open_rows().tolist()}

    def snapshot(self, now_us: int) -> dict[str, Any]:
        """This shard's part of :func:`ledger.replay.snapshot`, plus its transfer totals."""
        return self.book.snapshot(now_us)

    def stats(self) -> dict[str, Any]:
        book = self.book
        return {
            "index": self.spec.index, "open_escrows": book.open_count, "records": book.tasks.count,
            "locked_total_micros": book.locked_total_micros, "deposits_total_micros": book.deposits_total_micros,
            "balances_total_micros": book.balances_total_micros,
            "transfers_in_micros": book.transfers_in_micros, "transfers_out_micros": book.transfers_out_micros,
            "rebuilt_through_seq": book.rebuilt_through_seq, "agents": book.agent_count,
            **{k: v for k, v in book.nbytes().items()},
        }

    # -- internals --------------------------------------------------------------

    def _new_book(self) -> ColumnarBook:
        spec = self.spec
        return ColumnarBook(default_cap_micros=None, track_balances=spec.track_balances,
                            escrow_timeout_s=spec.escrow_timeout_s, shard=spec.index, shards=spec.shards)

    def _begin(self, mode: str) -> ColumnarBook:
        self.book.mode = mode
        return self.book

    def _lock_plain(self, ops: Sequence[tuple], now_us: int) -> Any:
        """A run of plain locks and refusals, as columns."""
        book = self.book
        task_ids = [op[1] for op in ops]
        sources = book.register([op[2] for op in ops])
        targets = book.register([op[3] for op in ops])
        prices = np.fromiter((op[4] for op in ops), np.int64, len(ops))
        rejects = np.fromiter((REASON_CODE[op[8]] if op[0] == REJECT else 0 for op in ops), np.int8, len(ops))
        return book.lock(task_ids, sources, targets, prices, now_us, reject_reasons=rejects)

    def _one(self, op: tuple, now_us: int) -> tuple[int, bool, EventColumns]:
        """One op, in Python scalars: a lock or refusal, a paper release or a pending record."""
        action, task_id, source, target, amount, tokens, wallet, signature, reason = op
        book = self.book
        source_idx, target_idx = (int(i) for i in book.register([source, target]))
        if action == INSTANT or action == PEND:
            apply = book.instant if action == INSTANT else book.pend
            return apply(task_id, source_idx, target_idx, amount, now_us, tokens=tokens, wallet=wallet,
                         signature=signature)
        return book.lock_one(task_id, source_idx, target_idx, amount, now_us,
                             reject_reason=REASON_CODE[reason] if action == REJECT else 0, tokens=tokens,
                             wallet=wallet, signature=signature)

    def _settle_one_by_one(self, ops: list[tuple[str, bool, Optional[str]]], now_us: int) -> ShardAnswer:
        book = self.book
        expired_rows, expired = book.expire_due(now_us)
        parts, records, repeats = [expired], [], []
        for j, (task_id, release, reason) in enumerate(ops):
            row, repeat, events = book.settle_one(task_id, release, 0 if release else REASON_CODE[reason], now_us)
            parts.append(events)
            records.append(book.record(row))
            if repeat:
                repeats.append(j)
        return self._answer(records, EventColumns.concat(parts), repeats, expired_rows)

    def _credits(self, events: EventColumns) -> list[tuple]:
        agents, amounts, at = self.book.credits_of(events)
        names = self.book.names
        credits = [(names[a], m, e) for a, m, e in zip(agents.tolist(), amounts.tolist(), at.tolist())]
        if not self.spec.partitioned:
            return credits
        return [(*credit, *detail) for credit, detail in zip(credits, self._credit_details(events, at))]

    def _credit_details(self, events: EventColumns, at: np.ndarray) -> list[tuple[str, str]]:
        """The task id and source agent of each release at ``at`` among ``events`` (what a credit event names)."""
        book = self.book
        task_ids, names = book.tasks.task_ids, book.names
        return [(task_ids[row], names[source]) for row, source in zip(events.row[at].tolist(), events.source[at].tolist())]

    def _answer(self, records: list[Optional[TollRecord]], events: EventColumns, repeats: list[int],
                expired_rows: np.ndarray) -> ShardAnswer:
        book = self.book
        lines = book.encode(events) if len(events) else b""
        expired = [book.record(row) for row in expired_rows.tolist()]
        return records, lines, len(events), self._credits(events), repeats, expired

    def _columns_answer(self, rows: np.ndarray, status: np.ndarray, reason: np.ndarray, repeat: np.ndarray,
                        events: EventColumns) -> ColumnsAnswer:
        book = self.book
        agents, amounts, at = book.credits_of(events)
        names = book.names
        lines, fields = book.encode_rows(events) if len(events) else (b"", None)
        parquet_rows = None if fields is None else fields_to_ipc(fields)
        details = self._credit_details(events, at) if self.spec.partitioned else None
        return ColumnsAnswer(rows, status, reason, repeat, lines, len(events), [names[a] for a in agents.tolist()],
                             amounts, at, tally_events(events), parquet_rows, details)


def tally_events(events: EventColumns) -> dict[str, int]:
    """What a call's events change in the coordinator's counters: locks (and their micros), rejections and
    refunds by reason, releases (paper ones too) and their micros, refunds' micros."""
    from mesh.columnar._codes import EXPIRE, LOCK as LOCK_KIND, PAPER_RELEASE, REASON_NAMES, REFUND, REJECT as REJECT_KIND
    from mesh.columnar._codes import RELEASE

    kind, amount, reason = events.kind, events.amount, events.reason
    tally: dict[str, int] = {}
    locked = kind == LOCK_KIND
    released = (kind == RELEASE) | (kind == PAPER_RELEASE)
    refunded = (kind == REFUND) | (kind == EXPIRE)
    tally["locked"], tally["locked_micros"] = int(locked.sum()), int(amount[locked].sum())
    tally["released"], tally["released_micros"] = int(released.sum()), int(amount[released].sum())
    paper = kind == PAPER_RELEASE
    tally["paper_released"], tally["paper_released_micros"] = int(paper.sum()), int(amount[paper].sum())
    tally["refunded"], tally["refunded_micros"] = int(refunded.sum()), int(amount[refunded].sum())
    for name, mask in (("rejected", kind == REJECT_KIND), ("refunded", refunded)):
        codes, counts = np.unique(reason[mask], return_counts=True)
        for code, count in zip(codes.tolist(), counts.tolist()):
            tally[f"{name}:{REASON_NAMES[code]}"] = count
    return tally


def _plain(op: tuple) -> bool:
    """A lock or refusal with no tokens and no payment: one that goes to the book as columns."""
    return (op[0] == LOCK or op[0] == REJECT) and op[5] == 0.0 and op[6] is None and op[7] is None
