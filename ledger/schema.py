"""The ledger event schema, defined once: kinds, the pydantic model, the Arrow schema.

A JSONL line holds these fields in this order, its chain fields last:

========================  ===============================================================
``v``                     the line's format (:data:`LEDGER_FORMATS`): 1, a hash per line;
                          2, a seal per batch (:mod:`ledger.seal`), null fields left out
``seq``                   sequence number: 0, 1, 2... across all files of a ledger
``ts_us``                 UTC time of the change, integer microseconds since the epoch
``kind``                  what happened (:class:`EventKind`)
``mode``                  ``paper`` or ``live`` (the booth's mode), or null
``shard``                 the budget shard that decided it, or null (in-process booth)
``task_id``...            the seed's record fields: ``task_id``, ``source_agent``,
                          ``target_agent``, ``amount_usd`` (a float for display),
                          ``amount_tokens``, ``status``, ``tx_signature``,
                          ``payer_wallet``, ``nonce``, ``settled_at``, ``created_at``
``amount_micros``         the exact amount, integer micro-USD
``reason``                why it failed, is pending or was refunded, or null
``proof_digest``          SHA-256 of ``tx_signature`` (first 32 hex digits), or null
``torn_bytes``            ``recover`` events only: the length of the torn line skipped
``from_shard``,           ``credit`` events only (a partitioned ledger, :mod:`ledger.partitions`):
``from_seq``              the partition and seq of the release this credit receives
``hash``                  v1: the hash chain: SHA-256 (first 128 bits, hex) of the previous
                          line's ``hash`` and this line without its ``hash`` field
``first_seq``, ``lines``  v2, the last line of a batch only: the batch's first seq and its
``seal``                  number of lines; the seal chaining the batch (:mod:`ledger.seal`)
========================  ===============================================================

A field of :data:`NULLABLE_FIELDS` left out of a line is null: v2 lines leave their nulls
out, and every reader fills them in (:func:`ledger.lines.parse_line`), so a v1 and a v2
ledger of the same events read the same. Producers hand the writer events that start
``"v": 1, "seq": None`` (:data:`SCHEMA_VERSION`); the writer numbers them and writes its format.

>>> LedgerEvent.model_validate({"v": 1, "seq": 0, "ts_us": 0, "kind": "deposit",
...     "target_agent": "a", "amount_micros": 5, "hash": "0" * 32}).amount_micros
5
"""

from __future__ import annotations

from enum import Enum
from typing import Literal, Optional

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1  # the ``v`` of an event handed to the writer (and of a v1 line)
LEDGER_FORMATS = (1, 2)  # the line formats this tollmesh reads (``v``)
DEFAULT_FORMAT = 2  # what a new ledger is written in
GENESIS_HASH = "0" * 32  # the "previous hash" of a ledger's first line (or batch)


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
    CREDIT = "credit"  # a partitioned ledger: a release another partition paid to target_agent, received


#: Kinds of which the first in a ledger (a partition) says whether it tracks balances: one that funds an
#: account (:data:`FUNDING_KINDS`: yes) or a lock (no: a booth with balances locks nothing unfunded).
DECIDING_KINDS = frozenset({"deposit", "credit", "lock", "paper_release"})
FUNDING_KINDS = frozenset({"deposit", "credit"})


Status = Literal["pending", "escrow_locked", "released", "refunded", "failed"]


class LedgerEvent(BaseModel):
    """One ledger line, validated: what ``verify`` and readers check every line against."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1, 2]
    seq: int = Field(ge=0)
    ts_us: int
    kind: EventKind
    mode: Optional[Literal["paper", "live"]] = None
    shard: Optional[int] = Field(default=None, ge=0)
    task_id: str = ""
    source_agent: str = ""
    target_agent: str = ""
    amount_usd: float = 0.0
    amount_micros: int = Field(default=0, ge=0)
    amount_tokens: float = 0.0
    status: Optional[Status] = None
    tx_signature: Optional[str] = None
    payer_wallet: Optional[str] = None
    nonce: str = ""
    settled_at: Optional[str] = None
    created_at: str = ""
    reason: Optional[str] = None
    proof_digest: Optional[str] = None
    torn_bytes: Optional[int] = Field(default=None, ge=1)
    from_shard: Optional[int] = Field(default=None, ge=0)  # a credit: where its release is
    from_seq: Optional[int] = Field(default=None, ge=0)
    hash: Optional[str] = Field(default=None, pattern=r"^[0-9a-f]{32}$")  # v1 (verify checks which format has what)
    first_seq: Optional[int] = Field(default=None, ge=0)  # v2, the last line of a batch
    lines: Optional[int] = Field(default=None, ge=1)
    seal: Optional[str] = Field(default=None, pattern=r"^[0-9a-f]{32}$")


#: The fields a line may hold as null, and so may leave out (v2 does): readers fill them with None.
NULLABLE_FIELDS = ("mode", "shard", "status", "tx_signature", "payer_wallet", "settled_at", "reason",
                   "proof_digest", "torn_bytes", "from_shard", "from_seq")
#: The fields that chain a line or seal a batch: the format's, not the event's.
CHAIN_FIELDS = ("hash", "first_seq", "lines", "seal")


def _dictionary() -> pa.DataType:
    """Strings stored once per row group and referenced by int32 codes."""
    return pa.dictionary(pa.int32(), pa.string())


#: The Parquet (and Arrow) schema of the ledger. ``day`` is the hive partition column.
ARROW_SCHEMA = pa.schema(
    [
        pa.field("v", pa.int16(), nullable=False),
        pa.field("seq", pa.int64(), nullable=False),
        pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("kind", _dictionary(), nullable=False),
        pa.field("mode", _dictionary()),
        pa.field("shard", pa.int32()),
        pa.field("task_id", pa.string()),
        pa.field("source_agent", _dictionary()),
        pa.field("target_agent", _dictionary()),
        pa.field("amount_micros", pa.int64(), nullable=False),
        pa.field("amount_usd", pa.decimal128(18, 6), nullable=False),
        pa.field("amount_tokens", pa.float64()),
        pa.field("status", _dictionary()),
        pa.field("reason", _dictionary()),
        pa.field("tx_signature", pa.string()),
        pa.field("payer_wallet", _dictionary()),
        pa.field("proof_digest", pa.string()),
        pa.field("nonce", pa.string()),
        pa.field("created_at", pa.timestamp("us", tz="UTC")),
        pa.field("settled_at", pa.timestamp("us", tz="UTC")),
        pa.field("torn_bytes", pa.int64()),
        pa.field("from_shard", pa.int32()),  # a credit's release: its partition and seq
        pa.field("from_seq", pa.int64()),
        pa.field("hash", pa.string()),  # v1: the line's hash; v2: the batch's seal on its last row, else null
    ],
    metadata={"tollmesh.schema_version": str(SCHEMA_VERSION)},
)
