"""Build ledger events from toll records (the field order is the schema's, see :mod:`ledger.schema`).

>>> from mesh.core.records import TollRecord
>>> e = record_event("lock", TollRecord("t1", "a", "b", amount_micros=5), ts_us=0, mode="live")
>>> e["kind"], e["amount_micros"], e["ts_us"], "hash" in e, "reason" in e
('lock', 5, 0, False, False)
"""

from __future__ import annotations

import hashlib
from typing import Any, Optional

from ledger.schema import SCHEMA_VERSION, EventKind
from mesh.core.money import MICROS_PER_USD
from mesh.core.records import TollRecord

__all__ = ["EventKind", "SCHEMA_VERSION", "proof_digest", "record_event"]


def record_event(
    kind: str, record: TollRecord, *, ts_us: int, mode: Optional[str], shard: Optional[int] = None
) -> dict[str, Any]:
    """The event for ``record`` entering state ``kind`` at ``ts_us``; the writer adds ``seq`` and ``hash``.

    Its null fields are left out (a reader fills them in, see :data:`~ledger.schema.NULLABLE_FIELDS`):
    the ledger's v2 lines hold none, and leaving them out here costs less than cutting them out of
    the encoded line. The fields that are there keep the schema's order.
    """
    event: dict[str, Any] = {"v": SCHEMA_VERSION, "seq": None, "ts_us": ts_us, "kind": kind}
    if mode is not None:
        event["mode"] = mode
    if shard is not None:
        event["shard"] = shard
    event["task_id"] = record.task_id
    event["source_agent"] = record.source_agent
    event["target_agent"] = record.target_agent
    event["amount_usd"] = record.amount_micros / MICROS_PER_USD
    event["amount_micros"] = record.amount_micros
    event["amount_tokens"] = record.amount_tokens
    if record.status is not None:
        event["status"] = record.status
    tx_signature = record.tx_signature
    if tx_signature is not None:
        event["tx_signature"] = tx_signature
    if record.payer_wallet is not None:
        event["payer_wallet"] = record.payer_wallet
    event["nonce"] = record.nonce
    if record.settled_at is not None:
        event["settled_at"] = record.settled_at
    event["created_at"] = record.created_at
    if record.reason is not None:
        event["reason"] = record.reason
    if tx_signature is not None:
        event["proof_digest"] = proof_digest(tx_signature)
    return event


def proof_digest(tx_signature: str) -> str:
    """The first 32 hex digits of the SHA-256 of a payment proof."""
    return hashlib.sha256(tx_signature.encode()).hexdigest()[:32]
