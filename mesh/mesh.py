"""The :class:`Mesh`: agents on Ray that pay each other per call, through escrow.

A mesh is a set of named Ray actors in one namespace: the ledger writer, the budget
shards, the escrow coordinator and the hosts of its agents. ``Mesh(...)`` starts a local
Ray by itself (or attaches to ``address=`` / ``RAY_ADDRESS``, a cluster started with
``ray up``) and creates them; ``Mesh.attach(name)`` reaches a running mesh from a second
driver; ``shutdown()`` waits for the calls in flight, flushes and closes the ledger.

>>> import tempfile
>>> from mesh import Agent, Mesh, MeshConfig
>>> class Echo(Agent):
...     price_usd = "0.002"
...     def handle(self, ctx, payload):
...         return payload
>>> with Mesh(MeshConfig(name="doc", out_dir=tempfile.mkdtemp(), shards=2)) as mesh:  # doctest: +SKIP
...     mesh.add_agents(Echo, ["echo"])
...     result = mesh.call("alice", "echo", "hi")
...     result.value, result.record.status.value, result.record.amount_micros
('hi', 'released', 2000)
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import uuid
import weakref
from collections import Counter
from itertools import count
from pathlib import Path
from typing import Any, Optional

import numpy as np
import orjson
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.agent_host import AgentHost, HostSettings, write_groups
from actors.budget_shard import BudgetShard, ShardSpec
from actors.coordinator import EscrowCoordinator
from actors.ledger_writer import LedgerWriterActor
from actors.placement import cluster_rotation
from actors.run_files import WriterFiles
from actors.wire import pack
from ledger.partitions import create, partition_count
from ledger.replay import ledger_has_events
from mesh.calls.agent import (
    DEFAULT_METHOD, Agent, CallResult, Message, check_id, in_order, price_table, result_from_wire, to_wire,
    wire_or_refusal,
)
from mesh.calls.columns import CallColumns, checked_parts
from mesh.core.clock import check_seconds
from actors.coalesce import Coalescer
from mesh.booth.config import TollboothConfig
from mesh.core.errors import ConfigError, InvalidArgumentError, InvalidTypeError, TollmeshError
from mesh.fast_path import PARK_AT_MESSAGES, FastPath
from actors.run_files import write_whole
from mesh.calls.mesh_config import MeshConfig
from mesh.core.money import UsdLike, usd_to_micros
from mesh.ray_session import RaySession, connect
from mesh.booth.restored import announce, restore_info
from mesh.booth.verifier import Verifier

logger = logging.getLogger("tollmesh.mesh")


class Mesh:
    """A running mesh; see the module doc. ``call`` and ``send`` have async twins, ``acall`` and ``asend``."""

    def __init__(self, config: Optional[MeshConfig] = None, *, address: Optional[str] = None, dashboard: bool = False,
                 **options: Any) -> None:
        if config is not None and options:
            raise InvalidArgumentError("options", sorted(options), "give a MeshConfig or keyword options, not both")
        if config is not None and not isinstance(config, MeshConfig):
            raise InvalidTypeError("config", config, "a MeshConfig")
        if not isinstance(dashboard, bool):
            raise InvalidTypeError("dashboard", dashboard, "a bool")
        self.config = config or MeshConfig(**options)
        #: which Ray the mesh runs on (``ray.summary``: one line saying so; ``ray.dashboard_url``)
        self.ray: RaySession = connect(address, self.config.namespace, dashboard=dashboard)
        self._started_ray = self.ray.started
        logger.info("%s", self.ray.summary)
        #: what the mesh restored from the ledger already in ``out_dir`` (None: it started empty)
        self.restored: Optional[dict[str, Any]] = None
        self._task_prefix = uuid.uuid4().hex[:12]
        self._task_numbers = count()
        self._handles: list[Any] = []
        self._hosts_placed = 0  # hosts this driver started: the next goes on the next node
        self._coalescers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._fast: Optional[FastPath] = None
        self._coordinator = self._start_actors()
        self._owner = True

    @classmethod
    def attach(cls, name: str = "tollmesh", *, namespace: str = "tollmesh", address: Optional[str] = None) -> Mesh:
        """Reach a mesh another driver started (its actors must still be alive)."""
        session = connect(address, namespace)
        started = session.started
        try:
            coordinator = ray.get_actor(f"{name}.coordinator", namespace=namespace)
        except ValueError:
            raise InvalidArgumentError("name", name, f"no running mesh of that name in namespace {namespace!r}") from None
        mesh = cls.__new__(cls)
        mesh.config = ray.get(coordinator.get_config.remote())
        mesh.ray = session
        mesh.restored = None
        mesh._started_ray = started
        mesh._task_prefix = uuid.uuid4().hex[:12]
        mesh._task_numbers = count()
        mesh._coordinator = coordinator
        mesh._handles = []
        mesh._hosts_placed = 0
        mesh._coalescers = weakref.WeakKeyDictionary()
        mesh._fast = None  # only the driver that compiled the fast lane may run it
        mesh._owner = False
        return mesh

    # -- agents ---------------------------------------------------------------------------

    def add_agents(
        self, agent_class: type, agent_ids: list[str], *, hosts: Optional[int] = None, **init_kwargs: Any
    ) -> int:
        """Add light agents of ``agent_class``, spread over ``hosts`` host actors; the mesh's agent count.

        Each agent is built as ``agent_class(**init_kwargs)``.
        """
        return self.add_agent_groups([(agent_class, agent_ids, init_kwargs)], hosts=hosts)

    def add_agent_groups(self, groups: list[tuple[type, list[str], dict[str, Any]]], *, hosts: Optional[int] = None) -> int:
        """Add groups of light agents, ``(agent_class, agent_ids, init_kwargs)`` each, spread together
        over ``hosts`` host actors (each host gets a share of every group); the mesh's agent count.

        A simulation with many kinds of agents needs no more host processes than one with one kind.
        """
        if not isinstance(groups, list) or not groups:
            raise InvalidTypeError("groups", groups, "a non-empty list of (agent_class, agent_ids, init_kwargs)")
        checked = []
        for index, group in enumerate(groups):
            if not isinstance(group, (tuple, list)) or len(group) != 3:
                raise InvalidTypeError(f"groups[{index}]", group, "an (agent_class, agent_ids, init_kwargs) tuple")
            agent_class, agent_ids, init_kwargs = group
            if not isinstance(init_kwargs, dict):
                raise InvalidTypeError("init_kwargs", init_kwargs, "a dict of constructor keyword arguments")
            checked.append((agent_class, _check_ids(agent_ids), init_kwargs, price_table(agent_class)))
        every_id = [agent_id for _, ids, _, _ in checked for agent_id in ids]
        if len(set(every_id)) != len(every_id):
            raise InvalidArgumentError("agent_ids", "...", "must not repeat an id across groups")
        hosts = self.config.hosts_per_group if hosts is None else hosts
        if not isinstance(hosts, int) or isinstance(hosts, bool) or hosts < 1:
            raise InvalidArgumentError("hosts", hosts, "must be an int of at least 1")
        hosts = min(hosts, max(len(ids) for _, ids, _, _ in checked))
        placed = cluster_rotation(start=self._hosts_placed).actor_options(hosts)  # dealt over the nodes, as the shards
        total = 0
        for h, options in enumerate(placed):
            share = [(cls, ids[h::hosts], kwargs, prices) for cls, ids, kwargs, prices in checked if ids[h::hosts]]
            total = self._start_host(share, options)
            self._hosts_placed += 1
        return total

    def add_agent(
        self, agent_id: str, agent_class: type, *, actor_options: Optional[dict[str, Any]] = None, **init_kwargs: Any
    ) -> int:
        """Add a heavy agent: an actor of its own (``actor_options``: Ray's, e.g. ``num_cpus``, ``resources``)."""
        prices = price_table(agent_class)
        ids = _check_ids([agent_id])
        return self._start_host([(agent_class, ids, init_kwargs, prices)], dict(actor_options or {}))

    def _start_host(self, groups: list[tuple[type, list[str], dict, Any]], options: dict) -> int:
        config = self.config
        name = config.actor_name(f"host.{uuid.uuid4().hex[:10]}")
        settings = HostSettings(
            coordinator_name=config.actor_name("coordinator"), namespace=config.namespace,
            handler_timeout_s=config.handler_timeout_s, max_payload_bytes=config.max_payload_bytes,
            writer_name=config.writer_name(0),
        )
        groups_path = config.out_dir / "hosts" / f"{name}.pkl"  # on the writer's node, whichever node we are on
        write_groups(groups_path, [(cls, ids, kwargs) for cls, ids, kwargs, _ in groups],
                     WriterFiles(config.writer_name(0), config.namespace))
        host = AgentHost.options(name=name, namespace=config.namespace, lifetime=self._lifetime(), **options).remote(
            str(groups_path), settings
        )
        self._handles.append(host)
        registered = [(ids, prices) for _, ids, _, prices in groups]
        try:
            ray.get(host.pid.remote())
            total = ray.get(self._coordinator.register.remote(name, registered))
        except Exception as exc:
            ray.kill(host, no_restart=True)
            cause = getattr(exc, "cause", None)  # a RayTaskError: its message is the actor's traceback, in colour
            if isinstance(exc, ray.exceptions.RayTaskError) and isinstance(cause, TollmeshError):
                raise cause from None  # the coordinator's own clear error (an id already in the mesh...)
            raise
        if self._fast is not None:
            self._fast.add_host(host, registered)
        return total

    # -- calls ----------------------------------------------------------------------------

    def call(
        self, source: str, target: str, payload: Any = None, *, method: str = DEFAULT_METHOD,
        task_id: Optional[str] = None, payer_wallet: Optional[str] = None, tx_signature: Optional[str] = None,
    ) -> CallResult:
        """One call from ``source`` to ``target``: lock, run the handler, release or refund; its result.

        From the driver that started the mesh, a plain call (see :mod:`mesh.fast_path`) takes the
        fast lane, a compiled graph through the actors; any other goes through the coordinator.
        """
        message = Message(source, target, payload, method, task_id, payer_wallet, tx_signature)
        wire = self._wire([message])
        if self._fast is not None:
            result = self._fast.call(wire[0])
            if result is not None:
                return result_from_wire(result)
        return result_from_wire(ray.get(self._coordinator.submit.remote(wire))[0])

    def open_fast_lane(self, timeout_s: float = 60.0) -> bool:
        """Compile the fast lane now (~0.5 s) rather than after the first few single calls, so those
        are fast too; whether it is open (False: disabled, not the owning driver, or it failed).

        >>> mesh.open_fast_lane() and mesh.call("alice", "echo", "hi").ok  # doctest: +SKIP
        True
        """
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
            raise InvalidArgumentError("timeout_s", timeout_s, "must be a number of seconds above 0")
        return self._fast is not None and self._fast.open(timeout_s)

    async def acall(
        self, source: str, target: str, payload: Any = None, *, method: str = DEFAULT_METHOD,
        task_id: Optional[str] = None, payer_wallet: Optional[str] = None, tx_signature: Optional[str] = None,
    ) -> CallResult:
        """:meth:`call` for async code (the fast lane too, when no other call holds it: the call
        runs on a worker thread; concurrent ``acall`` s go together through the coordinator)."""
        message = Message(source, target, payload, method, task_id, payer_wallet, tx_signature)
        wire = self._wire([message])
        plan = self._fast.reserve(wire[0]) if self._fast is not None else None
        if plan is not None:
            result = await asyncio.to_thread(self._fast.run_reserved, plan)
            if result is not None:
                return result_from_wire(result)
        return result_from_wire((await self._coalescer().submit(wire))[0])

    def send(self, messages: list[Message], *, max_batch_messages: Optional[int] = None) -> list[CallResult]:
        """Many calls, batched (``max_batch_messages`` a batch), their results in order.

        At most ``max_inflight_batches`` batches travel at once: a long list streams
        through the mesh without piling up in its queues. A message that fails its checks
        (a bad id, method or payment field) fails alone: its result is FAILED with reason
        ``invalid_message`` and ``error`` saying why, it is not sent nor recorded, the others go.
        """
        refs, refused = self._send_refs(messages, max_batch_messages, wait=True)
        sent = (result_from_wire(result) for batch in ray.get(refs) for result in batch)
        return in_order(refused, sent, len(messages))

    def send_counted(self, messages: list[Message], *, max_batch_messages: Optional[int] = None) -> Counter:
        """:meth:`send`, answered only with how many calls ended in each status (``"released"``) or
        status and reason (``"refunded:handler_error"``). Nothing per call travels back: for
        simulations and bulk senders, which read each call's outcome from the ledger.
        """
        refs, refused = self._send_refs(messages, max_batch_messages, wait=True, counted=True)
        counts: Counter = Counter(f"{r.status.value}:{r.reason}" for r in refused.values())
        for batch in ray.get(refs):
            counts.update(batch)
        return counts

    def send_columns(self, sources: list[str], targets: list[str], payloads: Optional[list[Any]] = None, *,
                     methods: str | list[str] = DEFAULT_METHOD, task_ids: Optional[list[str]] = None,
                     max_batch_messages: Optional[int] = None) -> CallColumns:
        """Make many calls given as columns, the mesh's bulk path: one call per index, ``sources[i]``
        paying ``targets[i]`` to run ``methods[i]`` (or one method for all) on ``payloads[i]``.

        No record travels back: the answer holds each call's task id, status and reason
        (:class:`~mesh.calls.columns.CallColumns`); the ledger holds the rest. Calls with an
        x402 payment go through :meth:`send`. Sent in batches of ``max_batch_messages`` (the
        config's by default), at most ``max_inflight_batches`` at once.

        >>> done = mesh.send_columns(["alice", "bob"], ["echo", "echo"], ["hi", "yo"])  # doctest: +SKIP
        >>> done.statuses(), dict(done.counts())                                          # doctest: +SKIP
        (['released', 'released'], {'released': 2})
        """
        size = self.config.max_batch_messages if max_batch_messages is None else max_batch_messages
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise InvalidArgumentError("max_batch_messages", size, "must be an int of at least 1")
        prefix, numbers = self._task_prefix, self._task_numbers
        parts = checked_parts(sources, targets, payloads, methods, task_ids, self.config.max_payload_bytes, size,
                              lambda n: [f"{prefix}-{next(numbers)}" for _ in range(n)])
        self._park_lane_for(len(sources))
        refs, pending = [], []
        for part in parts:
            refs.append(self._coordinator.submit_columns.remote(*part.wire()))
            pending.append(refs[-1])
            if len(pending) >= self.config.max_inflight_batches:
                _, pending = ray.wait(pending, num_returns=1)
        answers = ray.get(refs)
        if not answers:
            return CallColumns([], *(np.zeros(0, np.int8) for _ in range(3)))
        return CallColumns([task_id for part in parts for task_id in part.task_ids],
                           *(np.concatenate(column) for column in zip(*answers)))

    async def asend(self, messages: list[Message], *, max_batch_messages: Optional[int] = None) -> list[CallResult]:
        """:meth:`send` for async code."""
        refs, refused = self._send_refs(messages, max_batch_messages, wait=False)
        sent: list[CallResult] = []
        for ref in refs:
            sent.extend(result_from_wire(result) for result in await ref)
        return in_order(refused, sent, len(messages))

    def _send_refs(self, messages: list[Message], max_batch_messages: Optional[int], *, wait: bool,
                   counted: bool = False) -> tuple[list, dict[int, CallResult]]:
        """The refs of the batches sent, and the results of the messages that failed their checks (by index)."""
        if not isinstance(messages, list):
            raise InvalidTypeError("messages", messages, "a list of mesh.Message")
        size = max_batch_messages or self.config.max_batch_messages
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise InvalidArgumentError("max_batch_messages", size, "must be an int of at least 1")
        wire, refused = self._checked_wire(messages)  # every message checked before any is sent
        self._park_lane_for(len(wire))
        refs, pending = [], []
        for start in range(0, len(wire), size):
            submit = self._coordinator.submit_counted if counted else self._coordinator.submit
            ref = submit.remote(pack(wire[start:start + size]))
            refs.append(ref)
            pending.append(ref)
            if wait and len(pending) >= self.config.max_inflight_batches:
                _, pending = ray.wait(pending, num_returns=1)
        return refs, refused

    def _park_lane_for(self, messages: int) -> None:
        """A bulk send parks the fast lane (see :mod:`mesh.fast_path`)."""
        if self._fast is not None and messages >= PARK_AT_MESSAGES:
            self._fast.park()

    def _coalescer(self) -> Coalescer:
        """This event loop's coalescer: concurrent ``acall`` s go out as one coordinator call."""
        loop = asyncio.get_running_loop()
        coalescer = self._coalescers.get(loop)
        if coalescer is None:
            coalescer = self._coalescers[loop] = Coalescer(lambda wire: self._coordinator.submit.remote(pack(wire)))
        return coalescer

    def _wire(self, messages: list[Message]) -> list[tuple]:
        wire = []
        prefix, numbers, limit = self._task_prefix, self._task_numbers, self.config.max_payload_bytes
        for index, message in enumerate(messages):
            if not isinstance(message, Message):
                raise InvalidTypeError(f"messages[{index}]", message, "a mesh.Message")
            task_id = message.task_id if message.task_id is not None else f"{prefix}-{next(numbers)}"
            wire.append(to_wire(message, task_id, limit))
        return wire

    def _checked_wire(self, messages: list[Message]) -> tuple[list[tuple], dict[int, CallResult]]:
        """:meth:`_wire` for a batch: a message that fails its checks gets its own failed result instead."""
        wire, refused = [], {}
        prefix, numbers, limit = self._task_prefix, self._task_numbers, self.config.max_payload_bytes
        for index, message in enumerate(messages):
            if not isinstance(message, Message):
                raise InvalidTypeError(f"messages[{index}]", message, "a mesh.Message")
            task_id = message.task_id if message.task_id is not None else f"{prefix}-{next(numbers)}"
            checked = wire_or_refusal(message, task_id, limit)
            if type(checked) is CallResult:
                refused[index] = checked
            else:
                wire.append(checked)
        return wire, refused

    # -- money, time, payments ---------------------------------------------------------------

    def deposit(self, agent: str, amount_usd: UsdLike) -> int:
        """Add funds to ``agent`` (the mesh must track balances); the micros deposited, durable on return."""
        check_id("agent", agent)
        amount_micros = usd_to_micros(amount_usd)
        ray.get(self._coordinator.deposit.remote(agent, amount_micros))
        return amount_micros

    def deposit_many(self, amounts_usd: dict[str, UsdLike]) -> int:
        """Add funds to many agents at once, ``{agent: usd}`` (one shard call per shard); the micros
        deposited in all, durable on return. Every amount is checked before any is deposited."""
        if not isinstance(amounts_usd, dict):
            raise InvalidTypeError("amounts_usd", amounts_usd, "a dict of agent id -> USD")
        deposits = []
        for agent, usd in amounts_usd.items():
            check_id("agent", agent)
            deposits.append((agent, usd_to_micros(usd, field=f"amounts_usd[{agent!r}]")))
        if deposits:
            ray.get(self._coordinator.deposits.remote(deposits))
        return sum(amount for _, amount in deposits)

    def advance_clock(self, seconds: float) -> int:
        """Move the mesh's manual clock (``clock="manual"``) forward; the new time in microseconds."""
        check_seconds("seconds", seconds)  # NaN, inf or a bool would reach the coordinator's clock
        return ray.get(self._coordinator.advance_clock.remote(seconds))

    def set_x402_verifier(self, verifier: Optional[Verifier]) -> None:
        """Verify paid calls with ``verifier(wallet, signature, amount_usd) -> bool`` (sync or async; None removes it).

        It runs in the coordinator's process, so it must be picklable. It fails closed. A
        :class:`~mesh.booth.verifier.PaymentChecker` (:class:`mesh.x402.ExactEvmVerifier`) names its
        reasons, checks a batch's payments at once, judges validity windows on the mesh's clock and
        learns which payments the mesh's ledger spent already; a restarted coordinator gets it back.
        """
        if verifier is not None and not callable(verifier):
            raise InvalidTypeError("verifier", verifier, "a callable (wallet, signature, amount_usd) -> bool")
        ray.get(self._coordinator.set_verifier.remote(verifier))

    def x402_stats(self) -> Optional[dict[str, Any]]:
        """The verifier's counters (payments checked, CPU seconds in the coordinator), if it keeps any."""
        return ray.get(self._coordinator.x402_stats.remote())

    def expire_stale(self) -> list:
        """Refund every escrow past its timeout now (the coordinator also sweeps on its own)."""
        return ray.get(self._coordinator.expire_stale.remote())

    def tollbooth(self, config: Optional[TollboothConfig] = None) -> Any:
        """The seed's Tollbooth API over this mesh's actors (see :class:`mesh.mesh_booth.MeshTollbooth`)."""
        from mesh.mesh_booth import MeshTollbooth

        return MeshTollbooth(self._coordinator, config)

    # -- state ----------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counts and amounts by outcome and reason, open escrows, agents, each shard's state; with the
        fast lane, ``fast_lane_went_around``: this driver's calls the lane sent the coordinator's way (a
        shard's earlier events not yet on disk, or an expiry due there)."""
        self._flush_fast_counts()
        stats = ray.get(self._coordinator.stats.remote())
        stats["fast_lane_went_around"] = 0 if self._fast is None else self._fast.went_around
        return stats

    def memory(self) -> dict[str, Any]:
        """Resident memory (RSS, bytes) of the mesh's processes by role: coordinator, shards (with
        their open escrows), hosts (with their agents and what building them took), ledger writer."""
        return ray.get(self._coordinator.memory.remote())

    def snapshot(self) -> dict[str, Any]:
        """Balances, locked amounts, today's usage and open escrows, as a replay of the ledger rebuilds them."""
        return ray.get(self._coordinator.snapshot.remote())

    @property
    def ledger_path(self) -> Path:
        return self.config.ledger_path

    def actor(self, role: str) -> Any:
        """The handle of one of the mesh's actors: ``coordinator``, ``writer``, ``shard.N``."""
        return ray.get_actor(self.config.actor_name(role), namespace=self.config.namespace)

    def shutdown(self) -> dict[str, Any]:
        """Wait for calls in flight, flush and close the ledger, stop the actors; the writer's summary."""
        summary: dict[str, Any] = {}
        if self._coordinator is None:
            return summary
        if self._fast is not None:
            self._fast.close()
            self._fast = None
        if self._owner:
            summary = ray.get(self._coordinator.close.remote())
            self._kill_actors()
        self._coordinator = None
        self._handles.clear()
        if self._started_ray:
            ray.shutdown()
        return summary

    def __enter__(self) -> Mesh:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.shutdown()

    # -- internals --------------------------------------------------------------------------

    def _flush_fast_counts(self) -> None:
        """The fast lane counts its calls in batches: the coordinator has them before it answers."""
        if self._fast is not None:
            self._fast.flush_counts()

    def _lifetime(self) -> Optional[str]:
        return "detached" if self.config.detached else None

    def _start_actors(self) -> Any:
        config = self.config
        try:
            ray.get_actor(config.actor_name("coordinator"), namespace=config.namespace)
        except ValueError:
            pass
        else:
            raise ConfigError(f"a mesh named {config.name!r} is already running in namespace {config.namespace!r}: "
                              "use Mesh.attach, or another name")
        restoring = ledger_has_events(config.ledger_path)
        if restoring and not config.restore_from_ledger:
            raise ConfigError(f"{config.ledger_path} already holds a ledger and restore_from_ledger is False: "
                              "give another out_dir (or none: a fresh one), or set it True to adopt that ledger")
        config.out_dir.mkdir(parents=True, exist_ok=True)
        _check_ledger_layout(config)
        config.directory_path.unlink(missing_ok=True)  # the agents of an earlier run are gone with its hosts
        config.runtime_caps_path.unlink(missing_ok=True)  # so are the caps it changed: a new mesh has its config's
        (config.out_dir / "x402_verifier.pkl").unlink(missing_ok=True)  # and its verifier: a new mesh is given its own
        shutil.rmtree(config.out_dir / "hosts", ignore_errors=True)
        common = {"namespace": config.namespace, "lifetime": self._lifetime()}
        # the run directory is on this node's disk: the writer and the coordinator, which use it, stay here
        home = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        writers = [  # one per partition of a partitioned ledger (each shard's events to its own), else one
            LedgerWriterActor.options(name=config.writer_name(k), scheduling_strategy=home, **common).remote(
                str(config.writer_ledger(k)),
                parquet_dir=None if config.writer_parquet_dir(k) is None else str(config.writer_parquet_dir(k)),
                fsync=config.ledger_fsync.value, max_segment_bytes=config.ledger_max_segment_bytes,
                rotate_daily=config.ledger_rotate_daily, format_version=config.ledger_format, run_dir=str(config.out_dir),
            )
            for k in range(config.writers)
        ]
        caps_path = self._write_agent_caps()
        shards = [
            BudgetShard.options(name=config.actor_name(f"shard.{i}"), **placed, **common).remote(
                ShardSpec(
                    index=i, shards=config.shards, default_cap_micros=config.default_cap_micros,
                    agent_caps_path=caps_path, runtime_caps_path=str(config.runtime_caps_path),
                    track_balances=config.track_balances,
                    escrow_timeout_s=config.escrow_timeout_s, max_settled_records=config.max_settled_records,
                    # a restarted shard rebuilds from its own run's ledger (its partition), always
                    ledger_path=str(config.writer_ledger(config.writer_of(i))), partitioned=config.partitioned_ledger,
                ),
                config.writer_name(config.writer_of(i)), config.namespace,
            )
            for i, placed in enumerate(cluster_rotation().actor_options(config.shards))  # over the cluster's nodes
        ]
        started = ray.get([w.stats.remote() for w in writers] + [shard.ready.remote() for shard in shards])
        next_seqs = [stats["next_seq"] for stats in started[:len(writers)]]
        slim = config.model_copy(update={"agent_daily_caps_usd": {}})  # the shards read the caps from their file
        coordinator = EscrowCoordinator.options(
            name=config.actor_name("coordinator"), scheduling_strategy=home, **common
        ).remote(slim, next_seqs)
        ray.get(coordinator.agent_count.remote())
        self._handles.extend([*writers, *shards])  # an actor dies with its creator's last handle (unless detached)
        if restoring:  # never silent: the caps used today and the balances come back with the ledger
            self.restored = restore_info(config.ledger_path, sum(next_seqs), ray.get(coordinator.snapshot.remote()))
            announce(self.restored, f"mesh {config.name!r}")
        self._fast = FastPath(config, coordinator, shards, writers)
        return coordinator

    def _write_agent_caps(self) -> Optional[str]:
        """Per-agent caps go to ``agent_caps.json`` beside the ledger: a simulation's 100,000 caps would
        otherwise be actor arguments in Ray's object store, which a restart cannot count on."""
        caps = self.config.agent_caps_micros()
        if not caps:
            return None
        path = self.config.out_dir / "agent_caps.json"
        write_whole(path, orjson.dumps(caps))
        return str(path)

    def _kill_actors(self) -> None:
        names = ray.get(self._coordinator.host_names.remote())
        for name in names + [f"{self.config.name}.shard.{i}" for i in range(self.config.shards)]:
            _kill(name, self.config.namespace)
        _kill(self.config.actor_name("coordinator"), self.config.namespace)
        for k in range(self.config.writers):
            _kill(self.config.writer_name(k), self.config.namespace)


def _check_ledger_layout(config: MeshConfig) -> None:
    """The run's ledger is of the kind the config says (partitioned by shard or not, and by as many
    shards), or ConfigError naming both; a partitioned one is created (its manifest and partitions)."""
    ledger = config.ledger_path
    count = partition_count(ledger)
    if config.partitioned_ledger:
        if count is not None and count != config.shards:
            raise ConfigError(f"the ledger at {ledger} is partitioned into {count} shards: open it with shards={count} "
                              "(an agent's account stays in its partition)")
        if count is None and (ledger.exists() or ledger_has_events(ledger)):
            raise ConfigError(f"{ledger} is an ordinary ledger: open it with partitioned_ledger=False, "
                              "or give another out_dir for a partitioned one")
        create(ledger, config.shards)
    elif count is not None:
        raise ConfigError(f"the ledger at {ledger} is partitioned by shard ({count} partitions): "
                          f"open it with partitioned_ledger=True and shards={count}")


def _check_ids(agent_ids: Any) -> list[str]:
    if isinstance(agent_ids, str) or not isinstance(agent_ids, (list, tuple)):
        raise InvalidTypeError("agent_ids", agent_ids, "a list of str")
    if not agent_ids:
        raise InvalidArgumentError("agent_ids", agent_ids, "must name at least one agent")
    for agent_id in agent_ids:
        check_id("agent_id", agent_id)
    if len(set(agent_ids)) != len(agent_ids):
        raise InvalidArgumentError("agent_ids", "...", "must not repeat an id")
    return list(agent_ids)


def _kill(name: str, namespace: str) -> None:
    try:
        ray.kill(ray.get_actor(name, namespace=namespace), no_restart=True)
    except ValueError:
        pass


def _ensure_ray(address: Optional[str], namespace: str) -> bool:
    """Start a local Ray, or attach to ``address`` / ``RAY_ADDRESS``; True if we started it (see :mod:`mesh.ray_session`)."""
    return connect(address, namespace).started


__all__ = ["Agent", "Mesh", "MeshConfig", "Message"]
