"""Settlement against payments: a released toll paid with a signed authorization is settled by that payment.

A call paid with an x402 "exact" payment carries the payer's EIP-3009 authorization; once
its toll is **released**, the payee runs it (``transferWithAuthorization``) through a
facilitator: the SDK's over the in-memory chain (:class:`~mesh.x402.facilitator.LocalFacilitator`,
offline) or an operator's over HTTP. A **refunded** toll is never settled: its
authorization is simply never run. Paper mode settles nothing and says so.

Every settlement attempt is a line of ``<ledger stem>.payments.jsonl`` beside the ledger
(:class:`PaymentsLog`): the task id, payer, payee, value, nonce, transaction hash, mode and
outcome. :func:`settle_ledger` (``tollmesh ledger settle``) settles the released, paid
tolls the log does not hold as settled yet, and nets the rest (:func:`mesh.booth.settlement.settle`).

>>> import tempfile, pathlib
>>> log = PaymentsLog(pathlib.Path(tempfile.mkdtemp()) / "toll_ledger.jsonl")
>>> log.append({"task_id": "t1", "success": True})
>>> sorted(log.settled_task_ids())
['t1']
"""

from __future__ import annotations

import fcntl
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import orjson

from ledger.events import proof_digest
from ledger.files import PAYMENTS_SUFFIX
from ledger.payments import decode_payment
from ledger.partitions import families, ledger_name
from ledger.reader import event_lines
from ledger.verify import VerifyResult, verified, verified_events
from mesh.core.money import UsdLike
from mesh.core.records import Reason
from mesh.booth.settlement import DEFAULT_MINIMUM_USD, SettlementResult, settle as net
from mesh.x402.proof import ExactPayment, MalformedPayment, parse_payment

PAPER_NOTE = "paper mode: structural checks only, no funds moved"


class PaymentsLog:
    """The settlements of x402-paid calls, one JSON line each, beside the ledger (append-only, locked)."""

    def __init__(self, ledger_path: Path | str) -> None:
        first = ledger_name(ledger_path)
        self.path = first.with_name(first.stem + PAYMENTS_SUFFIX)
        self._lock = threading.Lock()

    def append(self, record: dict[str, Any]) -> None:
        line = orjson.dumps(record) + b"\n"
        with self._lock, open(self.path, "ab") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.write(line)
            f.flush()

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        records = []
        for raw in self.path.read_bytes().splitlines():
            try:
                value = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue  # a torn last line: that attempt is tried again
            if isinstance(value, dict):
                records.append(value)
        return records

    def settled_task_ids(self) -> set[str]:
        """Task ids whose payment was settled (successfully, or in paper mode)."""
        return {r["task_id"] for r in self.read() if r.get("success") and "task_id" in r}


class PaymentSettler:
    """Settles each released, paid call through ``facilitator`` (None: paper mode) and logs the attempt."""

    def __init__(self, log: PaymentsLog, facilitator: Any = None) -> None:
        self.log = log
        self.facilitator = facilitator
        self.paper = facilitator is None

    @property
    def via(self) -> str:
        return "paper" if self.paper else str(getattr(self.facilitator, "url", "facilitator"))

    def settle(self, task_id: str, payment: ExactPayment, header: str) -> Any:
        """Settle one call's payment; the SDK's ``SettleResponse`` (the gateway's ``PAYMENT-RESPONSE``)."""
        from x402.schemas import SettleResponse

        if self.paper:
            answer = SettleResponse(success=True, transaction="", network=payment.network, payer=payment.payer,
                                    amount=str(payment.value), extra={"mode": "paper", "note": PAPER_NOTE})
        else:
            try:
                answer = self.facilitator.settle(payment)
            except Exception as exc:  # noqa: BLE001 - a facilitator down or slow: not settled, said so
                answer = SettleResponse(success=False, error_reason="settle_unavailable",
                                        error_message=f"{type(exc).__name__}: {exc}"[:300], transaction="",
                                        network=payment.network, payer=payment.payer)
        self.log.append(_record(task_id, payment, header, answer, self.via, "paper" if self.paper else "live"))
        return answer


