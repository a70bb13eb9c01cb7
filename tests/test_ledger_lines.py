"""The JSONL writer and reader: one object per line, torn lines tolerated only where a crash leaves them."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ledger import JsonlWriter, read_events
from mesh import LedgerError


def event(kind="lock", **extra):
    return {"v": 1, "seq": None, "kind": kind, "ts_us": 0, **extra}


def test_writer_numbers_events_and_continues_after_reopen(tmp_path):
    path = tmp_path / "l.jsonl"
    writer = JsonlWriter(path, fsync="batch")
    writer.append([event(), event("release")])
    writer.close()
    writer = JsonlWriter(path)
    writer.append([event("refund")])
    writer.close()
    read = read_events(path)
    assert [(e["seq"], e["kind"]) for e in read.events] == [(0, "lock"), (1, "release"), (2, "refund")]
    assert read.torn_lines == []
    assert path.read_bytes().count(b"\n") == 3


def test_corrupt_middle_line_is_an_error_naming_file_and_line(tmp_path):
    path = tmp_path / "l.jsonl"
    path.write_bytes(b'{"v":1,"seq":0,"kind":"lock"}\n{"v":1,"seq":1,"kind":"lo\n{"v":1,"seq":2,"kind":"lock"}\n')
    with pytest.raises(LedgerError, match=r"l\.jsonl:2: malformed JSON"):
        read_events(path)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (b'{"v":3,"seq":0,"kind":"lock"}', "schema version"),
        (b'{"v":1,"seq":0,"kind":"steal"}', "unknown event kind"),
        (b"[1,2]", "not a JSON object"),
    ],
)
def test_invalid_events_are_named(tmp_path, line, problem):
    path = tmp_path / "l.jsonl"
    path.write_bytes(line + b"\n")
    with pytest.raises(LedgerError, match=problem):
        read_events(path)


def test_missing_file_is_a_ledger_error(tmp_path):
    with pytest.raises(LedgerError, match="ledger not found"):
        read_events(tmp_path / "nope.jsonl")


def test_unwritable_directory_is_a_ledger_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(LedgerError, match="cannot create the ledger directory"):
        JsonlWriter(blocker / "l.jsonl")


def test_encoded_events_are_numbered_chained_and_rotated_like_dicts(tmp_path):
    from ledger.jsonl import encode_events
    from ledger.verify import verify

    day_us = 86_400_000_000
    batch = [{"v": 1, "seq": None, "ts_us": day_us * (n // 3), "kind": "deposit", "target_agent": "a", "amount_micros": n} for n in range(9)]
    by_dicts = JsonlWriter(tmp_path / "d" / "l.jsonl", rotate_daily=True)
    by_bytes = JsonlWriter(tmp_path / "b" / "l.jsonl", rotate_daily=True)
    assert by_bytes.append_encoded(encode_events(batch)) == by_dicts.append([dict(e) for e in batch])
    by_dicts.close()
    by_bytes.close()
    assert len(list((tmp_path / "b").glob("l*.jsonl"))) == 3
    assert verify(tmp_path / "b").ok


@pytest.mark.parametrize(
    ("blob", "problem"),
    [
        (b'{"v":1,"seq":null,"ts_us":0,"kind":"deposit"}', "end with a newline"),
        (b'{"seq":null,"v":1,"ts_us":0,"kind":"deposit"}\n', "encoded event 0 must be a JSON object starting with"),
        (b'{"v":1,"seq":null,"ts_us":0}\n{"v":1,"seq":null,"ts_us":0,\n', "encoded event 1"),
        (b'{"v":1,"seq":null,"ts_us":0}\n{"v":1,"seq":null,"x":{"v":1,"seq":null,"y":0}}\n', "encoded event 1 holds"),
        (b'{"v":1,"seq":null,"a":{"v":1,"seq":null,"y":0},"b":0}\n{"v":1,"seq":null,"ts_us":0}\n', "encoded event 0 holds"),
        (b'{"v":1,"seq":null,"ts_us":0}\n{"v":1,"seq":null,\n"ts_us":0}\n', "encoded event 1 must be"),
        (b'{"v":1,"seq":null,"ts_us":0}\n\n', "encoded event 1 must be"),
        (b'{"v":1,"seq":null,\n', "encoded event 0 must be"),
        (b'{"v":1,"seq":null,"ts_us":0}\n{"v":1,"seq":null,}', "end with a newline"),
    ],
)
def test_bad_encoded_events_are_refused_and_nothing_is_written(tmp_path, blob, problem):
    writer = JsonlWriter(tmp_path / "l.jsonl")
    with pytest.raises(LedgerError, match=problem):
        writer.append_encoded(blob)
    writer.close()
    assert (tmp_path / "l.jsonl").read_bytes() == b""


text_with_joins = st.text() | st.sampled_from(['},{"v":1,"seq":null,', '}\n{"v":1,"seq":null,', '"', "\\", "["])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {"v": st.sampled_from([1, 1, 1, 2]), "seq": st.sampled_from([None, None, None, 0])},
            optional={"task_id": text_with_joins, "nested": st.lists(st.fixed_dictionaries({"v": st.just(1), "seq": st.none(), "x": st.just(0)}), max_size=3)},
        ),
        max_size=8,
    )
)
@example([{"v": 1, "seq": None, "a": 0}, {"v": 2, "seq": None, "nested": [{"v": 1, "seq": None, "x": 0}] * 2}])
def test_a_batch_encodes_as_its_events_one_by_one(events):
    from ledger.jsonl import encode_events

    """Including batches the cuts cannot serve: an event without the placeholder beside a list of event-like dicts."""
    one_by_one = b"".join(orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE) for event in events)
    assert encode_events(events) == one_by_one


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.builds(lambda ts, extra: {"v": 1, "seq": None, "ts_us": ts, **extra},
                       st.integers(0, 10**15) | st.sampled_from([0, 86_400_000_000 - 1, 86_400_000_000, 10**17 + 7]),
                       st.fixed_dictionaries({}, optional={"kind": st.just("lock"), "task_id": text_with_joins,
                                                           "reason": st.none()})),
             min_size=1, max_size=40),
    st.sampled_from([1, 2, 3, 256]),
    st.sampled_from([1, 2]),
    st.booleans(),
)
def test_encoded_lines_are_written_as_their_events_are(tmp_path_factory, events, batches, format_version, rotate_daily):
    """``append_encoded`` (the events cut at their placeholders, each numbered as a whole batch, their
    days read at once) writes byte for byte what ``append`` writes of the same events, in batches of
    any size, into the same day segments."""
    from ledger.jsonl import cut_encoded, encode_events, split_encoded

    encoded = encode_events([dict(e) for e in events])
    assert [b'{"v":1,"seq":null,' + rest[:-1] for rest in cut_encoded(encoded)] == split_encoded(encoded)
    root = tmp_path_factory.mktemp("cut")
    writers = [JsonlWriter(root / name / "l.jsonl", fsync="batch", format_version=format_version, rotate_daily=rotate_daily)
               for name in ("dicts", "bodies", "lines")]
    by_dicts, by_bodies, by_lines = writers
    size = max(1, len(events) // batches)
    for start in range(0, len(events), size):
        run = events[start:start + size]
        written = by_lines.append_encoded(encode_events([dict(e) for e in run]))
        assert written == by_bodies.append_bodies(split_encoded(encode_events([dict(e) for e in run])))
        assert by_lines.seals == by_bodies.seals
        assert written == by_dicts.append([dict(e) for e in run])
    for writer in writers:
        writer.close()
    files = {name: sorted(p.name for p in (root / name).glob("l*.jsonl")) for name in ("dicts", "lines")}
    assert files["dicts"] == files["lines"]
    for name in files["dicts"]:
        assert (root / "dicts" / name).read_bytes() == (root / "lines" / name).read_bytes()


@pytest.mark.parametrize("bisect_stop_bytes", [1, 300, 1 << 16])
def test_reading_from_a_seq_skips_exactly_the_earlier_events_torn_lines_and_all(tmp_path, monkeypatch, bisect_stop_bytes):
    """Reading from a seq bisects the first file down to ``BISECT_STOP_BYTES`` (1: to the line), then
    passes over lines by their seq: the events are exactly those at or past it, torn lines or not."""
    import ledger.reader
    from ledger.files import segments
    from ledger.reader import event_lines

    monkeypatch.setattr(ledger.reader, "BISECT_STOP_BYTES", bisect_stop_bytes)
    path = tmp_path / "l.jsonl"
    for life in range(3):  # each life ends torn by a crash; the next writer marks the torn line
        writer = JsonlWriter(path, max_segment_bytes=4_000)
        writer.append([event(ts_us=n, task_id=f"life{life}-{n}") for n in range(7 + 5 * life)])
        writer.close()
        with open(segments(path)[-1], "ab") as f:
            f.write(b'{"v":1,"seq":' + str(1_000 + life).encode() + b',"ts_us":0,"ki')
    writer = JsonlWriter(path, max_segment_bytes=4_000)
    writer.append([event(ts_us=n) for n in range(4)])
    writer.close()
    files = segments(path)
    every = [line.event for line in event_lines(files)]
    assert [e["kind"] for e in every].count("recover") == 3
    for first in range(len(files)):
        for from_seq in range(len(every) + 2):
            read = [line.event for line in event_lines(files[first:], from_seq=from_seq)]
            assert read == [e for e in [line.event for line in event_lines(files[first:])] if e["seq"] >= from_seq]


@pytest.mark.parametrize("format_version", [1, 2])
def test_a_corrupt_line_read_from_a_seq_is_named_by_its_place_after_the_start(tmp_path, monkeypatch, format_version):
    """v1 is read from the line bisection finds; v2 from the start of the batch holding the seq (here, the file's)."""
    import ledger.reader
    from ledger.reader import event_lines

    monkeypatch.setattr(ledger.reader, "BISECT_STOP_BYTES", 1)
    path = tmp_path / "l.jsonl"
    writer = JsonlWriter(path, format_version=format_version)
    writer.append([event(ts_us=n) for n in range(20)])
    writer.close()
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:15] + [b"garbage\n"] + lines[15:]))
    named = r"l\.jsonl, line \d+ after byte \d+" if format_version == 1 else r"l\.jsonl:16"
    with pytest.raises(LedgerError, match=rf"{named}: malformed JSON"):
        list(event_lines([path], from_seq=12))
    with pytest.raises(LedgerError, match=r"l\.jsonl:16: malformed JSON"):
        list(event_lines([path]))


