"""The ledger writer actor: acks only durable batches, group commit, Parquet in its own process, restarts."""

from __future__ import annotations

import time

import pytest

from actors import LedgerWriterActor
from actors.ledger_writer import MAX_SINK_STARTS
from ledger import read_events, read_table, verify
from ledger.export import _plain
from mesh import LedgerError
from restarts import answer_once_restarted
from test_parquet_catch_up import assert_dataset_is_the_ledger


def events(count: int, start_us: int = 1_767_225_600_000_000, agent: str = "a") -> list[dict]:
    return [
        {"v": 1, "seq": None, "ts_us": start_us + n, "kind": "deposit", "target_agent": agent, "amount_micros": n + 1}
        for n in range(count)
    ]


def test_concurrent_appends_are_group_committed_and_acked_with_their_seqs(ray_session, tmp_path):
    ray = ray_session
    writer = LedgerWriterActor.remote(str(tmp_path / "toll_ledger.jsonl"), parquet_dir=str(tmp_path / "parquet"))
    refs = [writer.append.remote(events(100, agent=f"a{i}")) for i in range(60)]
    acks = ray.get(refs)
    assert sorted(acks) == [(100 * i, 100 * i + 99) for i in range(60)]
    summary = ray.get(writer.close.remote())
    assert summary["appends"] == 60 and summary["events"] == 6_000 and summary["next_seq"] == 6_000
    assert summary["commits"] < 60, "appends waiting during a write go out together"
    ledger = read_events(tmp_path / "toll_ledger.jsonl").events
    for (first, last), ref_index in zip(acks, range(60)):
        assert {e["target_agent"] for e in ledger[first:last + 1]} == {f"a{ref_index}"}
    assert verify(tmp_path).ok
    assert summary["parquet_files"]
    assert _plain(read_table(tmp_path / "parquet").drop_columns(["day"])).combine_chunks().equals(
        _plain(read_table(tmp_path / "toll_ledger.jsonl")).combine_chunks()
    )


def test_bad_batches_are_refused_with_a_clear_error(ray_session, tmp_path):
    ray = ray_session
    writer = LedgerWriterActor.remote(str(tmp_path / "toll_ledger.jsonl"))
    with pytest.raises(LedgerError, match="non-empty list"):
        ray.get(writer.append.remote([]))
    with pytest.raises(LedgerError, match=r"events\[1\]"):
        ray.get(writer.append.remote([events(1)[0], {"nope": 1}]))
    assert ray.get(writer.append.remote(events(2))) == (0, 1)
    ray.get(writer.close.remote())
    with pytest.raises(LedgerError, match="closed"):
        ray.get(writer.append.remote(events(1)))


@pytest.mark.slow
def test_a_killed_writer_restarts_and_continues_the_chain(ray_session, tmp_path):
    ray = ray_session
    writer = LedgerWriterActor.remote(str(tmp_path / "toll_ledger.jsonl"))
    acked = [ray.get(writer.append.remote(events(50, start_us=1_767_225_600_000_000 + 1_000 * i))) for i in range(5)]
    old_pid = ray.get(writer.stats.remote())["pid"]
    ray.kill(writer, no_restart=False)
    assert answer_once_restarted(lambda: ray.get(writer.stats.remote()), old_pid)["next_seq"] == 250  # rebuilt from the file
    for i in range(5, 10):
        acked.append(ray.get(writer.append.remote(events(50, start_us=1_767_225_600_000_000 + 1_000 * i))))
    ray.get(writer.close.remote())
    assert acked == [(50 * i, 50 * i + 49) for i in range(10)]
    result = verify(tmp_path / "toll_ledger.jsonl")
    assert result.ok and result.events == 500


def test_producers_may_send_encoded_events(ray_session, tmp_path):
    from ledger.jsonl import encode_events

    ray = ray_session
    writer = LedgerWriterActor.remote(str(tmp_path / "toll_ledger.jsonl"))
    assert ray.get(writer.append_encoded.remote(encode_events(events(3)))) == (0, 2)
    with pytest.raises(LedgerError, match="expected non-empty bytes"):
        ray.get(writer.append_encoded.remote("not bytes"))
    with pytest.raises(LedgerError, match="encoded event 0"):
        ray.get(writer.append_encoded.remote(b'{"kind":"deposit"}\n'))
    assert ray.get(writer.append.remote(events(2))) == (3, 4)
    ray.get(writer.close.remote())
    assert verify(tmp_path).ok