def _record(task_id: str, payment: ExactPayment, header: str, answer: Any, via: str, mode: str) -> dict[str, Any]:
    return {
        "task_id": task_id, "success": bool(answer.success), "mode": mode, "via": via,
        "transaction": answer.transaction or None, "error_reason": answer.error_reason,
        "network": payment.network, "asset": payment.asset, "payer": payment.payer,
        "pay_to": "0x" + payment.payee_bytes.hex(), "value": payment.value, "nonce": payment.nonce_hex,
        "proof_digest": proof_digest(header), "settled_at": datetime.now(timezone.utc).isoformat(),
        **({"note": PAPER_NOTE} if mode == "paper" else {}),
    }


@dataclass
class LedgerSettlement:
    """What :func:`settle_ledger` did: by payment (settled now, before, failed) and by netting."""

    paid_released: int = 0
    settled_now: list[dict[str, Any]] = field(default_factory=list)
    settled_before: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    refunded_paid: int = 0  # paid calls refunded: their authorizations are never run
    by_payment_micros: int = 0
    netting: Optional[SettlementResult] = None
    via: str = "paper"

    @property
    def ok(self) -> bool:
        return not self.failed


def settle_ledger(ledger: Path | str, settler: PaymentSettler, *, paper_netting: bool = True,
                  minimum_usd: UsdLike = DEFAULT_MINIMUM_USD) -> LedgerSettlement:
    """Settle the ledger's released, paid calls by their payments, then net the rest (see the module doc).

    The ledger is verified first (:func:`ledger.verify.verified`): one that fails is settled in no way.
    """
    result = LedgerSettlement(via=settler.via)
    checked = verified(ledger)
    paid, refunded = _paid_calls(ledger, checked)
    result.paid_released, result.refunded_paid = len(paid), refunded
    done = settler.log.settled_task_ids()
    for task_id, (header, amount) in paid.items():
        result.by_payment_micros += amount
        if task_id in done:
            result.settled_before += 1
            continue
        try:
            payment = parse_payment(header)
        except MalformedPayment as exc:
            result.failed.append({"task_id": task_id, "error_reason": Reason.X402_MALFORMED.value, "detail": str(exc)})
            continue
        answer = settler.settle(task_id, payment, header)
        entry = {"task_id": task_id, "transaction": answer.transaction or None, "error_reason": answer.error_reason,
                 "value": payment.value}
        (result.settled_now if answer.success else result.failed).append(entry)
    result.netting = net(ledger, paper=paper_netting, minimum_usd=minimum_usd, exclude_task_ids=set(paid))
    return result


def _paid_calls(ledger: Path | str, checked: VerifyResult) -> tuple[dict[str, tuple[str, int]], int]:
    """Released calls that carry an x402 payment, ``{task_id: (header, amount_micros)}``, and how many paid calls were refunded."""
    paid: dict[str, tuple[str, int]] = {}
    refunded = 0
    for event in verified_events(ledger, checked):
        if not event.get("tx_signature"):
            continue
        if event.get("status") == "refunded" and decode_payment(event["tx_signature"]) is not None:
            refunded += 1
        elif event.get("status") == "released" and decode_payment(event["tx_signature"]) is not None:
            paid.setdefault(event["task_id"], (event["tx_signature"], event["amount_micros"]))
    return paid, refunded


def terms_of_ledger(ledger: Path | str) -> Any:
    """The :class:`~mesh.x402.terms.PaymentTerms` the ledger's first x402 payment accepted (whom to settle to)."""
    from mesh.core.errors import ConfigError
    from mesh.x402.terms import PaymentTerms

    for line in (line for files in families(ledger) for line in event_lines(files)):
        payload = decode_payment(line.event.get("tx_signature"))
        accepted = payload.get("accepted") if payload is not None else None
        if isinstance(accepted, dict) and accepted.get("payTo"):
            extra = accepted.get("extra") or {}
            return PaymentTerms(pay_to=accepted["payTo"], network=accepted.get("network", ""), asset=accepted.get("asset"),
                                token_name=extra.get("name"), token_version=extra.get("version"))
    raise ConfigError(f"{ledger}: no call of this ledger was paid with an x402 payment: nothing to settle by payment")
