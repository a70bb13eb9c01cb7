"""The fast lane (single calls through a Ray Compiled Graph): the coordinator's outcomes, a ledger that
replays, calls mixed with batches under caps and balances, and actors killed under it."""

from __future__ import annotations

import asyncio
import random
import threading
import time

import pyarrow.parquet as pq
import pytest
import ray
from test_mesh import Echo, Relay, Sleeper, assert_replay_matches
from test_mesh_faults import AGENTS, CAP_MICROS, check_after_faults

from ledger import read_events, verify
from mesh import InvalidArgumentError, Message, TollboothConfig


def script(mesh) -> list[tuple]:
    """The same calls on any mesh; what each one ended as."""
    mesh.add_agents(Echo, ["echo"])
    mesh.add_agents(Sleeper, ["sleeper"])
    assert mesh.open_fast_lane() == mesh.config.fast_lane
    first = mesh.call("alice", "echo", "hi")
    calls = [
        first,
        mesh.call("alice", "echo", "boom"),  # the handler raises: refunded
        mesh.call("bob", "echo", "x", method="shout"),  # a method's own price
        mesh.call("alice", "echo", "again", task_id=first.task_id),  # a task id already seen: not run again
        mesh.call("alice", "echo", 1, method="nope"),  # an unknown method: the coordinator's way, FAILED
        mesh.call("alice", "nobody", 1),  # an unknown agent: the coordinator's way, FAILED
        mesh.call("carol", "sleeper", 5),  # past the handler timeout: refunded
        *(mesh.call("alice", "echo", n) for n in range(4)),  # the last passes alice's cap: refused
    ]
    return [(r.status.value, r.reason, r.value, r.record.amount_micros, r.ok) for r in calls]


@pytest.mark.parametrize("partitioned", [False, True])
def test_single_calls_end_as_they_do_through_the_coordinator(make_mesh, partitioned):
    options = {"agent_daily_caps_usd": {"alice": "0.004"}, "handler_timeout_s": 0.5, "partitioned_ledger": partitioned}
    fast = make_mesh(**options)
    outcomes = script(fast)
    slow = make_mesh(fast_lane=False, **options)
    assert script(slow) == outcomes
    assert [o[:2] for o in outcomes] == [
        ("released", None), ("refunded", "handler_error"), ("released", None), ("released", None),
        ("failed", "unknown_method"), ("failed", "unknown_agent"), ("refunded", "handler_timeout"),
        ("released", None), ("released", None), ("released", None), ("failed", "over_daily_cap"),
    ]
    stats = fast.stats()
    # all but the repeat and the two unknowns; a call right after one of those may find its shard's
    # events not yet known to be on disk (the coordinator tells the shard as it answers) and go around
    assert stats["fast_lane_calls"] + stats["fast_lane_went_around"] == 8 and stats["fast_lane_went_around"] <= 2
    assert slow.stats()["fast_lane_calls"] == 0
    assert stats["released"] == slow.stats()["released"] == 5
    assert stats["events_written"] == slow.stats()["events_written"] == len(read_events(fast.ledger_path).events)
    for mesh in (fast, slow):
        assert_replay_matches(mesh, mesh.snapshot())
        mesh.shutdown()
        assert verify(mesh.ledger_path).ok


def test_a_manual_clock_or_a_paid_call_goes_through_the_coordinator(make_mesh):
    mesh = make_mesh(clock="manual", start_s=1_767_225_600)
    mesh.add_agents(Echo, ["echo"])
    for bad in (0, -1.0, float("nan"), "5", True):
        with pytest.raises(InvalidArgumentError, match="timeout_s"):
            mesh.open_fast_lane(bad)
    assert not mesh.open_fast_lane()
    assert mesh.call("alice", "echo", "hi").ok
    assert mesh.stats()["fast_lane_calls"] == 0
    live = make_mesh()
    live.add_agents(Echo, ["echo"])
    assert live.open_fast_lane()
    assert live.call("alice", "echo", "hi", payer_wallet="0xabc", tx_signature="0xsig").ok  # no verifier: it runs
    assert live.stats()["fast_lane_calls"] == 0


