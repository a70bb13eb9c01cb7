"""A mesh whose ledger is partitioned by shard (``partitioned_ledger=True``): a writer per shard.

Each shard's events go to its own partition and writer; a release paid to another shard's
agent is received there by a ``credit`` event, written once and in order (the coordinator's
actors.partition_credits), also when a batch of credits is sent again after a crash. The
shard core is checked without Ray first; then meshes: batches, columns, the Tollbooth API,
restarts, config mismatches, and killed shards, writers and coordinators.
"""

from __future__ import annotations

from collections import Counter

import duckdb
import numpy as np
import pytest
import ray

from actors.shard_core import LOCK, ShardCore, ShardSpec
from ledger import read_events, read_table, verify
from ledger.jsonl import JsonlWriter
from ledger.partitions import create, partition_path
from ledger.replay import reconcile, replay_partitions
from ledger.tally import tally_events
from mesh import Message, TollboothConfig
from mesh.core.errors import ConfigError
from mesh.core.sharding import shard_of
from test_mesh import Echo, assert_replay_matches
from test_mesh_faults import check_after_faults, funded_mesh, run_with_kills

START_US = 1_767_225_600_000_000
AGENTS = [f"agent-{i}" for i in range(12)]


# -- the shard core, without Ray ---------------------------------------------------------------

class Partitions:
    """Two partitioned shard cores, their writers, and a coordinator's part done by hand."""

    def __init__(self, root, count: int = 2) -> None:
        self.ledger = root / "toll_ledger.jsonl"
        create(self.ledger, count)
        self.specs = [ShardSpec(index=k, shards=count, default_cap_micros=None, track_balances=True, escrow_timeout_s=None,
                                ledger_path=str(partition_path(self.ledger, k)), partitioned=True) for k in range(count)]
        self.cores = [ShardCore(spec) for spec in self.specs]
        self.writers = [JsonlWriter(partition_path(self.ledger, k)) for k in range(count)]
        self.now_us = START_US

    def write(self, k: int, answer) -> int:
        """Append a shard answer's lines to its partition; the first seq."""
        first = self.writers[k].next_seq
        self.writers[k].append_encoded(answer[1])
        return first

    def forward(self, k: int, answer, first_seq: int) -> list:
        """The credits of an answer written at ``first_seq``, as the coordinator forwards them."""
        sent = []
        by_target: dict[int, list] = {}
        for agent, amount, index, task_id, source in answer[3]:
            by_target.setdefault(shard_of(agent, len(self.cores)), []).append((agent, amount, first_seq + index, task_id, source))
        for target, items in by_target.items():
            credit = self.cores[target].credit_events(items, k, self.now_us)
            self.write(target, credit)
            sent.append((target, items, credit[2]))
        return sent

    def close(self) -> None:
        for writer in self.writers:
            writer.close()


def test_credits_are_events_of_the_target_partition_taken_once_and_rebuilt(tmp_path):
    parts = Partitions(tmp_path)
    for agent in AGENTS:
        k = shard_of(agent, 2)
        parts.write(k, parts.cores[k].deposit_batch([(agent, 10_000)], parts.now_us, "live"))
    payers = [a for a in AGENTS if shard_of(a, 2) == 0]
    payees = [a for a in AGENTS if shard_of(a, 2) == 1]
    ops = [(LOCK, f"t{i}", payers[i % len(payers)], payees[i % len(payees)], 700, 0.0, None, None, None) for i in range(9)]
    parts.write(0, parts.cores[0].lock_batch(ops, parts.now_us, "live"))
    settle = parts.cores[0].settle_batch([(f"t{i}", i % 3 != 0, None if i % 3 else "handler_error") for i in range(9)],
                                         parts.now_us, "live")
    first = parts.write(0, settle)
    sent = parts.forward(0, settle, first)
    assert [(target, count) for target, _, count in sent] == [(1, 6)]  # the six releases, credited in partition 1
    again = parts.cores[1].credit_events(sent[0][1], 0, parts.now_us)  # sent again after a crash: nothing new
    assert again[2] == 0 and again[1] == b""
    parts.close()
    result = verify(parts.ledger, state_at_us=parts.now_us)
    assert result.ok and result.warnings == [], [str(p) for p in result.problems]
    live = [core.snapshot(parts.now_us) for core in parts.cores]
    balances = {**live[0]["balances_micros"], **live[1]["balances_micros"]}
    assert result.state["balances_micros"] == balances
    rebuilt = ShardCore(parts.specs[1])  # from its own partition only: the credits are its events
    assert rebuilt.snapshot(parts.now_us)["balances_micros"] == live[1]["balances_micros"]
    assert rebuilt.credit_marks() == {0: max(from_seq for _, _, from_seq, _, _ in sent[0][1])}
    assert rebuilt.credit_events(sent[0][1], 0, parts.now_us)[2] == 0


