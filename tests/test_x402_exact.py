"""Offline verification of x402 "exact" EVM payments: every refusal names its reason, replays are refused
(after a restart too), the SDK's own client and facilitator agree with us, and the ledger remembers."""

from __future__ import annotations

import asyncio
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import verify
from ledger.payments import payment_key
from mesh import ManualClock, Reason, SettlementStatus
from mesh.x402.chain import InMemoryChain
from mesh.x402.digest import authorization_digest, domain_separator
from mesh.x402.exact import ExactEvmVerifier
from mesh.x402.facilitator import LocalFacilitator
from mesh.x402.proof import parse_payment
from mesh.x402.recover import SECP256K1_N, Signer, recover_address
from mesh.x402.wallet import PayingWallet
from x402_helpers import OTHER, PAY_TO, edited, encoded, forged, payer, terms  # noqa: F401 - see conftest

START_S = 1_767_225_600.0
PRICE = 1_000


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START_S)


@pytest.fixture
def verifier(clock: ManualClock) -> ExactEvmVerifier:
    return ExactEvmVerifier(terms(), clock=clock)


def pay(amount: int = PRICE, **options) -> tuple[PayingWallet, str]:
    wallet = payer()
    options.setdefault("now_s", START_S)
    return wallet, wallet.pay(options.pop("terms", terms()), amount, **options)


# -- the digest and the signature are the SDK's ------------------------------------------------

addresses = st.binary(min_size=20, max_size=20)
uint = st.integers(min_value=0, max_value=2**256 - 1)


@settings(max_examples=60)
@given(addresses, addresses, uint, uint, uint, st.binary(min_size=32, max_size=32))
def test_the_digest_is_the_sdks(payer_bytes, payee_bytes, value, after, before, nonce):
    from x402.mechanisms.evm.eip712 import hash_eip3009_authorization
    from x402.mechanisms.evm.types import ExactEIP3009Authorization

    t = terms()
    ours = authorization_digest(domain_separator(t.token_name, t.token_version, t.chain_id, t.asset),
                                payer_bytes, payee_bytes, value, after, before, nonce)
    theirs = hash_eip3009_authorization(
        ExactEIP3009Authorization("0x" + payer_bytes.hex(), "0x" + payee_bytes.hex(), str(value), str(after), str(before),
                                  "0x" + nonce.hex()), t.chain_id, t.asset, t.token_name, t.token_version)
    assert ours == theirs


def test_both_recovery_backends_recover_the_signer():
    signer = Signer(os.urandom(32), backend="eth-keys")
    digest = os.urandom(32)
    signature = signer.sign(digest)
    assert recover_address(digest, signature, "coincurve") == recover_address(digest, signature, "eth-keys") == signer.address_bytes


def test_a_malleated_high_s_twin_is_refused():
    signer = Signer(b"\x05" * 32)
    digest = b"\x09" * 32
    signature = signer.sign(digest)
    s = int.from_bytes(signature[32:64], "big")
    twin = signature[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - signature[64]])
    assert recover_address(digest, signature) == signer.address_bytes
    assert recover_address(digest, twin) is None


def test_the_official_clients_payment_verifies(verifier, clock):
    """The SDK's x402Client with ExactEvmClientScheme(EthAccountSigner) pays; we verify it offline."""
    import time

    from eth_account import Account
    from x402 import x402Client
    from x402.http.utils import encode_payment_signature_header
    from x402.mechanisms.evm.exact import ExactEvmClientScheme
    from x402.mechanisms.evm.signers import EthAccountSigner

    account = Account.from_key("0x" + "42" * 32)
    client = x402Client().register("eip155:*", ExactEvmClientScheme(EthAccountSigner(account)))
    payload = asyncio.run(client.create_payment_payload(terms().payment_required(PRICE, url="http://x/agents/echo")))
    clock.set(time.time())  # the official client signs a window on the system clock
    header = encode_payment_signature_header(payload)
    assert verifier.check_payment("t1", account.address, header, PRICE) is None
    assert verifier.check_payment("t2", account.address, header, PRICE) is Reason.X402_REPLAYED


def test_our_payment_verifies_and_settles_through_the_sdks_facilitator(clock):
    """The SDK's ExactEvmFacilitatorScheme, over the in-memory chain, accepts and settles what PayingWallet signs."""
    import time

    now = time.time()
    wallet = payer()
    header = wallet.pay(terms(), PRICE, now_s=now)
    chain = InMemoryChain(terms())
    chain.fund(wallet.address, 5 * PRICE)
    facilitator = LocalFacilitator(chain)
    payment = parse_payment(header)
    assert facilitator.verify(payment).is_valid
    settled = facilitator.settle(payment)
    assert settled.success and settled.transaction.startswith("0x")
    assert chain.balance_of(wallet.address) == 4 * PRICE and chain.balance_of(PAY_TO) == PRICE
    again = facilitator.settle(payment)
    assert not again.success and again.error_reason == "invalid_exact_evm_nonce_already_used"