# -- one rule for what is torn, shared by the reader and the writer (ledger.lines) ---------------


def deposits(count, first=0):
    return [event("deposit", target_agent=f"a{first + n}", amount_micros=first + n + 1) for n in range(count)]


@pytest.mark.parametrize(("format_version", "chain_field"), [(1, "hash"), (2, "seal")])
def test_a_last_event_that_lost_only_its_newline_is_whole_to_the_reader_and_the_writer(tmp_path, format_version, chain_field):
    from ledger.verify import verify

    path = tmp_path / "l.jsonl"
    writer = JsonlWriter(path, format_version=format_version)
    writer.append(deposits(3))
    writer.close()
    whole = path.read_bytes()
    path.write_bytes(whole[:-1])  # the crash came between the bytes and the newline
    read = read_events(path)
    assert [e["seq"] for e in read.events] == [0, 1, 2] and read.torn_lines == []
    writer = JsonlWriter(path)
    assert (writer.next_seq, writer.last_hash) == (3, orjson.loads(whole.splitlines()[-1])[chain_field])
    writer.append(deposits(1, first=3))
    writer.close()
    assert path.read_bytes().startswith(whole)  # the newline, then the next event: no recover
    assert [e["kind"] for e in read_events(path).events] == ["deposit"] * 4
    assert verify(path).ok


