"""A ledger partitioned by shard (ledger.partitions): its readers read it as one ledger.

A model of N in-process partition books (tests/partitioned_model.py) runs random calls,
deposits, resets and credits; then verify passes (a release not credited yet is a warning),
replay and verify's state equal the books, and every reader (table, tally, compact, settle,
DuckDB) sees every event once. Credits that are doubled, altered, out of order, of no
release or in the wrong partition, and events in the wrong partition, are each named.
"""

from __future__ import annotations

import shutil

import duckdb
import orjson
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ledger.credits import all_missing_credits, credit_marks
from ledger.events import credit_event, record_event
from ledger.export import compact
from ledger.files import segments
from ledger.partitions import create, manifest_path, owner, partition_count, partition_path, partitions
from ledger.reader import event_lines, last_ts_us, read_events, read_table
from ledger.replay import ledger_has_events, reconcile, replay_file, replay_partitions
from ledger.tally import tally_ledger
from ledger.verify import verify
from mesh.booth.settlement import settle
from mesh.core.errors import InvalidArgumentError, LedgerError
from mesh.core.records import TollRecord
from tests.partitioned_model import PartitionedModel

AGENTS = [f"agent-{i}" for i in range(8)]

steps = st.lists(
    st.one_of(
        st.tuples(st.just("deposit"), st.sampled_from(AGENTS), st.integers(1, 2_000)),
        st.tuples(st.just("call"), st.sampled_from(AGENTS), st.sampled_from(AGENTS), st.integers(0, 900),
                  st.sampled_from(["release", "refund", "open", "paper"])),
        st.tuples(st.just("forward"), st.integers(0, 50)),
        st.tuples(st.just("reset"),),
    ),
    max_size=60,
)


def run_model(model: PartitionedModel, plan: list[tuple], *, deliver_all: bool) -> None:
    for number, step in enumerate(plan):
        model.tick(1_000)
        if step[0] == "deposit" and model.balances:  # a mesh without balances takes no deposits
            model.deposit(step[1], step[2])
        elif step[0] == "call":
            model.call(f"t{number}", step[1], step[2], step[3], step[4])
        elif step[0] == "forward" and model.pending():
            model.forward(model.pending()[step[1] % len(model.pending())])
        elif step[0] == "reset":
            model.reset_daily()
    if deliver_all:
        model.forward_all()
    model.close()


def uncredited_count(model: PartitionedModel) -> int:
    return sum(len(waiting) for waiting in model.outbox.values())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(partitions=st.integers(1, 4), balances=st.booleans(), plan=steps, deliver_all=st.booleans(),
       cap=st.sampled_from([None, 1_500]), format_version=st.sampled_from([1, 2]))
