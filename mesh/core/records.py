"""The seed-compatible toll record, its statuses and the reasons a toll fails or is refunded.

A :class:`TollRecord` is an immutable snapshot (a named tuple, cheap to make on the
hot path): each state change makes a new one.
Money is stored as integer micros; ``amount_usd`` is derived for display and for
the seed's field of that name. A record may be built with ``amount_usd=`` as the seed's
records are (converted exactly, refused if it is not an exact amount):

>>> r = TollRecord("t1", "alice", "bob", amount_micros=10_000)
>>> r.amount_usd, r.status.value
(0.01, 'pending')
>>> TollRecord(task_id="t1", source_agent="a", target_agent="b", amount_usd=0.001, amount_tokens=0.0).amount_micros
1000
"""

from __future__ import annotations

import hashlib
from enum import Enum
from typing import Any, NamedTuple, Optional

from mesh.core.errors import InvalidArgumentError, InvalidTypeError
from mesh.core.money import UsdLike, check_micros, micros_to_usd, usd_to_micros

#: The wallet and signature a paper-mode charge records when none is given (the seed's value).
PAPER_WALLET = "paper_mode"


class SettlementStatus(str, Enum):
    """Where a toll stands. Only ESCROW_LOCKED moves, and only to RELEASED or REFUNDED."""

    PENDING = "pending"
    ESCROW_LOCKED = "escrow_locked"
    RELEASED = "released"
    REFUNDED = "refunded"
    FAILED = "failed"


class Reason(str, Enum):
    """Why a toll is FAILED, PENDING or REFUNDED."""

    OVER_DAILY_CAP = "over_daily_cap"
    INSUFFICIENT_FUNDS = "insufficient_funds"
    UNKNOWN_AGENT = "unknown_agent"
    X402_REJECTED = "x402_rejected"
    X402_ERROR = "x402_error"
    X402_TIMEOUT = "x402_timeout"
    PAYMENT_REQUIRED = "payment_required"
    ESCROW_TIMEOUT = "escrow_timeout"
    HANDLER_ERROR = "handler_error"
    REFUNDED_BY_CALLER = "refunded_by_caller"
    # The mesh's own reasons
    HANDLER_TIMEOUT = "handler_timeout"  # the target's handler ran past handler_timeout_s
    AGENT_UNAVAILABLE = "agent_unavailable"  # the actor hosting the target died during the call
    UNKNOWN_METHOD = "unknown_method"  # the target has no such public method
    PAYLOAD_TOO_LARGE = "payload_too_large"  # the payload is larger than max_payload_bytes
    SHARD_UNAVAILABLE = "shard_unavailable"  # the caller's budget shard could not be reached
    INVALID_MESSAGE = "invalid_message"  # a message of a batch failed its checks (an id...): not sent, not recorded
    # Why a signed x402 payment (the "exact" EVM scheme, see mesh.x402) was refused
    X402_MALFORMED = "x402_malformed"  # the PAYMENT-SIGNATURE value does not decode to an exact EVM payload
    X402_WRONG_SCHEME = "x402_wrong_scheme"  # not the "exact" scheme, or not x402 version 2
    X402_WRONG_NETWORK = "x402_wrong_network"  # signed for another chain than the quote's
    X402_WRONG_ASSET = "x402_wrong_asset"  # another token contract than the quote's
    X402_WRONG_DOMAIN = "x402_wrong_domain"  # the token's EIP-712 domain (name, version) is not the quote's
    X402_WRONG_PAYEE = "x402_wrong_payee"  # pays someone else than the quote's payTo
    X402_WRONG_PAYER = "x402_wrong_payer"  # the authorization's payer is not the wallet the call names
    X402_UNDERPAID = "x402_underpaid"  # authorizes less than the price
    X402_NOT_YET_VALID = "x402_not_yet_valid"  # validAfter is still in the future
    X402_EXPIRED = "x402_expired"  # validBefore has passed (or is about to)
    X402_BAD_SIGNATURE = "x402_bad_signature"  # the EIP-712 signature does not recover to the payer
    X402_REPLAYED = "x402_replayed"  # the authorization's nonce paid for another call already


class _TollRecordFields(NamedTuple):
    """The fields of a :class:`TollRecord`, in order (its wire and pickle form)."""

    task_id: str
    source_agent: str
    target_agent: str
    amount_micros: int = 0
    amount_tokens: float = 0.0
    status: SettlementStatus = SettlementStatus.PENDING
    tx_signature: Optional[str] = None
    payer_wallet: Optional[str] = None
    nonce: str = ""
    settled_at: Optional[str] = None
    created_at: str = ""
    reason: Optional[str] = None


