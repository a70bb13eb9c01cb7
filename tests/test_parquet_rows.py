"""Parquet rows made from a shard's columns are the rows the sink would parse from the lines.

A budget shard that made a batch's events as columns sends their Parquet fields with their JSON
lines (``ColumnarBook.encode_rows``); the ledger writer numbers and seals them as it numbered and
sealed the lines (``numbered_table``), and the sink writes them without parsing JSON. These tests
hold that path to the one it replaces: random books (caps, balances, refunds, expiry, deposits,
several days, every fsync policy, so seals fall on every kind of run) must give exactly the table
``jsonl_to_table`` reads from the lines written, dictionaries included; a writer fed a mix of both
kinds of run writes a dataset equal to its JSONL; bad runs are refused, naming the problem.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors import LedgerWriterActor
from ledger.jsonl import FsyncPolicy, JsonlWriter
from ledger.parquet import EVENT_FIELDS_SCHEMA, fields_to_ipc, jsonl_to_table, numbered_table
from mesh import LedgerError
from mesh.columnar import ColumnarBook
from mesh.columnar.book import _RECORD_ENCODED_EVENTS as RECORD_ENCODED_EVENTS  # fewer: a record at a time
from test_parquet_catch_up import assert_dataset_is_the_ledger

DAY_US = 86_400_000_000
START_US = 1_767_225_600_000_000  # 2026-01-01


def _book(caps: bool, balances: bool) -> ColumnarBook:
    return ColumnarBook(default_cap_micros=5_000 if caps else None, track_balances=balances, escrow_timeout_s=60.0,
                        shard=0, shards=1)


def _event_batches(book: ColumnarBook, rng: np.random.Generator, batches: int, size: int, balances: bool) -> list:
    """Event columns of random lock / settle / expire / deposit batches, time moving on (across days)."""
    now, out, serial = START_US, [], 0
    agents = [f"agent-{i}" for i in range(12)]
    for _ in range(batches):
        now += int(rng.integers(1, DAY_US // 2))
        if balances:
            who = book.register(list(rng.choice(agents, 4)))
            out.append(book.deposit(who, rng.integers(1, 3_000, 4).astype(np.int64), now))
        n = int(rng.integers(1, size + 1))
        ids = [f"t{serial + i}" for i in range(n)]
        serial += n
        sources = book.register(list(rng.choice(agents, n)))
        targets = book.register(list(rng.choice(agents, n)))
        lock = book.lock(ids, sources, targets, rng.integers(0, 2_000, n).astype(np.int64), now)
        out.append(lock.events)
        ok = rng.random(n) < 0.7
        settle = book.settle_rows(lock.rows, ok, np.where(ok, 0, 5).astype(np.int8), now + int(rng.integers(0, 90_000_000)))
        out.append(settle.events)
        out.append(book.expire_due(now + 200_000_000)[1])
    return [events for events in out if len(events)]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), caps=st.booleans(), balances=st.booleans(),
       fsync=st.sampled_from([p.value for p in FsyncPolicy]), rotate_daily=st.booleans(), size=st.integers(1, 700))
def test_rows_from_columns_are_the_rows_of_the_lines_written(tmp_path_factory, seed, caps, balances, fsync,
                                                              rotate_daily, size):
    rng = np.random.default_rng(seed)
    book = _book(caps, balances)
    path = tmp_path_factory.mktemp("rows") / "toll_ledger.jsonl"
    writer = JsonlWriter(path, fsync=fsync, rotate_daily=rotate_daily)
    for events in _event_batches(book, rng, batches=4, size=size, balances=balances):
        lines, fields = book.encode_rows(events)
        first_seq = writer.next_seq
        written = writer.append_encoded(lines)
        if fields is None:  # made one record at a time (16 events or fewer): the sink parses these lines
            assert len(events) <= RECORD_ENCODED_EVENTS  # these books hold no tokens or payments
            continue
        assert fields.schema == EVENT_FIELDS_SCHEMA and fields.num_rows == len(events)
        assert numbered_table(fields, first_seq, writer.seals).equals(jsonl_to_table(written))
    writer.close()


def _columns_run(book: ColumnarBook, n: int, now_us: int, first: int) -> tuple[bytes, pa.Table]:
    """``n`` locks (after the expiries due by ``now_us``): their lines and Parquet fields."""
    ids = [f"t{first + i}" for i in range(n)]
    agents = book.register([f"a{i % 7}" for i in range(n)])
    lines, fields = book.encode_rows(book.lock(ids, agents, agents[::-1].copy(), np.full(n, 10, np.int64), now_us).events)
    assert fields is not None
    return lines, fields


def test_a_writer_fed_rows_and_lines_writes_a_dataset_equal_to_its_jsonl(ray_session, tmp_path):
    ray = ray_session
    book = _book(caps=False, balances=False)
    writer = LedgerWriterActor.remote(str(tmp_path / "toll_ledger.jsonl"), parquet_dir=str(tmp_path / "parquet"),
                                      row_group_events=300)
    seqs = []
    for k in range(6):
        a, a_rows = _columns_run(book, 100 + k, START_US + k * DAY_US // 3, 1_000 * k)
        b, _ = _columns_run(book, 40, START_US + k * DAY_US // 3 + 1, 1_000 * k + 500)  # sent as lines only
        c, c_rows = _columns_run(book, 30, START_US + k * DAY_US // 3 + 2, 1_000 * k + 800)
        rows = [(a_rows.num_rows, a_rows), (b.count(b"\n"), None), (c_rows.num_rows, fields_to_ipc(c_rows))]  # expiries first
        seqs.append(ray.get(writer.append_encoded.remote(a + b + c, rows)))
    seqs.append(ray.get(writer.append_encoded.remote(_columns_run(book, 5, START_US + 3 * DAY_US, 9_000)[0])))
    summary = ray.get(writer.close.remote())
    assert summary["parquet_error"] is None and summary["events"] == seqs[-1][1] + 1
    assert_dataset_is_the_ledger(tmp_path)


def test_bad_runs_of_rows_are_refused_naming_the_problem(ray_session, tmp_path):
    ray = ray_session
    book = _book(caps=False, balances=False)
    writer = LedgerWriterActor.remote(str(tmp_path / "toll_ledger.jsonl"), parquet_dir=str(tmp_path / "parquet"))
    lines, fields = _columns_run(book, 20, START_US, 0)
    with pytest.raises(LedgerError, match="the runs hold 19 events, the lines 20"):
        ray.get(writer.append_encoded.remote(lines, [(19, None)]))
    with pytest.raises(LedgerError, match="an event count must be an int"):
        ray.get(writer.append_encoded.remote(lines, [(True, None), (19, None)]))
    with pytest.raises(LedgerError, match="must be a table of 10 rows"):
        ray.get(writer.append_encoded.remote(lines, [(10, fields), (10, None)]))
    with pytest.raises(LedgerError, match="not an Arrow IPC stream"):
        ray.get(writer.append_encoded.remote(lines, [(20, b"not arrow")]))
    with pytest.raises(LedgerError, match="expected a list"):
        ray.get(writer.append_encoded.remote(lines, "rows"))
    assert ray.get(writer.append_encoded.remote(lines, [(20, fields)])) == (0, 19)  # nothing half-written before
    ray.get(writer.close.remote())
    assert_dataset_is_the_ledger(tmp_path)


def test_numbered_table_refuses_fields_of_another_schema():
    with pytest.raises(LedgerError, match="do not match the event schema"):
        numbered_table(pa.table({"seq": [1]}), 0, {})


def test_parts_read_from_refs_are_written_in_the_order_their_appends_arrived(ray_session, tmp_path):
    """Lines and rows may come as ObjectRefs the caller passes on unread (a shard's large payload): the
    writer reads them itself, and an append whose parts are still on their way keeps its place ahead
    of the appends sent after it."""
    ray = ray_session

    @ray.remote(num_cpus=0)
    def later(value, delay_s: float):
        time.sleep(delay_s)
        return value

    book = _book(caps=False, balances=False)
    writer = LedgerWriterActor.remote(str(tmp_path / "toll_ledger.jsonl"), parquet_dir=str(tmp_path / "parquet"))
    a, a_rows = _columns_run(book, 300, START_US, 0)
    b, b_rows = _columns_run(book, 200, START_US + 1, 1_000)
    c, _ = _columns_run(book, 50, START_US + 2, 2_000)
    ray.get(writer.stats.remote())  # ready: Ray may start a new actor's first calls in any order
    slow = writer.append_encoded.remote([later.remote(a, 2.0), ray.put(b)],
                                        [(300, later.remote(fields_to_ipc(a_rows), 2.2)), (200, ray.put(fields_to_ipc(b_rows)))])
    time.sleep(0.5)  # slow has arrived (an async actor's calls start in the order they arrive, not always as sent)
    fast = writer.append_encoded.remote(c)  # arrives after, read at once: written after
    assert ray.get([slow, fast]) == [(0, 499), (500, 549)]
    summary = ray.get(writer.close.remote())
    assert summary["parquet_error"] is None and summary["events"] == 550
    assert_dataset_is_the_ledger(tmp_path)


def test_a_part_that_cannot_be_read_fails_its_append_and_writes_nothing(ray_session, tmp_path):
    ray = ray_session

    @ray.remote(num_cpus=0)
    def broken():
        raise RuntimeError("the producer died")

    book = _book(caps=False, balances=False)
    writer = LedgerWriterActor.remote(str(tmp_path / "toll_ledger.jsonl"), parquet_dir=str(tmp_path / "parquet"))
    a, a_rows = _columns_run(book, 30, START_US, 0)
    with pytest.raises(LedgerError, match="a part could not be read"):
        ray.get(writer.append_encoded.remote([ray.put(a), broken.remote()]))
    with pytest.raises(LedgerError, match="a part could not be read"):
        ray.get(writer.append_encoded.remote([a], [(30, broken.remote())]))
    with pytest.raises(LedgerError, match="expected parts of bytes"):
        ray.get(writer.append_encoded.remote([ray.put("text, not bytes")]))
    with pytest.raises(LedgerError, match="expected non-empty bytes"):
        ray.get(writer.append_encoded.remote([]))
    with pytest.raises(LedgerError, match="not an Arrow IPC stream"):
        ray.get(writer.append_encoded.remote([a], [(30, ray.put(b"not arrow"))]))
    assert ray.get(writer.append_encoded.remote([ray.put(a)], [(30, ray.put(fields_to_ipc(a_rows)))])) == (0, 29)
    ray.get(writer.close.remote())
    assert_dataset_is_the_ledger(tmp_path)