# -- meshes ------------------------------------------------------------------------------------

def partitioned_mesh(make_mesh, **options):
    options = {"shards": 3, "track_balances": True, "partitioned_ledger": True, **options}
    mesh = make_mesh(**options)
    mesh.add_agents(Echo, AGENTS, hosts=2)
    for agent in AGENTS:
        mesh.deposit(agent, "1")
    return mesh


def check_partitioned(mesh) -> None:
    """The ledger verifies with every credit paired, replays to the live state, and its counts and
    Parquet partitions agree with it."""
    live = mesh.snapshot()
    assert_replay_matches(mesh, live, track_balances=True)
    assert sum(live["balances_micros"].values()) + live["locked_total_micros"] == live["deposits_total_micros"]
    stats = mesh.stats()
    events = read_events(mesh.ledger_path).events
    tally = tally_events(events)
    assert stats["events_written"] == len(events)
    assert {k: stats[k] for k in ("locked", "released", "refunded")} == {k: tally.counts[k] for k in ("locked", "released", "refunded")}
    out = mesh.config.out_dir
    summary = mesh.shutdown()  # the writers' summaries, merged (a restarted writer counts from its restart)
    assert summary["parquet_error"] is None and summary["events"] <= len(events)
    assert len(summary["parquet_files"]) >= mesh.config.shards
    result = verify(mesh.ledger_path)
    assert result.ok and result.warnings == [], ([str(p) for p in result.problems[:5]], [str(w) for w in result.warnings[:5]])
    assert {e["shard"] for e in events} == set(range(mesh.config.shards))
    by_shard = dict(duckdb.sql(f"select shard, count(*) from read_parquet('{out}/parquet/**/*.parquet', hive_partitioning=true) "
                               "group by shard").fetchall())
    assert by_shard == dict(Counter(e["shard"] for e in events))


def test_a_partitioned_mesh_writes_each_shards_events_to_its_own_partition(make_mesh):
    mesh = partitioned_mesh(make_mesh, max_batch_messages=64)
    messages = [Message(AGENTS[i % 12], AGENTS[(i * 5 + 1) % 12], i if i % 10 else "boom") for i in range(900)]
    results = mesh.send(messages)
    assert Counter(r.status.value for r in results) == {"released": 810, "refunded": 90}
    for k in range(3):  # a partition holds its shard's agents' events, each naming the shard
        events = read_events(partition_path(mesh.ledger_path, k)).events
        assert {e["shard"] for e in events} == {k}
        assert all(shard_of(e["target_agent"] if e["kind"] in ("deposit", "credit") else e["source_agent"], 3) == k
                   for e in events)
    credits = [e for e in read_events(mesh.ledger_path).events if e["kind"] == "credit"]
    crossing = sum(r.ok and shard_of(m.source, 3) != shard_of(m.target, 3) for r, m in zip(results, messages))
    assert len(credits) == crossing > 0
    check_partitioned(mesh)


