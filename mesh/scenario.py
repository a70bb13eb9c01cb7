"""Simulation scenarios: agent groups, who calls whom, and how the run is laid out (validated by pydantic).

A scenario names groups of agents (count, price, daily cap, starting balance, failure
rate, latency, and optionally whom they call onward, paying in turn: a pipeline), the
traffic the simulation drives between groups (uniform, or power-law hubs), how long it
runs in simulated days, and the mesh's layout. It is read from TOML (``load_scenario``)
or built in Python. A bad field raises :class:`~mesh.core.errors.ConfigError` naming the
field, the value and what is allowed, before anything starts. Fields are strict: a count
or a seed is an int (``count = 2.0``, ``seed = "7"`` and ``messages = true`` are refused),
a rate or a duration an int or float, money a number or its text (never a bool), and
the run's days must end within the clock's range (before the year 10000).

>>> s = Scenario(groups=[{"name": "users", "count": 10, "balance_usd": "5"},
...                      {"name": "shops", "count": 3, "price_usd": "0.01"}],
...              traffic=[{"source": "users", "target": "shops", "pattern": "power_law"}])
>>> s.agent_count, s.group("shops").price_micros
(13, 10000)
>>> Scenario(groups=[{"name": "a", "count": 1}], traffic=[{"source": "a", "target": "b"}])
Traceback (most recent call last):
...
mesh.core.errors.ConfigError: invalid Scenario: traffic[0].target='b': names no group; the groups are ['a']
"""

from __future__ import annotations

import datetime as dt
import math
import sys
from importlib import resources
from pathlib import Path
from statistics import NormalDist
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ledger.jsonl import FsyncPolicy
from mesh.core.clock import END_TIME_S, SECONDS_PER_DAY
from mesh.booth.config import MIN_DURATION_S, UsdField, config_error
from mesh.core.errors import ConfigError
from mesh.core.money import usd_to_micros
from mesh.core.sharding import MAX_SHARDS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

MAX_AGENTS = 1_000_000
MAX_LATENCY_MS = 600_000.0
_Z99 = NormalDist().inv_cdf(0.99)
Pattern = Literal["uniform", "power_law"]


class _Model(BaseModel):
    # strict: no field coerces (True is not 1, 2.0 is not a count, "7" is not a seed);
    # the date and the enum opt out, to take their text
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Latency(_Model):
    """How long a handler takes: ``none``, ``constant`` (``ms``), ``uniform`` (``low_ms``..``high_ms``)
    or ``lognormal`` (its median ``p50_ms`` and 99th percentile ``p99_ms``)."""

    distribution: Literal["none", "constant", "uniform", "lognormal"] = "none"
    ms: float = Field(default=0.0, ge=0, le=MAX_LATENCY_MS, allow_inf_nan=False)
    low_ms: float = Field(default=0.0, ge=0, le=MAX_LATENCY_MS, allow_inf_nan=False)
    high_ms: float = Field(default=0.0, ge=0, le=MAX_LATENCY_MS, allow_inf_nan=False)
    p50_ms: float = Field(default=1.0, gt=0, le=MAX_LATENCY_MS, allow_inf_nan=False)
    p99_ms: float = Field(default=10.0, gt=0, le=MAX_LATENCY_MS, allow_inf_nan=False)

    @model_validator(mode="after")
    def _ordered(self) -> Latency:
        if self.distribution == "uniform" and self.high_ms < self.low_ms:
            raise ValueError(f"high_ms={self.high_ms} must be at least low_ms={self.low_ms}")
        if self.distribution == "lognormal" and self.p99_ms < self.p50_ms:
            raise ValueError(f"p99_ms={self.p99_ms} must be at least p50_ms={self.p50_ms}")
        return self

    def seconds(self, u: float) -> float:
        """The latency at quantile ``u`` (0 <= u < 1) of the distribution, in seconds.

        >>> Latency(distribution="lognormal", p50_ms=2, p99_ms=20).seconds(0.5)
        0.002
        """
        if self.distribution == "none":
            return 0.0
        if self.distribution == "constant":
            return self.ms / 1e3
        if self.distribution == "uniform":
            return (self.low_ms + (self.high_ms - self.low_ms) * u) / 1e3
        u = min(max(u, 1e-12), 1 - 1e-12)
        z = NormalDist().inv_cdf(u)
        sigma = (math.log(self.p99_ms) - math.log(self.p50_ms)) / _Z99
        return min(round(self.p50_ms * math.exp(sigma * z), 6), MAX_LATENCY_MS) / 1e3


class Onward(_Model):
    """Whom an agent calls (and pays) while it handles a call: an agent of group ``to``, with ``probability``."""

    to: str
    pattern: Pattern = "uniform"
    alpha: float = Field(default=1.2, gt=0, le=10, allow_inf_nan=False)
    probability: float = Field(default=1.0, ge=0, le=1, allow_inf_nan=False)


