"""The Parquet ledger: the same events as a hive-partitioned dataset, ``day=YYYY-MM-DD/``.

Typed columns (see :data:`ledger.schema.ARROW_SCHEMA`): int64 micros and decimal(18,6)
USD amounts, UTC timestamps, dictionary-encoded agents, kinds, statuses and reasons.
Rows come from the very JSONL bytes the ledger wrote, parsed by Arrow's C++ JSON reader
(the JSONL is the source; the Parquet is derived from it), v1 and v2 lines alike: a field a v2
line leaves out is null, and ``hash`` is a v1 line's hash, or on the last row of a v2 batch its
seal (null on the batch's other rows). Events a budget shard made as columns come as Arrow
columns instead (:data:`EVENT_FIELDS_SCHEMA`), numbered and sealed as their lines were
(:func:`numbered_table`): the same rows, without parsing JSON again. A row group is written per
``row_group_events``; a file is ``day=<day>/part-<first seq>.parquet``, written as
``.parquet.tmp`` and renamed when closed (at ``max_file_rows``, on a new day, on
:meth:`ParquetLedgerWriter.close`), so readers only ever see whole files. One writer
at a time holds a dataset (a lock file, ``.writer.lock``); see :mod:`ledger.catch_up` for
what a writer that died leaves, and how the next one repairs it.

It runs on the caller's thread: on a thread of its own it gains nothing while the
caller formats JSONL, because every return from Arrow's C++ code waits for the GIL
(measured: a busy Python thread beside it makes the conversion ~15x slower).

>>> line = b'{"v":1,"seq":0,"ts_us":0,"kind":"deposit","target_agent":"a","amount_micros":1500000,"hash":"' + b"0" * 32 + b'"}\\n'
>>> table = jsonl_to_table(line)
>>> table.column("amount_usd")[0].as_py(), str(table.column("ts")[0].as_py()), table.column("task_id")[0].as_py()
(Decimal('1.500000'), '1970-01-01 00:00:00+00:00', None)
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson
import pyarrow.parquet as pq

from ledger.lock import DEFAULT_LOCK_TIMEOUT_S, release_lock, take_lock
from ledger.schema import ARROW_SCHEMA
from mesh.core.clock import US_PER_DAY
from mesh.core.errors import LedgerError

DEFAULT_ROW_GROUP_EVENTS = 10_000
DEFAULT_MAX_FILE_ROWS = 1_000_000
DATASET_LOCK_NAME = ".writer.lock"  # one writer at a time (readers skip dot files)
_WRITER_FIELDS = ("v", "seq", "hash")  # what the ledger's writer adds to an event's fields
#: An event's row as its producer knows it, before the writer numbers and seals it.
EVENT_FIELDS_SCHEMA = pa.schema([f for f in ARROW_SCHEMA if f.name not in _WRITER_FIELDS])

#: A JSONL line as Arrow's JSON reader sees it (any other field is an error).
JSONL_ARROW_SCHEMA = pa.schema(
    [
        ("v", pa.int16()), ("seq", pa.int64()), ("ts_us", pa.int64()), ("kind", pa.string()),
        ("mode", pa.string()), ("shard", pa.int32()), ("task_id", pa.string()),
        ("source_agent", pa.string()), ("target_agent", pa.string()), ("amount_usd", pa.float64()),
        ("amount_micros", pa.int64()), ("amount_tokens", pa.float64()), ("status", pa.string()),
        ("tx_signature", pa.string()), ("payer_wallet", pa.string()), ("nonce", pa.string()),
        ("settled_at", pa.string()), ("created_at", pa.string()), ("reason", pa.string()),
        ("proof_digest", pa.string()), ("torn_bytes", pa.int64()),
        ("from_shard", pa.int32()), ("from_seq", pa.int64()), ("hash", pa.string()),
        ("first_seq", pa.int64()), ("lines", pa.int64()), ("seal", pa.string()),  # v2's seal, on a batch's last line
    ]
)
_PARSE = pajson.ParseOptions(explicit_schema=JSONL_ARROW_SCHEMA, unexpected_field_behavior="error")
_DICTIONARY_FIELDS = ("kind", "mode", "source_agent", "target_agent", "status", "reason", "payer_wallet")
_STRING_FIELDS = ("task_id", "tx_signature", "proof_digest", "nonce")


def jsonl_to_table(blob: bytes) -> pa.Table:
    """Whole ledger lines (bytes) as an Arrow table of :data:`ARROW_SCHEMA` (empty text becomes null)."""
    options = pajson.ReadOptions(use_threads=True, block_size=1 << 20)  # blocks parsed on all cores
    try:
        raw = pajson.read_json(io.BytesIO(blob), read_options=options, parse_options=_PARSE)
    except pa.ArrowInvalid as exc:
        raise LedgerError(f"ledger lines do not match the event schema: {exc}") from None
    columns: dict[str, pa.Array] = {
        "v": raw["v"],
        "seq": raw["seq"],
        "ts": raw["ts_us"].cast(pa.timestamp("us", tz="UTC")),
        "shard": raw["shard"],
        "amount_tokens": pc.fill_null(raw["amount_tokens"], 0.0),
        "torn_bytes": raw["torn_bytes"],
        "from_shard": raw["from_shard"],
        "from_seq": raw["from_seq"],
    }
    micros = pc.fill_null(raw["amount_micros"], 0)
    columns["amount_micros"] = micros
    columns["amount_usd"] = micros_to_decimal(micros.to_numpy())
    for name in _STRING_FIELDS:
        columns[name] = _empty_to_null(raw[name])
    columns["hash"] = _chain_column(raw["hash"], raw["seal"])
    for name in _DICTIONARY_FIELDS:
        columns[name] = _empty_to_null(raw[name]).dictionary_encode()
    for name in ("created_at", "settled_at"):
        columns[name] = _empty_to_null(raw[name]).cast(pa.timestamp("us", tz="UTC"))
    arrays = [pa.chunked_array(columns[f.name]).combine_chunks() for f in ARROW_SCHEMA]
    return pa.Table.from_arrays(arrays, schema=ARROW_SCHEMA)


def numbered_table(fields: pa.Table, first_seq: int, seals: dict[int, str], *, version: int = 2) -> pa.Table:
    """Rows of :data:`ARROW_SCHEMA` from events' ``fields`` (:data:`EVENT_FIELDS_SCHEMA`) written at
    seqs ``first_seq``..., with each seal (by the seq of the line that carries it) in ``hash``:
    what :func:`jsonl_to_table` reads from the lines the writer wrote for them."""
    if fields.schema != EVENT_FIELDS_SCHEMA:
        raise LedgerError(f"event fields do not match the event schema: {fields.schema}")
    n = fields.num_rows
    sealed = [(seq - first_seq, seal) for seq, seal in seals.items() if first_seq <= seq < first_seq + n]
    which = np.zeros(n, np.int32)  # 0: no seal on this row
    for k, (row, _) in enumerate(sealed, start=1):
        which[row] = k
    hashes = pa.array([None, *(seal for _, seal in sealed)], pa.string()).take(pa.array(which))
    added = {"v": pa.array(np.full(n, version, np.int16)), "seq": pa.array(np.arange(first_seq, first_seq + n, dtype=np.int64)),
             "hash": hashes}
    arrays = [added[f.name] if f.name in added else fields.column(f.name).combine_chunks() for f in ARROW_SCHEMA]
    return pa.Table.from_arrays(arrays, schema=ARROW_SCHEMA)


def table_to_ipc(table: pa.Table) -> pa.Buffer:
    """A table as one Arrow IPC stream, to send between processes: Ray pickles a buffer ~16x cheaper
    than it pickles a table (0.035 against 0.56 us a ledger row, measured here)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as stream:
        stream.write_table(table)
    return sink.getvalue()