def test_calls_as_columns_the_tollbooth_and_a_reset_write_partitions_too(make_mesh):
    mesh = partitioned_mesh(make_mesh, max_batch_messages=500)
    n = 3_000
    calls = mesh.send_columns([AGENTS[i % 12] for i in range(n)], [AGENTS[(i * 7 + 2) % 12] for i in range(n)],
                              [i if i % 20 else "boom" for i in range(n)])
    assert calls.counts() == {"released": 2_850, "refunded:handler_error": 150}
    booth = mesh.tollbooth(TollboothConfig(paper_mode=False, toll_per_message_usd="0.01"))
    assert booth.charge_sync("b1", AGENTS[0], AGENTS[1]).status.value == "escrow_locked"
    assert booth.release_sync("b1").status.value == "released"
    booth.reset_daily()
    resets = [e for e in read_events(mesh.ledger_path).events if e["kind"] == "reset_daily"]
    assert sorted(e["shard"] for e in resets) == [0, 1, 2]
    result = mesh.call(AGENTS[3], AGENTS[4], "one")  # one call, the lane not open: the coordinator's way
    assert result.ok
    check_partitioned(mesh)


@pytest.mark.slow
def test_a_partitioned_ledger_restores_and_refuses_another_layout(make_mesh, tmp_path):
    out = tmp_path / "run"
    mesh = partitioned_mesh(make_mesh, out_dir=out, name="first")
    mesh.send([Message(AGENTS[i % 12], AGENTS[(i + 5) % 12], i) for i in range(200)])
    before = mesh.snapshot()
    mesh.shutdown()
    again = make_mesh(out_dir=out, name="second", shards=3, track_balances=True, partitioned_ledger=True)
    assert again.restored["events"] == sum(verify(out).partition_events)
    assert reconcile(again.snapshot(), before) == []
    again.shutdown()
    with pytest.raises(ConfigError, match="partitioned by shard .3 partitions.: open it with partitioned_ledger=True and shards=3"):
        make_mesh(out_dir=out, name="third", shards=3, track_balances=True, partitioned_ledger=False)
    with pytest.raises(ConfigError, match="partitioned into 3 shards: open it with shards=3"):
        make_mesh(out_dir=out, name="fourth", shards=2, track_balances=True)  # the kind on disk, not its count
    unsaid = make_mesh(out_dir=out, name="fourth-b", shards=3, track_balances=True)  # no kind given: the ledger's own
    assert unsaid.config.partitioned_ledger and reconcile(unsaid.snapshot(), before) == []
    unsaid.shutdown()
    plain = make_mesh(out_dir=tmp_path / "plain", name="fifth", track_balances=True, partitioned_ledger=False)
    plain.deposit("a", "1")
    plain.shutdown()
    with pytest.raises(ConfigError, match="is an ordinary ledger: open it with partitioned_ledger=False"):
        make_mesh(out_dir=tmp_path / "plain", name="sixth", track_balances=True, partitioned_ledger=True)
    ordinary = make_mesh(out_dir=tmp_path / "plain", name="seventh", track_balances=True, shards=3)
    assert not ordinary.config.partitioned_ledger and ordinary.snapshot()["balances_micros"] == {"a": 1_000_000}
    ordinary.shutdown()
    assert replay_partitions(out).snapshot(0)["balances_micros"] == before["balances_micros"]
    assert read_table(out / "parquet").num_rows == read_table(out).num_rows


@pytest.mark.slow
@pytest.mark.parametrize("roles,seed", [(["shard.0", "shard.1", "shard.2"], 1), (["writer.0", "writer.2", "shard.1"], 3),
                                        (["coordinator", "shard.2", "writer.1"], 4)])
def test_killing_shards_writers_and_the_coordinator_of_a_partitioned_mesh_loses_nothing(make_mesh, roles, seed):
    """A release whose credit was not written when its shard, the target's writer or the
    coordinator died is credited once after the recovery (the ledger's warnings are none)."""
    mesh = funded_mesh(make_mesh, partitioned_ledger=True)
    acknowledged = run_with_kills(mesh, roles, seed=seed, kills=3)
    assert sum(r.ok for r in acknowledged) > 0
    check_after_faults(mesh, acknowledged)
    result = verify(mesh.ledger_path)
    assert result.ok and not [w for w in result.warnings if "no credit" in w.message], [str(w) for w in result.warnings[:3]]


