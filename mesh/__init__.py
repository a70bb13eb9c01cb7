"""tollmesh: agents that pay each other per call, through escrow.

The public API, including the seed-compatible one of nano-empire-tollbooth 0.3.0
(switch with one import line: ``from mesh import Tollbooth, monetize, ...``).

>>> import asyncio, tempfile, pathlib
>>> from mesh import Tollbooth, TollboothConfig
>>> booth = Tollbooth(TollboothConfig(paper_mode=False,
...     ledger_path=pathlib.Path(tempfile.mkdtemp()) / "toll_ledger.jsonl"))
>>> asyncio.run(booth.charge("t1", "alice", "bob")).status.value
'escrow_locked'

Every name is imported on first use (PEP 562), so ``import mesh`` stays light for in-process users
and a low floor (``mesh.core``, imported by ``ledger``) imports without the floors above it:

- ``mesh.core``: money, clock, records, budget, escrow, errors, ids, sharding (imports nothing of ours);
- ``ledger`` (its own package): events, formats, readers, replay, verify, reports;
- ``mesh.booth``: the in-process booth (Tollbooth, config, monetize, settle, x402 verifier interface);
- ``mesh.columnar``: the shard book as arrays; ``mesh.calls``: agents, messages, results, columns of calls;
- ``actors`` (its own package): shards, coordinator, hosts, writers;
- ``mesh`` itself, ``mesh.x402``, ``mesh.cluster``: the mesh API, simulation, gateway and CLI on top.
"""

import importlib
from typing import Any

__version__ = "0.1.0"

__all__ = [
    "MAX_AMOUNT_MICROS",
    "RAILS",
    "Agent",
    "CallContext",
    "CallFailedError",
    "CallColumns",
    "CallResult",
    "Clock",
    "ConfigError",
    "InvalidAmountError",
    "InvalidArgumentError",
    "InvalidTypeError",
    "LedgerError",
    "ManualClock",
    "Mesh",
    "MeshConfig",
    "MeshTollbooth",
    "Message",
    "PaymentRequiredError",
    "RayUnavailableError",
    "Reason",
    "Scenario",
    "SettlementResult",
    "SettlementStatus",
    "SimAgent",
    "SimulatedFailure",
    "Simulation",
    "SystemClock",
    "TollRecord",
    "TollRejectedError",
    "Tollbooth",
    "TollboothConfig",
    "TollboothMode",
    "TollmeshError",
    "builtin_scenarios",
    "create_tollbooth",
    "format_usd",
    "get_tollbooth",
    "get_usage",
    "load_scenario",
    "monetize",
    "reset_tollbooth",
    "reset_usage",
    "run_simulation",
    "settle",
    "usd_to_micros",
]


#: Where each public name lives.
_LAZY = {
    "Agent": "mesh.calls.agent",
    "CallColumns": "mesh.calls.columns",
    "CallContext": "mesh.calls.agent",
    "CallFailedError": "mesh.core.errors",
    "CallResult": "mesh.calls.agent",
    "Clock": "mesh.core.clock",
    "ConfigError": "mesh.core.errors",
    "InvalidAmountError": "mesh.core.errors",
    "InvalidArgumentError": "mesh.core.errors",
    "InvalidTypeError": "mesh.core.errors",
    "LedgerError": "mesh.core.errors",
    "MAX_AMOUNT_MICROS": "mesh.core.money",
    "ManualClock": "mesh.core.clock",
    "Mesh": "mesh.mesh",
    "MeshConfig": "mesh.calls.mesh_config",
    "MeshTollbooth": "mesh.mesh_booth",
    "Message": "mesh.calls.agent",
    "PaymentRequiredError": "mesh.core.errors",
    "RAILS": "mesh.booth.monetize",
    "RayUnavailableError": "mesh.core.errors",
    "Reason": "mesh.core.records",
    "Scenario": "mesh.scenario",
    "SettlementResult": "mesh.booth.settlement",
    "SettlementStatus": "mesh.core.records",
    "SimAgent": "mesh.sim_agents",
    "SimulatedFailure": "mesh.sim_agents",
    "Simulation": "mesh.simulate",
    "SystemClock": "mesh.core.clock",
    "TollRecord": "mesh.core.records",
    "TollRejectedError": "mesh.core.errors",
    "Tollbooth": "mesh.booth.tollbooth",
    "TollboothConfig": "mesh.booth.config",
    "TollboothMode": "mesh.booth.config",
    "TollmeshError": "mesh.core.errors",
    "builtin_scenarios": "mesh.scenario",
    "create_tollbooth": "mesh.booth.tollbooth",
    "format_usd": "mesh.core.money",
    "get_tollbooth": "mesh.booth.tollbooth",
    "get_usage": "mesh.booth.monetize",
    "load_scenario": "mesh.scenario",
    "monetize": "mesh.booth.monetize",
    "reset_tollbooth": "mesh.booth.tollbooth",
    "reset_usage": "mesh.booth.monetize",
    "run_simulation": "mesh.simulate",
    "settle": "mesh.booth.settlement",
    "usd_to_micros": "mesh.core.money",
}


def __getattr__(name: str) -> Any:
    """Import a public name (or a submodule, ``mesh.scenario``) on first use."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    try:
        return importlib.import_module(f"mesh.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"mesh.{name}":
            raise
        raise AttributeError(f"module 'mesh' has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
