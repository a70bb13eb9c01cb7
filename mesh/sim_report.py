"""A simulation's report: what happened (from the ledger), how fast, how much memory, and the checks.

The totals come from the ledger itself (its Parquet dataset, else its JSONL), then
are checked against the mesh's live counters and state: the ledger verifies, a replay
of it rebuilds the live balances, locks and caps used, money is conserved, and the
ledger's totals equal the counters. ``report.json`` and PNG plots go in the run directory.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from ledger.reader import read_table
from ledger.replay import reconcile
from ledger.report import REPORT_COLUMNS
from ledger.report import build_report as build_ledger_report
from ledger.report import calls_text
from ledger.verify import verify
from actors.memory import open_escrow_bytes, rss_bytes
from mesh.core.money import format_usd
from mesh.scenario import Scenario

_REPLAYED_KEYS = ("balances_micros", "locked_total_micros", "deposits_total_micros", "open_escrows", "used_today_micros")


@dataclass
class RunLog:
    """What the driver saw while the run went on (the ledger holds the rest)."""

    started_s: float
    setup_s: float = 0.0
    run_s: float = 0.0
    messages_sent: int = 0
    interrupted: bool = False
    first_tick: int = 0  # the tick the driver started from (a resumed run played the ticks before before)
    resumed: bool = False
    ticks: list[dict[str, Any]] = field(default_factory=list)
    outcomes: Counter = field(default_factory=Counter)  # the driver's calls, by status and reason
    last_stats: dict[str, Any] = field(default_factory=lambda: {"locked": 0, "released": 0, "refunded": 0, "rejected": 0})
    live: dict[str, Any] = field(default_factory=dict)
    machine_cpu_s: float = 0.0  # CPU the machine spent while the run played (every process, every core)
    x402: Optional[dict[str, Any]] = None  # what signing and verifying x402 payments cost (paying groups only)

    def record_tick(self, tick: int, messages: int, wall_s: float, outcomes: Counter, stats: dict[str, Any]) -> None:
        """One tick done: its size, its wall time, how its calls ended, and the mesh's counters after it."""
        self.outcomes.update(outcomes)
        before = self.last_stats
        self.ticks.append({
            "tick": tick, "messages": messages, "wall_s": round(wall_s, 6),
            **{k: stats[k] - before[k] for k in ("locked", "released", "refunded", "rejected")},
        })
        self.last_stats = stats


