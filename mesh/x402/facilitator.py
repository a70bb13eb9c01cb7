"""Facilitators: the SDK's, over the in-memory chain (offline), or an operator's over HTTP.

- :class:`LocalFacilitator`: the SDK's ``x402FacilitatorSync`` with its
  ``ExactEvmFacilitatorScheme`` on an :class:`~mesh.x402.chain.InMemoryChain`: it verifies
  and settles (``transferWithAuthorization``) exactly as a real facilitator does, with
  no network. Tests, demos and paper settlement use it.
- :class:`HttpFacilitator`: the SDK's ``HTTPFacilitatorClientSync`` for an operator's
  facilitator at ``url``, every request bounded by ``timeout_s``.
- :class:`FacilitatorVerifier`: a verifier (for ``set_x402_verifier``) that asks a
  facilitator to verify; it fails closed: a facilitator that is down or answers garbage
  is ``x402_error``, one that does not answer within ``timeout_s`` is ``x402_timeout``,
  never a pass. The checks a facilitator does not make (the call's price, its wallet,
  the replay of a nonce, which ``verify`` does not spend) are made here first.

>>> from mesh.x402.terms import PaymentTerms
>>> FacilitatorVerifier("http://127.0.0.1:9", PaymentTerms(pay_to="0x" + "22" * 20), timeout_s=0.5).timeout_s
0.5
"""

from __future__ import annotations

import threading
import time
from typing import Any, Optional

from mesh.core.clock import Clock, SystemClock
from mesh.core.errors import InvalidArgumentError
from mesh.core.records import Reason
from mesh.x402.chain import InMemoryChain
from mesh.x402.exact import DEFAULT_VALID_BEFORE_MARGIN_S, ExactEvmVerifier, Verdict
from mesh.x402.proof import ExactPayment, MalformedPayment, parse_payment
from mesh.x402.sdk import require_sdk
from mesh.x402.terms import PaymentTerms

DEFAULT_TIMEOUT_S = 5.0

#: The SDK's invalid reasons, as tollmesh's.
SDK_REASONS = {
    "invalid_exact_evm_payload_signature": Reason.X402_BAD_SIGNATURE,
    "invalid_exact_evm_failed_to_verify_signature": Reason.X402_BAD_SIGNATURE,
    "invalid_exact_evm_payload_recipient_mismatch": Reason.X402_WRONG_PAYEE,
    "invalid_exact_evm_payload_authorization_value_mismatch": Reason.X402_UNDERPAID,
    "invalid_exact_evm_payload_authorization_valid_before": Reason.X402_EXPIRED,
    "invalid_exact_evm_payload_authorization_valid_after": Reason.X402_NOT_YET_VALID,
    "invalid_exact_evm_nonce_already_used": Reason.X402_REPLAYED,
    "network_mismatch": Reason.X402_WRONG_NETWORK,
    "unsupported_scheme": Reason.X402_WRONG_SCHEME,
    "missing_eip712_domain": Reason.X402_WRONG_DOMAIN,
    "invalid_exact_evm_token_name_mismatch": Reason.X402_WRONG_DOMAIN,
    "invalid_exact_evm_token_version_mismatch": Reason.X402_WRONG_DOMAIN,
    "asset_not_deployed_contract": Reason.X402_WRONG_ASSET,
}


def settle_requirements(terms: PaymentTerms, payment: ExactPayment) -> Any:
    """The requirements a payment settles against: the terms, for the value it authorizes (the exact scheme)."""
    return terms.requirements(payment.value)


class LocalFacilitator:
    """The SDK's facilitator over an in-memory chain (see the module doc)."""

    def __init__(self, chain: InMemoryChain) -> None:
        require_sdk()
        from x402 import x402FacilitatorSync
        from x402.mechanisms.evm.exact import ExactEvmFacilitatorScheme

        self.chain = chain
        self.terms = chain.terms
        self.facilitator = x402FacilitatorSync()
        self.facilitator.register([chain.terms.network], ExactEvmFacilitatorScheme(chain))
        self.url = "memory"

    def verify(self, payment: ExactPayment) -> Any:
        return self.facilitator.verify(payment.payload, settle_requirements(self.terms, payment))

    def settle(self, payment: ExactPayment) -> Any:
        return self.facilitator.settle(payment.payload, settle_requirements(self.terms, payment))


