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

__all__ = ["EventKind", "SCHEMA_VERSION", "credit_event", "proof_digest", "record_event"]


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


def credit_event(release: dict[str, Any], *, from_shard: int, ts_us: int, shard: int) -> dict[str, Any]:
    """The ``credit`` event by which partition ``shard`` receives ``release``, a numbered ``release`` or
    ``paper_release`` event of partition ``from_shard`` that paid one of ``shard``'s agents
    (:mod:`ledger.partitions`); the writer adds ``seq`` and the seal.

    >>> release = {"kind": "release", "seq": 7, "mode": "live", "task_id": "t1", "source_agent": "a",
    ...            "target_agent": "b", "amount_micros": 5}
    >>> e = credit_event(release, from_shard=0, ts_us=9, shard=1)
    >>> e["kind"], e["from_shard"], e["from_seq"], e["amount_micros"], "status" in e
    ('credit', 0, 7, 5, False)
    """
    event: dict[str, Any] = {"v": SCHEMA_VERSION, "seq": None, "ts_us": ts_us, "kind": EventKind.CREDIT.value}
    if release.get("mode") is not None:
        event["mode"] = release["mode"]
    event["shard"] = shard
    event["task_id"] = release["task_id"]
    event["source_agent"] = release["source_agent"]
    event["target_agent"] = release["target_agent"]
    event["amount_usd"] = release["amount_micros"] / MICROS_PER_USD
    event["amount_micros"] = release["amount_micros"]
    event["from_shard"] = from_shard
    event["from_seq"] = release["seq"]
    return event


def proof_digest(tx_signature: str) -> str:
    """The first 32 hex digits of the SHA-256 of a payment proof."""
    return hashlib.sha256(tx_signature.encode()).hexdigest()[:32]
