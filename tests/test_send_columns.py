"""``Mesh.send_columns``, the bulk path: the same outcomes as ``Mesh.send``, strict columns, faults.

Random sends (hot sources at their caps and balances, unknown targets and methods,
handlers that raise, task ids repeated by their caller, oversized payloads) go once through
``send_columns`` and once, on a twin mesh, through ``send``: every call must end the
same way, both ledgers verify and replay to the live state, and money is conserved.
"""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
from test_mesh import replayed_snapshot

from ledger import reconcile, verify
from mesh import Agent, CallColumns, InvalidArgumentError, InvalidTypeError, Message
from mesh.core.errors import InvalidIdError


class Priced(Agent):
    price_usd = "0.004"
    prices_usd = {"big": "0.009"}

    def handle(self, ctx, payload):
        if payload == "boom":
            raise RuntimeError("on purpose")
        return payload

    def big(self, ctx, payload):
        return payload


class Dying(Agent):
    price_usd = "0.001"

    def handle(self, ctx, payload):
        if payload == "die":
            os._exit(1)
        return payload


SOURCES = [f"payer-{i}" for i in range(6)]
TARGETS = ["svc-0", "svc-1", "nobody"]
def _mesh(make_mesh, track: bool, batch: int = 100):
    """A mesh whose batches hold a whole send: concurrent batches of one send may reach a shard in any
    order (on either path), so two meshes end capped calls alike only within one batch."""
    mesh = make_mesh(shards=2, max_daily_toll_per_agent="0.03", track_balances=track, max_payload_bytes=200,
                     max_batch_messages=batch)
    mesh.add_agents(Priced, TARGETS[:2])
    if track:
        mesh.deposit_many({s: "0.02" for s in SOURCES[:4]})
    return mesh


@pytest.mark.parametrize("seed, track", [(1, False), (2, True), (3, True)])
def test_send_columns_ends_every_call_as_send_does(make_mesh, seed, track):
    rng = random.Random(seed)
    columns_mesh, records_mesh = _mesh(make_mesh, track), _mesh(make_mesh, track)
    for _ in range(3):  # three sends; task ids repeat across them (a retry comes from the same caller)
        picked = {}
        for _ in range(rng.randint(1, 40)):
            k = rng.randint(0, 50)
            source = SOURCES[k % len(SOURCES)] if rng.random() < 0.9 else SOURCES[0]
            picked[f"t{k}"] = (source if f"t{k}" not in picked else picked[f"t{k}"][0], rng.choice(TARGETS[:2] * 4 + TARGETS),
                               rng.choice(["ok"] * 8 + ["boom", "x" * 300]), rng.choice(["handle"] * 5 + ["big", "nope"]))
        calls = [(SOURCES[int(task[1:]) % len(SOURCES)], t, p, m, task) for task, (_, t, p, m) in picked.items()]
        done = columns_mesh.send_columns([c[0] for c in calls], [c[1] for c in calls], [c[2] for c in calls],
                                         methods=[c[3] for c in calls], task_ids=[c[4] for c in calls])
        results = records_mesh.send([Message(s, t, p, m, task) for s, t, p, m, task in calls])
        assert done.task_ids == [c[4] for c in calls]
        assert done.statuses() == [r.status.value for r in results]
        assert done.reasons() == [r.reason for r in results]
        assert done.faults() == [None] * len(calls)
    for mesh in (columns_mesh, records_mesh):
        live, stats = mesh.snapshot(), mesh.stats()
        assert stats["locked_micros"] == 0 and stats["open_escrows"] == 0
        mesh.shutdown()
        result = verify(mesh.ledger_path)
        assert result.ok, result.problems
        keys = ("balances_micros", "locked_total_micros", "deposits_total_micros", "open_escrows")
        replayed = replayed_snapshot(mesh, track_balances=track)
        assert reconcile({k: replayed[k] for k in keys}, {k: live[k] for k in keys}) == []


