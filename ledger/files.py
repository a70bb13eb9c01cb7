"""Where a ledger's files live.

A JSONL ledger is a family of segment files: ``<stem>.jsonl`` first, then, once the
writer rotates (by size or by day), ``<stem>.000001.jsonl``, ``<stem>.000002.jsonl``...
in order. ``<stem>.settlements.jsonl`` beside them holds settlement batches (netting), and
``<stem>.payments.jsonl`` the settlements of calls paid with signed x402 payments.
A ledger can be named by its first file or by the directory holding it.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> for name in ["toll_ledger.jsonl", "toll_ledger.000002.jsonl", "toll_ledger.000001.jsonl",
...              "toll_ledger.settlements.jsonl"]:
...     _ = (d / name).write_text("")
>>> [p.name for p in segments(d)]
['toll_ledger.jsonl', 'toll_ledger.000001.jsonl', 'toll_ledger.000002.jsonl']
"""

from __future__ import annotations

import re
from pathlib import Path

from mesh.core.errors import LedgerError

_SEGMENT = re.compile(r"^(?P<stem>.+)\.(?P<n>\d{6})\.jsonl$")
SETTLEMENTS_SUFFIX = ".settlements.jsonl"
PAYMENTS_SUFFIX = ".payments.jsonl"
PARTITIONS_SUFFIX = ".partitions.json"  # the manifest of a ledger partitioned by shard (ledger.partitions)
_SIDE_FILES = (SETTLEMENTS_SUFFIX, PAYMENTS_SUFFIX)  # beside a ledger, not part of it


def first_segment(ledger: Path | str) -> Path:
    """The first JSONL file of the ledger named by ``ledger`` (a file, or a directory holding one ledger)."""
    ledger = Path(ledger)
    if ledger.is_dir():
        firsts = [
            p for p in sorted(ledger.glob("*.jsonl"))
            if not _SEGMENT.match(p.name) and not p.name.endswith(_SIDE_FILES)
        ]
        if len(firsts) != 1:
            found = ", ".join(p.name for p in firsts) or "none"
            raise LedgerError(f"{ledger}: expected one ledger (*.jsonl) in the directory, found: {found}")
        return firsts[0]
    return ledger


def segment_path(first: Path, number: int) -> Path:
    """The path of segment ``number`` (0 is the first file itself)."""
    return first if number == 0 else first.with_name(f"{first.stem}.{number:06d}.jsonl")


def segments(ledger: Path | str) -> list[Path]:
    """Every existing segment of the ledger, in order; raises LedgerError if there is none, or if
    the name is a partitioned ledger's (whose files are its partitions': :mod:`ledger.partitions`)."""
    first = first_segment(ledger)
    manifest = first.with_name(first.stem + PARTITIONS_SUFFIX)
    if manifest.exists():
        raise LedgerError(f"{first} is a ledger partitioned by shard ({manifest.name}): "
                          "its files are its partitions' (shard=K/), each a ledger of its own")
    numbered = []
    for path in first.parent.glob(f"{first.stem}.*.jsonl"):
        match = _SEGMENT.match(path.name)
        if match and match["stem"] == first.stem:
            numbered.append((int(match["n"]), path))
    found = ([first] if first.exists() else []) + [p for _, p in sorted(numbered)]
    if not found:
        raise LedgerError(f"ledger not found: {first}")
    return found


def settlements_path(ledger: Path | str) -> Path:
    first = first_segment(ledger)
    return first.with_name(first.stem + SETTLEMENTS_SUFFIX)


def payments_path(ledger: Path | str) -> Path:
    """Where the settlements of x402-paid calls are kept, beside the ledger."""
    first = first_segment(ledger)
    return first.with_name(first.stem + PAYMENTS_SUFFIX)
