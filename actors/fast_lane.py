"""The fast lane: one call at a time through a Ray Compiled Graph, for low single-call latency.

A plain Ray actor call costs ~1.2-1.5 ms on a 2-core machine, and a call's lifecycle
crosses four actors (lock on the caller's shard, run on the target's host, settle on
the shard, durable at the writer), so through the coordinator a single call takes
~11 ms. A compiled graph (``ray.dag``) passes each stage's answer through shared-memory
channels instead, ~0.1 ms a stage. The graph is fixed when it is compiled, so every
shard and host is a stage and each acts only on the calls that are its own (the
others answer None at once):

    plan -> shard.fast_lock (each shard) -> host.fast_deliver (each host)
         -> shard.fast_settle (each shard) -> writer.fast_append (each writer)
         -> shard.fast_settled (each shard)

A partitioned ledger has a writer per shard, and the caller's shard's writer writes the call.
Its calls that would pay another partition's agent (with balances) take the coordinator's
way: the release is credited there by a ``credit`` event of that partition
(:mod:`actors.partition_credits`), in the order of the source partition's releases, which
the lane does not keep.

The :class:`~mesh.Mesh` that owns the actors compiles it (only the process that compiles a
graph may run it) and sends it a call only when the call is plain: a known target and
method, no x402 payment, a system clock, and no other call of that driver in the lane.
Everything else, batches and attached drivers take the coordinator's way; both ways use
the same shards, so caps, funds and idempotency by ``task_id`` hold across them.

Order in the ledger: the lane's lock and settle events are written together once the
call is settled, so other calls' events (a handler's own nested calls among them) may be
written between the lock being taken and its event. A debit written later than it was
taken only ever shows a replay more room than the shard had. The settlement is the other
way round: it gives room back (to the caller's cap and balance, or the target's balance),
so from ``fast_settle`` until ``fast_settled`` (the events are on disk) the caller's shard
holds its ordinary calls back; none of them can use that room before the ledger has it.
Every prefix of the ledger is then a state the shards went through, or one with more room.

A stage that fails (an actor died, a shard was stale) fails the run: the lane is torn
down, the caller has the coordinator rebuild every shard from the ledger (a lock taken
but never written is dropped there) and refund the call if its lock was written and its
settlement was not; a call of which nothing was written goes the coordinator's way. Actors
take no part in a graph once it is torn down; ``teardown`` waits for their stages to end.

>>> lane = FastLane(shards, hosts, [writer], handler_timeout_s=30.0)                        # doctest: +SKIP
>>> lock, outcome, settle, seqs = lane.run(plan)                                         # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, NamedTuple, Optional

import ray

logger = logging.getLogger("tollmesh.fast_lane")

_LOCKED = "escrow_locked"  # SettlementStatus.ESCROW_LOCKED.value, as records travel
#: A shard's answer to ``fast_lock`` when the call must go the coordinator's way: events of the
#: shard's ordinary calls are not all on disk yet (the lane's lock may use room one of them gave
#: back, and must not reach the ledger before it), or a lock of its is past its deadline (the
#: coordinator's sweep writes that expiry through its ordered log; the lane would write it only
#: once its own call settles, after a caller might have heard of it).
GO_AROUND = "go_around"
MAX_FAST_LANE_ACTORS = 24  # shards + hosts: past this, every call would wake too many idle stages


class FastPlan(NamedTuple):
    """One call as the lane's stages read it."""

    task_id: str
    source: str
    target: str
    method: str
    payload: Any
    price_micros: int
    shard: int  # the caller's budget shard
    target_shard: int  # the target's shard (credits, with balances)
    host: int  # the target's host, by its place in the lane
    now_us: int


class FastAnswer(NamedTuple):
    """What the lane hands back: the shard answers (wire records), the handler's outcome, the ledger seqs."""

    lock: tuple | str  # the caller's shard's ShardAnswer of the lock, or GO_AROUND
    outcome: Optional[tuple[int, Any]]  # (code, value) from the host; None when nothing was locked
    settle: Optional[tuple]  # the ShardAnswer of the release or refund; None when nothing was locked
    seqs: Optional[tuple[int, int]]  # (first seq, last seq) of the events written; None if none


class FastLaneBrokenError(RuntimeError):
    """A stage of the lane failed: the call's state is what the ledger says once the shards are rebuilt."""


class FastLane:
    """A compiled graph over a mesh's shards, hosts and writer; see the module doc."""

    def __init__(self, shards: list[Any], hosts: list[Any], writers: list[Any], *, handler_timeout_s: float) -> None:
        """``writers``: the ledger's one writer, or a partitioned ledger's, one per shard in shard order."""
        from ray.dag import InputNode, MultiOutputNode

        # the host stage waits for its handler up to its timeout: the run waits a little longer
        self.timeout_s = handler_timeout_s * 1.5 + 5.0
        ray.get([h.bind_loop.remote() for h in hosts] + [w.bind_loop.remote() for w in writers])
        partitioned = len(writers) > 1
        with InputNode() as plan:
            locks = [shard.fast_lock.bind(plan) for shard in shards]
            outcomes = [host.fast_deliver.bind(index, plan, *locks) for index, host in enumerate(hosts)]
            settles = [shard.fast_settle.bind(plan, *locks, *outcomes) for shard in shards]
            answers = [writer.fast_append.bind(plan, k if partitioned else None, len(shards), *locks, *outcomes, *settles)
                       for k, writer in enumerate(writers)]
            # the caller's shard lets ordinary calls in again; the target's credits the release
            graph = MultiOutputNode([*answers, *(shard.fast_settled.bind(plan, *answers) for shard in shards)])
        self._graph = graph.experimental_compile(_submit_timeout=self.timeout_s)
        self._writers = len(writers)

    def run(self, plan: FastPlan) -> FastAnswer:
        """Run one call's lifecycle; raises :class:`FastLaneBrokenError` if any stage failed."""
        try:
            return only(ray.get(self._graph.execute(plan), timeout=self.timeout_s)[:self._writers])
        except Exception as exc:  # noqa: BLE001 - any failure: the caller recovers from the ledger
            raise FastLaneBrokenError(f"{type(exc).__name__}: {exc}"[:1_000]) from exc

    def close(self) -> None:
        """Tear the graph down (the actors live on and serve ordinary calls)."""
        try:
            self._graph.teardown()
        except Exception as exc:  # noqa: BLE001 - an actor of the graph is already gone
            logger.warning("fast lane teardown: %s: %s", type(exc).__name__, exc)


def on_loop(loop: Optional[asyncio.AbstractEventLoop], coroutine: Any, timeout_s: Optional[float] = None) -> Any:
    """Run ``coroutine`` on an async actor's event loop from a graph stage (which runs on a thread of its own)."""
    if loop is None:
        coroutine.close()
        raise RuntimeError("the actor's event loop is not known: call bind_loop first")
    return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout_s)


def only(answers: tuple) -> Any:
    """The one answer that is not None (the stage that owned the call), or None."""
    return next((a for a in answers if a is not None), None)


def fast_locked(answer: Optional[tuple]) -> bool:
    """Whether a shard's answer to ``fast_lock`` took a fresh lock (not: another shard's call, a
    task id already seen, a refusal)."""
    if answer is None or answer == GO_AROUND or answer[4]:
        return False
    return answer[0][0][5] == _LOCKED
