"""One batch of messages through the mesh, a record per call: the coordinator's per-message path.

What takes it: x402-paid calls (verified for the batch at once), calls of the Tollbooth API's
shape, redelivery after a crash, and every batch :func:`~actors.columnar_batch.is_plain` refuses.
Its four hops are the module doc's of :mod:`actors.coordinator` (lock, deliver, settle, record);
:mod:`actors.columnar_batch` is its twin for plain calls as arrays. A result is a
:func:`mesh.calls.agent.result_to_wire` tuple.

>>> batch = RecordBatch(coordinator)                                  # doctest: +SKIP
>>> results = await batch.run(messages)                              # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Optional

import ray

from actors.agent_host import OK, TIMEOUT, refund_reason
from actors.budget_shard import LOCK, REJECT, ShardAnswer
from actors.ordered_log import LogEntry
from actors.wire import pack
from mesh.calls.agent import WireMessage
from mesh.core.clock import iso_utc
from mesh.core.records import Reason, SettlementStatus, TollRecord, record_to_wire
from mesh.core.sharding import shard_of
from mesh.booth.verifier import verify_many_async

if TYPE_CHECKING:
    from actors.coordinator import EscrowCoordinator

logger = logging.getLogger("tollmesh.coordinator")

# Records travel as plain tuples (mesh.core.records.record_to_wire); they are read by index.
_TASK, _SOURCE, _STATUS, _REASON = 0, 1, 5, 11
_LOCKED, _RELEASED = SettlementStatus.ESCROW_LOCKED.value, SettlementStatus.RELEASED.value
_SETTLE_LOST = "could not settle: shard unavailable"  # the escrow stays locked until it expires
_APPEND_LOST = "ledger append lost"
#: Notes of results whose end the ledger may not hold, by the name ``submit_counted`` counts them under.
FAULTS = {_SETTLE_LOST: "settle_unavailable", _APPEND_LOST: "ledger_append_lost"}


class RecordBatch:
    """The per-message path of one batch, over its coordinator's shards, hosts and log (see the module doc)."""

    def __init__(self, coordinator: EscrowCoordinator) -> None:
        self.c = coordinator

    async def run(self, messages: list[WireMessage]) -> list[tuple]:
        """The batch's results as :func:`mesh.calls.agent.result_to_wire` tuples, in order."""
        started = time.perf_counter()
        results: list[Optional[tuple]] = [None] * len(messages)
        payments = await self._verify_payments(messages)
        calls = BatchCalls()
        locked = await self._lock(messages, payments, results, calls)
        outcomes = await self._deliver(messages, locked)
        await self._settle(locked, outcomes, results, calls)
        await self._await_durable(calls, locked, outcomes, results)
        self.c._metrics.batch(len(messages), (time.perf_counter() - started) * 1_000, self.c._count.amounts["locked"])
        return results  # type: ignore[return-value]

    async def _verify_payments(self, messages: list[WireMessage]) -> dict[int, Reason]:
        """x402: the reason each paid message fails verification (absent: it verified, or carried no payment).

        A verifier with ``check_payments`` checks the batch's payments at once (see :mod:`mesh.booth.verifier`)."""
        verifier = self.c._verifier
        if verifier is None:
            return {}
        paid = [(i, m) for i, m in enumerate(messages) if m[5] and m[6] and m[7] is None]
        if not paid:
            return {}
        items = [(m[0], m[5], m[6], self._price_of(m)) for _, m in paid]
        reasons = await verify_many_async(verifier, items, timeout_s=self.c.config.x402_verify_timeout_s)
        return {i: reason for (i, _), reason in zip(paid, reasons) if reason is not None}

    def _price_of(self, message: WireMessage) -> int:
        entry = self.c._directory.agents.get(message[2])
        price = entry[1].price_micros(message[3]) if entry is not None else None
        return price or 0

    async def _lock(
        self, messages: list[WireMessage], payments: dict[int, Reason], results: list, calls: BatchCalls,
    ) -> list[tuple[int, tuple]]:
        """Lock (or refuse) every message on its caller's shard; the locks to deliver (wire records), by
        message index: the fresh ones, and in :meth:`set_redelivery` mode the open ones of a task id seen before."""
        ops: dict[int, list[tuple]] = defaultdict(list)
        where: dict[int, list[int]] = defaultdict(list)
        agents, shards = self.c._directory.agents, self.c.config.shards
        for i, (task_id, source, target, method, _, wallet, signature, problem) in enumerate(messages):
            entry = agents.get(target)
            price = entry[1].price_micros(method) if entry is not None else None
            if problem is not None:
                action, reason = REJECT, problem
            elif entry is None:
                action, reason = REJECT, Reason.UNKNOWN_AGENT.value
            elif price is None:
                action, reason = REJECT, Reason.UNKNOWN_METHOD.value
            elif i in payments:
                action, reason = REJECT, payments[i].value
            else:
                action, reason = LOCK, None
            shard = shard_of(source, shards)
            ops[shard].append((action, task_id, source, target, price or 0, 0.0, wallet, signature, reason))
            where[shard].append(i)
        answers = await asyncio.gather(*(self.c._shard_call(s, "lock_batch", ops[s], calls.entries) for s in ops))
        to_deliver: list[tuple[int, tuple]] = []
        for shard, (answer, entry) in zip(ops, answers):
            indices = where[shard]
            if answer is None:  # the shard stayed unreachable: nothing locked, nothing written
                for i in indices:
                    results[i] = _unreachable(messages[i])
                continue
            records, repeats = answer[0], set(answer[4])
            locked: list[tuple[int, tuple]] = []
            for j, (i, record) in enumerate(zip(indices, records)):
                if j in repeats and self.c._redeliver and record[_STATUS] == _LOCKED:
                    to_deliver.append((i, record))  # an escrow a dead instance left open: delivered now
                elif j in repeats:
                    results[i] = (record, record[_STATUS] == _RELEASED, None, "task_id already seen: not run again")
                elif record[_STATUS] == _LOCKED:
                    locked.append((i, record))
                else:
                    results[i] = (record, False, None, f"refused: {record[_REASON]}")
            to_deliver.extend(locked)
            calls.tallies.append((entry, partial(self.c._count.answer, "lock_batch", answer)))
            calls.depends(indices, entry)
        return sorted(to_deliver, key=lambda pair: pair[0])

    async def _deliver(
        self, messages: list[WireMessage], locked: list[tuple[int, tuple]]
    ) -> dict[int, tuple[int, Any]]:
        """Run the locked messages on their hosts; ``{message index: (code, value)}``."""
        by_host: dict[int, list[int]] = defaultdict(list)
        agents = self.c._directory.agents
        for i, _ in locked:
            by_host[agents[messages[i][2]][0]].append(i)
        answers = await asyncio.gather(*(self._deliver_to(h, [messages[i] for i in by_host[h]]) for h in by_host))
        outcomes: dict[int, tuple[int, Any]] = {}
        for host, answer in zip(by_host, answers):
            outcomes.update(zip(by_host[host], answer))
        return outcomes

    async def _deliver_to(self, host_index: int, messages: list[WireMessage]) -> list[tuple[int, Any]]:
        host = self.c._directory.hosts[host_index]
        items = [(m[0], m[2], m[3], m[4], m[1]) for m in messages]
        timeout_s = self.c.config.handler_timeout_s
        try:
            return await asyncio.wait_for(_awaitable(host.handle_batch.remote(pack(items))), timeout_s * 1.5 + 1.0)
        except asyncio.TimeoutError:
            logger.error("host %s stuck past the handler timeout: restarting it", self.c._directory.host_names[host_index])
            ray.kill(host, no_restart=False)
            return [(TIMEOUT, f"host stuck past handler_timeout_s={timeout_s}")] * len(messages)
        except Exception as exc:  # noqa: BLE001 - the host died: its messages are refunded
            note = f"{Reason.AGENT_UNAVAILABLE.value}: {type(exc).__name__}: {exc}"[:1_000]
            return [(-1, note)] * len(messages)

    async def _settle(
        self, locked: list[tuple[int, tuple]], outcomes: dict[int, tuple[int, Any]], results: list,
        calls: BatchCalls,
    ) -> None:
        """Release what succeeded and refund the rest, on each caller's shard."""
        ops: dict[int, list[tuple]] = defaultdict(list)
        where: dict[int, list[int]] = defaultdict(list)
        shards = self.c.config.shards
        for i, record in locked:
            code = outcomes[i][0]
            reason = None if code == OK else refund_reason(code)
            shard = shard_of(record[_SOURCE], shards)
            ops[shard].append((record[_TASK], code == OK, reason))
            where[shard].append(i)
        answers = await asyncio.gather(*(self.c._shard_call(s, "settle_batch", ops[s], calls.entries) for s in ops))
        for shard, (answer, entry) in zip(ops, answers):
            self._settled_results(answer, where[shard], locked, outcomes, results)
            if answer is not None:
                calls.tallies.append((entry, partial(self.c._count.answer, "settle_batch", answer)))
                calls.settles.append((shard, ops[shard], where[shard], entry))
                calls.depends(where[shard], entry)
        await self.c._forward_credits([(e, a) for a, e in answers if a is not None and a[3]])

    def _settled_results(
        self, answer: Optional[ShardAnswer], indices: list[int], locked: list[tuple[int, tuple]],
        outcomes: dict[int, tuple[int, Any]], results: list,
    ) -> None:
        """Each settled message's result from its shard's answer."""
        for j, i in enumerate(indices):
            code, value = outcomes[i]
            record = answer[0][j] if answer is not None else None
            if record is None:  # the shard stayed unreachable; the escrow stays locked until it expires
                record = next(r for k, r in locked if k == i)
                results[i] = (record, False, value if code == OK else None, _SETTLE_LOST)
                continue
            ok = record[_STATUS] == _RELEASED
            error = None if ok else (value if code != OK else f"refunded: {record[_REASON]}")
            results[i] = (record, ok, value if code == OK else None, error)

    async def _await_durable(
        self, calls: BatchCalls, locked: list[tuple[int, tuple]], outcomes: dict[int, tuple[int, Any]],
        results: list,
    ) -> None:
        """Wait until every event of the batch is on disk, and count what is (a lost append's events,
        which the ledger lacks, are not counted). A lost settlement is made again once the shards are
        rebuilt (no escrow stays locked for a writer's crash); a message whose events are still
        not all on disk then is answered with an error saying so."""
        durable = await asyncio.gather(*(e.durable for e in calls.entries), return_exceptions=True)
        lost = {id(e): o for e, o in zip(calls.entries, durable) if isinstance(o, BaseException)}
        counted = {id(e) for e, o in zip(calls.entries, durable) if self.c._counts_entry(e, o)}
        for entry, count in calls.tallies:
            if id(entry) in counted:
                count()
        if not lost:
            return
        for shard, ops, indices, entry in calls.settles:
            if id(entry) in lost:
                await self._settle_again(shard, ops, indices, calls, locked, outcomes, results)
        error = next(iter(lost.values()))
        note = f"{_APPEND_LOST}, the record may not be on disk (read it with get_record): {error}"
        for i, entries in calls.depend_on.items():
            if any(id(e) in lost for e in entries):
                results[i] = (results[i][0], False, results[i][2], note)

    async def _settle_again(
        self, shard: int, ops: list[tuple], indices: list[int], calls: BatchCalls,
        locked: list[tuple[int, tuple]], outcomes: dict[int, tuple[int, Any]], results: list,
    ) -> None:
        """Settle once more what a lost append held, on the shard rebuilt from the ledger (a settled
        escrow is answered unchanged; one the crash left locked is settled now)."""
        entries: list[LogEntry] = []
        answer, entry = await self.c._shard_call(shard, "settle_batch", ops, entries)
        if answer is None:
            return
        try:
            first_seq = await entry.durable
        except Exception:  # noqa: BLE001 - lost again: the messages stay errors, the caller may send them again
            return
        self._settled_results(answer, indices, locked, outcomes, results)
        if self.c._counts_entry(entry, first_seq):
            self.c._count.answer("settle_batch", answer)
        for j, i in enumerate(indices):  # the shard was rebuilt from the ledger: an escrow it knows is on disk,
            if answer[0][j] is not None:  # its lock and now its settlement, whatever the lost appends were
                calls.depend_on[i] = []
        if answer[3]:
            await self.c._forward_credits([(entry, answer)])


class BatchCalls:
    """The shard calls of one batch: their log entries, what to count once each is on disk, the
    settlements (to make again if lost), and the entries each message's result depends on."""

    __slots__ = ("entries", "tallies", "settles", "depend_on")

    def __init__(self) -> None:
        self.entries: list[LogEntry] = []
        self.tallies: list[tuple[LogEntry, Callable[[], None]]] = []
        self.settles: list[tuple[int, list[tuple], list[int], LogEntry]] = []
        self.depend_on: defaultdict[int, list[LogEntry]] = defaultdict(list)

    def depends(self, indices: list[int], entry: LogEntry) -> None:
        for i in indices:
            self.depend_on[i].append(entry)


def _unreachable(message: WireMessage) -> tuple:
    record = TollRecord(message[0], message[1], message[2], status=SettlementStatus.FAILED,
                        reason=Reason.SHARD_UNAVAILABLE.value, created_at=iso_utc(time.time_ns() // 1_000, "seconds"))
    return (record_to_wire(record), False, None, "refused: the caller's budget shard is unreachable (nothing locked)")


async def _awaitable(ref: Any) -> Any:
    return await ref
