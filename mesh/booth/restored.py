"""What a booth or a mesh brought back from a ledger it reopened, and the one line that says so.

A booth (``restore_from_ledger=True``, the default) or a mesh whose ``out_dir`` already holds a
ledger replays it first: balances, open escrows, today's caps used and every task id come back.
That is never silent: the booth and the mesh log a warning (logger ``tollmesh``) and keep
what they restored in ``.restored``.

>>> info = restore_info("/tmp/run/toll_ledger.jsonl", 12, {"balances_micros": {"a": 5_000_000},
...     "used_today_micros": {"a": 1_000_000, "b": 20_000}, "open_escrows": {"t1": {}}})
>>> print(restore_message(info))
restored 12 event(s) from /tmp/run/toll_ledger.jsonl: 2 agent(s), balances $5.000000 in all, 1 open escrow(s), $1.020000 of today's caps already used (a fresh ledger_path or out_dir starts empty)
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from mesh.core.money import format_usd

logger = logging.getLogger("tollmesh")


def restore_info(path: Path | str, events: int, snapshot: dict[str, Any]) -> dict[str, Any]:
    """A summary of what a replay of ``events`` events from ``path`` rebuilt (``snapshot``: see :func:`ledger.replay.snapshot`)."""
    balances = snapshot.get("balances_micros", {})
    used = snapshot.get("used_today_micros", {})
    agents = set(balances) | set(used) | set(snapshot.get("locked_micros", {}))
    return {
        "from": str(path), "events": events, "agents": len(agents),
        "balances_total_micros": sum(balances.values()), "open_escrows": len(snapshot.get("open_escrows", {})),
        "used_today_micros": sum(used.values()),
    }


def restore_message(info: dict[str, Any]) -> str:
    """One line: what was restored, from where."""
    return (f"restored {info['events']:,} event(s) from {info['from']}: {info['agents']:,} agent(s), "
            f"balances ${format_usd(info['balances_total_micros'])} in all, {info['open_escrows']:,} open escrow(s), "
            f"${format_usd(info['used_today_micros'])} of today's caps already used "
            "(a fresh ledger_path or out_dir starts empty)")


def announce(info: dict[str, Any], who: str) -> None:
    """Log :func:`restore_message` as a warning, so that a restore is never silent."""
    logger.warning("%s: %s", who, restore_message(info))
