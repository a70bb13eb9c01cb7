"""The Ray actors of the mesh; they share the pure core in :mod:`mesh` and the ledger in :mod:`ledger`.

- :class:`BudgetShard`: the escrow book of the agents hashed to it (batched lock, settle, expire);
- :class:`EscrowCoordinator`: drives every call's lifecycle, a batch at a time;
- :class:`AgentHost`: many light agents in one actor, or one heavy agent;
- :class:`LedgerWriterActor`: group commit to JSONL, and its :class:`ParquetSink`.
"""

from actors.agent_host import AgentHost
from actors.budget_shard import BudgetShard
from actors.coordinator import EscrowCoordinator
from actors.ledger_writer import LedgerWriterActor, ParquetSink

__all__ = ["AgentHost", "BudgetShard", "EscrowCoordinator", "LedgerWriterActor", "ParquetSink"]