def test_async_calls_take_the_lane_one_at_a_time_and_go_together_when_concurrent(make_mesh):
    mesh = make_mesh()
    mesh.add_agents(Echo, ["echo"])
    assert mesh.open_fast_lane()

    async def run() -> tuple[list, list]:
        one_by_one = [await mesh.acall("alice", "echo", n) for n in range(5)]
        together = await asyncio.gather(*(mesh.acall("bob", "echo", n) for n in range(200)))
        return one_by_one, together

    one_by_one, together = asyncio.run(run())
    assert [r.value for r in one_by_one] == list(range(5)) and [r.value for r in together] == list(range(200))
    # the five one by one; of the 200 at most the first (the rest are batched), and it goes around the lane
    # when the batch of the others reaches bob's shard first (GO_AROUND: those events are not on disk yet)
    assert mesh.stats()["fast_lane_calls"] in (5, 6)
    assert_replay_matches(mesh, mesh.snapshot())


def test_a_burst_of_concurrent_calls_does_not_open_the_lane(make_mesh):
    mesh = make_mesh()
    mesh.add_agents(Echo, ["echo"])

    async def burst() -> list:
        return await asyncio.gather(*(mesh.acall("alice", "echo", n) for n in range(100)))

    assert all(r.ok for r in asyncio.run(burst()))  # batched by the coordinator: counted as one call
    time.sleep(2.0)  # a compile started by the burst would have ended
    assert mesh.call("alice", "echo", "after").ok and mesh.stats()["fast_lane_calls"] == 0


def test_a_shard_locks_in_the_lane_only_once_its_other_events_are_on_disk(ray_session):
    from actors.budget_shard import LOCK, BudgetShard, ShardSpec
    from actors.fast_lane import GO_AROUND, FastPlan

    now_us = 1_767_225_600_000_000
    shard = BudgetShard.remote(ShardSpec(index=0, shards=1, default_cap_micros=None))
    answer = ray.get(shard.lock_batch.remote([(LOCK, "t1", "alice", "bob", 10, 0.0, None, None, None)], now_us, "live"))
    _, epoch, op = answer[6]  # the coordinator hands this back once t1's lock is on disk
    plan = FastPlan("t2", "alice", "bob", "handle", None, 10, 0, 0, 0, now_us)
    assert ray.get(shard.fast_lock.remote(plan)) == GO_AROUND  # t1's event may still be on its way
    ray.get(shard.mark_durable.remote("an earlier process", op))
    assert ray.get(shard.fast_lock.remote(plan)) == GO_AROUND
    ray.get(shard.mark_durable.remote(epoch, op))
    assert ray.get(shard.fast_lock.remote(plan))[0][0][5] == "escrow_locked"
    ray.kill(shard)


def balanced_mesh(make_mesh, partitioned: bool = False):
    # the fast lane needs escrows to outlive its own wait (handler timeout x 1.5 + 10 s)
    mesh = make_mesh(shards=3, track_balances=True, max_daily_toll_per_agent=CAP_MICROS / 1e6, handler_timeout_s=1.0,
                     escrow_timeout_s=12.0, sweep_interval_s=0.2, max_batch_messages=50, partitioned_ledger=partitioned)
    mesh.add_agents(Echo, AGENTS, hosts=2)
    mesh.add_agents(Relay, ["relay"])
    mesh.deposit_many({agent: "0.05" for agent in AGENTS + ["relay"]})
    assert mesh.open_fast_lane()
    return mesh


def random_call(rng: random.Random, n: int) -> tuple[str, str, object]:
    source = rng.choice(AGENTS)
    if rng.random() < 0.15:  # a relay pays an echo from inside its handler: a nested call
        return source, "relay", rng.choice(AGENTS)
    return source, rng.choice(AGENTS), "boom" if rng.random() < 0.2 else n


@pytest.mark.slow
@pytest.mark.parametrize(("seed", "partitioned"), [(1, False), (2, False), (3, True)])
def test_fast_calls_mixed_with_batches_keep_caps_balances_and_the_ledger(make_mesh, seed, partitioned):
    mesh = balanced_mesh(make_mesh, partitioned)
    rng = random.Random(seed)
    batch_results: list = []

    def batches() -> None:
        batch_rng = random.Random(seed + 100)
        for n in range(16):
            batch_results.extend(mesh.send([Message(*random_call(batch_rng, n)) for _ in range(80)]))
            time.sleep(batch_rng.uniform(0, 0.05))

    thread = threading.Thread(target=batches)
    thread.start()
    single = [mesh.call(*random_call(rng, n)) for n in range(300)]
    thread.join(timeout=300)
    assert not thread.is_alive()
    stats = mesh.stats()
    # most single calls found the lane free; in a partitioned ledger those paying another partition's agent
    # (about two in three) took the coordinator's way
    assert stats["fast_lane_calls"] > (50 if partitioned else 100)
    assert {r.status.value for r in single + batch_results} >= {"released", "refunded", "failed"}  # caps were hit
    check_after_faults(mesh, single + batch_results)  # replay = live, conservation, caps in ledger order, verify
    rows = 0
    for path in mesh.config.parquet_dir.rglob("*.parquet"):  # the lane's rows reach Parquet in seq order too
        seqs = pq.read_table(path, columns=["seq"]).column("seq").to_pylist()
        assert seqs == sorted(seqs)
        rows += len(seqs)
    assert rows == verify(mesh.ledger_path).events