def build_report(scenario: Scenario, run_dir: Path, log: RunLog, *, plots: bool = True) -> dict[str, Any]:
    """The run's report (see the module doc); saved as ``run_dir/report.json``."""
    ledger_path = run_dir / "toll_ledger.jsonl"
    parquet_dir = run_dir / "parquet" if scenario.ledger_parquet else None
    table = read_table(parquet_dir or ledger_path, columns=REPORT_COLUMNS)  # the columnar copy reads faster
    ledger = build_ledger_report(table, top=10)
    stats = log.live["stats"]
    files: dict[str, Any] = {"ledger": str(ledger_path), "parquet": None if parquet_dir is None else str(parquet_dir),
                             "report": str(run_dir / "report.json")}
    caps = _cap_hits(table)
    if plots:
        files["plots"] = [str(p) for p in _plots(table, ledger, run_dir / "plots", log, scenario, run_dir)]
    del table  # verify streams the JSONL: the table need not stay in memory beside it...
    pa.default_memory_pool().release_unused()  # ...nor Arrow's pool keep its pages (1.4 GB at 2 million events)
    report: dict[str, Any] = {
        "run": _run(scenario, run_dir, log),
        "speed": _speed(log, stats),
        "outcomes": _outcomes(ledger, log),
        "caps": caps,
        "top_earners": ledger["top_earners"],
        "top_payers": ledger["top_payers"],
        "memory": _memory(log.live["memory"], scenario.agent_count, stats),
        "checks": _checks(ledger_path, ledger, stats, log.live, scenario.tracks_balances),
        "x402": _x402(log),
        "files": files,
        "scenario": scenario.model_dump(mode="json"),
        "ticks": log.ticks,
    }
    (run_dir / "report.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    return report


def _x402(log: RunLog) -> Optional[dict[str, Any]]:
    """Signing (in the driver) and verifying (in the coordinator) x402 payments: counts, CPU seconds, and their
    share of the run: of its wall time (as a fraction of one core) and of all the CPU the machine spent meanwhile."""
    if log.x402 is None:
        return None
    verified = log.x402.get("verified") or {}
    sign_s, verify_s = log.x402["sign_cpu_s"], verified.get("cpu_s", 0.0)
    run_s, machine_s = max(log.run_s, 1e-9), log.machine_cpu_s

    def share(cpu_s: float) -> Optional[float]:
        return round(cpu_s / machine_s, 4) if machine_s > 0 else None

    return {
        "groups": log.x402["groups"], "pay_to": log.x402["pay_to"], "network": log.x402["network"],
        "signed": log.x402["signed"], "verified": verified.get("checked", 0), "verify_backend": verified.get("backend"),
        "sign_cpu_s": round(sign_s, 4), "verify_cpu_s": round(verify_s, 4), "machine_cpu_s": round(machine_s, 3),
        "sign_share_of_machine_cpu": share(sign_s), "verify_share_of_machine_cpu": share(verify_s),
        "sign_cores_of_wall": round(sign_s / run_s, 4), "verify_cores_of_wall": round(verify_s / run_s, 4),
    }


def _run(scenario: Scenario, run_dir: Path, log: RunLog) -> dict[str, Any]:
    return {
        "scenario": scenario.name, "seed": scenario.seed, "run_dir": str(run_dir), "interrupted": log.interrupted,
        "messages_planned": scenario.messages, "messages_sent": log.messages_sent,
        "ticks": log.first_tick + len(log.ticks), "ticks_planned": scenario.ticks, "simulated_days": scenario.days,
        "simulated_days_run": round(scenario.days * (log.first_tick + len(log.ticks)) / scenario.ticks, 6),
        "agents": scenario.agent_count, "resumed_from_tick": log.first_tick if log.resumed else None,
    }


def _speed(log: RunLog, stats: dict[str, Any]) -> dict[str, Any]:
    run_s = max(log.run_s, 1e-9)
    sizes = np.array([t["messages"] for t in log.ticks], dtype=np.float64)
    walls = np.array([t["wall_s"] for t in log.ticks], dtype=np.float64)
    return {
        "setup_s": round(log.setup_s, 3), "run_s": round(log.run_s, 3),
        "messages_per_s": round(log.messages_sent / run_s, 1),
        "calls_per_s": round((stats["locked"] + stats["rejected"]) / run_s, 1),  # every call, pipelines' included
        "events_written": stats["events_written"],
        # A message waits for its tick's batch: its round trip is the batch's, weighted by the batch's size.
        "round_trip_ms_p50": _weighted_percentile_ms(walls, sizes, 50),
        "round_trip_ms_p99": _weighted_percentile_ms(walls, sizes, 99),
    }


def _weighted_percentile_ms(values_s: np.ndarray, weights: np.ndarray, q: float) -> Optional[float]:
    if values_s.size == 0:
        return None
    order = np.argsort(values_s)
    cumulative = np.cumsum(weights[order])
    at = np.searchsorted(cumulative, cumulative[-1] * q / 100.0)
    return round(float(values_s[order][min(at, values_s.size - 1)]) * 1e3, 3)


def _outcomes(ledger: dict[str, Any], log: RunLog) -> dict[str, Any]:
    return {
        # every call (pipelines' onward calls included), as `ledger report` counts them: one per task id
        "calls": ledger["calls"], "locked_calls": ledger["locked_calls"], "rejected_calls": ledger["rejected_calls"],
        "by_status": ledger["by_status"],
        "by_reason": ledger["by_reason"],
        "released_micros": ledger["spend_micros"], "released_usd": ledger["spend_usd"],
        "refunded_micros": ledger["refunded_micros"], "refunded_usd": format_usd(ledger["refunded_micros"]),
        "deposits_micros": ledger["deposits_micros"],
        "refund_rate": ledger["refund_rate"],
        "driver_calls": dict(sorted(log.outcomes.items())),  # the calls the driver made (pipelines' onward calls aside)
    }


def _cap_hits(table: pa.Table) -> dict[str, Any]:
    capped = table.filter(pc.and_(pc.equal(table.column("kind").cast(pa.string()), "reject"),
                                  pc.equal(table.column("reason").cast(pa.string()), "over_daily_cap")))
    per_agent = Counter(capped.column("source_agent").cast(pa.string()).to_pylist())
    return {"rejections": capped.num_rows, "agents_capped": len(per_agent),
            "most_capped": [{"agent": a, "rejections": n} for a, n in per_agent.most_common(5)]}


def _memory(memory: dict[str, Any], agents: int, stats: dict[str, Any]) -> dict[str, Any]:
    hosts, shards = memory["hosts"], memory["shards"]
    agents_bytes = sum(h["agents_rss_bytes"] for h in hosts)
    per_escrow = open_escrow_bytes(10_000)
    by_role = {
        "driver": rss_bytes(), "coordinator": memory["coordinator"]["rss_bytes"],
        "shards": sum(s["rss_bytes"] for s in shards), "hosts": sum(h["rss_bytes"] for h in hosts),
        "ledger_writer": memory["writer"]["rss_bytes"], "parquet_sink": memory["writer"]["parquet_sink_rss_bytes"] or 0,
    }
    return {
        "rss_bytes_by_role": by_role, "rss_bytes_total": sum(by_role.values()),
        "processes": 4 + len(hosts) + len(shards),
        "host_bytes_per_agent": round(agents_bytes / agents) if agents else None,
        "shard_bytes_per_open_escrow": per_escrow,
        "open_escrows_at_end": stats["open_escrows"],
        "how": "RSS of each process (psutil); per agent: what building the agents grew their hosts by; "
               "per open escrow: heap of the shards' escrow core per lock (tracemalloc, 10,000 locks)",
    }


def _checks(ledger_path: Path, ledger: dict[str, Any], stats: dict[str, Any], end: dict[str, Any],
            balances: bool) -> dict[str, Any]:
    """Verify the ledger, replay it against the live state at the end (``end["snapshot"]`` taken at
    ``end["now_us"]``), check conservation, and the ledger's totals against the live counters."""
    verified = verify(ledger_path, state_at_us=end["now_us"])  # one pass: checks, and the replayed state
    live, replayed = end["snapshot"], verified.state
    if replayed is None:
        differences = ["the ledger could not be replayed (see the problems verify found)"]
    else:
        differences = reconcile({k: replayed[k] for k in _REPLAYED_KEYS}, {k: live[k] for k in _REPLAYED_KEYS})
    counters = {
        "released_micros": (ledger["spend_micros"], stats["released_micros"]),
        "refunded_micros": (ledger["refunded_micros"], stats["refunded_micros"]),
        "locks": (ledger["locked_calls"], stats["locked"]),
        "rejections": (ledger["by_kind"].get("reject", 0), stats["rejected"]),
    }
    mismatched = {k: {"ledger": a, "live": b} for k, (a, b) in counters.items() if a != b}
    conserved = sum(live["balances_micros"].values()) + live["locked_total_micros"] == live["deposits_total_micros"]
    return {
        "ledger_verifies": verified.ok, "replay_matches_live": not differences,
        "conservation_holds": conserved if balances else None, "ledger_matches_counters": not mismatched,
        "problems": [str(p) for p in verified.problems[:10]] + differences[:10]
                    + [f"{k}: ledger {v['ledger']}, live {v['live']}" for k, v in mismatched.items()],
    }


def checks_pass(report: dict[str, Any]) -> bool:
    checks = report["checks"]
    return all(checks[k] is not False for k in ("ledger_verifies", "replay_matches_live", "conservation_holds",
                                                "ledger_matches_counters"))


def run_about(scenario: Scenario, run_dir: Path) -> str:
    """What a run's charts show, in one line: ``run default-seed7: scenario 'default', seed 7, 3 simulated days``."""
    return (f"run {run_dir.name}: scenario {scenario.name!r}, seed {scenario.seed}, {scenario.days:g} simulated "
            f"day{'s' * (scenario.days != 1)}, {scenario.agent_count:,} agents")


def tick_s(scenario: Scenario) -> float:
    """How far each tick moves the run's clock, in seconds (as :class:`~mesh.simulate.Simulation` moves it)."""
    return round(scenario.days * 86_400 / scenario.ticks * 1_000_000) / 1_000_000


def _plots(table: pa.Table, ledger: dict[str, Any], out_dir: Path, log: RunLog, scenario: Scenario,
           run_dir: Path) -> list[Path]:
    from ledger.plot import plot_table

    about = run_about(scenario, run_dir)
    charts = plot_table(table, ledger, out_dir, about=about, tick_s=tick_s(scenario), start_s=scenario.start_s,
                        end_s=scenario.start_s + scenario.days * 86_400,
                        time_label="simulated time (UTC)")
    return charts + [_plot_ticks(out_dir / "run_ticks.png", log, scenario, about)]


def _plot_ticks(path: Path, log: RunLog, scenario: Scenario, about: str) -> Path:
    import datetime as dt

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ledger.plot import day_axis

    step_s = tick_s(scenario)
    start = dt.datetime.fromtimestamp(scenario.start_s, tz=dt.timezone.utc)
    at = [start + dt.timedelta(seconds=t["tick"] * step_s) for t in log.ticks]
    fig, (rate, mix) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True)
    rate.plot(at, [t["messages"] / max(t["wall_s"], 1e-9) for t in log.ticks], color="tab:blue", marker=".", markersize=3)
    rate.set_ylabel("messages/s (wall clock)")
    rate.set_title(f"The run, tick by tick ({scenario.ticks:,} ticks of {_duration(step_s)} simulated time)")
    for key, color in (("released", "tab:green"), ("refunded", "tab:orange"), ("rejected", "tab:red")):
        mix.plot(at, [t[key] for t in log.ticks], label=key, color=color, marker=".", markersize=3)
    mix.set_ylabel("calls per tick")
    mix.legend(loc="upper center", fontsize=8, ncols=3)
    if at:
        end = start + dt.timedelta(seconds=(log.ticks[-1]["tick"] + 1) * step_s)
        day_axis(rate, start, end, label="")
        day_axis(mix, start, end, label="simulated time (UTC); one point per tick", day_labels=False)
        rate.set_ylim(0, rate.get_ylim()[1] * 1.12)  # room for the day labels
        mix.set_ylim(0, mix.get_ylim()[1] * 1.3)  # and for the legend
    fig.suptitle(about, fontsize=10, color="0.25")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _duration(seconds: float) -> str:
    for unit_s, unit in ((86_400, "day"), (3_600, "h"), (60, "min")):
        if seconds >= unit_s:
            return f"{seconds / unit_s:.3g} {unit}"
    return f"{seconds:.3g} s"


