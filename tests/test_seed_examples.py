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
    from mesh.booth.tollbooth import get_tollbooth

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


def test_the_router_may_pass_the_target_agent_object_itself(tmp_path):
    """The seed's router passes ``target_agent`` (an object with ``handle``) to ``charge``:
    it is recorded by its ``name``, else (with a ``handle``) by ``str()``; non-agents are still refused."""
    from mesh import InvalidTypeError, Tollbooth, TollboothConfig

    class Named:
        name = "summarizer"

    class Unnamed:
        async def handle(self, task_id, payload):
            return payload

        def __str__(self) -> str:
            return "unnamed-agent"

    class NoAgent:  # neither a name nor a handle: printable, but no agent
        def __str__(self) -> str:
            return "alice"

    booth = Tollbooth(TollboothConfig(paper_mode=False, ledger_path=tmp_path / "l.jsonl"))
    assert booth.charge_sync("m1", "planner", Named()).target_agent == "summarizer"
    assert asyncio.run(booth.charge("m2", Named(), Unnamed())).source_agent == "summarizer"
    assert booth.get_record("m2").target_agent == "unnamed-agent"
    for bad in (None, 7, b"bob", ["bob"], NoAgent()):
        try:
            booth.charge_sync("m3", "planner", bad)
        except InvalidTypeError as exc:
            assert "target_agent" in str(exc)
        else:
            raise AssertionError(f"{bad!r} was taken as an agent")


def test_seed_records_are_built_with_amount_usd_and_paper_charges_name_paper_mode(tmp_path):
    from mesh import InvalidTypeError, Tollbooth, TollboothConfig, TollRecord

    record = TollRecord(task_id="t1", source_agent="a", target_agent="b", amount_usd=0.001, amount_tokens=0.0)
    assert record.amount_micros == 1000 and record.amount_usd == 0.001
    assert TollRecord.from_dict(record.to_dict()) == record
    try:
        TollRecord("t1", "a", "b", 0.001, 0.0)  # the seed's fourth positional field is USD: refused, not 1000x off
    except InvalidTypeError as exc:
        assert "amount_usd=" in str(exc)
    else:
        raise AssertionError("a float of micros was taken")
    booth = Tollbooth(TollboothConfig(paper_mode=True, ledger_path=tmp_path / "l.jsonl"))
    paper = booth.charge_sync("t1", "a", "b")
    assert (paper.payer_wallet, paper.tx_signature) == ("paper_mode", "paper_mode")
    assert booth.charge_sync("t2", "a", "b", payer_wallet="0xw", tx_signature="sig").payer_wallet == "0xw"
