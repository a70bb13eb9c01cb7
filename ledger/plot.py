"""``ledger plot``: PNG charts of a ledger: spend over time, top payers and earners, status and reason mix.

Every chart names what it shows (``about``: the run, its scenario and seed, or the ledger's
path). Spend is summed per time bin that holds a whole number of the run's ticks when the
tick is known (a simulation passes it), else per a round span (a minute up to a week); the
time axis marks each day. Counts are drawn on a log scale with their values on the bars, so
73 failed calls stay visible beside 122,000 released.

>>> import tempfile, pathlib
>>> from mesh import Tollbooth, TollboothConfig
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> with Tollbooth(TollboothConfig(paper_mode=False, ledger_path=root / "l.jsonl")) as booth:
...     _ = booth.charge_sync("t1", "alice", "bob"), booth.release_sync("t1")
>>> sorted(p.name for p in plot(root / "l.jsonl", root / "plots"))
['spend_over_time.png', 'status_reason_mix.png', 'top_payers_earners.png']
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ledger.reader import read_table
from ledger.report import build_report, summable
from mesh.core.errors import LedgerError
from mesh.core.money import MICROS_PER_USD, format_usd

#: Round bin widths for a ledger whose tick is not known (a booth's, in real time): the first that gives
#: at most MAX_BARS bars is used.
_ROUND_BINS_S = (60, 300, 900, 3_600, 3 * 3_600, 6 * 3_600, 12 * 3_600, 86_400, 7 * 86_400)
MAX_BARS = 240
_STATUS_COLOURS = {"released": "tab:green", "refunded": "tab:orange", "failed": "tab:red",
                   "escrow_locked": "tab:blue", "pending": "tab:gray"}


def plot(source: Path | str, out_dir: Path | str, *, top: int = 10, about: Optional[str] = None,
         tick_s: Optional[float] = None, start_s: Optional[float] = None, end_s: Optional[float] = None,
         time_label: str = "time (UTC)") -> list[Path]:
    """Draw the charts of ``source`` (JSONL ledger or Parquet dataset) into ``out_dir``; return their paths.

    ``about`` heads every chart (default: the ledger's path); ``tick_s``, ``start_s`` and ``end_s`` are a
    simulation's tick, start and end, so that spend is binned by whole ticks and the time axis spans the
    run; ``time_label`` names the time axis.
    """
    table = read_table(source)
    return plot_table(table, build_report(table, top=top), out_dir, about=about or f"ledger {source}",
                      tick_s=tick_s, start_s=start_s, end_s=end_s, time_label=time_label)


def plot_table(table: pa.Table, report: dict, out_dir: Path | str, *, about: str = "",
               tick_s: Optional[float] = None, start_s: Optional[float] = None, end_s: Optional[float] = None,
               time_label: str = "time (UTC)") -> list[Path]:
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
        _spend_over_time(plt, table, out_dir / "spend_over_time.png", about, tick_s, start_s, end_s, time_label),
        _top_agents(plt, report, out_dir / "top_payers_earners.png", about),
        _mix(plt, report, out_dir / "status_reason_mix.png", about),
    ]
    return paths


def _spend_over_time(plt, table: pa.Table, path: Path, about: str, tick_s: Optional[float], start_s: Optional[float],
                     end_s: Optional[float], time_label: str) -> Path:
    released = table.filter(pc.is_in(table.column("kind").cast(pa.string()), pa.array(["release", "paper_release"])))
    fig, ax = plt.subplots(figsize=(10, 4.5))
    if released.num_rows:
        micros_ts = released.column("ts").cast(pa.int64()).to_numpy()
        first_s = start_s if start_s is not None else float(micros_ts.min() // 1_000_000)
        last_s = max(pc.max(table.column("ts").cast(pa.int64())).as_py() / 1e6, end_s or 0.0)  # the whole ledger, or run
        bin_s, label = spend_bin(last_s - first_s, tick_s)
        origin_s = first_s if tick_s else first_s // bin_s * bin_s  # round bins start on the clock's round times
        keys, micros = spend_by_bin(micros_ts, released.column("amount_micros"), round(bin_s * 1e6), round(origin_s * 1e6))
        totals = [m / MICROS_PER_USD for m in micros]  # exact sums; floats only to draw them
        starts = [_utc(origin_s + k * bin_s) for k in keys]
        gap = 0.85 if len(keys) <= 120 else 1.0  # a gap between bars while they are wide enough to show it
        ax.bar(starts, totals, width=bin_s / 86_400 * gap, align="edge", color="tab:green", linewidth=0)
        ax.set_ylim(0, max(totals) * 1.15)  # room for the day labels
        ax.set_title(f"Released tolls per {label} (USD)")
        bins = max(max(keys) + 1, math.ceil((last_s - origin_s) / bin_s - 1e-9))
        day_axis(ax, _utc(origin_s), _utc(origin_s + bins * bin_s), label=time_label)
    else:
        ax.set_title("No released tolls")
    ax.set_ylabel("USD released")
    return _save(plt, fig, path, about)


def spend_bin(span_s: float, tick_s: Optional[float]) -> tuple[float, str]:
    """The width of a spend bar (s) and its name: whole ticks when the tick is known, else a round span;
    at most :data:`MAX_BARS` bars over ``span_s``.

    >>> spend_bin(3 * 86_400, 1_296.0)   # 200 ticks of 21.6 min over 3 days: one bar a tick
    (1296.0, 'tick (21.6 min)')
    >>> spend_bin(3 * 86_400, 60.0)      # 4,320 ticks: 18 ticks a bar
    (1080.0, '18 ticks (18 min)')
    >>> spend_bin(3 * 86_400, None)
    (3600, 'hour')
    """
    if tick_s:
        ticks = max(1, math.ceil(span_s / tick_s / MAX_BARS - 1e-9))
        width = ticks * tick_s
        return width, (f"tick ({_span_text(width)})" if ticks == 1 else f"{ticks} ticks ({_span_text(width)})")
    for width in _ROUND_BINS_S:
        if span_s / width <= MAX_BARS:
            return width, _span_text(width, round_name=True)
    return _ROUND_BINS_S[-1], "week"


def _span_text(seconds: float, *, round_name: bool = False) -> str:
    names = {60: "minute", 300: "5 minutes", 900: "15 minutes", 3_600: "hour", 86_400: "day", 7 * 86_400: "week"}
    if round_name and seconds in names:
        return names[seconds]
    for unit_s, unit in ((86_400, "day"), (3_600, "h"), (60, "min")):
        if seconds >= unit_s:
            return f"{seconds / unit_s:g} {unit}" + ("s" if unit == "day" and seconds != unit_s else "")
    return f"{seconds:g} s"


def spend_by_bucket(seconds: np.ndarray, amounts: pa.ChunkedArray, bucket_s: int) -> tuple[list[int], list[int]]:
    """The buckets' start times (whole seconds, buckets from the epoch) and the exact micros released in each."""
    keys, micros = spend_by_bin(np.asarray(seconds, dtype=np.int64) * 1_000_000, amounts, bucket_s * 1_000_000, 0)
    return [k * bucket_s for k in keys], micros


def spend_by_bin(ts_us: np.ndarray, amounts: pa.ChunkedArray, bin_us: int, origin_us: int) -> tuple[list[int], list[int]]:
    """The bins' numbers (bin 0 starts at ``origin_us``) and the exact micros released in each, in time order;
    integer arithmetic throughout, so an event at a tick's start lands in that tick's bin."""
    by_bin = pa.table({"bin": pa.array((ts_us - origin_us) // bin_us), "micros": summable(amounts)})
    rows = sorted(by_bin.group_by("bin").aggregate([("micros", "sum")]).to_pylist(), key=lambda r: r["bin"])
    return [r["bin"] for r in rows], [int(r["micros_sum"]) for r in rows]


def day_axis(ax, start: dt.datetime, end: dt.datetime, *, label: str = "time (UTC)", day_labels: bool = True) -> None:
    """A time axis from ``start`` to ``end`` (UTC) that marks each day: a line at each midnight, "day N"
    beside it (N counted from ``start``'s day; leave room at the top of the axes), the dates below."""
    import matplotlib.dates as mdates

    ax.set_xlim(start, end)
    days = max(1, math.ceil((end - start).total_seconds() / 86_400))
    every = max(1, math.ceil(days / 14))  # at most 14 day labels
    ax.xaxis.set_major_locator(mdates.DayLocator(interval=every))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d" if days > 1 else "%Y-%m-%d %H:%M"))
    if days <= 7:
        ax.xaxis.set_minor_locator(mdates.HourLocator(byhour=range(0, 24, 6)))
    if days == 1:
        ax.xaxis.set_major_locator(mdates.HourLocator(byhour=range(0, 24, 3)))
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
    first = dt.datetime.combine(start.date(), dt.time(), tzinfo=dt.timezone.utc)
    for n in range(0, days + 1, every):
        midnight = first + dt.timedelta(days=n)
        if start < midnight < end:
            ax.axvline(midnight, color="0.25", linewidth=0.9, linestyle="--", zorder=3)
        shown = min(end, midnight + dt.timedelta(days=1)) - max(start, midnight)
        if day_labels and (n == 0 or shown >= (end - start) * 0.06):  # a day too little seen is not labelled
            ax.text(max(midnight, start), 0.97, f" day {n + 1}", transform=ax.get_xaxis_transform(), va="top",
                    ha="left", fontsize=8, color="0.2", zorder=4,
                    bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1})
    ax.set_xlabel(label)


def usd_label(micros: int) -> str:
    """An exact amount, as short as it can be: at least cents, no trailing zeros past them.

    >>> usd_label(2_095_000), usd_label(400_000), usd_label(1_234_567_890)
    ('$2.095', '$0.40', '$1,234.56789')
    """
    whole, frac = format_usd(micros, grouped=True).split(".")
    return f"${whole}.{frac.rstrip('0').ljust(2, '0')}"


def _utc(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, tz=dt.timezone.utc)


def _top_agents(plt, report: dict, path: Path, about: str) -> Path:
    fig, (payers, earners) = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, rows, key, title, xlabel in (
        (payers, report["top_payers"], "paid_micros", "Top payers", "USD paid (released tolls, as caller)"),
        (earners, report["top_earners"], "earned_micros", "Top earners", "USD earned (released tolls, as target)"),
    ):
        values = [r[key] / MICROS_PER_USD for r in rows][::-1]  # floats only to draw them
        bars = ax.barh([r["agent"] for r in rows][::-1], values, color="tab:blue")
        ax.bar_label(bars, labels=[usd_label(r[key]) for r in rows][::-1], padding=2, fontsize=8)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.margins(x=0.18)
    return _save(plt, fig, path, about)


def _mix(plt, report: dict, path: Path, about: str) -> Path:
    fig, (statuses, reasons) = plt.subplots(1, 2, figsize=(11, 4.5))
    by_status = report["by_status"]
    _count_bars(statuses, {s: v["tasks"] for s, v in by_status.items()}, "Final status of calls",
                [_STATUS_COLOURS.get(s, "tab:blue") for s in by_status])
    _count_bars(reasons, report["by_reason"], "Reasons (rejections, refunds, pending)", ["tab:purple"] * len(report["by_reason"]))
    return _save(plt, fig, path, about)


def _count_bars(ax, counts: dict[str, int], title: str, colours: list[str]) -> None:
    """Bars of ``counts`` on a log scale, each labelled with its count (a small one stays visible)."""
    ax.set_title(title)
    if not counts:
        ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes, color="0.4")
        ax.set_xticks([])
        ax.set_yticks([])
        return
    bars = ax.bar(list(counts), list(counts.values()), color=colours)
    ax.set_yscale("log")
    ax.set_ylim(0.8, max(counts.values()) * 4)
    ax.bar_label(bars, labels=[f"{n:,}" for n in counts.values()], padding=2, fontsize=9)
    ax.set_ylabel("calls (log scale)")
    ax.tick_params(axis="x", rotation=20)


def _save(plt, fig, path: Path, about: str = "") -> Path:
    if about:
        fig.suptitle(about, fontsize=10, color="0.25")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
