"""The JSONL ledger writer: sealed batches (or hash-chained lines), group commit, rotation.

Each event becomes one line: its JSON object (orjson). In format v2 (the default for a new
ledger) its null fields are left out, and each appended batch is sealed once: its last line
ends with ``first_seq``, ``lines`` and ``seal``, the SHA-256 (first 128 bits, hex) of the
previous batch's seal and the batch's bytes (:mod:`ledger.seal`), so a changed, dropped,
inserted or reordered line breaks it; a batch of one event is one line. In format v1 (a
ledger written so before, which its writers keep) each line ends with ``hash``, the SHA-256
of the previous line's hash and this line without its hash (see :func:`chain_hash`).
An :meth:`JsonlWriter.append` of a batch is one ``write``; it reaches the OS before
the call returns (a process crash loses nothing). The fsync policy decides the disk:

* ``always``: each event is written and fsynced on its own before the next (in v2, each is
  a batch of its own);
* ``batch``: one write and one fsync per appended batch (group commit);
* ``never``: one write per batch, the OS flushes when it likes (a power loss may
  lose the last events; the default of the in-process Tollbooth, as the seed).

Rotation (``max_segment_bytes``, ``rotate_daily``) starts the next segment file of the
family (see :mod:`ledger.files`); the chain and the numbering run on across files.

An append that fails (a full disk, a file size limit, an I/O error) leaves the ledger as it
was before it: the writer cuts the file back to its size before the batch (``ftruncate``,
which works on a full disk too), the whole batch, every line and every day of it, and does
not advance the sequence or the chain; the caller, who journals before it applies, applies
nothing. If the cut fails too, the writer refuses every later append (a LedgerError naming
the file and the first error) rather than write after torn bytes; reopening the ledger then
recovers as after a crash.

Reopening judges the ledger's end by the reader's rule (:func:`ledger.lines.classify_lines`):
after the last event of the last file, a whole event that lost only its newline gets it;
anything else there (a torn line, garbage, NUL bytes, however many lines) is torn: the writer
starts a new line and appends a ``recover`` event naming the torn bytes; it never deletes them.
One writer at a time holds a ledger: an ``flock`` on ``<first file>.lock`` (:mod:`ledger.lock`).

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "l.jsonl"
>>> w = JsonlWriter(path)
>>> lines = w.append([{"v": 1, "seq": None, "ts_us": 0, "kind": "deposit", "reason": None}]); w.close()
>>> path.read_bytes()[:78]
b'{"v":2,"seq":0,"ts_us":0,"kind":"deposit","first_seq":0,"lines":1,"seal":"...'
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from enum import Enum
from hashlib import sha256
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

import numpy as np
import orjson

from ledger.files import segment_path, segments
from ledger.lines import HASH_SUFFIX_BYTES, RawLine, chain_hash, classify_lines, line_body  # noqa: F401  (read from here too)
from ledger.lock import DEFAULT_LOCK_TIMEOUT_S, check_lock_timeout, release_lock, take_lock
from ledger.schema import DEFAULT_FORMAT, GENESIS_HASH, LEDGER_FORMATS, SCHEMA_VERSION, EventKind
from ledger.seal import NULL_HINT, SEAL_MAX_LINES, seal_fields, split_seal, without_nulls
from mesh.core.clock import US_PER_DAY
from mesh.core.errors import LedgerError

SEQ_PLACEHOLDER = b'{"v":1,"seq":null,'  # how every encoded event starts before the writer numbers it
LOCK_SUFFIX = ".lock"  # the writer's lock file: the ledger's first file name and this
_EVENT_JOIN = b"}," + SEQ_PLACEHOLDER  # between two events of a JSON array of them
_EVENT_BREAK = b"}\n" + SEQ_PLACEHOLDER  # the same place in JSON lines
_V2_JOIN = b'},{"v":2,"seq":'  # between two numbered v2 events of a JSON array of them
_V2_BREAK = b'}\n{"v":2,"seq":'
_NEWLINE, _CLOSE = ord("\n"), ord("}")
_INTEGER = re.compile(rb"-?[0-9]+")
_TS_FIELD = b'"ts_us":'  # every event's first field after its seq
_TS_FIELD_BYTES = np.frombuffer(_TS_FIELD, np.uint8)
_TS_MAX_DIGITS = 18  # a ts_us read at once is below 10^18 (year 33658), exact in int64
_TS_WINDOW = len(_TS_FIELD) + _TS_MAX_DIGITS + 1
_TS_ENDS = np.frombuffer(b",}", np.uint8)  # what may follow a ts_us: the next field, or the event's end
_TAIL_BYTES = 1 << 16  # how far back we first look for the last event when reopening (then 8x as far, and so on)

_Item = TypeVar("_Item")


class FsyncPolicy(str, Enum):
    ALWAYS = "always"
    BATCH = "batch"
    NEVER = "never"


@dataclass
class _Mark:
    """Where the writer stood before a batch: what undoing it restores."""

    segment_number: int
    segment_bytes: int
    next_seq: int
    last_hash: str
    segment_day: Optional[int]


class JsonlWriter:
    """Appends batches of events to a JSONL ledger family, numbering and sealing (or chaining) them.

    ``lock_timeout_s``: how long to wait for another writer of the ledger to let it go
    (default :data:`ledger.lock.DEFAULT_LOCK_TIMEOUT_S`); then LedgerError naming the holder.
    ``format_version``: the line format (:data:`~ledger.schema.LEDGER_FORMATS`). None: the
    ledger's own (a v1 ledger goes on in v1), or :data:`~ledger.schema.DEFAULT_FORMAT` for a new
    one. A ledger keeps one format: another than its own is a LedgerError (start a new ledger
    to switch; both read the same).
    """

    def __init__(
        self,
        path: Path | str,
        fsync: FsyncPolicy | str = FsyncPolicy.NEVER,
        *,
        max_segment_bytes: Optional[int] = None,
        rotate_daily: bool = False,
        lock_timeout_s: Optional[float] = None,
        format_version: Optional[int] = None,
    ) -> None:
        if format_version is not None and (format_version not in LEDGER_FORMATS or isinstance(format_version, bool)):
            raise LedgerError(f"format_version={format_version!r}: must be one of {LEDGER_FORMATS} (or None: the ledger's own)")
        self.first_path = Path(path)
        self.fsync = FsyncPolicy(fsync)
        if max_segment_bytes is not None and max_segment_bytes < 1:
            raise LedgerError(f"max_segment_bytes={max_segment_bytes!r}: must be at least 1")
        timeout_s = check_lock_timeout(DEFAULT_LOCK_TIMEOUT_S if lock_timeout_s is None else lock_timeout_s)
        self.max_segment_bytes = max_segment_bytes
        self.rotate_daily = rotate_daily
        self._rotates = rotate_daily or max_segment_bytes is not None
        self._fd: Optional[int] = None
        self._lock_fd: Optional[int] = None
        self._refusal: Optional[str] = None  # why the writer refuses appends, once a failed write could not be undone
        self.format_version: int = format_version or DEFAULT_FORMAT  # settled by the ledger's last event in _start
        self.seals: dict[int, str] = {}  # v2: the seals the last append_bodies wrote, by the seq of their line
        try:
            self.first_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LedgerError(f"cannot create the ledger directory {self.first_path.parent}: {exc}") from exc
        self._lock_fd = take_lock(self.lock_path, timeout_s=timeout_s, what=f"the ledger {self.first_path}")
        try:
            self._start(format_version)
        except BaseException:
            self.close()
            raise

    @property
    def path(self) -> Path:
        """The segment file being written now."""
        return segment_path(self.first_path, self._segment_number)

    @property
    def lock_path(self) -> Path:
        """The lock file the writer holds while it is open (one writer at a time)."""
        return self.first_path.with_name(self.first_path.name + LOCK_SUFFIX)

    def append(self, events: list[dict[str, Any]]) -> bytes:
        """Number, chain and append ``events`` (one write); return the lines written.

        Each event dict has ``ts_us`` and no ``hash``; its ``seq`` (and in v2 its ``v``) is set in place. Raises
        LedgerError on failure; then nothing of the batch is in the ledger (see the module doc):
        the sequence and the chain are not advanced.
        """
        if not events:
            return b""
        if not self.rotate_daily:
            return self._append_run(events, None)
        return self._by_day(events, [_day(event) for event in events], self._append_run)

    def append_encoded(self, lines: bytes) -> bytes:
        """:meth:`append` for events already encoded by :func:`encode_events` (in another process, say)."""
        return self.append_cut(cut_encoded(lines))

    def append_cut(self, rests: list[bytes]) -> bytes:
        """:meth:`append_encoded` for lines already cut by :func:`cut_encoded` (each event after its placeholder).

        In v2 a batch of many lines is numbered by putting each event's numbered start before its
        rest (no other bytes object per event); otherwise as :meth:`append_bodies` numbers them."""
        cut_way = self.format_version == 2 and len(rests) > 1 and self._batch_max_lines > 1
        days = _cut_days(rests) if cut_way and self.rotate_daily else None
        if not cut_way or (self.rotate_daily and days is None):
            return self.append_bodies([SEQ_PLACEHOLDER + rest[:-1] for rest in rests])  # names a bad ts_us too
        self.seals = {}
        if days is None:
            return self._append_cut_run(rests, None)
        if bool((days == days[0]).all()):
            return self._append_cut_run(rests, int(days[0]))
        return self._by_day(rests, days.tolist(), self._append_cut_run)

    def append_bodies(self, bodies: list[bytes]) -> bytes:
        """:meth:`append` for the lines of :func:`split_encoded` (already checked). In v2,
        :attr:`seals` then holds the seals this append wrote, by the seq of the line that carries each."""
        self.seals = {}
        if not bodies:
            return b""
        if not self.rotate_daily:
            return self._commit(bodies)
        return self._by_day(bodies, [_body_day(body) for body in bodies], lambda run, day: self._commit(run, day=day))

    def append_one(self, event: dict[str, Any]) -> bytes:
        """:meth:`append` for a single event (the in-process booth's hot path): in v2, a batch of one line."""
        if self._rotates or self._segment_bytes == 0:
            self._rotate_if_due(_day(event))
        event["seq"] = self.next_seq
        if self.format_version == 2:
            event["v"] = 2
            line, digest = _sealed_single(orjson.dumps(event), self.next_seq, self.last_hash.encode())
        else:
            body = orjson.dumps(event)
            digest = sha256(self.last_hash.encode() + body).hexdigest()[:32].encode()
            line = b'%s,"hash":"%s"}\n' % (body[:-1], digest)
        self._write(line)
        self.next_seq += 1
        self.last_hash = digest.decode()
        return line

    def close(self) -> None:
        """Close the file and let the ledger go (its lock); appends are refused from then on."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._lock_fd is not None:
            release_lock(self._lock_fd)
            self._lock_fd = None

    # -- opening ----------------------------------------------------------------

    def _start(self, format_version: Optional[int]) -> None:
        """Open the last segment and go on from the ledger's last event, in its format, mending what a crash left after it."""
        existing = segments(self.first_path) if self.first_path.exists() else [self.first_path]
        self._segment_number = len(existing) - 1
        self._fd, self._segment_bytes = _open_segment(existing[-1])
        tail = _scan_tail(existing)
        self.next_seq, self.last_hash = tail.next_seq, tail.last_hash
        if tail.format_version is not None:
            if format_version is not None and format_version != tail.format_version:
                raise LedgerError(
                    f"{self.first_path} is a v{tail.format_version} ledger, and a ledger keeps one format: open it with "
                    f"format_version=None (or {tail.format_version}), or start a new ledger for v{format_version}")
            self.format_version = tail.format_version
        self._segment_day = _first_day(existing[-1])
        if tail.torn_bytes:  # a new line, then the recover event: one write, undone whole if it fails
            lead = b"" if tail.newline else b"\n"
            self._commit([orjson.dumps(_recover_event(tail.torn_bytes))], rotate=False, lead=lead)
        elif not tail.newline:  # the last event lost only its newline
            self._write(b"\n")

    # -- appending --------------------------------------------------------------

    def _by_day(self, items: list[_Item], days: list[int], write_run: Callable[[list[_Item], int], bytes]) -> bytes:
        """Write ``items`` in runs of one day (``write_run(run, day)``); if a run fails, the runs before it are undone."""
        starts = [0, *(i for i in range(1, len(items)) if days[i] != days[i - 1])]
        if len(starts) == 1:
            return write_run(items, days[0])
        mark = _Mark(self._segment_number, self._segment_bytes, self.next_seq, self.last_hash, self._segment_day)
        written: list[bytes] = []
        try:
            for start, end in zip(starts, [*starts[1:], len(items)]):
                written.append(write_run(items[start:end], days[start]))
        except BaseException:
            if written:
                self._roll_back(mark)
            raise
        return b"".join(written)

    def _append_run(self, events: list[dict[str, Any]], day: Optional[int]) -> bytes:
        """Number, encode, chain and write events of one day, one pass each while it is in cache."""
        self._rotate_if_due(_day(events[0]) if day is None else day)
        if self.format_version == 2:
            if len(events) == 1:  # a batch of one: one line, sealed as it is made
                event, seq = events[0], self.next_seq
                event["v"], event["seq"] = 2, seq
                line, digest = _sealed_single(orjson.dumps(event), seq, self.last_hash.encode())
                return self._write_lines([line], seq + 1, digest)
            return self._seal_and_write(_v2_texts(events, self.next_seq, self._batch_max_lines))
        seq, previous, dumps = self.next_seq, self.last_hash.encode(), orjson.dumps
        lines = []
        for event in events:  # the hot loop: about 2 us an event
            event["seq"] = seq
            body = dumps(event)
            previous = sha256(previous + body).hexdigest()[:32].encode()
            lines.append(b'%s,"hash":"%s"}\n' % (body[:-1], previous))
            seq += 1
        return self._write_lines(lines, seq, previous)

    def _append_cut_run(self, rests: list[bytes], day: Optional[int]) -> bytes:
        """Number, seal and write cut events (v2, at least two) of one day."""
        self._rotate_if_due(day)
        return self._seal_and_write(_v2_cut_texts(rests, self.next_seq, self._batch_max_lines))

    def _commit(self, bodies: list[bytes], *, day: Optional[int] = None, rotate: bool = True, lead: bytes = b"") -> bytes:
        """Number, chain and write encoded events (each starting with ``SEQ_PLACEHOLDER``), after ``lead``."""
        if rotate:
            self._rotate_if_due(day)
        if self.format_version == 2:
            if len(bodies) == 1:  # a batch of one: one line, sealed as it is made
                seq = self.next_seq
                line, digest = _sealed_single(b'{"v":2,"seq":%d,%b' % (seq, bodies[0][len(SEQ_PLACEHOLDER):]), seq,
                                              self.last_hash.encode())
                self.seals[seq] = digest.decode()
                return self._write_lines([line], seq + 1, digest, lead)
            return self._seal_and_write(_v2_bodies_texts(bodies, self.next_seq, self._batch_max_lines), lead)
        seq, previous, skip = self.next_seq, self.last_hash.encode(), len(SEQ_PLACEHOLDER)
        lines = []
        for body in bodies:  # the hot loop of encoded events: about 1.5 us an event
            body = b'{"v":1,"seq":%d,%s' % (seq, body[skip:])
            previous = sha256(previous + body).hexdigest()[:32].encode()
            lines.append(b'%s,"hash":"%s"}\n' % (body[:-1], previous))
            seq += 1
        return self._write_lines(lines, seq, previous, lead)

    @property
    def _batch_max_lines(self) -> int:
        """The lines of a v2 batch at most: one with fsync ``always`` (each event durable on its own)."""
        return 1 if self.fsync is FsyncPolicy.ALWAYS else SEAL_MAX_LINES

    def _seal_and_write(self, texts: list[tuple[bytes, int]], lead: bytes = b"") -> bytes:
        """Seal v2 batches (``texts``: each its numbered lines and their count, in seq order), chained
        from the last seal, and write them as :meth:`_write_lines` writes lines."""
        previous, seq, batches = self.last_hash.encode(), self.next_seq, []
        for text, count in texts:
            if NULL_HINT in text:
                text = without_nulls(text)
            head = memoryview(text)[:-2]  # the last line without its "}\n"
            fields = seal_fields(seq, count)  # ... ,"first_seq":F,"lines":L}
            digest = sha256(previous)
            digest.update(head)
            digest.update(fields)
            previous = digest.hexdigest()[:32].encode()
            batches.append(b"".join((head, fields[:-1], b',"seal":"', previous, b'"}\n')))
            self.seals[seq + count - 1] = previous.decode()
            seq += count
        return self._write_lines(batches, seq, previous, lead)

    def _write_lines(self, lines: list[bytes], next_seq: int, last_hash: bytes, lead: bytes = b"") -> bytes:
        """Write numbered, chained lines (or sealed v2 batches) after ``lead`` (one write, or one per line
        with fsync ``always``, the whole undone if one fails); then advance the sequence and the chain;
        return the bytes written."""
        data = b"".join(lines)
        if self.fsync is FsyncPolicy.ALWAYS and len(lines) > 1:
            batch_start = self._segment_bytes
            self._write(lead + lines[0], cut_to=batch_start)
            for line in lines[1:]:
                self._write(line, cut_to=batch_start)
        else:
            self._write(lead + data if lead else data)
        self.next_seq, self.last_hash = next_seq, last_hash.decode()
        return data

    def _write(self, data: bytes, cut_to: Optional[int] = None) -> None:
        """Append ``data`` and fsync it per the policy. On failure, cut the file back to ``cut_to``
        (default: its size before ``data``) and raise LedgerError (see :meth:`_cut_back`)."""
        fd = self._fd
        if fd is None:
            raise self._refused()
        start = self._segment_bytes
        try:
            written = os.write(fd, data)
            if written < len(data):  # rare (a full disk, a signal): finish the line, or fail and undo it
                view = memoryview(data)[written:]
                while view:
                    view = view[os.write(fd, view):]
            if self.fsync is not FsyncPolicy.NEVER:
                os.fsync(fd)
        except BaseException as exc:
            self._cut_back(start if cut_to is None else cut_to, exc)
            raise
        self._segment_bytes = start + len(data)

    def _cut_back(self, size: int, exc: BaseException) -> None:
        """Undo a failed write: the file back to ``size`` bytes (made durable per the policy); raise
        LedgerError for an OSError (the caller re-raises anything else). If the cut fails, refuse appends."""
        try:
            os.ftruncate(self._fd, size)
            if self.fsync is not FsyncPolicy.NEVER:
                os.fsync(self._fd)
        except OSError as cut_exc:
            self._refuse(f"an append failed ({exc!r}) and cutting the file back to {size} bytes failed too ({cut_exc})")
            raise self._refused() from exc
        self._segment_bytes = size
        if isinstance(exc, OSError):
            raise LedgerError(f"cannot append to ledger {self.path}: {exc}; the ledger is as it was before this batch") from exc

    def _roll_back(self, mark: _Mark) -> None:
        """Undo the days of a batch written before one of them failed: drop the segments they began,
        cut the one they began in back to its size then. If that fails, refuse appends."""
        refused = self._refusal is not None
        try:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            while self._segment_number > mark.segment_number:
                os.unlink(self.path)
                self._segment_number -= 1
            if self.fsync is not FsyncPolicy.NEVER:
                _fsync_directory(self.first_path.parent)
            fd, _ = _open_segment(self.path)
            self._fd = fd
            os.ftruncate(fd, mark.segment_bytes)
            if self.fsync is not FsyncPolicy.NEVER:
                os.fsync(fd)
        except (OSError, LedgerError) as exc:
            self._refuse(f"a batch failed on a later day, and undoing its earlier days failed ({exc})")
            return
        if refused:  # its files are as before the batch, but the writer had given up: it stays so
            os.close(self._fd)
            self._fd = None
            return
        self._segment_bytes, self.next_seq, self.last_hash = mark.segment_bytes, mark.next_seq, mark.last_hash
        self._segment_day = mark.segment_day

    def _refuse(self, why: str) -> None:
        """From now on refuse every append (the first reason stays): the file may end in torn bytes."""
        if self._refusal is None:
            self._refusal = f"ledger {self.path} refuses appends: {why}; close it and reopen the ledger, which recovers as after a crash"
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None

    def _refused(self) -> LedgerError:
        return LedgerError(self._refusal or f"ledger {self.path} is closed")

    def _rotate_if_due(self, day: Optional[int]) -> None:
        if self._fd is None:
            raise self._refused()
        if self._segment_bytes == 0:
            self._segment_day = day
            return
        full = self.max_segment_bytes is not None and self._segment_bytes >= self.max_segment_bytes
        new_day = self.rotate_daily and day != self._segment_day
        if full or new_day:
            number = self._segment_number + 1
            fd, size = _open_segment(segment_path(self.first_path, number))
            os.close(self._fd)
            self._fd, self._segment_bytes, self._segment_number, self._segment_day = fd, size, number, day
            if self.fsync is not FsyncPolicy.NEVER:
                _fsync_directory(self.path.parent)


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


def cut_encoded(lines: bytes) -> list[bytes]:
    """:func:`encode_events` output cut at each event's placeholder: each event's rest, with its
    newline; LedgerError naming a bad event.

    Checked with scans of the whole bytes (no Python step per event but the cut itself): the
    lines start with the placeholder, which starts every line and nothing else, and every rest
    ends with ``}`` and its newline, the only one in it.

    >>> cut_encoded(encode_events([{"v": 1, "seq": None, "ts_us": 0}] * 2))
    [b'"ts_us":0}\\n', b'"ts_us":0}\\n']
    """
    if not lines:
        return []
    rests = lines.split(SEQ_PLACEHOLDER)
    if rests[0] == b"" and len(rests) - 1 == lines.count(b"\n"):
        del rests[0]
        ends = np.cumsum(np.fromiter(map(len, rests), np.int64, len(rests))) + len(SEQ_PLACEHOLDER) * np.arange(1, len(rests) + 1)
        data = np.frombuffer(lines, np.uint8)
        if bool((data[ends - 1] == _NEWLINE).all()) and bool((data[ends - 2] == _CLOSE).all()):
            return rests  # n newlines, one at each rest's end: none inside a rest
    bodies = split_encoded(lines)  # raises, naming the bad event; a placeholder inside an event falls through
    index = next(i for i, body in enumerate(bodies) if SEQ_PLACEHOLDER in body[len(SEQ_PLACEHOLDER):])
    raise LedgerError(f"encoded event {index} holds {SEQ_PLACEHOLDER.decode()!r} inside it: {bodies[index][:40]!r}")


def split_encoded(lines: bytes) -> list[bytes]:
    """The events of :func:`encode_events` output, one bytes each; LedgerError naming a bad one."""
    bodies = lines.split(b"\n")
    if bodies.pop() != b"":
        raise LedgerError("encoded events must end with a newline")
    for index, body in enumerate(bodies):
        if not body.startswith(SEQ_PLACEHOLDER) or not body.endswith(b"}"):
            raise LedgerError(f"encoded event {index} must be a JSON object starting with {SEQ_PLACEHOLDER.decode()!r}: {body[:40]!r}")
    return bodies


def _sealed_single(body: bytes, seq: int, previous: bytes) -> tuple[bytes, bytes]:
    """A batch of one event: its v2 line (``body``, numbered ``seq``, nulls left out here) sealed after
    ``previous``, with its newline; and its seal."""
    if NULL_HINT in body:
        body = without_nulls(body)
    body = b'%b,"first_seq":%d,"lines":1}' % (body[:-1], seq)
    digest = sha256(previous + body).hexdigest()[:32].encode()
    return b'%b,"seal":"%b"}\n' % (body[:-1], digest), digest


def _v2_texts(events: list[dict[str, Any]], first_seq: int, max_lines: int) -> list[tuple[bytes, int]]:
    """Events numbered from ``first_seq`` as v2 lines (``v`` and ``seq`` set in place), in runs of at most
    ``max_lines``: (the run's lines, their count) each, nulls not yet left out.

    A run is dumped as one JSON array and cut between its events, as :func:`encode_events` does."""
    seq = first_seq
    for event in events:
        event["v"] = 2
        event["seq"] = seq
        seq += 1
    texts = []
    for start in range(0, len(events), max_lines):
        run = events[start:start + max_lines]
        whole = orjson.dumps(run)
        if whole.count(b"[") == 1 and whole.count(_V2_JOIN) == len(run) - 1 and whole.startswith(b'[{"v":2,"seq":'):
            text = whole[1:-1].replace(_V2_JOIN, _V2_BREAK) + b"\n"
        else:
            text = b"".join([orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE) for event in run])
        texts.append((text, len(run)))
    return texts


