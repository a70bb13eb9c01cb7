"""The budget shard actor: the escrow book of the agents hashed to it, driven in batches.

Each shard holds a :class:`~actors.shard_core.ShardCore` (a columnar book) over the agents
whose id :func:`~mesh.core.sharding.shard_of` maps to it. The escrow coordinator is its only
caller and sends it whole batches: as columns (:meth:`BudgetShard.lock_columns`,
:meth:`BudgetShard.settle_columns`: the batched hot path), or as records
(:meth:`BudgetShard.lock_batch`: lock, reject, pend or paper-release each draft, cap and
funds checked atomically, one after another; :meth:`BudgetShard.settle_batch`),
:meth:`BudgetShard.expire_due`, deposits and credits. Every call answers its events
(JSON lines encoded here, on the shard's core, for the ledger writer) and the releases
paid to agents another shard holds (credits to forward). A columnar call answers in three
objects (:data:`COLUMNS_RETURNS`): the answer, then its lines and Parquet rows, which the
coordinator hands to the writer as references it never reads (Ray moves them once, shard to
writer); a payload of at most :data:`INLINE_PAYLOAD_BYTES` rides in the answer instead.

State lives in memory and is rebuilt from the ledger: a shard that Ray restarts after
a crash refuses work (:class:`ShardRecoveringError`) until the coordinator, having
flushed every event already handed to it, calls :meth:`BudgetShard.rebuild`.

>>> import ray                                                           # doctest: +SKIP
>>> shard = BudgetShard.remote(ShardSpec(index=0, shards=1, default_cap_micros=None))  # doctest: +SKIP
>>> records, lines, events, credits, repeats, expired, mark = ray.get(shard.lock_batch.remote(
...     [(LOCK, "t1", "alice", "bob", 10, 0.0, None, None, None)], 0, "live"))  # doctest: +SKIP
>>> records[0].status.value, events                                       # doctest: +SKIP
('escrow_locked', 1)
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Optional

import numpy as np
import ray

from actors.agent_host import OK, refund_reason
from actors.fast_lane import GO_AROUND, FastAnswer, FastPlan, fast_locked, only
from actors.gc_tuning import tune_gc
from actors.malloc_tuning import keep_freed_memory
from actors.run_files import files_from
from actors.shard_core import INSTANT, LOCK, PEND, REJECT, ColumnsAnswer, ShardAnswer, ShardCore, ShardSpec
from actors.wire import unpack
from mesh.calls.coded import CodedNames
from mesh.core.errors import TollmeshError
from actors.memory import rss_bytes
from mesh.core.records import record_to_wire

__all__ = ["BudgetShard", "with_payload", "ShardCore", "ShardSpec", "ShardAnswer", "ColumnsAnswer", "ShardRecoveringError",
           "LOCK", "INSTANT", "REJECT", "PEND"]

COLUMNS_RETURNS = 3  # (answer, lines or None, Parquet rows or None)
INLINE_PAYLOAD_BYTES = 64 * 1024  # below Ray's 100 KiB for objects it sends inline: no object store round trip
FAST_SETTLE_WAIT_S = 10.0  # an ordinary call waits at most this long for the lane's settlement to be written

class ShardRecoveringError(TollmeshError):
    """A restarted shard refuses work until the coordinator has it rebuilt from the ledger."""


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
class BudgetShard:
    """A Ray actor around :class:`ShardCore`; see the module doc. Calls run one at a time, in order.

    The fast lane's stages (``fast_*``) run on the compiled graph's thread, so every method
    that touches the core holds ``_lock``; calls that write events also wait for the lane's
    last settlement to be on disk (:meth:`_book`).
    """

    def __init__(self, spec: ShardSpec, writer_name: Optional[str] = None, namespace: Optional[str] = None) -> None:
        """``writer_name`` (in ``namespace``): the mesh's ledger writer, through which the shard reads the
        ledger and the caps files on any node (:mod:`actors.run_files`); None reads them from this node's disk."""
        tune_gc()
        keep_freed_memory()
        restarted = ray.get_runtime_context().was_current_actor_reconstructed
        # A restarted shard must not replay yet: events it made before the crash may still be on their way
        # to the ledger. It reads nothing either (a constructor that raises ends the actor for good): it
        # refuses work until the coordinator has it rebuild, which reads the ledger and the caps, with retries.
        self._core = ShardCore(spec, files_from(writer_name, namespace), build=not restarted)
        self._stale = restarted
        self._lock = threading.Lock()
        self._settle_written = threading.Event()  # cleared from a lane settlement until it is on disk
        self._settle_written.set()
        # ordinary calls that wrote events: how many this process applied, and how many of them the
        # coordinator has seen on disk (mark_durable); the lane locks only when the two are equal
        self._epoch = uuid.uuid4().hex
        self._ordinary_applied = 0
        self._ordinary_durable = 0

    def ready(self) -> int:
        """The pid of the shard's process (a cheap call that waits for the constructor)."""
        return os.getpid()

    def mark_stale(self) -> None:
        """Refuse work until :meth:`rebuild` (the coordinator is about to flush the ledger and rebuild this shard)."""
        with self._lock:
            self._stale = True

    def rebuild(self) -> int:
        """Replay the ledger (the coordinator calls this once it has flushed every event it holds)."""
        with self._lock:
            through = self._core.rebuild()
            self._stale = False
            self._settle_written.set()  # a settlement the lane never wrote is gone with the old book
            self._ordinary_durable = self._ordinary_applied  # the book is now what the ledger holds
            return through

    def mark_durable(self, epoch: str, op: int) -> None:
        """The coordinator has on disk the events of this process's ordinary calls up to ``op``
        (the third item of their answers' mark; a mark of an earlier process is ignored)."""
        with self._lock:
            if epoch == self._epoch and op > self._ordinary_durable:
                self._ordinary_durable = op

    def lock_batch(self, ops: list[tuple] | bytes, now_us: int, mode: str) -> ShardAnswer:
        with self._book():
            self._check_fresh()
            return self._mark(_to_wire(self._core.lock_batch(unpack(ops), now_us, mode)))

    def settle_batch(self, ops: list[tuple[str, bool, Optional[str]]] | bytes, now_us: int, mode: str) -> ShardAnswer:
        with self._book():
            self._check_fresh()
            return self._mark(_to_wire(self._core.settle_batch(unpack(ops), now_us, mode)))

    def expire_due(self, now_us: int, mode: str) -> ShardAnswer:
        with self._book():
            self._check_fresh()
            return self._mark(_to_wire(self._core.expire_due(now_us, mode)))

    def deposit(self, agent: str, amount_micros: int, now_us: int, mode: str) -> ShardAnswer:
        with self._book():
            self._check_fresh()
            return self._mark(_to_wire(self._core.deposit(agent, amount_micros, now_us, mode)))

    def deposit_batch(self, deposits: list[tuple[str, int]], now_us: int, mode: str) -> ShardAnswer:
        with self._book():
            self._check_fresh()
            return self._mark(_to_wire(self._core.deposit_batch(deposits, now_us, mode)))

    @ray.method(num_returns=COLUMNS_RETURNS)
    def lock_columns(self, task_ids: list[str], sources: CodedNames, targets: CodedNames, price_micros: np.ndarray,
                     reject_codes: np.ndarray, now_us: int) -> tuple:
        """:meth:`ShardCore.lock_columns`; the answer as the ordered log reads it, its mark last, and
        its ledger payload apart (see the module doc)."""
        with self._book():
            self._check_fresh()
            return self._columns(self._core.lock_columns(task_ids, sources, targets, price_micros, reject_codes, now_us))

    @ray.method(num_returns=COLUMNS_RETURNS)
    def settle_columns(self, rows: np.ndarray, ok: np.ndarray, reason_codes: np.ndarray, now_us: int) -> tuple:
        """:meth:`ShardCore.settle_columns`, answered as :meth:`lock_columns`."""
        with self._book():
            self._check_fresh()
            return self._columns(self._core.settle_columns(rows, ok, reason_codes, now_us))

    def credit(self, credits: list[tuple[str, int, int]] | bytes) -> int:
        with self._book():
            self._check_fresh()
            return self._core.credit(unpack(credits))

    def credit_events(self, credits: list[tuple] | bytes, from_shard: int, now_us: int) -> ShardAnswer:
        """:meth:`ShardCore.credit_events` (a partitioned ledger's credits, written as events)."""
        with self._book():
            self._check_fresh()
            return self._mark(self._core.credit_events(unpack(credits), from_shard, now_us))

    def credit_marks(self) -> dict[int, int]:
        with self._lock:
            self._check_fresh()
            return self._core.credit_marks()

    def reset_usage(self) -> None:
        with self._book():
            self._check_fresh()
            self._core.reset_usage()

    def set_caps(self, default_cap_micros: Optional[int], agent_caps_micros: dict[str, Optional[int]]) -> None:
        with self._lock:
            self._core.spec = ShardSpec(**{**self._core.spec.__dict__, "default_cap_micros": default_cap_micros,
                                           "agent_caps_micros": {**self._core.spec.agent_caps_micros, **agent_caps_micros}})
            self._core.set_caps(default_cap_micros, agent_caps_micros)

    def get(self, task_id: str) -> Optional[tuple]:
        with self._lock:
            self._check_fresh()
            return record_to_wire(self._core.get(task_id))

    def snapshot(self, now_us: int) -> dict[str, Any]:
        with self._lock:
            self._check_fresh()
            return self._core.snapshot(now_us)

    def open_sources(self) -> dict[str, str]:
        with self._lock:
            self._check_fresh()
            return self._core.open_sources()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {**self._core.stats(), "stale": self._stale}

    def memory(self) -> dict[str, Any]:
        """This shard's process memory (RSS) and what it holds."""
        with self._lock:
            book = self._core.book
            return {"rss_bytes": rss_bytes(), "open_escrows": book.open_count, "records": book.tasks.count,
                    "agents": book.agent_count, **book.nbytes()}

    # -- the fast lane's stages (actors.fast_lane): each acts only on its own calls --------

    def fast_lock(self, plan: FastPlan) -> Optional[ShardAnswer] | str:
        """Lock the plan's toll if its caller is this shard's (:data:`GO_AROUND` if a lock is due to expire)."""
        if plan.shard != self._core.spec.index:
            return None
        op = (LOCK, plan.task_id, plan.source, plan.target, plan.price_micros, 0.0, None, None, None)
        with self._lock:
            self._check_fresh()
            if (self._ordinary_durable < self._ordinary_applied or self._core.book.expiry_due(plan.now_us)
                    or self._credits_elsewhere(plan)):
                return GO_AROUND
            return _to_wire(self._core.lock_batch([op], plan.now_us, "live"))

    def fast_settle(self, plan: FastPlan, *answers: Any) -> Optional[ShardAnswer]:
        """Release or refund the plan's toll by the handler's outcome, if this shard locked it.

        ``answers``: every shard's lock answer, then every host's outcome.
        """
        index, shards = self._core.spec.index, self._core.spec.shards
        if plan.shard != index or not fast_locked(answers[index]):
            return None
        code, _ = only(answers[shards:])
        op = (plan.task_id, code == OK, None if code == OK else refund_reason(code))
        now_us = max(plan.now_us, time.time_ns() // 1_000)
        with self._lock:
            self._check_fresh()
            answer = _to_wire(self._core.settle_batch([op], now_us, "live"))
            self._settle_written.clear()  # ordinary calls wait until the writer has it (see _book)
            return answer

    def fast_settled(self, plan: FastPlan, *answers: Optional[FastAnswer]) -> int:
        """The fast lane's last stage, once the writer has the call's events on disk: the caller's
        shard lets ordinary calls in again; the target's shard credits the release the caller's shard
        paid it (with balances, on another shard of one ledger). The amount credited.

        ``answers``: every writer's (one of them wrote the call).
        """
        index, answer = self._core.spec.index, only(answers)
        if plan.shard == index:
            self._settle_written.set()
        settle = answer.settle
        if plan.target_shard != index or settle is None or not settle[3] or answer.seqs is None:
            return 0
        first_settle_seq = answer.seqs[0] + answer.lock[2]
        credits = [(agent, amount, first_settle_seq + i) for agent, amount, i, *_ in settle[3]]
        with self._lock:
            self._check_fresh()
            return self._core.credit(credits)

    def _credits_elsewhere(self, plan: FastPlan) -> bool:
        """Whether the plan's release would be a credit event of another partition (which the
        coordinator writes, in this partition's seq order: see :mod:`actors.partition_credits`)."""
        spec = self._core.spec
        return spec.partitioned and spec.track_balances and plan.target_shard != plan.shard

    @contextmanager
    def _book(self) -> Iterator[None]:
        """Hold the core for an ordinary call, once the lane's last settlement is on disk.

        A settlement gives room back (a refund to the caller's cap and balance, a release to the
        target's balance). A call that used that room must not reach the ledger before it: the
        lane writes from the writer's side of the graph, so ordinary calls wait for it here. If
        it never comes (the lane broke, its driver died), the shard refuses and is rebuilt from
        the ledger, where that settlement is not.
        """
        deadline = time.monotonic() + FAST_SETTLE_WAIT_S
        while True:
            if not self._settle_written.wait(max(0.0, deadline - time.monotonic())):
                self._stale = True
                self._settle_written.set()
                raise ShardRecoveringError(f"budget shard {self._core.spec.index}: a fast-lane settlement was "
                                           f"not written within {FAST_SETTLE_WAIT_S} s; rebuild from the ledger")
            self._lock.acquire()
            if self._settle_written.is_set():
                break
            self._lock.release()  # the lane settled again meanwhile: wait for that one too
        try:
            yield
        except Exception:
            self._stale = True  # the book may hold part of the call: it waits for its rebuild from the ledger
            raise
        finally:
            self._lock.release()

    def _mark(self, answer: ShardAnswer) -> tuple:
        """``answer`` with a seventh item for an ordinary call that wrote events: ``(shard, epoch, op)``,
        which the coordinator hands back through :meth:`mark_durable` once they are on disk."""
        if not answer[2]:
            return (*answer, None)
        self._ordinary_applied += 1
        return (*answer, (self._core.spec.index, self._epoch, self._ordinary_applied))

    def _columns(self, answer: ColumnsAnswer) -> tuple[tuple, Optional[bytes], Optional[bytes]]:
        """``(answer, lines, event count, _, _, _, mark)`` (the ordered log's shape, see :meth:`_mark`),
        and the lines and Parquet rows apart (the answer then holds neither: its lines are None), or
        None and None where they are small."""
        lines, rows = answer.lines, answer.parquet_rows
        if len(lines) + len(rows or b"") <= INLINE_PAYLOAD_BYTES:
            return self._mark((answer, lines, answer.event_count, None, None, None)), None, None
        slim = dataclasses.replace(answer, lines=b"", parquet_rows=None)
        return self._mark((slim, None, answer.event_count, None, None, None)), lines, rows

    def _check_fresh(self) -> None:
        if self._stale:
            raise ShardRecoveringError(f"budget shard {self._core.spec.index} restarted and waits for its rebuild")


async def with_payload(answer: ray.ObjectRef, lines: ray.ObjectRef, rows: ray.ObjectRef) -> tuple:
    """A columnar call's answer (the three refs of :meth:`BudgetShard.lock_columns`) as the ordered log
    reads it, with its lines and Parquet rows as the refs the writer reads where they came apart: only
    the answer is read here."""
    head = await answer
    if head[1] is not None:
        return head
    return (dataclasses.replace(head[0], lines=lines, parquet_rows=rows), lines, *head[2:])


def _to_wire(answer: ShardAnswer) -> ShardAnswer:
    """The answer with its records as plain tuples (:func:`~mesh.core.records.record_to_wire`), cheap to pickle."""
    return ([record_to_wire(r) for r in answer[0]], *answer[1:5], [record_to_wire(r) for r in answer[5]])  # type: ignore[return-value]
