"""Run a scenario on the mesh: the simulation driver behind ``tollmesh simulate``.

The driver starts a mesh (a local Ray by itself, or the one it is attached to), builds
every group's agents on a few host actors, deposits their starting balances, then plays
the run in ticks of simulated time: each tick's calls are drawn from the seeded traffic,
sent as one batch, and the manual clock moves on once the whole tick (pipelines included)
is settled and durable, so daily caps roll over on the simulated clock. Ctrl-C stops at
the end of the current tick: nothing is left locked, the ledger is flushed and verifies.

>>> import tempfile
>>> from mesh.scenario import Scenario
>>> scenario = Scenario(messages=2_000, shards=2, hosts=1,
...     groups=[{"name": "users", "count": 20, "balance_usd": "1", "daily_cap_usd": "0.50"},
...             {"name": "shops", "count": 5, "price_usd": "0.002", "failure_rate": 0.1}],
...     traffic=[{"source": "users", "target": "shops", "pattern": "power_law"}])
>>> report = Simulation(scenario, tempfile.mkdtemp() + "/run").run()   # doctest: +SKIP
>>> report["checks"]                                                      # doctest: +SKIP
{'ledger_verifies': True, 'replay_matches_live': True, 'conservation_holds': True, 'ledger_matches_counters': True, 'problems': []}

(Skipped under doctest, which has no Ray; ``tests/test_simulate.py`` runs the same on one.)
"""

from __future__ import annotations

import shutil
import signal
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from mesh.agent import Message
from mesh.errors import ConfigError
from mesh.mesh_config import MeshConfig
from mesh.scenario import Scenario, Traffic, load_behaviour
from mesh.sim_agents import OnwardTarget, SimAgent, SimBehaviour, group_class, pick_many
from mesh.sim_report import RunLog, build_report

RUN_MARKERS = ("toll_ledger.jsonl", "report.json", "agents.ndjson")


