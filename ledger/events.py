"""The ledger event: one JSON object per state change.

An event is the seed's record fields (task_id, source_agent, target_agent,
amount_usd, status, ...) plus the exact ``amount_micros``, the schema version
``v``, the sequence number ``seq`` (assigned by the writer), the UTC time as integer
microseconds since the epoch ``ts_us`` (exact, so replay computes the same days and
deadlines; ``created_at``/``settled_at`` carry ISO text), the event ``kind``, the booth
``mode`` and the ``reason``.

>>> from mesh.records import TollRecord
>>> e = record_event("lock", TollRecord("t1", "a", "b", amount_micros=5), ts_us=0, mode="live")
>>> e["kind"], e["amount_micros"], e["ts_us"]
('lock', 5, 0)
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from mesh.money import MICROS_PER_USD
from mesh.records import TollRecord

SCHEMA_VERSION = 1


class EventKind(str, Enum):
    """What happened. Each kind has exactly one meaning for replay."""

    DEPOSIT = "deposit"  # funds added to target_agent
    LOCK = "lock"  # toll locked in escrow (ESCROW_LOCKED)
    PAPER_RELEASE = "paper_release"  # paper-mode charge: locked and released at once
    RELEASE = "release"  # escrow paid to the target (RELEASED)
    REFUND = "refund"  # escrow given back to the source (REFUNDED)
    EXPIRE = "expire"  # escrow refunded by the system after its timeout
    REJECT = "reject"  # refused before anything was locked (FAILED)
    PENDING = "pending"  # payment required before routing (PENDING)
    RESET_DAILY = "reset_daily"  # the seed's manual reset of every agent's daily usage
    RECOVER = "recover"  # the writer found a torn last line after a crash and moved past it


def record_event(kind: str, record: TollRecord, *, ts_us: int, mode: str) -> dict[str, Any]:
    """The ledger event for ``record`` entering state ``kind`` at ``ts_us`` (no ``seq`` yet)."""
    return {
        "v": SCHEMA_VERSION, "seq": None, "ts_us": ts_us, "kind": kind, "mode": mode,
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
    }
