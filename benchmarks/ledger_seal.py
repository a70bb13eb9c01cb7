"""What sealing a ledger costs: a hash per line (format v1) against a seal per batch (v2), SHA-256 against BLAKE2b.

Three measurements, each the minimum over ``--repeats`` after an untimed warm-up of the same size
(this VM charges for the first touch of a page, so the first pass over fresh memory costs more):

* ``hash``: the digests alone, ns per event, at batch sizes 1, 100 and 10,000: a v1 chain (one
  digest of the previous digest and each line) and a v2 seal (one digest of the batch's bytes),
  with hashlib's SHA-256 and BLAKE2b (16-byte digest), and blake3 if it is installed; and a
  Merkle root over the lines' digests (what verify would need to name a changed line inside a
  batch), to judge whether it is cheap enough to add.
* ``write``: :class:`ledger.jsonl.JsonlWriter` itself, us per event (wall and CPU) and bytes per
  event, fsync ``never`` (the format's cost, not the disk's), at the same batch sizes, for v1 as
  before v2 (events with every field, nulls included), v1 of null-free events (what the producers
  hand in now) and v2; through ``append`` (dicts), ``append_bodies`` (lines encoded by the
  producer, the writer actor's way in) and, for batches of one, ``append_one`` (the in-process booth's).
* ``read``: reading the written ledger back (:func:`ledger.reader.event_lines`, what replay and
  the tools do) and ``ledger verify``, us per event, v1 against v2.

    python -m benchmarks.ledger_seal [--events N] [--repeats R] [--out DIR] [--quick]

Prints the figures and saves them as JSON under ``--out`` (default tollmesh-out/bench/ledger_seal.json).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

import orjson

from ledger.events import record_event
from ledger.files import segments
from ledger.jsonl import JsonlWriter, encode_events, split_encoded
from ledger.reader import event_lines
from ledger.verify import verify
from mesh.core.records import SettlementStatus, TollRecord

BATCH_SIZES = (1, 100, 10_000)
START_TS_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
AGENTS = 1_000
#: The fields of an event as producers wrote it before v2, in order (nulls included).
FULL_FIELDS = ("v", "seq", "ts_us", "kind", "mode", "shard", "task_id", "source_agent", "target_agent", "amount_usd",
               "amount_micros", "amount_tokens", "status", "tx_signature", "payer_wallet", "nonce", "settled_at",
               "created_at", "reason", "proof_digest")


def lifecycle_events(count: int) -> list[dict[str, Any]]:
    """``count`` events of lifecycles (a lock, then its release), as the booth journals them."""
    events = []
    for n in range(count // 2 + 1):
        record = TollRecord(f"task-{n:09d}", f"agent-{n % AGENTS}", f"agent-{(n * 7 + 1) % AGENTS}",
                            amount_micros=1_000 + n % 997, status=SettlementStatus.ESCROW_LOCKED,
                            nonce=f"{n:032x}", created_at="2026-01-01T00:00:00+00:00")
        events.append(record_event("lock", record, ts_us=START_TS_US + n, mode="live"))
        released = record._replace(status=SettlementStatus.RELEASED, settled_at="2026-01-01T00:00:01+00:00")
        events.append(record_event("release", released, ts_us=START_TS_US + n + 1, mode="live"))
    return events[:count]


def with_nulls(event: dict[str, Any]) -> dict[str, Any]:
    """The event as producers wrote it before v2: every field, the absent ones null."""
    return {name: event.get(name) for name in FULL_FIELDS}


def best(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """(wall s, CPU s), each the least of ``repeats`` timed calls after one untimed (the warm-up)."""
    fn()
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus)


# -- hashing ------------------------------------------------------------------------------

def hashers() -> dict[str, Callable[[bytes], Any]]:
    """The digests to compare: a new hash object of each (``update``, ``hexdigest``)."""
    found: dict[str, Callable[[bytes], Any]] = {
        "sha256": hashlib.sha256,
        "blake2b": lambda data=b"": hashlib.blake2b(data, digest_size=16),
    }
    try:
        import blake3  # not a dependency: measured only where it is installed
        found["blake3"] = blake3.blake3
    except ImportError:
        pass
    return found


def chain_per_line(new: Callable[[bytes], Any], lines: list[bytes]) -> bytes:
    """v1: one digest per line, of the previous digest and the line."""
    previous = b"0" * 32
    for line in lines:
        previous = new(previous + line).hexdigest()[:32].encode()
    return previous


def seal_per_batch(new: Callable[[bytes], Any], batches: list[bytes]) -> bytes:
    """v2: one digest per batch, of the previous seal and the batch's bytes (joined before, as the writer has them)."""
    previous = b"0" * 32
    for batch in batches:
        digest = new(previous)
        digest.update(batch)
        previous = digest.hexdigest()[:32].encode()
    return previous


