"""Offline verification of x402 "exact" EVM payments (EIP-3009), usable as the booth's and the mesh's verifier.

:class:`ExactEvmVerifier` checks a ``PAYMENT-SIGNATURE`` value against the payee's
:class:`~mesh.x402.terms.PaymentTerms` and a price, with no chain and no facilitator:

1. it decodes to an x402 v2 "exact" payload (``x402_malformed``, ``x402_wrong_scheme``);
2. network, token and its EIP-712 domain are the quote's (``x402_wrong_network``,
   ``x402_wrong_asset``, ``x402_wrong_domain``); it pays ``pay_to`` (``x402_wrong_payee``),
   from the wallet the call names (``x402_wrong_payer``), at least the price (``x402_underpaid``);
3. ``validAfter <= now < validBefore - valid_before_margin_s`` on the verifier's clock
   (``x402_not_yet_valid``, ``x402_expired``): the injectable clock of a booth or a mesh;
4. the signer recovered from the EIP-712 signature is the payer (``x402_bad_signature``);
5. its nonce paid for no other call (``x402_replayed``): the payment is then bound to this
   call (:class:`~mesh.x402.nonces.NonceBook`), and a booth or mesh given this verifier
   learns the payments its ledger already spent (:meth:`restore_from_ledger`), so a replay
   is refused after a restart too.

``paper=True`` skips step 4 (structural checks only): a paper payee never settles, so no
funds move; :attr:`mode` says ``paper`` and the gateway's answers and settlement records say so.

As the seed's hook, ``verifier(wallet, signature, amount_usd)`` answers True or False; the
booth and the mesh ask :meth:`check_payment` / :meth:`check_payments` instead, which name the reason.

>>> from mesh.x402.wallet import PayingWallet
>>> terms = PaymentTerms(pay_to="0x2222222222222222222222222222222222222222")
>>> clock = ManualClock(1_767_225_600.0)
>>> verifier = ExactEvmVerifier(terms, clock=clock)
>>> payer = PayingWallet(b"\\x11" * 32)
>>> header = payer.pay(terms, 1_000, now_s=clock.now_s(), nonce=b"\\x01" * 32)
>>> verifier.check_payment("t1", payer.address, header, 1_000) is None
True
>>> verifier.check_payment("t2", payer.address, header, 1_000).value
'x402_replayed'
>>> verifier.check_payment("t3", payer.address, payer.pay(terms, 999, now_s=clock.now_s()), 1_000).value
'x402_underpaid'
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from mesh.core.clock import Clock, ManualClock, SystemClock  # noqa: F401 - ManualClock: the doc's example
from mesh.core.errors import InvalidArgumentError, InvalidTypeError
from mesh.core.records import Reason
from mesh.x402.digest import authorization_digest, domain_separator
from mesh.x402.nonces import DEFAULT_MAX_ENTRIES, NonceBook, NonceBookFull
from mesh.x402.proof import ExactPayment, MalformedPayment, parse_payment
from mesh.x402.recover import check_backend, recover_address
from mesh.x402.terms import PaymentTerms

_anonymous = itertools.count()
DEFAULT_VALID_BEFORE_MARGIN_S = 6  # the SDK's facilitator refuses a payment this close to its end: so do we


@dataclass(frozen=True)
class Verdict:
    """What :meth:`ExactEvmVerifier.explain` found: ``reason`` None when the payment verified."""

    reason: Optional[Reason]
    detail: str
    payment: Optional[ExactPayment] = None

    @property
    def ok(self) -> bool:
        return self.reason is None


class ExactEvmVerifier:
    """See the module doc. ``backend``: ``coincurve`` or ``eth-keys`` for signer recovery (default: the faster installed)."""

    def __init__(
        self, terms: PaymentTerms, *, clock: Optional[Clock] = None, paper: bool = False, backend: Optional[str] = None,
        valid_before_margin_s: int = DEFAULT_VALID_BEFORE_MARGIN_S, max_nonces: int = DEFAULT_MAX_ENTRIES,
    ) -> None:
        if not isinstance(terms, PaymentTerms):
            raise InvalidTypeError("terms", terms, "a mesh.x402.PaymentTerms")
        if not isinstance(paper, bool):
            raise InvalidTypeError("paper", paper, "a bool")
        if isinstance(valid_before_margin_s, bool) or not isinstance(valid_before_margin_s, int) or not 0 <= valid_before_margin_s <= 3_600:
            raise InvalidArgumentError("valid_before_margin_s", valid_before_margin_s, "must be an int of 0 to 3600 seconds")
        self.terms = terms
        self.paper = paper
        self.backend = check_backend(backend)
        self.valid_before_margin_s = valid_before_margin_s
        self.nonces = NonceBook(max_nonces)
        self._clock: Clock = clock or SystemClock()
        self._now_s: Callable[[], float] = self._clock.now_s
        self._separator = domain_separator(terms.token_name, terms.token_version, terms.chain_id, terms.asset)
        self._pay_to = bytes.fromhex(terms.pay_to[2:])
        self._counts_lock = threading.Lock()
        self._checked = 0
        self._cpu_s = 0.0

    @property
    def mode(self) -> str:
        """``paper`` (structural checks only, no funds ever move) or ``live``."""
        return "paper" if self.paper else "live"

    # -- wiring: the booth and the mesh call these -------------------------------------------

    def bind_clock(self, now_s: Callable[[], float]) -> None:
        """Judge validity windows on ``now_s()`` (the mesh binds its own clock, manual in simulations)."""
        if not callable(now_s):
            raise InvalidTypeError("now_s", now_s, "a callable returning Unix seconds")
        self._now_s = now_s

    def restore_from_ledger(self, ledger: Path | str) -> int:
        """Learn which payments the ledger already spent (see the module doc); how many still valid."""
        return self.nonces.restore(ledger, now_s=self._now_s())

    # -- checks -------------------------------------------------------------------------------

    def __call__(self, wallet: str, signature: str, amount_usd: float) -> bool:
        """The seed's hook: whether the payment verifies for ``amount_usd`` (a nonce pays once, whatever the call)."""
        from mesh.core.money import usd_to_micros

        return self.check_payment("", wallet, signature, usd_to_micros(amount_usd)) is None

    def check_payment(self, task_id: str, wallet: str, signature: str, amount_micros: int) -> Optional[Reason]:
        """None if the payment verifies for this call (and binds it to ``task_id``; none given: a call
        of its own, so any second use is a replay), else why not."""
        return self.explain(task_id, wallet, signature, amount_micros).reason

    def check_payments(self, items: list[tuple[str, str, str, int]]) -> list[Optional[Reason]]:
        """:meth:`check_payment` for a batch of ``(task_id, wallet, signature, amount_micros)``, in order."""
        return [self.explain(*item).reason for item in items]

    def explain(self, task_id: str, wallet: Optional[str], signature: str, amount_micros: int) -> Verdict:
        """The :class:`Verdict` on one payment, with a sentence on what was wrong."""
        started = time.thread_time()
        if not task_id:
            task_id = f"x402-anonymous-{next(_anonymous)}"
        try:
            return self._verdict(task_id, wallet, signature, amount_micros)
        finally:
            with self._counts_lock:
                self._checked += 1
                self._cpu_s += time.thread_time() - started

    def stats(self) -> dict[str, Any]:
        """How many payments were checked and the CPU seconds that took (recovery included)."""
        with self._counts_lock:
            return {"checked": self._checked, "cpu_s": self._cpu_s, "nonces": len(self.nonces), "mode": self.mode,
                    "backend": self.backend}

    def _verdict(self, task_id: str, wallet: Optional[str], signature: str, amount_micros: int) -> Verdict:
        try:
            payment = parse_payment(signature)
        except MalformedPayment as exc:
            return Verdict(Reason.X402_MALFORMED, str(exc))
        refusal = self._terms_refusal(payment, wallet, amount_micros) or self._window_refusal(payment)
        if refusal is not None:
            return Verdict(refusal[0], refusal[1], payment)
        if not self.paper:
            digest = authorization_digest(self._separator, payment.payer_bytes, payment.payee_bytes, payment.value,
                                          payment.valid_after, payment.valid_before, payment.nonce)
            if recover_address(digest, payment.signature, self.backend) != payment.payer_bytes:
                return Verdict(Reason.X402_BAD_SIGNATURE, "the signature does not recover to the payer", payment)
        key = (self.terms.network.lower(), self.terms.asset.lower(), payment.payer.lower(), payment.nonce_hex.lower())
        try:
            fresh = self.nonces.claim(key, task_id, payment.valid_before, self._now_s())
        except NonceBookFull as exc:
            return Verdict(Reason.X402_ERROR, str(exc), payment)
        if not fresh:
            return Verdict(Reason.X402_REPLAYED, f"nonce {payment.nonce_hex[:18]}... paid for another call already", payment)
        return Verdict(None, "verified" if not self.paper else "paper mode: structural checks only, signature not recovered",
                       payment)

    def _terms_refusal(self, p: ExactPayment, wallet: Optional[str], amount_micros: int) -> Optional[tuple[Reason, str]]:
        t = self.terms
        if p.x402_version != 2 or p.scheme != "exact":
            return Reason.X402_WRONG_SCHEME, f"scheme {p.scheme!r} of x402 v{p.x402_version}; the quote is 'exact', v2"
        if p.network != t.network:
            return Reason.X402_WRONG_NETWORK, f"signed for {p.network}; the quote is for {t.network}"
        if not isinstance(p.asset, str) or p.asset.lower() != t.asset.lower():
            return Reason.X402_WRONG_ASSET, f"token {p.asset}; the quote is for {t.asset}"
        if (p.token_name, p.token_version) != (t.token_name, t.token_version):
            return Reason.X402_WRONG_DOMAIN, (f"EIP-712 domain {p.token_name!r} v{p.token_version!r}; the token's is "
                                              f"{t.token_name!r} v{t.token_version!r}")
        if p.payee_bytes != self._pay_to or not isinstance(p.pay_to, str) or p.pay_to.lower() != t.pay_to.lower():
            return Reason.X402_WRONG_PAYEE, f"pays 0x{p.payee_bytes.hex()}; the quote's payTo is {t.pay_to}"
        if wallet and wallet.lower() != p.payer.lower():
            return Reason.X402_WRONG_PAYER, f"signed by {p.payer}, not by the call's wallet {wallet}"
        if p.value < amount_micros:
            return Reason.X402_UNDERPAID, f"authorizes {p.value} atomic units; the price is {amount_micros}"
        return None

    def _window_refusal(self, p: ExactPayment) -> Optional[tuple[Reason, str]]:
        now_s = self._now_s()
        if p.valid_after > now_s:
            return Reason.X402_NOT_YET_VALID, f"valid after {p.valid_after}; it is {int(now_s)}"
        if p.valid_before - self.valid_before_margin_s <= now_s:
            return Reason.X402_EXPIRED, (f"valid before {p.valid_before}; it is {int(now_s)} "
                                         f"(a payment must have {self.valid_before_margin_s} s left)")
        return None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_counts_lock")
        if state["_now_s"] != getattr(self._clock, "now_s", None):
            state["_now_s"] = None  # a bound clock belongs to its process: the receiver binds its own
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._counts_lock = threading.Lock()
        if self._now_s is None:
            self._now_s = self._clock.now_s
