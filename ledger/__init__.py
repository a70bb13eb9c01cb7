"""The ledger: one event per state change in JSONL (a seal per batch, or a hash per line), a Parquet dataset, and tools.

>>> from ledger import EventKind
>>> EventKind.LOCK.value
'lock'
"""

from ledger.events import record_event
from ledger.export import compact, export
from ledger.files import segments
from ledger.jsonl import FsyncPolicy, JsonlWriter
from ledger.parquet import ParquetLedgerWriter, jsonl_to_table
from ledger.reader import LedgerRead, read_batches, read_events, read_table
from ledger.replay import apply_event, reconcile, replay_events, replay_file, replay_partitions, replay_shard, snapshot
from ledger.report import build_report
from ledger.schema import ARROW_SCHEMA, SCHEMA_VERSION, EventKind, LedgerEvent
from ledger.verify import VerifyResult, verify
from ledger.writer import LedgerWriter

__all__ = [
    "ARROW_SCHEMA",
    "SCHEMA_VERSION",
    "EventKind",
    "FsyncPolicy",
    "JsonlWriter",
    "LedgerEvent",
    "LedgerRead",
    "LedgerWriter",
    "ParquetLedgerWriter",
    "VerifyResult",
    "apply_event",
    "build_report",
    "compact",
    "export",
    "jsonl_to_table",
    "read_batches",
    "read_events",
    "read_table",
    "reconcile",
    "record_event",
    "replay_events",
    "replay_file",
    "replay_partitions",
    "replay_shard",
    "segments",
    "snapshot",
    "verify",
]
