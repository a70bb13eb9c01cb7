"""The task table of the columnar book: one row per task id it has seen, in numpy columns.

A row is appended when a task id is first locked or rejected and never moves; its
state, reason and settlement time change once (LOCKED -> RELEASED or REFUNDED). Rows
are found by task id through :class:`KeyIndex`: each id's 64-bit key (the first 8 bytes
of its nonce, ``blake2b(task_id, digest_size=16)``, which the ledger's events carry
anyway) in sorted runs searched with ``np.searchsorted`` for a whole batch at once;
a key that matches is confirmed against the stored id (two ids may share a key).

>>> import numpy as np
>>> table = TaskTable()
>>> keys, nonces = task_keys(["t1", "t2"])
>>> first = table.append(["t1", "t2"], keys, nonces, source=np.array([0, 0]), target=np.array([1, 1]),
...                      amount=np.array([5, 7]), state=np.array([2, 5]), reason=np.array([0, 1]),
...                      created_s=np.array([0, 0]), lock_us=np.array([0, 0]), lock_day=0, lock_epoch=0)
>>> table.lookup(*task_keys(["t2", "t3"])[:1], ["t2", "t3"]).tolist()
[1, -1]
"""

from __future__ import annotations

import sys
from hashlib import blake2b
from typing import Optional, Sequence

import numpy as np

_INITIAL_ROWS = 1 << 10
_MERGE_RATIO = 2  # a run is merged into the one before it while that one is at most this many times larger
RECENT_ROWS = 4_096  # rows appended one at a time that wait in a dict before they go to the index as a run

#: The numpy columns of a task row: name -> dtype (the nonce is 16 bytes a row, kept apart).
ROW_COLUMNS: dict = {
    "key": np.int64, "source": np.int32, "target": np.int32, "amount": np.int64,
    "state": np.int8, "reason": np.int8,
    "created_s": np.int64,  # created_at, whole seconds since the epoch
    "lock_us": np.int64,  # when the lock was taken (its deadline is this plus the timeout)
    "settled_s": np.int64,  # settled_at, whole seconds (-1: not settled)
    "lock_day": np.int32, "lock_epoch": np.int32,  # the cap period the lock took room in
    "tokens": np.float64,  # amount_tokens (0.0 on the mesh's own calls)
}


def task_key(task_id: str) -> tuple[int, bytes]:
    """One id's key and nonce digest (:func:`task_keys` of one)."""
    digest = blake2b(task_id.encode(), digest_size=16).digest()
    return int.from_bytes(digest[:8], sys.byteorder, signed=True), digest


