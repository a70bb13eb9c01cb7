"""Read a JSONL ledger back (all its segment files, in order), tolerating only what a crash leaves.

A line that is not a valid event is an error naming the file and line, except a
*torn* one: what a crash left after the last event of the last file, or a run of lines
the writer marked as torn by a ``recover`` event right after it when it reopened the
file. The writer judges a ledger's end by the same rule (:func:`ledger.lines.classify_lines`).
In format v2 a line is an event once its batch's seal is read (:mod:`ledger.seal`),
and a field a line leaves out is null (both formats read alike). Readers check the JSON
and the format version here; ``ledger verify`` checks everything else (schema, hash
chain or seals, sequence, transitions, conservation).

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "l.jsonl"
>>> _ = path.write_bytes(b'{"v":1,"seq":0,"kind":"deposit"}\\n{"v":1,"se')
>>> read = read_events(path)
>>> len(read.events), [(p.name, line) for p, line in read.torn_lines]
(1, [('l.jsonl', 2)])
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import pyarrow as pa
import pyarrow.dataset as ds

from ledger.files import segments
from ledger.partitions import parquet_partitions, partition_count, partitions
from ledger.lines import HASH_SUFFIX_BYTES, RawLine, classify_lines, parse_line  # noqa: F401  (RawLine, parse_line: read from here too)
from ledger.parquet import jsonl_to_table
from ledger.schema import ARROW_SCHEMA, SCHEMA_VERSION, EventKind
from ledger.seal import sealed_seq
from mesh.core.errors import LedgerError

_SEQ_PREFIX = b'{"v":%d,"seq":' % SCHEMA_VERSION
_HASH_TAIL_BYTES = HASH_SUFFIX_BYTES + 1  # a whole line's hash field, and its newline
BISECT_STOP_BYTES = 1 << 16  # reading from a seq bisects a file down to this much, then reads on

#: Reads one ledger file's lines, each with its newline (the last may have none).
ReadLines = Callable[[Path], Iterator[bytes]]


@dataclass
class LedgerRead:
    """The events of a ledger, in order, and the (file, line) of each torn line skipped."""

    paths: list[Path]
    events: list[dict[str, Any]] = field(default_factory=list)
    torn_lines: list[tuple[Path, int]] = field(default_factory=list)


def read_events(ledger: Path | str) -> LedgerRead:
    """Every event of the ledger named by ``ledger`` (a file or its directory); LedgerError on corruption.

    A partitioned ledger's events come partition by partition, each partition's in seq order.
    """
    read = LedgerRead([])
    for first in partitions(ledger):
        paths = segments(first)
        read.paths.extend(paths)
        for line in iter_lines(paths):
            if line.event is not None:
                read.events.append(line.event)
            elif line.torn:
                read.torn_lines.append((line.path, line.line_no))
            else:
                raise LedgerError(str(line))
    return read


def read_batches(source: Path | str, *, batch_rows: int = 65_536) -> Iterator[pa.RecordBatch]:
    """The ledger as a stream of Arrow record batches of at most ``batch_rows`` rows, in ``seq`` order
    for JSONL (a partitioned ledger: partition by partition), in file order for Parquet (by shard
    directory, by day, then by file), without loading it whole.
    """
    if batch_rows < 1:
        raise LedgerError(f"batch_rows={batch_rows!r}: must be at least 1")
    source = Path(source)
    parquet_files = _parquet_files(source)
    if parquet_files:
        yield from _parquet_dataset(source, parquet_files).to_batches(batch_size=batch_rows)
        return
    for first in partitions(source):
        lines: list[bytes] = []
        for line in event_lines(segments(first)):
            lines.append(line.raw)
            if len(lines) == batch_rows:
                yield from jsonl_to_table(b"\n".join(lines) + b"\n").to_batches()
                lines = []
        if lines:
            yield from jsonl_to_table(b"\n".join(lines) + b"\n").to_batches()


def read_table(source: Path | str, *, columns: Optional[list[str]] = None) -> pa.Table:
    """The ledger as an Arrow table of :data:`~ledger.schema.ARROW_SCHEMA`, ordered by ``seq``
    (a ledger partitioned by shard: by ``ts``, then ``shard``, then ``seq``).

    ``source`` is a Parquet dataset directory (``day=.../*.parquet``, or ``shard=K/day=.../`` for
    a partitioned one; a ``day`` column is added) or a JSONL ledger (its first file or its
    directory). ``columns`` keeps only those (and the order's): a Parquet dataset then reads only
    them, a large saving on a big ledger.
    """
    source = Path(source)
    parquet_files = _parquet_files(source)
    partitioned = (parquet_files and parquet_files[0].parent.parent != source) or (
        not parquet_files and partition_count(source) is not None)
    order = ["ts", "shard", "seq"] if partitioned else ["seq"]
    if columns is not None:
        columns = list(dict.fromkeys([*order, *columns]))
    if parquet_files:
        table = _parquet_dataset(source, parquet_files).to_table(columns=columns)
    else:
        tables = []
        for first in partitions(source):
            lines = [line.raw for line in event_lines(segments(first))]
            if lines:
                tables.append(jsonl_to_table(b"\n".join(lines) + b"\n"))
        table = pa.concat_tables(tables) if tables else ARROW_SCHEMA.empty_table()
        table = table if columns is None else table.select(columns)
    return table.sort_by([(name, "ascending") for name in order]) if partitioned or parquet_files else table


def last_ts_us(ledger: Path | str) -> int | None:
    """The ``ts_us`` of the ledger's last state change (``recover`` events aside), or None if it has none.

    Reads the files from the last one back: what a restarted mesh needs to keep its clock from going back.
    Of a partitioned ledger: the latest of its partitions'.
    """
    found = [_last_ts_us(first) for first in partitions(ledger)]
    return max((ts for ts in found if ts is not None), default=None)


def _last_ts_us(first: Path) -> int | None:
    if not first.exists():
        return None
    files = segments(first)
    for index in range(len(files) - 1, -1, -1):
        found = [line.event["ts_us"] for line in iter_lines(files[index:index + 1])
                 if line.event is not None and line.event["kind"] != EventKind.RECOVER.value]
        if found:
            return found[-1]
    return None


def _parquet_files(source: Path) -> list[Path]:
    """The whole Parquet files of a dataset directory (never the ``.tmp`` ones being written): its
    ``day=*`` directories', or each ``shard=K`` partition's; LedgerError if it holds both."""
    if not source.is_dir():
        return []
    plain = sorted(source.glob("day=*/*.parquet"))
    shards = [path for root in parquet_partitions(source) if root != source for path in sorted(root.glob("day=*/*.parquet"))]
    if plain and shards:
        raise LedgerError(f"{source}: both day=... and shard=.../day=... Parquet files: two datasets in one directory")
    return plain or shards


#: A dataset's schema: the ledger's, and the ``day`` of its hive directories (a file written before a
#: field was added reads it as null).
_DATASET_SCHEMA = ARROW_SCHEMA.append(pa.field("day", pa.string()))


def _parquet_dataset(root: Path, files: list[Path]) -> ds.Dataset:
    return ds.dataset(
        [str(p) for p in files], format="parquet", schema=_DATASET_SCHEMA,
        partitioning=ds.partitioning(pa.schema([("day", pa.string())]), flavor="hive"), partition_base_dir=str(root),
    )


def event_lines(paths: list[Path], *, from_seq: int = 0, read_lines: Optional[ReadLines] = None) -> Iterator[RawLine]:
    """The lines of ``paths`` that are events; torn lines skipped; LedgerError on a corrupt one.

    ``from_seq``: lines whose ``seq`` is below it are skipped unchecked. Each file is read from
    near its first line at or past it, found by bisecting the file on the ``seq`` each line
    starts with (lines are then numbered from there: see :class:`RawLine`); lines still below
    it are passed over by that ``seq``, unparsed.
    ``read_lines``: how to read a file's lines (from another node, say); read from its start.
    """
    for line in iter_lines(paths, from_seq=from_seq, read_lines=read_lines):
        if line.event is not None:
            yield line
        elif not line.torn:
            raise LedgerError(str(line))


def iter_lines(paths: list[Path], *, from_seq: int = 0, read_lines: Optional[ReadLines] = None) -> Iterator[RawLine]:
    """Every line of ``paths``, with its event, or why it is not one (see :class:`RawLine`);
    lines of a ``seq`` below ``from_seq`` skipped (see :func:`event_lines`)."""
    for index, path in enumerate(paths):
        yield from _file_lines(path, is_last=index == len(paths) - 1, from_seq=from_seq, read_lines=read_lines)


def _file_lines(path: Path, *, is_last: bool, from_seq: int = 0, read_lines: Optional[ReadLines] = None) -> Iterator[RawLine]:
    """The lines of one file, read as a stream (a ledger file of a gigabyte is never held whole)."""
    start = _start_offset(path, from_seq) if from_seq and read_lines is None else 0
    raws = _raw_lines(path, start) if read_lines is None else read_lines(path)
    skip = (lambda raw: _seq_below(raw, from_seq)) if from_seq else None
    for line in classify_lines(raws, path, last_file=is_last, skip=skip, after_byte=start):
        event = line.event
        if from_seq and event is not None and isinstance(event.get("seq"), int) and event["seq"] < from_seq:
            continue  # read only to tell whether the lines before it were torn
        yield line


def lines_of(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The lines of a file given in pieces, each with its newline (the last may have none).

    >>> list(lines_of([b'{"a":1}\\n{"b"', b':2}\\n{"c']))
    [b'{"a":1}\\n', b'{"b":2}\\n', b'{"c']
    """
    rest = b""
    for chunk in chunks:
        parts = (rest + chunk).split(b"\n")
        rest = parts.pop()
        for part in parts:
            yield part + b"\n"
    if rest:
        yield rest


def _seq_below(raw: bytes, seq: int) -> bool:
    """Whether a whole line starts as the writer writes (``{"v":1,"seq":N,``) with N below ``seq``."""
    line_seq = _line_seq(raw)
    return line_seq is not None and line_seq < seq


def _line_seq(raw: bytes) -> int | None:
    """The ``seq`` a whole v1 line (with its newline and hash) starts with, as the writer writes it; None if
    it has none. A torn line may start so too: it has no hash at its end (and stays in its torn run).
    No v2 line has one: a v2 batch is read whole (see :func:`_next_seq_line`)."""
    if not raw.startswith(_SEQ_PREFIX) or raw[-_HASH_TAIL_BYTES:-35] != b',"hash":"' or not raw.endswith(b'"}\n'):
        return None
    end = raw.find(b",", len(_SEQ_PREFIX), len(_SEQ_PREFIX) + 20)
    digits = raw[len(_SEQ_PREFIX):end]
    return int(digits) if end > 0 and digits.isdigit() else None


def _start_offset(path: Path, seq: int) -> int:
    """The start of a line of ``path`` before which every line's ``seq`` is below ``seq`` (0 if none
    is known to be), and in v2 the start of a batch: bisection over the file's bytes, down to
    ``BISECT_STOP_BYTES``. The writer numbers lines in file order; lines without a readable ``seq``
    (torn ones, and v2 lines but a batch's last) are stepped over."""
    try:
        with path.open("rb") as f:
            low, high = 0, f.seek(0, os.SEEK_END)
            while high - low > BISECT_STOP_BYTES:
                middle = (low + high) // 2
                found = _next_seq_line(f, middle, high)
                if found is None or found[1] >= seq:
                    high = middle
                else:
                    low = found[0]
            return low
    except OSError as exc:
        raise LedgerError(f"cannot read ledger {path}: {exc}") from exc


def _next_seq_line(f: Any, position: int, stop: int) -> tuple[int, int] | None:
    """(where reading may start, seq) of the first line starting after ``position`` and before ``stop``
    that has a readable ``seq``: a v1 line's start, or the end of a v2 batch's last line (its batch
    is all below that seq, and the next batch starts there)."""
    f.seek(position)
    f.readline()  # the rest of the line ``position`` falls in
    while f.tell() < stop:
        start = f.tell()
        raw = f.readline()
        line_seq = _line_seq(raw)
        if line_seq is not None:
            return start, line_seq
        line_seq = sealed_seq(raw)
        if line_seq is not None:
            return f.tell(), line_seq
    return None


def _raw_lines(path: Path, start: int = 0) -> Iterator[bytes]:
    """Each line of ``path`` from byte ``start`` (a line's start) with its newline (the last may have
    none); LedgerError if it cannot be read."""
    try:
        with path.open("rb") as f:
            f.seek(start)
            while True:
                raw = f.readline()
                if not raw:
                    return
                yield raw
    except OSError as exc:
        raise LedgerError(f"cannot read ledger {path}: {exc}") from exc
