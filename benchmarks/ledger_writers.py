"""Events per second and bytes per event of the ledger writers: JSONL, Parquet, both.

Feeds the same generated run (a realistic mix of lock, release, refund and reject
events over 1,000 agents) to each writer in batches of 100, 1,000 and 10,000 events:

* JSONL only (``JsonlWriter``, fsync ``never``; and fsync ``batch`` at the largest batch),
* Parquet only (``ParquetLedgerWriter`` fed the JSONL bytes of each batch, built beforehand;
  a row group per batch, foreground),
* both (``LedgerWriter``: JSONL, then the same bytes to Parquet, in this process),
* both through Ray (``actors.LedgerWriterActor``: group-committed JSONL in the actor, the
  Parquet conversion in a ``ParquetSink`` actor of its own; skip with ``--no-actors``),
* for reference, the seed's per-event append: nano-empire-tollbooth 0.3.0's live Tollbooth
  (one line per charge and per release), when installed (``pip install -e '.[bench]'``).

Each timed run writes into a fresh temporary directory, deleted afterwards, and includes
``close()`` (the Parquet files are only whole then). The writers number the event dicts
in place, so every batch gets a fresh copy, made with the clock stopped just before its
append: hot in the CPU cache, as a producer's new events are (copying the whole run first
left 100 MB of dicts to fetch from memory and made the same code look 3x slower).

    python -m benchmarks.ledger_writers [--events N] [--batch-sizes 100,1000,10000]
                                         [--repeats R] [--seed-lifecycles N] [--row-group-events N]
                                         [--tmp-dir DIR] [--out DIR]

Prints a table (medians of the repeats) and saves the figures as JSON under ``--out``
(default tollmesh-out/bench/).
"""

from __future__ import annotations

import argparse
import collections
import gc
import hashlib
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

import orjson

from ledger.events import record_event
from ledger.jsonl import JsonlWriter, encode_events
from ledger.parquet import DEFAULT_ROW_GROUP_EVENTS, ParquetLedgerWriter
from ledger.writer import LedgerWriter
from mesh.core.clock import iso_utc
from mesh.core.records import Reason, SettlementStatus, TollRecord
from benchmarks.seed import seed_installed, seed_lifecycles_elapsed_s

AIM_EVENTS_PER_S = 500_000
AIM_BATCH = 10_000
AIM = "aim: 500,000 events/s to both formats at batch 10,000 on 2 cores"

AGENTS = 1_000
START_TS_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
STEP_US_RANGE = (1_000, 5_000)  # events 1 to 5 ms apart
PRICES_MICROS = (1_000, 1_000, 1_000, 2_000, 5_000, 10_000, 25_000)  # $0.001 is the default toll
REJECT_SHARE = 0.04  # of new tasks: refused before locking (over the cap, no funds)
REFUND_SHARE = 0.08  # of settled escrows: refunded instead of released
PAID_SHARE = 0.10  # of tasks: carrying an x402 payment (payer wallet, tx signature)
MAX_OPEN_ESCROWS = 256  # tasks in flight between their lock and their settlement
BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"

Event = dict[str, Any]


# -- the generated run --------------------------------------------------------------