def table_from_ipc(data: bytes | pa.Buffer, schema: pa.Schema, what: str) -> pa.Table:
    """The table of :func:`table_to_ipc`; LedgerError naming ``what`` if ``data`` is not an Arrow IPC
    stream of ``schema``."""
    try:
        table = pa.ipc.open_stream(pa.py_buffer(data)).read_all()
    except (pa.ArrowInvalid, OSError, TypeError) as exc:
        raise LedgerError(f"{what} are not an Arrow IPC stream: {exc}") from None
    if table.schema != schema:
        raise LedgerError(f"{what} do not match their schema: {table.schema}")
    return table


def fields_to_ipc(fields: pa.Table) -> bytes:
    """Events' fields as an Arrow IPC stream: one bytes object to send between processes (an actor on
    the way passes it on without rebuilding the table)."""
    return table_to_ipc(fields).to_pybytes()


def fields_from_ipc(data: bytes) -> pa.Table:
    """The table of :func:`fields_to_ipc`; LedgerError if ``data`` is not an Arrow IPC stream of the
    event fields."""
    return table_from_ipc(data, EVENT_FIELDS_SCHEMA, "event fields")


def micros_to_decimal(micros: np.ndarray) -> pa.Array:
    """Exact decimal(18,6) USD from int64 micros (the unscaled value of the decimal is the micros)."""
    micros = np.ascontiguousarray(micros, dtype=np.int64)
    words = np.empty(2 * len(micros), dtype=np.int64)
    words[0::2] = micros
    words[1::2] = micros >> 63  # sign extension to 128 bits
    return pa.Array.from_buffers(pa.decimal128(18, 6), len(micros), [None, pa.py_buffer(words)])


def _lock_dataset(root: Path, timeout_s: float) -> int:
    """Take the dataset's writer lock, waiting up to ``timeout_s``; return its file descriptor (see :mod:`ledger.lock`)."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LedgerError(f"cannot write the Parquet dataset {root}: {exc}") from exc
    return take_lock(root / DATASET_LOCK_NAME, timeout_s=timeout_s, what=str(root))


def _chain_column(hashes: pa.ChunkedArray, seals: pa.ChunkedArray) -> pa.ChunkedArray:
    """Each row's ``hash`` (v1), else its ``seal`` (the last row of a v2 batch), else null."""
    hashes = _empty_to_null(hashes)
    return hashes if seals.null_count == len(seals) else pc.coalesce(hashes, seals)