@pytest.mark.parametrize("partitioned", [False, True])
def test_large_batches_travel_from_shard_to_writer_and_both_ledgers_hold_them(make_mesh, partitioned):
    """A batch whose events pass 64 KiB a shard reaches the writer as references the coordinator never
    reads (``actors.budget_shard.with_payload``): JSONL and Parquet still hold every event once, in
    order, and the ledger replays to the live state."""
    from test_parquet_catch_up import assert_dataset_is_the_ledger

    mesh = make_mesh(shards=2, track_balances=True, partitioned_ledger=partitioned, max_batch_messages=5_000)
    mesh.add_agents(Priced, TARGETS[:2])
    mesh.deposit_many({s: "100" for s in SOURCES})
    n = 3_000
    for round_ in range(2):
        targets, payloads = [TARGETS[i % 3] for i in range(n)], ["boom" if i % 50 == 7 else round_ for i in range(n)]
        done = mesh.send_columns([SOURCES[i % 6] for i in range(n)], targets, payloads)
        expected = [("failed", "unknown_agent") if t == "nobody" else ("refunded", "handler_error") if p == "boom"
                    else ("released", None) for t, p in zip(targets, payloads)]
        assert list(zip(done.statuses(), done.reasons())) == expected
    live = mesh.snapshot()
    mesh.shutdown()
    result = verify(mesh.ledger_path)
    assert result.ok, result.problems
    assert_dataset_is_the_ledger(mesh.config.out_dir)
    keys = ("balances_micros", "locked_total_micros", "deposits_total_micros", "open_escrows")
    replayed = replayed_snapshot(mesh, track_balances=True)
    assert reconcile({k: replayed[k] for k in keys}, {k: live[k] for k in keys}) == []


def test_counts_are_those_of_send_counted(make_mesh):
    mesh, twin = _mesh(make_mesh, track=False), _mesh(make_mesh, track=False)
    sources = [SOURCES[i % 3] for i in range(30)]
    targets = [TARGETS[i % 3] for i in range(30)]
    payloads = ["boom" if i % 7 == 0 else "ok" for i in range(30)]
    done = mesh.send_columns(sources, targets, payloads)
    counted = twin.send_counted([Message(s, t, p) for s, t, p in zip(sources, targets, payloads)])
    assert done.counts() == counted
    assert sum(done.counts().values()) == 30 and done.counts()["failed:unknown_agent"] == 10
    stats = mesh.stats()
    assert stats["released"] + stats["refunded"] + stats["rejected"] == 30


def test_a_repeated_task_id_is_answered_not_run_again(make_mesh):
    mesh = _mesh(make_mesh, track=False)
    first = mesh.send_columns(["payer-0"], ["svc-0"], ["ok"], task_ids=["job-1"])
    again = mesh.send_columns(["payer-0"], ["svc-0"], ["boom"], task_ids=["job-1"])
    assert first.statuses() == again.statuses() == ["released"]
    assert mesh.stats()["released"] == 1


@pytest.mark.parametrize("kwargs, error, words", [
    ({"sources": "payer-0"}, InvalidTypeError, "sources"),
    ({"sources": ["payer-0", 7]}, InvalidTypeError, "sources[1]"),
    ({"targets": ["svc-0"]}, InvalidArgumentError, "targets"),
    ({"payloads": ["a"]}, InvalidArgumentError, "payloads"),
    ({"payloads": "ab"}, InvalidTypeError, "payloads"),
    ({"methods": ["handle", "_secret"]}, InvalidArgumentError, "methods[1]"),
    ({"methods": 3}, InvalidTypeError, "methods"),
    ({"task_ids": ["a", "a"]}, InvalidArgumentError, "task_ids"),
    ({"task_ids": ["a", ""]}, InvalidIdError, "task_ids[1]"),
    ({"max_batch_messages": 0}, InvalidArgumentError, "max_batch_messages"),
    ({"max_batch_messages": True}, InvalidArgumentError, "max_batch_messages"),
])
def test_bad_columns_are_refused_before_anything_is_sent(make_mesh, kwargs, error, words):
    mesh = _mesh(make_mesh, track=False)
    args = {"sources": ["payer-0", "payer-1"], "targets": ["svc-0", "svc-1"], "payloads": ["a", "b"], **kwargs}
    with pytest.raises(error) as raised:
        mesh.send_columns(**args)
    assert words in str(raised.value)
    assert mesh.stats()["locked"] + mesh.stats()["rejected"] == 0


