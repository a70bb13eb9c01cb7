"""The ledger: one event per state change, appended to JSONL; readers and replay.

>>> from ledger import EventKind
>>> EventKind.LOCK.value
'lock'
"""

import mesh  # noqa: F401  (mesh first: its Tollbooth imports ledger modules, which import mesh's core)
from ledger.events import record_event
from ledger.schema import ARROW_SCHEMA, SCHEMA_VERSION, EventKind, LedgerEvent
from ledger.jsonl import FsyncPolicy, JsonlWriter
from ledger.reader import LedgerRead, read_events
from ledger.replay import apply_event, replay_events, replay_file, snapshot

__all__ = [
    "SCHEMA_VERSION",
    "EventKind",
    "FsyncPolicy",
    "JsonlWriter",
    "LedgerRead",
    "apply_event",
    "read_events",
    "record_event",
    "replay_events",
    "replay_file",
    "snapshot",
]
