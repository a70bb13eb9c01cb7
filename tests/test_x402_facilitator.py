"""Facilitator mode (the SDK's HTTP facilitator client, bounded, failing closed) and settlement against
payments: released paid tolls are settled (on the in-memory chain, or through a facilitator), refunded
ones never, and ``ledger settle`` says what went by payment and what by netting."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import httpx
import pytest

from mesh import Reason
from mesh.cli import main
from mesh.x402.chain import InMemoryChain
from mesh.x402.exact import ExactEvmVerifier
from mesh.x402.facilitator import FacilitatorVerifier, HttpFacilitator, LocalFacilitator
from mesh.x402.proof import parse_payment
from mesh.x402.settle import PaymentSettler, PaymentsLog, settle_ledger
from mesh.x402.wallet import PayingWallet
from x402_helpers import OTHER, forged, terms

PRICE = 1_000


def facilitator_app(local: LocalFacilitator) -> httpx.MockTransport:
    """An operator's facilitator (the SDK's, on the in-memory chain), behind the HTTP routes the SDK's client calls."""
    from x402.schemas import PaymentPayload, PaymentRequirements

    def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        payload = PaymentPayload.model_validate(body["paymentPayload"])
        requirements = PaymentRequirements.model_validate(body["paymentRequirements"])
        answer = (local.facilitator.verify if request.url.path.endswith("/verify") else local.facilitator.settle)(payload, requirements)
        return httpx.Response(200, json=answer.model_dump(by_alias=True, exclude_none=True))

    return httpx.MockTransport(handle)


@pytest.fixture
def chain() -> InMemoryChain:
    return InMemoryChain(terms(), default_balance_micros=1_000_000)


@pytest.fixture
def remote(chain) -> HttpFacilitator:
    client = httpx.Client(transport=facilitator_app(LocalFacilitator(chain)))
    return HttpFacilitator("http://facilitator.test", terms(), timeout_s=2.0, http_client=client)


def signed(name: str = "alice", amount: int = PRICE, **options: Any) -> str:
    return PayingWallet.derived(5, name).pay(options.pop("terms", terms()), amount, now_s=time.time(), **options)


def test_a_facilitator_verifies_and_the_replay_guard_still_holds(remote):
    verifier = FacilitatorVerifier(remote, terms())
    header = signed()
    payer = PayingWallet.derived(5, "alice").address
    assert verifier.check_payment("t1", payer, header, PRICE) is None
    assert verifier.check_payment("t2", payer, header, PRICE) is Reason.X402_REPLAYED  # verify spends nothing: we do


def test_the_facilitators_refusal_is_named(remote):
    verifier = FacilitatorVerifier(remote, terms())
    verdict = verifier.explain("t1", None, forged(signed()), PRICE)
    assert verdict.reason is Reason.X402_BAD_SIGNATURE and "facilitator" in verdict.detail


def test_checks_a_facilitator_does_not_make_are_made_first(remote):
    verifier = FacilitatorVerifier(remote, terms())
    assert verifier.check_payment("t1", None, signed(amount=PRICE - 1), PRICE) is Reason.X402_UNDERPAID
    assert verifier.check_payment("t2", OTHER, signed(), PRICE) is Reason.X402_WRONG_PAYER


def test_a_facilitator_that_is_down_fails_closed():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    verifier = FacilitatorVerifier(f"http://127.0.0.1:{port}", terms(), timeout_s=2.0)
    verdict = verifier.explain("t1", None, signed(), PRICE)
    assert verdict.reason is Reason.X402_ERROR and "ConnectError" in verdict.detail


def test_a_facilitator_that_hangs_times_out_closed():
    with socket.socket() as silent:  # accepts connections (the backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        verifier = FacilitatorVerifier(f"http://127.0.0.1:{silent.getsockname()[1]}", terms(), timeout_s=0.3)
        assert verifier.check_payment("t1", None, signed(), PRICE) is Reason.X402_TIMEOUT