@pytest.mark.parametrize("column", ["sources", "targets", "methods"])
def test_a_bad_value_in_a_later_batch_is_named_by_its_place_in_the_column_and_nothing_is_sent(make_mesh, column):
    mesh = _mesh(make_mesh, track=False)
    args = {"sources": ["payer-0"] * 6, "targets": ["svc-0"] * 6, "methods": ["handle"] * 6}
    args[column] = args[column][:5] + (["_hidden"] if column == "methods" else ["bad\nid"])
    with pytest.raises((InvalidArgumentError, InvalidIdError), match=rf"{column}\[5\]"):
        mesh.send_columns(payloads=list("abcdef"), max_batch_messages=2, **args)
    assert mesh.stats()["locked"] + mesh.stats()["rejected"] == 0


def test_a_send_batch_larger_than_the_meshs_is_run_in_the_meshs_batches_with_its_problems_in_place(make_mesh):
    mesh = _mesh(make_mesh, track=False, batch=50)
    payloads = ["x" * 500 if i in (10, 70, 110) else "ok" for i in range(120)]
    done = mesh.send_columns([SOURCES[i % 6] for i in range(120)], ["svc-0", "svc-1", "nobody"] * 40, payloads,
                             methods=["handle", "big"] * 60, max_batch_messages=120)
    reasons = done.reasons()
    assert [i for i, r in enumerate(reasons) if r == "payload_too_large"] == [10, 70, 110]
    assert all(reasons[i] == "unknown_agent" for i in range(120) if i % 3 == 2 and i not in (10, 70, 110))
    assert set(reasons[i] for i in range(120) if i % 3 != 2 and i not in (10, 70, 110)) <= {None, "over_daily_cap"}
    assert done.counts()["released"] > 0 and verify(mesh.ledger_path).ok


def test_an_oversized_payload_fails_alone(make_mesh):
    mesh = _mesh(make_mesh, track=False)
    done = mesh.send_columns(["payer-0", "payer-1"], ["svc-0", "svc-1"], ["x" * 500, "ok"])
    assert done.statuses() == ["failed", "released"] and done.reasons() == ["payload_too_large", None]


def test_no_calls_is_an_empty_answer(make_mesh):
    mesh = _mesh(make_mesh, track=False)
    done = mesh.send_columns([], [], [])
    assert isinstance(done, CallColumns) and len(done) == 0 and done.counts() == {}


def test_a_host_that_dies_mid_batch_refunds_its_calls_and_the_ledger_holds_them(make_mesh):
    mesh = make_mesh(shards=2, max_batch_messages=50)
    mesh.add_agents(Dying, ["mortal"])
    mesh.add_agents(Priced, ["svc-0"])
    n = 40
    payloads = ["die" if i == 5 else "ok" for i in range(n)]
    targets = ["mortal" if i % 2 else "svc-0" for i in range(n)]
    done = mesh.send_columns([SOURCES[i % 4] for i in range(n)], targets, payloads)
    statuses = np.array(done.statuses())
    assert set(statuses[[i for i in range(n) if targets[i] == "mortal"]]) <= {"refunded"}
    assert set(statuses[[i for i in range(n) if targets[i] == "svc-0"]]) == {"released"}
    assert set(done.reasons()) <= {None, "agent_unavailable"}
    stats = mesh.stats()
    assert stats["open_escrows"] == 0 and stats["locked_micros"] == 0
    mesh.shutdown()
    assert verify(mesh.ledger_path).ok
