"""Which signed authorizations have paid already: each may pay for one call only.

EIP-3009 lets a payer sign many authorizations, each with a random 32-byte nonce; the
token contract runs each one once. Checking a signature does not spend it, so the payee
must remember what it accepted until it settles. :class:`NonceBook` binds each payment
(:data:`~ledger.payments.PaymentKey`) to the call (task id) it paid for: the same call
may present it again (a retry, a redelivery after a crash), any other call is refused.
It holds at most ``max_entries`` live payments; one past its ``validBefore`` is forgotten
when room is needed (it can only be refused as expired by then). Thread-safe, picklable.

>>> book = NonceBook(max_entries=10)
>>> key = ("eip155:84532", "0xusdc", "0xpayer", "0x01")
>>> book.claim(key, "t1", valid_before_s=100, now_s=0), book.claim(key, "t1", 100, 0), book.claim(key, "t2", 100, 0)
(True, True, False)
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from ledger.payments import PaymentKey, spent_payments
from mesh.core.errors import InvalidArgumentError, TollmeshError

DEFAULT_MAX_ENTRIES = 2_000_000  # ~300 bytes each: ~600 MB at the limit


class NonceBookFull(TollmeshError):
    """Every entry is a live payment: a new one is refused (fail closed) until some expire."""


class NonceBook:
    """See the module doc."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise InvalidArgumentError("max_entries", max_entries, "must be an int of at least 1")
        self.max_entries = max_entries
        self._entries: dict[PaymentKey, tuple[str, int]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def claim(self, key: PaymentKey, task_id: str, valid_before_s: int, now_s: float) -> bool:
        """Bind ``key`` to ``task_id``; False if it paid for another call already. NonceBookFull if no room."""
        with self._lock:
            held = self._entries.get(key)
            if held is not None:
                return held[0] == task_id
            if len(self._entries) >= self.max_entries:
                self._forget_expired(now_s)
            self._entries[key] = (task_id, valid_before_s)
            return True

    def holder(self, key: PaymentKey) -> str | None:
        """The task id ``key`` paid for, or None."""
        held = self._entries.get(key)
        return None if held is None else held[0]

    def _forget_expired(self, now_s: float) -> None:
        live = {k: v for k, v in self._entries.items() if v[1] > now_s}
        if len(live) >= self.max_entries:
            raise NonceBookFull(f"{len(live):,} payments still valid are remembered (max_entries={self.max_entries:,})")
        self._entries = live

    def restore(self, ledger: Path | str, *, now_s: float) -> int:
        """Learn the payments the ledger's events spent (those still valid at ``now_s``); how many."""
        count = 0
        with self._lock:
            for spent in spent_payments(ledger, valid_after_s=now_s):
                if spent.key not in self._entries:
                    self._entries[spent.key] = (spent.task_id, spent.valid_before_s)
                    count += 1
        return count

    def __getstate__(self) -> dict[str, Any]:
        with self._lock:
            return {"max_entries": self.max_entries, "entries": dict(self._entries)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.max_entries = state["max_entries"]
        self._entries = state["entries"]
        self._lock = threading.Lock()
