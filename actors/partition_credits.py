"""A partitioned ledger's credits: each release paid to another partition's agent is written there once, in order.

With balances, a release that shard A pays to an agent of shard B sends the funds out of A's
book; B receives them by a ``credit`` event in its own partition (:mod:`ledger.partitions`),
which names the release by ``(A, seq)``. B takes a credit only past the highest seq it has
from A (its mark, rebuilt from its partition), so each pair's credits must reach it in A's
seq order, and a batch sent again after a crash is harmless. The coordinator's part:

- :meth:`PartitionCredits.on_written`: the ordered log's hook, called in log order once an
  append is on disk: the append's releases to other partitions go to the outbox of their
  (A, B) pair, in A's seq order; each entry's ``credited`` futures resolve once they are written.
- one forwarder task per pair sends what waits as one ``credit_events`` call through B's log;
  if B fails, B is rebuilt and the same batch is sent again.
- :meth:`PartitionCredits.repair`: after a coordinator restart or a lost append (the shards just
  rebuilt, nothing else running), the credits the ledger lacks
  (:func:`ledger.credits.all_missing_credits`). Forwarders wait for that recovery, so the two
  never interleave; what a forwarder sends afterwards is either credited already (skipped) or
  of a release written after the repair read the ledger (a later seq).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict, deque
from typing import Any

from actors.ordered_log import LogEntry
from actors.shard_core import ColumnsAnswer
from actors.wire import pack
from ledger.credits import all_missing_credits
from mesh.core.sharding import shard_of

logger = logging.getLogger("tollmesh.coordinator")

MAX_CREDIT_ATTEMPTS = 4

Pair = tuple[int, int]  # (source partition, target partition)
Credit = tuple[str, int, int, str, str]  # (target agent, amount_micros, from_seq, task id, source agent)


class PartitionCredits:
    """See the module doc. Lives on the coordinator's event loop."""

    def __init__(self, coordinator: Any) -> None:
        self.c = coordinator
        self._outbox: dict[Pair, deque[tuple[list[Credit], asyncio.Future]]] = {}
        self._forwarders: dict[Pair, asyncio.Task] = {}

    def on_written(self, written: list[tuple[LogEntry, tuple, int]]) -> None:
        """Queue the credits of each ``(entry, answer, first seq)`` just written (in log order)."""
        shards = self.c.config.shards
        loop = asyncio.get_running_loop()
        for entry, answer, first_seq in written:
            credits = credits_of(answer)
            if not credits:
                continue
            by_target: dict[int, list[Credit]] = defaultdict(list)
            for agent, amount, index, task_id, source in credits:
                by_target[shard_of(agent, shards)].append((agent, amount, first_seq + index, task_id, source))
            for target, items in by_target.items():
                pair = (entry.partition, target)
                done = loop.create_future()
                self._outbox.setdefault(pair, deque()).append((items, done))
                entry.credited.append(done)
                if pair not in self._forwarders:
                    self._forwarders[pair] = loop.create_task(self._forward(pair))

    async def drain(self) -> None:
        """Wait until every credit queued so far is written (or given up)."""
        while self._forwarders:
            await asyncio.wait(list(self._forwarders.values()))

    async def repair(self) -> bool:
        """Write every credit the ledger lacks (see the module doc); only while nothing else runs.
        False if a write failed (the recovery goes round again)."""
        c = self.c
        try:
            marks = await asyncio.gather(*(shard.credit_marks.remote() for shard in c._shards))
            missing = all_missing_credits(c.config.ledger_path, list(marks))
        except Exception as exc:  # noqa: BLE001 - a shard died again, or the ledger cannot be read now
            logger.warning("credit repair could not start (%s: %s)", type(exc).__name__, exc)
            return False
        written, ok = 0, True
        for target, releases in sorted(missing.items()):
            by_source: dict[int, list[Credit]] = defaultdict(list)
            for source, event in releases:
                by_source[source].append((event["target_agent"], event["amount_micros"], event["seq"],
                                          event["task_id"], event["source_agent"]))
            for source, items in sorted(by_source.items()):
                if await self._write((source, target), items, recovering=True):
                    written += len(items)
                else:
                    ok = False
        if written:
            logger.warning("%d credits the ledger lacked were written (their releases were on disk, their credits not)", written)
        return ok

    async def _forward(self, pair: Pair) -> None:
        queue = self._outbox[pair]
        try:
            while queue:
                batch = list(queue)
                queue.clear()
                ok = await self._write(pair, [item for items, _ in batch for item in items])
                for _, done in batch:
                    if not done.done():
                        done.set_result(ok)
        finally:
            self._forwarders.pop(pair, None)  # no await since the queue was seen empty: nothing queued meanwhile

    async def _write(self, pair: Pair, items: list[Credit], *, recovering: bool = False) -> bool:
        """One ``credit_events`` call on the target shard through its log, durable; retried after a rebuild.
        ``recovering``: called by the recovery itself (which must not wait for itself)."""
        c = self.c
        source, target = pair
        for _ in range(MAX_CREDIT_ATTEMPTS):
            if not recovering:
                await c._wait_recovered(target)
            ref = c._shards[target].credit_events.remote(pack(items), source, c._clock.now_us())
            entry = c._log_of(target).push(ref)
            try:
                await entry.answer
            except Exception:  # noqa: BLE001 - the shard died or was stale: rebuild it, send again
                if recovering:
                    return False  # the recovery goes round again
                await c._recover_shard(target)
                continue
            try:
                await entry.durable
            except Exception:  # noqa: BLE001 - a lost append: the recovery's repair writes what the ledger lacks
                return False
            return True
        logger.error("shard %d: %d credits from shard %d not written; the next recovery writes them", target, len(items), source)
        return False


def credits_of(answer: tuple) -> list[tuple]:
    """The credits a shard answer holds: ``(agent, micros, event index, task id, source)`` each."""
    first = answer[0]
    if isinstance(first, ColumnsAnswer):
        return first.credits()
    return answer[3] or []