def test_a_failed_parquet_sink_stops_parquet_but_never_the_jsonl(ray_session, tmp_path):
    ray = ray_session
    blocker = tmp_path / "parquet"
    blocker.write_text("a file where the dataset directory should be")
    writer = LedgerWriterActor.remote(str(tmp_path / "toll_ledger.jsonl"), parquet_dir=str(blocker), row_group_events=10)
    for i in range(8):
        assert ray.get(writer.append.remote(events(10, agent=f"a{i}"))) == (10 * i, 10 * i + 9)
    summary = ray.get(writer.close.remote())
    assert summary["events"] == 80 and summary["parquet_files"] == []
    assert "LedgerError" in summary["parquet_error"] and summary["parquet_sink_starts"] == MAX_SINK_STARTS
    assert verify(tmp_path / "toll_ledger.jsonl").ok


@pytest.mark.slow
def test_random_kills_never_lose_an_acknowledged_batch(ray_session, tmp_path):
    """A randomized fault test: the writer is killed at random moments while appends are in flight.

    Every acknowledged batch is in the ledger at the seqs it was acknowledged with; an
    unacknowledged one is there at most once; the chain verifies across the restarts.
    """
    import random

    ray = ray_session
    rng = random.Random(11)
    writer = LedgerWriterActor.remote(str(tmp_path / "toll_ledger.jsonl"), parquet_dir=str(tmp_path / "parquet"),
                                      row_group_events=25)
    acked: dict[str, tuple[int, int]] = {}
    pending: dict[str, ray.ObjectRef] = {}
    kills = 0
    for n in range(120):
        marker = f"batch-{n}"
        batch = [{**e, "task_id": marker} for e in events(rng.randint(1, 30), start_us=1_767_225_600_000_000 + n)]
        pending[marker] = writer.append.remote(batch)
        if rng.random() < 0.04:
            ray.kill(writer, no_restart=False)  # whatever is in flight may or may not land
            kills += 1
        if len(pending) >= 8 or n == 119:
            for name, ref in list(pending.items()):
                try:
                    acked[name] = ray.get(ref, timeout=60)
                except ray.exceptions.RayActorError:
                    pass  # the writer died: this batch may or may not be on disk
                del pending[name]
    _wait_alive(ray, writer)
    ray.get(writer.close.remote())
    assert kills >= 2 and len(acked) > 60
    ledger = read_events(tmp_path / "toll_ledger.jsonl").events
    by_seq = {e["seq"]: e for e in ledger}
    for marker, (first, last) in acked.items():
        assert {by_seq[s]["task_id"] for s in range(first, last + 1)} == {marker}, marker
    seen = [e["task_id"] for e in ledger if e["kind"] == "deposit"]
    runs = [m for i, m in enumerate(seen) if i == 0 or seen[i - 1] != m]
    assert len(runs) == len(set(runs)), "no batch is written twice"
    assert verify(tmp_path / "toll_ledger.jsonl").ok
    assert_dataset_is_the_ledger(tmp_path)  # each restart's sink wrote what the dead one had not


@pytest.mark.slow
def test_a_killed_parquet_sink_is_replaced_and_the_next_one_catches_up(ray_session, tmp_path):
    import os
    import signal

    ray = ray_session
    writer = LedgerWriterActor.remote(str(tmp_path / "toll_ledger.jsonl"), parquet_dir=str(tmp_path / "parquet"),
                                      row_group_events=40)
    kills, killed_pid = 0, None
    for n in range(60):
        ray.get(writer.append.remote(events(17, start_us=1_767_225_600_000_000 + 1_000 * n, agent=f"a{n}")))
        pid = ray.get(writer.memory.remote())["parquet_sink_pid"]  # None while a dead sink is being replaced
        if kills < 2 and n >= 8 * (kills + 1) and pid not in (None, killed_pid):
            os.kill(pid, signal.SIGKILL)  # rows of its buffer and its open file die with it
            kills, killed_pid = kills + 1, pid
        time.sleep(0.05)
    assert kills == 2
    summary = ray.get(writer.close.remote())
    assert summary["parquet_sink_starts"] == 3 and summary["parquet_error"] is None
    assert_dataset_is_the_ledger(tmp_path)


def _wait_alive(ray, writer, deadline_s: float = 30.0) -> None:
    started = time.monotonic()
    while True:
        try:
            ray.get(writer.stats.remote())
            return
        except ray.exceptions.RayActorError:
            if time.monotonic() - started > deadline_s:
                raise
            time.sleep(0.2)
