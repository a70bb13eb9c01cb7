"""A seeded in-process economy on one :class:`Tollbooth`: the quick tour of the core.

Agents with balances and daily caps call each other at random for a price over
simulated days; some handlers fail and are refunded, some calls are left to expire.
The ledger (JSONL rotated by day, and its Parquet dataset) is then replayed and checked
against the live state, and verified.

>>> import tempfile, pathlib
>>> report = run_demo(pathlib.Path(tempfile.mkdtemp()), agents=5, messages=200, seed=1)
>>> report["replay_matches_live"], report["conservation_holds"], report["ledger_verifies"]
(True, True, True)
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

from ledger.replay import reconcile, replay_file, snapshot
from ledger.report import build_report, read_table
from ledger.verify import verify
from mesh.core.budget import BudgetBook
from mesh.core.clock import ManualClock
from mesh.booth.config import TollboothConfig
from mesh.core.errors import InvalidArgumentError
from mesh.core.escrow import EscrowBook
from mesh.core.money import format_usd, usd_to_micros
from mesh.core.records import SettlementStatus
from mesh.booth.tollbooth import Tollbooth

START_S = 1_767_225_600.0  # 2026-01-01T00:00:00Z: simulated time starts here
FAILURE_RATE = 0.1
ABANDON_RATE = 0.02  # calls whose caller never settles: the booth expires them


def run_demo(out_dir: Path, *, agents: int = 50, messages: int = 20_000, seed: int = 7, days: int = 2) -> dict[str, Any]:
    """Run the demo economy, writing ``toll_ledger.jsonl`` under ``out_dir``; return the report."""
    if not isinstance(agents, int) or agents < 2:
        raise InvalidArgumentError("agents", agents, "a demo economy needs at least 2 agents")
    if not isinstance(messages, int) or messages < 1:
        raise InvalidArgumentError("messages", messages, "must be at least 1")
    rng = random.Random(seed)
    clock = ManualClock(START_S)
    config = TollboothConfig(
        paper_mode=False, track_balances=True, max_daily_toll_per_agent="2.00",
        escrow_timeout_s=30.0, ledger_path=out_dir / "toll_ledger.jsonl", restore_from_ledger=False,
        ledger_parquet_dir=out_dir / "parquet", ledger_rotate_daily=True,
    )
    names = [f"agent-{i:04d}" for i in range(agents)]
    prices = {name: f"0.{rng.randint(1, 50):03d}" for name in names}
    outcomes: Counter[str] = Counter()
    with Tollbooth(config, clock=clock) as booth:
        for name in names:
            booth.deposit(name, "5.00")
        step_s = days * 86_400 / messages
        for n in range(messages):
            clock.advance(step_s)
            source, target = rng.sample(names, 2)
            record = booth.charge_sync(f"msg-{n}", source, target, amount_usd=prices[target])
            if record.status is not SettlementStatus.ESCROW_LOCKED:
                outcomes[f"rejected:{record.reason}"] += 1
                continue
            roll = rng.random()
            if roll < ABANDON_RATE:
                outcomes["abandoned"] += 1
            elif roll < ABANDON_RATE + FAILURE_RATE:
                booth.refund_sync(record.task_id, "handler_error")
                outcomes["handler_failed"] += 1
            else:
                booth.release_sync(record.task_id)
                outcomes["delivered"] += 1
        clock.advance(config.escrow_timeout_s + 1)
        booth.expire_stale()
        live = booth.snapshot()
        stats = booth.get_stats()
    return _report(config, clock, live, stats, outcomes, names)


def _report(config: TollboothConfig, clock: ManualClock, live: dict, stats: dict, outcomes: Counter, names: list[str]) -> dict[str, Any]:
    replayed = EscrowBook(
        BudgetBook(default_cap_micros=config.max_daily_toll_micros, track_balances=True),
        escrow_timeout_s=config.escrow_timeout_s,
    )
    replay_file(replayed, config.ledger_path)
    differences = reconcile(snapshot(replayed, round(clock.now_s() * 1_000_000)), live)
    balances = live["balances_micros"]
    deposits = live["deposits_total_micros"]
    ledger = build_report(read_table(config.ledger_path), top=3)  # paid and earned as `ledger report` counts them
    return {
        "ledger": str(config.ledger_path),
        "messages": sum(outcomes.values()),
        "outcomes": dict(sorted(outcomes.items())),
        "stats": stats,
        "released_usd": format_usd(stats["released_micros"]),
        "refunded_usd": format_usd(stats["refunded_micros"]),
        # released tolls, summed by target (earned) and by source (paid): amounts of 0 or more
        "top_earners": [(r["agent"], format_usd(r["earned_micros"])) for r in ledger["top_earners"]],
        "top_payers": [(r["agent"], format_usd(r["paid_micros"])) for r in ledger["top_payers"]],
        "conservation_holds": sum(balances.values()) + live["locked_total_micros"] == deposits,
        "replay_matches_live": not differences,
        "replay_differences": differences[:10],
        "ledger_verifies": verify(config.ledger_path).ok,
        "parquet_dir": str(config.ledger_parquet_dir),
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as text for a terminal."""
    stats = report["stats"]
    by_reason = ", ".join(f"{r} {n:,}" for r, n in sorted(stats["rejected_by_reason"].items())) or "-"
    lines = [
        f"ledger:            {report['ledger']}",
        f"messages:          {report['messages']:,}",
        f"locked:            {stats['escrow_locked']:,}",
        f"released:          {stats['escrow_released']:,}  (${_grouped(report['released_usd'])})",
        f"refunded:          {stats['escrow_refunded']:,}  (${_grouped(report['refunded_usd'])}, {stats['escrow_expired']:,} by timeout)",
        f"rejected:          {stats['rejected']:,}  ({by_reason})",
        "top earners:       " + ", ".join(f"{n} ${_grouped(v)}" for n, v in report["top_earners"]),
        "top payers:        " + ", ".join(f"{n} ${_grouped(v)}" for n, v in report["top_payers"]),
        f"conservation:      {'holds' if report['conservation_holds'] else 'BROKEN'}",
        f"replay == live:    {'yes' if report['replay_matches_live'] else 'NO'}",
        f"ledger verify:     {'OK' if report['ledger_verifies'] else 'PROBLEMS'}  (Parquet: {report['parquet_dir']})",
    ]
    return "\n".join(lines)


def _grouped(usd: str) -> str:
    """A :func:`~mesh.core.money.format_usd` string with thousands separators, for the terminal."""
    return format_usd(usd_to_micros(usd), grouped=True)