def test_a_payer_short_of_usdc_is_not_settled():
    import time

    wallet = payer("poor")
    chain = InMemoryChain(terms())
    payment = parse_payment(wallet.pay(terms(), PRICE, now_s=time.time()))
    answer = LocalFacilitator(chain).settle(payment)
    assert not answer.success and answer.error_reason == "invalid_exact_evm_insufficient_balance"


# -- every refusal, with its reason ---------------------------------------------------------

def test_a_good_payment_verifies_once(verifier):
    wallet, header = pay()
    assert verifier.check_payment("t1", wallet.address, header, PRICE) is None
    assert verifier.check_payment("t1", wallet.address, header, PRICE) is None  # the same call, again: its retry
    assert verifier.check_payment("t2", wallet.address, header, PRICE) is Reason.X402_REPLAYED


def test_overpaying_is_accepted(verifier):
    wallet, header = pay(PRICE + 5)
    assert verifier.check_payment("t1", wallet.address, header, PRICE) is None


@pytest.mark.parametrize("case, reason", [
    ("forged", Reason.X402_BAD_SIGNATURE),
    ("signed_by_another", Reason.X402_BAD_SIGNATURE),
    ("wrong_payee", Reason.X402_WRONG_PAYEE),
    ("short", Reason.X402_UNDERPAID),
    ("expired", Reason.X402_EXPIRED),
    ("about_to_expire", Reason.X402_EXPIRED),
    ("not_yet_valid", Reason.X402_NOT_YET_VALID),
    ("wrong_network", Reason.X402_WRONG_NETWORK),
    ("wrong_asset", Reason.X402_WRONG_ASSET),
    ("wrong_domain", Reason.X402_WRONG_DOMAIN),
    ("wrong_scheme", Reason.X402_WRONG_SCHEME),
    ("wrong_payer", Reason.X402_WRONG_PAYER),
    ("garbage", Reason.X402_MALFORMED),
    ("json_not_payload", Reason.X402_MALFORMED),
    ("short_nonce", Reason.X402_MALFORMED),
    ("no_signature", Reason.X402_MALFORMED),
    ("value_not_a_number", Reason.X402_MALFORMED),
    ("v1_payload", Reason.X402_MALFORMED),
])
def test_each_bad_payment_is_refused_with_its_reason(verifier, case, reason):
    wallet, good = pay()
    claimed = wallet.address
    header = {
        "forged": lambda: forged(good),
        "signed_by_another": lambda: edited(PayingWallet.derived(2, "mallory").pay(terms(), PRICE, now_s=START_S),
                                            lambda p: p["payload"]["authorization"].update({"from": wallet.address})),
        "wrong_payee": lambda: wallet.pay(terms(pay_to=OTHER), PRICE, now_s=START_S),
        "short": lambda: wallet.pay(terms(), PRICE - 1, now_s=START_S),
        "expired": lambda: wallet.pay(terms(), PRICE, now_s=START_S - 400, valid_for_s=300),
        "about_to_expire": lambda: wallet.pay(terms(), PRICE, now_s=START_S, valid_for_s=3),
        "not_yet_valid": lambda: wallet.pay(terms(), PRICE, now_s=START_S, valid_after_s=int(START_S) + 60),
        "wrong_network": lambda: wallet.pay(terms(network="eip155:8453"), PRICE, now_s=START_S),
        "wrong_asset": lambda: edited(good, lambda p: p["accepted"].update({"asset": OTHER})),
        "wrong_domain": lambda: wallet.pay(terms(token_name="USD Coin"), PRICE, now_s=START_S),
        "wrong_scheme": lambda: edited(good, lambda p: p["accepted"].update({"scheme": "upto"})),
        "wrong_payer": lambda: good,
        "garbage": lambda: "%%% not a payment %%%",
        "json_not_payload": lambda: encoded({"hello": "world"}),
        "short_nonce": lambda: edited(good, lambda p: p["payload"]["authorization"].update({"nonce": "0x01"})),
        "no_signature": lambda: edited(good, lambda p: p["payload"].pop("signature")),
        "value_not_a_number": lambda: edited(good, lambda p: p["payload"]["authorization"].update({"value": "1e3"})),
        "v1_payload": lambda: encoded({"x402Version": 1, "scheme": "exact", "network": "base-sepolia", "payload": {}}),
    }[case]()
    if case == "wrong_payer":
        claimed = OTHER
    verdict = verifier.explain("t1", claimed, header, PRICE)
    assert verdict.reason is reason, verdict.detail
    assert verdict.detail