def test_a_facilitator_answering_garbage_fails_closed():
    client = httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(200, text="<html>oops</html>")))
    verifier = FacilitatorVerifier(HttpFacilitator("http://f.test", terms(), http_client=client), terms())
    assert verifier.check_payment("t1", None, signed(), PRICE) is Reason.X402_ERROR
    broken = httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(500, text="down")))
    verifier = FacilitatorVerifier(HttpFacilitator("http://f.test", terms(), http_client=broken), terms())
    assert verifier.check_payment("t1", None, signed(), PRICE) is Reason.X402_ERROR


def test_settling_through_a_facilitator_moves_the_funds(remote, chain, tmp_path):
    settler = PaymentSettler(PaymentsLog(tmp_path / "toll_ledger.jsonl"), remote)
    header = signed("bob")
    answer = settler.settle("t1", parse_payment(header), header)
    assert answer.success and answer.transaction.startswith("0x")
    assert chain.balance_of(terms().pay_to) == 1_000_000 + PRICE
    (record,) = settler.log.read()
    assert record["via"] == "http://facilitator.test" and record["success"] and record["value"] == PRICE


def test_a_settlement_that_cannot_reach_its_facilitator_is_logged_as_failed(tmp_path):
    down = httpx.Client(transport=httpx.MockTransport(lambda r: (_ for _ in ()).throw(httpx.ConnectError("refused"))))
    settler = PaymentSettler(PaymentsLog(tmp_path / "toll_ledger.jsonl"), HttpFacilitator("http://f.test", terms(), http_client=down))
    header = signed("carol")
    answer = settler.settle("t1", parse_payment(header), header)
    assert not answer.success and answer.error_reason == "settle_unavailable"
    assert [r["success"] for r in settler.log.read()] == [False]
    assert settler.log.settled_task_ids() == set()  # tried again by the next `ledger settle`


def _paid_ledger(make_booth, ledger_path) -> dict[str, str]:
    """A booth's ledger: two paid calls released, one paid call refunded, two unpaid released."""
    booth = make_booth()
    verifier = ExactEvmVerifier(terms())
    booth.set_x402_verifier(verifier)
    booth.clock.set(time.time())
    headers = {}
    for task_id, name in (("paid-1", "p1"), ("paid-2", "p2"), ("paid-refunded", "p3")):
        wallet = PayingWallet.derived(5, name)
        headers[task_id] = wallet.pay(terms(), PRICE, now_s=time.time())
        booth.charge_sync(task_id, wallet.address, "echo", wallet.address, headers[task_id], amount_usd="0.001")
    booth.release_sync("paid-1")
    booth.release_sync("paid-2")
    booth.refund_sync("paid-refunded")
    for task_id in ("free-1", "free-2"):
        booth.charge_sync(task_id, "alice", "echo", amount_usd="0.30")
        booth.release_sync(task_id)
    booth.close()
    return headers


def test_ledger_settle_pays_by_payment_and_nets_the_rest(make_booth, ledger_path):
    _paid_ledger(make_booth, ledger_path)
    chain = InMemoryChain(terms(), default_balance_micros=1_000_000)
    settler = PaymentSettler(PaymentsLog(ledger_path), LocalFacilitator(chain))
    outcome = settle_ledger(ledger_path, settler, minimum_usd="0.50")
    assert sorted(e["task_id"] for e in outcome.settled_now) == ["paid-1", "paid-2"]
    assert outcome.refunded_paid == 1 and not outcome.failed
    assert not any(t.payer == PayingWallet.derived(5, "p3").address for t in chain.transfers)  # refunded: never run
    assert outcome.netting.settled and outcome.netting.task_ids == ("free-1", "free-2")
    again = settle_ledger(ledger_path, settler, minimum_usd="0.50")
    assert (len(again.settled_now), again.settled_before) == (0, 2)
    assert again.netting.reason == "nothing to settle"


def test_the_settle_command_reports_by_payment_and_by_netting(make_booth, ledger_path, capsys):
    _paid_ledger(make_booth, ledger_path)
    assert main(["ledger", "settle", str(ledger_path), "--chain", "memory", "--minimum", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "by payment:  2 released call(s)" in out and "2 settled now via memory" in out and "1 refunded" in out
    assert "by netting:  SETTLED" in out
    assert main(["ledger", "settle", str(ledger_path)]) == 0
    assert "2 settled before" in capsys.readouterr().out