def test_any_run_verifies_and_reads_back_as_the_books_hold_it(tmp_path_factory, partitions, balances, plan, deliver_all,
                                                                cap, format_version):
    run = tmp_path_factory.mktemp("run")
    model = PartitionedModel(run, partitions, balances=balances, cap_micros=cap, format_version=format_version)
    run_model(model, plan, deliver_all=deliver_all)
    ledger = model.ledger

    result = verify(ledger, state_at_us=model.now_us)
    assert result.ok, [str(p) for p in result.problems]
    not_credited = [w for w in result.warnings if "has no credit of it yet" in w.message]
    assert len(not_credited) == uncredited_count(model) == len(result.warnings)
    assert reconcile(result.state, model.snapshot()) == []
    assert reconcile(replay_partitions(ledger).snapshot(model.now_us), model.snapshot()) == []
    assert result.partition_events == [w.next_seq for w in model.writers]

    events = read_events(ledger).events
    assert len(events) == result.events == sum(result.partition_events)
    assert all(e["shard"] == owner(e["source_agent"] or e["target_agent"], partitions)
               for e in events if e["kind"] not in ("reset_daily", "credit"))
    table = read_table(ledger)
    assert table.num_rows == len(events)
    keys = list(zip(table["ts"].to_pylist(), table["shard"].to_pylist(), table["seq"].to_pylist()))
    assert keys == sorted(keys)
    credits = [e for e in events if e["kind"] == "credit"]
    table_credits = [seq for kind, seq in zip(table["kind"].to_pylist(), table["from_seq"].to_pylist()) if kind == "credit"]
    assert sorted(table_credits) == sorted(e["from_seq"] for e in credits)

    tally = tally_ledger(ledger)
    assert tally.counts["released"] == sum(e["kind"] in ("release", "paper_release") for e in events)
    assert tally.amounts["released"] == sum(model.released.values())
    assert last_ts_us(ledger) == max((e["ts_us"] for e in events), default=None)
    assert ledger_has_events(ledger) == bool(events)

    out = run / "compacted"
    files = compact(ledger, out)
    if events:
        assert all(f.relative_to(out).parts[0].startswith("shard=") for f in files)
        again = read_table(out)
        assert again.num_rows == table.num_rows
        for name in ("seq", "shard", "kind", "amount_micros", "from_shard", "from_seq"):
            assert again[name].to_pylist() == table[name].to_pylist(), name
        by_shard = duckdb.sql(f"select shard, count(*) from read_parquet('{out}/**/*.parquet', hive_partitioning=true) "
                              "group by shard order by shard").fetchall()
        assert by_shard == [(k, n) for k, n in enumerate(result.partition_events) if n]

    netted = settle(ledger, minimum_usd=0)
    assert netted.net_micros == sum(model.released.values())

    if partitions > 1:  # what a rebuilt receiver finds missing is what the outboxes hold; writing it ends the warnings
        repaired = PartitionedModel.reopen(model)
        for k in range(partitions):
            own = [line.event for line in event_lines(segments(partition_path(ledger, k)))]
            marks_of = [credit_marks(own) if j == k else {} for j in range(partitions)]
            missing = [event for _, event in all_missing_credits(ledger, marks_of).get(k, [])]
            waiting = [e for (_, to), queue in model.outbox.items() if to == k for e in queue]
            assert sorted((e["shard"], e["seq"]) for e in missing) == sorted((e["shard"], e["seq"]) for e in waiting)
            for release in missing:
                repaired.append(k, credit_event(release, from_shard=release["shard"], ts_us=model.now_us, shard=k))
        repaired.close()
        after = verify(ledger, state_at_us=model.now_us)
        assert after.ok and after.warnings == [] and reconcile(after.state, model.snapshot()) == []


def ledger_of(tmp_path, *, partitions=2, balances=True, forward=True) -> PartitionedModel:
    """A small run: a deposit on each side, a call across, its credit (if ``forward``)."""
    model = PartitionedModel(tmp_path, partitions, balances=balances)
    payer, payee = cross_pair(partitions)
    model.deposit(payer, 1_000)
    model.deposit(payee, 10)
    model.tick()
    model.call("t1", payer, payee, 300, "release")
    if forward:
        model.forward_all()
    return model


def cross_pair(partitions: int) -> tuple[str, str]:
    """Two agents whose accounts are in partitions 0 and 1."""
    first = next(a for a in AGENTS if owner(a, partitions) == 0)
    second = next(a for a in AGENTS if owner(a, partitions) == 1)
    return first, second


def release_of(model: PartitionedModel, task_id: str) -> dict:
    return next(e for e in read_events(model.ledger).events if e["kind"] == "release" and e["task_id"] == task_id)


def problems(model: PartitionedModel) -> list[str]:
    model.close()
    return [p.message for p in verify(model.ledger).problems]


def test_a_partitioned_run_verifies_and_its_credit_pairs_its_release(tmp_path):
    model = ledger_of(tmp_path)
    model.close()
    result = verify(model.ledger)
    assert result.ok and result.warnings == []
    assert result.partition_events == [3, 2]  # deposit, lock, release | deposit, credit
    payer, payee = cross_pair(2)
    assert result.files == [partition_path(model.ledger, 0), partition_path(model.ledger, 1)]
    assert replay_partitions(model.ledger).snapshot(model.now_us)["balances_micros"] == {payer: 700, payee: 310}
    assert verify(tmp_path).ok  # named by its directory too


def test_a_release_not_credited_yet_is_a_warning_and_counts_in_the_state(tmp_path):
    model = ledger_of(tmp_path, forward=False)
    model.close()
    result = verify(model.ledger, state_at_us=model.now_us)
    assert result.ok
    assert len(result.warnings) == 1 and "has no credit of it yet" in result.warnings[0].message
    assert result.state["balances_micros"][cross_pair(2)[1]] == 310


