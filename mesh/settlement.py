"""Batch netting: net released, not yet settled tolls into one settlement above a minimum.

The seed's ``tollbooth settle``: card rails cannot clear a cent, so released tolls
are netted into one batch once their sum reaches ``minimum_usd``. Paper mode
records the batch in ``<ledger stem>.settlements.jsonl`` beside the ledger; live
mode fails closed (tollmesh never moves real money by itself). Idempotent: a task
id in an earlier batch is never netted again, also when two settles race (a file
lock serialises them).

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
from typing import Any, Iterator, Optional

import orjson

from ledger.files import segments, settlements_path
from mesh.errors import InvalidTypeError
from mesh.money import UsdLike, format_usd, micros_to_usd, usd_to_micros

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


def settle(ledger_path: Path | str, *, paper: bool = True, minimum_usd: UsdLike = DEFAULT_MINIMUM_USD) -> SettlementResult:
    """Net every released, not yet settled toll of the ledger into one batch (see the module doc).

    ``ledger_path`` names a JSONL ledger (its first file, or its directory); all its files are read.
    """
    if not isinstance(paper, bool):
        raise InvalidTypeError("paper", paper, "a bool")
    minimum_micros = usd_to_micros(minimum_usd, field="minimum_usd")
    files = segments(ledger_path)
    spath = settlements_path(ledger_path)
    with open(spath, "ab+") as settlements:
        fcntl.flock(settlements, fcntl.LOCK_EX)
        settlements.seek(0)
        done = {tid for batch in _json_lines(settlements.read()) for tid in batch.get("task_ids", ())}
        pending = _released_unsettled(files, done)
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


def _released_unsettled(files: list[Path], done: set[str]) -> dict[str, int]:
    pending: dict[str, int] = {}
    for path in files:
        for event in _json_lines(path.read_bytes()):
            task_id = event.get("task_id")
            if event.get("status") != "released" or not task_id or task_id in done or task_id in pending:
                continue
            if "amount_micros" in event:
                pending[task_id] = event["amount_micros"]
            else:  # a seed ledger line
                pending[task_id] = usd_to_micros(event.get("amount_usd", 0), field=f"{path}: task_id={task_id}: amount_usd")
    return pending


def _batch_record(batch_id: str, net_micros: int, task_ids: tuple[str, ...]) -> dict[str, Any]:
    return {
        "batch_id": batch_id, "mode": "paper", "net_micros": net_micros,
        "net_usd": format_usd(net_micros), "call_count": len(task_ids), "task_ids": list(task_ids),
        "settled_at": datetime.now(timezone.utc).isoformat(),
        "note": "paper mode: simulated settlement, no real money moves",
    }


def _json_lines(data: bytes) -> Iterator[dict[str, Any]]:
    """Whole JSON objects of ``data``; torn or foreign lines are skipped (verify reports them)."""
    for line in data.splitlines():
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(value, dict):
            yield value
