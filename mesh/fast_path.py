"""The owning driver's side of the fast lane: which calls take it, its life, and the results.

:class:`FastPath` keeps what the driver needs to plan a call without asking the
coordinator (its hosts, and each agent's host and prices, as it added them) and answers
:meth:`FastPath.call` with a result, or None when the call must take the coordinator's
way: a target another driver added, a paid call (x402), a payload over the limit, a
manual clock, another thread already in the lane, or no lane open.

A compiled graph's stages wait for their input by spinning (Ray's ``ReadAcquire`` yields
the core in a loop), so an open lane costs its actors CPU even when idle (~12% off
``mesh.send`` on 2 cores). The lane therefore opens on demand and parks when idle: single
calls that find it closed go the coordinator's way, and once ``OPEN_AFTER_CALLS`` of them
came one after another within ``fast_lane_idle_s`` it is compiled in the background
(~0.5 s; a burst of concurrent calls counts as one); it closes after
``fast_lane_idle_s`` without a call, when a bulk send of ``PARK_AT_MESSAGES`` or more begins,
when hosts are added, and when it breaks (then it stays closed ``RETRY_AFTER_S``).
:meth:`FastPath.open` compiles it now, for callers that want the first calls fast.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from typing import Any, Optional

import ray

from actors.agent_host import OK, STUCK
from actors.fast_lane import (
    GO_AROUND,
    MAX_FAST_LANE_ACTORS,
    FastAnswer,
    FastLane,
    FastLaneBrokenError,
    FastPlan,
    fast_locked,
)
from mesh.calls.agent import PriceTable, WireMessage
from mesh.calls.mesh_config import MeshConfig
from mesh.core.records import SettlementStatus
from mesh.core.sharding import shard_of

logger = logging.getLogger("tollmesh.fast_path")

RETRY_AFTER_S = 10.0
MAX_RETRY_AFTER_S = 600.0  # a graph that will not compile (a cluster where it cannot) is tried ever less often
PARK_AT_MESSAGES = 1_000  # a send of this many messages parks the lane (Mesh.send, Mesh.send_columns)
OPEN_AFTER_CALLS = 8  # single calls within fast_lane_idle_s that open the lane (a few calls are not worth it)
SEQUENTIAL_GAP_S = 0.002  # a call through the coordinator takes ~10 ms: calls closer than this came together
COUNTS_EVERY_CALLS = 1_000  # the lane's outcomes reach the coordinator's counters in batches of at most
COUNTS_EVERY_S = 0.5  # this many calls or seconds (a Ray call per call would cost the next call ~1 ms)
_RELEASED = SettlementStatus.RELEASED.value
_STATUS, _REASON = 5, 11


class FastPath:
    """See the module doc. Thread-safe: one call at a time takes the lane, the others go around it."""

    def __init__(self, config: MeshConfig, coordinator: Any, shards: list[Any], writers: list[Any]) -> None:
        self._config = config
        self._coordinator, self._shards, self._writers = coordinator, shards, writers
        self._hosts: list[Any] = []
        self._agents: dict[str, tuple[int, PriceTable]] = {}  # agent id -> (host index, prices)
        self._lane: Optional[FastLane] = None
        self._busy = threading.Lock()  # held by the call in the lane, and while the lane opens or closes
        self._retry_at = 0.0
        self._generation = 0  # moves on when hosts are added: a lane compiled before is stale
        self._opening: Optional[threading.Thread] = None
        self._last_used = time.monotonic()
        self._calls_around: list[float] = []  # when the last calls went around a closed lane
        self.went_around = 0  # calls the lane sent the coordinator's way (GO_AROUND: see actors.fast_lane)
        self._closed = threading.Event()
        self._parker: Optional[threading.Thread] = None
        self._compile_failures = 0
        # Ray's own exit hook tears compiled graphs down killing their actors: a detached mesh must outlive us
        atexit.register(self.close)
        self._counts: list[tuple] = []  # (lock record, settled record or None, events), not yet sent
        self._counts_in_flight: list[Any] = []  # refs of counts sent, not yet known to be counted
        self._counts_sent_at = time.monotonic()
        timeout_s = config.escrow_timeout_s
        # the lane's own lock must never expire under it: its events are written when it settles
        self.enabled = (config.fast_lane and config.clock == "system"
                        and (timeout_s is None or timeout_s > config.handler_timeout_s * 1.5 + 10.0))
        # a release to another partition's agent is a credit there, which the coordinator writes
        self._credits_across = config.partitioned_ledger and config.track_balances

    def add_host(self, host: Any, groups: list[tuple[list[str], PriceTable]]) -> None:
        """A host this driver started, with its agents (the lane is compiled again on its next use)."""
        with self._busy:
            index = len(self._hosts)
            self._hosts.append(host)
            for agent_ids, prices in groups:
                for agent_id in agent_ids:
                    self._agents[agent_id] = (index, prices)
            self._generation += 1
            self._close_lane()

    def call(self, message: WireMessage) -> Optional[tuple]:
        """Run ``message`` through the lane; its result (:func:`mesh.calls.agent.result_to_wire` form), or None."""
        plan = self.reserve(message)
        return None if plan is None else self.run_reserved(plan)

    def reserve(self, message: WireMessage) -> Optional[FastPlan]:
        """Take the lane for ``message`` (it may not, then None): its plan, for :meth:`run_reserved`,
        which must follow (on any thread: async callers reserve on their loop, run on a thread)."""
        task_id, source, target, method, payload, wallet, signature, problem = message
        entry = self._agents.get(target)
        if not self.enabled or entry is None or wallet or signature or problem is not None:
            return None
        price_micros = entry[1].price_micros(method)
        if price_micros is None or not self._busy.acquire(blocking=False):
            return None
        if self._lane is None:
            self._note_call_around()
            self._busy.release()
            return None
        shards = self._config.shards
        shard, target_shard = shard_of(source, shards), shard_of(target, shards)
        if self._credits_across and shard != target_shard:
            self._busy.release()
            return None
        self._last_used = time.monotonic()
        return FastPlan(task_id, source, target, method, payload, price_micros, shard, target_shard, entry[0],
                        time.time_ns() // 1_000)

    def run_reserved(self, plan: FastPlan) -> Optional[tuple]:
        """Run a call :meth:`reserve` took the lane for, and give the lane back; as :meth:`call`."""
        try:
            try:
                answer = self._lane.run(plan)
            except FastLaneBrokenError as exc:
                return self._recover(plan, exc)
            if answer.outcome is not None and answer.outcome[0] == STUCK:
                self._restart_host(plan.host)
            return self._result(plan, answer)
        finally:
            self._busy.release()

    def flush_counts(self) -> None:
        """Have the coordinator count every outcome so far (before anything reads its counters: Ray
        does not promise an async actor runs one caller's calls in the order they were sent)."""
        with self._busy:
            self._send_counts()
            ray.get(self._counts_in_flight)
            self._counts_in_flight = []

    def open(self, timeout_s: float = 60.0) -> bool:
        """Compile the lane now (if it may open) and wait for it; whether it is open."""
        deadline = time.monotonic() + timeout_s
        while self.enabled and self._lane is None and time.monotonic() < deadline:
            self._open_in_background()
            opening = self._opening
            if opening is None:  # it may not open (too many actors, closing, or it just failed)
                break
            opening.join(max(0.0, deadline - time.monotonic()))  # a compile of older hosts ends, then ours
        return self._lane is not None

    def park(self) -> None:
        """Close the lane now, unless a call is in it (a bulk send begins: the lane's stages spin while
        they wait, which takes CPU from the batches); single calls open it again as they do after idling."""
        if self._lane is not None and self._busy.acquire(blocking=False):
            try:
                self._close_lane()
                self._calls_around = []
            finally:
                self._busy.release()

    def close(self) -> None:
        """Close the lane for good (the mesh shuts down, or the process exits)."""
        atexit.unregister(self.close)
        self._closed.set()
        opening = self._opening
        if opening is not None:
            opening.join()
        with self._busy:
            self._send_counts()
            self._close_lane()

    # -- internals ------------------------------------------------------------------------------

    def _note_call_around(self) -> None:
        """Open the lane once ``OPEN_AFTER_CALLS`` single calls came within ``fast_lane_idle_s``, one
        after another: calls less than ``SEQUENTIAL_GAP_S`` apart are a burst of concurrent calls
        (the coordinator batches those well; compiling under them would only slow them down)."""
        now = time.monotonic()
        if self._calls_around and now - self._calls_around[-1] < SEQUENTIAL_GAP_S:
            return
        recent = [t for t in self._calls_around if now - t <= self._config.fast_lane_idle_s]
        recent.append(now)
        self._calls_around = recent[-OPEN_AFTER_CALLS:]
        if len(self._calls_around) >= OPEN_AFTER_CALLS:
            self._open_in_background()

    def _open_in_background(self) -> None:
        """Start compiling the lane, unless it is compiling, may not open, or broke a moment ago."""
        if (self._opening is not None or self._closed.is_set() or time.monotonic() < self._retry_at
                or len(self._shards) + len(self._hosts) > MAX_FAST_LANE_ACTORS):
            return
        self._opening = threading.Thread(target=self._compile, name="tollmesh-fast-lane-compile", daemon=True)
        self._opening.start()

    def _compile(self) -> None:
        try:
            generation, hosts = self._generation, list(self._hosts)
            try:
                lane = FastLane(self._shards, hosts, self._writers, handler_timeout_s=self._config.handler_timeout_s)
            except Exception as exc:  # noqa: BLE001 - no lane: calls take the coordinator's way
                self._compile_failures += 1
                wait_s = min(MAX_RETRY_AFTER_S, RETRY_AFTER_S * 2 ** (self._compile_failures - 1))
                logger.warning("fast lane not compiled (%s: %s); calls go through the coordinator, next try in %.0f s",
                               type(exc).__name__, exc, wait_s)
                self._retry_at = time.monotonic() + wait_s
                return
            with self._busy:
                if generation != self._generation or self._closed.is_set() or self._lane is not None:
                    lane.close()  # hosts were added meanwhile, or the mesh is closing
                    return
                self._lane, self._last_used, self._compile_failures = lane, time.monotonic(), 0
            if self._parker is None:
                self._parker = threading.Thread(target=self._park_when_idle, name="tollmesh-fast-lane-park", daemon=True)
                self._parker.start()
        finally:
            self._opening = None

    def _park_when_idle(self) -> None:
        """Close the lane after ``fast_lane_idle_s`` without a call (its stages spin while they wait)."""
        idle_s = self._config.fast_lane_idle_s
        while not self._closed.wait(min(idle_s, 1.0)):
            if self._lane is not None and time.monotonic() - self._last_used > idle_s and self._busy.acquire(blocking=False):
                try:
                    if time.monotonic() - self._last_used > idle_s:
                        self._close_lane()
                finally:
                    self._busy.release()

    def _result(self, plan: FastPlan, answer: FastAnswer) -> Optional[tuple]:
        if answer.lock == GO_AROUND:  # nothing ran, nothing was written: the call goes the coordinator's way
            self.went_around += 1
            return None
        lock = answer.lock[0][0]
        if answer.lock[4]:  # a task id already seen: nothing ran, nothing was written
            return (lock, lock[_STATUS] == _RELEASED, None, "task_id already seen: not run again")
        # where its events begin: (writer, first seq), or None when nothing was written
        written = None if answer.seqs is None else (self._config.writer_of(plan.shard), answer.seqs[0])
        if not fast_locked(answer.lock):
            self._count(lock, None, written)
            return (lock, False, None, f"refused: {lock[_REASON]}")
        record = answer.settle[0][0]
        self._count(lock, record, written)
        code, value = answer.outcome
        if record[_STATUS] == _RELEASED:
            return (record, True, value, None)
        return (record, False, None, value if code != OK else f"refunded: {record[_REASON]}")

    def _count(self, lock: tuple, settled: Optional[tuple], written: Optional[tuple[int, int]]) -> None:
        self._counts.append((lock, settled, written))
        if len(self._counts) >= COUNTS_EVERY_CALLS or time.monotonic() - self._counts_sent_at >= COUNTS_EVERY_S:
            self._send_counts()

    def _send_counts(self) -> None:
        if self._counts:
            self._counts_in_flight.append(self._coordinator.count_fast_calls.remote(self._counts))
            self._counts = []
            if len(self._counts_in_flight) > 8:  # forget the ones already counted
                _, self._counts_in_flight = ray.wait(self._counts_in_flight, num_returns=len(self._counts_in_flight),
                                                     timeout=0)
        self._counts_sent_at = time.monotonic()

    def _recover(self, plan: FastPlan, exc: FastLaneBrokenError) -> Optional[tuple]:
        """The lane broke: close it, have the shards rebuilt from the ledger; the call's result, or
        None if nothing of it was written (it then goes the coordinator's way)."""
        logger.warning("fast lane broke during %s (%s); rebuilding the shards from the ledger", plan.task_id, exc)
        self._send_counts()
        self._close_lane()
        self._retry_at = time.monotonic() + RETRY_AFTER_S
        record = ray.get(self._coordinator.recover_fast_call.remote(plan.task_id, plan.source))
        if record is None:
            return None
        return (record, record[_STATUS] == _RELEASED, None, f"the fast lane broke during this call: {exc}")

    def _restart_host(self, index: int) -> None:
        """A sync handler blocks the host's event loop: restart the host (as the coordinator does)."""
        logger.error("host %d stuck past the handler timeout: restarting it", index)
        self._close_lane()
        ray.kill(self._hosts[index], no_restart=False)

    def _close_lane(self) -> None:
        if self._lane is not None:
            self._lane.close()
            self._lane = None
