"""Randomized fault tests: kill the mesh's actors mid-run, then check the money and the ledger.

Afterwards the replayed ledger equals the final state, no acknowledged event is lost,
no cap is exceeded, no escrow is settled twice (``ledger verify``), money is conserved
and every escrow ends settled.
"""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict

import pytest
import ray

from ledger import read_events, verify
from ledger.tally import tally_events
from mesh import Message, TollboothConfig
from mesh.core.clock import US_PER_DAY
from restarts import answer_once_restarted
from test_parquet_catch_up import assert_dataset_is_the_ledger
from test_mesh import Echo, assert_replay_matches

CAP_MICROS = 40_000
AGENTS = [f"agent-{i}" for i in range(30)]


def run_batches(mesh, acknowledged: list, done: threading.Event, *, seed: int, batches: int = 30) -> None:
    """Send ``batches`` random batches of 150 (a fifth of them fail in their handler); keep what is acknowledged."""
    rng = random.Random(seed)
    for n in range(batches):
        messages = [Message(rng.choice(AGENTS), rng.choice(AGENTS), "boom" if rng.random() < 0.2 else n)
                    for _ in range(150)]
        try:
            acknowledged.extend(mesh.send(messages))
        except ray.exceptions.RayActorError:  # the coordinator died under this batch: nothing acknowledged
            time.sleep(0.2)
    done.set()


def run_with_kills(mesh, roles: list[str], *, seed: int, batches: int = 30, kills: int = 3) -> list:
    """Send batches from one thread while another kills random actors among ``roles`` (a role, or
    ``host`` for one of the agent hosts); the results acknowledged."""
    rng = random.Random(seed)
    acknowledged: list = []
    done = threading.Event()
    thread = threading.Thread(target=run_batches, args=(mesh, acknowledged, done), kwargs={"seed": seed, "batches": batches})
    thread.start()
    for _ in range(kills):
        time.sleep(rng.uniform(0.1, 0.6))
        if done.is_set():
            break
        role = rng.choice(roles)
        if role == "host":
            name = rng.choice(ray.get(mesh.actor("coordinator").host_names.remote()))
            victim = ray.get_actor(name, namespace=mesh.config.namespace)
        else:
            victim = mesh.actor(role)
        ray.kill(victim, no_restart=False)
    thread.join(timeout=300)
    assert not thread.is_alive(), "the sender is stuck"
    return acknowledged


