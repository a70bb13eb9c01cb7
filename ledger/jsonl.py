"""The JSONL ledger writer: hash-chained lines, batched appends, group commit, rotation.

Each event becomes one line: its JSON object (orjson) with a last field ``hash``, the
SHA-256 (first 128 bits, hex) of the previous line's hash and this line without its hash (see
:func:`chain_hash`), so a changed, dropped, inserted or reordered line breaks the chain.
An :meth:`JsonlWriter.append` of a batch is one ``write``; it reaches the OS before
the call returns (a process crash loses nothing). The fsync policy decides the disk:

* ``always``: each event is written and fsynced on its own before the next;
* ``batch``: one write and one fsync per appended batch (group commit);
* ``never``: one write per batch, the OS flushes when it likes (a power loss may
  lose the last events; the default of the in-process Tollbooth, as the seed).

Rotation (``max_segment_bytes``, ``rotate_daily``) starts the next segment file of the
family (see :mod:`ledger.files`); the chain and the numbering run on across files.
If the last file ends in a torn line (a crash mid-write), the writer starts a new line
and appends a ``recover`` event naming the torn bytes; it never truncates.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "l.jsonl"
>>> w = JsonlWriter(path)
>>> lines = w.append([{"v": 1, "seq": None, "ts_us": 0, "kind": "deposit"}]); w.close()
>>> path.read_bytes()[:50]
b'{"v":1,"seq":0,"ts_us":0,"kind":"deposit","hash":"'
"""

from __future__ import annotations

import os
import time
from enum import Enum
from hashlib import sha256
from pathlib import Path
from typing import Any, Optional

import orjson

from ledger.files import segment_path, segments
from ledger.schema import GENESIS_HASH, SCHEMA_VERSION, EventKind
from mesh.clock import US_PER_DAY
from mesh.errors import LedgerError

HASH_SUFFIX_BYTES = len(b',"hash":"') + 32 + len(b'"}')  # 43: the tail every line ends with
SEQ_PLACEHOLDER = b'{"v":1,"seq":null,'  # how every encoded event starts before the writer numbers it
_EVENT_JOIN = b"}," + SEQ_PLACEHOLDER  # between two events of a JSON array of them
_EVENT_BREAK = b"}\n" + SEQ_PLACEHOLDER  # the same place in JSON lines
_TAIL_BYTES = 1 << 16  # how far back we look for the last whole line when reopening


class FsyncPolicy(str, Enum):
    ALWAYS = "always"
    BATCH = "batch"
    NEVER = "never"


def chain_hash(previous_hash: str, body: bytes) -> str:
    """The hash of a line whose JSON without its ``hash`` field is ``body``: SHA-256, first 128 bits."""
    return sha256(previous_hash.encode() + body).hexdigest()[:32]


def line_body(line: bytes) -> tuple[bytes, str]:
    """Split a written line (without its newline) into (body without ``hash``, hash); ValueError if it has none."""
    if len(line) < HASH_SUFFIX_BYTES or line[-HASH_SUFFIX_BYTES:-34] != b',"hash":"' or line[-2:] != b'"}':
        raise ValueError("no hash field at the end of the line")
    return line[:-HASH_SUFFIX_BYTES] + b"}", line[-34:-2].decode("ascii", "replace")