def _v2_bodies_texts(bodies: list[bytes], first_seq: int, max_lines: int) -> list[tuple[bytes, int]]:
    """Encoded events (each starting with ``SEQ_PLACEHOLDER``) numbered from ``first_seq`` as v2 lines,
    in runs of at most ``max_lines``: (the run's lines, their count) each."""
    skip, texts = len(SEQ_PLACEHOLDER), []
    for start in range(0, len(bodies), max_lines):
        run = bodies[start:start + max_lines]
        seq = first_seq + start
        lines = [b'{"v":2,"seq":%d,%b\n' % (seq + n, body[skip:]) for n, body in enumerate(run)]  # the hot loop
        texts.append((b"".join(lines), len(run)))
    return texts


def _v2_cut_texts(rests: list[bytes], first_seq: int, max_lines: int) -> list[tuple[bytes, int]]:
    """:func:`_v2_bodies_texts` of :func:`cut_encoded` events: each rest after its numbered start."""
    texts = []
    for start in range(0, len(rests), max_lines):
        run = rests[start:start + max_lines]
        seq = first_seq + start
        pieces: list[bytes] = [b""] * (2 * len(run))
        pieces[0::2] = [b'{"v":2,"seq":%d,' % n for n in range(seq, seq + len(run))]  # the hot loop
        pieces[1::2] = run
        texts.append((b"".join(pieces), len(run)))
    return texts


