"""The ledger writer actor: group commit of event batches to JSONL, then Parquet in a process of its own.

Callers ``await writer.append.remote(events)``; the answer, ``(first seq, last seq)``,
comes only once the batch is durable in the JSONL under the fsync policy. Batches
that arrive while a write (and its fsync) is under way wait and go out together in the
next write: one write and one fsync for all of them (group commit), at most
``max_commit_events`` events at a time. The same bytes then go to a
:class:`ParquetSink` actor: its own worker process, so the Parquet conversion uses the
other core instead of waiting on this process's GIL; small commits are gathered first
(up to ``PARQUET_MIN_EVENTS`` or ``PARQUET_MAX_WAIT_S``), and at most
``MAX_PARQUET_BATCHES_IN_FLIGHT`` batches travel to it at once (backpressure).

The writer is restartable: a new instance reopens the JSONL family and continues the
sequence and the chain of seals (or hashes, in a v1 ledger), in the ledger's format (a torn
last line or batch is marked with a ``recover`` event).
A batch whose caller saw the writer die may or may not be on disk; the caller decides
by reading the ledger (tasks are idempotent by ``task_id``). The sink runs on the
writer's node. Each sink's first call catches the dataset up with the JSONL
(:mod:`ledger.catch_up`), so when a sink fails (it is replaced, up to
``MAX_SINK_STARTS`` sinks in all) or the writer dies (its restart starts a new sink),
the rows they had not written yet come again from the JSONL: the dataset ends up
holding each event once.

>>> import ray, tempfile, pathlib                                  # doctest: +SKIP
>>> writer = LedgerWriterActor.remote(pathlib.Path(tempfile.mkdtemp()) / "toll_ledger.jsonl")  # doctest: +SKIP
>>> ray.get(writer.append.remote([{"v": 1, "seq": None, "ts_us": 0, "kind": "deposit",
...     "target_agent": "a", "amount_micros": 5}]))              # doctest: +SKIP
(0, 0)
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections import deque
from pathlib import Path
from typing import Any, Awaitable, NamedTuple, Optional

import numpy as np
import pyarrow as pa
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.fast_lane import FastAnswer, FastPlan
from actors.gc_tuning import tune_gc
from actors.malloc_tuning import keep_freed_memory
from actors.run_files import RunDirectory
from ledger.catch_up import catch_up
from ledger.jsonl import FsyncPolicy, JsonlWriter, cut_encoded, encode_events
from ledger.parquet import (ARROW_SCHEMA, DEFAULT_ROW_GROUP_EVENTS, EVENT_FIELDS_SCHEMA, ParquetLedgerWriter, fields_from_ipc,
                            numbered_table, table_from_ipc, table_to_ipc)
from mesh.core.errors import LedgerError
from actors.memory import rss_bytes

MAX_PARQUET_BATCHES_IN_FLIGHT = 4
MAX_SINK_STARTS = 4  # a sink that fails is replaced three times; then Parquet stops (the JSONL goes on)
PARQUET_MIN_EVENTS = 2_000  # smaller commits are gathered before they go to the sink...
PARQUET_MAX_WAIT_S = 0.2  # ...for at most this long
DEFAULT_MAX_COMMIT_EVENTS = 200_000
MAX_PENDING_APPENDS = 1_000  # Ray runs at most this many appends at once; the rest wait in Ray's queue

logger = logging.getLogger("tollmesh.ledger_writer")


class _Append(NamedTuple):
    """An append waiting for the group commit: its events (``ledger.jsonl.cut_encoded``), its caller's
    future, its Parquet rows."""

    rests: list[bytes]
    done: asyncio.Future
    rows: Optional[list]


class NumberedRows(NamedTuple):
    """Rows of the ledger's Parquet schema that the writer numbered and sealed, on their way to the
    sink as one Arrow IPC stream (``ledger.parquet.table_to_ipc``: Ray pickles a table ~16x slower)."""

    ipc: pa.Buffer


@ray.remote(num_cpus=0, max_restarts=0)
class ParquetSink:
    """Writes ledger lines to the day-partitioned Parquet dataset under ``root``.

    It waits for the dataset's lock (a sink or writer that died drops it with its process),
    then its first call, :meth:`catch_up`, writes what the dataset lacks of the JSONL.
    """

    def __init__(self, root: str, row_group_events: int = DEFAULT_ROW_GROUP_EVENTS) -> None:
        keep_freed_memory()
        self._writer = ParquetLedgerWriter(root, row_group_events=row_group_events)

    def catch_up(self, jsonl_path: str, through_seq: int) -> int:
        """Write the events up to ``through_seq`` that the dataset's whole files lack; return how many."""
        return catch_up(self._writer, jsonl_path, through_seq=through_seq)

    def append_lines(self, blob: bytes, events: int) -> None:
        self._writer.append_lines(blob, events)

    def append_pieces(self, pieces: list[bytes | NumberedRows]) -> None:
        """Rows in seq order: whole ledger lines (bytes), or rows already of the Parquet schema."""
        for piece in pieces:
            if isinstance(piece, bytes):
                self._writer.append_lines(piece, piece.count(b"\n"))
            elif isinstance(piece, NumberedRows):
                self._writer.append_table(table_from_ipc(piece.ipc, ARROW_SCHEMA, "numbered rows"))
            else:
                raise LedgerError(f"pieces: expected ledger lines (bytes) or NumberedRows, got {type(piece).__name__}")

    def process(self) -> tuple[int, int]:
        """The sink's pid and resident memory in bytes."""
        return os.getpid(), rss_bytes()

    def close(self) -> list[str]:
        """Write out what is buffered, close every file; return the files written."""
        self._writer.close()
        return [str(p) for p in self._writer.files_written]


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0, max_concurrency=MAX_PENDING_APPENDS)
class LedgerWriterActor:
    """Appends event batches to one JSONL ledger family (and its Parquet dataset), group-committed."""

    def __init__(
        self,
        jsonl_path: str | Path,
        *,
        parquet_dir: Optional[str | Path] = None,
        fsync: str = FsyncPolicy.BATCH.value,
        max_segment_bytes: Optional[int] = None,
        rotate_daily: bool = False,
        row_group_events: int = DEFAULT_ROW_GROUP_EVENTS,
        max_commit_events: int = DEFAULT_MAX_COMMIT_EVENTS,
        format_version: Optional[int] = None,
        run_dir: Optional[str | Path] = None,
    ) -> None:
        """``run_dir``: the directory whose files the writer serves to other nodes (:mod:`actors.run_files`);
        None: the ledger's own (a partition's writer is given the run's, above its ``shard=K``)."""
        tune_gc()
        keep_freed_memory()
        if max_commit_events < 1:
            raise LedgerError(f"max_commit_events={max_commit_events!r}: must be at least 1")
        self._jsonl = JsonlWriter(jsonl_path, fsync, max_segment_bytes=max_segment_bytes, rotate_daily=rotate_daily,
                                  format_version=format_version)
        self._jsonl_path = str(jsonl_path)
        self._run_dir = RunDirectory(Path(run_dir if run_dir is not None else Path(jsonl_path).absolute().parent))
        self._parquet = None if parquet_dir is None else (str(parquet_dir), row_group_events)
        self._sink: Optional[ray.actor.ActorHandle] = None
        self._sink_starts = 0
        self._max_commit_events = max_commit_events
        self._waiting: deque[_Append] = deque()
        self._last_turn: Optional[asyncio.Future] = None  # set once the latest append arrived is queued (see _in_turn)
        self._committer: Optional[asyncio.Task] = None
        self._in_flight: deque[ray.ObjectRef] = deque()
        self._closed = False
        self._sink_error: Optional[str] = None
        self._stats = {"appends": 0, "commits": 0, "events": 0}
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._write_lock = threading.Lock()  # the group commit and the fast lane's appends take turns
        self._parquet_pieces: list[bytes | pa.Table] = []  # committed lines or rows, not yet sent to the sink
        self._parquet_events = 0
        self._parquet_timer: Optional[asyncio.TimerHandle] = None
        if self._parquet is not None:
            self._start_sink()

    async def append(self, events: list[dict[str, Any]]) -> tuple[int, int]:
        """Append ``events`` (dicts starting ``"v": 1, "seq": None``); ``(first seq, last seq)`` once durable."""
        _check_batch(events)
        return await self._enqueue(cut_encoded(encode_events(events)))

    async def append_encoded(self, lines: bytes | list, rows: Optional[list[tuple[int, Any]]] = None) -> tuple[int, int]:
        """:meth:`append` for events encoded by :func:`ledger.jsonl.encode_events` in the caller's process.

        The faster way in: encoding bytes on the producer's core costs ~1 us an event,
        sending dicts to an actor ~5 us (pickling them there and back). ``rows``: the events'
        Parquet rows where their producer made them as columns, ``(event count, fields)`` per run of
        the lines in order (fields of :data:`ledger.parquet.EVENT_FIELDS_SCHEMA`, or None: read the
        run's rows from its lines), so the sink need not parse them. ``lines`` may be a list of
        parts, bytes or ObjectRefs of bytes, as fields may be ObjectRefs: the writer reads them
        (Ray moves them from their producer, not through the caller), in the order appends arrive.
        """
        if isinstance(lines, list):
            return await self._in_turn(self._fetched(lines, rows))
        return await self._enqueue(*_checked_append(lines, rows))

    # -- the run directory, for actors on other nodes (actors.run_files) -----------------

    def run_file_segments(self, ledger: str) -> list[str]:
        """The files of the JSONL ledger ``ledger`` (in the run directory), in order."""
        return self._run_dir.segments(ledger)

    def run_file_chunk(self, path: str, offset: int, max_bytes: int) -> bytes:
        """At most ``max_bytes`` of a file of the run directory from ``offset`` (empty at its end)."""
        return self._run_dir.chunk(path, offset, max_bytes)

    def run_file_read(self, path: str) -> Optional[bytes]:
        """A whole file of the run directory, or None if there is none."""
        return self._run_dir.read(path)

    def run_file_write(self, path: str, data: bytes) -> None:
        """Replace a file of the run directory whole."""
        self._run_dir.write(path, data)

    async def bind_loop(self) -> None:
        """Note this actor's event loop, where the fast lane's events go on to Parquet."""
        self._loop = asyncio.get_running_loop()

    def fast_append(self, plan: FastPlan, partition: Optional[int], shards: int, *answers: Any) -> Optional[FastAnswer]:
        """The fast lane's stage: write the call's events (its lock, then its settlement) and answer
        once they are durable. ``partition``: this writer's, in a partitioned ledger (it writes only
        the calls of its shard, None to the others), else None. ``answers``: every shard's lock
        answer, every host's outcome, every shard's settle answer. It writes from the graph's
        thread, holding the same lock as the group commit (a hop to the event loop would cost the
        call ~0.25 ms)."""
        if partition is not None and partition != plan.shard:
            return None
        lock, settle = answers[plan.shard], answers[-shards + plan.shard]
        outcome = answers[shards + plan.host]
        blob = b"".join(answer[1] for answer in (lock, settle) if isinstance(answer, tuple) and answer[2])
        seqs = None
        if blob:
            rests = cut_encoded(blob)
            with self._write_lock:
                if self._closed:
                    raise LedgerError("the ledger writer is closed")
                first_seq = self._jsonl.next_seq
                self._buffer_for_parquet(self._jsonl.append_cut(rests), len(rests))
                self._count_commit(1, len(rests))
            seqs = (first_seq, first_seq + len(rests) - 1)
            self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._send_to_parquet()))
        return FastAnswer(lock, outcome, settle, seqs)

    async def _enqueue(self, rests: list[bytes], rows: Optional[list] = None) -> tuple[int, int]:
        if self._last_turn is not None and not self._last_turn.done():  # an append before it is still being read
            return await self._in_turn(_ready(rests, rows))
        return await self._place(rests, rows)

    async def _in_turn(self, prepared: Awaitable[tuple[list[bytes], Optional[list]]]) -> tuple[int, int]:
        """Queue an append whose events are still being read in the order the appends arrived: it waits
        for the append before it to be queued (or to fail) first."""
        before, turn = self._last_turn, asyncio.get_running_loop().create_future()
        self._last_turn = turn
        try:
            try:
                rests, rows = await prepared
            finally:
                if before is not None:
                    await before
            done = self._place(rests, rows)
        finally:
            turn.set_result(None)
        return await done

    async def _fetched(self, parts: list, rows: Optional[list]) -> tuple[list[bytes], Optional[list]]:
        """The events of ``parts`` and ``rows`` with their ObjectRefs read, checked as :meth:`append_encoded` checks."""
        runs = rows if isinstance(rows, list) else []
        refs = [part for part in parts if isinstance(part, ray.ObjectRef)] + [run[1] for run in runs if _run_of_ref(run)]
        try:
            values = dict(zip(refs, await asyncio.gather(*refs)))
        except Exception as exc:  # noqa: BLE001 - a part lost with its node, or its producer's error: nothing is written
            raise LedgerError(f"lines: a part could not be read ({type(exc).__name__}: {exc})") from None
        parts = [values[part] if isinstance(part, ray.ObjectRef) else part for part in parts]
        if not all(isinstance(part, bytes) for part in parts):
            raise LedgerError("lines: expected parts of bytes (or ObjectRefs of bytes)")
        if runs:
            rows = [(run[0], values[run[1]]) if _run_of_ref(run) else run for run in runs]
        return _checked_append(b"".join(parts), rows)

    def _place(self, rests: list[bytes], rows: Optional[list]) -> asyncio.Future:
        """Queue an append for the group commit; the future of its ``(first seq, last seq)``."""
        if self._closed:
            raise LedgerError("the ledger writer is closed")
        done = asyncio.get_running_loop().create_future()
        self._waiting.append(_Append(rests, done, rows))
        if self._committer is None:
            self._committer = asyncio.create_task(self._commit_waiting())
        return done

    async def close(self) -> dict[str, Any]:
        """Commit what waits, write out the Parquet files and close; return the counters and files."""
        self._closed = True
        if self._committer is not None:
            await self._committer
        files: list[str] = []
        while self._sink is not None:
            sink = self._sink
            try:
                await self._flush_parquet()
                await asyncio.gather(*self._in_flight)
                files = await sink.close.remote()
                break
            except Exception as exc:  # noqa: BLE001 - a new sink catches up from the JSONL, which is whole
                self._replace_sink(sink, exc)
        with self._write_lock:
            self._jsonl.close()
        return {**self.stats(), "parquet_files": files}

    async def memory(self) -> dict[str, Any]:
        """The writer's and its Parquet sink's process memory (RSS), and the sink's pid."""
        sink_pid = sink_rss = None
        if self._sink is not None:
            try:
                sink_pid, sink_rss = await self._sink.process.remote()
            except Exception:  # noqa: BLE001 - a failed sink is reported by stats; memory says what it can
                sink_pid = sink_rss = None
        return {"rss_bytes": rss_bytes(), "parquet_sink_rss_bytes": sink_rss, "parquet_sink_pid": sink_pid}

    def stats(self) -> dict[str, Any]:
        """Appends, commits (group commits gather several appends), events written, the next seq, the pid."""
        return {
            **self._stats, "next_seq": self._jsonl.next_seq, "last_hash": self._jsonl.last_hash,
            "pid": os.getpid(), "parquet_error": self._sink_error, "parquet_sink_starts": self._sink_starts,
        }

    async def _commit_waiting(self) -> None:
        try:
            while self._waiting:
                batch = self._take_commit()
                rests = batch[0].rests if len(batch) == 1 else [rest for append in batch for rest in append.rests]
                count = len(rests)
                try:  # appends arriving during the write and its fsync wait, then go out together
                    with self._write_lock:
                        first_seq = self._jsonl.next_seq
                        written = self._jsonl.append_cut(rests)
                        self._buffer_for_parquet(written, count, _runs_of(batch), first_seq)
                        self._count_commit(len(batch), count)
                except Exception as exc:  # noqa: BLE001 - every caller of the batch hears of it
                    for append in batch:
                        append.done.set_exception(exc)
                    continue
                self._acknowledge(batch, first_seq)
                await self._send_to_parquet()
        finally:
            self._committer = None

    def _take_commit(self) -> list[_Append]:
        batch, size = [], 0
        while self._waiting and (not batch or size + len(self._waiting[0].rests) <= self._max_commit_events):
            append = self._waiting.popleft()
            batch.append(append)
            size += len(append.rests)
        return batch

    def _acknowledge(self, batch: list[_Append], first_seq: int) -> None:
        seq = first_seq
        for append in batch:
            append.done.set_result((seq, seq + len(append.rests) - 1))
            seq += len(append.rests)

    def _count_commit(self, appends: int, events: int) -> None:
        self._stats["appends"] += appends
        self._stats["commits"] += 1
        self._stats["events"] += events

    def _buffer_for_parquet(self, lines: bytes, events: int, runs: Optional[list] = None, first_seq: int = 0) -> None:
        """Keep committed lines for the sink, in seq order (the caller holds ``_write_lock``); where
        ``runs`` (``(event count, fields or None)`` each, from ``first_seq``) hold rows made as
        columns, those rows numbered and sealed as their lines were, instead of their lines."""
        if self._sink is None or not lines:
            return
        pieces = [lines]
        if runs is not None and any(fields is not None for _, fields in runs) and self._jsonl.format_version == 2:
            try:
                pieces = _pieces(lines, runs, first_seq, self._jsonl.seals)
            except Exception as exc:  # noqa: BLE001 - the lines are on disk: the sink parses them instead
                logger.warning("Parquet rows from columns failed (%s: %s): the sink reads these lines", type(exc).__name__, exc)
        self._parquet_pieces.extend(pieces)
        self._parquet_events += events

    async def _send_to_parquet(self) -> None:
        """Small commits (single calls) wait in the buffer, up to ``PARQUET_MIN_EVENTS`` or
        ``PARQUET_MAX_WAIT_S``, and go to the sink together: a Ray call per commit would cost
        the single-call path more than the commit itself."""
        if self._sink is None or not self._parquet_pieces:
            return
        if self._parquet_events >= PARQUET_MIN_EVENTS:
            await self._flush_parquet()
        elif self._parquet_timer is None:
            self._parquet_timer = asyncio.get_running_loop().call_later(
                PARQUET_MAX_WAIT_S, lambda: asyncio.ensure_future(self._flush_parquet()))

    async def _flush_parquet(self) -> None:
        if self._parquet_timer is not None:
            self._parquet_timer.cancel()
            self._parquet_timer = None
        with self._write_lock:
            if self._sink is None or not self._parquet_pieces:
                return
            pieces, events = self._parquet_pieces, self._parquet_events
            self._parquet_pieces, self._parquet_events = [], 0
            sink = self._sink
            if all(isinstance(piece, bytes) for piece in pieces):
                self._in_flight.append(sink.append_lines.remote(b"".join(pieces), events))
            else:  # rows from columns among them: the sink parses only the lines (ParquetLedgerWriter joins runs of them)
                pieces = [piece if isinstance(piece, bytes) else NumberedRows(table_to_ipc(piece)) for piece in pieces]
                self._in_flight.append(sink.append_pieces.remote(pieces))
        try:  # answers that are in are read now, so a failed sink is heard of at once
            while self._in_flight and (len(self._in_flight) > MAX_PARQUET_BATCHES_IN_FLIGHT or _is_ready(self._in_flight[0])):
                await self._in_flight.popleft()
        except Exception as exc:  # noqa: BLE001 - a new sink catches up from the JSONL, which is whole
            self._replace_sink(sink, exc)

    def _start_sink(self) -> None:
        """Start a Parquet sink on this node whose first call catches the dataset up with the
        JSONL written so far: what a sink or writer that died left unwritten, the buffer dropped here."""
        root, row_group_events = self._parquet
        self._sink_starts += 1
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        with self._write_lock:
            through_seq = self._jsonl.next_seq - 1
            self._parquet_pieces, self._parquet_events = [], 0
            self._sink = ParquetSink.options(scheduling_strategy=here).remote(root, row_group_events)
            self._in_flight.append(self._sink.catch_up.remote(self._jsonl_path, through_seq))

    def _replace_sink(self, failed: ray.actor.ActorHandle, exc: Exception) -> None:
        """``failed`` failed: stop it and start another (at most ``MAX_SINK_STARTS`` in all); then Parquet
        stops and the JSONL goes on (``tollmesh ledger compact`` rebuilds the dataset). A failure of
        a sink already replaced (heard late by another caller) changes nothing."""
        if failed is not self._sink:
            return
        with self._write_lock:
            self._sink = None
            self._parquet_pieces, self._parquet_events = [], 0
        self._in_flight.clear()
        ray.kill(failed)  # its process drops the dataset's lock as it dies; the next sink waits for that
        if self._sink_starts >= MAX_SINK_STARTS:
            logger.error("the Parquet sink failed %d times, Parquet writing stops (run tollmesh ledger compact): %s",
                         self._sink_starts, exc)
            self._sink_error = f"{type(exc).__name__}: {exc}"
            return
        logger.warning("the Parquet sink failed (%s: %s): starting another, which catches up from the JSONL",
                       type(exc).__name__, exc)
        self._start_sink()


