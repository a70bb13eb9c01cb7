"""JSONL segments and the Parquet dataset: rotation, round trips, and interop with DuckDB and polars."""

from __future__ import annotations

import random
from collections import Counter
from decimal import Decimal

import duckdb
import orjson
import polars as pl
import pyarrow as pa
import pytest

from ledger import read_batches, read_events, reconcile
from ledger.export import _plain, compact, export
from ledger.files import segments
from ledger.jsonl import JsonlWriter
from ledger.parquet import ParquetLedgerWriter
from ledger.reader import read_table
from ledger.report import build_report
from ledger.verify import verify
from mesh import LedgerError, SettlementStatus


@pytest.fixture
def busy_ledger(make_booth, clock, tmp_path):
    """Three simulated days of tolls, JSONL rotated by day and by size, Parquet written by the booth."""
    booth = make_booth(
        track_balances=True, max_daily_toll_per_agent="3", escrow_timeout_s=60,
        ledger_rotate_daily=True, ledger_max_segment_bytes=200_000, ledger_parquet_dir=tmp_path / "parquet",
    )
    rng = random.Random(5)
    agents = [f"agent-{i}" for i in range(12)]
    for agent in agents:
        booth.deposit(agent, 20)
    for n in range(3_000):
        clock.advance(86.4)
        source, target = rng.sample(agents, 2)
        record = booth.charge_sync(f"m{n}", source, target, amount_usd=f"0.0{rng.randint(1, 99):02d}")
        if record.status is SettlementStatus.ESCROW_LOCKED:
            roll = rng.random()
            if roll < 0.1:
                booth.refund_sync(record.task_id, "handler_error")
            elif roll < 0.95:
                booth.release_sync(record.task_id)
    clock.advance(120)
    booth.expire_stale()
    live = booth.snapshot()
    booth.close()
    return booth.config.ledger_path, tmp_path / "parquet", live


def plain(table):
    """Values, not encodings: dictionaries decoded, chunks combined (files encode independently)."""
    table = table.drop_columns([c for c in ["day"] if c in table.column_names])
    return _plain(table).combine_chunks()


def jsonl_totals(ledger):
    by_agent, by_status = Counter(), Counter()
    for event in read_events(ledger).events:
        if event["kind"] in ("release", "paper_release"):
            by_agent[event["target_agent"]] += event["amount_micros"]
        if event.get("status"):
            by_status[event["status"]] += event["amount_micros"]
    return dict(by_agent), dict(by_status)


def test_rotation_makes_several_files_that_read_and_verify_as_one(busy_ledger):
    ledger, _, _ = busy_ledger
    files = segments(ledger)
    assert len(files) >= 4  # three days, and at least one size rotation
    events = read_events(ledger).events
    assert [e["seq"] for e in events] == list(range(len(events)))
    result = verify(ledger.parent)
    assert result.ok, result.problems[:3]
    assert result.files == files


def test_parquet_agrees_with_jsonl_to_the_micro(busy_ledger):
    ledger, parquet, _ = busy_ledger
    from_jsonl, from_parquet = read_table(ledger), read_table(parquet)
    assert from_parquet.num_rows == from_jsonl.num_rows
    assert plain(from_parquet).equals(plain(from_jsonl))
    assert from_parquet.schema.field("amount_usd").type == pa.decimal128(18, 6)
    assert from_parquet.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert pa.types.is_dictionary(from_parquet.schema.field("source_agent").type)
    assert build_report(from_parquet) == build_report(from_jsonl)
    days = sorted(p.parent.name for p in parquet.glob("day=*/*.parquet"))
    assert days[0] == "day=2026-01-01" and len(set(days)) >= 3
    assert not list(parquet.rglob("*.tmp"))


def test_duckdb_reads_the_dataset_as_written(busy_ledger):
    ledger, parquet, _ = busy_ledger
    by_agent, by_status = jsonl_totals(ledger)
    con = duckdb.connect()
    source = f"read_parquet('{parquet}/**/*.parquet', hive_partitioning = true)"
    rows = con.execute(
        f"select target_agent, sum(amount_micros), sum(amount_usd) from {source} "
        "where kind in ('release', 'paper_release') group by target_agent"
    ).fetchall()
    assert {agent: micros for agent, micros, _ in rows} == by_agent
    assert all(usd == Decimal(micros) / 1_000_000 for _, micros, usd in rows)
    rows = con.execute(f"select status, sum(amount_micros) from {source} where status is not null group by status").fetchall()
    assert dict(rows) == by_status
    days = con.execute(f"select count(distinct day) from {source}").fetchone()[0]
    assert days >= 3


def test_polars_reads_the_dataset_as_written(busy_ledger):
    ledger, parquet, _ = busy_ledger
    by_agent, by_status = jsonl_totals(ledger)
    frame = pl.read_parquet(f"{parquet}/**/*.parquet", hive_partitioning=True)
    released = (
        frame.filter(pl.col("kind").cast(pl.Utf8).is_in(["release", "paper_release"]))
        .group_by("target_agent").agg(pl.col("amount_micros").sum())
    )
    assert {str(r[0]): r[1] for r in released.iter_rows()} == by_agent
    statuses = frame.filter(pl.col("status").is_not_null()).group_by("status").agg(pl.col("amount_micros").sum())
    assert {str(r[0]): r[1] for r in statuses.iter_rows()} == by_status
    assert frame.schema["ts"] == pl.Datetime("us", "UTC")


def test_compact_rebuilds_the_same_dataset_and_never_overwrites(busy_ledger, tmp_path):
    ledger, parquet, _ = busy_ledger
    files = compact(ledger, tmp_path / "rebuilt")
    assert files
    assert plain(read_table(tmp_path / "rebuilt")).equals(plain(read_table(parquet)))
    with pytest.raises(LedgerError, match="holds a Parquet dataset already"):
        compact(ledger, parquet)


