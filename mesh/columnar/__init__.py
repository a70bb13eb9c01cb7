"""The columnar shard book: a budget shard's state and events as arrays, a batch at a time.

A pure module (numpy and pyarrow, no Ray), equal in effect to the record book a budget
shard holds today (``actors.budget_shard.ShardCore`` over :class:`~mesh.core.escrow.EscrowBook`),
and 5-7x cheaper per message at batches of 20,000 (benchmarks/columnar_book.py). See :mod:`mesh.columnar.book`.

>>> import numpy as np
>>> from mesh.columnar import ColumnarBook
>>> book = ColumnarBook(track_balances=True)
>>> a, b = book.register(["alice", "bob"])
>>> _ = book.deposit(np.array([a]), np.array([10]), now_us=0)
>>> answer = book.lock(["t1"], np.array([a]), np.array([b]), np.array([4]), now_us=0)
>>> book.record(int(answer.rows[0])).status.value
'escrow_locked'
"""

from mesh.columnar._codes import (
    FAILED, KIND_NAMES, LOCKED, PENDING, REASON_CODE, REASON_NAMES, REFUNDED, RELEASED, STATUS_NAMES, UNKNOWN,
)
from mesh.columnar._events import EventColumns, encode_jsonl
from mesh.columnar.book import MAX_HELD_MICROS, ColumnarBook, LockAnswer, SettleAnswer

__all__ = [
    "ColumnarBook", "EventColumns", "LockAnswer", "SettleAnswer", "encode_jsonl", "MAX_HELD_MICROS",
    "REASON_CODE", "REASON_NAMES", "STATUS_NAMES", "KIND_NAMES",
    "UNKNOWN", "PENDING", "LOCKED", "RELEASED", "REFUNDED", "FAILED",
]