class RunGenerator:
    """A deterministic stream of ledger events, as a live booth would journal them."""

    def __init__(self, seed: int = 2026) -> None:
        self.rng = random.Random(seed)
        self.wallets = [self._base58(44) for _ in range(AGENTS)]
        self.ts_us = START_TS_US
        self.tasks_started = 0
        self.open_escrows: list[TollRecord] = []

    def events(self, count: int) -> list[Event]:
        return [self._next_event() for _ in range(count)]

    def _next_event(self) -> Event:
        self.ts_us += self.rng.randint(*STEP_US_RANGE)
        must_settle = len(self.open_escrows) >= MAX_OPEN_ESCROWS
        if self.open_escrows and (must_settle or self.rng.random() < 0.5):
            return self._settle(self._pop_random_escrow())
        return self._start_task()

    def _start_task(self) -> Event:
        record = self._new_record()
        if self.rng.random() < REJECT_SHARE:
            reason = self.rng.choice((Reason.OVER_DAILY_CAP, Reason.INSUFFICIENT_FUNDS)).value
            failed = record.moved_to(SettlementStatus.FAILED, reason=reason)
            return record_event("reject", failed, ts_us=self.ts_us, mode="live")
        locked = record.moved_to(SettlementStatus.ESCROW_LOCKED)
        self.open_escrows.append(locked)
        return record_event("lock", locked, ts_us=self.ts_us, mode="live")

    def _settle(self, locked: TollRecord) -> Event:
        settled_at = iso_utc(self.ts_us, "seconds")
        if self.rng.random() < REFUND_SHARE:
            reason = self.rng.choice((Reason.HANDLER_ERROR, Reason.REFUNDED_BY_CALLER)).value
            refunded = locked.moved_to(SettlementStatus.REFUNDED, settled_at=settled_at, reason=reason)
            return record_event("refund", refunded, ts_us=self.ts_us, mode="live")
        released = locked.moved_to(SettlementStatus.RELEASED, settled_at=settled_at)
        return record_event("release", released, ts_us=self.ts_us, mode="live")

    def _new_record(self) -> TollRecord:
        task_id = f"task-{self.tasks_started}"
        self.tasks_started += 1
        source = self.rng.randrange(AGENTS)
        target = (source + self.rng.randrange(1, AGENTS)) % AGENTS
        paid = self.rng.random() < PAID_SHARE
        return TollRecord(
            task_id=task_id, source_agent=f"agent-{source}", target_agent=f"agent-{target}",
            amount_micros=self.rng.choice(PRICES_MICROS), amount_tokens=0.0,
            tx_signature=self._base58(88) if paid else None,
            payer_wallet=self.wallets[source] if paid else None,
            nonce=hashlib.blake2b(task_id.encode(), digest_size=16).hexdigest(),  # 32 hex, as the booth
            created_at=iso_utc(self.ts_us, "seconds"),
        )

    def _pop_random_escrow(self) -> TollRecord:
        escrows = self.open_escrows
        i = self.rng.randrange(len(escrows))
        escrows[i], escrows[-1] = escrows[-1], escrows[i]
        return escrows.pop()

    def _base58(self, length: int) -> str:
        return "".join(self.rng.choices(BASE58, k=length))


def split(events: list[Event], batch_size: int) -> list[list[Event]]:
    """``events`` in batches (the originals: see :func:`fresh_batches`)."""
    return [events[i:i + batch_size] for i in range(0, len(events), batch_size)]


class Stopwatch:
    """Adds up the time between ``start`` and ``stop``."""

    def __init__(self) -> None:
        self.elapsed_s = 0.0
        self._started = 0.0

    def start(self) -> None:
        self._started = time.perf_counter()

    def stop(self) -> None:
        self.elapsed_s += time.perf_counter() - self._started


def fresh_batches(batches: list[list[Event]], watch: Stopwatch):
    """A fresh copy of each batch (the writers number the dicts in place), made with the watch
    stopped, just before its append: hot in the cache, as a producer's new events are."""
    for batch in batches:
        watch.stop()
        fresh = [dict(e) for e in batch]
        watch.start()
        yield fresh


def jsonl_blobs(events: list[Event], batch_size: int, scratch_dir: Path) -> list[tuple[bytes, int]]:
    """The JSONL bytes (and event count) of each batch, as the JSONL writer writes them."""
    writer = JsonlWriter(scratch_dir / "scratch.jsonl", fsync="never")
    blobs = [(writer.append([dict(e) for e in batch]), len(batch)) for batch in split(events, batch_size)]
    writer.close()
    return blobs


# -- one timed run of each writer --------------------------------------------------


class RunResult(NamedTuple):
    elapsed_s: float
    jsonl_bytes: int
    parquet_bytes: int


def run_jsonl(tmp: Path, batches: list[list[Event]], fsync: str) -> RunResult:
    path = tmp / "toll_ledger.jsonl"
    watch = Stopwatch()
    watch.start()
    writer = JsonlWriter(path, fsync=fsync)
    for batch in fresh_batches(batches, watch):
        writer.append(batch)
    writer.close()
    watch.stop()
    return RunResult(watch.elapsed_s, path.stat().st_size, 0)