def merkle_root(new: Callable[[bytes], Any], lines: list[bytes]) -> bytes:
    """A Merkle root over the lines' digests (what naming the changed line inside a batch would cost)."""
    level = [new(line).digest() for line in lines]
    while len(level) > 1:
        pairs = [level[i] + level[i + 1] for i in range(0, len(level) - 1, 2)]
        level = [new(pair).digest() for pair in pairs] + ([level[-1]] if len(level) % 2 else [])
    return level[0]


def measure_hashing(lines: list[bytes], repeats: int) -> dict[str, Any]:
    n = len(lines)
    figures: dict[str, Any] = {"bytes_per_line": round(sum(map(len, lines)) / n, 1), "ns_per_event": {}}
    for name, new in hashers().items():
        rows = {"chain_per_line": round(best(lambda: chain_per_line(new, lines), repeats)[1] / n * 1e9, 1)}
        for batch in BATCH_SIZES:
            joined = [b"\n".join(lines[start:start + batch]) + b"\n" for start in range(0, n, batch)]
            rows[f"seal_batch_{batch}"] = round(best(lambda: seal_per_batch(new, joined), repeats)[1] / n * 1e9, 1)
        rows["merkle_root"] = round(best(lambda: merkle_root(new, lines), repeats)[1] / n * 1e9, 1)
        figures["ns_per_event"][name] = rows
    return figures


# -- writing ------------------------------------------------------------------------------

def write_once(root: Path, events: list[dict[str, Any]], batch: int, format_version: int, way: str) -> tuple[float, float, int]:
    """Write ``events`` in batches of ``batch`` to a new ledger under ``root``: (wall s, CPU s, bytes).

    The batches (fresh dicts, or encoded lines) are made before the clock starts."""
    if way == "bodies":
        work = [split_encoded(encode_events(events[i:i + batch])) for i in range(0, len(events), batch)]
    else:
        work = [[dict(e) for e in events[i:i + batch]] for i in range(0, len(events), batch)]
    path = root / f"l{time.perf_counter_ns()}.jsonl"
    writer = JsonlWriter(path, "never", format_version=format_version)
    append = {"bodies": writer.append_bodies, "append": writer.append, "append_one": lambda batch: writer.append_one(batch[0])}[way]
    wall, cpu = time.perf_counter(), time.process_time()
    for item in work:
        append(item)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    writer.close()
    size = sum(p.stat().st_size for p in segments(path))
    for p in segments(path):
        p.unlink()
    return wall, cpu, size