def _is_ready(ref: ray.ObjectRef) -> bool:
    return bool(ray.wait([ref], timeout=0)[0])


def _runs_of(batch: list[_Append]) -> Optional[list]:
    """The commit's runs of ``(event count, fields or None)``, in order; None if none has fields."""
    if all(append.rows is None for append in batch):
        return None
    return [run for append in batch for run in (append.rows if append.rows is not None else [(len(append.rests), None)])]


def _pieces(lines: bytes, runs: list, first_seq: int, seals: dict[int, str]) -> list[bytes | pa.Table]:
    """The commit's Parquet pieces in seq order: numbered rows where a run has fields, else its lines."""
    ends = None
    pieces: list[bytes | pa.Table] = []
    start = 0
    for count, fields in runs:
        if fields is not None:
            pieces.append(numbered_table(fields, first_seq + start, seals))
        else:
            if ends is None:  # the end of each line, found once per commit that needs them
                ends = np.flatnonzero(np.frombuffer(lines, np.uint8) == 10) + 1
            begin = 0 if start == 0 else int(ends[start - 1])
            pieces.append(lines[begin:int(ends[start + count - 1])])
        start += count
    return pieces


def _run_of_ref(run: Any) -> bool:
    """A run of ``rows`` whose fields are an ObjectRef still to read."""
    return isinstance(run, tuple) and len(run) == 2 and isinstance(run[1], ray.ObjectRef)


