"""A ledger line: its event, its hash or seal, and the one rule for what a crash tore.

The reader (:mod:`ledger.reader`, and so ``ledger verify``) and the writer reopening a ledger
(:mod:`ledger.jsonl`) judge lines by the same function, :func:`classify_lines`, so they never
disagree on where the ledger's events end.

The rule. A line is an *event* when :func:`parse_line` accepts it (a JSON object of a format
this tollmesh reads and a known kind) and, in format v2, its batch is sealed: the line ends a
batch (its ``seal``), or is one of the ``lines - 1`` lines right before such a line
(:mod:`ledger.seal`). The writer can chain onto an event when it also ends in a well-formed
hash or seal field: a *whole event*. Its newline does not count: a crash between a line's
bytes and its newline leaves a whole event, which the next writer ends with ``\\n`` and
follows with the next seq. What a crash leaves is never JSON (a line cut short, NUL bytes,
garbage), or v2 lines of a batch without its seal; a JSON line that is neither (of a newer
format, say) is never torn. A run of such lines is *torn* (tolerated) when it

* ends the last file of the ledger: what a crash or a power loss left after the last event (a
  partial line, garbage, NUL bytes, a batch cut short; as many lines as it spans). The writer
  reopening the ledger starts a new line after it and writes a ``recover`` event naming its
  length (``torn_bytes``);
* or comes right before a ``recover`` event whose ``torn_bytes`` is the run's length (with or
  without the newline the writer added): such a run, marked so by the writer.

Any other line that is not an event is corruption, named by file and line.

>>> raws = [b'{"v":1,"seq":0,"kind":"deposit"}\\n', b'{"v":1,"se\\n', b'\\x00\\x00']
>>> [(line.line_no, line.event is not None, line.torn) for line in classify_lines(raws, Path("l.jsonl"), last_file=True)]
[(1, True, False), (2, False, True), (3, False, True)]
>>> [line.torn for line in classify_lines([b'{"v":1,"se\\n', b'{"v":9}\\n'], Path("l.jsonl"), last_file=True)]
[False, False]
>>> batch = [b'{"v":2,"seq":0,"kind":"deposit"}\\n', b'{"v":2,"seq":1,"kind":"deposit","first_seq":0,"lines":2,"seal":"..."}\\n']
>>> [line.event is not None for line in classify_lines(batch, Path("l.jsonl"), last_file=True)]
[True, True]
>>> [(line.event, line.torn) for line in classify_lines(batch[:1], Path("l.jsonl"), last_file=True)]
[(None, True)]
"""

from __future__ import annotations

from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import orjson

from ledger.schema import LEDGER_FORMATS, NULLABLE_FIELDS, EventKind

HASH_SUFFIX_BYTES = len(b',"hash":"') + 32 + len(b'"}')  # 43: the tail every line ends with
_KINDS = frozenset(kind.value for kind in EventKind)
_RECOVER = EventKind.RECOVER.value
_JSON_SPACE = (b" ", b"\t", b"\r")
_NULLABLE = frozenset(NULLABLE_FIELDS)
_READS = " and ".join(f"v={v}" for v in LEDGER_FORMATS)
UNSEALED = "an event of a batch without its seal (a write cut short)"


@dataclass
class RawLine:
    """One line as stored: where it is, its bytes (without the newline), and its event.

    A line that is not an event has ``event=None`` and ``problem`` saying why; it is
    ``torn`` when a crash explains it (tolerated), otherwise the ledger is corrupt there.
    """

    path: Path
    line_no: int  # counted from the line at ``after_byte``
    raw: bytes
    event: dict[str, Any] | None
    problem: str | None = None
    torn: bool = False
    after_byte: int = 0  # where reading began: 0 but when read from a seq (see ledger.reader.event_lines)
    newline: bool = True  # whether the line ends in its newline (only the last line of a file may not)

    def __str__(self) -> str:
        where = f"{self.path}:{self.line_no}" if not self.after_byte else f"{self.path}, line {self.line_no} after byte {self.after_byte}"
        return f"{where}: {self.problem}"


def chain_hash(previous_hash: str, body: bytes) -> str:
    """The hash of a line whose JSON without its ``hash`` field is ``body``: SHA-256, first 128 bits."""
    return sha256(previous_hash.encode() + body).hexdigest()[:32]


def line_body(line: bytes) -> tuple[bytes, str]:
    """Split a written line (without its newline) into (body without ``hash``, hash); ValueError if it has none.

    JSON whitespace after the object is no part of it (the hash is of the object).
    """
    if line[-1:] in _JSON_SPACE:
        line = line.rstrip(b" \t\r")
    if len(line) < HASH_SUFFIX_BYTES or line[-HASH_SUFFIX_BYTES:-34] != b',"hash":"' or line[-2:] != b'"}':
        raise ValueError("no hash field at the end of the line")
    return line[:-HASH_SUFFIX_BYTES] + b"}", line[-34:-2].decode("ascii", "replace")


class MalformedLine(ValueError):
    """A line that is not JSON at all: what a crash may leave (see the module doc)."""


