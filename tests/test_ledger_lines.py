"""The JSONL writer and reader: one object per line, torn lines tolerated only where a crash leaves them."""

from __future__ import annotations

import pytest

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
        (b'{"v":2,"seq":0,"kind":"lock"}', "schema version"),
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