def test_several_lines_of_garbage_after_the_last_event_are_one_torn_run(tmp_path):
    from ledger.verify import verify

    path = tmp_path / "l.jsonl"
    writer = JsonlWriter(path)
    writer.append(deposits(2))
    writer.close()
    junk = b'{"v":1,"seq":2,"ts_us":0,"ki\n\x00\x00\x00\n\xff\xfe garbage'
    with open(path, "ab") as f:
        f.write(junk)
    assert read_events(path).torn_lines == [(path, 3), (path, 4), (path, 5)]
    JsonlWriter(path).close()
    read = read_events(path)
    assert [(e["kind"], e.get("torn_bytes")) for e in read.events] == [("deposit", None)] * 2 + [("recover", len(junk))]
    assert len(read.torn_lines) == 3
    result = verify(path)
    assert result.ok and len(result.warnings) == 3


def test_a_run_before_a_recover_that_names_other_bytes_is_corruption(tmp_path):
    from ledger.verify import verify

    path = tmp_path / "l.jsonl"
    writer = JsonlWriter(path)
    writer.append(deposits(2))
    writer.close()
    with open(path, "ab") as f:
        f.write(b"torn")
    JsonlWriter(path).close()
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:2] + [b"not an event either\n"] + lines[2:]))  # a line no recover names
    with pytest.raises(LedgerError, match=r"l\.jsonl:3: malformed JSON .* the recover event after it names torn_bytes=4, not this run's 25 bytes"):
        read_events(path)
    assert any("names torn_bytes=4" in str(p) for p in verify(path).problems)


