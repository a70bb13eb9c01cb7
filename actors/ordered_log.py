"""The coordinator's ordered log: shard answers go to the ledger writer in the order the calls were made.

Every budget shard runs the coordinator's calls one at a time, in the order they were
sent. Writing their events to the ledger in that same order (not in the order the
answers happen to arrive) keeps each shard's events in the order it applied them, so
replaying the ledger rebuilds every shard exactly and timestamps never go back.

:meth:`OrderedLog.push` takes the ObjectRef of a shard call as it is sent and returns a
:class:`LogEntry`: ``answer`` resolves to the shard's answer, ``durable`` to the ledger
seq of its first event once the writer has acknowledged it (group commit: answers that
are ready together go out in one append; at most ``max_appends_in_flight`` appends are
in flight). A failed shard call writes nothing (``durable`` resolves to None; its
caller retries). A failed append fails ``durable`` with :class:`LedgerAppendLostError`:
the events may or may not be on disk. Later answers may depend on them, so the log
then writes nothing more: every entry fails the same way until :meth:`OrderedLog.resume`,
which the coordinator calls once it has rebuilt the shards from the ledger.

An answer made as columns (``answer[0].parquet_rows``, see :class:`actors.shard_core.ColumnsAnswer`)
sends its Parquet rows with its lines, so the writer's sink does not parse them again; where its
lines and rows are refs (a large payload), the log passes them on unread.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any, Awaitable, Callable, Optional

from mesh.core.errors import LedgerError

logger = logging.getLogger("tollmesh.ordered_log")

DEFAULT_MAX_APPEND_EVENTS = 100_000
DEFAULT_MAX_APPENDS_IN_FLIGHT = 4


class LedgerAppendLostError(LedgerError):
    """An append failed (the writer died or refused it): its events may or may not be on disk."""


class LogEntry:
    """One shard call's place in the log (``partition``: which log of a partitioned ledger it is in;
    ``credited``: what a partitioned ledger's coordinator sets while the entry's credits are on their way)."""

    __slots__ = ("answer", "durable", "partition", "credited")

    def __init__(self, answer: asyncio.Future, partition: int = 0) -> None:
        self.answer = answer
        self.durable: asyncio.Future = asyncio.get_running_loop().create_future()
        self.partition = partition
        self.credited: list[asyncio.Future] = []


#: ``append(lines) -> awaitable of (first seq, last seq)``, sent when called: ``writer.append_encoded.remote``.
Appender = Callable[..., Awaitable[tuple[int, int]]]  # (lines) or (lines, rows): see LedgerWriterActor.append_encoded


class OrderedLog:
    """See the module doc. Lives on the coordinator's event loop."""

    def __init__(
        self,
        append: Appender,
        *,
        on_lost: Optional[Callable[[], None]] = None,
        on_durable: Optional[Callable[[list[tuple]], None]] = None,
        on_written: Optional[Callable[[list[tuple[LogEntry, tuple, int]]], None]] = None,
        max_append_events: int = DEFAULT_MAX_APPEND_EVENTS,
        max_appends_in_flight: int = DEFAULT_MAX_APPENDS_IN_FLIGHT,
        partition: int = 0,
    ) -> None:
        """``on_written(entries)``: after each append, before its entries' ``durable`` resolve, the
        ``(entry, answer, first seq)`` of each entry that wrote events, in log order. ``partition``:
        the partition this log writes (set on its entries)."""
        self._append = append
        self._on_lost = on_lost
        self._on_durable = on_durable
        self._on_written = on_written
        self.partition = partition
        self.lost: Optional[LedgerAppendLostError] = None  # set from a lost append until resume()
        self._max_append_events = max_append_events
        self._slots = asyncio.Semaphore(max_appends_in_flight)
        self._entries: deque[LogEntry] = deque()
        self._last: Optional[LogEntry] = None  # the last entry pushed (taken by the pump or not)
        self._wakeup = asyncio.Event()
        self._pump = asyncio.get_running_loop().create_task(self._run())
        self._appends: set[asyncio.Task] = set()

    def push(self, answer: Awaitable[Any]) -> LogEntry:
        """Queue the answer of a shard call just sent (an ObjectRef, or any awaitable of a ShardAnswer)."""
        entry = LogEntry(asyncio.ensure_future(answer), self.partition)
        self._entries.append(entry)
        self._last = entry
        self._wakeup.set()
        return entry

    def push_answer(self, answer: tuple) -> LogEntry:
        """Queue an answer made here (the coordinator's own events)."""
        future = asyncio.get_running_loop().create_future()
        future.set_result(answer)
        return self.push(future)

    @property
    def pending_entries(self) -> int:
        return len(self._entries)

    def resume(self) -> None:
        """Write again after a lost append (the shards were rebuilt from the ledger)."""
        self.lost = None
        self._wakeup.set()

    async def drain(self) -> None:
        """Wait until every entry pushed so far is written (or failed).

        Entries resolve in order, so the last one pushed decides: it may already have left the
        queue, in a batch the pump holds while it waits for an append slot.
        """
        if self._last is not None:
            await asyncio.wait([self._last.durable])
        if self._appends:
            await asyncio.wait(set(self._appends))

    async def close(self) -> None:
        await self.drain()
        self._pump.cancel()

    # -- the pump ---------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            if not self._entries:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await asyncio.wait([self._entries[0].answer])  # the head decides the order
            batch = self._take_ready()
            await self._slots.acquire()  # a write in flight may yet find its append lost
            if self.lost is not None:
                self._slots.release()
                self._fail(batch, self.lost)
                continue
            written = [answer for _, answer in batch if answer is not None and answer[2]]
            pending = self._send(written) if written else None  # sent now, so appends reach the writer in order
            task = asyncio.get_running_loop().create_task(self._write(batch, pending))
            self._appends.add(task)
            task.add_done_callback(self._appends.discard)

    def _send(self, written: list[tuple]) -> Awaitable[tuple[int, int]]:
        """Append the answers' lines: one bytes, or a list of them where some are refs the writer reads
        (see :func:`actors.budget_shard.with_payload`); a columnar answer's Parquet rows go with them."""
        parts = [answer[1] for answer in written]
        lines = b"".join(parts) if all(isinstance(part, bytes) for part in parts) else parts
        rows = [(answer[2], getattr(answer[0], "parquet_rows", None)) for answer in written]
        if any(fields is not None for _, fields in rows):
            return self._append(lines, rows)
        return self._append(lines)

    def _take_ready(self) -> list[tuple[LogEntry, Optional[tuple]]]:
        """The ready entries at the head, up to the append size."""
        batch: list[tuple[LogEntry, Optional[tuple]]] = []
        events = 0
        entries = self._entries
        while entries and entries[0].answer.done() and events < self._max_append_events:
            entry = entries.popleft()
            answer = None if entry.answer.cancelled() or entry.answer.exception() is not None else entry.answer.result()
            batch.append((entry, answer))
            events += answer[2] if answer is not None else 0
        return batch

    @staticmethod
    def _fail(batch: list[tuple[LogEntry, Optional[tuple]]], error: Exception) -> None:
        for entry, answer in batch:
            if not entry.durable.done():
                if answer is None:
                    entry.durable.set_result(None)  # its shard call failed: nothing to write anyway
                else:
                    entry.durable.set_exception(error)

    async def _write(self, batch: list[tuple[LogEntry, Optional[tuple]]], pending: Optional[Awaitable]) -> None:
        try:
            first_seq = None
            if pending is not None:
                try:
                    first_seq, _ = await pending
                except Exception as exc:  # noqa: BLE001 - every entry of the append hears of it
                    logger.error("ledger append lost (%s): %s", type(exc).__name__, exc)
                    self.lost = LedgerAppendLostError(f"ledger append failed, events may or may not be on disk: {exc}")
                    self._fail(batch, self.lost)
                    if self._on_lost is not None:
                        self._on_lost()
                    return
            if self._on_durable is not None:
                marks = [answer[6] for _, answer in batch if answer is not None and len(answer) > 6 and answer[6]]
                if marks:
                    self._on_durable(marks)
            seq, seqs, written = first_seq, [], []
            for entry, answer in batch:
                count = answer[2] if answer is not None else 0
                seqs.append(seq if count else None)
                if count:
                    written.append((entry, answer, seq))
                    seq += count
            if self._on_written is not None and written:
                try:
                    self._on_written(written)
                except Exception:  # noqa: BLE001 - a bug there must not leave these entries waiting forever
                    logger.exception("the log's on_written hook failed; what it missed is repaired from the ledger")
            for (entry, _), at in zip(batch, seqs):
                entry.durable.set_result(at)
        finally:
            self._slots.release()
