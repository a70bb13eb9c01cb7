"""One batch of plain calls through the mesh as columns: the coordinator's hot path.

A batch of messages without x402 payment goes through the same four hops as
:meth:`actors.coordinator.EscrowCoordinator._run_batch` (lock, deliver, settle, record),
but nothing per message travels between the actors except its task id, agents, method
and payload: each shard gets one :meth:`~actors.budget_shard.BudgetShard.lock_columns`
(prices and refusal codes as numpy arrays) and answers task rows, status and reason
codes and its events already encoded; the settle hop sends back the rows with an
``ok`` array and refund codes. The answer is only the counts of how calls ended (what
``submit_counted`` answers), so no record is ever built.

Faults follow the record path's rules: a shard that fails is rebuilt from the ledger and
its call retried (tasks are idempotent by task id); a shard that stays unreachable
refuses its messages (``failed:shard_unavailable``) or leaves them locked until they
expire (``fault:settle_unavailable``); a lost append has its shard's settlements made
again by task id once the shards are rebuilt, and what is still not durable then is
counted as ``fault:ledger_append_lost``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import ray

from actors.agent_host import OK, TIMEOUT
from actors.ordered_log import LogEntry
from actors.shard_core import ColumnsAnswer
from mesh.calls.agent import WireMessage
from mesh.calls.coded import CodedNames
from mesh.calls.columns import FAULT_NAMES
from mesh.columnar import FAILED, LOCKED, REASON_CODE, REASON_NAMES, STATUS_NAMES
from mesh.core.records import Reason
from mesh.core.sharding import shard_of

if TYPE_CHECKING:
    from actors.coordinator import EscrowCoordinator

logger = logging.getLogger("tollmesh.coordinator")

_UNKNOWN_AGENT, _UNKNOWN_METHOD = REASON_CODE[Reason.UNKNOWN_AGENT], REASON_CODE[Reason.UNKNOWN_METHOD]
_SHARD_UNAVAILABLE = REASON_CODE[Reason.SHARD_UNAVAILABLE]
#: The refund reason code of each outcome code, by the code modulo its length (-1, the host died: the last).
_REFUND_CODES = np.array([0, REASON_CODE[Reason.HANDLER_ERROR], REASON_CODE[Reason.HANDLER_TIMEOUT],
                          REASON_CODE[Reason.HANDLER_TIMEOUT], REASON_CODE[Reason.AGENT_UNAVAILABLE]], np.int8)
SETTLE_UNAVAILABLE, APPEND_LOST = FAULT_NAMES.index("settle_unavailable"), FAULT_NAMES.index("ledger_append_lost")
STATUS_CODE = {name: code for code, name in enumerate(STATUS_NAMES) if name is not None}


def is_plain(messages: list[WireMessage]) -> bool:
    """Whether a batch can go as columns: no message carries an x402 payment."""
    return not any(m[5] or m[6] for m in messages)


class ColumnarBatch:
    """The columns of one batch and what became of them (see the module doc)."""

    def __init__(self, coordinator: EscrowCoordinator, task_ids: list[str], sources: CodedNames, targets: CodedNames,
                 methods: CodedNames, payloads: list[Any], problems: dict[int, str]) -> None:
        self.c = coordinator
        self.task_ids, self.sources, self.targets, self.methods, self.payloads = task_ids, sources, targets, methods, payloads
        n = len(task_ids)
        self.n = n
        self.prices, self.rejects, self.hosts = self._price(problems)
        # how each call ended: its status and reason codes, and a fault code where the ledger may not hold it
        self.status, self.reason, self.fault = np.zeros(n, np.int8), np.zeros(n, np.int8), np.zeros(n, np.int8)
        self.entries: list[LogEntry] = []
        self.tallies: list[tuple[LogEntry, dict[str, int]]] = []
        self.by_shard: dict[int, np.ndarray] = self._group_by_shard()

    @classmethod
    def of_wire(cls, coordinator: EscrowCoordinator, messages: list[WireMessage]) -> ColumnarBatch:
        """A batch of :func:`mesh.calls.agent.to_wire` messages (their payment fields are empty: :func:`is_plain`)."""
        task_ids, sources, targets, methods, payloads, _, _, problems = (list(column) for column in zip(*messages))
        return cls(coordinator, task_ids, CodedNames.encode("sources", sources), CodedNames.encode("targets", targets),
                   CodedNames.encode("methods", methods), payloads,
                   {i: problem for i, problem in enumerate(problems) if problem is not None})

    async def run(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Run the batch; per call its status and reason codes (:mod:`mesh.columnar`) and fault code (:data:`mesh.calls.columns.FAULT_NAMES`)."""
        started = time.perf_counter()
        locks = await self._lock()
        delivered = await self._deliver(locks)
        await self._settle(locks, delivered)
        await self._await_durable(locks, delivered)
        self.c._metrics.batch(self.n, (time.perf_counter() - started) * 1_000, self.c._count.amounts["locked"])
        return self.status, self.reason, self.fault

    # -- the hops -------------------------------------------------------------------

    async def _lock(self) -> dict[int, tuple[np.ndarray, ColumnsAnswer, LogEntry]]:
        """One ``lock_columns`` per shard; per shard its message indices, answer and log entry."""
        shards = list(self.by_shard)
        answers = await asyncio.gather(*(self._call(s, "lock_columns", self._lock_args(self.by_shard[s])) for s in shards))
        locks = {}
        for shard, (answer, entry) in zip(shards, answers):
            indices = self.by_shard[shard]
            if answer is None:
                self.status[indices], self.reason[indices] = FAILED, _SHARD_UNAVAILABLE
                continue
            self.tallies.append((entry, answer.tally))
            deliver = answer.status == LOCKED
            if not self.c._redeliver:
                deliver &= ~answer.repeat
            self.status[indices], self.reason[indices] = answer.status, answer.reason
            locks[shard] = (indices, answer, entry, deliver)
        return locks

    async def _deliver(self, locks: dict) -> np.ndarray:
        """Run the locked messages on their hosts (one ``handle_columns`` per host, in message order);
        each message's outcome code (those not run: -1)."""
        to_run = np.sort(np.concatenate([indices[deliver] for indices, _, _, deliver in locks.values()] or [np.zeros(0, np.int64)]))
        codes = np.full(self.n, -1, np.int8)
        if not len(to_run):
            return codes
        host_of = self.hosts[to_run]
        order = np.argsort(host_of, kind="stable")
        hosts, starts = np.unique(host_of[order], return_index=True)
        groups = np.split(to_run[order], starts[1:])
        answers = await asyncio.gather(*(self._run_on(int(h), g) for h, g in zip(hosts.tolist(), groups)))
        for group, answer in zip(groups, answers):
            codes[group] = answer
        return codes

    async def _run_on(self, host_index: int, indices: np.ndarray) -> np.ndarray:
        """The outcome codes of ``indices`` run on one host; all :data:`~actors.agent_host.TIMEOUT` if it is
        stuck past the handler timeout (it is restarted), all ``-1`` (agent unavailable) if it died."""
        c, take = self.c, indices.tolist()
        host = c._directory.hosts[host_index]
        ref = host.handle_columns.remote([self.task_ids[i] for i in take], self.targets.take(indices),
                                         self.methods.take(indices), [self.payloads[i] for i in take],
                                         self.sources.take(indices))
        timeout_s = c.config.handler_timeout_s
        try:
            return await asyncio.wait_for(_awaited(ref), timeout_s * 1.5 + 1.0)
        except asyncio.TimeoutError:
            logger.error("host %s stuck past the handler timeout: restarting it", c._directory.host_names[host_index])
            ray.kill(host, no_restart=False)
            return np.full(len(take), TIMEOUT, np.int8)
        except Exception as exc:  # noqa: BLE001 - the host died: its messages are refunded
            logger.warning("host %s failed (%s: %s): its calls are refunded", c._directory.host_names[host_index],
                           type(exc).__name__, exc)
            return np.full(len(take), -1, np.int8)

    async def _settle(self, locks: dict, outcomes: np.ndarray) -> None:
        """One ``settle_columns`` per shard: release what succeeded, refund the rest; then the credits."""
        calls = {}
        for shard, (indices, answer, _, deliver) in locks.items():
            at = np.flatnonzero(deliver)
            if not len(at):
                continue
            codes = outcomes[indices[at]]
            ok = codes == OK
            calls[shard] = (indices[at], ok, _REFUND_CODES[codes.astype(np.int64) % len(_REFUND_CODES)], answer.rows[at])
        shards = list(calls)
        answers = await asyncio.gather(*(
            self._call(s, "settle_columns", (calls[s][3], calls[s][1], calls[s][2], self.c._clock.now_us()))
            for s in shards))
        self.settles = {}
        credits = []
        for shard, (answer, entry) in zip(shards, answers):
            indices, ok, reasons, _ = calls[shard]
            if answer is None:  # the shard stayed unreachable: the escrows stay locked until they expire
                self.fault[indices] = SETTLE_UNAVAILABLE
                continue
            self.tallies.append((entry, answer.tally))
            self.settles[shard] = (indices, ok, reasons, entry)
            self.status[indices], self.reason[indices] = answer.status, answer.reason
            if answer.credit_agents:
                credits.append((entry, (None, None, None, answer.credits())))
        await self.c._forward_credits(credits)

    async def _await_durable(self, locks: dict, outcomes: dict) -> None:
        """Count what is on disk; after a lost append settle that shard's calls again by task id."""
        c = self.c
        durable = await asyncio.gather(*(e.durable for e in self.entries), return_exceptions=True)
        lost = {id(e) for e, o in zip(self.entries, durable) if isinstance(o, BaseException)}
        counted = {id(e) for e, o in zip(self.entries, durable) if c._counts_entry(e, o)}
        for entry, tally in self.tallies:
            if id(entry) in counted:
                c._count.tally(tally)
        if not lost:
            return
        for shard, (indices, answer, entry, deliver) in locks.items():
            settle = self.settles.get(shard)
            if id(entry) not in lost and (settle is None or id(settle[3]) not in lost):
                continue
            if id(entry) in lost:  # a refusal whose event may not be on disk
                self.fault[indices[~deliver]] = APPEND_LOST
            if settle is not None:
                await self._settle_again(shard, settle)

    async def _settle_again(self, shard: int, settle: tuple) -> None:
        """Settle once more, by task id on the shard rebuilt from the ledger, what a lost append held."""
        indices, ok, reasons, _ = settle
        ops = [(self.task_ids[i], bool(k), None if k else REASON_NAMES[r])
               for i, k, r in zip(indices.tolist(), ok.tolist(), reasons.tolist())]
        c = self.c
        entries: list[LogEntry] = []
        answer, entry = await c._shard_call(shard, "settle_batch", ops, entries)
        first_seq = None
        if answer is not None:
            try:
                first_seq = await entry.durable
            except Exception:  # noqa: BLE001 - lost again: the caller may send them again
                answer = None
        for j, i in enumerate(indices.tolist()):
            record = None if answer is None else answer[0][j]
            if record is None:  # unknown after the rebuild: its lock never reached the ledger
                self.fault[i] = APPEND_LOST
            else:
                self.fault[i] = 0
                self.status[i], self.reason[i] = STATUS_CODE[record[5]], REASON_CODE.get(record[11], 0)
        if answer is not None:
            if c._counts_entry(entry, first_seq):
                c._count.answer("settle_batch", answer)
            if answer[3]:
                await c._forward_credits([(entry, answer)])

    # -- internals ------------------------------------------------------------------

    async def _call(self, shard: int, method: str, args: tuple) -> tuple[Optional[ColumnsAnswer], Optional[LogEntry]]:
        """A columnar shard call through the ordered log, retried after a rebuild (see ``_shard_call``)."""
        c = self.c
        answer, entry = await c._shard_call(shard, method, args, self.entries, columns=True)
        return (None, None) if answer is None else (answer[0], entry)

    def _lock_args(self, indices: np.ndarray) -> tuple:
        return ([self.task_ids[i] for i in indices.tolist()], self.sources.take(indices), self.targets.take(indices),
                self.prices[indices], self.rejects[indices], self.c._clock.now_us())

    def _price(self, problems: dict[int, str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each message's price, refusal code (0: none) and host index (-1: none), from the directory:
        looked up once per distinct (target, method)."""
        agents, targets, methods = self.c._directory.agents, self.targets, self.methods
        pairs = targets.codes.astype(np.int64) * len(methods.names) + methods.codes
        distinct, at = np.unique(pairs, return_inverse=True)
        known = []  # (host, price, refusal code) of each distinct pair
        for pair in distinct.tolist():
            entry = agents.get(targets.names[pair // len(methods.names)])
            price = None if entry is None else entry[1].price_micros(methods.names[pair % len(methods.names)])
            known.append((-1 if entry is None else entry[0], price or 0,
                          _UNKNOWN_AGENT if entry is None else _UNKNOWN_METHOD if price is None else 0))
        table = np.array(known, np.int64).reshape(-1, 3)[at.ravel()]
        hosts, prices, rejects = table[:, 0], table[:, 1], table[:, 2].astype(np.int8)
        for i, problem in problems.items():
            rejects[i] = REASON_CODE[problem]
        return prices, rejects, hosts

    def _group_by_shard(self) -> dict[int, np.ndarray]:
        shards = self.c.config.shards
        if shards == 1:
            return {0: np.arange(self.n)}
        shard = self.sources.of_names(lambda name: shard_of(name, shards), np.int32)
        order = np.argsort(shard, kind="stable")
        bounds = np.searchsorted(shard[order], np.arange(shards + 1))
        return {s: order[bounds[s]:bounds[s + 1]] for s in range(shards) if bounds[s + 1] > bounds[s]}


async def _awaited(ref: Any) -> Any:
    return await ref
