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

import shlex
import shutil
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
from ray import get as ray_get
from ray import shutdown as ray_shutdown
from ray.exceptions import RayError

from mesh.calls.agent import Message
from mesh.behaviours import refuse_nested_run, ship_by_value
from mesh.core.clock import US_PER_SECOND
from mesh.core.errors import ConfigError, TollmeshError
from mesh.calls.mesh_config import MeshConfig
from mesh.ray_session import ClusterWatch, RaySession, connect
from mesh.scenario import Scenario, Traffic, load_behaviour
from mesh.sim_agents import OnwardTarget, SimAgent, SimBehaviour, group_class, pick_many
from mesh.sim_progress import RunProgress, load_run, read_progress, save_run, tick_starts
from mesh.sim_report import RunLog, build_report

RUN_MARKERS = ("toll_ledger.jsonl", "toll_ledger.partitions.json", "report.json", "agents.ndjson", "run.json")
MAX_TICK_ATTEMPTS = 6  # a tick a fault broke is sent again (its task ids make that idempotent) this often
MESH_BACK_S = 120.0  # how long a restarted actor may take to answer again


class Simulation:
    """One run of a :class:`~mesh.scenario.Scenario` into ``run_dir``; :meth:`run` returns its report.

    ``behaviours`` maps group names to :class:`~mesh.sim_agents.SimAgent` subclasses (your
    own agents; a group's ``behaviour`` field does the same from a scenario file).
    ``address`` attaches to a Ray cluster (else ``RAY_ADDRESS``, else a local Ray is started).
    :meth:`resume` continues a run that was interrupted or whose driver died.

    A crashed actor (a shard, a host, the ledger writer, the coordinator) is restarted by Ray
    and rebuilt from the ledger; a tick the crash broke is sent again (its task ids make that
    idempotent, and the escrows the crash left locked are delivered and settled then).
    """

    def __init__(
        self, scenario: Scenario, run_dir: str | Path, *, behaviours: Optional[dict[str, type]] = None,
        overwrite: bool = False, progress: bool = False, plots: bool = True, address: Optional[str] = None,
        dashboard: bool = False, on_ray_lost: Optional[Callable[[str], None]] = None,
    ) -> None:
        refuse_nested_run()
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
            ship_by_value(sys.modules.get(cls.__module__))  # hosts get your classes without importing your module
        self.overwrite = overwrite
        self.progress = progress
        self.plots = plots
        self.address = address
        self.dashboard = dashboard
        self.on_ray_lost = on_ray_lost  # called (from a thread) with a sentence if the Ray cluster goes away mid-run
        self._stop = threading.Event()
        self._ids = {g.name: g.agent_ids() for g in scenario.groups}
        self._resumed: Optional[RunProgress] = None
        self._tick_us = round(scenario.days * 86_400 / scenario.ticks * US_PER_SECOND)  # what each tick moves the clock
        self._payer = None if not scenario.x402_groups else _X402Payer(scenario)

    @classmethod
    def resume(cls, run_dir: str | Path, **options: Any) -> Simulation:
        """The rest of the run in ``run_dir`` (interrupted by Ctrl-C, or its driver killed), from its ledger.

        The tick the run was in is sent again, then the rest: the ledger ends up holding the
        same calls, outcomes and simulated times as a run that was never interrupted.
        ``options`` are those of the constructor (``overwrite`` aside).
        """
        run_dir = Path(run_dir).absolute()
        simulation = cls(load_run(run_dir), run_dir, **options)
        progress = read_progress(run_dir, simulation.scenario)
        if progress.finished:
            raise ConfigError(f"the run in {run_dir} finished (see its report.json): nothing to resume")
        simulation._resumed = progress
        return simulation

    def stop(self) -> None:
        """Finish the current tick, then end the run (what Ctrl-C does)."""
        self._stop.set()

    def run(self) -> dict[str, Any]:
        """Play the whole scenario; the report (also saved as ``report.json`` in the run directory)."""
        from mesh.mesh import Mesh

        if self._resumed is None:
            self._check_run_dir()  # before Ray starts: a taken directory is said at once
        namespace = MeshConfig.model_fields["namespace"].default
        session = connect(self.address, namespace, dashboard=self.dashboard)  # before the run dir is made
        watch = None if self.on_ray_lost is None else ClusterWatch(session, self.on_ray_lost).start()
        try:
            _say(session.summary)
            if self.dashboard:
                _say_dashboard(session)
            return self._run(Mesh, log_started_s=time.perf_counter())
        finally:
            if watch is not None:
                watch.stop()
            if session.started or session.joined is not None:  # a cluster joined is left: Ray's buffered
                ray_shutdown()  # notices (a node that died...) come out now, before the report is printed

    def _run(self, Mesh: type, log_started_s: float) -> dict[str, Any]:
        if self._resumed is None:
            self._prepare_run_dir()
        log = RunLog(started_s=log_started_s, first_tick=self._first_tick, resumed=self._resumed is not None)
        if self._resumed is not None:
            log.outcomes.update(self._resumed.outcomes)
        with self._sigint_stops(), Mesh(self._mesh_config(), address=self.address) as mesh:
            self._populate(mesh)
            log.setup_s = time.perf_counter() - log.started_s
            machine_cpu_s = _machine_cpu_s()
            self._play(mesh, log)
            log.run_s = time.perf_counter() - log.started_s - log.setup_s
            log.machine_cpu_s = _machine_cpu_s() - machine_cpu_s
            log.live = self._retried(mesh, lambda: {
                "stats": self._counted_before(mesh.stats()), "snapshot": mesh.snapshot(),
                "now_us": mesh.advance_clock(0), "memory": mesh.memory(),
            })
            if self._payer is not None:
                log.x402 = {**self._payer.stats(), "verified": self._retried(mesh, mesh.x402_stats)}
        return build_report(self.scenario, self.run_dir, log, plots=self.plots)

    @property
    def _first_tick(self) -> int:
        return 0 if self._resumed is None else self._resumed.next_tick

    # -- setup --------------------------------------------------------------------------

    def _check_run_dir(self) -> None:
        """Raise if the run directory cannot take this run (see :meth:`_prepare_run_dir`)."""
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise ConfigError(f"output directory {self.run_dir} is a file: choose a directory")
        if self.run_dir.exists() and any(self.run_dir.iterdir()) and not self.overwrite:
            if any((self.run_dir / marker).exists() for marker in RUN_MARKERS):
                raise RunDirTaken(self.run_dir)
            raise ConfigError(f"output directory {self.run_dir} is not empty: choose another, or pass --overwrite")

    def _prepare_run_dir(self) -> None:
        self._check_run_dir()
        if self.run_dir.exists() and any(self.run_dir.iterdir()):  # --overwrite: only a run is replaced
            if not any((self.run_dir / marker).exists() for marker in RUN_MARKERS):
                raise ConfigError(f"output directory {self.run_dir} is not empty and holds no run: not overwriting it")
            shutil.rmtree(self.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_run(self.run_dir, self.scenario)

    def _mesh_config(self) -> MeshConfig:
        s = self.scenario
        caps = {agent: str(g.daily_cap_usd) for g in s.groups if g.daily_cap_usd is not None for agent in self._ids[g.name]}
        return MeshConfig(
            name=f"sim-{s.name}-{uuid.uuid4().hex[:8]}", out_dir=self.run_dir, shards=s.shards,
            hosts_per_group=s.hosts, max_batch_messages=s.batch_size, handler_timeout_s=s.handler_timeout_s,
            escrow_timeout_s=s.escrow_timeout_s, agent_daily_caps_usd=caps, track_balances=s.tracks_balances,
            clock="manual", start_s=s.start_s, ledger_fsync=s.ledger_fsync, ledger_parquet=s.ledger_parquet,
            ledger_rotate_daily=True, partitioned_ledger=s.partitioned_ledger,
            restore_from_ledger=self._resumed is not None,  # a resumed run adopts its ledger
        )

    def _populate(self, mesh: Any) -> None:
        groups = [(self._agent_class(g), self._ids[g.name], {}) for g in self.scenario.groups]
        mesh.add_agent_groups(groups, hosts=self.scenario.hosts)
        if self._payer is not None:
            mesh.set_x402_verifier(self._payer.verifier())
        if self.scenario.tracks_balances:  # every agent opens an account: those with no balance start at 0
            done = set() if self._resumed is None else self._resumed.deposited
            deposits = {a: g.balance_usd or 0 for g in self.scenario.groups for a in self._ids[g.name] if a not in done}
            if deposits:
                mesh.deposit_many(deposits)

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
        shares = np.array([flow.share for flow in s.traffic])
        starts = tick_starts(s)
        bar = _progress_bar(s.messages, self.progress, done=starts[self._first_tick])
        tick = self._first_tick
        try:
            for skipped in range(self._first_tick):  # the draws of the ticks a resumed run already played
                self._draw(rng, shares / shares.sum(), starts[skipped], starts[skipped + 1] - starts[skipped])
            for tick in range(self._first_tick, s.ticks):
                if self._stop.is_set():
                    log.interrupted = True
                    print("\ntollmesh: interrupted after tick", tick, "- flushing the ledger and reporting"
                          " (Ctrl-C again to abort)", file=sys.stderr)
                    break
                count = starts[tick + 1] - starts[tick]
                messages = self._draw(rng, shares / shares.sum(), starts[tick], count)
                if self._payer is not None:
                    messages = self._payer.sign(messages, tick_s=self.scenario.start_s + tick * self._tick_us / US_PER_SECOND)
                started = time.perf_counter()
                outcomes, stats = self._send_tick(mesh, tick, messages, again=tick == self._first_tick and self._resumed is not None)
                log.record_tick(tick, count, time.perf_counter() - started, outcomes, stats)
                _show(bar, count, log)
            else:
                tick = s.ticks
            self._retried(mesh, lambda: self._set_clock(mesh, tick))
        finally:
            if bar is not None:
                bar.close()
        log.messages_sent = starts[tick]

    def _send_tick(self, mesh: Any, tick: int, messages: list[Message], *, again: bool) -> tuple[Counter, dict[str, Any]]:
        """Send one tick's calls at its simulated time; send them again while a fault broke the tick.

        A tick is whole when every call came back from the mesh with an outcome the ledger holds
        and no escrow is left open. ``again``: the tick was sent before (by a run that crashed).
        """
        for attempt in range(MAX_TICK_ATTEMPTS):
            redeliver = again or attempt > 0
            try:
                self._set_clock(mesh, tick)
                if redeliver:
                    ray_get(mesh.actor("coordinator").set_redelivery.remote(True))
                if any(m.payer_wallet or m.tx_signature for m in messages):  # x402 payers: verified a call at a time
                    outcomes = mesh.send_counted(messages, max_batch_messages=self.scenario.batch_size)
                else:  # the bulk path: columns in, status codes out
                    outcomes = mesh.send_columns(
                        [m.source for m in messages], [m.target for m in messages], [m.payload for m in messages],
                        task_ids=[m.task_id for m in messages], max_batch_messages=self.scenario.batch_size).counts()
                if redeliver:
                    ray_get(mesh.actor("coordinator").set_redelivery.remote(False))
                stats = mesh.stats()
            except RayError as exc:
                _warn(f"tick {tick}: {type(exc).__name__} (an actor of the mesh died); sending the tick again")
                _wait_for_mesh(mesh)
                continue
            broken = {k: n for k, n in outcomes.items() if k.split(":")[-1] in FAULT_REASONS}
            if not broken and stats["open_escrows"] == 0:
                return outcomes, stats
            _warn(f"tick {tick}: {sum(broken.values()) or stats['open_escrows']:,} calls broken by a fault"
                  f" ({', '.join(sorted(broken)) or 'escrows left open'}); sending the tick again")
        raise SimulationError(f"tick {tick} was still broken by faults after {MAX_TICK_ATTEMPTS} attempts")

    def _set_clock(self, mesh: Any, tick: int) -> None:
        """Move the mesh's manual clock to the start of ``tick`` (a restarted coordinator may be behind)."""
        target_us = round(self.scenario.start_s * US_PER_SECOND) + tick * self._tick_us
        now_us = mesh.advance_clock(0)
        if now_us > target_us:
            raise SimulationError(f"the mesh's clock is past tick {tick}: {now_us} > {target_us} us")
        if now_us < target_us:
            mesh.advance_clock((target_us - now_us) / US_PER_SECOND)

    def _counted_before(self, stats: dict[str, Any]) -> dict[str, Any]:
        """The mesh's counters with what the run counted before it was resumed (they count from the start)."""
        if self._resumed is None:
            return stats
        tally = self._resumed.tally
        stats = dict(stats)
        for key in ("locked", "released", "refunded", "rejected"):
            stats[key] += tally.counts[key]
        stats["released_micros"] += tally.amounts["released"]
        stats["refunded_micros"] += tally.amounts["refunded"]
        return stats

    def _retried(self, mesh: Any, step: Callable[[], Any]) -> Any:
        """``step()``, once more after each actor death (Ray restarts the actor), a few times."""
        for _ in range(MAX_TICK_ATTEMPTS - 1):
            try:
                return step()
            except RayError as exc:
                _warn(f"{type(exc).__name__} (an actor of the mesh died); again")
                _wait_for_mesh(mesh)
        return step()

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


class _X402Payer:
    """Signs the calls of the scenario's paying groups (``pays = "x402"``): each agent's key is derived from
    the seed and its id, each nonce from the seed and the task id, the window from the tick's simulated time,
    so the same seed signs the same payments. Counts the CPU signing took (the report's share)."""

    def __init__(self, scenario: Scenario) -> None:
        from mesh.x402.terms import PaymentTerms
        from mesh.x402.wallet import PayingWallet

        self.scenario = scenario
        self.groups = set(scenario.x402_groups)
        self.terms = PaymentTerms(pay_to=PayingWallet.derived(scenario.seed, "sim-payee").address)
        self._wallets: dict[str, Any] = {}
        self._price = {g.name: g.price_micros for g in scenario.groups}
        self._valid_for_s = int(scenario.days * 86_400 / scenario.ticks) + int(scenario.escrow_timeout_s) + 60
        self.signed = 0
        self.sign_cpu_s = 0.0

    def verifier(self) -> Any:
        from mesh.x402.exact import ExactEvmVerifier

        return ExactEvmVerifier(self.terms)  # the mesh binds its manual clock to it

    def sign(self, messages: list[Message], *, tick_s: float) -> list[Message]:
        from eth_utils import keccak

        from mesh.x402.wallet import PayingWallet

        started = time.thread_time()
        seed, signed = self.scenario.seed, []
        for message in messages:
            group = message.source.rpartition("-")[0]
            if group not in self.groups:
                signed.append(message)
                continue
            wallet = self._wallets.get(message.source)
            if wallet is None:
                wallet = self._wallets[message.source] = PayingWallet.derived(seed, message.source)
            header = wallet.pay(self.terms, self._price[message.target.rpartition("-")[0]], now_s=tick_s,
                                nonce=keccak(text=f"{seed}:{message.task_id}"), valid_for_s=self._valid_for_s)
            signed.append(message._replace(payer_wallet=wallet.address, tx_signature=header))
            self.signed += 1
        self.sign_cpu_s += time.thread_time() - started
        return signed

    def stats(self) -> dict[str, Any]:
        return {"groups": sorted(self.groups), "signed": self.signed, "sign_cpu_s": self.sign_cpu_s,
                "pay_to": self.terms.pay_to, "network": self.terms.network}


def _machine_cpu_s() -> float:
    """CPU seconds the whole machine has spent (user, nice'd and system, every core): the run's, on a machine to itself."""
    import psutil

    times = psutil.cpu_times()
    return times.user + getattr(times, "nice", 0.0) + times.system


class SimulationError(TollmeshError):
    """A run could not go on: a fault broke a tick again and again."""


#: Outcomes that the ledger does not hold as the call's end (the call must be made again).
FAULT_REASONS = frozenset({"shard_unavailable", "ledger_append_lost", "settle_unavailable"})


class RunDirTaken(ConfigError):
    """The output directory holds a run: one that did not finish (resumable) or one that did (replaceable).

    :meth:`explain` says which, with the command that resumes it or replaces it.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.resumable, self.progress_text = _unfinished(run_dir)
        super().__init__(self.explain(None))

    def explain(self, command: Optional[str]) -> str:
        """The message, with ``command`` (the command line that was refused) made into the one that replaces the run."""
        replace = f"`{command} --overwrite`" if command else "overwrite=True"
        if self.resumable:
            resume = f"`tollmesh simulate --resume {shlex.quote(str(self.run_dir))}`" if command else "Simulation.resume(run_dir)"
            return (f"output directory {self.run_dir} holds a run that did not finish ({self.progress_text}): "
                    f"it is resumable: resume it with {resume}; or replace it with {replace}")
        return (f"output directory {self.run_dir} already holds a run: choose another, or pass --overwrite to "
                f"replace it ({replace}); {self.progress_text}")


def _unfinished(run_dir: Path) -> tuple[bool, str]:
    """Whether the run in ``run_dir`` can be resumed, and how far it got, in words."""
    try:
        scenario = load_run(run_dir)
        progress = read_progress(run_dir, scenario)
    except (TollmeshError, OSError, ValueError) as exc:
        return False, f"not resumable: {exc}"
    if progress.finished:
        return False, "it finished: see its report.json"
    return True, f"it stopped in tick {progress.next_tick + 1} of {scenario.ticks}"


def _say(message: str) -> None:
    print(f"tollmesh: {message}", file=sys.stderr)


def _say_dashboard(session: RaySession) -> None:
    if session.dashboard_url is None:
        _say("dashboard: none (the mesh joined a cluster: open the cluster's own dashboard)")
        return
    _say(f"dashboard: {session.dashboard_url} (tollmesh metrics, ray_tollmesh_*, in its Metrics view"
         f" with Prometheus/Grafana; raw: {session.metrics_url})")


def _warn(message: str) -> None:
    print(f"tollmesh: {message}", file=sys.stderr)


def _wait_for_mesh(mesh: Any) -> None:
    """Wait until the mesh answers again (Ray is restarting a dead actor), up to ``MESH_BACK_S``."""
    deadline = time.monotonic() + MESH_BACK_S
    while True:
        try:
            mesh.stats()
            return
        except RayError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def run_simulation(scenario: Scenario, run_dir: str | Path, **options: Any) -> dict[str, Any]:
    """Run ``scenario`` into ``run_dir`` and return its report (see :class:`Simulation` for ``options``)."""
    return Simulation(scenario, run_dir, **options).run()


def _progress_bar(total: int, enabled: bool, *, done: int = 0) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=done, unit="msg", unit_scale=True, file=sys.stderr, dynamic_ncols=True,
                smoothing=0.1)


def _show(bar: Any, count: int, log: RunLog) -> None:
    if bar is None:
        return
    stats = log.last_stats
    bar.set_postfix_str(
        f"locked {stats['locked']:,} released {stats['released']:,} refunded {stats['refunded']:,} "
        f"rejected {stats['rejected']:,}", refresh=False,
    )
    bar.update(count)