def run_parquet(tmp: Path, blobs: list[tuple[bytes, int]], row_group_events: int) -> RunResult:
    started = time.perf_counter()
    writer = ParquetLedgerWriter(tmp / "parquet", row_group_events=row_group_events)
    for blob, events in blobs:
        writer.append_lines(blob, events)
    writer.close()
    elapsed_s = time.perf_counter() - started
    return RunResult(elapsed_s, 0, files_bytes(writer.files_written))


def run_both(tmp: Path, batches: list[list[Event]], row_group_events: int) -> RunResult:
    jsonl_path = tmp / "toll_ledger.jsonl"
    watch = Stopwatch()
    watch.start()
    writer = LedgerWriter(
        jsonl_path, parquet_dir=tmp / "parquet", fsync="never",
        row_group_events=row_group_events,
    )
    for batch in fresh_batches(batches, watch):
        writer.append(batch)
    writer.close()
    watch.stop()
    return RunResult(watch.elapsed_s, jsonl_path.stat().st_size, files_bytes(writer.parquet.files_written))


def run_both_actors(tmp: Path, batches: list[list[Event]], row_group_events: int) -> RunResult:
    """Both formats through the Ray ledger writer actor, its Parquet sink in another process.

    The actors are started (worker processes spawned) before the clock. The driver, as a
    coordinator would, encodes each batch (``encode_events``, timed) and keeps at most
    ``ACTOR_BATCHES_IN_FLIGHT`` appends outstanding.
    """
    import ray

    from actors import LedgerWriterActor

    jsonl_path = tmp / "toll_ledger.jsonl"
    writer = LedgerWriterActor.remote(
        str(jsonl_path), parquet_dir=str(tmp / "parquet"), fsync="never", row_group_events=row_group_events,
    )
    ray.get(writer.stats.remote())  # started
    watch = Stopwatch()
    watch.start()
    in_flight: collections.deque = collections.deque()
    for batch in fresh_batches(batches, watch):
        in_flight.append(writer.append_encoded.remote(encode_events(batch)))
        if len(in_flight) >= ACTOR_BATCHES_IN_FLIGHT:
            ray.get(in_flight.popleft())
    ray.get(list(in_flight))
    summary = ray.get(writer.close.remote())
    watch.stop()
    ray.kill(writer)
    return RunResult(watch.elapsed_s, jsonl_path.stat().st_size, files_bytes(Path(p) for p in summary["parquet_files"]))


def files_bytes(paths: list[Path]) -> int:
    return sum(p.stat().st_size for p in paths)


# -- the variants and their medians ------------------------------------------------


class Variant(NamedTuple):
    name: str
    needs: str  # "batches" (fresh dict copies) or "blobs" (pre-built JSONL bytes)
    run: Callable[[Path, Any, int], RunResult]


VARIANTS = {
    "jsonl": Variant("JSONL only (fsync never)", "batches", lambda t, b, _: run_jsonl(t, b, "never")),
    "jsonl_fsync_batch": Variant("JSONL only (fsync batch)", "batches", lambda t, b, _: run_jsonl(t, b, "batch")),
    "parquet": Variant("Parquet only", "blobs", run_parquet),
    "both": Variant("both, LedgerWriter", "batches", run_both),
    "both_actors": Variant("both, Ray LedgerWriterActor + sink", "batches", run_both_actors),
}
ACTOR_BATCHES_IN_FLIGHT = 4


