"""The Ray actors of the mesh.

Today: the ledger writer (:class:`LedgerWriterActor`, group commit to JSONL, and its
:class:`ParquetSink` in a process of its own). The budget shards, the escrow
coordinator and the agent hosts come next; they share the pure core in :mod:`mesh`
and the ledger in :mod:`ledger`.
"""

from actors.ledger_writer import LedgerWriterActor, ParquetSink

__all__ = ["LedgerWriterActor", "ParquetSink"]