def _cut_days(rests: list[bytes]) -> Optional[np.ndarray]:
    """Each cut event's day (int64), read from its ``ts_us``, which must be its first field, a digit
    position at a time for all of them; None if one does not read so (:func:`_body_day` then names it)."""
    count = len(rests)
    starts = np.zeros(count, np.int64)
    np.cumsum(np.fromiter(map(len, rests), np.int64, count)[:-1], out=starts[1:])
    data = np.frombuffer(b"".join(rests) + bytes(_TS_WINDOW), np.uint8)  # padded: every position read stays inside
    window = data[starts[:, None] + np.arange(_TS_WINDOW)].T.copy()  # one pass over the events; a row per position
    if not bool((window[:len(_TS_FIELD)] == _TS_FIELD_BYTES[:, None]).all()):
        return None
    ts_us, ended = np.zeros(count, np.int64), np.zeros(count, bool)
    for k in range(_TS_MAX_DIGITS + 1):
        char = window[len(_TS_FIELD) + k]
        digit = char - np.uint8(ord("0"))  # a non-digit wraps to 10 or more
        ends_here = (digit >= 10) & ~ended
        if ends_here.any():
            if k == 0 or not bool(np.isin(char[ends_here], _TS_ENDS).all()):
                return None
            ended |= ends_here
            if ended.all():
                return ts_us // US_PER_DAY
        ts_us = np.where(ended, ts_us, ts_us * 10 + digit)
    return None  # more digits than _TS_MAX_DIGITS