def test_a_credit_written_twice_is_named(tmp_path):
    model = ledger_of(tmp_path)
    model.append(1, credit_event(release_of(model, "t1"), from_shard=0, ts_us=model.now_us, shard=1))
    assert any("again" in p and "credited once" in p for p in problems(model))


def test_a_credit_of_another_amount_or_agent_is_named(tmp_path):
    model = ledger_of(tmp_path, forward=False)
    release = dict(release_of(model, "t1"), amount_micros=301)
    model.append(1, credit_event(release, from_shard=0, ts_us=model.now_us, shard=1))
    assert any("does not match the release" in p for p in problems(model))


def test_a_credit_of_an_event_that_is_no_release_is_named(tmp_path):
    model = ledger_of(tmp_path)
    lock = next(e for e in read_events(model.ledger).events if e["kind"] == "lock")
    model.append(1, credit_event(lock, from_shard=0, ts_us=model.now_us, shard=1))
    assert any("which is no release that paid another partition's agent" in p for p in problems(model))


def test_a_credit_from_its_own_partition_or_of_no_partition_is_named(tmp_path):
    model = ledger_of(tmp_path, forward=False)
    release = release_of(model, "t1")
    model.append(1, credit_event(release, from_shard=1, ts_us=model.now_us, shard=1))
    model.append(1, credit_event(release, from_shard=5, ts_us=model.now_us, shard=1))
    found = problems(model)
    assert sum("a credit comes from another partition" in p for p in found) == 2


def test_credits_out_of_their_partition_order_are_named(tmp_path):
    model = PartitionedModel(tmp_path, 2, balances=True)
    payer, payee = cross_pair(2)
    model.deposit(payer, 1_000)
    model.call("t1", payer, payee, 100, "release")
    model.call("t2", payer, payee, 100, "release")
    first, second = model.outbox[(0, 1)]
    model.outbox[(0, 1)].clear()
    for release in (second, first):
        model.append(1, credit_event(release, from_shard=0, ts_us=model.now_us, shard=1))
    assert any("come in its seq order" in p for p in problems(model))


def test_an_event_in_another_agents_partition_is_named(tmp_path):
    model = ledger_of(tmp_path)
    payer, payee = cross_pair(2)
    lock = record_event("lock", TollRecord("t9", payee, payer, 5, status="escrow_locked"), ts_us=model.now_us,
                        mode="live", shard=0)
    model.append(0, lock)
    assert any(f"source_agent={payee!r} in partition 0: that agent's account is in partition 1" in p for p in problems(model))


def test_an_event_without_its_partitions_shard_is_named(tmp_path):
    model = ledger_of(tmp_path)
    payer, _ = cross_pair(2)
    model.append(0, record_event("deposit", TollRecord("", "", payer, 5, status="released"), ts_us=model.now_us, mode="live"))
    assert any("an event of shard=None in partition 0" in p for p in problems(model))


def test_a_credit_in_an_ordinary_ledger_is_named(tmp_path):
    from ledger.jsonl import JsonlWriter

    writer = JsonlWriter(tmp_path / "l.jsonl")
    release = {"seq": 0, "task_id": "t", "source_agent": "a", "target_agent": "b", "amount_micros": 1}
    writer.append([credit_event(release, from_shard=1, ts_us=0, shard=0)])
    writer.close()
    assert any("not partitioned" in p.message for p in verify(tmp_path / "l.jsonl").problems)


@pytest.mark.parametrize("partition", [0, 1, 2])
def test_a_torn_tail_in_any_partition_is_tolerated(tmp_path, partition):
    model = ledger_of(tmp_path, partitions=3)
    model.close()
    before = verify(model.ledger, state_at_us=model.now_us).state
    with segments(partition_path(model.ledger, partition))[-1].open("ab") as f:
        f.write(b'{"v":2,"seq":9,"ts_us":1,"ki')
    result = verify(model.ledger, state_at_us=model.now_us)
    assert result.ok and any("torn line" in w.message for w in result.warnings)
    assert result.state == before