def _empty_to_null(column: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.if_else(pc.equal(column, ""), pa.scalar(None, pa.string()), column)


class ParquetLedgerWriter:
    """Writes ledger lines to the day-partitioned dataset under ``root``."""

    def __init__(
        self,
        root: Path | str,
        *,
        row_group_events: int = DEFAULT_ROW_GROUP_EVENTS,
        max_file_rows: int = DEFAULT_MAX_FILE_ROWS,
        lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
    ) -> None:
        if not isinstance(lock_timeout_s, (int, float)) or not 0 <= lock_timeout_s < float("inf"):
            raise LedgerError(f"lock_timeout_s={lock_timeout_s!r}: must be a finite number of seconds, 0 or more")
        if not 1 <= row_group_events <= max_file_rows:
            raise LedgerError(
                f"row_group_events={row_group_events!r}, max_file_rows={max_file_rows!r}: "
                "need 1 <= row_group_events <= max_file_rows"
            )
        self.root = Path(root)
        self.row_group_events = row_group_events
        self.max_file_rows = max_file_rows
        self.files_written: list[Path] = []
        self._pieces: list[bytes | pa.Table] = []  # lines, or rows already of ARROW_SCHEMA, in seq order
        self._buffered_events = 0
        self._open: dict[str, _OpenFile] = {}  # day -> the file being written
        self._lock_fd: Optional[int] = _lock_dataset(self.root, lock_timeout_s)

    @property
    def buffered_events(self) -> int:
        """Events appended and not yet written out as a row group."""
        return self._buffered_events

    @property
    def open_files(self) -> int:
        """Files being written (one per day at most), still under their ``.tmp`` names."""
        return len(self._open)

    def append_lines(self, blob: bytes, events: int) -> None:
        """Add ``events`` whole ledger lines; a row group goes out per ``row_group_events``."""
        self._append(blob, events)

    def append_table(self, table: pa.Table) -> None:
        """Add rows of :data:`ARROW_SCHEMA` (see :func:`numbered_table`), after what was added before."""
        if table.schema != ARROW_SCHEMA:
            raise LedgerError(f"rows do not match the ledger's Parquet schema: {table.schema}")
        self._append(table, table.num_rows)

    def flush(self) -> None:
        """Write what is buffered as one row group (files stay open)."""
        if not self._pieces:
            return
        pieces, self._pieces, self._buffered_events = self._pieces, [], 0
        self._write(_as_one_table(pieces))

    def _append(self, piece: bytes | pa.Table, events: int) -> None:
        self._pieces.append(piece)
        self._buffered_events += events
        if self._buffered_events >= self.row_group_events:
            self.flush()

    def close(self) -> None:
        """Write what is buffered, close every file cleanly and let the dataset go."""
        try:
            self.flush()
            for day in list(self._open):
                self._close_day(day)
        finally:
            if self._lock_fd is not None:
                release_lock(self._lock_fd)
                self._lock_fd = None

    def _write(self, table: pa.Table) -> None:
        days = table.column("ts").cast(pa.int64()).to_numpy() // US_PER_DAY
        starts = [0, *(np.flatnonzero(np.diff(days)) + 1).tolist(), len(days)]
        for start, end in zip(starts, starts[1:]):
            self._write_day(str(np.datetime64(int(days[start]), "D")), table.slice(start, end - start))
        latest = str(np.datetime64(int(days[-1]), "D"))
        for day in [d for d in self._open if d < latest]:
            self._close_day(day)  # days only move forward: an earlier day's file is done

    def _write_day(self, day: str, table: pa.Table) -> None:
        current = self._open.get(day)
        if current is not None and current.rows + table.num_rows > self.max_file_rows:
            self._close_day(day)
            current = None
        if current is None:
            first_seq = table.column("seq")[0].as_py()
            current = self._open[day] = _OpenFile(self.root / f"day={day}" / f"part-{first_seq:012d}.parquet")
        current.write(table)

    def _close_day(self, day: str) -> None:
        self.files_written.append(self._open.pop(day).close())


def _as_one_table(pieces: list[bytes | pa.Table]) -> pa.Table:
    """The pieces' rows in order; lines beside lines are parsed at once."""
    tables, lines = [], []
    for piece in pieces:
        if isinstance(piece, bytes):
            lines.append(piece)
            continue
        if lines:
            tables.append(jsonl_to_table(b"".join(lines)))
            lines = []
        tables.append(piece)
    if lines:
        tables.append(jsonl_to_table(b"".join(lines)))
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables)


class _OpenFile:
    """One Parquet file being written under a temporary name."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp_path = path.with_name(path.name + ".tmp")
        if path.exists():
            raise LedgerError(f"{path} exists already: refusing to overwrite it")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(self.tmp_path, ARROW_SCHEMA, compression="zstd")
        except OSError as exc:
            raise LedgerError(f"cannot write {self.tmp_path}: {exc}") from exc
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        self.writer.write_table(table, row_group_size=table.num_rows)
        self.rows += table.num_rows

    def close(self) -> Path:
        self.writer.close()
        os.replace(self.tmp_path, self.path)
        return self.path