def _day(event: dict[str, Any]) -> int:
    return event["ts_us"] // US_PER_DAY


def _body_day(body: bytes) -> int:
    """The day of an encoded event, whose third field must be ``ts_us``."""
    start = len(SEQ_PLACEHOLDER) + len(b'"ts_us":')
    if body[len(SEQ_PLACEHOLDER):start] != b'"ts_us":':
        raise LedgerError(f"an event must have ts_us as its third field: {body[:60]!r}")
    digits = _INTEGER.match(body, start)
    if digits is None:
        raise LedgerError(f"an event's ts_us must be an integer: {body[:60]!r}")
    return int(digits.group()) // US_PER_DAY


@dataclass
class _Tail:
    """Where a ledger's events end, as a writer reopening it needs to know."""

    next_seq: int
    last_hash: str
    format_version: Optional[int]  # the last event's (None: the ledger has none)
    torn_bytes: int = 0  # the bytes after the last event, in the last file: a torn run (see ledger.lines)
    newline: bool = True  # whether the last file ends in a newline (or is empty)


def _scan_tail(files: list[Path], *, last_file: bool = True) -> _Tail:
    """The end of the ledger whose files are ``files``, in order (``last_file``: the last of them is the
    ledger's last): found by :func:`ledger.lines.classify_lines` over the last file's end, read back from
    its end until an event is in it (or the whole file is); a file with none continues the one before."""
    path = files[-1]
    size = path.stat().st_size if path.exists() else 0
    window, data = _TAIL_BYTES, b""
    last: Optional[RawLine] = None
    while size:
        start = max(0, size - window)
        data = _read_from(path, start)
        last, last_end = _last_event(data, start, path, last_file=last_file)
        if last is not None or start == 0:
            break
        window *= 8
    newline = not data or data.endswith(b"\n")
    if last is None:  # no event in the file: it is torn whole, and the chain goes on from the file before
        before = _scan_tail(files[:-1], last_file=False) if len(files) > 1 else _Tail(0, GENESIS_HASH, None)
        return _Tail(before.next_seq, before.last_hash, before.format_version, torn_bytes=size, newline=newline)
    return _Tail(last.event["seq"] + 1, _chain_point(last, path, last_end), last.event["v"],
                 torn_bytes=size - last_end, newline=newline)


