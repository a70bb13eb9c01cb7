"""A compact memory of task ids: each one's 64-bit key and a ledger seq, in sorted numpy runs.

The escrow book keeps whole records only for its last ``max_settled_records`` settled
tolls. Every task id that leaves that window comes here as ``(key, seq)``: its key is
``hash(task_id)`` (64 bits, keyed per process by Python's SipHash and cached on the str,
so it costs nothing on the hot path), its seq says where the ledger holds the event that
settled it. About 18-20 bytes an id: 8 of key and 8 of seq in int64 arrays, and a blocked
Bloom filter of 2 to 4 bytes an id (three bits in one 32-bit word) that answers "never
seen" for a new task id in one probe, before any array is searched.

A key is not the id: two ids may share one (about one pair in 2^64), so a caller reads
the event back at each candidate seq and compares the real task id. The index lives in
memory and is rebuilt by the replay of the ledger at each start, so its keys never need
to be stable across processes.

>>> index = TaskIndex()
>>> index.add("t1", 7); index.add("t2", 9)
>>> index.candidates("t1"), index.candidates("t3"), len(index)
([7], (), 2)
"""

from __future__ import annotations

from array import array
from typing import Optional, Union

import numpy as np

FLUSH_ENTRIES = 1 << 14  # ids gathered in a dict before they are sorted into a run
MERGE_RUNS = 2  # this many runs of like size are merged into one (more: cheaper adds, more arrays to search on a hit)
BLOOM_BYTES_PER_ID = 2  # below this many filter bytes an id, the filter is rebuilt at twice its size
_MIN_BLOOM_WORDS = 1 << 10
_NONE: tuple = ()


def _masks() -> array:
    """For each 15-bit value, the word of the (up to) three bits its 5-bit fields name."""
    values = np.arange(1 << 15, dtype=np.uint32)
    one = np.uint32(1)
    masks = np.left_shift(one, values & 31) | np.left_shift(one, (values >> 5) & 31) | np.left_shift(one, (values >> 10) & 31)
    return array("I", masks.astype(np.uint32).tobytes())


_MASKS = _masks()  # a key's bits in its filter word: _MASKS[(key >> 44) & 0x7FFF]


class TaskIndex:
    """Task ids, each with a seq; add and look up only (see the module doc)."""

    def __init__(self) -> None:
        self.count = 0  # ids held (a plain attribute: the book tests it on every new task id)
        self._buffer: dict[int, int] = {}  # the newest ids: key -> seq, until FLUSH_ENTRIES
        self._runs: list[tuple[np.ndarray, np.ndarray]] = []  # (keys sorted, their seqs), largest first
        self._bloom = array("I", bytes(4 * _MIN_BLOOM_WORDS))  # 32-bit words, over the runs' keys only
        self._bloom_mask = _MIN_BLOOM_WORDS - 1

    def __len__(self) -> int:
        return self.count

    def add(self, task_id: str, seq: int) -> None:
        """Remember ``task_id`` with ``seq``."""
        key = hash(task_id)
        buffer = self._buffer
        if buffer.setdefault(key, seq) != seq:  # one key, two seqs (a collision, or an id added twice): keep both
            self._flush()
            self._buffer[key] = seq
        self.count += 1
        if len(buffer) >= FLUSH_ENTRIES:
            self._flush()

    def candidates(self, task_id: str) -> Union[list[int], tuple]:
        """The seqs of every id added whose key is ``task_id``'s (empty for nearly every new id)."""
        key = hash(task_id)
        seq = self._buffer.get(key)
        if self._runs:  # the filter, inlined (the hot path): three bits of one word, named by the key's bits 44-58
            bits = _MASKS[(key >> 44) & 0x7FFF]
            if self._bloom[key & self._bloom_mask] & bits == bits:
                return self._search(key, seq)
        return _NONE if seq is None else [seq]

    def nbytes(self) -> int:
        """The bytes its arrays and filter hold (the buffer's dict aside)."""
        return 4 * len(self._bloom) + sum(keys.nbytes + seqs.nbytes for keys, seqs in self._runs)

    # -- internals --------------------------------------------------------------

    def _search(self, key: int, seq: Optional[int]) -> list[int]:
        """The seqs of ``key`` in the runs (the filter said it may be there), after the buffer's ``seq``."""
        found = [] if seq is None else [seq]
        for keys, seqs in self._runs:
            at = int(np.searchsorted(keys, key))
            while at < len(keys) and keys[at] == key:
                found.append(int(seqs[at]))
                at += 1
        return found

    def _flush(self) -> None:
        """Sort the buffer into a run, merge runs of like size (an id is merged about log2(n / FLUSH_ENTRIES) times),
        and add its keys to the filter."""
        if not self._buffer:
            return
        keys = np.fromiter(self._buffer.keys(), dtype=np.int64, count=len(self._buffer))
        seqs = np.fromiter(self._buffer.values(), dtype=np.int64, count=len(self._buffer))
        self._buffer = {}
        order = np.argsort(keys, kind="stable")
        runs = self._runs
        runs.append((keys[order], seqs[order]))
        while len(runs) >= MERGE_RUNS and len(runs[-MERGE_RUNS][0]) <= 2 * len(runs[-1][0]):
            merged = runs[-MERGE_RUNS:]  # the newest MERGE_RUNS runs, of like size: one run
            del runs[-MERGE_RUNS:]
            all_keys = np.concatenate([k for k, _ in merged])
            order = np.argsort(all_keys, kind="stable")  # stable: of one key, older seqs first
            runs.append((all_keys[order], np.concatenate([s for _, s in merged])[order]))
        in_runs = sum(len(run_keys) for run_keys, _ in runs)
        if in_runs * BLOOM_BYTES_PER_ID > 4 * len(self._bloom):
            self._rebuild_bloom(in_runs)
        else:
            self._set_bloom(keys)

    def _rebuild_bloom(self, in_runs: int) -> None:
        words = _MIN_BLOOM_WORDS
        while 4 * words < 2 * BLOOM_BYTES_PER_ID * in_runs:
            words *= 2
        self._bloom, self._bloom_mask = array("I", bytes(4 * words)), words - 1
        for keys, _ in self._runs:
            self._set_bloom(keys)

    def _set_bloom(self, keys: np.ndarray) -> None:
        """Set each key's bits (what :meth:`candidates` tests)."""
        bits = np.frombuffer(_MASKS, dtype=np.uint32)[(keys >> 44) & 0x7FFF]
        np.bitwise_or.at(np.frombuffer(self._bloom, dtype=np.uint32), keys & self._bloom_mask, bits)