def test_a_refused_payment_spends_nothing(verifier):
    wallet, header = pay(PRICE - 1)
    assert verifier.check_payment("t1", wallet.address, header, PRICE) is Reason.X402_UNDERPAID
    assert verifier.check_payment("t2", wallet.address, header, PRICE - 1) is None  # a cheaper call may still take it


def test_the_window_is_judged_on_the_injected_clock(verifier, clock):
    wallet, header = pay(valid_for_s=60)
    clock.advance(120)
    assert verifier.check_payment("t1", wallet.address, header, PRICE) is Reason.X402_EXPIRED


def test_paper_mode_checks_structure_only(clock):
    paper = ExactEvmVerifier(terms(), clock=clock, paper=True)
    wallet, header = pay()
    assert paper.mode == "paper"
    assert paper.check_payment("t1", wallet.address, forged(header), PRICE) is None  # the signature is not recovered
    assert paper.check_payment("t2", wallet.address, wallet.pay(terms(), 1, now_s=START_S), PRICE) is Reason.X402_UNDERPAID
    assert paper.explain("t3", wallet.address, header, PRICE).reason is Reason.X402_REPLAYED  # same nonce as t1's


def test_the_seed_hook_answers_a_bool(verifier):
    wallet, header = pay()
    assert verifier(wallet.address, header, 0.001) is True
    assert verifier(wallet.address, header, 0.001) is False  # its nonce is spent


def test_stats_count_checks_and_cpu(verifier):
    wallet, header = pay()
    verifier.check_payments([("t1", wallet.address, header, PRICE), ("t2", wallet.address, header, PRICE)])
    stats = verifier.stats()
    assert stats["checked"] == 2 and stats["cpu_s"] > 0 and stats["nonces"] == 1


# -- through the in-process booth and its ledger ----------------------------------------------

def test_the_booth_records_the_reason_and_the_proof(make_booth, clock, ledger_path):
    booth = make_booth()
    booth.set_x402_verifier(ExactEvmVerifier(terms(), clock=ManualClock(0)))  # the booth binds its own clock
    wallet, header = pay()
    ok = booth.charge_sync("t1", "alice", "bob", wallet.address, header, amount_usd="0.001")
    assert ok.status is SettlementStatus.ESCROW_LOCKED
    again = booth.charge_sync("t2", "alice", "bob", wallet.address, header, amount_usd="0.001")
    assert (again.status, again.reason) == (SettlementStatus.FAILED, "x402_replayed")
    booth.release_sync("t1")
    result = verify(ledger_path)
    assert result.ok, result.problems


def test_a_replay_is_refused_after_the_booth_restarts(make_booth, clock, ledger_path):
    wallet, header = pay()
    first = make_booth()
    first.set_x402_verifier(ExactEvmVerifier(terms()))
    assert first.charge_sync("t1", "alice", "bob", wallet.address, header, amount_usd="0.001").status is SettlementStatus.ESCROW_LOCKED
    first.release_sync("t1")
    first.close()
    second = make_booth()  # the same ledger: restored
    second.set_x402_verifier(ExactEvmVerifier(terms()))  # a fresh verifier learns the spent payments from it
    record = second.charge_sync("t2", "alice", "bob", wallet.address, header, amount_usd="0.001")
    assert (record.status, record.reason) == (SettlementStatus.FAILED, "x402_replayed")
    assert verify(ledger_path).ok


def test_ledger_verify_flags_a_nonce_used_twice(make_booth, clock, ledger_path):
    wallet, header = pay()
    booth = make_booth()  # no verifier: nothing stops the second use, so verify must see it
    booth.charge_sync("t1", "alice", "bob", wallet.address, header, amount_usd="0.001")
    booth.charge_sync("t2", "carol", "bob", wallet.address, header, amount_usd="0.001")
    result = verify(ledger_path)
    messages = [p.message for p in result.problems]
    assert any("used twice" in m and "t1" in m and "t2" in m for m in messages), messages


def test_payment_keys_are_read_without_the_sdk():
    wallet, header = pay()
    key = payment_key(header)
    assert key[:3] == ("eip155:84532", terms().asset.lower(), wallet.address.lower())
    assert payment_key(forged(header)) == key  # a forged signature is the same authorization