class HttpFacilitator:
    """An operator's facilitator at ``url``, reached with the SDK's HTTP client (``timeout_s`` a request)."""

    def __init__(self, url: str, terms: PaymentTerms, *, timeout_s: float = DEFAULT_TIMEOUT_S, http_client: Any = None) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise InvalidArgumentError("url", url, "must be an http:// or https:// URL")
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not 0 < timeout_s <= 600:
            raise InvalidArgumentError("timeout_s", timeout_s, "must be a number of seconds above 0, at most 600")
        require_sdk()
        self.url, self.terms, self.timeout_s = url.rstrip("/"), terms, float(timeout_s)
        self._http_client = http_client
        self._local = threading.local()

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            from x402.http import FacilitatorConfig, HTTPFacilitatorClientSync

            client = HTTPFacilitatorClientSync(FacilitatorConfig(url=self.url, timeout=self.timeout_s,
                                                                 http_client=self._http_client))
            self._local.client = client
        return client

    def verify(self, payment: ExactPayment) -> Any:
        return self._client().verify(payment.payload, settle_requirements(self.terms, payment))

    def settle(self, payment: ExactPayment) -> Any:
        return self._client().settle(payment.payload, settle_requirements(self.terms, payment))

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "terms": self.terms, "timeout_s": self.timeout_s, "_http_client": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()


class FacilitatorVerifier(ExactEvmVerifier):
    """A verifier that asks a facilitator (see the module doc); the checks it makes itself run first."""

    def __init__(self, facilitator: str | HttpFacilitator | LocalFacilitator, terms: PaymentTerms, *,
                 timeout_s: float = DEFAULT_TIMEOUT_S, clock: Optional[Clock] = None,
                 valid_before_margin_s: int = DEFAULT_VALID_BEFORE_MARGIN_S) -> None:
        super().__init__(terms, clock=clock or SystemClock(), paper=True, valid_before_margin_s=valid_before_margin_s)
        self.facilitator = HttpFacilitator(facilitator, terms, timeout_s=timeout_s) if isinstance(facilitator, str) else facilitator
        self.timeout_s = getattr(self.facilitator, "timeout_s", timeout_s)

    @property
    def mode(self) -> str:
        return "live"

    def _verdict(self, task_id: str, wallet: Optional[str], signature: str, amount_micros: int) -> Verdict:
        try:
            payment = parse_payment(signature)
        except MalformedPayment as exc:
            return Verdict(Reason.X402_MALFORMED, str(exc))
        refusal = self._terms_refusal(payment, wallet, amount_micros) or self._window_refusal(payment)
        if refusal is not None:
            return Verdict(refusal[0], refusal[1], payment)
        answer = self._ask(payment)
        if isinstance(answer, Verdict):
            return answer
        return super()._verdict(task_id, wallet, signature, amount_micros)  # the replay guard, structural checks again

    def _ask(self, payment: ExactPayment) -> Optional[Verdict]:
        """None if the facilitator says the payment is valid, else the failing :class:`Verdict`."""
        started = time.monotonic()
        try:
            answer = self.facilitator.verify(payment)
        except Exception as exc:  # noqa: BLE001 - a facilitator down, slow or confused: fail closed
            timed_out = _is_timeout(exc) or time.monotonic() - started >= self.timeout_s
            reason = Reason.X402_TIMEOUT if timed_out else Reason.X402_ERROR
            return Verdict(reason, f"facilitator {getattr(self.facilitator, 'url', '?')}: {type(exc).__name__}: {exc}"[:300],
                           payment)
        if getattr(answer, "is_valid", None) is True:
            return None
        code = getattr(answer, "invalid_reason", None)
        return Verdict(SDK_REASONS.get(code, Reason.X402_REJECTED), f"facilitator: {code or 'invalid'}", payment)


def _is_timeout(exc: BaseException) -> bool:
    try:
        import httpx
    except ImportError:  # pragma: no cover - the SDK's [clients] extra brings it
        return False
    return isinstance(exc, httpx.TimeoutException)
