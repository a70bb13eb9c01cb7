"""Build ledger events from toll records (the field order is the schema's, see :mod:`ledger.schema`).

>>> from mesh.records import TollRecord
>>> e = record_event("lock", TollRecord("t1", "a", "b", amount_micros=5), ts_us=0, mode="live")
>>> e["kind"], e["amount_micros"], e["ts_us"], "hash" in e
('lock', 5, 0, False)
"""

from __future__ import annotations

import hashlib
from typing import Any, Optional

from ledger.schema import SCHEMA_VERSION, EventKind
from mesh.money import MICROS_PER_USD
from mesh.records import TollRecord

__all__ = ["EventKind", "SCHEMA_VERSION", "proof_digest", "record_event"]


def record_event(
    kind: str, record: TollRecord, *, ts_us: int, mode: Optional[str], shard: Optional[int] = None
) -> dict[str, Any]:
    """The event for ``record`` entering state ``kind`` at ``ts_us``; the writer adds ``seq`` and ``hash``."""
    return {
        "v": SCHEMA_VERSION,
        "seq": None,
        "ts_us": ts_us,
        "kind": kind,
        "mode": mode,
        "shard": shard,
        "task_id": record.task_id,
        "source_agent": record.source_agent,
        "target_agent": record.target_agent,
        "amount_usd": record.amount_micros / MICROS_PER_USD,
        "amount_micros": record.amount_micros,
        "amount_tokens": record.amount_tokens,
        "status": record.status,
        "tx_signature": record.tx_signature,
        "payer_wallet": record.payer_wallet,
        "nonce": record.nonce,
        "settled_at": record.settled_at,
        "created_at": record.created_at,
        "reason": record.reason,
        "proof_digest": None if record.tx_signature is None else proof_digest(record.tx_signature),
    }


def proof_digest(tx_signature: str) -> str:
    """The first 32 hex digits of the SHA-256 of a payment proof."""
    return hashlib.sha256(tx_signature.encode()).hexdigest()[:32]
