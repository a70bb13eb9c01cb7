"""Coalesce concurrent submissions from one event loop into one coordinator call.

A Ray call costs ~1 ms here, whatever it carries; a thousand handlers each calling
another agent would make a thousand. A :class:`Coalescer` gathers the
submissions made during one turn of the event loop and sends them as one
``submit`` (the coordinator batches them together), then hands each caller its
own results. The Tollbooth API's async charges and settlements go the same way.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable


class Coalescer:
    """One per event loop and remote method; ``await submit(items)`` as if calling ``send(items)``.

    ``send(items)`` starts the remote call (``coordinator.submit.remote`` and the like) and
    answers an ObjectRef of one result per item.
    """

    def __init__(self, send: Callable[[list], Any]) -> None:
        self._send = send
        self._pending: list[tuple[list[tuple], asyncio.Future]] = []
        self._tasks: set[asyncio.Task] = set()

    async def submit(self, wire: list) -> list:
        """The results for ``wire`` (sent with what else waits this loop turn)."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((wire, done))
        return await done

    def _flush(self) -> None:
        taken, self._pending = self._pending, []
        ref = self._send([item for wire, _ in taken for item in wire])
        task = asyncio.get_running_loop().create_task(self._deliver(ref, taken))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _deliver(ref: Any, taken: list[tuple[list[tuple], asyncio.Future]]) -> None:
        try:
            results = await ref
        except Exception as exc:  # noqa: BLE001 - every caller of the call hears of it
            for _, done in taken:
                if not done.done():
                    done.set_exception(exc)
            return
        start = 0
        for wire, done in taken:
            if not done.done():
                done.set_result(results[start:start + len(wire)])
            start += len(wire)
