"""A payer's local key: it signs x402 "exact" EVM payments (EIP-3009 authorizations).

:class:`PayingWallet` builds the authorization a quote asks for (payer, payee, value, the
validity window, a 32-byte nonce), signs its EIP-712 digest, and wraps it in the SDK's
``PaymentPayload`` encoded as a ``PAYMENT-SIGNATURE`` value: what the official client
(``x402Client`` with ``ExactEvmClientScheme``) sends, but with the window and the nonce
given by the caller, so a simulation on a manual clock signs the same bytes every run.
A mesh agent that holds one pays its calls by signing (``Message(..., payer_wallet=w.address,
tx_signature=w.pay(...))``).

>>> from mesh.x402.terms import PaymentTerms
>>> wallet = PayingWallet.derived(7, "client-1")
>>> wallet.address == PayingWallet.derived(7, "client-1").address, wallet.address.startswith("0x")
(True, True)
>>> header = wallet.pay(PaymentTerms(pay_to="0x" + "22" * 20), 1_000, now_s=1_767_225_600, nonce=b"\\x07" * 32)
>>> header == wallet.pay(PaymentTerms(pay_to="0x" + "22" * 20), 1_000, now_s=1_767_225_600, nonce=b"\\x07" * 32)
True
"""

from __future__ import annotations

import os
import time
from typing import Any, Optional

from mesh.core.errors import InvalidArgumentError
from mesh.core.money import check_micros
from mesh.x402.digest import authorization_digest, domain_separator
from mesh.x402.recover import Signer
from mesh.x402.sdk import require_sdk
from mesh.x402.terms import PaymentTerms

require_sdk()
from eth_utils import keccak, to_checksum_address  # noqa: E402


class PayingWallet:
    """A local key that pays by signing (see the module doc). ``private_key``: 32 bytes or 0x-hex."""

    __slots__ = ("_signer", "address", "sign_cpu_s", "signed")

    def __init__(self, private_key: bytes | str, *, backend: Optional[str] = None) -> None:
        if isinstance(private_key, str):
            try:
                private_key = bytes.fromhex(private_key.removeprefix("0x"))
            except ValueError:
                raise InvalidArgumentError("private_key", "<hidden>", "must be 32 bytes of 0x-hex") from None
        self._signer = Signer(private_key, backend)
        self.address: str = to_checksum_address(self._signer.address_bytes)
        self.sign_cpu_s = 0.0  # CPU seconds spent signing (a simulation reports its share)
        self.signed = 0

    @classmethod
    def derived(cls, seed: int, name: str, *, backend: Optional[str] = None) -> PayingWallet:
        """A wallet whose key is derived from a seed and a name: the same every run (simulations, tests)."""
        return cls(keccak(text=f"tollmesh-x402-wallet:{seed}:{name}"), backend=backend)

    @classmethod
    def generate(cls) -> PayingWallet:
        """A wallet with a fresh random key."""
        return cls(os.urandom(32))

    def pay(self, terms: PaymentTerms, amount_micros: int, *, now_s: float, nonce: Optional[bytes] = None,
            valid_for_s: Optional[int] = None, valid_after_s: Optional[int] = None, pay_to: Optional[str] = None,
            url: Optional[str] = None) -> str:
        """A ``PAYMENT-SIGNATURE`` value paying ``amount_micros`` under ``terms``, valid from ``now_s``
        (or ``valid_after_s``) for ``valid_for_s`` (default: the terms' ``max_timeout_s``).

        ``nonce``: 32 bytes (default random). ``pay_to`` overrides the payee (tests of a wrong one).
        """
        from x402.http.utils import encode_payment_signature_header
        from x402.schemas import PaymentPayload, ResourceInfo

        check_micros(amount_micros, field="amount_micros")
        nonce = os.urandom(32) if nonce is None else nonce
        if not isinstance(nonce, bytes) or len(nonce) != 32:
            raise InvalidArgumentError("nonce", nonce, "must be 32 bytes")
        valid_after = int(now_s) - 1 if valid_after_s is None else valid_after_s  # a second of slack for the payee's clock
        valid_before = int(now_s) + (terms.max_timeout_s if valid_for_s is None else valid_for_s)
        payee = terms.pay_to if pay_to is None else to_checksum_address(pay_to)
        started = time.thread_time()
        separator = domain_separator(terms.token_name, terms.token_version, terms.chain_id, terms.asset)
        digest = authorization_digest(separator, self._signer.address_bytes, bytes.fromhex(payee[2:]), amount_micros,
                                      max(valid_after, 0), valid_before, nonce)
        signature = self._signer.sign(digest)
        self.sign_cpu_s += time.thread_time() - started
        self.signed += 1
        accepted = terms.requirements(amount_micros)
        authorization = {
            "from": self.address, "to": payee, "value": str(amount_micros), "validAfter": str(max(valid_after, 0)),
            "validBefore": str(valid_before), "nonce": "0x" + nonce.hex(),
        }
        payload = PaymentPayload(
            x402_version=2, payload={"authorization": authorization, "signature": "0x" + signature.hex()},
            accepted=accepted, resource=None if url is None else ResourceInfo(url=url),
        )
        return encode_payment_signature_header(payload)

    def __repr__(self) -> str:  # never the key
        return f"PayingWallet({self.address})"

    def __reduce__(self) -> Any:
        raise TypeError("a PayingWallet holds a private key: it is not pickled (derive it where it is used)")
