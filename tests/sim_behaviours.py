"""A custom simulated agent, in a module Ray's workers can import (the tests put this folder on their path)."""

from __future__ import annotations

from mesh.sim_agents import SimAgent, SimulatedFailure


class HalfAuditor(SimAgent):
    """Fails about half of its calls (by its reproducible draw), else calls onward as its group says."""

    async def handle(self, ctx, payload):
        u_fail, _, _, _ = self.draws(ctx)
        if u_fail < 0.5:
            raise SimulatedFailure("audit rejected")
        return await self.call_onward(ctx, payload)
