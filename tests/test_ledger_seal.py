"""Ledger format v2 (a seal per batch, nulls left out), randomized: crashes, tampering, and v1 = v2 for every tool.

* Random batches through every way in, sealed in pieces (``SEAL_MAX_LINES`` made small), cut at a random
  byte (and junk added): the reader and the writer agree on the end, only whole sealed batches count,
  the torn bytes are marked once, verify passes.
* A random byte of a written ledger changed: verify fails and names the line or the batch (seq range,
  lines) holding it; or, when the change makes the ledger's last batch look cut short, it is torn (a warning).
* The same events written as v1 and as v2 (in random batches): replay, read, report, tally, settle,
  export, compact (Parquet), the columnar rebuild and catch-up give the same, chain fields aside.
* The format: a new ledger is v2, a v1 ledger goes on in v1, another format than a ledger's is refused.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path
from typing import Any

import orjson
import pyarrow.csv as pacsv
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import ledger.seal
from ledger import JsonlWriter, read_events, read_table
from ledger.catch_up import catch_up
from ledger.export import compact, export
from ledger.files import segments
from ledger.jsonl import encode_events
from ledger.parquet import ParquetLedgerWriter
from ledger.reader import event_lines, iter_lines
from ledger.replay import replay_file, snapshot
from ledger.report import build_report
from ledger.schema import CHAIN_FIELDS, NULLABLE_FIELDS, LedgerEvent
from ledger.tally import tally_ledger
from ledger.verify import verify
from mesh import LedgerError, ManualClock, Tollbooth, TollboothConfig
from mesh.core.budget import BudgetBook
from mesh.columnar import ColumnarBook
from mesh.columnar.rebuild import rebuild_from_ledger
from mesh.core.escrow import EscrowBook
from mesh.booth.settlement import settle

START_US = 1_767_225_600_000_000  # 2026-01-01
DAY_US = 86_400_000_000
FEW = min(settings.default.max_examples, 60)


def deposit(marker: int, ts_us: int = START_US, **extra: Any) -> dict[str, Any]:
    return {"v": 1, "seq": None, "ts_us": ts_us, "kind": "deposit", "target_agent": f"a{marker}",
            "amount_micros": marker + 1, **extra}


def append(writer: JsonlWriter, batch: list[dict[str, Any]], way: int) -> None:
    if way == 0:
        writer.append(batch)
    elif way == 1:
        writer.append_encoded(encode_events(batch))
    else:
        for event in batch:
            writer.append_one(event)


def markers(path: Path) -> list[int]:
    return [int(e["target_agent"][1:]) for e in read_events(path).events if e["kind"] == "deposit"]


@pytest.fixture
def small_batches(monkeypatch):
    """Seal every 3 lines at most, so that appends are sealed in pieces."""
    monkeypatch.setattr(ledger.seal, "SEAL_MAX_LINES", 3)
    monkeypatch.setattr("ledger.jsonl.SEAL_MAX_LINES", 3)


# -- the format ---------------------------------------------------------------------------


def test_a_new_ledger_is_v2_and_a_v1_ledger_goes_on_in_v1(tmp_path):
    new, old = tmp_path / "new.jsonl", tmp_path / "old.jsonl"
    for path, version in ((new, None), (old, 1)):
        writer = JsonlWriter(path, format_version=version)
        writer.append([deposit(0), deposit(1)])
        writer.close()
        writer = JsonlWriter(path)  # reopened without a format: the ledger's own
        writer.append_one(deposit(2))
        writer.close()
    assert {orjson.loads(line)["v"] for line in new.read_bytes().splitlines()} == {2}
    assert {orjson.loads(line)["v"] for line in old.read_bytes().splitlines()} == {1}
    assert verify(new).ok and verify(old).ok
    with pytest.raises(LedgerError, match=r"old\.jsonl is a v1 ledger, and a ledger keeps one format.*start a new ledger for v2"):
        JsonlWriter(old, format_version=2)
    for bad in (0, 3, True, "2"):
        with pytest.raises(LedgerError, match="format_version=.*must be one of"):
            JsonlWriter(tmp_path / "bad.jsonl", format_version=bad)


def test_a_batch_is_one_seal_and_a_batch_of_one_is_one_line(tmp_path):
    path = tmp_path / "l.jsonl"
    writer = JsonlWriter(path)
    writer.append([deposit(n) for n in range(4)])
    writer.append_one(deposit(4))
    writer.close()
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert len(lines) == 5
    assert [("seal" in line, line.get("first_seq"), line.get("lines")) for line in lines] == [
        (False, None, None), (False, None, None), (False, None, None), (True, 0, 4), (True, 4, 1)]
    assert not any("hash" in line for line in lines)


def test_v2_lines_leave_their_nulls_out_and_readers_fill_them_in(tmp_path):
    path = tmp_path / "l.jsonl"
    writer = JsonlWriter(path)
    writer.append([deposit(0, reason=None, mode=None), deposit(1, status=None, task_id="t:null")])  # nulls from the producer
    writer.append_one(deposit(2, shard=None, payer_wallet=None))
    writer.append_encoded(encode_events([deposit(3, settled_at=None)]))
    writer.close()
    assert b":null" not in path.read_bytes().replace(b'"t:null"', b"")
    events = read_events(path).events
    assert all(event[name] is None for event in events for name in NULLABLE_FIELDS)
    assert events[1]["task_id"] == "t:null"  # text that looks like a null field is no field


def test_the_nullable_fields_are_the_schemas_optional_fields():
    optional = {name for name, field in LedgerEvent.model_fields.items() if not field.is_required() and field.default is None}
    assert optional - set(CHAIN_FIELDS) == set(NULLABLE_FIELDS)


def test_an_append_longer_than_a_batch_is_sealed_in_pieces_and_read_from_any_seq(tmp_path, small_batches):
    path = tmp_path / "l.jsonl"
    writer = JsonlWriter(path)
    writer.append([deposit(n) for n in range(8)])
    writer.close()
    seals = [orjson.loads(line).get("lines") for line in path.read_bytes().splitlines()]
    assert [n for n in seals if n] == [3, 3, 2]
    assert verify(path).ok
    for from_seq in range(10):
        assert [line.event["seq"] for line in event_lines([path], from_seq=from_seq)] == list(range(from_seq, 8))


# -- crashes ------------------------------------------------------------------------------


junk = st.one_of(st.just(b""), st.integers(1, 300).map(lambda n: b"\x00" * n), st.just(b"\xffgarbage\n\xfe"))


@settings(max_examples=FEW, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batches=st.lists(st.tuples(st.integers(1, 7), st.integers(0, 2)), min_size=1, max_size=6),
    max_segment_bytes=st.none() | st.integers(300, 1_500),
    cut_fraction=st.floats(0, 1),
    junk=junk,
)
def test_a_crash_at_any_byte_keeps_exactly_the_whole_sealed_batches(small_batches, batches, max_segment_bytes, cut_fraction, junk):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "l.jsonl"
        writer = JsonlWriter(path, max_segment_bytes=max_segment_bytes)
        written = 0
        for size, way in batches:
            append(writer, [deposit(written + n) for n in range(size)], way)
            written += size
        writer.close()
        last = segments(path)[-1]
        data = last.read_bytes()
        cut = round(cut_fraction * len(data))
        last.write_bytes(data[:cut] + junk)
        earlier = sum(f.read_bytes().count(b"\n") for f in segments(path)[:-1])
        # what survives: the lines up to the last whole line that ends a batch (a seal), within the cut
        kept_lines, kept_bytes, start = 0, 0, 0
        for number, line in enumerate(data[:cut].split(b"\n")[:-1] if junk else data[:cut].splitlines(), start=1):
            end = start + len(line) + 1
            if b',"seal":"' in line and line.endswith(b'"}') and (end <= cut or (not junk and end - 1 == cut)):
                kept_lines, kept_bytes = number, min(end, cut)
            start = end
        survivors = list(range(earlier + kept_lines))
        lines = list(iter_lines(segments(path)))
        assert all(line.event is not None or line.torn for line in lines)
        assert markers(path) == survivors
        torn = cut + len(junk) - kept_bytes
        writer = JsonlWriter(path)  # reopening marks what is torn, once
        assert writer.next_seq == len(survivors) + (1 if torn > 0 and not (kept_bytes == cut and not junk) else 0)
        append(writer, [deposit(1_000), deposit(1_001)], 0)
        writer.close()
        result = verify(path)
        assert result.ok, [str(p) for p in result.problems]
        assert markers(path) == [*survivors, 1_000, 1_001]


# -- tampering ----------------------------------------------------------------------------


def written_ledger(root: Path, batches: list[int], version: int) -> Path:
    path = root / "l.jsonl"
    writer = JsonlWriter(path, format_version=version, max_segment_bytes=2_000)
    written = 0
    for way, size in enumerate(batches):
        append(writer, [deposit(written + n, ts_us=START_US + written + n) for n in range(size)], way % 3)
        written += size
    writer.close()
    return path


@settings(max_examples=200, deadline=None)
@given(
    batches=st.lists(st.integers(1, 12), min_size=1, max_size=6),
    where=st.floats(0, 1, exclude_max=True),
    byte=st.integers(0, 255),
    version=st.sampled_from([1, 2]),
)
@example(batches=[2], where=0.5, byte=10, version=1)  # a newline over the last line's first byte: a torn tail
@example(batches=[7, 6], where=0.8806, byte=0, version=2)  # the last batch's lines joined: its seal is lost, torn
@example(batches=[5, 3, 2, 3, 3, 12], where=0.9999, byte=32, version=2)  # the last newline a space: all lines whole
@example(batches=[3, 8], where=0.9069, byte=0, version=1)  # the last two lines joined: a torn last line
def test_a_changed_byte_is_found_and_named_by_its_line_or_batch(batches, where, byte, version):
    with tempfile.TemporaryDirectory() as tmp:
        path = written_ledger(Path(tmp), batches, version)
        files = segments(path)
        sizes = [f.stat().st_size for f in files]
        offset = int(where * sum(sizes))
        index = 0
        while offset >= sizes[index]:
            offset, index = offset - sizes[index], index + 1
        original = files[index].read_bytes()
        data = bytearray(original)
        if data[offset] == byte:
            byte = (byte + 1) % 256
        data[offset] = byte
        files[index].write_bytes(bytes(data))
        line_no = data[:offset].count(b"\n") + 1
        lines = bytes(data).split(b"\n")
        # the batch holding the changed byte: from the line after the previous batch's end to the next seal
        first = line_no
        while first > 1 and not _ends_batch(lines[first - 2], version):
            first -= 1
        last = line_no
        while last < len(lines) and not _ends_batch(lines[last - 1], version):
            last += 1
        result = verify(path)
        named = {p.line for p in result.problems if p.path == files[index]}
        # whether the changed byte was in the last batch, judged on the lines as written (a newline belongs
        # to the line it ends; a byte written over it may join two lines, or cut one in two)
        ends = [n for n, line in enumerate(original.split(b"\n")) if _ends_batch(line, version)]
        changed_line = original[:offset].count(b"\n") + (original[offset] == 10)  # a newline lost joins the next line in
        batch_end = next((n for n in ends if n >= changed_line), None)
        in_last_batch = index == len(files) - 1 and (batch_end is None or batch_end == ends[-1])
        if result.ok:  # only where the change made the ledger's end look like a crash's: a torn tail, reported
            if not result.warnings:  # or where it left every line whole: the last newline became JSON whitespace
                assert index == len(files) - 1 and offset == len(original) - 1 and data[offset] in b" \t\r", (offset, byte)
                return
            assert in_last_batch, (offset, byte)
            return
        assert named & set(range(first, last + 2)), (sorted(named), first, last, [str(p) for p in result.problems][:4])


def _ends_batch(line: bytes, version: int) -> bool:
    return (b',"hash":"' if version == 1 else b',"seal":"') in line


def test_a_changed_line_in_a_batch_names_the_batch_and_a_broken_line_names_itself(tmp_path):
    path = tmp_path / "l.jsonl"
    writer = JsonlWriter(path)
    writer.append([deposit(n) for n in range(3)])
    writer.append([deposit(n) for n in range(3, 7)])
    writer.close()
    lines = path.read_bytes().splitlines(keepends=True)
    changed = lines[:4] + [lines[4].replace(b'"amount_micros":5', b'"amount_micros":6')] + lines[5:]
    path.write_bytes(b"".join(changed))
    assert [f"{p.line}: {p.message}" for p in verify(path).problems] == [
        "4: seal broken: the batch of seq 3..6 (lines 4-7) was changed (a line of it changed, dropped or inserted), "
        "or a batch before it dropped or inserted"]
    path.write_bytes(b"".join(lines[:4] + [b"not json\n"] + lines[5:]))
    found = [f"{p.line}: {p.message}" for p in verify(path).problems]
    assert found[0].startswith("5: malformed JSON") and any("seal broken" in m for m in found)
    path.write_bytes(b"".join(lines[:5] + lines[6:]))  # a line of the batch dropped
    found = [f"{p.line}: {p.message}" for p in verify(path).problems]
    assert any("seq 6 where 5 was expected" in m for m in found) and any("seal broken" in m for m in found)


def test_a_last_line_that_lost_its_seal_is_corruption_not_a_crash(tmp_path):
    path = tmp_path / "l.jsonl"
    writer = JsonlWriter(path)
    writer.append([deposit(n) for n in range(3)])
    writer.close()
    data = path.read_bytes()
    path.write_bytes(data.replace(b'"seal":', b'"sea1":'))
    found = [f"{p.line}: {p.message}" for p in verify(path).problems]
    assert "3: a batch's last line without its seal (no crash leaves one: a cut line is no JSON)" in found
    assert "1: an event of a batch without its seal (a write cut short)" in found  # not torn: no crash explains it
    with pytest.raises(LedgerError, match=r"l\.jsonl:1: an event of a batch without its seal"):
        read_events(path)
    with pytest.raises(LedgerError, match="no crash explains it"):
        JsonlWriter(path)


# -- v1 and v2 of the same events ---------------------------------------------------------


def booth_events(root: Path, seed: int) -> list[dict[str, Any]]:
    """The events of a random run of an in-process booth (balances, caps, refunds, expiry), as producers hand them in."""
    rng = random.Random(seed)
    clock = ManualClock(START_US / 1e6)
    config = TollboothConfig(ledger_path=root / "booth.jsonl", paper_mode=False, track_balances=True,
                             max_daily_toll_per_agent="0.05", escrow_timeout_s=60, ledger_format=1)
    booth = Tollbooth(config, clock=clock)
    agents = [f"agent-{n}" for n in range(5)]
    for agent in agents:
        booth.deposit(agent, "0.03")
    for n in range(rng.randint(5, 60)):
        clock.advance(rng.choice([1, 30, 3_000, 86_400]))
        source, target = rng.sample(agents, 2)
        record = booth.charge_sync(f"t{n}", source, target, amount_usd=f"0.00{rng.randint(1, 9)}")
        if record.status.value == "escrow_locked" and rng.random() < 0.8:
            if rng.random() < 0.7:
                booth.release_sync(record.task_id)
            else:
                booth.refund_sync(record.task_id, "handler_error")
    clock.advance(120)
    booth.expire_stale()
    booth.close()
    events = []
    for event in read_events(config.ledger_path).events:
        given = {"v": 1, "seq": None}
        given.update((k, v) for k, v in event.items() if k not in ("v", "seq", *CHAIN_FIELDS))
        events.append(given)
    return events


def write(path: Path, events: list[dict[str, Any]], version: int, rng: random.Random) -> Path:
    writer = JsonlWriter(path, format_version=version, max_segment_bytes=rng.choice([None, 3_000]))
    start = 0
    while start < len(events):
        size = rng.randint(1, 20)
        append(writer, [dict(e) for e in events[start:start + size]], rng.randint(0, 2))
        start += size
    writer.close()
    return path


def without_chain(table):
    return table.drop_columns(["v", "hash"])


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000))
def test_v1_and_v2_of_the_same_events_give_every_tool_the_same(seed):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        events = booth_events(root, seed)
        rng = random.Random(seed)
        v1 = write(root / "v1" / "l.jsonl", events, 1, rng)
        v2 = write(root / "v2" / "l.jsonl", events, 2, rng)
        assert verify(v1).ok and verify(v2).ok
        read1, read2 = read_events(v1).events, read_events(v2).events
        strip = lambda e: {k: v for k, v in e.items() if k not in ("v", *CHAIN_FIELDS)}  # noqa: E731
        assert [strip(e) for e in read1] == [strip(e) for e in read2]
        books = []
        for path in (v1, v2):
            book = EscrowBook(BudgetBook(default_cap_micros=None), escrow_timeout_s=None)
            assert replay_file(book, path) == len(events)
            books.append(snapshot(book, START_US + DAY_US))
        assert books[0] == books[1]
        tables = [read_table(path) for path in (v1, v2)]
        assert without_chain(tables[0]).equals(without_chain(tables[1]))
        assert build_report(tables[0]) == build_report(tables[1])
        assert tally_ledger(v1) == tally_ledger(v2)
        rebuilt = [rebuild_from_ledger(ColumnarBook(track_balances=True), path).snapshot(START_US) for path in (v1, v2)]
        assert rebuilt[0] == rebuilt[1]
        exported = []
        for path in (v1, v2):
            export(path, path.parent / "out.csv", "csv")
            exported.append(without_chain(pacsv.read_csv(path.parent / "out.csv")))
        assert exported[0].equals(exported[1])
        compacted = []
        for path in (v1, v2):
            compact(path, path.parent / "parquet")
            compacted.append(without_chain(read_table(path.parent / "parquet").drop_columns(["day"])).combine_chunks())
        assert compacted[0].cast(compacted[1].schema).equals(compacted[1])
        half = len(events) // 2
        caught = []
        for path in (v1, v2):  # a dataset that holds the first half, caught up from the JSONL
            writer = ParquetLedgerWriter(path.parent / "partial")
            catch_up(writer, path, through_seq=half)
            writer.close()
            writer = ParquetLedgerWriter(path.parent / "partial")
            catch_up(writer, path)
            writer.close()
            caught.append(without_chain(read_table(path.parent / "partial").drop_columns(["day"])).combine_chunks())
        assert caught[0].cast(caught[1].schema).equals(caught[1])
        settled = [settle(path) for path in (v1, v2)]
        assert [(s.net_micros, s.call_count, s.task_ids) for s in settled[:1]] == [
            (s.net_micros, s.call_count, s.task_ids) for s in settled[1:]]


def test_a_v2_rows_hash_in_parquet_is_its_batchs_seal_on_its_last_row(tmp_path):
    path = tmp_path / "l.jsonl"
    writer = JsonlWriter(path)
    writer.append([deposit(n) for n in range(3)])
    writer.append_one(deposit(3))
    writer.close()
    seals = [orjson.loads(line).get("seal") for line in path.read_bytes().splitlines()]
    assert read_table(path).column("hash").to_pylist() == seals == [None, None, seals[2], seals[3]]


def test_a_line_of_the_other_format_is_named(tmp_path):
    path = tmp_path / "l.jsonl"
    writer = JsonlWriter(path, format_version=1)
    writer.append([deposit(0), deposit(1)])
    writer.close()
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + lines[1].replace(b'"amount_micros":2', b'"amount_micros":2,"lines":1'))
    assert any(p.line == 2 and "a v1 line with a v2 seal's fields" in p.message for p in verify(path).problems)
    v2 = tmp_path / "v2.jsonl"
    writer = JsonlWriter(v2)
    writer.append_one(deposit(2))
    writer.close()
    path.write_bytes(b"".join(lines) + v2.read_bytes().replace(b'"seq":0', b'"seq":2'))
    found = [f"{p.line}: {p.message}" for p in verify(path).problems]
    assert "3: a v2 line after v1 lines: a ledger is written in one format" in found