class JsonlWriter:
    """Appends batches of events to a JSONL ledger family, numbering and chaining them."""

    def __init__(
        self,
        path: Path | str,
        fsync: FsyncPolicy | str = FsyncPolicy.NEVER,
        *,
        max_segment_bytes: Optional[int] = None,
        rotate_daily: bool = False,
    ) -> None:
        self.first_path = Path(path)
        self.fsync = FsyncPolicy(fsync)
        if max_segment_bytes is not None and max_segment_bytes < 1:
            raise LedgerError(f"max_segment_bytes={max_segment_bytes!r}: must be at least 1")
        self.max_segment_bytes = max_segment_bytes
        self.rotate_daily = rotate_daily
        self._rotates = rotate_daily or max_segment_bytes is not None
        self._fd: Optional[int] = None
        try:
            self.first_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LedgerError(f"cannot create the ledger directory {self.first_path.parent}: {exc}") from exc
        existing = segments(self.first_path) if self.first_path.exists() else [self.first_path]
        self._segment_number = len(existing) - 1
        self._open(existing[-1])
        self.next_seq, self.last_hash, torn_bytes = _scan_tail(existing[-1])
        self._segment_day = _first_day(existing[-1])
        if torn_bytes:  # the recover event goes right after the torn line, in the same file
            self._write_bytes(b"\n")
            self._commit([orjson.dumps(_recover_event(torn_bytes))], rotate=False)

    @property
    def path(self) -> Path:
        """The segment file being written now."""
        return segment_path(self.first_path, self._segment_number)

    def append(self, events: list[dict[str, Any]]) -> bytes:
        """Number, chain and append ``events`` (one write); return the lines written.

        Each event dict has ``ts_us`` and no ``hash``; its ``seq`` is set in place. Raises
        LedgerError on failure; then nothing of the batch counts: the sequence and the chain
        are not advanced (a partial write is a torn line, recovered on reopening).
        """
        if not events:
            return b""
        if not self.rotate_daily:
            return self._append_run(events)
        written, start = [], 0
        for i in range(1, len(events) + 1):
            if i == len(events) or _day(events[i]) != _day(events[start]):
                written.append(self._append_run(events[start:i]))
                start = i
        return b"".join(written)

    def append_encoded(self, lines: bytes) -> bytes:
        """:meth:`append` for events already encoded by :func:`encode_events` (in another process, say)."""
        return self.append_bodies(split_encoded(lines))

    def append_bodies(self, bodies: list[bytes]) -> bytes:
        """:meth:`append` for the lines of :func:`split_encoded` (already checked)."""
        if not self.rotate_daily:
            return self._commit(bodies) if bodies else b""
        written, start = [], 0
        days = [_body_day(body) for body in bodies]
        for i in range(1, len(bodies) + 1):
            if i == len(bodies) or days[i] != days[start]:
                written.append(self._commit(bodies[start:i], day=days[start]))
                start = i
        return b"".join(written)

    def append_one(self, event: dict[str, Any]) -> bytes:
        """:meth:`append` for a single event (the in-process booth's hot path)."""
        if self._rotates or self._segment_bytes == 0:
            self._rotate_if_due(_day(event))
        event["seq"] = self.next_seq
        body = orjson.dumps(event)
        digest = sha256(self.last_hash.encode() + body).hexdigest()[:32]
        line = b'%s,"hash":"%s"}\n' % (body[:-1], digest.encode())
        self._write_bytes(line)
        self.next_seq += 1
        self.last_hash = digest
        return line

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # -- internals --------------------------------------------------------------

    def _append_run(self, events: list[dict[str, Any]]) -> bytes:
        """Number, encode, chain and write events of one day, one pass each while it is in cache."""
        self._rotate_if_due(_day(events[0]))
        seq, previous, dumps = self.next_seq, self.last_hash.encode(), orjson.dumps
        lines = []
        for event in events:  # the hot loop: about 2 us an event
            event["seq"] = seq
            body = dumps(event)
            previous = sha256(previous + body).hexdigest()[:32].encode()
            lines.append(b'%s,"hash":"%s"}\n' % (body[:-1], previous))
            seq += 1
        return self._write_lines(lines, seq, previous)

    def _commit(self, bodies: list[bytes], *, day: Optional[int] = None, rotate: bool = True) -> bytes:
        """Number, chain and write encoded events (each starting with ``SEQ_PLACEHOLDER``)."""
        if rotate:
            self._rotate_if_due(day)
        seq, previous, skip = self.next_seq, self.last_hash.encode(), len(SEQ_PLACEHOLDER)
        lines = []
        for body in bodies:  # the hot loop of encoded events: about 1.5 us an event
            body = b'{"v":1,"seq":%d,%s' % (seq, body[skip:])
            previous = sha256(previous + body).hexdigest()[:32].encode()
            lines.append(b'%s,"hash":"%s"}\n' % (body[:-1], previous))
            seq += 1
        return self._write_lines(lines, seq, previous)

    def _write_lines(self, lines: list[bytes], next_seq: int, last_hash: bytes) -> bytes:
        """Write numbered, chained lines (one write, or one per line with fsync ``always``)."""
        data = b"".join(lines)
        if self.fsync is FsyncPolicy.ALWAYS:
            for line in lines:
                self._write_bytes(line)
        else:
            self._write_bytes(data)
        self.next_seq, self.last_hash = next_seq, last_hash.decode()
        return data

    def _rotate_if_due(self, day: Optional[int]) -> None:
        if self._segment_bytes == 0:
            self._segment_day = day
            return
        full = self.max_segment_bytes is not None and self._segment_bytes >= self.max_segment_bytes
        new_day = self.rotate_daily and day != self._segment_day
        if full or new_day:
            self.close()
            self._segment_number += 1
            self._open(self.path)
            self._segment_day = day
            if self.fsync is not FsyncPolicy.NEVER:
                _fsync_directory(self.path.parent)

    def _open(self, path: Path) -> None:
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._segment_bytes = os.fstat(self._fd).st_size
        except OSError as exc:
            raise LedgerError(f"cannot open ledger {path}: {exc}") from exc

    def _write_bytes(self, data: bytes) -> None:
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
        self._segment_bytes += len(data)