class AgentGroup(_Model):
    """``count`` agents named ``<name>-<n>``, alike but for their ids.

    ``behaviour`` (``"package.module:Class"``) names a :class:`~mesh.sim_agents.SimAgent`
    subclass for agents of your own; by default they fail, wait and call onward as set here.
    ``pays = "x402"``: each call the simulation makes from this group also carries a signed
    x402 payment (an EIP-3009 authorization by the agent's own key, derived from the seed),
    verified by the mesh before the toll is locked; the report shows the CPU it cost.
    """

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
    count: int = Field(ge=1, le=MAX_AGENTS)
    price_usd: UsdField = "0.001"
    daily_cap_usd: Optional[UsdField] = None
    balance_usd: Optional[UsdField] = None  # any group with one turns balances on; the others then start at 0
    failure_rate: float = Field(default=0.0, ge=0, le=1, allow_inf_nan=False)
    latency_ms: Latency = Latency()
    onward: Optional[Onward] = None
    behaviour: Optional[str] = Field(default=None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    pays: Literal["escrow", "x402"] = "escrow"

    @property
    def price_micros(self) -> int:
        return usd_to_micros(self.price_usd, field=f"groups.{self.name}.price_usd")

    @property
    def cap_micros(self) -> Optional[int]:
        return None if self.daily_cap_usd is None else usd_to_micros(self.daily_cap_usd, field=f"groups.{self.name}.daily_cap_usd")

    @property
    def balance_micros(self) -> Optional[int]:
        return None if self.balance_usd is None else usd_to_micros(self.balance_usd, field=f"groups.{self.name}.balance_usd")

    def agent_id(self, n: int) -> str:
        return f"{self.name}-{n}"

    def agent_ids(self) -> list[str]:
        return [self.agent_id(n) for n in range(self.count)]


class Traffic(_Model):
    """Calls the simulation makes from agents of ``source`` to agents of ``target``.

    ``share`` weighs this flow against the others; ``pattern`` picks targets uniformly
    or by a power law (``alpha``): agent ``target-0`` is the biggest hub.
    """

    source: str
    target: str
    share: float = Field(default=1.0, gt=0, le=1e6, allow_inf_nan=False)
    pattern: Pattern = "uniform"
    alpha: float = Field(default=1.2, gt=0, le=10, allow_inf_nan=False)


class Scenario(_Model):
    """A whole simulation: groups, traffic, duration, layout and ledger; see the module doc."""

    name: str = Field(default="default", pattern=r"^[A-Za-z0-9_-]{1,48}$")
    seed: int = Field(default=7, ge=0, le=2**63 - 1)
    messages: int = Field(default=100_000, ge=1, le=100_000_000)
    days: float = Field(default=1.0, gt=0, le=3_650, allow_inf_nan=False)
    ticks_per_day: int = Field(default=24, ge=1, le=86_400)
    start_date: dt.date = Field(default=dt.date(2026, 1, 1), strict=False)
    # Layout
    shards: int = Field(default=2, ge=1, le=MAX_SHARDS)
    hosts: int = Field(default=2, ge=1, le=256)
    batch_size: int = Field(default=5_000, ge=1, le=100_000)
    # Limits
    handler_timeout_s: float = Field(default=30.0, ge=MIN_DURATION_S, le=3_600, allow_inf_nan=False)
    escrow_timeout_s: float = Field(default=300.0, ge=MIN_DURATION_S, allow_inf_nan=False)
    # Ledger
    ledger_fsync: FsyncPolicy = Field(default=FsyncPolicy.BATCH, strict=False)
    ledger_parquet: bool = True
    # a ledger partition and writer per shard, or one for all; None: partitioned when shards > 1 (MeshConfig.partitioned_ledger)
    partitioned_ledger: Optional[bool] = None
    # Economy
    groups: list[AgentGroup] = Field(min_length=1, max_length=1_000)
    traffic: list[Traffic] = Field(min_length=1, max_length=1_000)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise config_error(exc, "Scenario", Scenario) from None

    @field_validator("start_date", mode="before")
    @classmethod
    def _a_day(cls, value: Any) -> Any:
        """A date, or its ISO text; not a datetime, nor a number (pydantic would read one as a timestamp)."""
        if isinstance(value, dt.datetime) or not isinstance(value, (dt.date, str)):
            raise ValueError("expected a date (in TOML: start_date = 2026-01-01) or its ISO text")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        self._check_time_range()
        names = [g.name for g in self.groups]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise _problem("groups", repeated, "group names must be unique")
        if self.agent_count > MAX_AGENTS:
            raise _problem("groups", self.agent_count, f"at most {MAX_AGENTS:,} agents in all")
        for i, flow in enumerate(self.traffic):
            for side in ("source", "target"):
                if getattr(flow, side) not in names:
                    raise _problem(f"traffic[{i}].{side}", getattr(flow, side), f"names no group; the groups are {names}")
            if flow.source == flow.target and self.group(flow.source).count < 2:
                raise _problem(f"traffic[{i}].target", flow.target, "a group calling itself needs 2 agents or more")
        for group in self.groups:
            if group.onward is not None and group.onward.to not in names:
                raise _problem(f"groups.{group.name}.onward.to", group.onward.to, f"names no group; the groups are {names}")
        self._check_pipelines_end()
        return self

    def _check_time_range(self) -> None:
        """The simulated clock runs from ``start_date`` for ``days``: every instant must be one it can stamp."""
        if self.start_s < 0:
            raise _problem("start_date", self.start_date.isoformat(), "must be 1970-01-01 or later (the Unix epoch)")
        if self.start_s + self.days * SECONDS_PER_DAY >= END_TIME_S:
            room = (END_TIME_S - self.start_s) / SECONDS_PER_DAY
            raise _problem("days", self.days, f"a run from start_date={self.start_date.isoformat()} must end before "
                           f"10000-01-01, the end of the clock's range: less than {room:g} day(s)")

    def _check_pipelines_end(self) -> None:
        """Onward calls must form pipelines: a cycle (a -> b -> a) would call onward forever."""
        onward = {g.name: g.onward.to for g in self.groups if g.onward is not None}
        for start in onward:
            seen, at = [start], onward[start]
            while at in onward:
                if at in seen:
                    cycle = " -> ".join(seen[seen.index(at):] + [at])
                    raise _problem(f"groups.{start}.onward", cycle, "onward calls must not form a cycle")
                seen.append(at)
                at = onward[at]

    @property
    def agent_count(self) -> int:
        return sum(g.count for g in self.groups)

    @property
    def x402_groups(self) -> list[str]:
        """The groups whose calls carry signed x402 payments."""
        return [g.name for g in self.groups if g.pays == "x402"]

    @property
    def tracks_balances(self) -> bool:
        return any(g.balance_usd is not None for g in self.groups)

    @property
    def start_s(self) -> float:
        return dt.datetime.combine(self.start_date, dt.time(), tzinfo=dt.timezone.utc).timestamp()

    @property
    def ticks(self) -> int:
        """How many steps the run takes: at least ``ticks_per_day`` a day, and no step over ``batch_size`` messages."""
        by_time = max(1, round(self.days * self.ticks_per_day))
        return max(by_time, -(-self.messages // self.batch_size))

    def group(self, name: str) -> AgentGroup:
        for group in self.groups:
            if group.name == name:
                return group
        raise KeyError(name)

    def pipeline_depth(self) -> int:
        """The longest chain of calls one message can start (1: no onward calls)."""
        onward = {g.name: g.onward.to for g in self.groups if g.onward is not None}
        deepest = 1
        for flow in self.traffic:
            depth, at = 1, flow.target
            while at in onward:
                depth, at = depth + 1, onward[at]
            deepest = max(deepest, depth)
        return deepest

    def scaled(self, **changes: Any) -> Scenario:
        """This scenario with fields changed (CLI flags); ``agents=N`` scales every group's count to sum to about N."""
        agents = changes.pop("agents", None)
        data = self.model_dump()
        data.update({k: v for k, v in changes.items() if v is not None})
        if agents is not None:
            if isinstance(agents, bool) or not isinstance(agents, int) or agents < len(self.groups):
                raise ConfigError(f"invalid Scenario: agents={agents!r}: at least one per group ({len(self.groups)} groups)")
            total = self.agent_count
            for group in data["groups"]:
                group["count"] = max(1, round(group["count"] * agents / total))
        return Scenario(**data)


def _problem(field: str, value: Any, message: str) -> ValueError:
    return ValueError(f"{field}={value!r}: {message}")


def builtin_scenarios() -> list[str]:
    """The names of the scenarios that ship with tollmesh (``tollmesh simulate --config NAME``)."""
    folder = resources.files("mesh.scenarios")
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_scenario(source: str | Path) -> Scenario:
    """Read a scenario from a TOML file, or a built-in one by name (see :func:`builtin_scenarios`).

    >>> load_scenario("default").agent_count
    1000
    """
    path = Path(source)
    if not path.exists() and isinstance(source, str) and source in builtin_scenarios():
        text = resources.files("mesh.scenarios").joinpath(f"{source}.toml").read_text(encoding="utf-8")
        where = f"built-in scenario {source!r}"
    elif path.is_file():
        try:
            text, where = path.read_text(encoding="utf-8"), str(path)
        except UnicodeDecodeError as exc:
            raise ConfigError(f"scenario {str(source)!r}: not UTF-8 text (a TOML file is): {exc.reason} at byte {exc.start}") from None
    else:
        raise ConfigError(f"scenario {str(source)!r}: no such file, nor a built-in scenario ({', '.join(builtin_scenarios())})")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    try:
        return Scenario(**data)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def load_behaviour(spec: str) -> type:
    """The agent class a group's ``behaviour`` names (``"package.module:Class"``; see :mod:`mesh.behaviours`)."""
    from mesh.behaviours import load_behaviour as load

    return load(spec)