def _last_event(data: bytes, start: int, path: Path, *, last_file: bool) -> tuple[Optional[RawLine], int]:
    """The last event among the lines of ``data`` (the file from byte ``start``; its first line is cut
    unless ``start`` is 0), and the offset in the file just past it (with its newline, if it has one)."""
    offset = start
    if start:
        cut = data.find(b"\n") + 1  # the line ``start`` fell in (none: the data is one cut line)
        offset, data = start + (cut or len(data)), data[cut:] if cut else b""
    last, last_end, untorn = None, offset, None
    for line in classify_lines(_split_lines(data), path, last_file=last_file):
        offset += len(line.raw) + line.newline
        if line.event is not None:
            last, last_end, untorn = line, offset, None
        elif not line.torn and untorn is None:
            untorn = line
    if untorn is not None:  # after the last event, a line no crash explains: the reader refuses it too
        raise LedgerError(f"{untorn.path}: a line after the ledger's last event is not one and no crash explains it "
                          f"({untorn.problem}): the ledger is corrupt there, not reopened (run `tollmesh ledger verify`)")
    return last, last_end


def _split_lines(data: bytes) -> list[bytes]:
    """The lines of ``data``, each with its newline (the last may have none), cut as the reader cuts them."""
    parts = data.split(b"\n")
    last = parts.pop()
    return [part + b"\n" for part in parts] + ([last] if last else [])