def parse_line(raw: bytes) -> dict[str, Any]:
    """The event on one line, its absent nullable fields filled with None (v1 and v2 alike, see
    :data:`~ledger.schema.NULLABLE_FIELDS`); ValueError saying what is wrong with it (MalformedLine
    if it is not JSON).

    >>> parse_line(b'{"v":2,"seq":0,"ts_us":0,"kind":"deposit"}')["reason"] is None
    True
    """
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedLine(f"malformed JSON ({exc})") from None
    if not isinstance(event, dict):
        raise ValueError("not a JSON object")
    version = event.get("v")
    if version != 1 and version != 2:
        raise ValueError(f"schema version v={version!r}, this tollmesh reads {_READS}")
    if event.get("kind") not in _KINDS:
        raise ValueError(f"unknown event kind {event.get('kind')!r}")
    if version == 2 and "seal" not in event and ("lines" in event or "first_seq" in event):
        raise ValueError("a batch's last line without its seal (no crash leaves one: a cut line is no JSON)")
    if not event.keys() >= _NULLABLE:  # the fields a v2 line (or any) leaves out: null
        for name in NULLABLE_FIELDS:
            event.setdefault(name, None)
    return event


def batch_lines(event: dict[str, Any]) -> int:
    """How many lines the batch a v2 event ends holds (by its ``lines``; 1 if that is no count); 0 if it ends none."""
    if "seal" not in event:
        return 0
    lines = event.get("lines")
    return lines if isinstance(lines, int) and not isinstance(lines, bool) and lines >= 1 else 1


def classify_lines(
    raws: Iterable[bytes],
    path: Path,
    *,
    last_file: bool,
    skip: Optional[Callable[[bytes], bool]] = None,
    after_byte: int = 0,
) -> Iterator[RawLine]:
    """Each line of one ledger file (``raws``: each with its newline, the last may have none) as a
    :class:`RawLine`: its event, or why it is not one and whether that is torn (see the module doc).

    ``last_file``: whether the file is the ledger's last (where a crash leaves its torn run).
    ``skip(raw)``: lines it accepts, outside a run of lines that are not events, are passed over unparsed
    (it must accept no v2 line: a batch is judged whole).
    """
    run: list[RawLine] = []  # lines that are not events yet: not JSON, or v2 lines waiting for their seal (event kept)
    junk = 0  # how many lines of ``run`` are not JSON
    line_no = 0
    for raw in raws:
        line_no += 1
        if skip is not None and not run and skip(raw):
            continue
        newline = raw.endswith(b"\n")
        if newline:
            raw = raw[:-1]
        try:
            event = parse_line(raw)
        except MalformedLine as exc:
            run.append(RawLine(path, line_no, raw, None, str(exc), after_byte=after_byte, newline=newline))
            junk += 1
            continue
        except ValueError as exc:  # JSON, but not an event: never torn, nor is the run before it
            yield from _unsealed(run)
            run, junk = [], 0
            yield RawLine(path, line_no, raw, None, str(exc), after_byte=after_byte, newline=newline)
            continue
        line = RawLine(path, line_no, raw, event, after_byte=after_byte, newline=newline)
        if event["v"] == 2 and "seal" not in event:  # an event once its batch's seal comes
            run.append(line)
            continue
        if run:
            members = batch_lines(event) - 1  # the lines of its batch before it
            if junk or members != len(run):  # else the run is the batch, whole: its lines are events
                cut = _batch_start(run, members)
                yield from _judge_run(_unsealed(run[:cut]), event)
                run = run[cut:]  # a line of the batch that is not JSON stays a problem (verify says the batch changed)
            yield from run
            run, junk = [], 0
        yield line
    yield from _unsealed(run, torn=last_file)  # the run the file ends with: torn only at the end of the ledger


def _unsealed(run: list[RawLine], *, torn: bool = False) -> list[RawLine]:
    """``run``'s lines, judged: a v2 line still waiting for its seal is no event (and ``torn`` sets each line's flag)."""
    for line in run:
        if line.event is not None:
            line.event, line.problem = None, UNSEALED
        line.torn = torn
    return run


def _batch_start(run: list[RawLine], members: int) -> int:
    """Where in ``run`` the batch a seal ends begins: at its ``members``-th v2 line back (lines that are
    not JSON between them are of the batch too: changed or inserted there); ``len(run)`` if it has none."""
    if members <= 0:
        return len(run)
    start = len(run)
    for index in range(len(run) - 1, -1, -1):
        if run[index].event is not None:
            start, members = index, members - 1
            if not members:
                break
    return start


def _judge_run(run: list[RawLine], event: dict[str, Any]) -> list[RawLine]:
    """The run of lines that are not events before ``event`` (and not of its batch): torn if ``event``
    is the ``recover`` marking it."""
    if not run or event["kind"] != _RECOVER:
        return run
    run_bytes = sum(len(line.raw) + line.newline for line in run)
    torn_bytes = event.get("torn_bytes")
    if isinstance(torn_bytes, int) and not isinstance(torn_bytes, bool) and run_bytes - torn_bytes in (0, 1):
        for line in run:
            line.torn = True
        return run
    for line in run:
        line.problem = f"{line.problem}; the recover event after it names torn_bytes={torn_bytes!r}, not this run's {run_bytes} bytes"
    return run