@pytest.mark.slow
@pytest.mark.parametrize(("roles", "partitioned"), [(["shard.0", "shard.1", "shard.2"], False), (["writer"], False),
                                                    (["shard.1", "writer.0", "writer.1", "writer.2"], True)])
def test_killing_actors_under_fast_calls_loses_nothing(make_mesh, roles, partitioned):
    mesh = balanced_mesh(make_mesh, partitioned)
    rng = random.Random(len(roles))
    acknowledged: list = []
    done = threading.Event()

    def caller() -> None:
        for n in range(400):
            acknowledged.append(mesh.call(*random_call(rng, n)))
        done.set()

    thread = threading.Thread(target=caller)
    thread.start()
    for kill in range(2):
        while len(acknowledged) < 60 * (kill + 1) and not done.is_set():  # calls in the lane when it dies
            time.sleep(0.01)
        if done.is_set():
            break
        ray.kill(mesh.actor(rng.choice(roles)), no_restart=False)
    thread.join(timeout=300)
    assert not thread.is_alive(), "the caller is stuck"
    assert sum(r.ok for r in acknowledged) > 100 and mesh.stats()["fast_lane_calls"] >= (10 if partitioned else 50)
    check_after_faults(mesh, acknowledged)


def test_a_partitioned_lane_writes_each_call_in_its_callers_partition_and_leaves_credits_to_the_coordinator(make_mesh):
    from mesh.core.sharding import shard_of

    mesh = make_mesh(shards=2, track_balances=True, partitioned_ledger=True)
    agents = ["alice", "bob", "carol", "dave", "erin", "frank"]
    mesh.add_agents(Echo, agents)
    mesh.deposit_many({agent: "1" for agent in agents})
    assert mesh.open_fast_lane()
    pairs = [(s, t) for s in agents for t in agents if s != t]
    results = [mesh.call(s, t, n) for n, (s, t) in enumerate(pairs)]
    assert all(r.ok for r in results)
    across = sum(shard_of(s, 2) != shard_of(t, 2) for s, t in pairs)
    assert 0 < across < len(pairs)
    stats = mesh.stats()
    # the calls within a partition took the lane (or went around it, their shard's last events on their way
    # to disk); those paying another partition's agent took the coordinator's way
    assert stats["fast_lane_calls"] + stats["fast_lane_went_around"] == len(pairs) - across
    assert stats["fast_lane_calls"] >= (len(pairs) - across) // 2
    events = read_events(mesh.ledger_path).events
    assert all(e["shard"] == shard_of(e["source_agent"], 2) for e in events if e["kind"] in ("lock", "release"))
    assert sum(e["kind"] == "credit" for e in events) == across
    assert_replay_matches(mesh, mesh.snapshot(), track_balances=True)
    mesh.shutdown()
    assert verify(mesh.ledger_path).ok


def test_the_lane_opens_in_the_background_and_parks_when_idle(make_mesh):
    mesh = make_mesh(fast_lane_idle_s=0.5)
    mesh.add_agents(Echo, ["echo"])
    assert all(mesh.call("alice", "echo", n).ok for n in range(8))  # the lane is closed: these go around it, then it compiles
    deadline = time.monotonic() + 30
    while mesh.stats()["fast_lane_calls"] == 0:  # once compiled, single calls take it
        assert mesh.call("alice", "echo", 2).ok and time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(2.0)  # idle past fast_lane_idle_s: parked
    before = mesh.stats()["fast_lane_calls"]
    assert mesh.call("alice", "echo", 3).ok and mesh.stats()["fast_lane_calls"] == before
    mesh.add_agents(Echo, ["echo2"])  # a new host: the lane opens again with it
    assert mesh.open_fast_lane() and mesh.call("alice", "echo2", 4).value == 4
    assert mesh.stats()["fast_lane_calls"] == before + 1
    assert_replay_matches(mesh, mesh.snapshot())


