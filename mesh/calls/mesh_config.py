"""The :class:`MeshConfig`: how a mesh is laid out, priced, limited and recorded (validated by pydantic).

>>> MeshConfig(shards=8).shards
8
>>> MeshConfig(shards=0)
Traceback (most recent call last):
...
mesh.core.errors.ConfigError: invalid MeshConfig: shards=0: Input should be greater than or equal to 1
>>> MeshConfig(shards=2.0)
Traceback (most recent call last):
...
mesh.core.errors.ConfigError: invalid MeshConfig: shards=2.0: Input should be a valid integer

A new ledger is partitioned by shard when there are two shards or more (a restored one keeps its kind):

>>> MeshConfig(shards=2).partitioned_ledger, MeshConfig(shards=1).partitioned_ledger, MeshConfig(shards=2, partitioned_ledger=False).writers
(True, False, 1)
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ledger.jsonl import FsyncPolicy
from ledger.partitions import partition_count, partition_path
from ledger.replay import ledger_has_events
from mesh.core.clock import END_TIME_S
from mesh.booth.config import MIN_DURATION_S, AgentIdKey, UsdField, config_error
from mesh.core.money import usd_to_micros
from mesh.core.sharding import MAX_SHARDS


def fresh_out_dir(name: str) -> Path:
    """A new run directory for a mesh given no ``out_dir``: ``tollmesh-out/mesh/<name>-<UTC time>-<6 hex>``,
    so that two runs never share a ledger (nor its spending) unless told to.

    >>> fresh_out_dir("demo").parent, fresh_out_dir("demo") != fresh_out_dir("demo")
    (PosixPath('tollmesh-out/mesh'), True)
    """
    return Path("tollmesh-out") / "mesh" / f"{name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{os.urandom(3).hex()}"


class MeshConfig(BaseModel):
    """Every knob of a :class:`~mesh.mesh.Mesh`; unknown fields and bad values raise ConfigError."""

    # strict (see mesh.booth.config): a count is an int, a duration an int or float, a flag a bool, text a str;
    # the path and the enum opt out, to take their text
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: str = Field(default="tollmesh", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    namespace: str = Field(default="tollmesh", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    # default: a fresh directory per mesh, tollmesh-out/mesh/<name>-<time>-<random>/ (see fresh_out_dir);
    # an out_dir that holds a ledger is restored from it (announced), or refused with restore_from_ledger=False
    out_dir: Path = Field(default=None, validate_default=True, strict=False)
    detached: bool = False  # actors outlive the driver that started them (attach from others; shut down explicitly)
    # Layout
    shards: int = Field(default=4, ge=1, le=MAX_SHARDS)
    hosts_per_group: int = Field(default=2, ge=1, le=256)
    # Batching and backpressure
    max_batch_messages: int = Field(default=5_000, ge=1, le=100_000)
    max_inflight_batches: int = Field(default=8, ge=1, le=256)
    # Single calls from the owning driver run through a Ray Compiled Graph (actors/fast_lane.py),
    # opened on demand and parked after fast_lane_idle_s without a call (mesh/fast_path.py)
    fast_lane: bool = True
    fast_lane_idle_s: float = Field(default=5.0, ge=MIN_DURATION_S, le=86_400, allow_inf_nan=False)
    # Limits
    handler_timeout_s: float = Field(default=30.0, ge=MIN_DURATION_S, le=3_600, allow_inf_nan=False)
    escrow_timeout_s: Optional[float] = Field(default=300.0, ge=MIN_DURATION_S, allow_inf_nan=False)
    sweep_interval_s: float = Field(default=1.0, ge=MIN_DURATION_S, le=3_600, allow_inf_nan=False)
    max_daily_toll_per_agent: Optional[UsdField] = None
    agent_daily_caps_usd: dict[AgentIdKey, Optional[UsdField]] = Field(default_factory=dict)
    track_balances: bool = False
    max_payload_bytes: int = Field(default=1 << 20, ge=1, le=1 << 30)
    max_settled_records: int = Field(default=100_000, ge=0)
    x402_verify_timeout_s: float = Field(default=5.0, ge=MIN_DURATION_S, le=600, allow_inf_nan=False)
    # Time: the system's UTC clock, or a manual one moved by Mesh.advance_clock (simulations)
    clock: Literal["system", "manual"] = "system"
    start_s: float = Field(default=0.0, ge=0, lt=END_TIME_S, allow_inf_nan=False)
    # Ledger
    ledger_fsync: FsyncPolicy = Field(default=FsyncPolicy.BATCH, strict=False)
    ledger_parquet: bool = True
    ledger_max_segment_bytes: Optional[int] = Field(default=None, ge=1)
    ledger_rotate_daily: bool = False
    ledger_format: Optional[int] = Field(default=None, ge=1, le=2)  # a new ledger's format (None: v2); a ledger keeps its own
    # One ledger partition (and writer) per shard (ledger/partitions.py), or one ledger and writer for all;
    # None: as the ledger in out_dir is, and a new one partitioned when there are two shards or more
    partitioned_ledger: Optional[bool] = None
    restore_from_ledger: bool = True
    # Observability
    metrics_enabled: bool = True

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise config_error(exc, "MeshConfig", MeshConfig) from None

    @model_validator(mode="before")
    @classmethod
    def _fresh_out_dir(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("out_dir") is None:
            name = data.get("name", "tollmesh")
            data = {**data, "out_dir": fresh_out_dir(name if isinstance(name, str) else "tollmesh")}
        return data

    @model_validator(mode="after")
    def _ledger_kind(self) -> MeshConfig:
        """``partitioned_ledger=None``: the kind of the ledger in ``out_dir``, or for a new one, partitioned
        when there are two shards or more (so that no one writer takes every event)."""
        if self.partitioned_ledger is None:
            ledger = self.ledger_path
            if partition_count(ledger) is not None:
                partitioned = True
            elif ledger_has_events(ledger) or ledger.exists():
                partitioned = False
            else:
                partitioned = self.shards > 1
            object.__setattr__(self, "partitioned_ledger", partitioned)  # frozen, and resolved once, here
        return self

    @field_validator("out_dir")
    @classmethod
    def _absolute(cls, out_dir: Path) -> Path:
        """Actors run in other processes (and machines): they get the driver's absolute path."""
        return out_dir.absolute()

    @property
    def ledger_path(self) -> Path:
        return self.out_dir / "toll_ledger.jsonl"

    @property
    def parquet_dir(self) -> Optional[Path]:
        return self.out_dir / "parquet" if self.ledger_parquet else None

    @property
    def writers(self) -> int:
        """How many ledger writers the mesh runs: one per shard if the ledger is partitioned, else one."""
        return self.shards if self.partitioned_ledger else 1

    def writer_ledger(self, writer: int) -> Path:
        """The ledger file (family) writer ``writer`` writes: a partition's, or the ledger's own."""
        return partition_path(self.ledger_path, writer) if self.partitioned_ledger else self.ledger_path

    def writer_parquet_dir(self, writer: int) -> Optional[Path]:
        """The Parquet dataset writer ``writer`` writes (``parquet/shard=K`` for a partition), or None."""
        if self.parquet_dir is None or not self.partitioned_ledger:
            return self.parquet_dir
        return self.parquet_dir / f"shard={writer}"

    def writer_role(self, writer: int) -> str:
        """The role of writer ``writer`` (``writer``, or ``writer.K`` for partition K), as :meth:`Mesh.actor` takes it."""
        return f"writer.{writer}" if self.partitioned_ledger else "writer"

    def writer_name(self, writer: int) -> str:
        """The actor name of writer ``writer``."""
        return self.actor_name(self.writer_role(writer))

    def writer_of(self, shard: int) -> int:
        """Which writer takes shard ``shard``'s events."""
        return shard if self.partitioned_ledger else 0

    @property
    def directory_path(self) -> Path:
        """Where the coordinator keeps its agent directory (to come back after a restart)."""
        return self.out_dir / "agents.ndjson"

    @property
    def runtime_caps_path(self) -> Path:
        """Where the coordinator keeps caps changed while the mesh runs (for shards that restart)."""
        return self.out_dir / "runtime_caps.json"

    @property
    def default_cap_micros(self) -> Optional[int]:
        cap = self.max_daily_toll_per_agent
        return None if cap is None else usd_to_micros(cap, field="max_daily_toll_per_agent")

    def agent_caps_micros(self) -> dict[str, Optional[int]]:
        return {a: None if c is None else usd_to_micros(c, field="agent_daily_caps_usd") for a, c in self.agent_daily_caps_usd.items()}

    def actor_name(self, role: str) -> str:
        """The Ray actor name of one of this mesh's actors (``coordinator``, ``writer``, ``shard.3``...)."""
        return f"{self.name}.{role}"
