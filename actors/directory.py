"""What the coordinator keeps of the mesh besides escrows: where each agent lives (its host and prices,
in a JSONL file beside the ledger, so a restarted coordinator finds them) and the mesh's clock.

>>> from mesh.calls.mesh_config import MeshConfig
>>> clock = MeshClock(MeshConfig(name="doc", clock="manual", start_s=10.0))
>>> clock.now_us(), clock.advance(1.5)
(10000000, 11500000)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import ray

from mesh.calls.agent import PriceTable
from mesh.calls.mesh_config import MeshConfig
from mesh.core.clock import US_PER_SECOND
from mesh.core.errors import InvalidArgumentError


class AgentDirectory:
    """Which host actor holds each agent, and its prices; kept in a JSONL file to survive restarts."""

    def __init__(self, path: Path, namespace: str) -> None:
        self.path = path
        self.namespace = namespace
        self.hosts: list[Any] = []
        self.host_names: list[str] = []
        self.agents: dict[str, tuple[int, PriceTable]] = {}

    def add(self, host_name: str, agent_ids: list[str], prices: PriceTable, *, persist: bool = True) -> None:
        taken = [a for a in agent_ids if a in self.agents]
        if taken:
            raise InvalidArgumentError("agent_ids", taken[:5], "are already in the mesh")
        if persist:
            line = {"host": host_name, "agents": agent_ids, "default_micros": prices.default_micros,
                    "method_micros": prices.method_micros, "methods": sorted(prices.methods)}
            with open(self.path, "ab") as f:
                f.write(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE))
        if host_name in self.host_names:  # another group of agents on a host already known
            index = self.host_names.index(host_name)
        else:
            self.hosts.append(ray.get_actor(host_name, namespace=self.namespace))
            self.host_names.append(host_name)
            index = len(self.hosts) - 1
        entry = (index, prices)
        for agent_id in agent_ids:
            self.agents[agent_id] = entry

    def load(self) -> None:
        if not self.path.exists():
            return
        for raw in self.path.read_bytes().splitlines():
            line = orjson.loads(raw)
            prices = PriceTable(line["default_micros"], line["method_micros"], frozenset(line["methods"]))
            self.add(line["host"], line["agents"], prices, persist=False)


class MeshClock:
    """The coordinator's time: the system's UTC clock or a manual one; never goes back."""

    def __init__(self, config: MeshConfig) -> None:
        self.manual = config.clock == "manual"
        self._manual_us = round(config.start_s * US_PER_SECOND)
        self._last_us = 0

    def now_us(self) -> int:
        now = self._manual_us if self.manual else time.time_ns() // 1_000
        if now < self._last_us:
            now = self._last_us
        self._last_us = now
        return now

    def resume_after(self, ts_us: int) -> None:
        """Never stamp anything before ``ts_us`` (the ledger's last event, after a restart)."""
        self._last_us = max(self._last_us, ts_us)
        if self.manual:
            self._manual_us = max(self._manual_us, ts_us)

    def advance(self, seconds: float) -> int:
        if not self.manual:
            raise InvalidArgumentError("clock", "system", "only a mesh with clock='manual' can be advanced")
        if not seconds >= 0:
            raise InvalidArgumentError("seconds", seconds, "a clock only moves forward")
        self._manual_us += round(seconds * US_PER_SECOND)
        return self._manual_us
