"""The seed document's two examples run unchanged but for the import line."""

from __future__ import annotations

import asyncio

from mesh import SettlementStatus


def test_seed_decorator_example(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    from mesh import monetize

    @monetize(price_usd=0.01)
    def summarize(text: str) -> str:
        """Summarize a document. Priced per call, settled via the tollbooth."""
        sentences = text.split(". ")
        if len(sentences) <= 3:
            return text
        return ". ".join(sentences[:3]) + "."

    print(summarize("Long document text. Many sentences here. And more after that. ..."))
    assert capsys.readouterr().out == "Long document text. Many sentences here. And more after that.\n"
    from mesh.tollbooth import get_tollbooth

    ledger = tmp_path / get_tollbooth().config.ledger_path  # this run's own default ledger, under ./tollmesh-out/
    assert ledger.exists() and ledger.parent.parent == tmp_path / "tollmesh-out"


def test_seed_router_example(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    from mesh import Tollbooth, TollboothConfig

    config = TollboothConfig(
        toll_per_message_usd=0.001,  # default per-call rate
        paper_mode=False,  # live settlement
        max_daily_toll_per_agent=10.0,  # per-agent daily cap
    )
    booth = Tollbooth(config)

    # Optional x402 hook: verify payment before settlement
    async def my_x402_verifier(wallet, signature, amount_usd):
        # call your payment gateway, on-chain program, or invoice service
        return True  # or False to reject the charge

    booth.set_x402_verifier(my_x402_verifier)

    # In your A2A router dispatch loop
    async def route_message(task_id, source_agent, target_agent, payload):
        record = await booth.charge(task_id, source_agent, target_agent)
        if record.status.name == "FAILED":  # over cap or x402 rejected
            return {"error": "agent over budget"}
        try:
            result = await target_agent.handle(task_id, payload)
            await booth.release(task_id)  # success -> release escrow
            return result
        except Exception:
            await booth.refund(task_id)  # failure -> refund escrow
            raise

    class Echo(str):
        async def handle(self, task_id, payload):
            if payload == "fail":
                raise RuntimeError("handler failed")
            return {"echo": payload}

    async def scenario():
        ok = await route_message("m1", "planner", Echo("echo"), "hi")
        try:
            await route_message("m2", "planner", Echo("echo"), "fail")
        except RuntimeError:
            pass
        return ok

    assert asyncio.run(scenario()) == {"echo": "hi"}
    assert booth.get_record("m1").status is SettlementStatus.RELEASED
    assert booth.get_record("m2").status is SettlementStatus.REFUNDED
