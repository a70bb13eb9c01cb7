"""The agent host actor: many light agents in one Ray actor, or one heavy agent in its own.

A Ray actor costs ~50 MB and ~0.3 s to start, so a simulation's 100,000 agents live
many to a host: the host builds each agent from its class and constructor arguments,
read from a file the mesh wrote (so a restart, which re-runs the constructor, finds them
even after the driver that added them is gone), and runs the coordinator's delivery batches. A handler that raises, or runs past ``handler_timeout_s``, fails its
own message only; the host and its other agents go on.

Each answer is ``(code, value)``: :data:`OK` and the handler's return value,
:data:`ERROR` and the error text, or :data:`TIMEOUT` and a note.

>>> import ray                                                               # doctest: +SKIP
>>> write_groups("host.pkl", [(Echo, ["a1", "a2"], {})])                    # doctest: +SKIP
>>> host = AgentHost.remote("host.pkl", HostSettings(coordinator_name="m.coordinator", namespace="tollmesh"))  # doctest: +SKIP
>>> ray.get(host.handle_batch.remote([("t1", "a1", "handle", "hi", "alice")]))  # doctest: +SKIP
[(0, 'hi')]
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import ray
from ray import cloudpickle

from actors.fast_lane import FastPlan, fast_locked, on_loop
from actors.gc_tuning import tune_gc
from actors.malloc_tuning import keep_freed_memory
from actors.run_files import LocalFiles, RunFiles, files_from
from actors.wire import pack, unpack
from mesh.calls.agent import Agent, CallContext
from mesh.calls.coded import CodedNames
from actors.coalesce import Coalescer
from actors.memory import rss_bytes
from mesh.core.records import Reason

OK, ERROR, TIMEOUT = 0, 1, 2
STUCK = 3  # the fast lane gave up waiting for the host's event loop: a sync handler blocks it
MAX_CONCURRENT_BATCHES = 1_000  # Ray runs at most this many batches at once on a host; the rest wait
_INLINE, _ASYNC, _THREAD = 0, 1, 2

#: One group of agents to build: (agent class, agent ids, constructor keyword arguments).
AgentGroup = tuple[type, list[str], dict[str, Any]]


@dataclass(frozen=True)
class HostSettings:
    coordinator_name: str
    namespace: str
    handler_timeout_s: float = 30.0
    max_payload_bytes: int = 1 << 20
    max_threads: int = 16
    writer_name: Optional[str] = None  # the mesh's ledger writer, which serves the agents' groups file on any node


def write_groups(path: str | os.PathLike, groups: list[AgentGroup], files: Optional[RunFiles] = None) -> None:
    """Save a host's agent groups (classes by value where Ray would send them so) for :class:`AgentHost`,
    on this disk or through ``files`` (:mod:`actors.run_files`)."""
    (files or LocalFiles()).write(os.fspath(path), cloudpickle.dumps(groups))


def read_groups(path: str | os.PathLike, files: Optional[RunFiles] = None) -> list[AgentGroup]:
    data = (files or LocalFiles()).read(os.fspath(path))
    if data is None:
        raise FileNotFoundError(f"agent groups not found: {path}")
    return cloudpickle.loads(data)


class HostCore:
    """The host's logic without Ray: the agents and how each method runs."""

    def __init__(self, groups: list[AgentGroup], settings: HostSettings, coordinator: Any = None) -> None:
        self.settings = settings
        self.coordinator = coordinator
        self.agents: dict[str, Agent] = {}
        rss_before = rss_bytes()
        for agent_class, agent_ids, kwargs in groups:
            for agent_id in agent_ids:
                agent = agent_class(**kwargs)
                agent.agent_id = agent_id
                self.agents[agent_id] = agent
        self.agents_rss_bytes = max(0, rss_bytes() - rss_before)  # what building the agents grew the process by
        self._how: dict[tuple[type, str], int] = {}
        self._pool: Optional[ThreadPoolExecutor] = None
        self._coalescer = None
        if coordinator is not None:
            self._coalescer = Coalescer(lambda wire: coordinator.submit.remote(pack(wire), nested=True))

    async def handle_batch(self, items: list[tuple[str, str, str, Any, str]]) -> list[tuple[int, Any]]:
        """Run each ``(task_id, agent_id, method, payload, source_agent)``; answers in the same order."""
        answers: list[Any] = [None] * len(items)
        waiting: list[tuple[int, Any]] = []
        settings = self.settings
        for i, (task_id, agent_id, method, payload, source) in enumerate(items):
            agent = self.agents.get(agent_id)
            if agent is None:
                answers[i] = (ERROR, f"this host has no agent {agent_id!r}")
                continue
            function = getattr(agent, method, None)
            ctx = CallContext(agent_id, task_id, source, method, self.coordinator, settings.max_payload_bytes, self._coalescer)
            how = self._how_to_run(agent, method, function)
            if how == _INLINE:
                try:
                    value = function(ctx, payload)
                except Exception as exc:  # noqa: BLE001 - the handler's failure is its message's only
                    answers[i] = (ERROR, _describe(exc))
                    continue
                if inspect.iscoroutine(value):  # a sync handler that goes async for this call only
                    waiting.append((i, asyncio.ensure_future(value)))
                else:
                    answers[i] = (OK, value)
            elif how == _ASYNC:
                waiting.append((i, asyncio.ensure_future(function(ctx, payload))))
            else:
                waiting.append((i, asyncio.get_running_loop().run_in_executor(self._threads(), function, ctx, payload)))
        if waiting:
            await self._finish(waiting, answers)
        return answers

    async def _finish(self, waiting: list[tuple[int, asyncio.Future]], answers: list[Any]) -> None:
        """Wait for the handlers that went async, all started together: one deadline of
        ``handler_timeout_s`` for the lot (a timer per call cost more than the calls); those
        past it are cancelled and answered :data:`TIMEOUT`."""
        timeout_s = self.settings.handler_timeout_s
        _, late = await asyncio.wait([future for _, future in waiting], timeout=timeout_s)
        for future in late:
            future.cancel()
        for i, future in waiting:
            if future in late:
                answers[i] = (TIMEOUT, f"handler ran past handler_timeout_s={timeout_s}")
            elif future.cancelled():  # the handler cancelled itself
                answers[i] = (ERROR, "CancelledError: the handler was cancelled")
            elif future.exception() is not None:
                answers[i] = (ERROR, _describe(future.exception()))
            else:
                answers[i] = (OK, future.result())

    def _how_to_run(self, agent: Agent, method: str, function: Any) -> int:
        key = (type(agent), method)
        how = self._how.get(key)
        if how is None:
            if inspect.iscoroutinefunction(function):
                how = _ASYNC
            else:
                how = _THREAD if type(agent).threaded else _INLINE
            self._how[key] = how
        return how

    def _threads(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.settings.max_threads, thread_name_prefix="tollmesh-handler")
        return self._pool


