"""The run directory through the ledger writer (``actors.run_files``): what a shard or host on another
node reads is what the disk holds, byte for byte and event for event; nothing outside the run
directory is served; a shard rebuilt through the writer equals one rebuilt from the disk."""

from __future__ import annotations

import dataclasses
import io
import random

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

import actors.run_files
from actors.budget_shard import ShardCore
from actors.ledger_writer import LedgerWriterActor
from actors.run_files import LocalFiles, RunDirectory, WriterFiles
from ledger.files import segments
from ledger.jsonl import JsonlWriter
from ledger.reader import event_lines, lines_of
from mesh.core.errors import LedgerError
from mesh.core.sharding import shard_of
from test_ledger_lines import event
from test_shards import AGENTS, SHARDS, Driver


@given(data=st.binary(max_size=300).map(lambda b: b.replace(b"\x00", b"\n")), cuts=st.lists(st.integers(0, 300)))
def test_a_file_in_any_pieces_gives_its_lines(data, cuts):
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    pieces = [data[a:b] for a, b in zip(points, points[1:])]
    assert list(lines_of(pieces)) == io.BytesIO(data).readlines()


def torn_rotated_ledger(path) -> None:
    """Three lives each ending in a torn line (the next writer marks it), over rotated files."""
    for life in range(3):
        writer = JsonlWriter(path, max_segment_bytes=1_000)
        for n in range(6 + 5 * life):
            writer.append([event(ts_us=n, task_id=f"life{life}-{n}")])
        writer.close()
        with open(segments(path)[-1], "ab") as f:
            f.write(b'{"v":1,"seq":' + str(1_000 + life).encode() + b',"ts_us":0,"ki')


@pytest.mark.usefixtures("ray_session")
def test_the_writer_serves_a_ledger_as_the_disk_holds_it(tmp_path, monkeypatch):
    ledger = tmp_path / "runs" / "toll_ledger.jsonl"
    ledger.parent.mkdir()
    torn_rotated_ledger(ledger)
    writer = LedgerWriterActor.options(name="run-files-writer").remote(str(tmp_path / "runs" / "other.jsonl"))
    monkeypatch.setattr(actors.run_files, "CHUNK_BYTES", 97)  # this driver asks for small pieces: many cuts
    remote = WriterFiles("run-files-writer")
    try:
        files = segments(ledger)
        assert len(files) > 2
        assert remote.segments(str(ledger)) == [str(p) for p in files]
        for path in files:
            assert b"".join(remote.chunks(str(path))) == path.read_bytes()
        on_disk = [(line.path, line.line_no, line.event) for line in event_lines(files)]
        served = [(line.path, line.line_no, line.event)
                  for line in event_lines(files, read_lines=lambda p: lines_of(remote.chunks(str(p))))]
        assert served == on_disk and len(on_disk) > 30
        assert remote.segments(str(tmp_path / "runs" / "none.jsonl")) == []
        assert remote.read(str(tmp_path / "runs" / "absent.json")) is None
        remote.write(str(tmp_path / "runs" / "hosts" / "h.pkl"), b"agents")
        assert (tmp_path / "runs" / "hosts" / "h.pkl").read_bytes() == b"agents" == remote.read(str(tmp_path / "runs" / "hosts" / "h.pkl"))
        outside = tmp_path / "secret.txt"
        outside.write_bytes(b"not the mesh's")
        for path in (str(outside), str(tmp_path / "runs" / ".." / "secret.txt"), "/etc/passwd", str(tmp_path / "runs")):
            with pytest.raises(Exception, match="not a file of the run directory"):
                remote.read(path)
    finally:
        import ray

        ray.kill(writer)


@pytest.mark.parametrize(("offset", "max_bytes"), [(-1, 10), (0, 0), (0, actors.run_files.CHUNK_BYTES + 1), ("0", 10), (0, 2.5), (True, 10)])
def test_a_bad_chunk_request_is_refused_by_name(tmp_path, offset, max_bytes):
    (tmp_path / "l.jsonl").write_bytes(b"{}\n")
    with pytest.raises(LedgerError, match=r"offset=.*max_bytes=.*expected"):
        RunDirectory(tmp_path).chunk(str(tmp_path / "l.jsonl"), offset, max_bytes)


