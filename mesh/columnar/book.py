"""The columnar shard book: a budget shard's caps, balances and escrows as numpy columns.

It does what :class:`actors.budget_shard.ShardCore` does over its :class:`~mesh.core.escrow.EscrowBook`
(and is proven equal to it by ``tests/test_columnar_book.py``), a batch at a time:

* agents are dense indices (names only at the edges: :meth:`ColumnarBook.register`,
  events, snapshots); per agent a balance, locked and used amount, the day of that
  usage, a cap and whether this shard holds it: about 50 bytes in numpy arrays;
* :meth:`ColumnarBook.lock` applies a batch in message order with the exact sequential
  rules (a repeated task id answers its first record and writes nothing; with balances,
  an agent without a deposit is ``unknown_agent``, then ``insufficient_funds``; then
  ``over_daily_cap`` for used + locked today + price > cap): running sums per source
  (``np.cumsum`` over a stable sort by source) decide every message of the agents whose
  room lasts the whole batch; a Python loop decides only the messages of an agent from
  its first refusal on (there a later, cheaper message may still fit);
* :meth:`ColumnarBook.settle_rows` (or :meth:`ColumnarBook.settle` by task id) releases
  or refunds, :meth:`ColumnarBook.expire_due` refunds the escrows past their timeout;
  every transition expires what is due first, as the record book does;
* every call answers its events as :class:`~mesh.columnar._events.EventColumns`, which
  :meth:`ColumnarBook.encode` turns into the ledger's JSON lines for a whole batch.

Money is int64 micros. Limits (asserted where state changes): an amount is at most
``MAX_AMOUNT_MICROS``; a balance, a day's usage and a locked total at most
:data:`MAX_HELD_MICROS` (2^62 micros, 4.6e12 USD); the escrow timeout is positive.
Not here (the record book's per-message path keeps them): paper-mode instant releases,
pending (x402 payment required) records, tokens, payment proofs.

>>> import numpy as np
>>> book = ColumnarBook(default_cap_micros=25, track_balances=True, escrow_timeout_s=60)
>>> alice, bob = book.register(["alice", "bob"])
>>> _ = book.deposit(np.array([alice]), np.array([100]), now_us=0)
>>> answer = book.lock(["t1", "t2", "t3", "t1"], np.full(4, alice), np.full(4, bob), np.array([10, 20, 15, 10]), now_us=0)
>>> [book.status_name(s) for s in answer.status], [book.reason_name(r) for r in answer.reason]
(['escrow_locked', 'failed', 'escrow_locked', 'escrow_locked'], [None, 'over_daily_cap', None, None])
>>> answer.repeat.tolist()
[False, False, False, True]
>>> from mesh.columnar import REASON_CODE
>>> settled = book.settle_rows(answer.rows[[0, 2]], np.array([True, False]), np.array([0, REASON_CODE["handler_error"]]), now_us=1)
>>> book.snapshot(now_us=1)["balances_micros"]
{'alice': 90, 'bob': 10}
>>> len(book.encode(settled.events).splitlines())
2
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import pyarrow as pa

from mesh.core.clock import US_PER_SECOND, day_of, iso_utc
from mesh.columnar import _checks as check
from mesh.columnar._codes import (
    EXPIRE, ESCROW_TIMEOUT, FAILED, INSUFFICIENT_FUNDS, LOCK, LOCKED, NO_REASON, OVER_DAILY_CAP, PAPER_RELEASE,
    PAYMENT_REQUIRED, PEND, REASON_NAMES, REFUND, REFUNDED, REJECT, RELEASE, RELEASED, STATUS_NAMES,
    STATUS_OF_CODE, UNKNOWN, UNKNOWN_AGENT, DEPOSIT,
)
from mesh.columnar._codes import KIND_NAMES
from mesh.columnar._codes import PENDING as PENDING_STATE
from mesh.columnar._events import EventColumns, TaskTexts, encode_arrow, encode_jsonl, json_strings
from mesh.columnar._tasks import TaskTable, task_key, task_keys
from mesh.core.errors import InvalidAmountError, InvalidArgumentError
from mesh.core.records import TollRecord
from mesh.core.sharding import shard_of

MAX_HELD_MICROS = 1 << 62  # the most a balance, a day's usage or a locked total may reach (int64 sums stay exact)
NO_CAP = np.iinfo(np.int64).max  # the cap column's value for "no cap"
_RECORD_ENCODED_EVENTS = 16  # events of a call up to this many are encoded one record at a time (cheaper than arrays)
_SCAN_ROWS = 4_096  # rows looked at per step when the expiry sweep walks the task table
_INITIAL_AGENTS = 1 << 10

#: The per-agent numpy columns: name -> (dtype, initial value).
AGENT_COLUMNS: dict = {
    "balance": (np.int64, 0), "locked": (np.int64, 0), "used": (np.int64, 0),
    "used_day": (np.int32, -1),  # the day ``used`` counts (-1: none since the last reset)
    "cap": (np.int64, 0), "cap_set": (np.bool_, False),  # a per-agent cap (NO_CAP: none), else the default
    "has_account": (np.bool_, False),  # has had a deposit or a release (with balances: may lock)
    "owned": (np.bool_, True),  # this shard holds the agent (a release to another shard's agent is a credit)
}


@dataclass(frozen=True)
class LockAnswer:
    """Per message: its task row, its status and reason as they stand after the batch, whether it was a repeat."""

    rows: np.ndarray  # int64
    status: np.ndarray  # int8 (mesh.columnar._codes)
    reason: np.ndarray  # int8
    repeat: np.ndarray  # bool: a task id already known: answered, nothing written
    events: EventColumns  # the escrows expired first, then a lock or reject per new message, in message order
    expired_rows: np.ndarray  # int64: the escrows this call expired before its messages


@dataclass(frozen=True)
class SettleAnswer:
    """Per op: its task row (-1: unknown), status and reason after the batch, whether it changed nothing."""

    rows: np.ndarray
    status: np.ndarray
    reason: np.ndarray
    repeat: np.ndarray  # bool: the escrow was not open (settled before, expired first, unknown, or twice here)
    events: EventColumns
    expired_rows: np.ndarray
    credit_agent: np.ndarray  # int32: releases paid to agents another shard holds (with balances)
    credit_amount: np.ndarray  # int64 micros
    credit_event: np.ndarray  # int64: the index of the release among ``events``


class ColumnarBook:
    """A budget shard's book as columns; see the module doc.

    ``shard``/``shards``: this book holds the agents :func:`~mesh.core.sharding.shard_of` maps to
    ``shard`` (None: every agent, and events carry ``"shard": null``). ``mode``: the events' mode.
    """

    def __init__(self, *, default_cap_micros: Optional[int] = None, track_balances: bool = False,
                 escrow_timeout_s: Optional[float] = 300.0, shard: Optional[int] = None, shards: int = 1,
                 mode: Optional[str] = "live") -> None:
        if not isinstance(track_balances, bool):
            raise InvalidArgumentError("track_balances", track_balances, "must be a bool")
        if escrow_timeout_s is not None and (isinstance(escrow_timeout_s, bool) or not isinstance(escrow_timeout_s, (int, float))
                                             or not escrow_timeout_s > 0 or escrow_timeout_s != escrow_timeout_s):
            raise InvalidArgumentError("escrow_timeout_s", escrow_timeout_s, "must be a positive number of seconds or None")
        if mode not in ("live", "paper", None):
            raise InvalidArgumentError("mode", mode, "must be 'live', 'paper' or None")
        self.default_cap_micros = check.cap("default_cap_micros", default_cap_micros)
        self.track_balances = track_balances
        self.escrow_timeout_s = escrow_timeout_s
        self._timeout_us = None if escrow_timeout_s is None else round(escrow_timeout_s * US_PER_SECOND)
        self.shard, self.shards, self.mode = shard, shards, mode
        self.names: list[str] = []
        self._index: dict[str, int] = {}
        self._agents = {name: np.full(_INITIAL_AGENTS, initial, dtype) for name, (dtype, initial) in AGENT_COLUMNS.items()}
        self._names_json: Optional[pa.Array] = None
        self._names_arrow: Optional[pa.Array] = None  # every name by index, for Parquet rows (like _names_json)
        self.tasks = TaskTable()
        self.epoch = 0  # manual usage resets so far: a refund of a lock taken before one gives no room back
        self.deposits_total_micros = 0
        self.transfers_in_micros = 0
        self.transfers_out_micros = 0
        self.rebuilt_through_seq = 0  # set by a rebuild: credits of releases before this seq are in the state
        self.credit_marks: dict[int, int] = {}  # a partition's book: the highest from_seq credited, by source partition
        self._open_from = 0  # no row before this one is locked (where the expiry sweep starts)

    @classmethod
    def from_ledger(cls, path: Any, **options: Any) -> ColumnarBook:
        """A book (built with ``options``) rebuilt from the JSONL ledger at ``path``: see :mod:`mesh.columnar.rebuild`."""
        from mesh.columnar.rebuild import rebuild_from_ledger

        return rebuild_from_ledger(cls(**options), path)

    # -- agents -----------------------------------------------------------------

    @property
    def agent_count(self) -> int:
        return len(self.names)

    def register(self, names: Sequence[str]) -> np.ndarray:
        """The dense index of each name, registering the new ones (int32)."""
        index = self._index
        if isinstance(names, list) and set(map(type, names)) <= {str}:  # the hot path: known names were checked
            try:
                return np.fromiter(map(index.__getitem__, names), np.int32, len(names))
            except KeyError:
                pass  # a new name: checked and registered below
        names = check.ids("names", names)
        new = [name for name in dict.fromkeys(names) if name not in index]
        if new:
            first = len(self.names)
            self._grow_agents(first + len(new))
            for offset, name in enumerate(new):
                index[name] = first + offset
            self.names.extend(new)
            if self.shard is not None:
                owned = np.fromiter((shard_of(name, self.shards) == self.shard for name in new), bool, len(new))
                self._agents["owned"][first:first + len(new)] = owned
            self._names_json = self._names_arrow = None
        return np.fromiter((index[name] for name in names), np.int32, len(names))

    def index_of(self, name: str) -> Optional[int]:
        """The dense index of ``name`` (None: not registered)."""
        return self._index.get(name)

    def agent_index(self, names: Sequence[str]) -> np.ndarray:
        """The index of each registered name (InvalidArgumentError naming an unknown one)."""
        names = check.ids("names", names)
        try:
            return np.fromiter((self._index[name] for name in names), np.int32, len(names))
        except KeyError as exc:
            raise InvalidArgumentError("names", exc.args[0], "is not a registered agent") from None

    def set_cap(self, name: str, cap_micros: Optional[int]) -> None:
        """Set ``name``'s own daily cap (None: no cap), registering it if need be."""
        cap_micros = check.cap("cap_micros", cap_micros)
        (agent,) = self.register([name])
        self._agents["cap"][agent] = NO_CAP if cap_micros is None else cap_micros
        self._agents["cap_set"][agent] = True

    def set_caps(self, default_cap_micros: Optional[int], agent_caps_micros: dict[str, Optional[int]]) -> None:
        """The default cap and some agents' own (as ``ShardCore.set_caps``)."""
        self.default_cap_micros = check.cap("default_cap_micros", default_cap_micros)
        for name, cap_micros in agent_caps_micros.items():
            self.set_cap(name, cap_micros)

    def cap_micros(self, agent: int) -> Optional[int]:
        a = self._agents
        if a["cap_set"][agent]:
            value = int(a["cap"][agent])
            return None if value == NO_CAP else value
        return self.default_cap_micros

    # -- transitions ------------------------------------------------------------

    def deposit(self, agent_idx: np.ndarray, amount_micros: np.ndarray, now_us: int) -> EventColumns:
        """Add funds to each agent, in order: one ``deposit`` event each."""
        now_us = check.now("now_us", now_us)
        n = len(amount_micros) if isinstance(amount_micros, np.ndarray) else -1
        amount = check.amounts("amount_micros", amount_micros, n)
        agents = check.indices("agent_idx", agent_idx, n, self.agent_count)
        balance = self._agents["balance"]
        totals = np.zeros(self.agent_count, np.int64)
        np.add.at(totals, agents, amount)  # per agent first: no sum can pass int64 before it is checked
        if n and int((balance[: self.agent_count] + np.minimum(totals, MAX_HELD_MICROS)).max()) > MAX_HELD_MICROS:
            raise InvalidAmountError("amount_micros", int(amount.max()), f"would take a balance past {MAX_HELD_MICROS} micros")
        np.add.at(balance, agents, amount)
        self._agents["has_account"][agents] = True
        self.deposits_total_micros += int(amount.sum())
        return EventColumns.of(DEPOSIT, -1, -1, agents, amount, RELEASED, NO_REASON, now_us, -1)

    def lock(self, task_ids: Sequence[str], source_idx: np.ndarray, target_idx: np.ndarray, price_micros: np.ndarray,
             now_us: int, *, reject_reasons: Optional[np.ndarray] = None, tokens: Optional[np.ndarray] = None,
             wallets: Optional[Sequence[Optional[str]]] = None,
             signatures: Optional[Sequence[Optional[str]]] = None) -> LockAnswer:
        """Lock each message's price in escrow, or refuse it with a reason, in message order.

        ``reject_reasons``: where not 0, the message is refused for that reason before any
        room is judged (the coordinator's ``x402_rejected``, ``unknown_method``...).
        ``tokens``, ``wallets``, ``signatures``: the records' ``amount_tokens``, ``payer_wallet``
        and ``tx_signature`` (absent: 0.0 and None). A PENDING task id is locked (or refused) anew.
        """
        ids = check.ids("task_ids", task_ids)
        n, count = len(ids), self.agent_count
        source = check.indices("source_idx", source_idx, n, count)
        target = check.indices("target_idx", target_idx, n, count)
        price = check.amounts("price_micros", price_micros, n)
        rejected = None if reject_reasons is None else check.reason_codes(
            "reject_reasons", reject_reasons, n, need=np.zeros(n, bool), reason_count=len(REASON_NAMES) - 1)
        now_us = check.now("now_us", now_us)
        expired_rows, expired = self._expire(now_us)
        keys, nonces = task_keys(ids)
        rows = self.tasks.lookup(keys, ids) if self.tasks.count else np.full(n, -1, np.int64)
        self._forget_pending(rows)
        earlier = _earlier_twin(keys, ids, np.flatnonzero(rows < 0))
        new = np.flatnonzero((rows < 0) & (earlier < 0))
        reason = np.zeros(len(new), np.int8)
        if rejected is not None:
            reason[:] = rejected[new]
        judged = np.flatnonzero(reason == 0)
        day = day_of(now_us)
        reason[judged] = self._room(source[new[judged]], price[new[judged]], day)
        accepted = reason == 0
        self._reserve(source[new[accepted]], price[new[accepted]], day)
        state = np.where(accepted, LOCKED, FAILED).astype(np.int8)
        first = self.tasks.append(
            [ids[i] for i in new.tolist()], keys[new], nonces[new], source=source[new], target=target[new],
            amount=price[new], state=state, reason=reason, created_s=now_us // US_PER_SECOND, lock_us=now_us,
            lock_day=day, lock_epoch=self.epoch, tokens=0.0 if tokens is None else tokens[new])
        rows[new] = np.arange(first, first + len(new))
        if wallets is not None or signatures is not None:
            for i, row in zip(new.tolist(), range(first, first + len(new))):
                self.tasks.set_payment(row, None if wallets is None else wallets[i],
                                       None if signatures is None else signatures[i])
        twins = np.flatnonzero(earlier >= 0)
        rows[twins] = rows[earlier[twins]]
        events = EventColumns.of(np.where(accepted, LOCK, REJECT), rows[new], source[new], target[new], price[new],
                                 state, reason, now_us, -1)
        repeat = np.ones(n, bool)
        repeat[new] = False
        return LockAnswer(rows, self.tasks.col("state")[rows], self.tasks.col("reason")[rows], repeat,
                          EventColumns.concat([expired, events]), expired_rows)

    def settle(self, task_ids: Sequence[str], ok: np.ndarray, reason_codes: np.ndarray, now_us: int) -> SettleAnswer:
        """:meth:`settle_rows` by task id (an unknown id is answered with row -1, status 0)."""
        ids = check.ids("task_ids", task_ids)
        keys, _ = task_keys(ids)
        rows = self.tasks.lookup(keys, ids) if self.tasks.count else np.full(len(ids), -1, np.int64)
        return self.settle_rows(rows, ok, reason_codes, now_us, _checked_rows=True)

    def settle_rows(self, rows: np.ndarray, ok: np.ndarray, reason_codes: np.ndarray, now_us: int, *,
                    _checked_rows: bool = False) -> SettleAnswer:
        """Release (``ok``) or refund (with its reason code) each task row's escrow, if open.

        ``rows`` are the ``LockAnswer.rows`` of the locks (-1: an unknown task, answered as such).
        An escrow not open (settled before, expired first, or settled earlier in this batch) changes nothing.
        """
        n = len(rows) if isinstance(rows, np.ndarray) else -1
        if not _checked_rows:
            rows = check.int_column("rows", rows, n, "an integer numpy array of task rows")
            if n and (int(rows.max()) >= self.tasks.count or int(rows.min()) < -1):
                raise InvalidArgumentError("rows", int(rows.max()), f"task rows are -1 to {self.tasks.count - 1}")
        ok = check.bools("ok", ok, n)
        reasons = check.reason_codes("reason_codes", reason_codes, n, need=~ok, reason_count=len(REASON_NAMES) - 1)
        now_us = check.now("now_us", now_us)
        expired_rows, expired = self._expire(now_us)
        state = self.tasks.col("state")
        known = rows >= 0
        open_at = np.flatnonzero(known & (state[np.where(known, rows, 0)] == LOCKED)) if self.tasks.count else np.zeros(0, np.int64)
        _, firsts = np.unique(rows[open_at], return_index=True)
        effective = np.sort(open_at[firsts])
        eff_rows, eff_ok = rows[effective], ok[effective]
        released, refunded = eff_rows[eff_ok], eff_rows[~eff_ok]
        credit_at = self._release(released, now_us)
        self._refund(refunded, reasons[effective][~eff_ok], now_us)
        t = self.tasks
        events = EventColumns.of(np.where(eff_ok, RELEASE, REFUND), eff_rows, t.col("source")[eff_rows],
                                 t.col("target")[eff_rows], t.col("amount")[eff_rows], t.col("state")[eff_rows],
                                 t.col("reason")[eff_rows], now_us, now_us // US_PER_SECOND)
        credit_event = len(expired) + np.flatnonzero(eff_ok)[credit_at]
        credit_rows = released[credit_at]
        repeat = np.ones(n, bool)
        repeat[effective] = False
        if t.count:
            safe = np.where(known, rows, 0)
            status = np.where(known, t.col("state")[safe], UNKNOWN).astype(np.int8)
            reason = np.where(known, t.col("reason")[safe], NO_REASON).astype(np.int8)
        else:
            status, reason = np.zeros(n, np.int8), np.zeros(n, np.int8)
        return SettleAnswer(rows, status, reason, repeat, EventColumns.concat([expired, events]), expired_rows,
                            t.col("target")[credit_rows], t.col("amount")[credit_rows], credit_event)

    def lock_one(self, task_id: str, source: int, target: int, price_micros: int, now_us: int, *, reject_reason: int = 0,
                 tokens: float = 0.0, wallet: Optional[str] = None,
                 signature: Optional[str] = None) -> tuple[int, bool, EventColumns]:
        """:meth:`lock` of one message in Python scalars (the per-message paths: no array work per call):
        its row, whether it was a repeat, and the events (the escrows expired first, then its own)."""
        task_id, source, target, price, now_us = self._one_checked(task_id, source, target, price_micros, now_us)
        if isinstance(reject_reason, bool) or not isinstance(reject_reason, int) or not 0 <= reject_reason < len(REASON_NAMES):
            raise InvalidArgumentError("reject_reason", reject_reason, "a reason code (0: none)")
        _, expired = self._expire(now_us)
        key, nonce = task_key(task_id)
        row = self._find_one(task_id, key)
        if row >= 0:
            return row, True, expired
        day = day_of(now_us)
        reason = reject_reason or self._room_one(source, price, day)
        state = FAILED if reason else LOCKED
        if not reason:
            self._reserve_one(source, price, day)
        row = self.tasks.append_one(task_id, key, nonce, source=source, target=target, amount=price, state=state,
                                    reason=reason, created_s=now_us // US_PER_SECOND, lock_us=now_us, lock_day=day,
                                    lock_epoch=self.epoch, tokens=float(tokens))
        self.tasks.set_payment(row, wallet, signature)
        event = EventColumns.one(REJECT if reason else LOCK, row, source, target, price, state, reason, now_us, -1)
        return row, False, EventColumns.concat([expired, event])

    def settle_one(self, task_id: str, ok: bool, reason_code: int, now_us: int) -> tuple[int, bool, EventColumns]:
        """:meth:`settle` of one task id in Python scalars: its row (-1: unknown), whether it changed
        nothing (the escrow was not open), and the events (the escrows expired first, then its own)."""
        (task_id,) = check.ids("task_id", [task_id])
        if not isinstance(ok, (bool, np.bool_)):
            raise InvalidArgumentError("ok", ok, "a bool")
        now_us = check.now("now_us", now_us)
        if not ok and (isinstance(reason_code, bool) or not isinstance(reason_code, int) or not 0 < reason_code < len(REASON_NAMES)):
            raise InvalidArgumentError("reason_code", reason_code, "a refund needs a reason code")
        _, expired = self._expire(now_us)
        key, _ = task_key(task_id)
        row = self.tasks.find_one(task_id, key)
        if row < 0 or self.tasks.cols["state"][row] != LOCKED:
            return row, True, expired
        cols, a = self.tasks.cols, self._agents
        source, target, amount = int(cols["source"][row]), int(cols["target"][row]), int(cols["amount"][row])
        a["locked"][source] -= amount
        if ok:
            if self.track_balances:
                if a["owned"][target]:
                    a["balance"][target] += amount
                    a["has_account"][target] = True
                else:
                    self.transfers_out_micros += amount
            cols["state"][row] = RELEASED
        else:
            if a["used_day"][source] == cols["lock_day"][row] and cols["lock_epoch"][row] == self.epoch:
                a["used"][source] -= amount
            if self.track_balances:
                a["balance"][source] += amount
            cols["state"][row], cols["reason"][row] = REFUNDED, reason_code
        settled_s = now_us // US_PER_SECOND
        cols["settled_s"][row] = settled_s
        event = EventColumns.one(RELEASE if ok else REFUND, row, source, target, amount, cols["state"][row],
                                 cols["reason"][row], now_us, settled_s)
        return row, False, EventColumns.concat([expired, event])

    def pend(self, task_id: str, source: int, target: int, price_micros: int, now_us: int, *, tokens: float = 0.0,
             wallet: Optional[str] = None, signature: Optional[str] = None) -> tuple[int, bool, EventColumns]:
        """Record one task as PENDING (payment required, nothing locked): its row, whether it was a
        repeat (a task id known and not PENDING: answered, nothing written), and the events."""
        return self._one_unlocked(task_id, source, target, price_micros, now_us, tokens, wallet, signature, instant=False)

    def instant(self, task_id: str, source: int, target: int, price_micros: int, now_us: int, *, tokens: float = 0.0,
                wallet: Optional[str] = None, signature: Optional[str] = None) -> tuple[int, bool, EventColumns]:
        """Lock and release one toll at once (paper mode's ``paper_release``), or refuse it as :meth:`lock`
        would: its row, whether it was a repeat, and the events."""
        return self._one_unlocked(task_id, source, target, price_micros, now_us, tokens, wallet, signature, instant=True)

    def expiry_due(self, now_us: int) -> bool:
        """Whether an escrow is past its timeout at ``now_us`` (nothing changes)."""
        return bool(len(self._due_rows(check.now("now_us", now_us))))

    def credits_of(self, events: EventColumns) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The releases among ``events`` paid to agents another shard holds (with balances): their
        agents, amounts and event indices (what the caller forwards as credits)."""
        if not self.track_balances or not len(events):
            empty = np.zeros(0, np.int64)
            return empty.astype(np.int32), empty, empty
        paid = (events.kind == RELEASE) | (events.kind == PAPER_RELEASE)
        at = np.flatnonzero(paid & ~self._agents["owned"][np.maximum(events.target, 0)])
        return events.target[at], events.amount[at], at

    def expire_due(self, now_us: int) -> tuple[np.ndarray, EventColumns]:
        """Refund every escrow past its timeout (reason ``escrow_timeout``): their rows and events."""
        return self._expire(check.now("now_us", now_us))

    def credit(self, agent_idx: np.ndarray, amount_micros: np.ndarray, seqs: Optional[np.ndarray] = None) -> int:
        """Receive releases other shards paid to this shard's agents; the amount credited.

        ``seqs``: the ledger seq of each release; one before :attr:`rebuilt_through_seq` is already in
        the rebuilt state and skipped (so a coordinator may retry after a crash).
        """
        n = len(amount_micros) if isinstance(amount_micros, np.ndarray) else -1
        amount = check.amounts("amount_micros", amount_micros, n)
        agents = check.indices("agent_idx", agent_idx, n, self.agent_count)
        if seqs is not None:
            keep = check.int_column("seqs", seqs, n, "an integer numpy array of ledger seqs") >= self.rebuilt_through_seq
            agents, amount = agents[keep], amount[keep]
        credited = int(amount.sum())
        if self.track_balances and len(amount):
            balance = self._agents["balance"]
            np.add.at(balance, agents, amount)
            self._agents["has_account"][agents] = True
            self.transfers_in_micros += credited
            assert int(balance[agents].max()) <= MAX_HELD_MICROS, "a balance past MAX_HELD_MICROS"
        return credited

    def reset_usage(self) -> None:
        """Forget every agent's daily usage (the seed's ``reset_daily``; the caller journals it)."""
        self._agents["used"][:] = 0
        self._agents["used_day"][:] = -1
        self.epoch += 1

    # -- queries ----------------------------------------------------------------

    @property
    def open_count(self) -> int:
        return int(np.count_nonzero(self.tasks.col("state") == LOCKED))

    @property
    def locked_total_micros(self) -> int:
        return int(self._agents["locked"][: self.agent_count].sum())

    @property
    def balances_total_micros(self) -> int:
        return int(self._agents["balance"][: self.agent_count].sum())

    def balance_micros(self, agent: int) -> int:
        return int(self._agents["balance"][agent])

    def used_micros(self, agent: int, day: int) -> int:
        a = self._agents
        return int(a["used"][agent]) if a["used_day"][agent] == day else 0

    @staticmethod
    def status_name(code: int) -> Optional[str]:
        return STATUS_NAMES[code]

    @staticmethod
    def reason_name(code: int) -> Optional[str]:
        return REASON_NAMES[code]

    def find(self, task_ids: Sequence[str]) -> np.ndarray:
        """The task row of each id (-1: unknown)."""
        ids = check.ids("task_ids", task_ids)
        return self.tasks.lookup(task_keys(ids)[0], ids) if self.tasks.count else np.full(len(ids), -1, np.int64)

    def record(self, row: int, *, status: Optional[int] = None, reason: Optional[int] = None,
               settled_s: Optional[int] = None) -> Optional[TollRecord]:
        """The :class:`~mesh.core.records.TollRecord` of a task row as it stands (None for -1), or as an event of it
        left it (its ``status``, ``reason`` and ``settled_s`` codes): for the edges and tests."""
        if row < 0:
            return None
        t, cols = self.tasks, self.tasks.cols
        status = int(cols["state"][row]) if status is None else status
        reason = int(cols["reason"][row]) if reason is None else reason
        settled_s = int(cols["settled_s"][row]) if settled_s is None else settled_s
        return TollRecord(
            t.task_ids[row], self.names[cols["source"][row]], self.names[cols["target"][row]], int(cols["amount"][row]),
            float(cols["tokens"][row]), STATUS_OF_CODE[status], t.signatures.get(row), t.wallets.get(row),
            bytes(t.nonce[row]).hex(), None if settled_s < 0 else iso_utc(settled_s * US_PER_SECOND, "seconds"),
            iso_utc(int(cols["created_s"][row]) * US_PER_SECOND, "seconds"), REASON_NAMES[reason],
        )

    def open_rows(self) -> np.ndarray:
        """The rows of the open escrows, in lock order."""
        return np.flatnonzero(self.tasks.col("state") == LOCKED)

    def snapshot(self, now_us: int) -> dict[str, Any]:
        """The state :func:`ledger.replay.snapshot` gives of a book (plus the transfer totals of ``ShardCore.snapshot``)."""
        now_us = check.now("now_us", now_us)
        a, names, count = self._agents, self.names, self.agent_count
        accounts = np.flatnonzero(a["has_account"][:count])
        balance = a["balance"]
        open_rows = self.open_rows()
        open_escrows = {}
        for row in open_rows.tolist():
            record = self.record(row)
            open_escrows[record.task_id] = record.to_dict()
        sources = np.unique(self.tasks.col("source")[open_rows])
        today = np.flatnonzero((a["used_day"][:count] == day_of(now_us)) & (a["used"][:count] != 0))
        return {
            "balances_micros": {names[i]: int(balance[i]) for i in accounts.tolist()},
            "locked_micros": {names[i]: int(a["locked"][i]) for i in sources.tolist()},
            "locked_total_micros": self.locked_total_micros,
            "deposits_total_micros": self.deposits_total_micros,
            "used_today_micros": {names[i]: int(a["used"][i]) for i in today.tolist()},
            "open_escrows": open_escrows,
            "transfers_in_micros": self.transfers_in_micros,
            "transfers_out_micros": self.transfers_out_micros,
            "balances_total_micros": self.balances_total_micros,
        }

    def credit_tuples(self, answer: SettleAnswer) -> list[tuple[str, int, int]]:
        """A settle answer's credits as ``ShardCore`` answers them: ``(target agent, amount_micros, event index)``."""
        return [(self.names[a], int(m), int(e)) for a, m, e in zip(answer.credit_agent, answer.credit_amount, answer.credit_event)]

    def encode(self, events: EventColumns) -> bytes:
        """The events as JSON lines for ``JsonlWriter.append_encoded`` (see :mod:`mesh.columnar._events`).

        Events of rows with tokens or a payment (few: the per-message paths) are encoded one record at a time.
        """
        if len(events) <= _RECORD_ENCODED_EVENTS or self._has_extras(events.row):
            return self._encode_records(events)
        return encode_jsonl(events, self._task_texts(events), names_json=self.names_json(), mode=self.mode,
                            shard=self.shard)

    def encode_rows(self, events: EventColumns) -> tuple[bytes, Optional[pa.Table]]:
        """The events as JSON lines (:meth:`encode`) and, where they were made as columns, their Parquet
        rows too (:func:`~mesh.columnar._events.encode_arrow`; None where they were made one record
        at a time: the writer reads those rows from the lines). Both take the task rows' texts made once."""
        if len(events) <= _RECORD_ENCODED_EVENTS or self._has_extras(events.row):
            return self._encode_records(events), None
        texts = self._task_texts(events)
        if self._names_arrow is None or len(self._names_arrow) != self.agent_count:
            self._names_arrow = pa.array(self.names, pa.string())
        lines = encode_jsonl(events, texts, names_json=self.names_json(), mode=self.mode, shard=self.shard)
        return lines, encode_arrow(events, texts, names=self._names_arrow, mode=self.mode, shard=self.shard)

    def _task_texts(self, events: EventColumns) -> TaskTexts:
        t = self.tasks
        return TaskTexts.of(events, task_ids=t.task_ids, nonces=t.nonce[: t.count], created_s=t.col("created_s"))

    def names_json(self) -> pa.Array:
        """Every agent's name as JSON text, by index (cached until an agent registers)."""
        if self._names_json is None or len(self._names_json) != self.agent_count:
            self._names_json = json_strings(pa.array(self.names, pa.string()))
        return self._names_json

    def nbytes(self) -> dict[str, int]:
        """Bytes held in numpy columns: per agent and per task row (names and task id strings aside)."""
        return {
            "agent_column_bytes_per_agent": sum(np.dtype(d).itemsize for d, _ in AGENT_COLUMNS.values()),
            "agent_columns_bytes": sum(c.nbytes for c in self._agents.values()),
            "task_row_bytes": self.tasks.nbytes_per_row(),
            "task_columns_bytes": sum(c.nbytes for c in self.tasks.cols.values()) + self.tasks.nonce.nbytes
            + self.tasks.index.nbytes(),
        }

    # -- internals --------------------------------------------------------------

    def _has_extras(self, rows: np.ndarray) -> bool:
        t = self.tasks
        if not len(rows):
            return False
        if t.wallets or t.signatures:
            listed = rows[rows >= 0].tolist()
            if any(r in t.wallets or r in t.signatures for r in listed):
                return True
        tokens = t.col("tokens")
        return bool(len(tokens)) and bool(np.any(tokens[np.maximum(rows, 0)][rows >= 0] != 0.0))

    def _encode_records(self, events: EventColumns) -> bytes:
        """:meth:`encode` through :func:`ledger.events.record_event`, one event at a time."""
        from ledger.events import record_event
        from ledger.jsonl import encode_events

        made = []
        for i in range(len(events)):
            kind, row = KIND_NAMES[int(events.kind[i])], int(events.row[i])
            if row < 0:  # a deposit
                record = TollRecord("", "", self.names[int(events.target[i])], int(events.amount[i]),
                                    status=STATUS_OF_CODE[int(events.status[i])],
                                    created_at=iso_utc(int(events.ts_us[i]), "seconds"))
            else:
                record = self.record(row, status=int(events.status[i]), reason=int(events.reason[i]),
                                     settled_s=int(events.settled_s[i]))
            made.append(record_event(kind, record, ts_us=int(events.ts_us[i]), mode=self.mode, shard=self.shard))
        return encode_events(made)

    def _forget_pending(self, rows: np.ndarray) -> None:
        """Rows of PENDING tasks become unknown (-1) in ``rows``, and leave the index: they are recorded anew."""
        if not self.tasks.count:
            return
        found = np.flatnonzero(rows >= 0)
        pending = found[self.tasks.col("state")[rows[found]] == PENDING_STATE]
        for i in pending.tolist():
            if rows[i] >= 0:  # (a task id twice in the batch: its row is forgotten once)
                self.tasks.forget(int(rows[i]))
        rows[pending] = -1

    def _one_checked(self, task_id: Any, source: Any, target: Any, price: Any, now_us: Any) -> tuple:
        (task_id,) = check.ids("task_id", [task_id])
        for field, agent in (("source", source), ("target", target)):
            if isinstance(agent, (bool, np.bool_)) or not isinstance(agent, (int, np.integer)) or not 0 <= agent < self.agent_count:
                raise InvalidArgumentError(field, agent, f"an agent index from 0 to {self.agent_count - 1}")
        if isinstance(price, (bool, np.bool_)) or not isinstance(price, (int, np.integer)):
            raise InvalidAmountError("price_micros", price, "an int of micros")
        check.amounts("price_micros", np.array([price], np.int64), 1)
        return task_id, int(source), int(target), int(price), check.now("now_us", now_us)

    def _find_one(self, task_id: str, key: int) -> int:
        """The row of one task id, -1 if unknown or PENDING (a PENDING row is forgotten: it is recorded anew)."""
        row = self.tasks.find_one(task_id, key)
        if row >= 0 and self.tasks.cols["state"][row] == PENDING_STATE:
            self.tasks.forget(row)
            return -1
        return row

    def _room_one(self, source: int, price: int, day: int) -> int:
        """:meth:`_room` of one message: its reason code (0: it fits)."""
        a = self._agents
        if self.track_balances and not a["has_account"][source]:
            return UNKNOWN_AGENT
        if self.track_balances and int(a["balance"][source]) < price:
            return INSUFFICIENT_FUNDS
        used = int(a["used"][source]) if a["used_day"][source] == day else 0
        cap = int(a["cap"][source]) if a["cap_set"][source] else (
            NO_CAP if self.default_cap_micros is None else self.default_cap_micros)
        return OVER_DAILY_CAP if used + price > cap else 0

    def _reserve_one(self, source: int, price: int, day: int) -> None:
        a = self._agents
        used = int(a["used"][source]) if a["used_day"][source] == day else 0
        if used + price > MAX_HELD_MICROS or int(a["locked"][source]) + price > MAX_HELD_MICROS:
            raise InvalidAmountError("price_micros", price, f"would take an agent's usage or locked total past {MAX_HELD_MICROS} micros")
        a["used"][source], a["used_day"][source] = used + price, day
        a["locked"][source] += price
        if self.track_balances:
            a["balance"][source] -= price
            assert a["balance"][source] >= 0, "a negative balance"

    def _one_unlocked(self, task_id: str, source: int, target: int, price_micros: int, now_us: int, tokens: float,
                      wallet: Optional[str], signature: Optional[str], *, instant: bool) -> tuple[int, bool, EventColumns]:
        (task_id,) = check.ids("task_id", [task_id])
        source_idx, target_idx = check.indices("source", np.array([source]), 1, self.agent_count), check.indices(
            "target", np.array([target]), 1, self.agent_count)
        price = check.amounts("price_micros", np.array([price_micros]) if not isinstance(price_micros, bool) else price_micros, 1)
        now_us = check.now("now_us", now_us)
        _, expired = self._expire(now_us)
        keys, nonces = task_keys([task_id])
        rows = self.tasks.lookup(keys, [task_id]) if self.tasks.count else np.full(1, -1, np.int64)
        self._forget_pending(rows)
        if rows[0] >= 0:
            return int(rows[0]), True, expired
        day = day_of(now_us)
        reason = int(self._room(source_idx, price, day)[0]) if instant else PAYMENT_REQUIRED
        state = FAILED if instant and reason else RELEASED if instant else PENDING_STATE
        settled_s = now_us // US_PER_SECOND if state == RELEASED else -1
        row = self.tasks.append([task_id], keys, nonces, source=source_idx, target=target_idx, amount=price,
                                state=np.array([state]), reason=np.array([reason]), created_s=now_us // US_PER_SECOND,
                                lock_us=now_us, lock_day=day, lock_epoch=self.epoch, settled_s=settled_s,
                                tokens=float(tokens))
        self.tasks.set_payment(row, wallet, signature)
        kind = REJECT if state == FAILED else PAPER_RELEASE if instant else PEND
        if state == RELEASED:
            self._pay_at_once(int(source_idx[0]), int(target_idx[0]), int(price[0]), day)
        event = EventColumns.of(kind, np.array([row]), source_idx, target_idx, price, state, reason, now_us, settled_s)
        return row, False, EventColumns.concat([expired, event])

    def _pay_at_once(self, source: int, target: int, price: int, day: int) -> None:
        """A paper release: the source's room and funds taken, the target paid, nothing left locked."""
        a = self._agents
        used0 = int(a["used"][source]) if a["used_day"][source] == day else 0
        if used0 + price > MAX_HELD_MICROS:
            raise InvalidAmountError("price_micros", price, f"would take an agent's usage past {MAX_HELD_MICROS} micros")
        a["used"][source], a["used_day"][source] = used0 + price, day
        if not self.track_balances:
            return
        a["balance"][source] -= price
        assert a["balance"][source] >= 0, "a negative balance"
        if a["owned"][target]:
            a["balance"][target] += price
            a["has_account"][target] = True
            assert a["balance"][target] <= MAX_HELD_MICROS, "a balance past MAX_HELD_MICROS"
        else:
            self.transfers_out_micros += price

    def _caps(self, agents: np.ndarray) -> np.ndarray:
        a = self._agents
        default = NO_CAP if self.default_cap_micros is None else self.default_cap_micros
        return np.where(a["cap_set"][agents], a["cap"][agents], default)

    def _room(self, source: np.ndarray, price: np.ndarray, day: int) -> np.ndarray:
        """The reason code of each message (0: it fits), judged in message order (see the module doc)."""
        n = len(source)
        reasons = np.zeros(n, np.int8)
        if not n:
            return reasons
        a, track = self._agents, self.track_balances
        order = np.argsort(source, kind="stable")
        s, p = source[order], price[order]
        starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
        group = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, n]))
        u = s[starts]
        used0 = np.where(a["used_day"][u] == day, a["used"][u], 0)
        cap_room = self._caps(u) - used0
        balance0 = a["balance"][u]
        unknown = (~a["has_account"][u] if track else np.zeros(len(u), bool))[group]
        sorted_reasons = np.where(unknown, UNKNOWN_AGENT, 0).astype(np.int8)
        if int(p.max()) * n < MAX_HELD_MICROS:  # running sums stay exact in int64
            total = np.cumsum(p)
            spent = total - (total - p)[starts][group]  # each message's running sum within its source
            fails = spent > cap_room[group]
            if track:
                fails |= spent > balance0[group]
            fails &= ~unknown
            seen = np.cumsum(fails)
            tainted = (seen - (seen - fails)[starts][group]) > 0  # from a source's first refusal on
        else:  # a batch whose sums could pass int64: every message judged one by one, in Python ints
            spent, tainted = p, ~unknown  # (spent - p: nothing taken before a source's first message)
        slow = np.flatnonzero(tainted)
        if slow.size:
            self._room_one_by_one(slow, group, p, spent, used0, cap_room, balance0, sorted_reasons)
        reasons[order] = sorted_reasons
        return reasons

    def _room_one_by_one(self, slow: np.ndarray, group: np.ndarray, p: np.ndarray, spent: np.ndarray,
                         used0: np.ndarray, cap_room: np.ndarray, balance0: np.ndarray, reasons: np.ndarray) -> None:
        """Judge, in order, the messages of sources from their first refusal on (exact Python ints)."""
        track = self.track_balances
        state: dict[int, list[int]] = {}  # group -> [balance left, cap room left]
        prices = p[slow].tolist()
        groups = group[slow].tolist()
        before = (spent[slow] - p[slow]).tolist()  # spent by the accepted messages before a group's first slow one
        for k, (g, price) in enumerate(zip(groups, prices)):
            room = state.get(g)
            if room is None:
                room = state[g] = [int(balance0[g]) - before[k], int(cap_room[g]) - before[k]]
            if track and room[0] < price:
                reasons[slow[k]] = INSUFFICIENT_FUNDS
            elif room[1] < price:
                reasons[slow[k]] = OVER_DAILY_CAP
            else:
                room[0] -= price
                room[1] -= price

    def _reserve(self, source: np.ndarray, price: np.ndarray, day: int) -> None:
        """Take each accepted lock's room on ``day`` and, with balances, its funds."""
        if not len(source):
            return
        a = self._agents
        agents, inverse = np.unique(source, return_inverse=True)
        totals = np.zeros(len(agents), np.int64)
        np.add.at(totals, inverse, price)
        used0 = np.where(a["used_day"][agents] == day, a["used"][agents], 0)
        if int((used0 + totals).max()) > MAX_HELD_MICROS or int((a["locked"][agents] + totals).max()) > MAX_HELD_MICROS:
            raise InvalidAmountError("price_micros", int(price.max()), f"would take an agent's usage or locked total past {MAX_HELD_MICROS} micros")
        a["used"][agents] = used0 + totals
        a["used_day"][agents] = day
        a["locked"][agents] += totals
        if self.track_balances:
            a["balance"][agents] -= totals
            assert int(a["balance"][agents].min()) >= 0, "a negative balance"

    def _release(self, rows: np.ndarray, now_us: int) -> np.ndarray:
        """Pay each row's escrow to its target; the positions (in ``rows``) of the releases to other shards' agents."""
        t, a = self.tasks, self._agents
        source, target, amount = t.col("source")[rows], t.col("target")[rows], t.col("amount")[rows]
        self._unlock(source, amount)
        out = np.zeros(0, np.int64)
        if self.track_balances and len(rows):
            owned = a["owned"][target]
            np.add.at(a["balance"], target[owned], amount[owned])
            a["has_account"][target[owned]] = True
            out = np.flatnonzero(~owned)
            self.transfers_out_micros += int(amount[out].sum())
            assert int(a["balance"][target].max()) <= MAX_HELD_MICROS, "a balance past MAX_HELD_MICROS"
        t.col("state")[rows] = RELEASED
        t.col("settled_s")[rows] = now_us // US_PER_SECOND
        return out

    def _refund(self, rows: np.ndarray, reasons: np.ndarray | int, now_us: int) -> None:
        """Give each row's escrow back to its source, and its room to the cap period it took it in."""
        t, a = self.tasks, self._agents
        source, amount = t.col("source")[rows], t.col("amount")[rows]
        self._unlock(source, amount)
        same_period = (a["used_day"][source] == t.col("lock_day")[rows]) & (t.col("lock_epoch")[rows] == self.epoch)
        np.subtract.at(a["used"], source[same_period], amount[same_period])
        assert not len(rows) or int(a["used"][source].min()) >= 0, "a negative usage"
        if self.track_balances:
            np.add.at(a["balance"], source, amount)
        t.col("state")[rows] = REFUNDED
        t.col("reason")[rows] = reasons
        t.col("settled_s")[rows] = now_us // US_PER_SECOND

    def _unlock(self, source: np.ndarray, amount: np.ndarray) -> None:
        locked = self._agents["locked"]
        np.subtract.at(locked, source, amount)
        assert not len(source) or int(locked[source].min()) >= 0, "a negative locked amount"

    def _expire(self, now_us: int) -> tuple[np.ndarray, EventColumns]:
        """Refund the open escrows past their deadline, oldest first, up to the first one that is not."""
        due = self._due_rows(now_us)
        if not len(due):
            return due, EventColumns.empty()
        self._refund(due, ESCROW_TIMEOUT, now_us)
        t = self.tasks
        return due, EventColumns.of(EXPIRE, due, t.col("source")[due], t.col("target")[due], t.col("amount")[due],
                                    REFUNDED, ESCROW_TIMEOUT, now_us, now_us // US_PER_SECOND)

    def _due_rows(self, now_us: int) -> np.ndarray:
        if self._timeout_us is None:
            return np.zeros(0, np.int64)
        state, lock_us, count = self.tasks.col("state"), self.tasks.col("lock_us"), self.tasks.count
        start = self._open_from
        while start < count:  # past the rows settled since the last sweep (each row is passed once)
            locked = np.flatnonzero(state[start:start + _SCAN_ROWS] == LOCKED)
            if locked.size:
                start += int(locked[0])
                break
            start = min(start + _SCAN_ROWS, count)
        self._open_from = start
        if start >= count or lock_us[start] + self._timeout_us > now_us:
            return np.zeros(0, np.int64)
        found = []
        while start < count:
            end = min(start + _SCAN_ROWS, count)
            rows = start + np.flatnonzero(state[start:end] == LOCKED)
            late = lock_us[rows] + self._timeout_us <= now_us
            if not late.all():
                found.append(rows[: int(np.argmin(late))])
                break
            found.append(rows)
            start = end
        return np.concatenate(found)

    def _grow_agents(self, agents: int) -> None:
        columns = self._agents
        capacity = len(columns["balance"])
        if agents <= capacity:
            return
        while capacity < agents:
            capacity *= 2
        for name, (dtype, initial) in AGENT_COLUMNS.items():
            grown = np.full(capacity, initial, dtype)
            grown[: len(self.names)] = columns[name][: len(self.names)]
            columns[name] = grown


def _earlier_twin(keys: np.ndarray, ids: list[str], among: np.ndarray) -> np.ndarray:
    """For each message, the earlier message of the batch with the same task id (among ``among``), else -1."""
    twin = np.full(len(keys), -1, np.int64)
    if len(among) < 2:
        return twin
    k = keys[among]
    order = np.argsort(k, kind="stable")
    sorted_keys = k[order]
    same = sorted_keys[1:] == sorted_keys[:-1]
    if not same.any():
        return twin
    involved = among[order[np.r_[same, False] | np.r_[False, same]]]
    first_of: dict[str, int] = {}
    for i in sorted(involved.tolist()):
        first = first_of.setdefault(ids[i], i)
        if first != i:
            twin[i] = first
    return twin