@pytest.mark.parametrize("line", [b'{"v":3,"seq":2,"kind":"lock"}', b'{"v":1,"seq":2,"kind":"steal"}', b"[1,2]", b"7"])
def test_json_after_the_last_event_is_never_taken_for_torn(tmp_path, line):
    """What a crash leaves is never JSON: a line of a newer schema (say) is not buried under a recover."""
    path = tmp_path / "l.jsonl"
    writer = JsonlWriter(path)
    writer.append(deposits(2))
    writer.close()
    with open(path, "ab") as f:
        f.write(line)
    before = path.read_bytes()
    with pytest.raises(LedgerError, match=r"l\.jsonl:3: "):
        read_events(path)
    with pytest.raises(LedgerError, match="a line after the ledger's last event is not one and no crash explains it"):
        JsonlWriter(path)
    assert path.read_bytes() == before


def test_a_last_event_without_a_hash_cannot_be_chained_onto(tmp_path):
    path = tmp_path / "l.jsonl"
    path.write_bytes(b'{"v":1,"seq":0,"ts_us":0,"kind":"deposit"}\n')  # not written by the writer
    assert len(read_events(path).events) == 1
    with pytest.raises(LedgerError, match="the last event .* has no hash or seal field or no integer seq, so the chain cannot go on"):
        JsonlWriter(path)
    assert path.read_bytes() == b'{"v":1,"seq":0,"ts_us":0,"kind":"deposit"}\n'


def test_a_ledger_recovered_by_the_earlier_writer_still_reads_and_verifies(tmp_path):
    """The earlier writer's form: one torn line, the newline it added, a recover naming the line's length."""
    from ledger.lines import chain_hash
    from ledger.schema import GENESIS_HASH
    from ledger.verify import verify

    def line(fields: bytes, previous: str) -> tuple[bytes, str]:
        digest = chain_hash(previous, b"{" + fields + b"}")
        return b'{%s,"hash":"%s"}\n' % (fields, digest.encode()), digest

    first, digest = line(b'"v":1,"seq":0,"ts_us":0,"kind":"deposit","target_agent":"a","amount_micros":1', GENESIS_HASH)
    torn = b'{"v":1,"seq":1,"ts_us":0,"kind":"dep'
    recover, digest = line(b'"v":1,"seq":1,"ts_us":5,"kind":"recover","torn_bytes":%d' % len(torn), digest)
    after, _ = line(b'"v":1,"seq":2,"ts_us":6,"kind":"deposit","target_agent":"a","amount_micros":2', digest)
    path = tmp_path / "l.jsonl"
    path.write_bytes(first + torn + b"\n" + recover + after)
    read = read_events(path)
    assert [e["seq"] for e in read.events] == [0, 1, 2] and read.torn_lines == [(path, 2)]
    assert verify(path).ok
    writer = JsonlWriter(path)
    assert writer.next_seq == 3
    writer.close()


tail_pieces = st.sampled_from(["prefix", "whole_no_newline", "nuls", "garbage", "newline", "json", "event"])


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 4), st.lists(st.tuples(tail_pieces, st.integers(0, 200)), max_size=4))
def test_the_reader_and_the_writer_agree_where_the_events_end(count, pieces):
    """Whatever follows a ledger's events, the writer goes on right after the last event the reader
    reads (and after a recover event if the reader skips torn lines after it); it refuses only
    where the reader refuses too."""
    import tempfile
    from pathlib import Path

    from ledger.reader import iter_lines

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "l.jsonl"
        writer = JsonlWriter(path)
        writer.append(deposits(count))
        line = writer.append(deposits(1, first=count))  # the next event's line, whole
        writer.close()
        base = path.read_bytes()[: -len(line)]
        tail = b"".join({
            "prefix": line[: n % len(line)], "whole_no_newline": line[:-1], "nuls": b"\x00" * n,
            "garbage": b"\xff" + bytes([n % 256]).replace(b"\n", b""), "newline": b"\n",
            "json": b'{"v":9}\n', "event": line,
        }[kind] for kind, n in pieces)
        path.write_bytes(base + tail)
        lines = list(iter_lines([path]))
        readable = all(l.event is not None or l.torn for l in lines)
        events = [l for l in lines if l.event is not None]
        last_no = events[-1].line_no if events else 0
        torn_after = any(l.torn and l.line_no > last_no for l in lines)
        try:
            writer = JsonlWriter(path)
        except LedgerError:
            assert not readable  # the writer refuses only a ledger the reader refuses
            return
        first_new = writer.next_seq
        writer.close()
        if readable or not any(l.line_no > last_no and l.event is None and not l.torn for l in lines):
            assert first_new == (events[-1].event["seq"] + 1 if events else 0) + torn_after
