"""The agents of a simulation: they fail, wait and call onward as their group says, reproducibly.

Every random choice an agent makes (fail or not, how long to take, whom to call
onward) is drawn from a hash of the run's seed and the call's task id, so the same
seed gives the same choices whatever order the mesh runs the calls in.

Write your own behaviour by subclassing :class:`SimAgent` (name it in a scenario as
``behaviour = "package.module:Class"``, or pass the class to
:class:`~mesh.simulate.Simulation`); ``self.behaviour`` holds the group's settings,
``self.draws(ctx)`` gives the call's reproducible random numbers and
``await self.call_onward(ctx, payload)`` calls (and pays) the next stage:

>>> class Auditor(SimAgent):
...     async def handle(self, ctx, payload):
...         u_fail, _, _, _ = self.draws(ctx)
...         if u_fail < 0.5:                      # fails half its calls, refunded
...             raise SimulatedFailure("audit rejected")
...         return await self.call_onward(ctx, payload)
>>> power_law_pick(1_000, 1.2, 0.0), power_law_pick(1_000, 1.2, 0.999999)
(0, 999)
"""

from __future__ import annotations

import asyncio
import hashlib
import struct
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar, Optional

import numpy as np

from mesh.calls.agent import Agent, CallContext
from mesh.scenario import AgentGroup, Latency, Pattern

_U64 = float(2**64)
_FOUR_U64 = struct.Struct("<4Q")  # a 32-byte digest as four little-endian 64-bit draws


class SimulatedFailure(RuntimeError):
    """A handler failing on purpose (its group's ``failure_rate``): the call is refunded."""


class OnwardCallFailed(RuntimeError):
    """The next stage of a pipeline did not succeed, so this stage fails too (and is refunded)."""


@dataclass(frozen=True)
class OnwardTarget:
    """The group a stage calls onward: its name and size, how targets are picked, how often."""

    group: str
    count: int
    pattern: Pattern
    alpha: float
    probability: float

    def pick(self, u: float) -> str:
        """The agent at quantile ``u`` of this group's target distribution."""
        n = int(u * self.count) if self.pattern == "uniform" else power_law_pick(self.count, self.alpha, u)
        return f"{self.group}-{min(n, self.count - 1)}"


@dataclass(frozen=True)
class SimBehaviour:
    """What a simulated group does with each call (set on its agent class by the simulation)."""

    seed: int
    group: str
    failure_rate: float = 0.0
    latency: Latency = Latency()
    onward: Optional[OnwardTarget] = None


class SimAgent(Agent):
    """A simulated agent: it fails at its group's rate, takes its group's latency and calls onward
    (paying) as its group says. Calls that need neither wait nor onward call run inline (fast)."""

    behaviour: ClassVar[Optional[SimBehaviour]] = None
    not_handlers: ClassVar[frozenset[str]] = frozenset({"draws", "fails", "call_onward"})

    def draws(self, ctx: CallContext) -> tuple[float, float, float, float]:
        """Four uniform numbers in [0, 1) from the seed and the task id: failure, latency, onward, target."""
        seed = self.behaviour.seed if self.behaviour is not None else 0
        digest = hashlib.blake2b(f"{seed}:{ctx.task_id}".encode(), digest_size=32).digest()
        a, b, c, d = _FOUR_U64.unpack(digest)
        return a / _U64, b / _U64, c / _U64, d / _U64

    def fails(self, u_fail: float) -> bool:
        """Whether a call whose failure draw is ``u_fail`` fails, at the group's ``failure_rate``."""
        return self.behaviour is not None and u_fail < self.behaviour.failure_rate

    def _fail_if_drawn(self, u_fail: float) -> None:
        if self.fails(u_fail):
            raise SimulatedFailure(f"{self.agent_id} failed (failure_rate={self.behaviour.failure_rate})")

    def handle(self, ctx: CallContext, payload: Any) -> Any:
        """Fail at the group's rate, else answer; a call that must wait or call onward goes async."""
        u_fail, u_latency, u_onward, u_target = self.draws(ctx)
        behaviour = self.behaviour
        if behaviour is None:
            return None
        delay_s = behaviour.latency.seconds(u_latency)
        onward = behaviour.onward if behaviour.onward is not None and u_onward < behaviour.onward.probability else None
        if delay_s > 0 or onward is not None:
            return self._wait_then_answer(ctx, payload, delay_s, u_fail, onward, u_target)
        self._fail_if_drawn(u_fail)
        return None

    async def _wait_then_answer(self, ctx: CallContext, payload: Any, delay_s: float, u_fail: float,
                                onward: Optional[OnwardTarget], u_target: float) -> Any:
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        self._fail_if_drawn(u_fail)
        if onward is None:
            return None
        return await self._pay_onward(ctx, payload, onward, u_target)

    async def call_onward(self, ctx: CallContext, payload: Any) -> Any:
        """Call the next stage of this group's pipeline (if its draw says so) and pay for it; its value.

        Raises :class:`OnwardCallFailed` when that call did not succeed.
        """
        onward = self.behaviour.onward if self.behaviour is not None else None
        _, _, u_onward, u_target = self.draws(ctx)
        if onward is None or u_onward >= onward.probability:
            return None
        return await self._pay_onward(ctx, payload, onward, u_target)

    @staticmethod
    async def _pay_onward(ctx: CallContext, payload: Any, onward: OnwardTarget, u_target: float) -> Any:
        result = await ctx.acall(onward.pick(u_target), payload)
        if not result.ok:
            raise OnwardCallFailed(f"{result.task_id} to {result.record.target_agent}: {result.status.value} ({result.error})")
        return result.value


def group_class(group: AgentGroup, behaviour: SimBehaviour, base: Optional[type] = None) -> type:
    """The agent class of one group: its price and behaviour on ``base`` (:class:`SimAgent` or a subclass)."""
    base = SimAgent if base is None else base
    if not (isinstance(base, type) and issubclass(base, SimAgent)):
        raise TypeError(f"the agent class of group {group.name!r} must subclass mesh.SimAgent, got {base!r}")
    attributes = {"price_usd": str(group.price_usd), "behaviour": behaviour, "__module__": base.__module__}
    return type(f"{base.__name__}_{group.name}", (base,), attributes)


@lru_cache(maxsize=64)
def power_law_cdf(count: int, alpha: float) -> np.ndarray:
    """The cumulative distribution of a power law over ``count`` ranks: rank k weighs 1 / (k + 1) ** alpha."""
    weights = 1.0 / np.arange(1, count + 1, dtype=np.float64) ** alpha
    cdf = np.cumsum(weights)
    return cdf / cdf[-1]


def power_law_pick(count: int, alpha: float, u: float) -> int:
    """The rank at quantile ``u`` of :func:`power_law_cdf` (0 is the biggest hub)."""
    return min(int(np.searchsorted(power_law_cdf(count, alpha), u, side="right")), count - 1)


def pick_many(count: int, pattern: Pattern, alpha: float, u: np.ndarray) -> np.ndarray:
    """:meth:`OnwardTarget.pick` for an array of quantiles, as indices (the simulation's driver)."""
    if pattern == "uniform":
        return np.minimum((u * count).astype(np.int64), count - 1)
    return np.minimum(np.searchsorted(power_law_cdf(count, alpha), u, side="right"), count - 1)
