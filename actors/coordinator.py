"""The escrow coordinator actor: drives every call's lifecycle, a batch at a time.

A batch of messages goes through four hops, each one Ray call per actor involved:

1. **lock**: grouped by the caller's budget shard, one ``lock_batch`` per shard (caps and
   funds checked atomically there); unknown targets or methods, oversized payloads and
   failed x402 payments are recorded FAILED by the same call;
2. **deliver**: the locked messages, grouped by the actor hosting their target, one
   ``handle_batch`` per host, bounded by ``handler_timeout_s``;
3. **settle**: one ``settle_batch`` per shard: release what succeeded, refund the rest
   (``handler_error``, ``handler_timeout``, ``agent_unavailable``);
4. **record**: every shard answer's events go to the ledger writer through the
   :class:`~actors.ordered_log.OrderedLog`, in the order the shard calls were made; the
   batch answers only once its events are durable. With balances, releases to agents of
   another shard are then credited there. With a ledger partitioned by shard
   (``partitioned_ledger``) each shard has an ordered log and a writer of its own, and a
   credit is an event of the target's partition (:mod:`actors.partition_credits`).

Submissions that wait together are coalesced into one batch (up to
``max_batch_messages``), so many concurrent single calls cost a few batches. At most
``max_inflight_batches`` batches from drivers run at once (others wait: backpressure);
calls made by handlers from inside a batch skip that bound, so a handler waiting on
another agent can never deadlock the mesh. A sweeper refunds
escrows past ``escrow_timeout_s`` every ``sweep_interval_s``.

Recovery: a shard call that fails (the shard crashed and Ray restarted it) makes the
coordinator mark the shard stale, flush every event already in the log, have the
shard rebuild from the ledger, and retry; tasks are idempotent by ``task_id``. A lost
ledger append, or a restart of the coordinator itself, rebuilds every shard the same
way. A crashed host refunds its messages (``agent_unavailable``); a host stuck past
the handler timeout is restarted.

Its parts, by idea: :mod:`actors.record_batch` (a batch a record per call) and
:mod:`actors.columnar_batch` (plain calls as arrays) run the four hops; :mod:`actors.call_counts`
counts what they came to; :mod:`actors.directory` knows where each agent lives and keeps the
clock. This module keeps the actor's own state: the ordered log, shard calls with their retries,
credits, recovery and rebuilds, the Tollbooth API, and the administrative calls.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter as Tally
from collections import OrderedDict, defaultdict, deque
from typing import Any, Optional

import numpy as np
import orjson
import ray

from actors.budget_shard import INSTANT, LOCK, PEND, REJECT, ShardAnswer, with_payload
from actors.call_counts import CallCounts
from actors.columnar_batch import ColumnarBatch, is_plain
from actors.directory import AgentDirectory, MeshClock
from actors.gc_tuning import tune_gc
from actors.malloc_tuning import keep_freed_memory
from actors.metrics import MeshMetrics
from actors.ordered_log import LogEntry, OrderedLog
from actors.partition_credits import PartitionCredits
from actors.record_batch import FAULTS, RecordBatch
from actors.wire import pack, unpack
from ledger.events import record_event
from ledger.jsonl import encode_events
from ledger.reader import last_ts_us
from ledger.replay import merge_snapshots
from ledger.tally import tally_ledger
from mesh.calls.agent import PriceTable, WireMessage
from mesh.calls.coded import CodedNames
from mesh.calls.columns import CallColumns
from mesh.core.clock import US_PER_SECOND
from mesh.core.errors import InvalidArgumentError, TollmeshError
from actors.run_files import write_whole
from actors.memory import rss_bytes
from mesh.calls.mesh_config import MeshConfig
from mesh.core.records import (
    PAPER_WALLET,
    Reason,
    SettlementStatus,
    TollRecord,
    record_from_wire,
)
from mesh.core.sharding import shard_of
from mesh.booth.verifier import Verifier, verify_async

logger = logging.getLogger("tollmesh.coordinator")

MAX_CONCURRENT_CALLS = 10_000  # Ray runs at most this many coordinator calls at once; the rest wait in its queue
MAX_SHARD_ATTEMPTS = 4
VERIFIER_FILE = "x402_verifier.pkl"  # the verifier set_verifier was given, for a restarted coordinator
RECOVERY_PAUSE_S = 0.2  # between rounds of a recovery that met a dead writer
# Records travel as plain tuples (mesh.core.records.record_to_wire); the coordinator reads them by index.
_STATUS, _REASON = 5, 11
_LOCKED = SettlementStatus.ESCROW_LOCKED.value


class ShardUnavailableError(TollmeshError):
    """A budget shard kept failing after every retry and rebuild."""


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0, max_concurrency=MAX_CONCURRENT_CALLS)
class EscrowCoordinator:
    """Drives every escrow of a mesh; see the module doc."""

    def __init__(self, config: MeshConfig, first_seqs: Optional[list[int]] = None) -> None:
        """``first_seqs``: each writer's next seq when the mesh started (what it wrote is counted from there)."""
        tune_gc()
        keep_freed_memory()
        self.config = config
        self._first_seqs = list(first_seqs) if first_seqs is not None else [0] * config.writers
        self._restarted = ray.get_runtime_context().was_current_actor_reconstructed
        names = [config.actor_name(f"shard.{i}") for i in range(config.shards)]
        self._shards = [ray.get_actor(name, namespace=config.namespace) for name in names]
        self._writers = [ray.get_actor(config.writer_name(k), namespace=config.namespace) for k in range(config.writers)]
        self._directory = AgentDirectory(config.directory_path, config.namespace)
        self._directory.load()
        self._clock = MeshClock(config)
        self._verifier: Optional[Verifier] = None
        self._metrics = MeshMetrics(config.name, config.metrics_enabled)
        self._count = CallCounts(self._metrics)
        self._booth_sources: OrderedDict[str, str] = OrderedDict()  # task id -> source, for the Tollbooth API
        self._recoveries: dict[int, asyncio.Task] = {}
        self._global_recovery: Optional[asyncio.Task] = None
        self._lost_since_rebuild = False  # an append was lost after the last rebuild began (see _recover_all)
        self._rebuilding = asyncio.Lock()  # one rebuild at a time (see _rebuild)
        self._started: Optional[asyncio.Future] = None
        self._logs: list[OrderedLog] = []  # one per writer: shard K's events go to log writer_of(K)
        self._credits = PartitionCredits(self) if config.partitioned_ledger else None
        self._closed = False
        self._waiting: dict[bool, deque] = {False: deque(), True: deque()}  # submissions not yet in a batch
        self._batchers: dict[bool, Optional[asyncio.Task]] = {False: None, True: None}
        self._batch_tasks: set[asyncio.Task] = set()
        self._redeliver = False  # see set_redelivery
        self._counted_from = list(self._first_seqs)  # per writer: events from here on are counted by their batches (see _recount)

    # -- calls --------------------------------------------------------------------

    async def submit(self, messages: list[WireMessage] | bytes, nested: bool = False) -> list[tuple]:
        """Run the lifecycle of every message (see :func:`mesh.calls.agent.to_wire`); results in order
        (as :func:`mesh.calls.agent.result_to_wire` tuples).

        Submissions that wait together are coalesced into batches of up to ``max_batch_messages``
        (many concurrent single calls make one batch); larger ones are split. From drivers
        (``nested=False``) at most ``max_inflight_batches`` batches run at once.
        """
        await self._ready()
        messages = unpack(messages)
        size = self.config.max_batch_messages
        chunks = [messages[i:i + size] for i in range(0, len(messages), size)]
        answers = await asyncio.gather(*(self._enqueue(chunk, nested) for chunk in chunks))
        return [result for answer in answers for result in answer]

    async def submit_counted(self, messages: list[WireMessage] | bytes) -> dict[str, int]:
        """:meth:`submit` answered only with how many calls ended in each ``status`` (or
        ``status:reason``): nothing per call travels back (bulk senders read the ledger)."""
        await self._ready()
        messages = unpack(messages)
        if is_plain(messages):
            size = self.config.max_batch_messages
            parts = await asyncio.gather(*(self._run_columns(ColumnarBatch.of_wire(self, messages[i:i + size]))
                                           for i in range(0, len(messages), size)))
            return dict(sum((CallColumns([], *part).counts() for part in parts), Tally()))
        counts: Tally = Tally()
        for record, _, _, error in await self.submit(messages):
            fault = None if error is None else next((f for note, f in FAULTS.items() if error.startswith(note)), None)
            if fault is not None:  # the ledger may not hold how the call ended: the caller may send it again
                counts[f"fault:{fault}"] += 1
                continue
            reason = record[_REASON]
            counts[record[_STATUS] if reason is None else f"{record[_STATUS]}:{reason}"] += 1
        return dict(counts)

    async def submit_columns(self, task_ids: list[str], sources: CodedNames, targets: CodedNames, methods: CodedNames,
                             payloads: list[Any], problems: list[tuple[int, str]]) -> tuple:
        """Run one part of a :meth:`mesh.Mesh.send_columns` (checked there: :func:`mesh.calls.columns.checked_parts`;
        no x402 payment) in batches of up to ``max_batch_messages``; per call its status, reason and fault
        codes (int8 arrays). ``problems``: ``(index, reason)`` of the calls refused before they are locked."""
        await self._ready()
        size, n = self.config.max_batch_messages, len(task_ids)
        if n <= size:
            return await self._run_columns(ColumnarBatch(self, task_ids, sources, targets, methods, payloads, dict(problems)))
        cuts = [slice(i, i + size) for i in range(0, n, size)]
        parts = await asyncio.gather(*(self._run_columns(ColumnarBatch(
            self, task_ids[cut], sources.take(cut), targets.take(cut), methods.take(cut), payloads[cut],
            {i - cut.start: why for i, why in problems if cut.start <= i < cut.stop})) for cut in cuts))
        return tuple(np.concatenate(column) for column in zip(*parts))

    async def _run_columns(self, batch: ColumnarBatch) -> tuple:
        """One batch of plain calls as columns (:mod:`actors.columnar_batch`), within the driver bound."""
        async with self._admission:
            return await batch.run()

    async def _enqueue(self, messages: list[WireMessage], nested: bool) -> list[tuple]:
        """Queue a submission for the next batch; its results once that batch is durable."""
        done = asyncio.get_running_loop().create_future()
        self._waiting[nested].append((messages, done))
        if self._batchers[nested] is None:
            self._batchers[nested] = asyncio.get_running_loop().create_task(self._form_batches(nested))
        return await done

    async def _form_batches(self, nested: bool) -> None:
        """Take waiting submissions into batches while a slot is free (nested calls need none: no deadlock)."""
        waiting = self._waiting[nested]
        try:
            while waiting:
                if not nested:
                    await self._admission.acquire()  # submissions keep arriving meanwhile: bigger batches
                taken: list[tuple[list[WireMessage], asyncio.Future]] = []
                count = 0
                while waiting and (not taken or count + len(waiting[0][0]) <= self.config.max_batch_messages):
                    taken.append(waiting.popleft())
                    count += len(taken[-1][0])
                task = asyncio.get_running_loop().create_task(self._run_taken(taken, nested))
                self._batch_tasks.add(task)
                task.add_done_callback(self._batch_tasks.discard)
        finally:
            self._batchers[nested] = None

    async def _run_taken(self, taken: list[tuple[list[WireMessage], asyncio.Future]], nested: bool) -> None:
        try:
            results = await RecordBatch(self).run([m for messages, _ in taken for m in messages])
        except Exception as exc:  # noqa: BLE001 - every submitter of the batch hears of it
            logger.error("batch of %d submissions failed: %s: %s", len(taken), type(exc).__name__, exc)
            for _, done in taken:
                if not done.done():
                    done.set_exception(exc)
            return
        finally:
            if not nested:
                self._admission.release()
        start = 0
        for messages, done in taken:
            if not done.done():
                done.set_result(results[start:start + len(messages)])
            start += len(messages)


    # -- shard calls, credits, recovery ---------------------------------------------------

    async def _shard_call(
        self, shard: int, method: str, ops: Any, entries: list[LogEntry], *, columns: bool = False,
    ) -> tuple[Optional[ShardAnswer], Optional[LogEntry]]:
        """Call ``method(ops, now_us, mode)`` on a shard through the ordered log; retry after a rebuild
        (``columns``: ``method(*ops)``, a columnar call whose arguments hold their time).

        ``(None, None)`` when the shard stayed unreachable.
        """
        for attempt in range(MAX_SHARD_ATTEMPTS):
            await self._wait_recovered(shard)
            call = getattr(self._shards[shard], method)
            ref = with_payload(*call.remote(*ops)) if columns else call.remote(pack(ops), self._clock.now_us(), "live")
            entry = self._log_of(shard).push(ref)
            try:
                answer = await entry.answer
            except Exception as exc:  # noqa: BLE001 - the shard died, or refused while stale
                logger.warning("shard %d %s failed (%s), rebuilding it (attempt %d)", shard, method, type(exc).__name__, attempt + 1)
                if self._closed:
                    break
                await self._recover_shard(shard)
                continue
            entries.append(entry)
            return answer, entry
        return None, None

    def _log_of(self, shard: int) -> OrderedLog:
        """The ordered log that takes shard ``shard``'s events."""
        return self._logs[self.config.writer_of(shard)]

    async def _forward_credits(self, settled: list[tuple[LogEntry, ShardAnswer]]) -> None:
        """Credit releases paid to agents of other shards, once their events are durable (exactly once).

        A partitioned ledger's credits are events of the target's partition, written by
        :class:`actors.partition_credits.PartitionCredits` in each source's seq order: this waits
        for them (and for the entries' appends)."""
        if self._credits is not None:
            await asyncio.gather(*(entry.durable for entry, _ in settled), return_exceptions=True)
            await asyncio.gather(*(f for entry, _ in settled for f in entry.credited), return_exceptions=True)
            return
        by_shard: dict[int, list[tuple[str, int, int]]] = defaultdict(list)
        for entry, answer in settled:
            try:
                first_seq = await entry.durable
            except Exception:  # noqa: BLE001 - a lost append: the rebuild from the ledger decides
                continue
            for agent, amount, index, *_ in answer[3]:
                by_shard[shard_of(agent, self.config.shards)].append((agent, amount, first_seq + index))
        await asyncio.gather(*(self._credit(s, credits) for s, credits in by_shard.items()))

    async def _credit(self, shard: int, credits: list[tuple[str, int, int]]) -> None:
        for _ in range(MAX_SHARD_ATTEMPTS):
            await self._wait_recovered(shard)
            try:
                await self._shards[shard].credit.remote(pack(credits))  # a rebuilt shard skips what it replayed
                return
            except Exception:  # noqa: BLE001 - rebuild, then retry
                await self._recover_shard(shard)
        logger.error("shard %d: %d credits not applied; its next rebuild from the ledger applies them", shard, len(credits))

    async def _wait_recovered(self, shard: int) -> None:
        pending = [t for t in (self._global_recovery, self._recoveries.get(shard)) if t is not None]
        if pending:
            await asyncio.wait(pending)

    async def _recover_shard(self, shard: int) -> None:
        task = self._recoveries.get(shard)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._rebuild([shard]))
            self._recoveries[shard] = task
            task.add_done_callback(lambda _: self._recoveries.pop(shard, None))
        await asyncio.wait([task])

    def _tell_shards_durable(self, marks: list[tuple[int, str, int]]) -> None:
        """Tell each shard how far its ordinary calls' events are on disk (the fast lane locks only
        when all are): ``(shard, epoch, op)`` marks of one append, the latest per shard."""
        latest: dict[int, tuple[str, int]] = {}
        for shard, epoch, op in marks:
            latest[shard] = (epoch, op)
        for shard, (epoch, op) in latest.items():
            self._shards[shard].mark_durable.remote(epoch, op)

    def _on_append_lost(self) -> None:
        self._lost_since_rebuild = True  # a recovery under way goes round once more
        if self._global_recovery is None:
            self._global_recovery = asyncio.get_running_loop().create_task(self._recover_all())

    async def _recover_all(self) -> None:
        """Rebuild every shard and recount, until no append was lost meanwhile."""
        try:
            while self._lost_since_rebuild and not self._closed:
                self._lost_since_rebuild = False
                await self._rebuild(list(range(self.config.shards)), resume_log=True)
                try:
                    await self._recount()  # the lost append's events may be on disk after all
                    if self._credits is not None and not await self._credits.repair():  # and releases with no credit
                        self._lost_since_rebuild = True
                except Exception as exc:  # noqa: BLE001 - the writer died again: go round once more
                    logger.warning("recount failed (%s: %s), again", type(exc).__name__, exc)
                    self._lost_since_rebuild = True
                    await asyncio.sleep(RECOVERY_PAUSE_S)
        finally:
            self._global_recovery = None

    async def _rebuild(self, shards: list[int], *, resume_log: bool = False) -> None:
        """Stop the shards, flush every event already in the log, rebuild them from the ledger.

        One rebuild at a time: another one's rebuild must not make a shard fresh between this
        one's stop and flush. ``resume_log``: the log writes again once flushed, before the
        shards are rebuilt (they refuse work until then, so nothing written meanwhile depends
        on a lost event; what they answer once rebuilt is written, never dropped).
        """
        async with self._rebuilding:
            for _ in range(MAX_SHARD_ATTEMPTS):
                try:
                    await asyncio.gather(*(self._shards[s].mark_stale.remote() for s in shards))
                    await asyncio.gather(*(log.drain() for log in self._logs))
                    if resume_log:
                        for log in self._logs:
                            log.resume()
                    await asyncio.gather(*(self._shards[s].rebuild.remote() for s in shards))
                    break
                except Exception as exc:  # noqa: BLE001 - a shard died again mid-rebuild: start over
                    logger.warning("rebuild of shards %s failed (%s: %s), again", shards, type(exc).__name__, exc)
            else:
                if resume_log:  # never got through: the recovery goes round again rather than leave the log stopped
                    self._lost_since_rebuild = True
                    await asyncio.sleep(RECOVERY_PAUSE_S)
                return
        logger.warning("shards %s rebuilt from the ledger", shards)
        # the locked gauge, summed again (a shard that is itself restarting just now is left out)
        stats = await asyncio.gather(*(s.stats.remote() for s in self._shards), return_exceptions=True)
        self._count.amounts["locked"] = sum(s["locked_total_micros"] for s in stats if isinstance(s, dict))

    # -- the Tollbooth API, one toll at a time ------------------------------------------

    async def booth_charges(self, charges: list[tuple]) -> list[tuple]:
        """Charge tolls, each ``(fields, instant, pend, mode)`` with ``fields`` = (task_id, source, target,
        amount_micros, tokens, wallet, signature); their records (as wire tuples), in order, once durable."""
        await self._ready()
        reasons = await asyncio.gather(*(self._booth_payment(fields, pend) for fields, _, pend, _ in charges))
        ops: dict[tuple[int, str], list[tuple]] = defaultdict(list)
        where: dict[tuple[int, str], list[int]] = defaultdict(list)
        for i, ((task_id, source, target, amount, tokens, wallet, signature), instant, pend, mode) in enumerate(charges):
            reason = reasons[i]
            action = PEND if pend else REJECT if reason is not None else INSTANT if instant else LOCK
            if mode == "paper":  # the seed's paper-mode record names its absent payment (after any verification)
                wallet, signature = wallet or PAPER_WALLET, signature or PAPER_WALLET
            key = (shard_of(source, self.config.shards), mode)
            ops[key].append((action, task_id, source, target, amount, tokens, wallet, signature,
                             None if reason is None else reason.value))
            where[key].append(i)
        records = await self._booth_batches(ops, where, "lock_batch", len(charges))
        for (fields, _, _, _), record in zip(charges, records):
            self._remember_source(fields[0], fields[1])
        return records

    async def booth_settles(self, settles: list[tuple[str, bool, Optional[str], str]]) -> list[Optional[tuple]]:
        """Release (``True``) or refund each ``(task_id, release, reason, mode)`` charged through
        :meth:`booth_charges`; their records (None: unknown task id), in order, once durable."""
        await self._ready()
        ops: dict[tuple[int, str], list[tuple]] = defaultdict(list)
        where: dict[tuple[int, str], list[int]] = defaultdict(list)
        for i, (task_id, release, reason, mode) in enumerate(settles):
            source = self._booth_sources.get(task_id)
            if source is not None:
                key = (shard_of(source, self.config.shards), mode)
                ops[key].append((task_id, release, reason))
                where[key].append(i)
        return await self._booth_batches(ops, where, "settle_batch", len(settles))

    async def _booth_batches(
        self, ops: dict[tuple[int, str], list[tuple]], where: dict[tuple[int, str], list[int]], method: str, count: int
    ) -> list[Optional[tuple]]:
        answers = await asyncio.gather(*(self._one(shard, method, ops[(shard, mode)], mode) for shard, mode in ops))
        records: list[Optional[tuple]] = [None] * count
        for key, answer in zip(ops, answers):
            for i, record in zip(where[key], answer):
                records[i] = record
        return records

    async def _booth_payment(self, fields: tuple, pend: bool) -> Optional[Reason]:
        wallet, signature = fields[5], fields[6]
        if self._verifier is None or not (wallet and signature) or pend:
            return None
        return await verify_async(self._verifier, wallet, signature, fields[3] / 1e6, timeout_s=self.config.x402_verify_timeout_s,
                                  task_id=fields[0], amount_micros=fields[3])


    async def booth_get(self, task_id: str, mode: str) -> Optional[tuple]:
        """The record of a toll charged through :meth:`booth_charges`, after expiring what is due on its shard."""
        await self._ready()
        source = self._booth_sources.get(task_id)
        if source is None:
            return None
        shard = shard_of(source, self.config.shards)
        entries: list[LogEntry] = []
        answer = await self._shard_call_now(shard, "expire_due", entries)  # its events go through the log, in order
        if await self._all_counted(entries) and answer is not None:
            self._count.settled(answer[0])
        return await self._shards[shard].get.remote(task_id)

    async def _one(self, shard: int, method: str, ops: list, mode: str) -> list[Optional[tuple]]:
        """One shard call through the log, durable (with its credits) before it answers; its (wire) records."""
        for _ in range(MAX_SHARD_ATTEMPTS):
            await self._wait_recovered(shard)
            entry = self._log_of(shard).push(getattr(self._shards[shard], method).remote(pack(ops), self._clock.now_us(), mode))
            try:
                answer = await entry.answer
                break
            except Exception:  # noqa: BLE001 - rebuild, then retry
                await self._recover_shard(shard)
        else:
            raise ShardUnavailableError(f"budget shard {shard} is unreachable")
        first_seq = await entry.durable  # raises LedgerAppendLostError if the append was lost
        if method in ("lock_batch", "settle_batch") and self._counts_entry(entry, first_seq):
            self._count.answer(method, answer)
        await self._forward_credits([(entry, answer)] if answer[3] else [])
        return answer[0]

    def _remember_source(self, task_id: str, source: str) -> None:
        sources = self._booth_sources
        sources[task_id] = source
        sources.move_to_end(task_id)
        while len(sources) > max(self.config.max_settled_records, 1) * 2:
            sources.popitem(last=False)

    # -- the fast lane (actors.fast_lane): the owning driver runs single calls past this actor --

    def count_fast_calls(self, calls: list[tuple[tuple, Optional[tuple], Optional[tuple[int, int]]]]) -> None:
        """Count calls the fast lane ran: ``(lock record, settled record or None, where its events begin)``
        each, that as ``(writer, first seq)`` or None. A call whose events lie before a :meth:`_recount`'s
        boundary was counted by it (its count reached us after the recount read the ledger)."""
        counted_from = self._counted_from
        self._count.fast_calls([call for call in calls if call[2] is None or call[2][1] >= counted_from[call[2][0]]])


    async def recover_fast_call(self, task_id: str, source: str) -> Optional[tuple]:
        """After the fast lane broke during ``task_id``: rebuild every shard from the ledger (a lock
        taken but never written is dropped there), refund the toll if its lock was written and its
        settlement was not; the call's record as the ledger has it (None: nothing was written)."""
        await self._ready()
        await self._rebuild(list(range(self.config.shards)))
        # what the broken run wrote was never counted, and lane counts on their way may be of calls a
        # recount since has counted: the ledger says (and the lane's counts before it are skipped)
        await self._recount()
        shard = shard_of(source, self.config.shards)
        record = await self._shards[shard].get.remote(task_id)
        if record is None:
            return None
        if record[_STATUS] == _LOCKED:
            record = (await self._one(shard, "settle_batch", [(task_id, False, Reason.AGENT_UNAVAILABLE.value)], "live"))[0]
        return record

    # -- agents, money, time -------------------------------------------------------------

    async def register(self, host_name: str, groups: list[tuple[list[str], PriceTable]]) -> int:
        """Add the agents of a host actor, ``(agent_ids, prices)`` per group, to the directory (all or
        none: an id already in the mesh refuses the lot); the number of agents now in the mesh."""
        await self._ready()
        taken = [a for ids, _ in groups for a in ids if a in self._directory.agents]
        if taken:
            raise InvalidArgumentError("agent_ids", taken[:5], "are already in the mesh")
        for agent_ids, prices in groups:
            self._directory.add(host_name, agent_ids, prices)
        return len(self._directory.agents)

    def agent_count(self) -> int:
        return len(self._directory.agents)

    def host_names(self) -> list[str]:
        return list(self._directory.host_names)

    async def deposit(self, agent: str, amount_micros: int) -> int:
        """Add funds to ``agent`` (durable when this returns); the event count written (1)."""
        return await self.deposits([(agent, amount_micros)])

    async def deposits(self, deposits: list[tuple[str, int]]) -> int:
        """Add funds to each ``(agent, amount_micros)``, one shard call per shard; durable when this
        returns; the event count written. A shard that fails is rebuilt and its part retried: the
        deposits of a call that failed were not applied (a shard call is all or nothing)."""
        await self._ready()
        if not self.config.track_balances:
            raise InvalidArgumentError("track_balances", False, "deposits need a mesh that tracks balances")
        by_shard: dict[int, list[tuple[str, int]]] = defaultdict(list)
        for agent, amount_micros in deposits:
            by_shard[shard_of(agent, self.config.shards)].append((agent, amount_micros))
        await asyncio.gather(*(self._deposit_on(shard, part) for shard, part in by_shard.items()))
        return len(deposits)

    async def _deposit_on(self, shard: int, deposits: list[tuple[str, int]]) -> None:
        for _ in range(MAX_SHARD_ATTEMPTS):
            await self._wait_recovered(shard)
            ref = self._shards[shard].deposit_batch.remote(deposits, self._clock.now_us(), "live")
            entry = self._log_of(shard).push(ref)
            try:
                await entry.answer
            except Exception:  # noqa: BLE001 - rebuild, then retry
                await self._recover_shard(shard)
                continue
            await entry.durable
            return
        raise ShardUnavailableError(f"budget shard {shard} is unreachable")

    async def reset_daily(self, mode: str = "live") -> None:
        """The seed's manual reset: every shard forgets today's usage; one ``reset_daily`` event (in
        each partition of a partitioned ledger)."""
        await self._ready()
        now_us = self._clock.now_us()
        resets = [shard.reset_usage.remote() for shard in self._shards]
        entries = []
        for k, log in enumerate(self._logs):
            shard = k if self.config.partitioned_ledger else None
            event = record_event("reset_daily", TollRecord("", "", ""), ts_us=now_us, mode=mode, shard=shard)
            entries.append(log.push_answer(([], encode_events([event]), 1, [], [])))
        await asyncio.gather(*resets, return_exceptions=True)  # a shard that died replays the event instead
        await asyncio.gather(*(entry.durable for entry in entries))

    async def expire_stale(self) -> list[TollRecord]:
        """Refund every escrow past ``escrow_timeout_s`` on every shard now; the records refunded."""
        await self._ready()
        entries: list[LogEntry] = []
        answers = await asyncio.gather(*(
            self._shard_call_now(s, "expire_due", entries) for s in range(self.config.shards)
        ))
        expired = [record for answer in answers if answer is not None for record in answer[0]]
        if await self._all_counted(entries):  # else the recount after the rebuild counts what is on disk
            self._count.settled(expired)
        return [record_from_wire(record) for record in expired]

    async def _shard_call_now(self, shard: int, method: str, entries: list[LogEntry]) -> Optional[ShardAnswer]:
        await self._wait_recovered(shard)
        entry = self._log_of(shard).push(getattr(self._shards[shard], method).remote(self._clock.now_us(), "live"))
        try:
            answer = await entry.answer
        except Exception:  # noqa: BLE001 - the next sweep tries again
            return None
        entries.append(entry)
        return answer

    def set_verifier(self, verifier: Optional[Verifier]) -> None:
        """Verify paid calls with ``verifier`` from now on (None: no more). A verifier that can judges
        validity windows on the mesh's clock and learns the payments the ledger spent already; it is
        kept beside the ledger (``x402_verifier.pkl``) so that a restarted coordinator verifies as before."""
        path = self.config.out_dir / VERIFIER_FILE
        if verifier is None:
            path.unlink(missing_ok=True)
        else:
            write_whole(path, ray.cloudpickle.dumps(verifier))
        self._adopt_verifier(verifier)

    def _adopt_verifier(self, verifier: Optional[Verifier]) -> None:
        if verifier is not None:
            if callable(getattr(verifier, "bind_clock", None)):
                verifier.bind_clock(lambda: self._clock.now_us() / US_PER_SECOND)
            if callable(getattr(verifier, "restore_from_ledger", None)):
                restored = verifier.restore_from_ledger(self.config.ledger_path)
                if restored:
                    logger.warning("x402: %d payment(s) the ledger spent already will be refused if presented again", restored)
        self._verifier = verifier

    def x402_stats(self) -> Optional[dict[str, Any]]:
        """The verifier's own counters (payments checked, CPU seconds), if it keeps any."""
        stats = getattr(self._verifier, "stats", None)
        return stats() if callable(stats) else None

    async def set_caps(self, default_cap_micros: Optional[int], agent_caps_micros: dict[str, Optional[int]]) -> None:
        """Change the daily caps on every shard (from now on; usage so far counts). They are kept in
        ``runtime_caps.json`` first, so a shard that restarts later builds with them."""
        await self._ready()
        path = self.config.runtime_caps_path
        known = orjson.loads(path.read_bytes())["agent_caps_micros"] if path.exists() else {}
        write_whole(path, orjson.dumps({"default_cap_micros": default_cap_micros,
                                        "agent_caps_micros": {**known, **agent_caps_micros}}))
        await asyncio.gather(*(s.set_caps.remote(default_cap_micros, agent_caps_micros) for s in self._shards))

    def set_redelivery(self, enabled: bool) -> None:
        """While on, a message whose task id is already locked (an escrow a crashed run, or a dead
        instance of this actor, left open) is delivered and settled, not answered as a repeat.

        Only for a driver that sends again what it sent before a crash, with no other call of
        those task ids in flight (``tollmesh simulate`` redoing a tick, or ``--resume``).
        """
        if not isinstance(enabled, bool):
            raise InvalidArgumentError("enabled", enabled, "a bool")
        self._redeliver = enabled

    def get_config(self) -> MeshConfig:
        return self.config

    def advance_clock(self, seconds: float) -> int:
        """Move a manual clock forward; the new time in microseconds."""
        return self._clock.advance(seconds)

    def now_us(self) -> int:
        return self._clock.now_us()

    # -- state, stats, shutdown -----------------------------------------------------------

    async def snapshot(self) -> dict[str, Any]:
        """Balances, locked amounts, today's usage and open escrows of all shards (what replay rebuilds)."""
        await self._ready()
        await asyncio.gather(*(log.drain() for log in self._logs))
        if self._credits is not None:
            await self._credits.drain()  # a credit on its way is in the target's balance once written
        now_us = self._clock.now_us()
        parts = await asyncio.gather(*(shard.snapshot.remote(now_us) for shard in self._shards))
        return merge_snapshots(parts)

    async def stats(self) -> dict[str, Any]:
        """Counts and amounts by outcome, refusals and refunds by reason, and each shard's state."""
        await self._ready()
        shards, writers = await asyncio.gather(asyncio.gather(*(shard.stats.remote() for shard in self._shards)),
                                               asyncio.gather(*(writer.stats.remote() for writer in self._writers)))
        by_reason = {k[len("rejected:"):]: v for k, v in self._count.counts.items() if k.startswith("rejected:")}
        refunds = {k[len("refunded:"):]: v for k, v in self._count.counts.items() if k.startswith("refunded:")}
        return {
            "locked": self._count.counts["locked"], "released": self._count.counts["released"],
            "refunded": self._count.counts["refunded"], "rejected": self._count.counts["rejected"],
            "rejected_by_reason": by_reason, "refunded_by_reason": refunds,
            "released_micros": self._count.amounts["released"], "refunded_micros": self._count.amounts["refunded"],
            "locked_micros": sum(s["locked_total_micros"] for s in shards),
            "open_escrows": sum(s["open_escrows"] for s in shards),
            "fast_lane_calls": self._count.counts["fast_lane"],
            "agents": len(self._directory.agents), "hosts": len(self._directory.hosts),
            # both ways in, a broken lane run's too
            "events_written": sum(w["next_seq"] - first for w, first in zip(writers, self._first_seqs)),
            "shards": shards, "pid": os.getpid(),
        }

    async def memory(self) -> dict[str, Any]:
        """Resident memory of every process of the mesh, by role, with what each holds."""
        await self._ready()
        shards, hosts, writers = await asyncio.gather(  # an actor that does not answer is left out
            asyncio.gather(*(shard.memory.remote() for shard in self._shards), return_exceptions=True),
            asyncio.gather(*(host.memory.remote() for host in self._directory.hosts), return_exceptions=True),
            asyncio.gather(*(writer.memory.remote() for writer in self._writers), return_exceptions=True),
        )
        writers = [w for w in writers if isinstance(w, dict)]
        sinks = [w["parquet_sink_rss_bytes"] for w in writers if w["parquet_sink_rss_bytes"] is not None]
        return {
            "coordinator": {"rss_bytes": rss_bytes(), "agents": len(self._directory.agents)},
            "shards": [s for s in shards if isinstance(s, dict)], "hosts": [h for h in hosts if isinstance(h, dict)],
            # every writer's (one per partition of a partitioned ledger), summed; each in "writers"
            "writer": {"rss_bytes": sum(w["rss_bytes"] for w in writers), "parquet_sink_rss_bytes": sum(sinks) if sinks else None},
            "writers": writers,
        }

    async def close(self) -> dict[str, Any]:
        """Wait for the batches in flight, flush the ledger and close it (Parquet written out)."""
        await self._ready()
        while self._waiting[False] or self._waiting[True] or self._batch_tasks:
            await asyncio.sleep(0.01)
        if self._credits is not None:
            await self._credits.drain()
        self._closed = True
        self._sweeper.cancel()
        await asyncio.gather(*(log.close() for log in self._logs))
        return merge_summaries(await asyncio.gather(*(writer.close.remote() for writer in self._writers)))

    # -- internals -----------------------------------------------------------------------

    async def _ready(self) -> None:
        if self._started is None:
            self._started = asyncio.ensure_future(self._start())
        await self._started

    async def _start(self) -> None:
        self._admission = asyncio.Semaphore(self.config.max_inflight_batches)
        on_written = None if self._credits is None else self._credits.on_written
        self._logs = [OrderedLog(writer.append_encoded.remote, on_lost=self._on_append_lost, on_durable=self._tell_shards_durable,
                                 on_written=on_written, max_appends_in_flight=1, partition=k)
                      for k, writer in enumerate(self._writers)]
        if self._restarted:  # events in the old instance's log are lost: the shards go back to the ledger
            logger.warning("coordinator restarted: rebuilding every shard from the ledger")
            await self._rebuild(list(range(self.config.shards)))
            last_us = last_ts_us(self.config.ledger_path)
            if last_us is not None:
                self._clock.resume_after(last_us)  # a manual clock starts again where the ledger left off
            self._reload_verifier()
            await self._recount()
            for sources in await asyncio.gather(*(shard.open_sources.remote() for shard in self._shards)):
                self._booth_sources.update(sources)  # open escrows can still be released or refunded by task id
        # credits an earlier instance (or mesh, crashed whole) never wrote, although their releases are on disk
        if self._credits is not None and not await self._credits.repair():
            logger.error("some credits the ledger lacks could not be written at start; the next recovery writes them")
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    def _reload_verifier(self) -> None:
        """The verifier the old instance was given (kept by :meth:`set_verifier`), with the payments spent since."""
        path = self.config.out_dir / VERIFIER_FILE
        if path.exists():
            self._adopt_verifier(ray.cloudpickle.loads(path.read_bytes()))
            logger.warning("coordinator restarted: its x402 verifier is back, from %s", path)

    async def _recount(self) -> None:
        """Count the calls again from the ledger (the truth), from the mesh's start to its end now.

        After a restart (the old instance's counters are gone) and after a lost append (whose
        events may or may not be on disk). Batches whose events landed before this point are
        then not counted again by themselves: see :meth:`_counts_entry`.
        """
        through = [stats["next_seq"] for stats in await asyncio.gather(*(w.stats.remote() for w in self._writers))]
        # Read on the event loop, on purpose: no batch counts anything between the tally and the new boundary.
        counts, amounts = Tally(), Tally()
        for k, (first, last) in enumerate(zip(self._first_seqs, through)):
            tally = tally_ledger(self.config.writer_ledger(k), from_seq=first, to_seq=last)
            counts.update(tally.counts)
            amounts.update(tally.amounts)
        self._count.recounted(counts, amounts)
        self._counted_from = through
        logger.warning("%d calls counted again from the ledger", counts["locked"] + counts["rejected"])

    async def _all_counted(self, entries: list[LogEntry]) -> bool:
        """Whether the caller counts these entries' events (see :meth:`_counts_entry`)."""
        durable = await asyncio.gather(*(e.durable for e in entries), return_exceptions=True)
        return all(self._counts_entry(e, o) for e, o in zip(entries, durable))

    def _counts_entry(self, entry: LogEntry, durable: Any) -> bool:
        """Whether a shard call whose ``durable`` outcome this is gets counted by its batch: its events
        are on disk, and were not counted by a :meth:`_recount` (which counts what lies before its seq,
        in its partition)."""
        if isinstance(durable, BaseException):
            return False
        return durable is None or durable >= self._counted_from[entry.partition]

    async def _sweep_forever(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.config.sweep_interval_s)
            try:
                await self.expire_stale()
            except Exception as exc:  # noqa: BLE001 - the sweeper must outlive any one failure
                logger.error("expiry sweep failed: %s: %s", type(exc).__name__, exc)


def merge_summaries(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """One writer summary from several (a partitioned ledger's): counts summed, file lists joined,
    errors (``parquet_error``) joined or None, anything else listed by writer.

    >>> merge_summaries([{"events": 2, "parquet_files": ["a"], "parquet_error": None},
    ...                  {"events": 3, "parquet_files": ["b"], "parquet_error": None}])
    {'events': 5, 'parquet_files': ['a', 'b'], 'parquet_error': None}
    """
    if len(summaries) == 1:
        return summaries[0]
    merged: dict[str, Any] = {}
    for key in summaries[0]:
        values = [summary.get(key) for summary in summaries]
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            merged[key] = sum(values)
        elif all(isinstance(v, list) for v in values):
            merged[key] = [item for v in values for item in v]
        elif all(v is None or isinstance(v, str) for v in values):
            said = [f"writer {k}: {v}" for k, v in enumerate(values) if v is not None]
            merged[key] = "; ".join(said) if said else None
        else:
            merged[key] = values
    return merged