def test_a_changed_line_in_a_partition_breaks_its_seal(tmp_path):
    model = ledger_of(tmp_path)
    model.close()
    path = partition_path(model.ledger, 1)
    path.write_bytes(path.read_bytes().replace(b'"amount_micros":300', b'"amount_micros":900'))
    found = [p for p in verify(model.ledger).problems]
    assert found and all(p.path == path for p in found) and any("seal broken" in p.message for p in found)


def test_a_lost_partition_or_a_broken_manifest_is_named(tmp_path):
    model = ledger_of(tmp_path)
    model.close()
    shutil.rmtree(partition_path(model.ledger, 1).parent)
    with pytest.raises(LedgerError, match=r"names 2 partitions, but these are missing: .*shard=1"):
        verify(model.ledger)
    for text, why in [(b"{", "not JSON"), (b'{"format": "x"}', "not a partition manifest"),
                      (b'{"format": "tollmesh.partitioned", "version": 9, "partitions": 2}', "version 9"),
                      (b'{"format": "tollmesh.partitioned", "version": 1, "partitions": true}', "partitions=True")]:
        manifest_path(model.ledger).write_bytes(text)
        with pytest.raises(LedgerError, match=why):
            read_table(model.ledger)


def test_two_ledgers_under_one_name_are_refused(tmp_path):
    model = ledger_of(tmp_path)
    model.close()
    model.ledger.write_bytes(b"")
    with pytest.raises(LedgerError, match="two ledgers under one name"):
        verify(model.ledger)
    plain = tmp_path / "plain.jsonl"
    plain.write_bytes(b"")
    with pytest.raises(LedgerError, match="ordinary ledger is already there"):
        create(plain, 2)


def test_create_keeps_its_count_and_readers_refuse_a_partitioned_name_as_one_file(tmp_path):
    ledger = tmp_path / "toll_ledger.jsonl"
    create(ledger, 3)
    create(ledger, 3)  # idempotent
    assert partition_count(ledger) == 3 and len(partitions(ledger)) == 3
    with pytest.raises(LedgerError, match="has 3 partitions, not 2"):
        create(ledger, 2)
    with pytest.raises(LedgerError, match="partitioned by shard"):
        segments(ledger)  # a reader not taught partitions fails loudly, never reads a fresh run
    with pytest.raises(LedgerError, match="replay_partitions"):
        from ledger.replay import partition_book
        replay_file(partition_book(0, 1), ledger)
    with pytest.raises(InvalidArgumentError, match="names one partition"):
        tally_ledger(ledger, from_seq=3)
    assert not ledger_has_events(ledger) and read_table(ledger).num_rows == 0
    assert orjson.loads(manifest_path(ledger).read_bytes()) == {"format": "tollmesh.partitioned", "version": 1, "partitions": 3}


def test_the_ledger_commands_read_a_partitioned_run(tmp_path, capsys):
    from mesh.cli import main

    model = ledger_of(tmp_path, partitions=3)
    model.close()
    assert main(["ledger", "verify", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "partitions:    3 (events: 3, 2, 0)" in out and "INTEGRITY: OK" in out
    assert main(["ledger", "report", str(model.ledger)]) == 0
    assert "released" in capsys.readouterr().out
    assert main(["ledger", "export", str(model.ledger), "--format", "csv", "--out", str(tmp_path / "all.csv")]) == 0
    assert (tmp_path / "all.csv").read_text().count("\n") == 1 + 5  # a header, then every event of every partition
    assert main(["ledger", "compact", str(model.ledger), "--out", str(tmp_path / "parquet")]) == 0
    assert sorted(p.name for p in (tmp_path / "parquet").iterdir()) == ["shard=0", "shard=1", "shard=2"]  # one per partition


def test_partitions_of_two_kinds_of_booth_are_named(tmp_path):
    model = PartitionedModel(tmp_path, 2, balances=True)
    payer, payee = cross_pair(2)
    model.deposit(payer, 1_000)
    lock = record_event("lock", TollRecord("t9", payee, payer, 5, status="escrow_locked"), ts_us=model.now_us,
                        mode="live", shard=1)
    model.append(1, lock)  # partition 1 locks with no funds: it tracks no balances, partition 0 does
    assert any("some partitions track balances and some lock without them" in p for p in problems(model))
    with pytest.raises(LedgerError, match="some partitions track balances and some do not"):
        replay_partitions(model.ledger)
