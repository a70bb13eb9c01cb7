"""``ledger export`` and ``ledger compact``: the ledger in other formats.

``export`` writes the events as CSV, JSON (an array) or one Parquet file; ``compact``
rebuilds the day-partitioned Parquet dataset from the JSONL (the source after a crash)
into a directory that must not hold a dataset already (nothing is overwritten).

>>> import tempfile, pathlib
>>> from mesh import Tollbooth, TollboothConfig
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> with Tollbooth(TollboothConfig(ledger_path=root / "toll_ledger.jsonl")) as booth:
...     _ = booth.charge_sync("t1", "alice", "bob")
>>> [p.parent.name for p in compact(root / "toll_ledger.jsonl", root / "parquet")]
['day=...']
>>> export(root / "toll_ledger.jsonl", root / "out.csv", "csv")
1
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ledger.catch_up import catch_up
from ledger.files import segments
from ledger.partitions import partition_count, partitions
from ledger.parquet import DEFAULT_ROW_GROUP_EVENTS, ParquetLedgerWriter
from ledger.reader import read_table
from mesh.core.errors import InvalidArgumentError, LedgerError

FORMATS = ("csv", "json", "parquet")


def export(source: Path | str, out: Path | str, fmt: str) -> int:
    """Write the events of ``source`` (JSONL ledger or Parquet dataset) to ``out``; return the count.

    The folder of ``out`` is made if it is missing; ``out`` itself must not exist (nothing is overwritten).
    """
    if fmt not in FORMATS:
        raise InvalidArgumentError("format", fmt, f"must be one of: {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists():
        raise LedgerError(f"{out} exists already: refusing to overwrite it")
    table = read_table(source)
    _make_folder(out.parent)
    plain = _plain(table)
    if fmt == "csv":
        pacsv.write_csv(plain, out)
    elif fmt == "json":
        out.write_bytes(orjson.dumps(plain.to_pylist(), default=_json_default))
    else:
        pq.write_table(table, out, compression="zstd")
    return table.num_rows


def compact(ledger: Path | str, out_dir: Path | str, *, row_group_events: int = DEFAULT_ROW_GROUP_EVENTS) -> list[Path]:
    """Rebuild the Parquet dataset of a JSONL ledger under ``out_dir``; return the files written.

    A partitioned ledger's dataset has a directory per partition (``out_dir/shard=K/day=.../``).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and (any(out_dir.glob("day=*")) or any(out_dir.glob("shard=*"))):
        raise LedgerError(f"{out_dir} holds a Parquet dataset already: compact into a new directory")
    firsts = partitions(ledger)
    for first in firsts:
        segments(first)  # a missing ledger is an error here, not an empty dataset
    written = []
    for index, first in enumerate(firsts):
        root = out_dir if partition_count(ledger) is None else out_dir / f"shard={index}"
        writer = ParquetLedgerWriter(root, row_group_events=row_group_events)
        catch_up(writer, first)
        writer.close()
        written.extend(writer.files_written)
    return written


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise LedgerError(f"cannot write into {folder}: it, or a folder above it, is a file") from None


def _plain(table: pa.Table) -> pa.Table:
    """Dictionary columns decoded to plain strings (CSV and JSON want values, not codes)."""
    columns = [
        column.cast(column.type.value_type) if pa.types.is_dictionary(column.type) else column
        for column in table.columns
    ]
    return pa.table(columns, names=table.column_names)


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.datetime):
        return value.isoformat()
    raise TypeError(f"cannot export {type(value).__name__} as JSON")