class TollRecord(_TollRecordFields):
    """One toll: the seed's fields plus the exact amount and a reason. Immutable.

    Give the amount as ``amount_micros`` (int) or, as the seed does, ``amount_usd`` (keyword
    only; converted exactly, see :func:`~mesh.core.money.usd_to_micros`), not both. A float where
    the micros go (the seed's fourth positional field is ``amount_usd``) is refused.
    """

    __slots__ = ()

    def __new__(
        cls, task_id: str, source_agent: str, target_agent: str, amount_micros: Optional[int] = None,
        amount_tokens: float = 0.0, status: SettlementStatus = SettlementStatus.PENDING,
        tx_signature: Optional[str] = None, payer_wallet: Optional[str] = None, nonce: str = "",
        settled_at: Optional[str] = None, created_at: str = "", reason: Optional[str] = None,
        *, amount_usd: Optional[UsdLike] = None,
    ) -> TollRecord:
        if amount_usd is not None or amount_micros is None or amount_micros.__class__ is float:
            amount_micros = _amount_of(amount_micros, amount_usd)
        return tuple.__new__(cls, (task_id, source_agent, target_agent, amount_micros, amount_tokens, status,
                                   tx_signature, payer_wallet, nonce, settled_at, created_at, reason))

    @property
    def amount_usd(self) -> float:
        """The amount as a float of USD (display only; the truth is ``amount_micros``)."""
        return micros_to_usd(self.amount_micros)

    @property
    def settlement_hash(self) -> str:
        """The seed's short digest of the record's identity."""
        raw = f"{self.task_id}:{self.nonce}:{self.tx_signature}:{self.created_at}"
        return hashlib.sha256(raw.encode()).hexdigest()[:16]

    def __reduce__(self) -> tuple:
        """Pickle the status as its text: 4x faster than pickling the enum member (records cross Ray a lot)."""
        return (_record_from_fields, (*self[:5], self.status.value, *self[6:]))

    def evolve(self, **changes: Any) -> TollRecord:
        """A copy of this record with ``changes`` applied."""
        return self._replace(**changes)

    def moved_to(
        self, status: SettlementStatus, *, settled_at: Optional[str] = None, reason: Optional[str] = None
    ) -> TollRecord:
        """A copy in ``status`` (the hot path's faster :meth:`evolve`)."""
        return _new(TollRecord, (
            self.task_id, self.source_agent, self.target_agent, self.amount_micros, self.amount_tokens,
            status, self.tx_signature, self.payer_wallet, self.nonce, settled_at, self.created_at, reason,
        ))

    def to_dict(self) -> dict[str, Any]:
        """The seed's dict of the record, plus ``amount_micros`` and ``reason``."""
        return {
            "task_id": self.task_id,
            "source_agent": self.source_agent,
            "target_agent": self.target_agent,
            "amount_usd": self.amount_usd,
            "amount_micros": self.amount_micros,
            "amount_tokens": self.amount_tokens,
            "status": self.status.value,
            "tx_signature": self.tx_signature,
            "payer_wallet": self.payer_wallet,
            "nonce": self.nonce,
            "settled_at": self.settled_at,
            "created_at": self.created_at,
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TollRecord:
        """Build a record from :meth:`to_dict` output or a seed ledger line.

        ``amount_micros`` wins when present; otherwise ``amount_usd`` is converted exactly.
        """
        get = data.get
        if "amount_micros" in data:
            amount_micros = check_micros(data["amount_micros"])
        else:
            amount_micros = usd_to_micros(get("amount_usd", 0))
        return cls(
            data["task_id"], data["source_agent"], data["target_agent"], amount_micros, get("amount_tokens", 0.0),
            status_of(get("status", "pending")), get("tx_signature"), get("payer_wallet"), get("nonce", ""),
            get("settled_at"), get("created_at", ""), get("reason"),
        )


_STATUS_BY_VALUE = {status.value: status for status in SettlementStatus}
_new = tuple.__new__  # the hot path's constructor, for fields already checked (skips TollRecord.__new__)


def _amount_of(amount_micros: Any, amount_usd: Optional[UsdLike]) -> int:
    """The micros of a record built with ``amount_usd`` or without an amount (0); a float of micros refused."""
    if amount_usd is not None:
        if amount_micros is not None:
            raise InvalidArgumentError("amount_usd", amount_usd, "give amount_usd or amount_micros, not both")
        return usd_to_micros(amount_usd)
    if amount_micros is None:
        return 0
    raise InvalidTypeError("amount_micros", amount_micros, "an int of micro-USD (for USD, pass amount_usd=)")


def status_of(value: str) -> SettlementStatus:
    """The status named ``value`` (a dict lookup on the hot path; ValueError for an unknown one)."""
    status = _STATUS_BY_VALUE.get(value)
    return status if status is not None else SettlementStatus(value)


def _record_from_fields(*fields: Any) -> TollRecord:
    """Rebuild a pickled :class:`TollRecord` (see ``TollRecord.__reduce__``)."""
    return _new(TollRecord, (*fields[:5], _STATUS_BY_VALUE[fields[5]], *fields[6:]))


def record_to_wire(record: Optional[TollRecord]) -> Optional[tuple]:
    """A plain tuple of the record's fields (status as text): the cheapest form to send between actors."""
    return None if record is None else (*record[:5], record.status.value, *record[6:])


def record_from_wire(fields: Optional[tuple]) -> Optional[TollRecord]:
    """The record :func:`record_to_wire` sent."""
    return None if fields is None else _new(TollRecord, (*fields[:5], _STATUS_BY_VALUE[fields[5]], *fields[6:]))