def check_after_faults(mesh, acknowledged: list, *, ledger_started_empty: bool = True) -> None:
    deadline = time.monotonic() + 60
    while mesh.stats()["open_escrows"]:  # escrows whose caller died expire
        assert time.monotonic() < deadline, "escrows left open"
        time.sleep(0.3)
    live = mesh.snapshot()
    assert_replay_matches(mesh, live, track_balances=True)
    assert sum(live["balances_micros"].values()) + live["locked_total_micros"] == live["deposits_total_micros"]
    events = read_events(mesh.ledger_path).events
    if ledger_started_empty:  # every event counted, whichever way it came in (lane runs cut short included)
        stats = mesh.stats()
        assert stats["events_written"] == len(events)
        tally = tally_events(events)  # the counters count what is on disk, a restarted coordinator's too
        assert {k: stats[k] for k in ("locked", "released", "refunded", "rejected")} == \
            {k: tally.counts[k] for k in ("locked", "released", "refunded", "rejected")}
        assert (stats["released_micros"], stats["refunded_micros"]) == (tally.amounts["released"], tally.amounts["refunded"])
    released = {e["task_id"] for e in events if e["kind"] == "release"}
    for result in acknowledged:  # an acknowledged release is on disk
        if result.ok:
            assert result.task_id in released
    used: dict = defaultdict(int)
    open_amounts: dict = {}
    for event in events:  # released + locked <= cap, per source and day
        key = (event["source_agent"], event["ts_us"] // US_PER_DAY)
        if event["kind"] == "lock":
            used[key] += event["amount_micros"]
            open_amounts[event["task_id"]] = (key, event["amount_micros"])
            assert used[key] <= CAP_MICROS, key
        elif event["kind"] in ("refund", "expire"):
            day_key, amount = open_amounts[event["task_id"]]
            used[day_key] -= amount
    mesh.shutdown()
    result = verify(mesh.ledger_path)
    assert result.ok, result.problems[:5]
    assert_dataset_is_the_ledger(mesh.config.out_dir)  # a dead writer's unwritten rows were caught up


def writer_roles(mesh) -> list[str]:
    """The mesh's ledger writers, as ``mesh.actor`` names them (one per partition of a partitioned ledger)."""
    return [mesh.config.writer_role(k) for k in range(mesh.config.writers)]


def funded_mesh(make_mesh, **options):
    mesh = make_mesh(shards=3, track_balances=True, max_daily_toll_per_agent=CAP_MICROS / 1e6,
                     escrow_timeout_s=2.0, sweep_interval_s=0.2, max_batch_messages=50, **options)
    mesh.add_agents(Echo, AGENTS, hosts=2)
    for agent in AGENTS:
        mesh.deposit(agent, "0.05")
    return mesh


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_killing_shards_mid_run_loses_nothing(make_mesh, seed):
    mesh = funded_mesh(make_mesh)
    acknowledged = run_with_kills(mesh, ["shard.0", "shard.1", "shard.2"], seed=seed)
    assert sum(r.ok for r in acknowledged) > 0
    check_after_faults(mesh, acknowledged)


@pytest.mark.slow
def test_a_mesh_that_restores_nothing_still_rebuilds_a_crashed_shard_from_its_own_ledger(make_mesh):
    """``restore_from_ledger=False`` means: adopt no older run's ledger. A shard that crashes
    still rebuilds from this run's ledger (it used to come back empty: balances, caps and open
    escrows lost, its agents' calls ``unknown_agent`` or ``insufficient_funds``)."""
    mesh = funded_mesh(make_mesh, restore_from_ledger=False)
    acknowledged = run_with_kills(mesh, ["shard.0", "shard.1", "shard.2"], seed=6, kills=2)
    assert not [r.error for r in acknowledged if r.record.reason == "unknown_agent"][:3]
    check_after_faults(mesh, acknowledged)


@pytest.mark.slow
def test_killing_the_ledger_writer_mid_run_loses_nothing(make_mesh):
    mesh = funded_mesh(make_mesh)
    acknowledged = run_with_kills(mesh, writer_roles(mesh), seed=3, kills=2)
    check_after_faults(mesh, acknowledged)


@pytest.mark.slow
def test_killing_agent_hosts_mid_run_refunds_their_calls_and_loses_nothing(make_mesh):
    mesh = funded_mesh(make_mesh)
    acknowledged = run_with_kills(mesh, ["host"], seed=5, kills=3)
    refunded = [r for r in acknowledged if r.status.value == "refunded" and "agent_unavailable" in (r.record.reason or "")]
    assert refunded, "calls in flight on a killed host are refunded"  # the restarted hosts serve their agents again:
    mesh.deposit("late-payer", "1")
    after = [mesh.call("late-payer", agent, n) for n, agent in enumerate(AGENTS)]  # every agent, on every host
    assert all(r.ok for r in after), [r.error for r in after if not r.ok][:3]
    check_after_faults(mesh, acknowledged + after)


@pytest.mark.slow
def test_killing_the_writer_among_shards_and_hosts_loses_nothing(make_mesh):
    """Restarted shards rebuild, and restarted hosts read their agents, through the writer
    (``actors.run_files``): kill it among them, so a rebuild or a restart may meet a dead writer."""
    mesh = funded_mesh(make_mesh)
    acknowledged = run_with_kills(mesh, [*writer_roles(mesh), "shard.0", "shard.2", "host"], seed=9, kills=5)
    mesh.deposit("late-payer", "1")
    after = [mesh.call("late-payer", agent, n) for n, agent in enumerate(AGENTS)]  # every agent, on every host
    assert all(r.ok for r in after), [r.error for r in after if not r.ok][:3]
    check_after_faults(mesh, acknowledged + after)


@pytest.mark.slow
def test_killing_the_coordinator_mid_run_loses_nothing(make_mesh):
    mesh = funded_mesh(make_mesh)
    acknowledged = run_with_kills(mesh, ["coordinator", "shard.1"], seed=4, kills=2)
    check_after_faults(mesh, acknowledged)


@pytest.mark.slow
def test_a_tollbooth_escrow_survives_a_coordinator_restart(make_mesh):
    mesh = make_mesh(track_balances=True, clock="manual", start_s=1_767_225_600)
    booth = mesh.tollbooth(TollboothConfig(paper_mode=False, toll_per_message_usd="0.01"))
    mesh.advance_clock(2 * 86_400)  # simulated time: two days in
    booth.deposit("alice", "1")
    assert booth.charge_sync("t1", "alice", "bob").status.value == "escrow_locked"
    assert booth.charge_sync("t2", "alice", "bob").status.value == "escrow_locked"
    old_pid = mesh.stats()["pid"]
    ray.kill(mesh.actor("coordinator"), no_restart=False)
    answer_once_restarted(mesh.stats, old_pid)
    assert ray.get(mesh.actor("coordinator").now_us.remote()) >= (1_767_225_600 + 2 * 86_400) * 1_000_000  # not back to the start
    assert booth.release_sync("t1").status.value == "released"  # the new coordinator found the open escrow
    assert booth.refund_sync("t2").status.value == "refunded"
    live = mesh.snapshot()
    assert live["balances_micros"] == {"alice": 990_000, "bob": 10_000} and live["open_escrows"] == {}
    mesh.shutdown()
    assert verify(mesh.ledger_path).ok