def test_only_bytes_are_written_and_only_under_hosts(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "toll_ledger.jsonl").write_bytes(b"the ledger\n")
    run_dir = RunDirectory(tmp_path / "run")
    with pytest.raises(LedgerError, match="expected bytes"):
        run_dir.write(str(tmp_path / "run" / "hosts" / "x.pkl"), "text")
    with pytest.raises(LedgerError, match="not a file of the run directory"):
        run_dir.write(str(tmp_path / "x"), b"x")
    for path in ("toll_ledger.jsonl", "parquet/day=2026-01-01/part.parquet", "hosts/../toll_ledger.jsonl"):
        with pytest.raises(LedgerError, match="only files under hosts/"):
            run_dir.write(str(tmp_path / "run" / path), b"x")
    assert not (tmp_path / "x").exists() and not (tmp_path / "run" / "parquet").exists()
    assert (tmp_path / "run" / "toll_ledger.jsonl").read_bytes() == b"the ledger\n"
    run_dir.write(str(tmp_path / "run" / "hosts" / "h.pkl"), b"agents")
    assert (tmp_path / "run" / "hosts" / "h.pkl").read_bytes() == b"agents"


@pytest.mark.usefixtures("ray_session")
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_shard_rebuilt_through_the_writer_equals_one_rebuilt_from_the_disk(tmp_path, monkeypatch, seed):
    """Random work over 3 shards with balances, per-agent caps from a file and caps changed at run
    time; then every shard is rebuilt twice, from the disk and through the writer (in small pieces)."""
    rng = random.Random(seed)
    driver = Driver(tmp_path, cap_micros=30_000)
    caps_path, runtime_path = tmp_path / "agent_caps.json", tmp_path / "runtime_caps.json"
    caps_path.write_bytes(orjson.dumps({AGENTS[0]: 5_000, AGENTS[1]: None}))
    runtime_path.write_bytes(orjson.dumps({"default_cap_micros": 40_000, "agent_caps_micros": {AGENTS[2]: 7_000}}))
    for agent in AGENTS:
        _deposit(driver, agent, rng.randint(1_000, 50_000))
    for _ in range(300):
        if rng.random() < 0.6:
            driver.lock(rng.choice(AGENTS), rng.choice(AGENTS), rng.randint(0, 9_000), reject=rng.random() < 0.1)
        else:
            driver.settle(rng.randint(0, 1_000), rng.random() < 0.7)
    driver.writer.close()
    writer = LedgerWriterActor.options(name=f"rebuild-writer-{seed}").remote(str(tmp_path / "other.jsonl"))
    monkeypatch.setattr(actors.run_files, "CHUNK_BYTES", 1_001)
    try:
        for spec in driver.specs:
            spec = dataclasses.replace(spec, agent_caps_path=str(caps_path), runtime_caps_path=str(runtime_path))
            from_disk = ShardCore(spec, LocalFiles())
            through_writer = ShardCore(spec, WriterFiles(f"rebuild-writer-{seed}"))
            assert through_writer.snapshot(driver.now_us) == from_disk.snapshot(driver.now_us)
            assert through_writer.rebuilt_through_seq == from_disk.rebuilt_through_seq == driver.writer.next_seq
            budget, expected = through_writer, from_disk
            for agent in AGENTS:
                assert budget.cap_micros(agent) == expected.cap_micros(agent)
            assert budget.cap_micros(AGENTS[0]) == 5_000 and budget.cap_micros(AGENTS[2]) == 7_000
    finally:
        import ray

        ray.kill(writer)


def _deposit(driver: Driver, agent: str, amount_micros: int) -> None:
    driver.record(driver.shards[shard_of(agent, SHARDS)].deposit(agent, amount_micros, driver.now_us, "live"))


@pytest.mark.usefixtures("ray_session")
def test_a_read_cut_short_by_the_writers_death_goes_on_once_it_is_back(tmp_path, monkeypatch):
    import ray

    ledger = tmp_path / "toll_ledger.jsonl"
    torn_rotated_ledger(ledger)
    name = "run-files-dying-writer"
    writer = LedgerWriterActor.options(name=name).remote(str(tmp_path / "other.jsonl"))
    monkeypatch.setattr(actors.run_files, "CHUNK_BYTES", 101)
    try:
        remote = WriterFiles(name)
        pid = ray.get(writer.stats.remote())["pid"]
        pieces = remote.chunks(str(ledger))
        read = [next(pieces)]
        ray.kill(writer, no_restart=False)  # Ray restarts it; the calls after this one fail until then
        read.extend(pieces)
        assert b"".join(read) == ledger.read_bytes()
        assert ray.get(writer.stats.remote())["pid"] != pid, "the writer did die in between"
    finally:
        ray.kill(writer)
