"""Simulations whose groups pay by signing x402 payments: verified by the mesh, reproducible, and the report
shows what share of the run signing and verifying took."""

from __future__ import annotations

from ledger import read_events
from ledger.payments import payment_key
from mesh.scenario import Scenario
from mesh.simulate import Simulation
from mesh.x402.wallet import PayingWallet

PAYING = dict(
    messages=600, shards=2, hosts=1, batch_size=200, ticks_per_day=3,
    groups=[{"name": "users", "count": 12, "balance_usd": "1", "daily_cap_usd": "0.30", "pays": "x402"},
            {"name": "free", "count": 6},
            {"name": "shops", "count": 4, "price_usd": "0.002", "failure_rate": 0.1}],
    traffic=[{"source": "users", "target": "shops", "share": 2}, {"source": "free", "target": "shops"}],
)


def paid_events(run_dir):
    return [e for e in read_events(run_dir / "toll_ledger.jsonl").events if e.get("tx_signature")]


def test_a_paying_group_signs_and_the_mesh_verifies(ray_session, tmp_path):
    report = Simulation(Scenario(**PAYING), tmp_path / "paying", plots=False).run()
    assert all(v for k, v in report["checks"].items() if k != "problems"), report["checks"]
    x402 = report["x402"]
    assert x402["groups"] == ["users"] and x402["signed"] > 0 and x402["verified"] == x402["signed"]
    assert x402["sign_cpu_s"] > 0 and x402["verify_cpu_s"] > 0
    assert 0 < x402["sign_share_of_machine_cpu"] < 1 and 0 < x402["verify_share_of_machine_cpu"] < 1
    events = paid_events(tmp_path / "paying")
    assert events and {e["source_agent"].rpartition("-")[0] for e in events} == {"users"}
    assert all(e["payer_wallet"] == PayingWallet.derived(7, e["source_agent"]).address for e in events)
    assert not any((e.get("reason") or "").startswith("x402_") for e in events)  # every signed payment verified
    assert len({payment_key(e["tx_signature"]) for e in events if e["kind"] in ("lock", "reject")}) == len(
        {e["task_id"] for e in events})  # one authorization per call


def test_paying_runs_are_reproducible(ray_session, tmp_path):
    Simulation(Scenario(**PAYING), tmp_path / "a", plots=False).run()
    Simulation(Scenario(**PAYING), tmp_path / "b", plots=False).run()
    signed = [[(e["task_id"], e["kind"], e["tx_signature"]) for e in paid_events(tmp_path / run)] for run in "ab"]
    assert signed[0] == signed[1] and signed[0]


def test_only_escrow_or_x402_is_a_way_to_pay():
    import pytest

    from mesh import ConfigError

    with pytest.raises(ConfigError, match=r"groups\.0\.pays="):
        Scenario(**{**PAYING, "groups": [{**PAYING["groups"][0], "pays": "bitcoin"}, *PAYING["groups"][1:]]})
    assert Scenario(**PAYING).x402_groups == ["users"]
