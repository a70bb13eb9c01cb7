"""``ledger plot``: PNG charts of a ledger: spend over time, top payers and earners, status and reason mix.

>>> import tempfile, pathlib
>>> from mesh import Tollbooth, TollboothConfig
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> with Tollbooth(TollboothConfig(paper_mode=False, ledger_path=root / "l.jsonl")) as booth:
...     _ = booth.charge_sync("t1", "alice", "bob"), booth.release_sync("t1")
>>> sorted(p.name for p in plot(root / "l.jsonl", root / "plots"))
['spend_over_time.png', 'status_reason_mix.png', 'top_payers_earners.png']
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ledger.reader import read_table
from ledger.report import build_report, summable
from mesh.errors import LedgerError
from mesh.money import MICROS_PER_USD

_BUCKETS = (("1h", 3_600), ("1d", 86_400))


def plot(source: Path | str, out_dir: Path | str, *, top: int = 10) -> list[Path]:
    """Draw the charts of ``source`` (JSONL ledger or Parquet dataset) into ``out_dir``; return their paths."""
    table = read_table(source)
    return plot_table(table, build_report(table, top=top), out_dir)


def plot_table(table: pa.Table, report: dict, out_dir: Path | str) -> list[Path]:
    """:func:`plot` for a ledger already read (``table``) and its :func:`~ledger.report.build_report`."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no screen
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise LedgerError(f"cannot draw plots into {out_dir}: it, or a folder above it, is a file") from None
    paths = [
        _spend_over_time(plt, table, out_dir / "spend_over_time.png"),
        _top_agents(plt, report, out_dir / "top_payers_earners.png"),
        _mix(plt, report, out_dir / "status_reason_mix.png"),
    ]
    return paths


def _spend_over_time(plt, table: pa.Table, path: Path) -> Path:
    released = table.filter(pc.is_in(table.column("kind").cast(pa.string()), pa.array(["release", "paper_release"])))
    fig, ax = plt.subplots(figsize=(9, 4))
    if released.num_rows:
        seconds = released.column("ts").cast(pa.int64()).to_numpy() // 1_000_000
        span_s = int(seconds.max() - seconds.min())
        label, bucket_s = _BUCKETS[0] if span_s <= 3 * 86_400 else _BUCKETS[1]
        keys, micros = spend_by_bucket(seconds, released.column("amount_micros"), bucket_s)
        totals = [m / MICROS_PER_USD for m in micros]  # exact sums; floats only to draw them
        times = pa.array(keys, pa.timestamp("s", tz="UTC")).to_pylist()
        ax.bar(times, totals, width=bucket_s / 86_400 * 0.9, align="edge")
        ax.set_title(f"Released tolls per {label} (USD)")
    else:
        ax.set_title("No released tolls")
    ax.set_ylabel("USD")
    fig.autofmt_xdate()
    return _save(plt, fig, path)


def spend_by_bucket(seconds: np.ndarray, amounts: pa.ChunkedArray, bucket_s: int) -> tuple[list[int], list[int]]:
    """The buckets' start times (s) and the exact micros released in each, in time order."""
    by_bucket = pa.table({"bucket": pa.array((seconds // bucket_s) * bucket_s), "micros": summable(amounts)})
    rows = sorted(by_bucket.group_by("bucket").aggregate([("micros", "sum")]).to_pylist(), key=lambda r: r["bucket"])
    return [r["bucket"] for r in rows], [int(r["micros_sum"]) for r in rows]


def _top_agents(plt, report: dict, path: Path) -> Path:
    fig, (payers, earners) = plt.subplots(1, 2, figsize=(11, 4))
    for ax, rows, key, title in (
        (payers, report["top_payers"], "paid_micros", "Top payers (USD)"),
        (earners, report["top_earners"], "earned_micros", "Top earners (USD)"),
    ):
        ax.barh([r["agent"] for r in rows][::-1], [r[key] / MICROS_PER_USD for r in rows][::-1])
        ax.set_title(title)
    return _save(plt, fig, path)


def _mix(plt, report: dict, path: Path) -> Path:
    fig, (statuses, reasons) = plt.subplots(1, 2, figsize=(11, 4))
    by_status = report["by_status"]
    statuses.bar(list(by_status), [v["tasks"] for v in by_status.values()])
    statuses.set_title("Final status of tolls")
    reasons.bar(list(report["by_reason"]) or ["none"], list(report["by_reason"].values()) or [0])
    reasons.set_title("Reasons (rejections, refunds, pending)")
    for ax in (statuses, reasons):
        ax.tick_params(axis="x", rotation=30)
    return _save(plt, fig, path)


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