def measure_writing(events: list[dict[str, Any]], repeats: int, root: Path) -> list[dict[str, Any]]:
    full = [with_nulls(e) for e in events]
    rows = []
    variants = (("v1, every field (before v2)", 1, full), ("v1, null fields left out", 1, events), ("v2", 2, events))
    for batch in BATCH_SIZES:
        for way in ("append_one", "append", "bodies") if batch == 1 else ("append", "bodies"):
            for label, format_version, source in variants:
                write_once(root, source, batch, format_version, way)  # the warm-up: the same sizes, untimed
                runs = [write_once(root, source, batch, format_version, way) for _ in range(repeats)]
                n = len(source)
                rows.append({
                    "batch": batch, "way": way, "format": label,
                    "wall_us_per_event": round(min(r[0] for r in runs) / n * 1e6, 3),
                    "cpu_us_per_event": round(min(r[1] for r in runs) / n * 1e6, 3),
                    "bytes_per_event": round(runs[0][2] / n, 1),
                })
    return rows


# -- reading ------------------------------------------------------------------------------

def measure_reading(events: list[dict[str, Any]], repeats: int, root: Path) -> list[dict[str, Any]]:
    rows = []
    for label, format_version, source, batch in (("v1, every field (before v2)", 1, [with_nulls(e) for e in events], 1),
                                                 ("v2, batches of 1", 2, events, 1),
                                                 ("v2, batches of 10,000", 2, events, 10_000)):
        path = root / f"read-v{format_version}-{batch}" / "l.jsonl"
        writer = JsonlWriter(path, "never", format_version=format_version)
        for start in range(0, len(source), batch):
            writer.append([dict(e) for e in source[start:start + batch]])
        writer.close()
        n = len(source)
        read = best(lambda: sum(1 for _ in event_lines(segments(path))), repeats)
        checked = best(lambda: verify(path), repeats)
        rows.append({"format": label, "read_us_per_event": round(read[1] / n * 1e6, 3),
                     "verify_us_per_event": round(checked[1] / n * 1e6, 3)})
    return rows


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000, help="events written per measurement (default 100,000)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats; the least is kept (default 5)")
    parser.add_argument("--quick", action="store_true", help="20,000 events, 2 repeats")
    parser.add_argument("--out", type=Path, default=Path("tollmesh-out") / "bench")
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.repeats = 20_000, 2
    if args.events < 100 or args.repeats < 1:
        parser.error("--events must be at least 100 and --repeats at least 1 (a batch larger than --events is all of them)")
    events = lifecycle_events(args.events)
    lines = [orjson.dumps(e) for e in events]
    report: dict[str, Any] = {
        "benchmark": "ledger_seal", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "load_average_1m": round(os.getloadavg()[0], 2)},
        "events": args.events, "repeats": args.repeats,
    }
    print(f"ledger seal, {args.events:,} events, least of {args.repeats} after a warm-up; {os.cpu_count()} cpus, "
          f"python {platform.python_version()}, load {os.getloadavg()[0]:.1f}")
    report["hash"] = measure_hashing(lines, args.repeats)
    print(f"\ndigests, CPU ns per event (lines of {report['hash']['bytes_per_line']} B):")
    columns = ["chain_per_line", *(f"seal_batch_{b}" for b in BATCH_SIZES), "merkle_root"]
    print(f"  {'':8}" + "".join(f"{c:>18}" for c in columns))
    for name, row in report["hash"]["ns_per_event"].items():
        print(f"  {name:8}" + "".join(f"{row[c]:18.1f}" for c in columns))
    with tempfile.TemporaryDirectory(prefix="bench-seal-") as tmp:
        report["write"] = measure_writing(events, args.repeats, Path(tmp))
        print("\nJsonlWriter, fsync never: us per event (wall / CPU), bytes per event")
        for row in report["write"]:
            print(f"  batch {row['batch']:>6,} {row['way']:10} {row['format']:30} {row['wall_us_per_event']:7.2f} / "
                  f"{row['cpu_us_per_event']:5.2f} us  {row['bytes_per_event']:6.1f} B")
        report["read"] = measure_reading(events, args.repeats, Path(tmp))
        print("\nreading back, CPU us per event")
        for row in report["read"]:
            print(f"  {row['format']:30} read {row['read_us_per_event']:6.2f}   verify {row['verify_us_per_event']:6.2f}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "ledger_seal.json"
    path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
