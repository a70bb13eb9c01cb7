"""The ledger event: one JSON object per state change.

An event is the seed's record fields (task_id, source_agent, target_agent,
amount_usd, status, ...) plus the exact ``amount_micros``, the schema version
``v``, the sequence number ``seq`` (assigned by the writer), the time as ISO text
``ts`` and as integer microseconds ``ts_us``, the event ``kind``, the booth
``mode`` and the ``reason``.

>>> from mesh.records import TollRecord
>>> e = record_event("lock", TollRecord("t1", "a", "b", amount_micros=5), ts_us=0, mode="live")
>>> e["kind"], e["amount_micros"], e["ts"]
('lock', 5, '1970-01-01T00:00:00.000000+00:00')
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from mesh.clock import iso_utc
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
    event = {"v": SCHEMA_VERSION, "seq": None, "ts": iso_utc(ts_us), "ts_us": ts_us, "kind": kind, "mode": mode}
    event.update(record.to_dict())
    return event
