"""The x402 payments a ledger holds: which signed authorization (payer, nonce) paid for which call.

A call paid with an x402 "exact" EVM payment carries the ``PAYMENT-SIGNATURE`` value (base64
JSON) as its ``tx_signature``. This module reads just enough of it, with no SDK, for the
ledger's own passes: the authorization's identity (chain, token, payer, nonce), which may pay
for one call only, and its validity. ``ledger verify`` flags a nonce that two calls used;
a verifier restarted on a ledger learns which nonces are spent (:func:`spent_payments`).

A payment is *spent* by every event that carries it, except a refusal of the payment
itself (a ``reject`` whose reason is ``x402_*``): once a payment verified it is bound to its
call, even if the lock was then refused (over the cap, say).

>>> import base64, json
>>> header = base64.b64encode(json.dumps({"x402Version": 2, "payload": {"authorization": {
...     "from": "0xAA", "to": "0xBB", "value": "5", "validAfter": "0", "validBefore": "9",
...     "nonce": "0x01"}, "signature": "0x02"}, "accepted": {"network": "eip155:1", "asset": "0xCC"}}).encode()).decode()
>>> payment_key(header)
('eip155:1', '0xcc', '0xaa', '0x01')
>>> payment_key("paper_mode") is None
True
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import orjson

from ledger.partitions import families
from ledger.reader import iter_lines

#: (network, token contract, payer, nonce), lower-case: an EIP-3009 authorization pays once.
PaymentKey = tuple[str, str, str, str]
_BASE64_JSON_OBJECT = "eyJ"  # what base64 of '{"' starts with: the cheap first test


@dataclass(frozen=True)
class PaymentOf:
    """One spent payment: its key, the call it paid for, until when it was valid (Unix seconds)."""

    key: PaymentKey
    task_id: str
    valid_before_s: int


def decode_payment(tx_signature: Any) -> Optional[dict[str, Any]]:
    """The x402 payload a ``tx_signature`` holds (a dict), or None when it holds none."""
    if not isinstance(tx_signature, str) or not tx_signature.startswith(_BASE64_JSON_OBJECT):
        return None
    try:
        value = orjson.loads(base64.b64decode(tx_signature, validate=True))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        return None
    return value if isinstance(value, dict) and "x402Version" in value else None


def payment_key(tx_signature: Any) -> Optional[PaymentKey]:
    """The authorization a ``tx_signature`` holds, as a :data:`PaymentKey`, or None."""
    found = _key_and_deadline(decode_payment(tx_signature))
    return None if found is None else found[0]


def _key_and_deadline(payload: Optional[dict[str, Any]]) -> Optional[tuple[PaymentKey, int]]:
    if payload is None:
        return None
    inner, accepted = payload.get("payload"), payload.get("accepted")
    authorization = inner.get("authorization") if isinstance(inner, dict) else None
    if not isinstance(authorization, dict) or not isinstance(accepted, dict):
        return None
    parts = (accepted.get("network"), accepted.get("asset"), authorization.get("from"), authorization.get("nonce"))
    if not all(isinstance(p, str) for p in parts):
        return None
    before = authorization.get("validBefore")
    deadline = int(before) if isinstance(before, str) and before.isdigit() else 0
    return tuple(p.lower() for p in parts), deadline  # type: ignore[return-value]


def spends_payment(event: dict[str, Any]) -> bool:
    """Whether ``event`` spends the payment it carries (see the module doc)."""
    if not event.get("tx_signature") or not event.get("task_id"):
        return False
    reason = event.get("reason")
    return not (event.get("kind") == "reject" and isinstance(reason, str) and reason.startswith("x402_"))


def payment_of(event: dict[str, Any]) -> Optional[PaymentOf]:
    """The payment ``event`` spends, or None."""
    if not spends_payment(event):
        return None
    found = _key_and_deadline(decode_payment(event["tx_signature"]))
    return None if found is None else PaymentOf(found[0], event["task_id"], found[1])


def spent_payments(ledger: Path | str, *, valid_after_s: float = 0) -> Iterator[PaymentOf]:
    """Every payment the ledger's events spent, once per call, whose ``validBefore`` is past ``valid_after_s``
    (an expired authorization is refused as expired anyway: it need not be remembered)."""
    seen: set[tuple[PaymentKey, str]] = set()
    lines = (line for files in families(ledger, missing_ok=True) for line in iter_lines(files))  # no ledger yet: none spent
    for line in lines:
        event = line.event
        if event is None or not event.get("tx_signature"):
            continue
        spent = payment_of(event)
        if spent is None or spent.valid_before_s <= valid_after_s or (spent.key, spent.task_id) in seen:
            continue
        seen.add((spent.key, spent.task_id))
        yield spent
