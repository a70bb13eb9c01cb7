"""x402 in the mesh: payments of a batch verified at once in the coordinator on the mesh's clock, reasons in the
records, agents that pay onward calls by signing, and a replay refused after the coordinator restarts."""

from __future__ import annotations

import time
from collections import Counter

import ray

from ledger import read_events, verify
from mesh import Agent, Message, SettlementStatus
from mesh.x402.exact import ExactEvmVerifier
from mesh.x402.wallet import PayingWallet
from x402_helpers import terms

START_S = 1_767_225_600.0  # 2026-01-01: the manual clock's, far from the system's


class Shop(Agent):
    price_usd = "0.002"

    def handle(self, ctx, payload):
        return payload


class PayingBroker(Agent):
    """Pays the shop for each call it gets, with a signed x402 payment (its own wallet)."""

    price_usd = "0.005"

    async def handle(self, ctx, payload):
        wallet = PayingWallet.derived(9, self.agent_id)
        header = wallet.pay(terms(), 2_000, now_s=payload["now_s"], nonce=bytes.fromhex(payload["nonce"]))
        (result,) = await ctx.asend([Message(self.agent_id, "shop", "via broker", payer_wallet=wallet.address,
                                             tx_signature=header)])
        return result.status.value, result.reason


def paid(wallet: PayingWallet, task_id: str, amount: int = 2_000, target: str = "shop", **options) -> Message:
    header = wallet.pay(terms(), amount, now_s=options.pop("now_s", START_S), **options)
    return Message(wallet.address, target, task_id, task_id=task_id, payer_wallet=wallet.address, tx_signature=header)


def test_a_batch_of_payments_is_verified_on_the_mesh_clock(make_mesh):
    mesh = make_mesh(clock="manual", start_s=START_S)
    mesh.add_agents(Shop, ["shop"])
    mesh.set_x402_verifier(ExactEvmVerifier(terms()))  # its own clock is the system's: the mesh binds the manual one
    wallets = [PayingWallet.derived(9, f"w{i}") for i in range(20)]
    messages = [paid(w, f"ok-{i}") for i, w in enumerate(wallets)]
    replay = messages[0]._replace(task_id="replay")
    short = paid(wallets[1], "short", amount=1_999)
    results = mesh.send(messages + [replay, short])
    assert Counter(r.status for r in results[:20]) == {SettlementStatus.RELEASED: 20}
    assert [(r.status, r.reason) for r in results[20:]] == [
        (SettlementStatus.FAILED, "x402_replayed"), (SettlementStatus.FAILED, "x402_underpaid")]
    late = paid(wallets[2], "late", valid_for_s=60)
    mesh.advance_clock(120)
    (expired,) = mesh.send([late])
    assert expired.reason == "x402_expired"
    stats = mesh.x402_stats()
    assert stats["checked"] == 23 and stats["cpu_s"] > 0
    released = [e for e in read_events(mesh.ledger_path).events if e["kind"] == "release"]
    assert all(e["proof_digest"] and e["payer_wallet"] == e["source_agent"] for e in released)
    assert verify(mesh.ledger_path).ok


def test_an_agent_pays_its_onward_calls_by_signing(make_mesh):
    mesh = make_mesh(clock="manual", start_s=START_S)
    mesh.add_agents(Shop, ["shop"])
    mesh.add_agents(PayingBroker, ["broker"])
    mesh.set_x402_verifier(ExactEvmVerifier(terms()))
    first = mesh.call("alice", "broker", {"now_s": START_S, "nonce": "11" * 32})
    again = mesh.call("alice", "broker", {"now_s": START_S, "nonce": "11" * 32})  # the broker reuses its nonce
    assert tuple(first.value) == ("released", None)
    assert tuple(again.value) == ("failed", "x402_replayed")
    onward = [e for e in read_events(mesh.ledger_path).events if e["source_agent"] == "broker" and e["kind"] == "release"]
    assert len(onward) == 1 and onward[0]["payer_wallet"] == PayingWallet.derived(9, "broker").address


def test_a_replay_is_refused_after_the_coordinator_restarts(make_mesh):
    mesh = make_mesh()
    mesh.add_agents(Shop, ["shop"])
    mesh.set_x402_verifier(ExactEvmVerifier(terms()))
    wallet = PayingWallet.derived(9, "restart")
    message = paid(wallet, "first", now_s=time.time())
    assert mesh.send([message])[0].status is SettlementStatus.RELEASED
    ray.kill(mesh.actor("coordinator"), no_restart=False)  # Ray restarts it: it rebuilds from the ledger
    deadline = time.monotonic() + 60
    while True:
        try:
            (again,) = mesh.send([message._replace(task_id="second")])
            break
        except ray.exceptions.RayActorError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    assert (again.status, again.reason) == (SettlementStatus.FAILED, "x402_replayed")
    assert mesh.send([message])[0].status is SettlementStatus.RELEASED  # its own task again: a repeat, not a replay
    assert verify(mesh.ledger_path).ok