async def _ready(rests: list[bytes], rows: Optional[list]) -> tuple[list[bytes], Optional[list]]:
    return rests, rows


def _checked_append(lines: Any, rows: Any) -> tuple[list[bytes], Optional[list]]:
    """The events of :meth:`LedgerWriterActor.append_encoded` cut and checked, with their checked rows."""
    if not isinstance(lines, bytes) or not lines:
        raise LedgerError(f"lines={type(lines).__name__}: expected non-empty bytes of encoded events")
    rests = cut_encoded(lines)
    return rests, None if rows is None else _checked_rows(rows, len(rests))


def _checked_rows(rows: Any, events: int) -> list[tuple[int, Optional[pa.Table]]]:
    """``rows`` of :meth:`LedgerWriterActor.append_encoded` (fields as tables or Arrow IPC streams), checked:
    runs that add up to the lines' events, fields of the event schema; the fields as tables."""
    if not isinstance(rows, list) or not all(isinstance(r, tuple) and len(r) == 2 for r in rows):
        raise LedgerError("rows: expected a list of (event count, fields or None)")
    total, checked = 0, []
    for count, fields in rows:
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise LedgerError(f"rows: an event count must be an int of at least 1, got {count!r}")
        if isinstance(fields, bytes):
            fields = fields_from_ipc(fields)
        if fields is not None and (not isinstance(fields, pa.Table) or fields.num_rows != count
                                   or fields.schema != EVENT_FIELDS_SCHEMA):
            raise LedgerError(f"rows: fields of {count} events must be a table of {count} rows of the event schema")
        checked.append((count, fields))
        total += count
    if total != events:
        raise LedgerError(f"rows: the runs hold {total} events, the lines {events}")
    return checked


def _check_batch(events: Any) -> None:
    if not isinstance(events, list) or not events:
        raise LedgerError(f"events={type(events).__name__}: expected a non-empty list of event dicts")
    for index, event in enumerate(events):
        if not isinstance(event, dict) or "kind" not in event or "ts_us" not in event:
            raise LedgerError(f"events[{index}]: expected an event dict with 'kind' and 'ts_us', got {event!r:.80}")