def test_a_partition_writer_killed_between_calls_is_restarted_and_its_shard_goes_on(make_mesh):
    mesh = partitioned_mesh(make_mesh)
    mesh.send([Message(AGENTS[i % 12], AGENTS[(i + 1) % 12], i) for i in range(100)])
    ray.kill(mesh.actor("writer.1"), no_restart=False)
    results = mesh.send([Message(AGENTS[i % 12], AGENTS[(i + 2) % 12], i) for i in range(300)])
    assert sum(r.ok for r in results) >= 250  # a call the lost append held may come back as an error to send again
    check_partitioned(mesh)
    assert np.all(np.diff([e["seq"] for e in read_events(partition_path(mesh.ledger_path, 1)).events]) == 1)


@pytest.mark.slow
def test_releases_whose_credits_a_crash_lost_are_credited_when_the_mesh_starts_again(make_mesh, tmp_path):
    """The whole mesh died after releases were written and before their credits were: the next
    mesh on that ledger writes the missing credits once (a partition that only receives, cut back
    to before its last credits, is what that crash leaves)."""
    out = tmp_path / "run"
    payers = [a for a in AGENTS if shard_of(a, 2) == 0]
    payees = [a for a in AGENTS if shard_of(a, 2) == 1]
    options = {"out_dir": out, "shards": 2, "track_balances": True, "partitioned_ledger": True, "ledger_parquet": False}
    mesh = make_mesh(name="before", **options)
    mesh.add_agents(Echo, payees, hosts=1)
    for agent in payers:
        mesh.deposit(agent, "1")
    for n in range(3):
        mesh.send([Message(payers[i % len(payers)], payees[i % len(payees)], i) for i in range(40)])
    before = mesh.snapshot()
    mesh.shutdown()
    receiver = partition_path(out / "toll_ledger.jsonl", 1)
    lines = receiver.read_bytes().splitlines(keepends=True)
    last_credit = max(i for i, line in enumerate(lines) if b'"kind":"credit"' in line)
    cut = max(i for i, line in enumerate(lines[:last_credit]) if b'"seal":' in line) + 1
    receiver.write_bytes(b"".join(lines[:cut]))  # the last credit batches never reached the disk
    lost = verify(out)
    assert lost.ok and len([w for w in lost.warnings if "has no credit of it yet" in w.message]) == last_credit + 1 - cut
    again = make_mesh(name="after", **options)
    assert reconcile(again.snapshot(), before) == []  # the credits are back in the payees' balances
    again.shutdown()
    result = verify(out)
    assert result.ok and result.warnings == [], [str(w) for w in result.warnings[:3]]
    credits = Counter((e["from_shard"], e["from_seq"]) for e in read_events(out).events if e["kind"] == "credit")
    assert credits and max(credits.values()) == 1


@pytest.mark.slow
def test_a_simulation_on_a_partitioned_ledger_checks_out_and_resumes(ray_session, tmp_path):
    from mesh.scenario import Scenario
    from mesh.sim_progress import read_progress
    from mesh.simulate import run_simulation
    from test_simulate import SMALL

    scenario = Scenario(**{**SMALL, "partitioned_ledger": True})
    report = run_simulation(scenario, tmp_path / "run", plots=False)
    assert report["checks"] == {"ledger_verifies": True, "replay_matches_live": True, "conservation_holds": True,
                                "ledger_matches_counters": True, "problems": []}
    assert (tmp_path / "run" / "toll_ledger.partitions.json").exists() and not (tmp_path / "run" / "toll_ledger.jsonl").exists()
    progress = read_progress(tmp_path / "run", scenario)  # what --resume reads: the partitions, not an empty run
    assert progress.finished and progress.next_tick > 0 and progress.deposited