def refund_reason(code: int) -> str:
    """The refund reason for a handler outcome that is not :data:`OK` (another code: the host is gone)."""
    if code == ERROR:
        return Reason.HANDLER_ERROR.value
    if code in (TIMEOUT, STUCK):
        return Reason.HANDLER_TIMEOUT.value
    return Reason.AGENT_UNAVAILABLE.value


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:1_000]


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0, max_concurrency=MAX_CONCURRENT_BATCHES)
class AgentHost:
    """A Ray actor hosting agents; see the module doc."""

    def __init__(self, groups_path: str, settings: HostSettings) -> None:
        coordinator = ray.get_actor(settings.coordinator_name, namespace=settings.namespace)
        groups = read_groups(groups_path, files_from(settings.writer_name, settings.namespace))
        self._core = HostCore(groups, settings, coordinator)
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        tune_gc()
        keep_freed_memory()

    async def handle_batch(self, items: list[tuple[str, str, str, Any, str]] | bytes) -> list[tuple[int, Any]]:
        return await self._core.handle_batch(unpack(items))

    async def handle_columns(self, task_ids: list[str], agent_ids: CodedNames, methods: CodedNames, payloads: list[Any],
                             sources: CodedNames) -> np.ndarray:
        """:meth:`handle_batch` of calls given as columns; only each call's outcome code comes back
        (int8: :data:`OK`, :data:`ERROR`, :data:`TIMEOUT`), not the handlers' values (the bulk path)."""
        answers = await self._core.handle_batch(list(zip(task_ids, agent_ids.decoded(), methods.decoded(), payloads,
                                                         sources.decoded())))
        return np.fromiter((code for code, _ in answers), np.int8, len(answers))

    async def bind_loop(self) -> None:
        """Note this actor's event loop, where the fast lane's stage runs handlers."""
        self._loop = asyncio.get_running_loop()

    def fast_deliver(self, index: int, plan: FastPlan, *locks: Any) -> Optional[tuple[int, Any]]:
        """The fast lane's stage: run the plan's handler if its target is this host's (``index`` in the
        lane) and its caller's shard locked the toll (``locks``: every shard's answer)."""
        if plan.host != index or not fast_locked(locks[plan.shard]):
            return None
        item = (plan.task_id, plan.target, plan.method, plan.payload, plan.source)
        wait_s = self._core.settings.handler_timeout_s + 2.0  # the handler's own deadline comes first
        try:
            return on_loop(self._loop, self._core.handle_batch([item]), wait_s)[0]
        except concurrent.futures.TimeoutError:
            return (STUCK, f"host stuck past handler_timeout_s={self._core.settings.handler_timeout_s}")

    def agent_ids(self) -> list[str]:
        return list(self._core.agents)

    def pid(self) -> int:
        return os.getpid()

    def memory(self) -> dict[str, Any]:
        """This host's process memory (RSS), its agents, and what building them took."""
        return {"rss_bytes": rss_bytes(), "agents": len(self._core.agents), "agents_rss_bytes": self._core.agents_rss_bytes}