def test_replay_of_the_rotated_ledger_equals_the_live_state(busy_ledger, make_booth, ledger_path):
    ledger, _, live = busy_ledger
    assert ledger == ledger_path
    restored = make_booth(track_balances=True, max_daily_toll_per_agent="3", escrow_timeout_s=60, ledger_rotate_daily=True)
    assert restored.snapshot() == live


def test_export_formats(busy_ledger, tmp_path):
    ledger, parquet, _ = busy_ledger
    count = export(ledger, tmp_path / "e.csv", "csv")
    assert count == len((tmp_path / "e.csv").read_text().splitlines()) - 1
    assert export(parquet, tmp_path / "e.json", "json") == count
    first = orjson.loads((tmp_path / "e.json").read_bytes())[0]
    assert first["seq"] == 0 and first["amount_usd"] == "20.000000"
    assert export(ledger, tmp_path / "e.parquet", "parquet") == count
    with pytest.raises(LedgerError, match="refusing to overwrite"):
        export(ledger, tmp_path / "e.csv", "csv")


def test_a_crash_leaves_no_half_parquet_file_visible(tmp_path):
    lines = JsonlWriter(tmp_path / "l.jsonl").append(
        [{"v": 1, "seq": None, "ts_us": n, "kind": "deposit", "target_agent": "a", "amount_micros": 1} for n in range(10)]
    )
    writer = ParquetLedgerWriter(tmp_path / "pq", row_group_events=5)
    writer.append_lines(lines, 10)  # two row groups written, the file still open: then the process dies
    assert list((tmp_path / "pq").rglob("*.parquet")) == []
    assert len(list((tmp_path / "pq").rglob("*.parquet.tmp"))) == 1


def test_row_groups_and_file_rotation_keep_every_row(tmp_path):
    events = [{"v": 1, "seq": None, "ts_us": n * 3_600_000_000, "kind": "deposit", "target_agent": f"a{n % 7}", "amount_micros": n} for n in range(500)]
    body = JsonlWriter(tmp_path / "l.jsonl").append(events).splitlines(keepends=True)
    writer = ParquetLedgerWriter(tmp_path / "pq", row_group_events=64, max_file_rows=128)
    for start in range(0, len(body), 37):
        writer.append_lines(b"".join(body[start:start + 37]), len(body[start:start + 37]))
    writer.close()
    table = read_table(tmp_path / "pq")
    assert table.column("seq").to_pylist() == list(range(500))
    assert sum(table.column("amount_micros").to_pylist()) == sum(range(500))
    assert len(writer.files_written) >= 500 // 128 + 1


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (b'{"v":1,"seq":0,"ts_us":0,"kind":"deposit","mystery":1,"hash":"' + b"0" * 32 + b'"}', "do not match the event schema"),
    ],
)
def test_parquet_refuses_lines_outside_the_schema(tmp_path, line, problem):
    writer = ParquetLedgerWriter(tmp_path / "pq", row_group_events=1)
    with pytest.raises(LedgerError, match=problem):
        writer.append_lines(line + b"\n", 1)


def test_readers_refuse_a_corrupt_line_but_skip_a_torn_one(busy_ledger, tmp_path):
    ledger, _, _ = busy_ledger
    with open(segments(ledger)[-1], "ab") as f:
        f.write(b'{"v":1,"seq":')  # torn by a crash: tolerated
    assert read_table(ledger).num_rows == len(read_events(ledger).events)
    first = segments(ledger)[0]
    lines = first.read_bytes().splitlines(keepends=True)
    first.write_bytes(b"".join(lines[:3] + [b"garbage\n"] + lines[3:]))
    for reader in (read_table, read_events, lambda path: compact(path, tmp_path / "pq")):
        with pytest.raises(LedgerError, match=r"toll_ledger\.jsonl:4: malformed JSON"):
            reader(ledger)


@pytest.mark.parametrize("source", ["jsonl", "parquet"])
def test_streaming_reads_every_row_in_bounded_batches(busy_ledger, source):
    ledger, parquet, _ = busy_ledger
    path = ledger if source == "jsonl" else parquet
    batches = list(read_batches(path, batch_rows=1_000))
    assert all(batch.num_rows <= 1_000 for batch in batches)
    seqs = sorted(s for batch in batches for s in batch.column("seq").to_pylist())
    assert seqs == list(range(read_table(ledger).num_rows))


def test_reconcile_names_what_differs(busy_ledger, make_booth):
    ledger, _, live = busy_ledger
    restored = make_booth(track_balances=True, max_daily_toll_per_agent="3", escrow_timeout_s=60, ledger_rotate_daily=True)
    assert reconcile(restored.snapshot(), live) == []
    tampered = {**live, "balances_micros": {**live["balances_micros"], "agent-1": 1}}
    [difference] = reconcile(restored.snapshot(), tampered)
    assert difference.startswith("balances_micros['agent-1']: replay ") and difference.endswith(", live 1")


def test_read_table_keeps_only_the_columns_asked_for_and_the_report_is_the_same(busy_ledger):
    from ledger.report import REPORT_COLUMNS, build_report

    ledger, parquet, _ = busy_ledger
    for source in (ledger, parquet):
        full = read_table(source)
        some = read_table(source, columns=REPORT_COLUMNS)
        assert some.column_names == ["seq", *REPORT_COLUMNS]
        assert some.column("amount_micros").equals(full.column("amount_micros"))
        assert build_report(some) == build_report(full)
