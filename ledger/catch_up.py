"""Bring a Parquet dataset up to its JSONL ledger: what a crashed writer left unwritten, written.

The JSONL is the truth; the Parquet dataset is derived from it and buffered (row groups,
files that are whole only once closed). A writer that dies loses its buffer and leaves its
open files as ``*.parquet.tmp``. :func:`catch_up` removes those and appends, from the JSONL,
every event the whole files do not hold: the dataset again holds each event once. Writers call it when they start, so a restarted mesh or booth
repairs its dataset by itself; ``tollmesh ledger compact`` is the same pass into an empty
directory.

>>> import tempfile, pathlib
>>> from ledger.jsonl import JsonlWriter
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> jsonl = JsonlWriter(root / "l.jsonl")
>>> _ = jsonl.append([{"v": 1, "seq": None, "ts_us": 0, "kind": "deposit", "target_agent": "a", "amount_micros": 1}])
>>> parquet = ParquetLedgerWriter(root / "parquet")
>>> catch_up(parquet, root / "l.jsonl"), dataset_seqs(root / "parquet")
(1, [])
>>> parquet.close(); dataset_seqs(root / "parquet")
[(0, 0)]
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow.parquet as pq

from ledger.files import segments
from ledger.parquet import ParquetLedgerWriter
from ledger.reader import event_lines, iter_lines
from mesh.core.errors import LedgerError

UNFINISHED_SUFFIX = ".parquet.tmp"  # a file a writer had open (see ledger.parquet._OpenFile)


def catch_up(writer: ParquetLedgerWriter, ledger: Path | str, *, through_seq: Optional[int] = None) -> int:
    """Write to ``writer``'s dataset the ledger's events its whole files lack, up to ``through_seq``
    (default: the ledger's end); return how many. Call it before the writer's first append.

    Unfinished files (``*.parquet.tmp``) are removed first: their rows come again from the JSONL.
    When the whole files hold every event up to ``through_seq``, the JSONL is not read at all.
    LedgerError if they hold an event twice, or one past ``through_seq`` (a dataset of another
    ledger, say): then rebuild it with ``tollmesh ledger compact`` into a new directory.
    """
    if writer.files_written or writer.buffered_events or writer.open_files:
        raise LedgerError("catch_up must run before the Parquet writer's first append")
    for unfinished in writer.root.glob(f"day=*/*{UNFINISHED_SUFFIX}"):
        unfinished.unlink()
    held = dataset_seqs(writer.root)
    if through_seq is not None and held and held[-1][1] > through_seq:
        raise LedgerError(
            f"{writer.root} holds events up to seq {held[-1][1]}, past the ledger's seq {through_seq}: "
            "it is not this ledger's dataset"
        )
    first_missing = held[0][1] + 1 if held and held[0][0] == 0 else 0
    if through_seq is not None and first_missing > through_seq:
        return 0
    ledger = Path(ledger)
    if not ledger.exists():
        return 0
    written, batch, runs = 0, [], iter(held)
    run = next(runs, None)
    for line in event_lines(_segments_from(ledger, first_missing), from_seq=first_missing):
        seq = line.event["seq"]
        if through_seq is not None and seq > through_seq:
            break
        while run is not None and run[1] < seq:
            run = next(runs, None)
        if run is not None and run[0] <= seq:
            continue  # a whole file holds it
        batch.append(line.raw)
        if len(batch) == writer.row_group_events:
            writer.append_lines(b"\n".join(batch) + b"\n", len(batch))
            written, batch = written + len(batch), []
    if batch:
        writer.append_lines(b"\n".join(batch) + b"\n", len(batch))
        written += len(batch)
    return written


def dataset_seqs(root: Path | str) -> list[tuple[int, int]]:
    """The seqs the whole files under ``root`` hold, as sorted runs ``(first, last)``; LedgerError if one is held twice.

    A file usually holds one run of seqs (its footer's statistics say which, without reading
    it); where the clock crossed midnight out of order it holds several, and its seqs are read.
    """
    seqs: list[tuple[int, int, Path]] = []
    for path in Path(root).glob("day=*/*.parquet"):
        seqs.extend((first, last, path) for first, last in _file_runs(path))
    seqs.sort()
    runs: list[tuple[int, int]] = []
    for index, (first, last, path) in enumerate(seqs):
        if runs and first <= runs[-1][1]:
            raise LedgerError(
                f"{path} holds seq {first}, which {seqs[index - 1][2]} holds too: the dataset is not its "
                "ledger's events, each once; rebuild it with `tollmesh ledger compact` into a new directory"
            )
        if runs and first == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], last)
        else:
            runs.append((first, last))
    return runs


def _file_runs(path: Path) -> list[tuple[int, int]]:
    """The runs of consecutive seqs in one whole file."""
    try:
        meta = pq.read_metadata(path)
        if meta.num_rows == 0:
            return []
        column = meta.schema.to_arrow_schema().get_field_index("seq")
        stats = [meta.row_group(i).column(column).statistics for i in range(meta.num_row_groups)]
        if all(s is not None and s.has_min_max for s in stats):
            first, last = min(s.min for s in stats), max(s.max for s in stats)
            if last - first + 1 == meta.num_rows:
                return [(first, last)]
        seqs = np.sort(pq.read_table(path, columns=["seq"]).column("seq").to_numpy())
    except (OSError, ValueError) as exc:
        raise LedgerError(f"cannot read the Parquet file {path}: {exc}") from exc
    if len(np.unique(seqs)) != len(seqs):
        raise LedgerError(f"{path} holds a seq twice: rebuild the dataset with `tollmesh ledger compact` into a new directory")
    breaks = np.flatnonzero(np.diff(seqs) != 1)
    firsts = [seqs[0], *seqs[breaks + 1]]
    lasts = [*seqs[breaks], seqs[-1]]
    return [(int(a), int(b)) for a, b in zip(firsts, lasts)]


def _segments_from(ledger: Path, seq: int) -> list[Path]:
    """The ledger's files from the last one that starts at or before ``seq`` (earlier ones hold only earlier events)."""
    files = segments(ledger)
    start = 0
    for index in range(len(files) - 1, 0, -1):
        first = _first_seq(files[index])
        if first is not None and first <= seq:
            start = index
            break
    return files[start:]


def _first_seq(path: Path) -> Optional[int]:
    """The seq of a file's first event, or None if it holds none."""
    for line in iter_lines([path]):
        if line.event is not None:
            return line.event["seq"]
    return None