def measure(key: str, events: list[Event], batch_size: int, args: argparse.Namespace) -> dict[str, Any]:
    variant = VARIANTS[key]
    row_group_events = args.row_group_events or batch_size
    results = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="bench-ledger-", dir=args.tmp_dir) as tmp:
            if variant.needs == "blobs":
                prepared = jsonl_blobs(events, batch_size, Path(tmp))
            else:
                prepared = split(events, batch_size)
            gc.collect()
            gc.freeze()  # the generated run is not the writer's garbage: keep the collector off it
            try:
                results.append(variant.run(Path(tmp), prepared, row_group_events))
            finally:
                gc.unfreeze()
            del prepared
    rates = [len(events) / r.elapsed_s for r in results]
    return {
        "variant": key,
        "name": variant.name,
        "batch_size": batch_size,
        "parquet_row_group_events": None if key.startswith("jsonl") else row_group_events,
        "events": len(events),
        "repeats": args.repeats,
        "events_per_s_median": round(statistics.median(rates)),
        "events_per_s_all": [round(r) for r in rates],
        "us_per_event_median": round(1e6 / statistics.median(rates), 3),
        "jsonl_bytes_per_event": per_event(results[0].jsonl_bytes, len(events)),
        "parquet_bytes_per_event": per_event(results[0].parquet_bytes, len(events)),
    }


def per_event(total_bytes: int, events: int) -> Optional[float]:
    return round(total_bytes / events, 1) if total_bytes else None


def copy_cost_us_per_event(events: list[Event], batch_size: int) -> float:
    """What the fresh dict copies (not timed in the runs) cost per event."""
    started = time.perf_counter()
    for batch in split(events, batch_size):
        [dict(e) for e in batch]
    return (time.perf_counter() - started) * 1e6 / len(events)


# -- the seed, for reference -------------------------------------------------------


def measure_seed(lifecycles: int, repeats: int, tmp_root: Optional[Path]) -> dict[str, Any]:
    rates, sizes = [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="bench-ledger-seed-", dir=tmp_root) as tmp:
            ledger = Path(tmp) / "toll_ledger.jsonl"
            rates.append(lifecycles / seed_lifecycles_elapsed_s(ledger, lifecycles))
            sizes.append(ledger.stat().st_size / lifecycles)
    lifecycles_per_s = statistics.median(rates)
    bytes_per_lifecycle = statistics.median(sizes)
    return {
        "variant": "seed",
        "name": "seed Tollbooth 0.3.0 (a line per event)",
        "batch_size": 1,
        "lifecycles": lifecycles,
        "repeats": repeats,
        "lifecycles_per_s_median": round(lifecycles_per_s),
        "lifecycles_per_s_all": [round(r) for r in rates],
        "bytes_per_lifecycle": round(bytes_per_lifecycle, 1),
        "events_per_s_median": round(2 * lifecycles_per_s),  # a line per charge and per release
        "us_per_event_median": round(1e6 / (2 * lifecycles_per_s), 3),
        "jsonl_bytes_per_event": round(bytes_per_lifecycle / 2, 1),
        "parquet_bytes_per_event": None,
    }


# -- the report --------------------------------------------------------------------


def kind_mix(events: list[Event]) -> dict[str, float]:
    counts = collections.Counter(e["kind"] for e in events)
    return {kind: round(n / len(events), 3) for kind, n in counts.most_common()}


def print_header(events: list[Event], args: argparse.Namespace, copy_cost_us: float) -> None:
    span_s = (events[-1]["ts_us"] - events[0]["ts_us"]) / 1e6
    print(f"ledger writers, {len(events):,} events per run, median of {args.repeats}; {AIM}")
    print(f"machine: {os.cpu_count()} cpus, python {platform.python_version()}, {platform.platform()}")
    print(f"events: {AGENTS:,} agents, kinds {kind_mix(events)}, {span_s:,.0f} s of ledger time from 2026-01-01Z")
    print(f"fresh dict copies made just before each append, not timed (they cost {copy_cost_us:.2f} us/event)")
    row_groups = f"{args.row_group_events:,} rows" if args.row_group_events else "one per batch"
    print(f"timed: open, append every batch, close; Parquet row groups: {row_groups}; "
          f"files in {args.tmp_dir or tempfile.gettempdir()}")
    print()