def _n(count: Optional[int]) -> str:
    return "n/a" if count is None else f"{count:,}"


def _x402_lines(x402: Optional[dict[str, Any]]) -> list[str]:
    if not x402:
        return []

    def pct(share: Optional[float]) -> str:
        return "n/a" if share is None else f"{share:.1%}"

    return [f"x402:         groups {', '.join(x402['groups'])}: {x402['signed']:,} payments signed "
            f"({x402['sign_cpu_s']:.2f} s CPU, {pct(x402['sign_share_of_machine_cpu'])} of the run's CPU), "
            f"{x402['verified']:,} verified ({x402['verify_cpu_s']:.2f} s CPU, {pct(x402['verify_share_of_machine_cpu'])}; "
            f"{x402['verify_backend']})"]


def format_report(report: dict[str, Any]) -> str:
    """The report as text for a terminal."""
    run, speed, out, caps, mem, checks = (report[k] for k in ("run", "speed", "outcomes", "caps", "memory", "checks"))
    mb = 1 / 1e6

    def usd(micros: int) -> str:
        return "$" + format_usd(micros, grouped=True)

    lines = [
        f"run:          {run['scenario']} seed {run['seed']}: {run['messages_sent']:,} of {run['messages_planned']:,} messages"
        f" over {run['simulated_days_run']:g} simulated day(s), {run['agents']:,} agents{'  (INTERRUPTED)' if run['interrupted'] else ''}",
        f"speed:        {speed['messages_per_s']:,.0f} messages/s, {speed['calls_per_s']:,.0f} calls/s with pipelines"
        f" ({speed['run_s']} s, setup {speed['setup_s']} s); round trip p50 {speed['round_trip_ms_p50']} ms,"
        f" p99 {speed['round_trip_ms_p99']} ms",
        f"calls:        {calls_text(out)}",
        "by status:    " + ", ".join(f"{s} {v['tasks']:,} ({usd(v['amount_micros'])})" for s, v in out["by_status"].items()),
        "by reason:    " + (", ".join(f"{r} {n:,}" for r, n in out["by_reason"].items()) or "-"),
        f"money:        released {usd(out['released_micros'])}, refunded {usd(out['refunded_micros'])}"
        f" (refund rate {out['refund_rate']:.2%} of locked calls)",
        f"cap hits:     {caps['rejections']:,} rejections, {caps['agents_capped']:,} agents capped",
        "top earners:  " + ", ".join(f"{r['agent']} {usd(r['earned_micros'])}" for r in report["top_earners"][:5]),
        "top payers:   " + ", ".join(f"{r['agent']} {usd(r['paid_micros'])}" for r in report["top_payers"][:5]),
        f"memory:       {mem['rss_bytes_total'] * mb:,.0f} MB in {mem['processes']} processes; "
        f"{_n(mem['host_bytes_per_agent'])} B per agent, {_n(mem['shard_bytes_per_open_escrow'])} B per open escrow",
        *_x402_lines(report.get("x402")),
        "checks:       " + ", ".join(f"{k} {'yes' if v else ('n/a' if v is None else 'NO')}" for k, v in checks.items() if k != "problems"),
        f"output:       {report['files']['report']}",
    ]
    lines += [f"PROBLEM:      {p}" for p in checks["problems"]]
    return "\n".join(lines)
