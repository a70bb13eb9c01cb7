"""Ids at every public entry (issue 11, finding 8): bad ones get a clear TollmeshError, good ones go through.

The strategies (tests/strategies.py) draw bad ids (lone surrogates, control characters,
empty, too long, not str) and good ones (any text UTF-8 encodes, control characters aside).
"""

from __future__ import annotations

import asyncio
import itertools
import tempfile
from pathlib import Path

import pytest
import strategies
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger import read_events, verify
from mesh import Agent, ManualClock, Message, Tollbooth, TollboothConfig, monetize
from mesh.calls.agent import payload_bytes
from mesh.core.errors import InvalidIdError, InvalidTypeError, TollmeshError
from mesh.core.ids import MAX_ID_CHARS, check_id, check_payment_field, is_id

START_S = 1_767_225_600.0


def _booth(root: Path, **options) -> Tollbooth:
    config = TollboothConfig(ledger_path=root / "toll_ledger.jsonl", paper_mode=False, max_daily_toll_per_agent=None,
                             **options)
    return Tollbooth(config, clock=ManualClock(START_S))


def _refused(call) -> TollmeshError:
    """The call raises a TollmeshError: an InvalidIdError for bad text, InvalidTypeError for a non-str."""
    with pytest.raises((InvalidIdError, InvalidTypeError)) as caught:
        call()
    return caught.value


# -- the rule itself ----------------------------------------------------------------------------


@given(strategies.good_ids)
def test_a_good_id_passes_both_checks(value):
    assert is_id(value) or not value.isascii()  # the fast check may defer to the full one only for non-ASCII
    check_id("task_id", value)
    check_payment_field("payer_wallet", value)


@given(strategies.bad_ids)
def test_a_bad_id_is_refused_by_both_checks_and_the_message_prints(value):
    assert not is_id(value)
    error = _refused(lambda: check_id("task_id", value))
    assert str(error).startswith("task_id=")
    str(error).encode("utf-8")  # the message itself can be printed and logged
    assert len(str(error)) < 400  # a long value is cut short in the message


@pytest.mark.parametrize("value, problem", [
    ("\ud800", "lone surrogate ('\\ud800' at index 0)"), ("ok\udfffok", "at index 2"),
    ("a\nb", "control character ('\\n' at index 1)"), ("\x00", "control character"), ("\x9b[2J", "control"),
    ("\x7f", "control"), ("", "1 to 256 characters, not 0"), ("x" * (MAX_ID_CHARS + 1), "not 257"),
])
def test_each_problem_is_named(value, problem):
    with pytest.raises(InvalidIdError, match="task_id=") as caught:
        check_id("task_id", value)
    assert problem in str(caught.value)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("value", ["a b", "zoë", "🦜", "👩\u200d💻", "\u00a0", "x" * MAX_ID_CHARS, "\u2028"])
def test_text_that_is_not_a_control_character_is_a_good_id(value):
    check_id("task_id", value)


# -- Tollbooth ----------------------------------------------------------------------------------


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(bad=st.one_of(strategies.bad_ids, st.none()), where=st.sampled_from(["task_id", "source", "target"]))
def test_a_bad_id_is_refused_at_every_booth_entry_and_nothing_is_written(bad, where):
    with tempfile.TemporaryDirectory() as tmp:
        booth = _booth(Path(tmp), track_balances=True)
        booth.deposit("alice", 1)
        size = booth.config.ledger_path.stat().st_size
        ids = {"task_id": "t1", "source": "alice", "target": "bob", where: bad}
        _refused(lambda: booth.charge_sync(ids["task_id"], ids["source"], ids["target"]))
        _refused(lambda: asyncio.run(booth.charge(ids["task_id"], ids["source"], ids["target"])))
        if where == "task_id":
            _refused(lambda: booth.release_sync(bad))
            _refused(lambda: booth.refund_sync(bad))
            _refused(lambda: booth.get_record(bad))
            _refused(lambda: asyncio.run(booth.release(bad)))
        else:
            _refused(lambda: booth.deposit(bad, 1))
        assert booth.config.ledger_path.stat().st_size == size
        assert booth.get_stats()["messages_charged"] == 0
        booth.close()