class Simulation:
    """One run of a :class:`~mesh.scenario.Scenario` into ``run_dir``; :meth:`run` returns its report.

    ``behaviours`` maps group names to :class:`~mesh.sim_agents.SimAgent` subclasses (your
    own agents; a group's ``behaviour`` field does the same from a scenario file).
    ``address`` attaches to a Ray cluster (else ``RAY_ADDRESS``, else a local Ray is started).
    """

    def __init__(
        self, scenario: Scenario, run_dir: str | Path, *, behaviours: Optional[dict[str, type]] = None,
        overwrite: bool = False, progress: bool = False, plots: bool = True, address: Optional[str] = None,
    ) -> None:
        if not isinstance(scenario, Scenario):
            raise ConfigError(f"scenario must be a mesh.Scenario, got {type(scenario).__name__}")
        self.scenario = scenario
        self.run_dir = Path(run_dir).absolute()
        self.behaviours = {g.name: load_behaviour(g.behaviour) for g in scenario.groups if g.behaviour is not None}
        self.behaviours.update(behaviours or {})  # checked here, before anything starts
        unknown = sorted(set(self.behaviours) - {g.name for g in scenario.groups})
        if unknown:
            raise ConfigError(f"behaviours name no group of the scenario: {unknown}")
        for name, cls in self.behaviours.items():
            if not (isinstance(cls, type) and issubclass(cls, SimAgent)):
                raise ConfigError(f"behaviours[{name!r}]={cls!r}: must be a subclass of mesh.SimAgent")
        self.overwrite = overwrite
        self.progress = progress
        self.plots = plots
        self.address = address
        self._stop = threading.Event()
        self._ids = {g.name: g.agent_ids() for g in scenario.groups}

    def stop(self) -> None:
        """Finish the current tick, then end the run (what Ctrl-C does)."""
        self._stop.set()

    def run(self) -> dict[str, Any]:
        """Play the whole scenario; the report (also saved as ``report.json`` in the run directory)."""
        from mesh.mesh import Mesh

        self._prepare_run_dir()
        log = RunLog(started_s=time.perf_counter())
        with self._sigint_stops(), Mesh(self._mesh_config(), address=self.address) as mesh:
            self._populate(mesh)
            log.setup_s = time.perf_counter() - log.started_s
            self._play(mesh, log)
            log.run_s = time.perf_counter() - log.started_s - log.setup_s
            log.live = {"stats": mesh.stats(), "snapshot": mesh.snapshot(), "now_us": mesh.advance_clock(0),
                        "memory": mesh.memory()}
        return build_report(self.scenario, self.run_dir, log, plots=self.plots)

    # -- setup --------------------------------------------------------------------------

    def _prepare_run_dir(self) -> None:
        if self.run_dir.exists() and any(self.run_dir.iterdir()):
            holds_run = any((self.run_dir / marker).exists() for marker in RUN_MARKERS)
            if not self.overwrite:
                what = "already holds a run" if holds_run else "is not empty"
                raise ConfigError(f"output directory {self.run_dir} {what}: choose another, or pass --overwrite")
            if not holds_run:
                raise ConfigError(f"output directory {self.run_dir} is not empty and holds no run: not overwriting it")
            shutil.rmtree(self.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)

    def _mesh_config(self) -> MeshConfig:
        s = self.scenario
        caps = {agent: str(g.daily_cap_usd) for g in s.groups if g.daily_cap_usd is not None for agent in self._ids[g.name]}
        return MeshConfig(
            name=f"sim-{s.name}-{uuid.uuid4().hex[:8]}", out_dir=self.run_dir, shards=s.shards,
            hosts_per_group=s.hosts, max_batch_messages=s.batch_size, handler_timeout_s=s.handler_timeout_s,
            escrow_timeout_s=s.escrow_timeout_s, agent_daily_caps_usd=caps, track_balances=s.tracks_balances,
            clock="manual", start_s=s.start_s, ledger_fsync=s.ledger_fsync, ledger_parquet=s.ledger_parquet,
            ledger_rotate_daily=True, restore_from_ledger=False,
        )

    def _populate(self, mesh: Any) -> None:
        groups = [(self._agent_class(g), self._ids[g.name], {}) for g in self.scenario.groups]
        mesh.add_agent_groups(groups, hosts=self.scenario.hosts)
        if self.scenario.tracks_balances:  # every agent opens an account: those with no balance start at 0
            mesh.deposit_many({a: g.balance_usd or 0 for g in self.scenario.groups for a in self._ids[g.name]})

    def _agent_class(self, group: Any) -> type:
        onward = None
        if group.onward is not None:
            o = group.onward
            onward = OnwardTarget(o.to, self.scenario.group(o.to).count, o.pattern, o.alpha, o.probability)
        behaviour = SimBehaviour(self.scenario.seed, group.name, group.failure_rate, group.latency_ms, onward)
        return group_class(group, behaviour, self.behaviours.get(group.name))

    # -- the run --------------------------------------------------------------------------

    def _play(self, mesh: Any, log: RunLog) -> None:
        s = self.scenario
        rng = np.random.Generator(np.random.PCG64(s.seed))
        ticks, tick_s = s.ticks, s.days * 86_400 / s.ticks
        shares = np.array([flow.share for flow in s.traffic])
        bar = _progress_bar(s.messages, self.progress)
        sent = 0
        try:
            for tick in range(ticks):
                if self._stop.is_set():
                    log.interrupted = True
                    print("\ntollmesh: interrupted after tick", tick, "- flushing the ledger and reporting"
                          " (Ctrl-C again to abort)", file=sys.stderr)
                    break
                count = s.messages // ticks + (1 if tick < s.messages % ticks else 0)
                messages = self._draw(rng, shares / shares.sum(), sent, count)
                started = time.perf_counter()
                outcomes = mesh.send_counted(messages, max_batch_messages=s.batch_size)
                log.record_tick(tick, count, time.perf_counter() - started, outcomes, mesh.stats())
                sent += count
                _show(bar, count, log)
                mesh.advance_clock(tick_s)
        finally:
            if bar is not None:
                bar.close()
        log.messages_sent = sent

    def _draw(self, rng: np.random.Generator, shares: np.ndarray, first: int, count: int) -> list[Message]:
        """The next ``count`` calls, drawn from the traffic flows (task ids ``m<n>``, in order)."""
        flows = rng.choice(len(self.scenario.traffic), size=count, p=shares)
        sources = rng.random(count)
        targets = rng.random(count)
        messages: list[Message] = [None] * count  # type: ignore[list-item]
        for index, flow in enumerate(self.scenario.traffic):
            where = np.flatnonzero(flows == index)
            if where.size == 0:
                continue
            for i, (source, target) in zip(where.tolist(), self._pairs(flow, sources[where], targets[where])):
                messages[i] = Message(source, target, None, task_id=f"m{first + i}")
        return messages

    def _pairs(self, flow: Traffic, u_source: np.ndarray, u_target: np.ndarray) -> Iterator[tuple[str, str]]:
        source_ids, target_ids = self._ids[flow.source], self._ids[flow.target]
        sources = pick_many(len(source_ids), "uniform", 1.0, u_source)
        targets = pick_many(len(target_ids), flow.pattern, flow.alpha, u_target)
        if flow.source == flow.target:  # nobody calls itself: the next agent instead
            same = sources == targets
            targets[same] = (targets[same] + 1) % len(target_ids)
        for s, t in zip(sources.tolist(), targets.tolist()):
            yield source_ids[s], target_ids[t]

    @contextmanager
    def _sigint_stops(self) -> Iterator[None]:
        """While the run goes on, the first Ctrl-C ends it after the current tick; a second one aborts."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_sigint(signum: int, frame: Any) -> None:  # no printing here: the progress bar may be mid-write
            if self._stop.is_set():
                raise KeyboardInterrupt
            self._stop.set()

        previous = signal.signal(signal.SIGINT, on_sigint)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


def run_simulation(scenario: Scenario, run_dir: str | Path, **options: Any) -> dict[str, Any]:
    """Run ``scenario`` into ``run_dir`` and return its report (see :class:`Simulation` for ``options``)."""
    return Simulation(scenario, run_dir, **options).run()


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="msg", unit_scale=True, file=sys.stderr, dynamic_ncols=True, smoothing=0.1)


def _show(bar: Any, count: int, log: RunLog) -> None:
    if bar is None:
        return
    stats = log.last_stats
    bar.set_postfix_str(
        f"locked {stats['locked']:,} released {stats['released']:,} refunded {stats['refunded']:,} "
        f"rejected {stats['rejected']:,}", refresh=False,
    )
    bar.update(count)