def print_table(runs: list[dict[str, Any]]) -> None:
    print(f"{'writer':42} {'batch':>6} {'events/s':>11} {'us/event':>9} {'of aim':>7} {'JSONL B/ev':>11} {'Parquet B/ev':>13}")
    for run in runs:
        of_aim = f"{run['events_per_s_median'] / AIM_EVENTS_PER_S:.0%}"
        jsonl_b = run["jsonl_bytes_per_event"] or "-"
        parquet_b = run["parquet_bytes_per_event"] or "-"
        print(
            f"{run['name']:42} {run['batch_size']:>6,} {run['events_per_s_median']:>11,} "
            f"{run['us_per_event_median']:>9.2f} {of_aim:>7} {jsonl_b:>11} {parquet_b:>13}"
        )
    for run in runs:
        if run["variant"] == "seed":
            print(f"seed: {run['lifecycles_per_s_median']:,} charge+release lifecycles/s, "
                  f"{run['bytes_per_lifecycle']} bytes per lifecycle ({run['lifecycles']:,} lifecycles)")


def print_verdict(runs: list[dict[str, Any]]) -> None:
    at_aim_batch = [r for r in runs if r["variant"].startswith("both") and r["batch_size"] == AIM_BATCH]
    if not at_aim_batch:
        return
    best = max(at_aim_batch, key=lambda r: r["events_per_s_median"])
    verdict = "meets" if best["events_per_s_median"] >= AIM_EVENTS_PER_S else "misses"
    print(f"best to both formats at batch {AIM_BATCH:,}: {best['events_per_s_median']:,} events/s "
          f"({best['name']}): {verdict} the aim on {os.cpu_count()} cpus")


def save_report(runs: list[dict[str, Any]], events: list[Event], args: argparse.Namespace, copy_cost_us: float) -> Path:
    report = {
        "benchmark": "ledger_writers",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "aim": AIM,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "settings": {
            "events_per_run": len(events), "repeats": args.repeats, "batch_sizes": args.batch_sizes,
            "agents": AGENTS, "kind_mix": kind_mix(events), "tmp_dir": str(args.tmp_dir or tempfile.gettempdir()),
            "dict_copies": "made just before each append, not timed",
            "dict_copy_us_per_event": round(copy_cost_us, 3),
            "parquet_row_group_events": args.row_group_events or "the batch size",
        },
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"ledger-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    return path


def batch_sizes(text: str) -> list[int]:
    sizes = [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("batch sizes must be positive integers, e.g. 100,1000,10000")
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000, help="events per timed run")
    parser.add_argument("--batch-sizes", type=batch_sizes, default=[100, 1_000, 10_000])
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure; the median is reported")
    parser.add_argument("--seed-lifecycles", type=int, default=20_000, help="charge+release lifecycles of the seed")
    parser.add_argument("--row-group-events", type=int, default=DEFAULT_ROW_GROUP_EVENTS,
                        help=f"Parquet rows per row group (default: the writers' {DEFAULT_ROW_GROUP_EVENTS:,}; 0: the batch size)")
    parser.add_argument("--tmp-dir", type=Path, default=None, help="where the ledgers are written (default: system temp)")
    parser.add_argument("--out", type=Path, default=Path("tollmesh-out") / "bench")
    parser.add_argument("--no-actors", action="store_true", help="skip the Ray actor variant (no local Ray started)")
    args = parser.parse_args(argv)
    variants = ["jsonl", "parquet", "both"] + ([] if args.no_actors else ["both_actors"])
    if not args.no_actors:
        import ray

        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)

    events = RunGenerator().events(args.events)
    copy_cost_us = copy_cost_us_per_event(events, max(args.batch_sizes))
    print_header(events, args, copy_cost_us)

    runs = []
    for batch_size in args.batch_sizes:
        for key in variants:
            runs.append(measure(key, events, batch_size, args))
    runs.append(measure("jsonl_fsync_batch", events, max(args.batch_sizes), args))
    if seed_installed():
        runs.append(measure_seed(args.seed_lifecycles, args.repeats, args.tmp_dir))
    else:
        print("nano-empire-tollbooth is not installed: pip install -e '.[bench]' to compare", file=sys.stderr)

    print_table(runs)
    print_verdict(runs)
    print(f"saved {save_report(runs, events, args, copy_cost_us)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