def encode_events(events: list[dict[str, Any]]) -> bytes:
    """Events as JSON lines for :meth:`JsonlWriter.append_encoded`, ``seq`` still null.

    A producer (the escrow coordinator, say) encodes on its own core; the writer then
    only numbers, chains and writes. Each event must start with ``"v": 1, "seq": None``.

    The batch is dumped as one JSON array and cut at the ``},{"v":1,"seq":null,`` between
    its events: 5x faster than one ``dumps`` an event (each allocates a buffer of its own).
    No string can hold that text (JSON escapes its quotes), and with no ``[`` but the array's
    own, no nested value can. So where the cuts are one fewer than the events and the first
    starts right, each cut is a boundary. Any other batch (an event without the placeholder,
    a list in an event, a ``[`` in a string) is encoded an event at a time, and
    :func:`split_encoded` names an event without the placeholder.
    """
    if not events:
        return b""
    whole = orjson.dumps(events)
    cuts_are_boundaries = whole.count(b"[") == 1 and whole.count(_EVENT_JOIN) == len(events) - 1
    if not cuts_are_boundaries or not whole.startswith(b"[" + SEQ_PLACEHOLDER):
        dumps, newline = orjson.dumps, orjson.OPT_APPEND_NEWLINE
        return b"".join([dumps(event, option=newline) for event in events])
    return whole[1:-1].replace(_EVENT_JOIN, _EVENT_BREAK) + b"\n"


def split_encoded(lines: bytes) -> list[bytes]:
    """The events of :func:`encode_events` output, one bytes each; LedgerError naming a bad one."""
    bodies = lines.split(b"\n")
    if bodies.pop() != b"":
        raise LedgerError("encoded events must end with a newline")
    for index, body in enumerate(bodies):
        if not body.startswith(SEQ_PLACEHOLDER) or not body.endswith(b"}"):
            raise LedgerError(f"encoded event {index} must be a JSON object starting with {SEQ_PLACEHOLDER.decode()!r}: {body[:40]!r}")
    return bodies


def _day(event: dict[str, Any]) -> int:
    return event["ts_us"] // US_PER_DAY


def _body_day(body: bytes) -> int:
    """The day of an encoded event, whose third field must be ``ts_us``."""
    start = len(SEQ_PLACEHOLDER) + len(b'"ts_us":')
    if body[len(SEQ_PLACEHOLDER):start] != b'"ts_us":':
        raise LedgerError(f"an event must have ts_us as its third field: {body[:60]!r}")
    return int(body[start:body.index(b",", start)]) // US_PER_DAY


def _scan_tail(path: Path) -> tuple[int, str, int]:
    """(next seq, last hash, length of a torn last line or 0) of a segment; earlier segments if it is empty."""
    size = path.stat().st_size if path.exists() else 0
    if size == 0:
        earlier = _previous_segment(path)
        return _scan_tail(earlier)[:2] + (0,) if earlier is not None else (0, GENESIS_HASH, 0)
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
            _, digest = line_body(line)
        except (orjson.JSONDecodeError, AttributeError, ValueError):
            continue
        if isinstance(seq, int):
            return seq + 1, digest, torn_bytes
    if size > _TAIL_BYTES:
        raise LedgerError(f"{path}: no whole hash-chained event in its last {_TAIL_BYTES} bytes")
    earlier = _previous_segment(path)  # the segment holds nothing whole: continue the one before
    return _scan_tail(earlier)[:2] + (torn_bytes,) if earlier is not None else (0, GENESIS_HASH, torn_bytes)


def _previous_segment(path: Path) -> Optional[Path]:
    family = segments(path) if path.exists() else []
    index = family.index(path) if path in family else -1
    return family[index - 1] if index > 0 else None


def _first_day(path: Path) -> Optional[int]:
    try:
        with open(path, "rb") as f:
            first = f.readline()
        return _day(orjson.loads(first)) if first.endswith(b"\n") else None
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return None


def _recover_event(torn_bytes: int) -> dict[str, Any]:
    return {
        "v": SCHEMA_VERSION, "seq": None, "ts_us": time.time_ns() // 1000,
        "kind": EventKind.RECOVER.value, "torn_bytes": torn_bytes,
    }


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