@settings(max_examples=40)
@given(wallet=strategies.bad_payment_fields, which=st.sampled_from(["payer_wallet", "tx_signature"]))
def test_a_bad_payment_field_is_refused(wallet, which):
    with tempfile.TemporaryDirectory() as tmp:
        booth = _booth(Path(tmp))
        fields = {"payer_wallet": "0xabc", "tx_signature": "0xsig", which: wallet}
        error = _refused(lambda: booth.charge_sync("t1", "alice", "bob", **fields))
        assert str(error).startswith(f"{which}=")
        booth.close()


@settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(task_id=strategies.good_ids, source=strategies.good_ids, target=strategies.good_ids,
       wallet=strategies.good_payment_fields)
def test_any_good_id_is_charged_written_verified_and_read_back(task_id, source, target, wallet):
    with tempfile.TemporaryDirectory() as tmp:
        booth = _booth(Path(tmp), track_balances=True)
        booth.deposit(source, 1)
        locked = booth.charge_sync(task_id, source, target, wallet, wallet)
        assert locked.status.value == "escrow_locked", locked
        assert booth.release_sync(task_id).status.value == "released"
        booth.close()
        assert verify(booth.config.ledger_path).ok
        again = _booth(Path(tmp), track_balances=True)  # replays the ledger
        assert again.get_record(task_id).source_agent == source
        again.close()


# -- @monetize ----------------------------------------------------------------------------------


@settings(max_examples=30)
@given(bad=strategies.bad_ids, where=st.sampled_from(["source_agent", "target_agent"]))
def test_monetize_refuses_a_bad_agent_id_when_it_decorates(bad, where):
    _refused(lambda: monetize(0.01, **{where: bad}))


@settings(max_examples=20, suppress_health_check=[HealthCheck.too_slow])
@given(source=strategies.good_ids, target=strategies.good_ids, name=st.one_of(strategies.good_ids, strategies.bad_text_ids))
def test_monetize_charges_any_good_agent_ids_and_any_function_name(source, target, name):
    with tempfile.TemporaryDirectory() as tmp:
        booth = _booth(Path(tmp))

        def work(x):
            return 2 * x

        work.__qualname__ = name  # a task id is made from the name: a name that is no valid id gets a digest
        paid = monetize(0.01, source_agent=source, target_agent=target, booth=booth)(work)
        assert paid(21) == 42
        booth.close()
        [lock, release] = read_events(booth.config.ledger_path).events
        assert (lock["source_agent"], lock["target_agent"], release["kind"]) == (source, target, "release")
        assert is_id(lock["task_id"]) or check_id("task_id", lock["task_id"]) is None


# -- payload size (finding 9): bytes, not characters --------------------------------------------


@pytest.mark.parametrize("payload, size", [
    ("a" * 1_000, 1_000), ("é" * 1_000, 2_000), ("€" * 1_000, 3_000), ("🦜" * 1_000, 4_000),
    (b"x" * 5_000, 5_000), (bytearray(10), 10), ("🦜" * 5_000, 20_000), ("\ud800", 3),
])
def test_a_payload_is_measured_in_bytes(payload, size):
    assert payload_bytes(payload) == size


# -- the mesh: a bad message fails alone ---------------------------------------------------------


class Echo(Agent):
    price_usd = "0.001"

    def handle(self, ctx, payload):
        return payload


class Forwarder(Agent):
    """Calls on with the ids it is given (a handler's batch goes through the same checks)."""

    price_usd = "0.001"

    async def handle(self, ctx, targets):
        results = await ctx.asend([Message(self.agent_id, target, "hi") for target in targets])
        return [(r.ok, r.reason) for r in results]


_batches = itertools.count()


def _batch(bad, where: str, at: int, count: int = 40) -> list[Message]:
    """``count`` good messages (task ids of their own), the one ``at`` with ``bad`` as its ``where``."""
    batch = next(_batches)
    messages = [Message(f"user-{n % 7}", "echo", n, task_id=f"b{batch}-{n}") for n in range(count)]
    fields = {"source": 0, "target": 1, "task_id": 4, "payer_wallet": 5}
    good = list(messages[at])
    good[fields[where]] = bad
    if where == "payer_wallet":
        good[6] = "sig"
    messages[at] = Message(*good)
    return messages


