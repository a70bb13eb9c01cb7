"""Append-only JSONL: one orjson object per line, one ``write`` per batch, then flush.

The writer assigns each event its sequence number. Every append reaches the OS
before :meth:`JsonlWriter.append` returns (a process crash loses nothing); the
fsync policy decides whether it also reaches the disk (a power loss):

* ``always`` and ``batch``: ``fsync`` after every append call (one call is one
  batch; the in-process Tollbooth appends one event per call, so they coincide);
* ``never``: leave it to the OS (the default of the in-process Tollbooth, as the seed).

If the file ends in a torn line (a crash mid-write), the writer starts a new line
and appends a ``recover`` event naming the torn bytes; it never truncates.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "l.jsonl"
>>> w = JsonlWriter(path)
>>> w.append([{"kind": "deposit"}]); w.close()
>>> path.read_bytes()
b'{"kind":"deposit","seq":0}\\n'
"""

from __future__ import annotations

import os
import time
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import orjson

from ledger.events import SCHEMA_VERSION, EventKind
from mesh.errors import LedgerError

_TAIL_BYTES = 1 << 16  # how far back we look for the last whole line when reopening


class FsyncPolicy(str, Enum):
    ALWAYS = "always"
    BATCH = "batch"
    NEVER = "never"


class JsonlWriter:
    """Appends batches of events to one JSONL file, numbering them from the file's last ``seq``."""

    def __init__(self, path: Path, fsync: FsyncPolicy | str = FsyncPolicy.NEVER) -> None:
        self.path = Path(path)
        self.fsync = FsyncPolicy(fsync)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd: Optional[int] = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise LedgerError(f"cannot open ledger {self.path}: {exc}") from exc
        self.next_seq, torn_bytes = _scan_tail(self.path)
        if torn_bytes:
            self._write(b"\n")
            self.append([_recover_event(torn_bytes)])

    def append(self, events: list[dict[str, Any]]) -> None:
        """Number ``events`` in place and append them in one write; raises LedgerError on failure.

        On failure the sequence numbers are not consumed.
        """
        seq = self.next_seq
        lines = []
        for event in events:
            event["seq"] = seq
            seq += 1
            lines.append(orjson.dumps(event))
        lines.append(b"")
        self._write(b"\n".join(lines))
        self.next_seq = seq

    def append_one(self, event: dict[str, Any]) -> None:
        """:meth:`append` for a single event (the in-process booth's hot path)."""
        event["seq"] = self.next_seq
        self._write(orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE))
        self.next_seq += 1

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _write(self, data: bytes) -> None:
        if self._fd is None:
            raise LedgerError(f"ledger {self.path} is closed")
        try:
            written = os.write(self._fd, data)
            if written < len(data):  # rare (a full disk, a signal): finish the line
                view = memoryview(data)[written:]
                while view:
                    view = view[os.write(self._fd, view):]
            if self.fsync is not FsyncPolicy.NEVER:
                os.fsync(self._fd)
        except OSError as exc:
            raise LedgerError(f"cannot append to ledger {self.path}: {exc}") from exc


def _scan_tail(path: Path) -> tuple[int, int]:
    """(next sequence number, length of a torn last line or 0) of an existing ledger file."""
    size = path.stat().st_size
    if size == 0:
        return 0, 0
    with open(path, "rb") as f:
        f.seek(max(0, size - _TAIL_BYTES))
        tail = f.read()
    torn_bytes = 0
    if not tail.endswith(b"\n"):
        torn_bytes = len(tail) - (tail.rfind(b"\n") + 1)
        tail = tail[: len(tail) - torn_bytes]
    for line in reversed(tail.splitlines()):
        try:
            seq = orjson.loads(line).get("seq")
        except (orjson.JSONDecodeError, AttributeError):
            continue
        if isinstance(seq, int):
            return seq + 1, torn_bytes
    if size > _TAIL_BYTES:
        raise LedgerError(f"{path}: no whole event in its last {_TAIL_BYTES} bytes")
    return 0, torn_bytes


def _recover_event(torn_bytes: int) -> dict[str, Any]:
    ts_us = time.time_ns() // 1000
    return {
        "v": SCHEMA_VERSION, "seq": None, "ts_us": ts_us,
        "kind": EventKind.RECOVER.value, "torn_bytes": torn_bytes,
    }
