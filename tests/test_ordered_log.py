"""The coordinator's ordered log (``actors.ordered_log``), on its own: no Ray, a fake writer.

``drain`` is what a shard's rebuild stands on: the coordinator marks the shard stale, drains
the log, and then the shard replays the ledger. Whatever the log took before ``drain`` must be
on disk (or failed) when it returns, or the rebuilt shard misses events that land later.
"""

from __future__ import annotations

import asyncio

import pytest

from actors.ordered_log import LedgerAppendLostError, OrderedLog


class SlowWriter:
    """Appends that finish when the test says so; what reached the disk, in order."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.gates: list[asyncio.Event] = []
        self.next_seq = 0

    def append(self, blob: bytes):
        gate = asyncio.Event()
        self.gates.append(gate)
        return asyncio.ensure_future(self._finish(blob, gate))

    async def _finish(self, blob: bytes, gate: asyncio.Event) -> tuple[int, int]:
        await gate.wait()
        self.written.append(blob)
        first, self.next_seq = self.next_seq, self.next_seq + blob.count(b"\n")
        return first, self.next_seq - 1


def answer(lines: bytes) -> tuple:
    """A shard answer whose events are ``lines``."""
    return ([], lines, lines.count(b"\n"), [], [], [], None)


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_drain_waits_for_a_batch_taken_but_not_yet_sent():
    """The pump takes a ready batch and waits for the append slot: that batch is in no queue, yet
    drain must wait for it (a shard rebuilt then would miss its events, which land right after)."""
    writer = SlowWriter()
    log = OrderedLog(writer.append, max_appends_in_flight=1)
    first = log.push_answer(answer(b"a\n"))
    await settle()  # the pump sent the first append; it is in flight
    second = log.push_answer(answer(b"b\n"))
    await settle()  # the pump took the second and waits for the slot
    drained = asyncio.ensure_future(log.drain())
    await settle()
    writer.gates[0].set()
    await settle()
    assert not drained.done() or second.durable.done(), "drain returned before the taken batch was written"
    writer.gates[-1].set()
    await asyncio.wait_for(drained, 1)
    assert await first.durable == 0 and await second.durable == 1
    assert writer.written == [b"a\n", b"b\n"]
    await log.close()


async def test_drain_returns_once_everything_pushed_is_written_or_failed():
    writer = SlowWriter()
    log = OrderedLog(writer.append, max_appends_in_flight=2)
    entries = [log.push_answer(answer(b"x\n" * n)) for n in (1, 2, 3)]
    drained = asyncio.ensure_future(log.drain())
    for _ in range(6):
        await settle()
        for gate in writer.gates:
            gate.set()
    await asyncio.wait_for(drained, 1)
    assert all(e.durable.done() for e in entries)
    assert b"".join(writer.written) == b"x\n" * 6
    await log.close()


async def test_a_lost_append_fails_every_later_entry_until_resume():
    lost: list[bool] = []

    async def broken(_blob: bytes):
        raise RuntimeError("the writer died")

    log = OrderedLog(lambda blob: asyncio.ensure_future(broken(blob)), on_lost=lambda: lost.append(True))
    entry = log.push_answer(answer(b"a\n"))
    with pytest.raises(LedgerAppendLostError):
        await entry.durable
    later = log.push_answer(answer(b"b\n"))
    with pytest.raises(LedgerAppendLostError):
        await later.durable
    assert lost == [True]
    await log.close()