def task_keys(task_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Each id's key (int64) and nonce digest (16 bytes, a ``(n, 16)`` uint8 array): the one hash per message."""
    digests = b"".join([blake2b(task_id.encode(), digest_size=16).digest() for task_id in task_ids])
    nonces = np.frombuffer(digests, dtype=np.uint8).reshape(-1, 16)
    keys = np.ascontiguousarray(nonces[:, :8]).view(np.int64).ravel()
    return keys, nonces


class KeyIndex:
    """Keys -> rows in sorted runs (a small log-structured merge): add a batch, look up a batch."""

    def __init__(self) -> None:
        self._runs: list[tuple[np.ndarray, np.ndarray]] = []  # (keys sorted, their rows), largest first

    def add(self, keys: np.ndarray, rows: np.ndarray) -> None:
        if not len(keys):
            return
        order = np.argsort(keys, kind="stable")
        runs = self._runs
        runs.append((keys[order], rows[order]))
        while len(runs) >= 2 and len(runs[-2][0]) <= _MERGE_RATIO * len(runs[-1][0]):
            (k1, r1), (k2, r2) = runs[-2], runs[-1]
            del runs[-2:]
            merged = np.concatenate([k1, k2])
            order = np.argsort(merged, kind="stable")
            runs.append((merged[order], np.concatenate([r1, r2])[order]))

    def candidates(self, keys: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """Per run: (run keys, run rows, positions of each key in the run, mask of the keys found there)."""
        found = []
        for run_keys, run_rows in self._runs:
            at = np.searchsorted(run_keys, keys)
            np.minimum(at, len(run_keys) - 1, out=at)
            found.append((run_keys, run_rows, at, run_keys[at] == keys))
        return found

    def nbytes(self) -> int:
        return sum(k.nbytes + r.nbytes for k, r in self._runs)


class TaskTable:
    """Growable task rows (see the module doc)."""

    def __init__(self) -> None:
        self.count = 0
        self.cols: dict[str, np.ndarray] = {name: np.zeros(_INITIAL_ROWS, dtype) for name, dtype in ROW_COLUMNS.items()}
        self.nonce = np.zeros((_INITIAL_ROWS, 16), np.uint8)
        self.task_ids: list[str] = []
        self.forgotten: set[int] = set()  # PENDING rows a later record of their task id replaced (never found)
        self.recent: dict[str, int] = {}  # rows appended one at a time, not in the index's runs yet
        self.wallets: dict[int, str] = {}  # payer_wallet and tx_signature of the rows that have one (few)
        self.signatures: dict[int, str] = {}
        self.index = KeyIndex()

    def __len__(self) -> int:
        return self.count

    def col(self, name: str) -> np.ndarray:
        """The live rows of column ``name`` (a view)."""
        return self.cols[name][: self.count]

    def append(self, task_ids: list[str], keys: np.ndarray, nonces: np.ndarray, *, source: np.ndarray,
               target: np.ndarray, amount: np.ndarray, state: np.ndarray, reason: np.ndarray,
               created_s: np.ndarray, lock_us: np.ndarray, lock_day: int, lock_epoch: int,
               settled_s: np.ndarray | int = -1, tokens: np.ndarray | float = 0.0) -> int:
        """Append rows (all columns the same length) and index their keys; the first new row."""
        n, first = len(task_ids), self.count
        self._reserve(first + n)
        end = first + n
        cols = self.cols
        cols["key"][first:end] = keys
        cols["source"][first:end] = source
        cols["target"][first:end] = target
        cols["amount"][first:end] = amount
        cols["state"][first:end] = state
        cols["reason"][first:end] = reason
        cols["created_s"][first:end] = created_s
        cols["lock_us"][first:end] = lock_us
        cols["settled_s"][first:end] = settled_s
        cols["lock_day"][first:end] = lock_day
        cols["lock_epoch"][first:end] = lock_epoch
        cols["tokens"][first:end] = tokens
        self.nonce[first:end] = nonces
        self.task_ids.extend(task_ids)
        self.count = end
        self.index.add(keys, np.arange(first, end, dtype=np.int64))
        return first

    def append_one(self, task_id: str, key: int, nonce: bytes, *, source: int, target: int, amount: int, state: int,
                   reason: int, created_s: int, lock_us: int, lock_day: int, lock_epoch: int, settled_s: int = -1,
                   tokens: float = 0.0) -> int:
        """Append one row (the per-message paths): kept in :attr:`recent` until ``RECENT_ROWS`` of them go to the
        index as one run. Its row."""
        row = self.count
        self._reserve(row + 1)
        cols = self.cols
        for name, value in (("key", key), ("source", source), ("target", target), ("amount", amount), ("state", state),
                            ("reason", reason), ("created_s", created_s), ("lock_us", lock_us),
                            ("settled_s", settled_s), ("lock_day", lock_day), ("lock_epoch", lock_epoch),
                            ("tokens", tokens)):
            cols[name][row] = value
        self.nonce[row] = np.frombuffer(nonce, np.uint8)
        self.task_ids.append(task_id)
        self.count = row + 1
        self.recent[task_id] = row
        if len(self.recent) >= RECENT_ROWS:
            rows = np.fromiter(self.recent.values(), np.int64, len(self.recent))
            self.index.add(cols["key"][rows], rows)
            self.recent.clear()
        return row

    def find_one(self, task_id: str, key: int) -> int:
        """The row of one task id (-1 if unknown)."""
        row = self.recent.get(task_id)
        if row is not None:
            return row
        if not self.count:
            return -1
        return int(self._in_runs(np.array([key], np.int64), [task_id])[0])

    def forget(self, row: int) -> None:
        """Drop a PENDING row from the index's answers (a record of its task id replaces it)."""
        self.forgotten.add(row)
        if self.recent.get(self.task_ids[row]) == row:
            del self.recent[self.task_ids[row]]

    def set_payment(self, row: int, wallet: Optional[str], signature: Optional[str]) -> None:
        if wallet is not None:
            self.wallets[row] = wallet
        if signature is not None:
            self.signatures[row] = signature

    def lookup(self, keys: np.ndarray, task_ids: Sequence[str]) -> np.ndarray:
        """The row of each task id (-1 if unknown): keys searched in bulk, matches confirmed by the id itself."""
        rows = self._in_runs(keys, task_ids)
        if self.recent:
            recent = self.recent
            for i in np.flatnonzero(rows < 0).tolist():
                row = recent.get(task_ids[i])
                if row is not None:
                    rows[i] = row
        return rows

    def _in_runs(self, keys: np.ndarray, task_ids: Sequence[str]) -> np.ndarray:
        rows = np.full(len(keys), -1, np.int64)
        stored = self.task_ids
        for run_keys, run_rows, at, hit in self.index.candidates(keys):
            hit &= rows < 0
            where = np.flatnonzero(hit)
            if not where.size:
                continue
            candidate = run_rows[at[where]]
            same = np.fromiter((stored[r] == task_ids[i] for r, i in zip(candidate.tolist(), where.tolist())),
                               bool, where.size)
            if self.forgotten:
                same &= np.fromiter((r not in self.forgotten for r in candidate.tolist()), bool, where.size)
            rows[where[same]] = candidate[same]
            for i in where[~same].tolist():  # two ids with one key (about one pair in 2^64): the run's next rows
                j = int(at[i]) + 1
                while j < len(run_keys) and run_keys[j] == keys[i]:
                    if stored[run_rows[j]] == task_ids[i] and run_rows[j] not in self.forgotten:
                        rows[i] = run_rows[j]
                        break
                    j += 1
        return rows

    def nbytes_per_row(self) -> int:
        """Bytes a row takes in the numpy columns and the index (the task id's str aside)."""
        return sum(np.dtype(d).itemsize for d in ROW_COLUMNS.values()) + 16 + 16

    def _reserve(self, rows: int) -> None:
        capacity = len(self.cols["key"])
        if rows <= capacity:
            return
        while capacity < rows:
            capacity *= 2
        for name, column in self.cols.items():
            grown = np.zeros(capacity, column.dtype)
            grown[: self.count] = column[: self.count]
            self.cols[name] = grown
        nonce = np.zeros((capacity, 16), np.uint8)
        nonce[: self.count] = self.nonce[: self.count]
        self.nonce = nonce
