"""``ledger report``: what happened in a ledger, by status, reason, agent and edge.

Works on the Arrow table of any source (JSONL or the Parquet dataset, see
:func:`ledger.reader.read_table`). Amounts are exact micros, with USD strings beside.
Sums are exact at any size: Arrow's int64 sum wraps past 2^63 - 1 without a word
(10,000 calls of $1e9 printed ``spend: $-8446744073709.551616``), so a column whose
sum could pass it is summed as decimal128(38, 0) (see :func:`exact_sum`).

>>> import tempfile, pathlib
>>> from mesh import Tollbooth, TollboothConfig
>>> path = pathlib.Path(tempfile.mkdtemp()) / "toll_ledger.jsonl"
>>> with Tollbooth(TollboothConfig(paper_mode=False, ledger_path=path)) as booth:
...     _ = booth.charge_sync("t1", "alice", "bob"), booth.release_sync("t1")
>>> report = build_report(read_table(path))
>>> report["calls"], report["spend_usd"], report["by_status"]["released"]["tasks"]
(1, '0.001000', 1)

``calls`` counts every call (task id) the ledger records, whatever became of it: those
locked (or paid at once in paper mode), those rejected before a lock, those left waiting
for payment; it is the sum of ``by_status`` and what ``tollmesh simulate`` calls its calls.
``locked_calls`` are the first kind only (the base of ``refund_rate``).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ledger.reader import read_table
from mesh.core.money import format_usd

__all__ = ["REPORT_COLUMNS", "build_report", "calls_text", "exact_sum", "format_report", "read_table", "summable"]

#: The columns :func:`build_report` (and the plots drawn from it) read: ``read_table(source, columns=REPORT_COLUMNS)``.
REPORT_COLUMNS = ["ts", "kind", "task_id", "source_agent", "target_agent", "amount_micros", "status", "reason"]

_TOLL_KINDS = ["lock", "paper_release", "release", "refund", "expire", "reject", "pending"]

_INT64_MAX = 2**63 - 1
#: Wide enough for the sum of any table of int64 values that fits a machine: |x| < 2^63, and
#: fewer than 10^19 rows keep the sum under 10^38 (Arrow's decimal sums wrap there too).
_WIDE = pa.decimal128(38, 0)


def build_report(table: pa.Table, *, top: int = 10) -> dict[str, Any]:
    """Totals, final statuses, reasons, top payers, earners and edges of the ledger ``table``."""
    kind = table.column("kind").cast(pa.string())
    amount = table.column("amount_micros")

    def total(kinds: list[str]) -> int:
        return exact_sum(pc.filter(amount, pc.is_in(kind, pa.array(kinds))))

    def count(kinds: list[str]) -> int:
        return pc.sum(pc.is_in(kind, pa.array(kinds))).as_py() or 0

    released = pc.is_in(kind, pa.array(["release", "paper_release"]))
    locks, refunds = count(["lock", "paper_release"]), count(["refund", "expire"])
    spend = total(["release", "paper_release"])
    report: dict[str, Any] = {
        "events": table.num_rows,
        "first_ts": _iso(pc.min(table.column("ts"))),
        "last_ts": _iso(pc.max(table.column("ts"))),
        "calls": 0,  # set below: every call, one per task id (see the module doc)
        "locked_calls": locks,
        "rejected_calls": 0,
        "pending_calls": 0,
        "spend_micros": spend,
        "spend_usd": format_usd(spend),
        "refunded_micros": total(["refund", "expire"]),
        "deposits_micros": total(["deposit"]),
        "refund_rate": round(refunds / locks, 6) if locks else 0.0,
        "by_kind": _counts(kind),
        "by_status": _final_statuses(table, kind),
        "by_reason": _counts(pc.filter(table.column("reason").cast(pa.string()), pc.is_in(kind, pa.array(["reject", "refund", "expire", "pending"])))),
    }
    statuses = report["by_status"]
    report["calls"] = sum(v["tasks"] for v in statuses.values())
    report["rejected_calls"] = statuses.get("failed", {}).get("tasks", 0)
    report["pending_calls"] = statuses.get("pending", {}).get("tasks", 0)
    paid = _sum_by(table.filter(released), ["source_agent"], top)
    earned = _sum_by(table.filter(released), ["target_agent"], top)
    report["top_payers"] = [{"agent": r["source_agent"], "calls": r["calls"], "paid_micros": r["micros"]} for r in paid]
    report["top_earners"] = [{"agent": r["target_agent"], "calls": r["calls"], "earned_micros": r["micros"]} for r in earned]
    report["top_edges"] = [
        {"source": r["source_agent"], "target": r["target_agent"], "calls": r["calls"], "released_micros": r["micros"]}
        for r in _sum_by(table.filter(released), ["source_agent", "target_agent"], top)
    ]
    return report


def format_report(report: dict[str, Any]) -> str:
    """The report as text for a terminal."""
    usd = _usd_text
    lines = [
        f"events:        {report['events']:,}  ({report['first_ts']} -> {report['last_ts']})",
        f"calls:         {calls_text(report)}",
        f"spend:         {usd(report['spend_micros'])}",
        f"refunded:      {usd(report['refunded_micros'])}  (refund rate {report['refund_rate']:.2%} of locked calls)",
        f"deposits:      {usd(report['deposits_micros'])}",
        "by status:     " + ", ".join(f"{s} {v['tasks']:,} ({usd(v['amount_micros'])})" for s, v in report["by_status"].items()),
        "by reason:     " + (", ".join(f"{r} {n:,}" for r, n in report["by_reason"].items()) or "-"),
        "top payers:    " + ", ".join(f"{r['agent']} {usd(r['paid_micros'])}" for r in report["top_payers"][:5]),
        "top earners:   " + ", ".join(f"{r['agent']} {usd(r['earned_micros'])}" for r in report["top_earners"][:5]),
        "top edges:     " + ", ".join(f"{r['source']}->{r['target']} {r['calls']:,}" for r in report["top_edges"][:5]),
    ]
    return "\n".join(lines)


def calls_text(counts: dict[str, Any]) -> str:
    """``126,070 (125,997 locked, 73 rejected before a lock)``: every call, and what became of it.

    >>> calls_text({"calls": 3, "locked_calls": 2, "rejected_calls": 1, "pending_calls": 0})
    '3 (2 locked, 1 rejected before a lock)'
    """
    parts = [f"{counts['locked_calls']:,} locked", f"{counts['rejected_calls']:,} rejected before a lock"]
    if counts.get("pending_calls"):
        parts.append(f"{counts['pending_calls']:,} waiting for payment")
    return f"{counts['calls']:,} ({', '.join(parts)})"


def _usd_text(micros: int) -> str:
    return "$" + format_usd(micros, grouped=True)


def _final_statuses(table: pa.Table, kind: pa.ChunkedArray) -> dict[str, dict[str, int]]:
    tolls = table.filter(pc.is_in(kind, pa.array(_TOLL_KINDS))).select(["task_id", "status", "amount_micros"])
    tolls = tolls.set_column(1, "status", tolls.column("status").cast(pa.string()))
    final = tolls.group_by("task_id", use_threads=False).aggregate([("status", "last"), ("amount_micros", "last")])
    final = final.set_column(2, "amount_micros_last", summable(final.column("amount_micros_last")))
    by_status = final.group_by("status_last").aggregate([("task_id", "count"), ("amount_micros_last", "sum")])
    return {
        row["status_last"]: {"tasks": row["task_id_count"], "amount_micros": int(row["amount_micros_last_sum"])}
        for row in sorted(by_status.to_pylist(), key=lambda r: r["status_last"])
    }


def _sum_by(table: pa.Table, keys: list[str], top: int) -> list[dict[str, Any]]:
    if table.num_rows == 0:
        return []
    columns = {k: table.column(k).cast(pa.string()) for k in keys}
    columns["amount_micros"] = summable(table.column("amount_micros"))
    grouped = pa.table(columns).group_by(keys).aggregate([("amount_micros", "sum"), ("amount_micros", "count")])
    rows = [
        {**{k: r[k] for k in keys}, "micros": int(r["amount_micros_sum"]), "calls": r["amount_micros_count"]}
        for r in grouped.to_pylist()
    ]
    rows.sort(key=lambda r: (-r["micros"], -r["calls"], tuple(r[k] for k in keys)))
    return rows[:top]


def exact_sum(values: pa.Array | pa.ChunkedArray) -> int:
    """The exact sum of int64 ``values`` as a Python int (0 for none), whatever their size.

    >>> exact_sum(pa.array([2**62, 2**62, 2**62], pa.int64())) == 3 * 2**62
    True
    """
    total = pc.sum(summable(values)).as_py()
    return 0 if total is None else int(total)


def summable(values: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """``values`` as they may be summed (or summed by group) exactly: as they are when no sum of them can
    pass the int64 range (the common case, checked in one pass), else cast to decimal128(38, 0)."""
    if len(values) == 0:
        return values
    bounds = pc.min_max(values)
    largest = max(abs(bounds["min"].as_py() or 0), abs(bounds["max"].as_py() or 0))
    return values if largest * len(values) <= _INT64_MAX else values.cast(_WIDE)


def _counts(values: pa.ChunkedArray) -> dict[str, int]:
    values = values.drop_null()
    if len(values) == 0:
        return {}
    return dict(sorted((c["values"], c["counts"]) for c in pc.value_counts(values).to_pylist()))


def _iso(scalar: pa.Scalar) -> str | None:
    value = scalar.as_py()
    return None if value is None else value.isoformat()