def _chain_point(line: RawLine, path: Path, end: int) -> str:
    """The hash (v1) or seal (v2) of the ledger's last event, which the next line or batch chains onto;
    LedgerError if it has none."""
    seq = line.event.get("seq")
    try:
        _, digest = split_seal(line.raw) if line.event["v"] == 2 else line_body(line.raw)
    except ValueError:
        digest = None
    if digest is None or not isinstance(seq, int) or isinstance(seq, bool):
        raise LedgerError(
            f"{path}: the last event (the line ending at byte {end}) has no hash or seal field or no integer seq, so the "
            "chain cannot go on from it: the ledger was not written by tollmesh, or was edited (run `tollmesh ledger verify`)"
        )
    return digest


def _read_from(path: Path, start: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(start)
            return f.read()
    except OSError as exc:
        raise LedgerError(f"cannot read ledger {path}: {exc}") from exc


def _open_segment(path: Path) -> tuple[int, int]:
    """(descriptor, size) of a segment file opened for appending, created if need be."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as exc:
        raise LedgerError(f"cannot open ledger {path}: {exc}") from exc
    try:
        return fd, os.fstat(fd).st_size
    except OSError as exc:
        os.close(fd)
        raise LedgerError(f"cannot open ledger {path}: {exc}") from exc


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
    """Make a file created (or removed) in ``directory`` durable; LedgerError if it cannot be."""
    try:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise LedgerError(f"cannot fsync the ledger directory {directory}: {exc}") from exc
