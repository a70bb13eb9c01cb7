"""A batch's ledger events as columns, and their JSON lines built for the whole batch at once.

:class:`EventColumns` holds what changed per event (kind, task row, agents, amount,
status, reason, time); the texts that never change for a row (task id, nonce,
``created_at``) and agent names are taken from the book when the batch is encoded.
:func:`encode_jsonl` writes the lines of :func:`ledger.events.record_event` +
:func:`ledger.jsonl.encode_events` (same fields, same order, ``seq`` null, ready for
``JsonlWriter.append_encoded``; null fields left out) with pyarrow's element-wise string joins: no dict
and no ``dumps`` per event. ``amount_usd`` is written as the exact decimal of the
micros (``0.000010``), which parses to the very float ``amount_micros / 10**6`` is.

>>> import numpy as np
>>> from mesh.columnar import ColumnarBook
>>> book = ColumnarBook(track_balances=True)
>>> alice, = book.register(["alice"])
>>> events = book.deposit(np.array([alice]), np.array([2_500_000]), now_us=0)
>>> book.encode(events)[:68]
b'{"v":1,"seq":null,"ts_us":0,"kind":"deposit","mode":"live","task_id"'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from ledger.parquet import EVENT_FIELDS_SCHEMA, micros_to_decimal
from mesh.core.clock import US_PER_SECOND, iso_utc
from mesh.columnar._codes import KIND_JSON, KIND_NAMES, REASON_JSON, REASON_NAMES, STATUS_JSON, STATUS_NAMES

_REASON_FIELD = [f',"reason":{text}' if text != "null" else "" for text in REASON_JSON]  # a null reason: no field
_STATUS_FIELD = [f',"status":{text}' if text != "null" else "" for text in STATUS_JSON]

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_KIND_JSON = pa.array(KIND_JSON, pa.string())
_STATUS_FIELD_JSON = pa.array(_STATUS_FIELD, pa.string())
_REASON_END_JSON = pa.array([field + "}\n" for field in _REASON_FIELD], pa.string())  # the line's last field
_FEW_AMOUNTS = 256  # at most this many distinct (amount, status) in a batch (or 1/16 of it): a table of them
_KIND_TEXT, _STATUS_TEXT = pa.array(KIND_NAMES, pa.string()), pa.array(STATUS_NAMES, pa.string())
_REASON_TEXT = pa.array(REASON_NAMES, pa.string())
_UTC_US = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class EventColumns:
    """One batch's events, in ledger order (all columns the same length).

    ``row`` is the task row (-1: a deposit, which has no task); ``source`` is -1 for a
    deposit (the ledger's empty ``source_agent``); ``settled_s`` is -1 where
    ``settled_at`` is null.
    """

    kind: np.ndarray  # int8, mesh.columnar._codes kinds
    row: np.ndarray  # int64
    source: np.ndarray  # int32
    target: np.ndarray  # int32
    amount: np.ndarray  # int64 micros
    status: np.ndarray  # int8
    reason: np.ndarray  # int8
    ts_us: np.ndarray  # int64
    settled_s: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.kind)

    @staticmethod
    def empty() -> EventColumns:
        """No events (one shared instance: its arrays are empty and read-only)."""
        return _EMPTY

    @staticmethod
    def of(kind, row, source, target, amount, status, reason, ts_us, settled_s) -> EventColumns:
        """Columns from arrays or scalars (scalars are broadcast to the arrays' length)."""
        values = (kind, row, source, target, amount, status, reason, ts_us, settled_s)
        n = max((len(v) for v in values if isinstance(v, np.ndarray)), default=1)
        return EventColumns(*(np.broadcast_to(np.asarray(v, dtype), (n,)).astype(dtype, copy=False)
                              for v, dtype in zip(values, _DTYPES)))

    @staticmethod
    def one(kind, row, source, target, amount, status, reason, ts_us, settled_s) -> EventColumns:
        """One event from scalars (the per-message paths: no broadcasting)."""
        values = (kind, row, source, target, amount, status, reason, ts_us, settled_s)
        return EventColumns(*(np.array([v], dtype) for v, dtype in zip(values, _DTYPES)))

    @staticmethod
    def concat(parts: Sequence[EventColumns]) -> EventColumns:
        parts = [p for p in parts if len(p)]
        if not parts:
            return EventColumns.empty()
        if len(parts) == 1:
            return parts[0]
        return EventColumns(*(np.concatenate(columns) for columns in zip(*(p._columns() for p in parts))))

    def _columns(self) -> tuple:
        return (self.kind, self.row, self.source, self.target, self.amount, self.status, self.reason,
                self.ts_us, self.settled_s)


_DTYPES = (np.int8, np.int64, np.int32, np.int32, np.int64, np.int8, np.int8, np.int64, np.int64)


def _read_only_empty(dtype: type) -> np.ndarray:
    array = np.zeros(0, dtype)
    array.flags.writeable = False
    return array


_EMPTY = EventColumns(*(_read_only_empty(dtype) for dtype in _DTYPES))


def json_strings(texts: pa.Array) -> pa.Array:
    """Each string as its JSON text, quotes included (orjson's escaping, only where a string needs it)."""
    if not _needs_escape(texts):
        return pc.binary_join_element_wise('"', texts, '"', "")
    return pa.array([orjson.dumps(text).decode() for text in texts.to_pylist()], pa.string())


def _needs_escape(texts: pa.Array) -> bool:
    """Whether any string holds a byte JSON escapes (a quote, a backslash, a control character)."""
    _, offsets, data = texts.buffers()
    if data is None:
        return False
    ends = np.frombuffer(offsets, np.int32, count=len(texts) + 1, offset=texts.offset * 4)
    used = np.frombuffer(data, np.uint8)[int(ends[0]):int(ends[-1])]
    return bool(((used < 0x20) | (used == 0x22) | (used == 0x5C)).any())


def hex_strings(digests: np.ndarray) -> pa.Array:
    """``(n, 16)`` uint8 digests as 32-character lowercase hex strings (no Python object per digest)."""
    n = len(digests)
    chars = np.empty((n, 32), np.uint8)
    chars[:, 0::2] = _HEX[digests >> 4]
    chars[:, 1::2] = _HEX[digests & 15]
    offsets = np.arange(0, 32 * (n + 1), 32, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(chars.tobytes()))


def decimal_usd(micros: np.ndarray) -> pa.Array:
    """``amount_usd`` as exact decimal text: ``12`` micros -> ``0.000012`` (micros are at most 10^15 < 2^53)."""
    whole = pc.cast(pa.array(micros // US_PER_SECOND), pa.string())
    fraction = pc.utf8_slice_codeunits(pc.cast(pa.array(micros % US_PER_SECOND + US_PER_SECOND), pa.string()), 1)
    return pc.binary_join_element_wise(whole, ".", fraction, "")


def iso_json(seconds: np.ndarray, *, field: str = "") -> pa.Array | str:
    """``"YYYY-MM-DDTHH:MM:SS+00:00"`` (quoted) for each whole second, ``null`` where it is -1; with
    ``field``, the whole ``,"field":"..."`` and nothing where it is -1 (a null field left out). One
    time for the whole batch (the common case) is answered as one str."""
    def text(second: int) -> str:
        if field:
            return "" if second < 0 else f',"{field}":"{iso_utc(second * US_PER_SECOND, "seconds")}"'
        return "null" if second < 0 else f'"{iso_utc(second * US_PER_SECOND, "seconds")}"'
    if len(seconds) and seconds.min() == seconds.max():
        return text(int(seconds[0]))
    unique, inverse = np.unique(seconds, return_inverse=True)
    return pa.array([text(int(s)) for s in unique], pa.string()).take(pa.array(inverse.astype(np.int32).ravel()))


class _Line:
    """The parts of a batch's lines, joined once: constant text and columns of text (one value per
    line). Arrow's element-wise join costs about the same per part and line however short the part,
    so parts are folded: a column with one value for the whole batch becomes text, adjacent text is
    merged, and text after a column taken from a small table (kinds, agents, prices) goes into the
    table's values."""

    def __init__(self, n: int) -> None:
        self.n, self.parts = n, [""]  # each a str, a column, or [table, codes] (taken when joined)

    def text(self, text: str) -> None:
        last = self.parts[-1]
        if isinstance(last, str):
            self.parts[-1] = last + text
        elif isinstance(last, list):
            last[0] = pc.binary_join_element_wise(last[0], text, "")
        else:
            self.parts.append(text)

    def column(self, values: pa.Array | str) -> None:
        if isinstance(values, str):
            self.text(values)
        else:
            self.parts.append(values)

    def coded(self, table: pa.Array, codes: np.ndarray) -> None:
        """``table[codes[i]]`` on line i."""
        if len(codes) and codes.min() == codes.max():
            self.text(table[int(codes[0])].as_py())
        elif len(table) <= self.n:
            self.parts.append([table, codes])
        else:
            self.parts.append(table.take(pa.array(codes)))

    def joined(self) -> bytes:
        parts = [part[0].take(pa.array(part[1])) if isinstance(part, list) else part for part in self.parts]
        if all(isinstance(part, str) for part in parts):
            return "".join(parts).encode() * self.n
        return _concatenated(pc.binary_join_element_wise(*parts, ""))


@dataclass(frozen=True)
class TaskTexts:
    """What each event takes from its task row, made once for both encodings of a batch: the task id
    (``""`` for a deposit, which has no task), the nonce as 32 hex characters (a deposit's is
    meaningless: ``has_task`` says where to leave it out) and ``created_s`` (a deposit's: its own time)."""

    has_task: np.ndarray  # bool
    every_task: bool  # has_task is all True (the common case: no masking needed)
    task_id: pa.Array
    nonce: pa.Array
    created_s: np.ndarray  # int64 whole seconds

    @staticmethod
    def of(events: EventColumns, *, task_ids: list[str], nonces: np.ndarray, created_s: np.ndarray) -> TaskTexts:
        """``task_ids``, ``nonces`` (``(rows, 16)`` uint8) and ``created_s``: the book's task columns,
        indexed by ``events.row``."""
        rows = events.row
        has_task = rows >= 0
        if bool(has_task.all()):
            return TaskTexts(has_task, True, pa.array(_at_rows(task_ids, rows), pa.string()),
                             hex_strings(nonces[rows]), created_s[rows])
        safe_rows = np.where(has_task, rows, 0)
        task_id = pa.array([task_ids[r] if r >= 0 else "" for r in rows.tolist()], pa.string())
        nonce = hex_strings(nonces[safe_rows]) if len(nonces) else pa.array([""] * len(rows), pa.string())
        created = np.where(has_task, created_s[safe_rows] if len(created_s) else 0, events.ts_us // US_PER_SECOND)
        return TaskTexts(has_task, False, task_id, nonce, created)


def _at_rows(values: list, rows: np.ndarray) -> list:
    """``values[r]`` for each row: a slice where the rows run one after another (a batch's new tasks)."""
    n = len(rows)
    if n and int(rows[-1]) - int(rows[0]) == n - 1 and bool((np.diff(rows) == 1).all()):
        return values[int(rows[0]):int(rows[0]) + n]
    return [values[r] for r in rows.tolist()]


def encode_jsonl(events: EventColumns, texts: TaskTexts, *, names_json: pa.Array, mode: Optional[str],
                 shard: Optional[int]) -> bytes:
    """The events as JSON lines (see the module doc); ``names_json``: the agents' names as JSON strings."""
    n = len(events)
    if not n:
        return b""
    nonce = texts.nonce if texts.every_task else pc.if_else(pa.array(texts.has_task), texts.nonce, "")
    agents_json = pa.concat_arrays([pa.array(['""'], pa.string()), names_json])  # index 0: the empty name
    line = _Line(n)
    line.text('{"v":1,"seq":null,"ts_us":')
    line.column(str(int(events.ts_us[0])) if events.ts_us.min() == events.ts_us.max()
                else pc.cast(pa.array(events.ts_us), pa.string()))
    line.text(',"kind":')
    line.coded(_KIND_JSON, events.kind)
    line.text(("" if mode is None else f',"mode":{orjson.dumps(mode).decode()}')
              + ("" if shard is None else f',"shard":{orjson.dumps(shard).decode()}') + ',"task_id":')
    if _needs_escape(texts.task_id):
        line.column(json_strings(texts.task_id))
    else:  # the quotes go in the text around it
        line.text('"')
        line.column(texts.task_id)
        line.text('"')
    line.text(',"source_agent":')
    line.coded(agents_json, events.source.astype(np.int64) + 1)
    line.text(',"target_agent":')
    line.coded(agents_json, events.target.astype(np.int64) + 1)
    _amount_and_status(line, events.amount, events.status)
    line.text(',"nonce":"')
    line.column(nonce)
    line.text('"')
    line.column(iso_json(events.settled_s, field="settled_at"))
    line.text(',"created_at":')
    line.column(iso_json(texts.created_s))
    line.coded(_REASON_END_JSON, events.reason)
    return line.joined()


def _amount_and_status(line: _Line, micros: np.ndarray, status: np.ndarray) -> None:
    """``,"amount_usd":..,"amount_micros":..,"amount_tokens":0.0,"status":..``: as one column made once per
    distinct (amount, status) when a batch has few (its calls' prices), else field by field."""
    pairs = pa.array(micros * len(STATUS_NAMES) + status).dictionary_encode()
    distinct = pairs.dictionary.to_numpy()
    if len(distinct) <= max(_FEW_AMOUNTS, len(micros) // 16):
        amounts, statuses = np.divmod(distinct, len(STATUS_NAMES))
        table = pa.array([f',"amount_usd":{m // US_PER_SECOND}.{m % US_PER_SECOND:06d},"amount_micros":{m}'
                          f',"amount_tokens":0.0{_STATUS_FIELD[s]}' for m, s in zip(amounts.tolist(), statuses.tolist())],
                         pa.string())
        line.coded(table, pairs.indices.to_numpy())
        return
    line.text(',"amount_usd":')
    line.column(decimal_usd(micros))
    line.text(',"amount_micros":')
    line.column(pc.cast(pa.array(micros), pa.string()))
    line.text(',"amount_tokens":0.0')
    line.coded(_STATUS_FIELD_JSON, status)


def encode_arrow(events: EventColumns, texts: TaskTexts, *, names: pa.Array, mode: Optional[str],
                 shard: Optional[int]) -> pa.Table:
    """The events' Parquet rows before the writer numbers and seals them
    (:data:`ledger.parquet.EVENT_FIELDS_SCHEMA`): what :func:`ledger.parquet.jsonl_to_table` reads
    from the lines :func:`encode_jsonl` makes of them, with no JSON in between. ``names``: the
    agents' names by index."""
    n = len(events)
    if texts.every_task:
        task_id, nonce = texts.task_id, texts.nonce
    else:
        no_task = pa.array(~texts.has_task)
        task_id = pc.if_else(no_task, pa.scalar(None, pa.string()), texts.task_id)
        nonce = pc.if_else(no_task, pa.scalar(None, pa.string()), texts.nonce)
    empty_text = pa.nulls(n, pa.string())
    columns = {
        "ts": _timestamps(events.ts_us),
        "kind": _dictionary(_KIND_TEXT.take(pa.array(events.kind))),
        "mode": _dictionary(pa.array([mode], pa.string()).take(pa.array(np.zeros(n, np.int32)))),
        "shard": pa.array(np.full(n, shard, np.int32)) if shard is not None else pa.nulls(n, pa.int32()),
        "task_id": task_id,
        "source_agent": _dictionary(_names_at(names, events.source)),
        "target_agent": _dictionary(_names_at(names, events.target)),
        "amount_micros": pa.array(events.amount, pa.int64()),
        "amount_usd": micros_to_decimal(events.amount),
        "amount_tokens": pa.array(np.zeros(n, np.float64)),
        "status": _dictionary(_STATUS_TEXT.take(pa.array(events.status))),
        "reason": _dictionary(_REASON_TEXT.take(pa.array(events.reason))),
        "tx_signature": empty_text,
        "payer_wallet": _dictionary(empty_text),
        "proof_digest": empty_text,
        "nonce": nonce,
        "created_at": _timestamps(texts.created_s * US_PER_SECOND),
        "settled_at": pc.if_else(pa.array(events.settled_s < 0), pa.scalar(None, _UTC_US),
                                 _timestamps(events.settled_s * US_PER_SECOND)),
        "torn_bytes": pa.nulls(n, pa.int64()),
        "from_shard": pa.nulls(n, pa.int32()),
        "from_seq": pa.nulls(n, pa.int64()),
    }
    return pa.Table.from_arrays([columns[f.name] for f in EVENT_FIELDS_SCHEMA], schema=EVENT_FIELDS_SCHEMA)


def _timestamps(us: np.ndarray) -> pa.Array:
    return pa.array(np.ascontiguousarray(us, np.int64)).view(_UTC_US)


def _dictionary(texts: pa.Array) -> pa.Array:
    """Strings dictionary-encoded as the ledger's Parquet columns are (int32 codes, in order of first use)."""
    return texts.dictionary_encode()


def _names_at(names: pa.Array, index: np.ndarray) -> pa.Array:
    """The agent name at each index; null where it is -1 (a deposit's empty source)."""
    index = index.astype(np.int64)
    return names.take(pa.array(index, mask=index < 0))


def _concatenated(strings: pa.Array) -> bytes:
    """The bytes of every string of a StringArray, one after another (its data buffer, sliced)."""
    _, offsets_buffer, data = strings.buffers()
    offsets = np.frombuffer(offsets_buffer, np.int32, count=len(strings) + 1, offset=strings.offset * 4)
    return memoryview(data)[int(offsets[0]):int(offsets[-1])].tobytes()
