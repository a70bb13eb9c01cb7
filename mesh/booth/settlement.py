"""Batch netting: net released, not yet settled tolls into one settlement above a minimum.

The seed's ``tollbooth settle``: card rails cannot clear a cent, so released tolls
are netted into one batch once their sum reaches ``minimum_usd``. Paper mode
records the batch in ``<ledger stem>.settlements.jsonl`` beside the ledger; live
mode fails closed (tollmesh never moves real money by itself). Idempotent: a task
id in an earlier batch is never netted again, also when two settles race (a file
lock serialises them).

A tollmesh ledger is verified first (:func:`ledger.verify.verified`): on any problem
(a changed, forged, dropped or reordered line, a release of a toll never locked, a
broken chain...) settle raises :class:`~ledger.verify.LedgerVerifyError` and writes
nothing; it then nets only the events it verified. A ledger in the seed's own format
(nano-empire-tollbooth's lines: no schema version, no seq, no chain) has nothing to
verify it by, and is read as the seed reads it; a file with any tollmesh event is
verified whole (seed lines among its events are problems).

>>> import tempfile, pathlib
>>> ledger = pathlib.Path(tempfile.mkdtemp()) / "toll_ledger.jsonl"
>>> _ = ledger.write_text('{"task_id": "t1", "status": "released", "amount_micros": 600000}\\n')
>>> settle(ledger).net_micros, settle(ledger).reason
(600000, 'nothing to settle')
"""

from __future__ import annotations

import fcntl
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import orjson

from ledger.files import settlements_path
from ledger.partitions import families, ledger_name
from ledger.verify import VerifyResult, verified, verified_events
from mesh.core.errors import InvalidTypeError
from mesh.core.money import UsdLike, format_usd, micros_to_usd, usd_to_micros

DEFAULT_MINIMUM_USD = "0.50"


@dataclass(frozen=True)
class SettlementResult:
    """The outcome of one :func:`settle`: ``settled`` or a ``reason`` why not."""

    settled: bool
    net_micros: int
    call_count: int
    batch_id: str = ""
    mode: str = "paper"
    reason: str = ""
    task_ids: tuple[str, ...] = field(default_factory=tuple)
    settlements_path: Optional[Path] = None

    @property
    def net_usd(self) -> float:
        """The net as a float of USD (display only)."""
        return micros_to_usd(self.net_micros)


def settle(ledger_path: Path | str, *, paper: bool = True, minimum_usd: UsdLike = DEFAULT_MINIMUM_USD,
           exclude_task_ids: Optional[set[str]] = None) -> SettlementResult:
    """Net every released, not yet settled toll of the ledger into one batch (see the module doc).

    ``ledger_path`` names a JSONL ledger (its first file, or its directory); all its files are read
    (of a partitioned one, every partition's: the batches are kept beside its manifest).
    ``exclude_task_ids``: tolls settled otherwise (by their own x402 payments, :mod:`mesh.x402.settle`).
    """
    if not isinstance(paper, bool):
        raise InvalidTypeError("paper", paper, "a bool")
    minimum_micros = usd_to_micros(minimum_usd, field="minimum_usd")
    ledger_path = ledger_name(ledger_path)
    files = [path for family in families(ledger_path) for path in family]
    checked = None if _seed_format(files) else verified(ledger_path)  # before anything is written
    spath = settlements_path(ledger_path)
    with open(spath, "ab+") as settlements:
        fcntl.flock(settlements, fcntl.LOCK_EX)
        settlements.seek(0)
        done = {tid for batch in _json_lines(settlements.read()) for tid in batch.get("task_ids", ())}
        done |= exclude_task_ids or set()
        pending = _released_unsettled(ledger_path, files, done, checked)
        net_micros, count = sum(pending.values()), len(pending)
        if count == 0:
            return SettlementResult(False, 0, 0, reason="nothing to settle", settlements_path=spath)
        if net_micros < minimum_micros:
            reason = f"net ${format_usd(net_micros)} below minimum ${format_usd(minimum_micros)}"
            return SettlementResult(False, net_micros, count, reason=reason, settlements_path=spath)
        if not paper:
            return SettlementResult(
                False, net_micros, count, mode="live", settlements_path=spath,
                reason="live settlement needs the operator's own payment rail; tollmesh fails closed",
            )
        batch_id = f"settle-{uuid.uuid4().hex[:12]}"
        task_ids = tuple(sorted(pending))
        settlements.write(orjson.dumps(_batch_record(batch_id, net_micros, task_ids)) + b"\n")
        settlements.flush()
    return SettlementResult(True, net_micros, count, batch_id, "paper", "", task_ids, spath)


def _released_unsettled(ledger: Path, files: list[Path], done: set[str], checked: Optional[VerifyResult]) -> dict[str, int]:
    """Released tolls not in ``done``, by task id: of a tollmesh ledger, the events ``checked`` verified
    (events appended since are left for the next settle); of a seed ledger (None), every line."""
    pending: dict[str, int] = {}
    if checked is None:
        events: Iterator[dict[str, Any]] = (event for path in files for event in _json_lines(path.read_bytes()))
    else:
        events = verified_events(ledger, checked)
    for event in events:
        task_id = event.get("task_id")
        if event.get("status") != "released" or not task_id or task_id in done or task_id in pending:
            continue
        if "amount_micros" in event:
            pending[task_id] = event["amount_micros"]
        else:  # a seed ledger line
            pending[task_id] = usd_to_micros(event.get("amount_usd", 0), field=f"task_id={task_id}: amount_usd")
    return pending


def _seed_format(files: list[Path]) -> bool:
    """Whether the ledger is in the seed's own format: none of its lines carries a schema version (``v``).

    Read line by line: a tollmesh ledger's answer is its first line.
    """
    for path in files:
        with open(path, "rb") as f:
            if any("v" in value for value in _json_lines(f)):
                return False
    return True


def _batch_record(batch_id: str, net_micros: int, task_ids: tuple[str, ...]) -> dict[str, Any]:
    return {
        "batch_id": batch_id, "mode": "paper", "net_micros": net_micros,
        "net_usd": format_usd(net_micros), "call_count": len(task_ids), "task_ids": list(task_ids),
        "settled_at": datetime.now(timezone.utc).isoformat(),
        "note": "paper mode: simulated settlement, no real money moves",
    }


def _json_lines(data: bytes | Iterable[bytes]) -> Iterator[dict[str, Any]]:
    """Whole JSON objects of ``data`` (or of its lines); torn or foreign lines are skipped (verify reports them)."""
    for line in data.splitlines() if isinstance(data, bytes) else data:
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(value, dict):
            yield value
