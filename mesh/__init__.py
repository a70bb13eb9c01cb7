"""tollmesh: agents that pay each other per call, through escrow.

The public API, including the seed-compatible one of nano-empire-tollbooth 0.3.0
(switch with one import line: ``from mesh import Tollbooth, monetize, ...``).

>>> import asyncio, tempfile, pathlib
>>> from mesh import Tollbooth, TollboothConfig
>>> booth = Tollbooth(TollboothConfig(paper_mode=False,
...     ledger_path=pathlib.Path(tempfile.mkdtemp()) / "toll_ledger.jsonl"))
>>> asyncio.run(booth.charge("t1", "alice", "bob")).status.value
'escrow_locked'

The distributed mesh (:class:`Mesh`, :class:`MeshTollbooth`) and the simulation (:class:`Simulation`)
are imported on first use, so ``import mesh`` stays light for in-process users.
"""

from typing import Any

from mesh.agent import Agent, CallContext, CallResult, Message
from mesh.call_columns import CallColumns
from mesh.clock import Clock, ManualClock, SystemClock
from mesh.config import TollboothConfig, TollboothMode
from mesh.errors import (
    CallFailedError,
    ConfigError,
    InvalidAmountError,
    InvalidArgumentError,
    InvalidTypeError,
    LedgerError,
    PaymentRequiredError,
    RayUnavailableError,
    TollmeshError,
    TollRejectedError,
)
from mesh.mesh_config import MeshConfig
from mesh.money import MAX_AMOUNT_MICROS, format_usd, usd_to_micros
from mesh.monetize import RAILS, get_usage, monetize, reset_usage
from mesh.records import Reason, SettlementStatus, TollRecord
from mesh.scenario import Scenario, builtin_scenarios, load_scenario
from mesh.settlement import SettlementResult, settle
from mesh.tollbooth import Tollbooth, create_tollbooth, get_tollbooth, reset_tollbooth

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


_LAZY = {
    "Mesh": "mesh.mesh", "MeshTollbooth": "mesh.mesh_booth", "Simulation": "mesh.simulate",
    "run_simulation": "mesh.simulate", "SimAgent": "mesh.sim_agents", "SimulatedFailure": "mesh.sim_agents",
}


def __getattr__(name: str) -> Any:
    """Import the Ray-backed parts (the mesh, the simulation) on first use."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mesh' has no attribute {name!r}")