def test_a_bulk_send_parks_the_lane(make_mesh):
    from mesh.fast_path import PARK_AT_MESSAGES

    mesh = make_mesh()
    mesh.add_agents(Echo, ["echo"])

    def lane_calls() -> int:  # calls that took the lane, or found it open and went around
        stats = mesh.stats()
        return stats["fast_lane_calls"] + stats["fast_lane_went_around"]

    assert mesh.open_fast_lane() and mesh.call("alice", "echo", 1).ok and lane_calls() == 1
    small = PARK_AT_MESSAGES - 1
    assert mesh.send_columns(["bob"] * small, ["echo"] * small, list(range(small))).counts()["released"] == small
    assert len(mesh.send([Message("bob", "echo", n) for n in range(small)])) == small
    assert mesh.call("alice", "echo", 2).ok and lane_calls() == 2  # smaller sends leave it open
    bulk = PARK_AT_MESSAGES
    assert mesh.send_columns(["bob"] * bulk, ["echo"] * bulk, list(range(bulk))).counts()["released"] == bulk
    assert mesh.call("alice", "echo", 3).ok and lane_calls() == 2  # parked: the coordinator's way
    assert mesh.open_fast_lane() and mesh.call("alice", "echo", 4).ok and lane_calls() == 3
    assert all(r.ok for r in mesh.send([Message("bob", "echo", n) for n in range(bulk)]))
    assert mesh.call("alice", "echo", 5).ok and lane_calls() == 3
    assert_replay_matches(mesh, mesh.snapshot())


@pytest.mark.slow
def test_a_lock_due_to_expire_sends_the_call_around_the_lane(make_mesh):
    mesh = make_mesh(shards=1, handler_timeout_s=0.5, escrow_timeout_s=11.0, sweep_interval_s=3_600, fast_lane_idle_s=60)
    mesh.add_agents(Echo, ["echo"])
    booth = mesh.tollbooth(TollboothConfig(paper_mode=False, toll_per_message_usd="0.01"))
    assert booth.charge_sync("held", "alice", "bob").status.value == "escrow_locked"
    assert mesh.open_fast_lane()
    assert mesh.call("carol", "echo", 1).ok and mesh.stats()["fast_lane_calls"] == 1  # nothing due yet
    time.sleep(11.5)
    assert mesh.call("carol", "echo", 2).ok  # "held" is due: around the lane, and the coordinator expires it
    assert mesh.stats()["fast_lane_calls"] == 1
    assert [e["kind"] for e in read_events(mesh.ledger_path).events if e.get("task_id") == "held"] == ["lock", "expire"]
    assert mesh.call("carol", "echo", 3).ok and mesh.stats()["fast_lane_calls"] == 2


DETACHED_DRIVER = """
import sys
from mesh import Mesh, MeshConfig
from test_mesh import Echo

mesh = Mesh(MeshConfig(name=sys.argv[1], namespace="tollmesh-tests", out_dir=sys.argv[2], detached=True, shards=2),
            address=sys.argv[3])
mesh.add_agents(Echo, ["echo"])
assert mesh.open_fast_lane()
assert all(mesh.call("alice", "echo", n).ok for n in range(10))
# leaves without shutdown(): the detached mesh must outlive this driver, lane and all
"""


@pytest.mark.slow
def test_a_detached_mesh_outlives_the_driver_that_opened_its_lane(ray_session, tmp_path):
    import os
    import subprocess
    import sys

    from mesh import Mesh

    name = f"detached-{os.getpid()}"
    address = ray_session.get_runtime_context().gcs_address
    subprocess.run([sys.executable, "-c", DETACHED_DRIVER, name, str(tmp_path / name), address],
                   check=True, timeout=180, env={**os.environ})
    mesh = Mesh.attach(name, namespace="tollmesh-tests")
    coordinator = ray.get_actor(f"{name}.coordinator", namespace="tollmesh-tests")
    hosts = ray.get(coordinator.host_names.remote())
    try:
        assert mesh.call("bob", "echo", "still here").value == "still here"  # the coordinator's way: not the owner
        assert mesh.stats()["fast_lane_calls"] == 10
    finally:  # a detached mesh is stopped by name
        writers = [mesh.config.writer_name(k) for k in range(mesh.config.writers)]  # a partition's each (2 shards)
        for actor in [*hosts, f"{name}.shard.0", f"{name}.shard.1", *writers, f"{name}.coordinator"]:
            ray.kill(ray.get_actor(actor, namespace="tollmesh-tests"), no_restart=True)
