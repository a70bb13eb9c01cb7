"""A ``PAYMENT-SIGNATURE`` value read into the fields of an "exact" EVM payment, or refused.

The header is decoded by the SDK (:func:`x402.http.utils.decode_payment_signature_header`:
base64 JSON into its ``PaymentPayload`` model), then every field of the EIP-3009
authorization is checked for shape: addresses of 20 bytes, uint256 numbers, a 32-byte
nonce, a 65-byte signature. Anything else is :class:`MalformedPayment` with what is wrong.

>>> parse_payment("not base64 at all!")
Traceback (most recent call last):
...
mesh.x402.proof.MalformedPayment: PAYMENT-SIGNATURE is not base64 JSON of an x402 payload
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass
from typing import Any

from mesh.core.ids import MAX_PAYMENT_FIELD_CHARS
from mesh.x402.digest import UINT256_MAX
from mesh.x402.sdk import require_sdk


class MalformedPayment(ValueError):
    """The payment does not decode to an exact EVM payload (its message says why)."""


@dataclass(frozen=True)
class ExactPayment:
    """The fields of one signed payment (addresses as 20 bytes, checksummed text for display)."""

    x402_version: int
    scheme: str
    network: str
    asset: str  # what the payer accepted: the quote's fields, as the payload repeats them
    pay_to: str
    accepted_amount: str
    token_name: Any
    token_version: Any
    payer: str  # the authorization: what is signed
    payer_bytes: bytes
    payee_bytes: bytes
    value: int
    valid_after: int
    valid_before: int
    nonce: bytes
    signature: bytes
    payload: Any  # the SDK's PaymentPayload (for a facilitator)

    @property
    def nonce_hex(self) -> str:
        return "0x" + self.nonce.hex()


def parse_payment(header: Any) -> ExactPayment:
    """The payment in a ``PAYMENT-SIGNATURE`` value (see the module doc)."""
    require_sdk()
    from x402.http.utils import decode_payment_signature_header
    from x402.schemas import PaymentPayload

    if not isinstance(header, str) or not header:
        raise MalformedPayment("PAYMENT-SIGNATURE is empty")
    if len(header) > MAX_PAYMENT_FIELD_CHARS:
        raise MalformedPayment(f"PAYMENT-SIGNATURE is longer than {MAX_PAYMENT_FIELD_CHARS} characters")
    try:
        payload = decode_payment_signature_header(header)
    except (ValueError, binascii.Error, UnicodeDecodeError, TypeError):
        raise MalformedPayment("PAYMENT-SIGNATURE is not base64 JSON of an x402 payload") from None
    if not isinstance(payload, PaymentPayload):
        return _v1(payload)
    inner = payload.payload
    authorization = inner.get("authorization") if isinstance(inner, dict) else None
    if not isinstance(authorization, dict):
        raise MalformedPayment("the payload holds no EIP-3009 authorization (payload.authorization)")
    accepted = payload.accepted
    extra = accepted.extra or {}
    payer = _text(authorization, "from")
    return ExactPayment(
        x402_version=payload.x402_version, scheme=accepted.scheme, network=str(accepted.network),
        asset=accepted.asset, pay_to=accepted.pay_to, accepted_amount=accepted.amount,
        token_name=extra.get("name"), token_version=extra.get("version"),
        payer=payer, payer_bytes=_address(payer, "from"), payee_bytes=_address(_text(authorization, "to"), "to"),
        value=_uint(authorization, "value"), valid_after=_uint(authorization, "validAfter"),
        valid_before=_uint(authorization, "validBefore"), nonce=_hex_bytes(_text(authorization, "nonce"), "nonce", 32),
        signature=_hex_bytes(_text(inner, "signature"), "signature", 65), payload=payload,
    )


def _v1(payload: Any) -> ExactPayment:
    raise MalformedPayment(f"x402 version {payload.x402_version} payload: this payee speaks x402 version 2")


def _text(fields: dict, name: str) -> str:
    value = fields.get(name)
    if not isinstance(value, str) or not value:
        raise MalformedPayment(f"authorization field {name!r} is missing or not text")
    return value


def _hex_bytes(text: str, name: str, size: int) -> bytes:
    if not text.startswith("0x"):
        raise MalformedPayment(f"{name} must be 0x-prefixed hex")
    try:
        value = bytes.fromhex(text[2:])
    except ValueError:
        raise MalformedPayment(f"{name} is not hex") from None
    if len(value) != size:
        raise MalformedPayment(f"{name} must be {size} bytes, not {len(value)}")
    return value


def _address(text: str, name: str) -> bytes:
    return _hex_bytes(text, name, 20)


def _uint(fields: dict, name: str) -> int:
    text = _text(fields, name)
    if not text.isdigit() or not text.isascii():
        raise MalformedPayment(f"{name} must be a decimal integer, not {text[:40]!r}")
    value = int(text)
    if value > UINT256_MAX:
        raise MalformedPayment(f"{name} does not fit a uint256")
    return value