@pytest.fixture(scope="module")
def id_mesh(ray_session, tmp_path_factory):
    from mesh import Mesh, MeshConfig

    mesh = Mesh(MeshConfig(name="ids-mesh", out_dir=tmp_path_factory.mktemp("ids-mesh"), shards=2, hosts_per_group=1,
                           metrics_enabled=False, max_payload_bytes=1_000))
    mesh.add_agents(Echo, ["echo"])
    mesh.add_agents(Forwarder, ["forwarder"])
    yield mesh
    mesh.shutdown()


def test_the_batches_seen_in_the_finding(id_mesh):
    for where in ("source", "target", "task_id"):
        messages = _batch("\ud800", where, 17)
        results = id_mesh.send(messages)
        assert [r.ok for r in results] == [n != 17 for n in range(40)], where
        assert (results[17].status.value, results[17].reason) == ("failed", "invalid_message")
        assert "lone surrogate" in results[17].error and where in results[17].error
        assert [r.value for r in results if r.ok] == [n for n in range(40) if n != 17]
        for n, r in enumerate(results):  # each result is its own message's
            assert r.task_id == (messages[n].task_id if n != 17 or where != "task_id" else "\ud800")
    with pytest.raises(InvalidIdError, match="source="):
        id_mesh.call("\ud800", "echo", "x")  # one call: the caller gets the error itself, not a RayTaskError
    assert id_mesh.stats()["open_escrows"] == 0
    assert verify(id_mesh.ledger_path).ok


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=st.one_of(st.tuples(st.sampled_from(["source", "target", "task_id"]), strategies.bad_ids),
                      st.tuples(st.just("payer_wallet"), strategies.bad_payment_fields)),
       at=st.integers(0, 39), counted=st.booleans())
def test_one_bad_message_fails_alone_and_the_others_go(id_mesh, case, at, counted):
    where, bad = case
    messages = _batch(bad, where, at)
    if counted:
        counts = id_mesh.send_counted(messages)
        assert counts == {"released": 39, "failed:invalid_message": 1}
        return
    results = asyncio.run(id_mesh.asend(messages)) if at % 2 else id_mesh.send(messages)
    assert [r.ok for r in results] == [n != at for n in range(40)]
    assert results[at].reason == "invalid_message" and results[at].error.startswith(where)


def test_a_handler_batch_with_a_bad_id_fails_that_call_alone_and_payloads_count_bytes(id_mesh):
    result = id_mesh.call("alice", "forwarder", ["echo", "\ud800", "echo", "a\x1b[2J"])
    assert result.ok, result
    assert result.value == [(True, None), (False, "invalid_message"), (True, None), (False, "invalid_message")]
    too_big, fits = id_mesh.send([Message("alice", "echo", "🦜" * 300), Message("alice", "echo", "a" * 1_000)])
    assert (too_big.status.value, too_big.reason) == ("failed", "payload_too_large")  # 1,200 bytes in 300 characters
    assert fits.ok
    assert verify(id_mesh.ledger_path).ok


@pytest.mark.parametrize("bad", ["\ud800", "a\nb", "", b"echo", "x" * (MAX_ID_CHARS + 1)])
def test_every_other_mesh_entry_refuses_a_bad_id_in_the_driver(id_mesh, bad):
    booth = id_mesh.tollbooth(TollboothConfig(paper_mode=False))
    entries = [
        lambda: id_mesh.add_agents(Echo, ["fine", bad]), lambda: id_mesh.add_agent(bad, Echo),
        lambda: id_mesh.deposit(bad, 1), lambda: id_mesh.deposit_many({"fine": 1, bad: 1}),
        lambda: id_mesh.call("alice", bad), lambda: id_mesh.call("alice", "echo", task_id=bad),
        lambda: asyncio.run(id_mesh.acall(bad, "echo")),
        lambda: booth.charge_sync(bad, "alice", "echo"), lambda: booth.charge_sync("t", bad, "echo"),
        lambda: booth.release_sync(bad), lambda: booth.refund_sync(bad), lambda: booth.get_record(bad),
        lambda: booth.deposit(bad, 1),
    ]
    for entry in entries:
        _refused(entry)
    assert id_mesh.call("alice", "echo", "still fine").ok
