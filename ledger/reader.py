"""Read a JSONL ledger back, tolerating only what a crash can leave behind.

A line that is not a valid event is an error naming the file and line, except a
*torn* line: the unfinished last line of the file, or a line the writer marked
as torn by appending a ``recover`` event right after it on reopening.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "l.jsonl"
>>> _ = path.write_bytes(b'{"v":1,"seq":0,"kind":"deposit"}\\n{"v":1,"se')
>>> read = read_events(path)
>>> len(read.events), read.torn_lines
(1, [2])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ledger.events import SCHEMA_VERSION, EventKind
from mesh.errors import LedgerError

_KINDS = frozenset(kind.value for kind in EventKind)


@dataclass
class LedgerRead:
    """The events of one file, in order, and the line numbers of torn lines skipped."""

    path: Path
    events: list[dict[str, Any]] = field(default_factory=list)
    torn_lines: list[int] = field(default_factory=list)


def read_events(path: Path | str) -> LedgerRead:
    """Parse every event of the JSONL ledger at ``path``; raise LedgerError on corruption."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LedgerError(f"cannot read ledger {path}: {exc}") from exc
    lines = data.split(b"\n")
    unfinished_tail = lines.pop()  # b"" when the file ends with a newline
    if unfinished_tail:
        lines.append(unfinished_tail)
    read = LedgerRead(path)
    bad_line: int | None = None
    for line_no, line in enumerate(lines, start=1):
        try:
            event = _parse(line)
        except ValueError as exc:
            if bad_line is not None:
                raise LedgerError(f"{path}:{bad_line}: not a valid ledger event") from None
            bad_line, problem = line_no, exc
            continue
        if bad_line is not None:
            if event["kind"] != EventKind.RECOVER.value:
                raise LedgerError(f"{path}:{bad_line}: {problem}")
            read.torn_lines.append(bad_line)
            bad_line = None
        read.events.append(event)
    if bad_line is not None:
        if not (unfinished_tail and bad_line == len(lines)):
            raise LedgerError(f"{path}:{bad_line}: {problem}")
        read.torn_lines.append(bad_line)
    return read


def _parse(line: bytes) -> dict[str, Any]:
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"malformed JSON ({exc})") from None
    if not isinstance(event, dict):
        raise ValueError("not a JSON object")
    if event.get("v") != SCHEMA_VERSION:
        raise ValueError(f"schema version v={event.get('v')!r}, expected {SCHEMA_VERSION}")
    if event.get("kind") not in _KINDS:
        raise ValueError(f"unknown event kind {event.get('kind')!r}")
    return event
