"""The Parquet dataset after a crash: the next writer completes it from the JSONL, each event once."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ledger.catch_up import catch_up, dataset_seqs
from ledger.export import _plain, compact
from ledger.jsonl import JsonlWriter
from ledger.parquet import ParquetLedgerWriter
from ledger.partitions import partition_count, partition_path
from ledger.reader import read_events, read_table
from ledger.writer import LedgerWriter
from mesh import LedgerError

DAY_US = 86_400_000_000
START_US = 1_767_225_600_000_000


def deposits(count: int, first_us: int, rng: random.Random) -> list[dict]:
    return [
        {"v": 1, "seq": None, "ts_us": first_us + n * rng.choice([1, 1_000_000, DAY_US // 7]), "kind": "deposit",
         "target_agent": f"a{rng.randrange(9)}", "amount_micros": rng.randint(1, 10_000)}
        for n in range(count)
    ]


def assert_dataset_is_the_ledger(root: Path) -> None:
    """The dataset holds every JSONL event once, in seq order, with the same values; no unfinished file is left
    (a partitioned ledger: each partition's dataset, ``parquet/shard=K``)."""
    count = partition_count(root / "toll_ledger.jsonl")
    pairs = [(root / "parquet", root / "toll_ledger.jsonl")] if count is None else [
        (root / "parquet" / f"shard={k}", partition_path(root / "toll_ledger.jsonl", k)) for k in range(count)]
    for dataset, ledger in pairs:
        jsonl = _plain(read_table(ledger)).combine_chunks()
        parquet = _plain(read_table(dataset).drop_columns(["day"])).combine_chunks()
        assert parquet.column("seq").to_pylist() == list(range(jsonl.num_rows))
        assert parquet.equals(jsonl)
    assert list((root / "parquet").rglob("*.tmp")) == []


CRASHING_WRITER = textwrap.dedent("""
    import os, random, sys
    sys.path.insert(0, {tests!r})
    from test_parquet_catch_up import deposits
    from ledger.writer import LedgerWriter
    rng = random.Random({seed})
    writer = LedgerWriter({root!r} + "/toll_ledger.jsonl", parquet_dir={root!r} + "/parquet", fsync="never",
                          rotate_daily=rng.random() < 0.5, row_group_events={rows}, max_file_rows={rows} * 3)
    first_us = {first_us}
    for _ in range(rng.randint(3, 12)):
        batch = deposits(rng.randint(1, 40), first_us, rng)
        writer.append(batch)
        first_us = batch[-1]["ts_us"] + 1
    os._exit(1)  # dies with rows buffered and files open
""")


@pytest.mark.parametrize("seed", range(4))
def test_a_writer_that_dies_mid_run_leaves_a_dataset_the_next_one_completes(tmp_path, seed):
    rng = random.Random(seed)
    first_us = START_US
    for life in range(2):  # two lives that crash, then one that closes
        code = CRASHING_WRITER.format(tests=str(Path(__file__).parent), seed=seed * 10 + life, root=str(tmp_path),
                                      rows=rng.choice([3, 10, 50]), first_us=first_us)
        assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 1
        assert list((tmp_path / "parquet").rglob("*.parquet.tmp")), "the crash left an open file"
        held = sum(last - first + 1 for first, last in dataset_seqs(tmp_path / "parquet"))
        assert held < len(read_events(tmp_path / "toll_ledger.jsonl").events), "the crash lost rows"
        first_us += 20 * DAY_US
    writer = LedgerWriter(tmp_path / "toll_ledger.jsonl", parquet_dir=tmp_path / "parquet", row_group_events=7)
    writer.append(deposits(25, first_us, rng))
    writer.close()
    assert_dataset_is_the_ledger(tmp_path)


def test_a_whole_dataset_costs_the_next_writer_no_read_of_the_jsonl(tmp_path):
    writer = LedgerWriter(tmp_path / "toll_ledger.jsonl", parquet_dir=tmp_path / "parquet", row_group_events=5)
    writer.append(deposits(12, START_US, random.Random(1)))
    writer.close()
    (tmp_path / "toll_ledger.jsonl").chmod(0o200)  # unreadable: a catch-up that read it would fail
    try:
        again = LedgerWriter(tmp_path / "toll_ledger.jsonl", parquet_dir=tmp_path / "parquet")
        again.close()
    finally:
        (tmp_path / "toll_ledger.jsonl").chmod(0o644)
    assert dataset_seqs(tmp_path / "parquet") == [(0, 11)]


def test_catch_up_fills_a_hole_and_refuses_a_dataset_that_is_not_the_ledgers(tmp_path):
    import pyarrow.parquet as pq

    rng = random.Random(2)
    JsonlWriter(tmp_path / "toll_ledger.jsonl").append(deposits(40, START_US, rng))
    compact(tmp_path / "toll_ledger.jsonl", tmp_path / "parquet", row_group_events=4)
    path = next(p for p in sorted((tmp_path / "parquet").rglob("*.parquet")) if pq.read_metadata(p).num_rows > 2)
    table = pq.read_table(path)
    hole = table.column("seq")[1].as_py()
    pq.write_table(table.filter(table.column("seq").to_numpy() != hole), path)  # a file that lost a row
    writer = ParquetLedgerWriter(tmp_path / "parquet")
    assert catch_up(writer, tmp_path / "toll_ledger.jsonl", through_seq=39) == 1
    writer.close()
    assert_dataset_is_the_ledger(tmp_path)

    shutil.copy(path, path.with_name("part-copy.parquet"))  # the same events twice
    with pytest.raises(LedgerError, match="which .* holds too: the dataset is not its ledger's events, each once"):
        dataset_seqs(tmp_path / "parquet")
    JsonlWriter(tmp_path / "other" / "toll_ledger.jsonl").append(deposits(5, START_US, rng))
    compact(tmp_path / "toll_ledger.jsonl", tmp_path / "longer")
    writer = ParquetLedgerWriter(tmp_path / "longer")
    with pytest.raises(LedgerError, match="past the ledger's seq 4: it is not this ledger's dataset"):
        catch_up(writer, tmp_path / "other" / "toll_ledger.jsonl", through_seq=4)
    writer.close()


def test_one_writer_at_a_time_holds_a_dataset(tmp_path):
    first = ParquetLedgerWriter(tmp_path / "pq")
    with pytest.raises(LedgerError, match=r"being written by another process \(it holds .writer.lock\); waited 0.2 s"):
        ParquetLedgerWriter(tmp_path / "pq", lock_timeout_s=0.2)
    first.close()
    ParquetLedgerWriter(tmp_path / "pq", lock_timeout_s=0.2).close()  # closing let it go
    for bad in (-1, float("nan"), float("inf"), "5"):
        with pytest.raises(LedgerError, match="lock_timeout_s=.*must be a finite number of seconds"):
            ParquetLedgerWriter(tmp_path / "pq", lock_timeout_s=bad)


def test_catch_up_comes_before_any_append(tmp_path):
    lines = JsonlWriter(tmp_path / "toll_ledger.jsonl").append(deposits(3, START_US, random.Random(3)))
    writer = ParquetLedgerWriter(tmp_path / "pq", row_group_events=10)
    writer.append_lines(lines, 3)
    with pytest.raises(LedgerError, match="before the Parquet writer's first append"):
        catch_up(writer, tmp_path / "toll_ledger.jsonl")
    writer.close()
