"""The least the ledger can cost a lifecycle in Python: the 25x target's budget against it.

A lifecycle writes two events (its lock, its release). This benchmark builds the events of
``--lifecycles`` lifecycles the cheapest way we know in Python, with no actor, shard, handler or
Ray in the way: columnar (Arrow compute joins the JSON text of every line at once), then the
hash chain (one SHA-256 per line: a chain is sequential), one write and one fsync, and the
Parquet rows straight from the same columns (no JSON parsing). The output is the real thing:
``ledger verify`` passes on the JSONL, and the Parquet dataset reads back equal to it.

Beside it, in the same run, the seed's in-process lifecycles per second. 25x that rate on the
machine's cores leaves ``cores / (25 x seed rate)`` of CPU per lifecycle for everything: the
ledger, the shards' cap and escrow book, the handler call, the coordinator and Ray's hops.

    python -m benchmarks.ledger_floor [--lifecycles N] [--repeats R] [--seed-lifecycles N] [--out DIR]

Prints the CPU (all threads) and wall µs per lifecycle of each step (medians) and saves them as JSON under ``--out`` (default tollmesh-out/bench/).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ledger.parquet import micros_to_decimal
from ledger.reader import read_table
from ledger.schema import ARROW_SCHEMA
from ledger.verify import verify
from mesh.core.clock import iso_utc
from benchmarks.seed import seed_installed, seed_lifecycles_elapsed_s

START_TS_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
AGENTS = 1_000
TARGET_MULTIPLE = 25
STEPS = ("json_text", "nonces", "chain", "write_fsync", "parquet")


def columns(lifecycles: int) -> dict[str, pa.Array]:
    """What a batch of calls gives the ledger: task ids, agents, amounts (built before the clock starts)."""
    rng = np.random.default_rng(7)
    return {
        "task_id": pa.array([f"task-{n:09d}" for n in range(lifecycles)]),
        "source_agent": pa.array([f"agent-{n}" for n in rng.integers(0, AGENTS, lifecycles)]),
        "target_agent": pa.array([f"agent-{n}" for n in rng.integers(0, AGENTS, lifecycles)]),
        "amount_micros": pa.array(rng.integers(1, 100_000, lifecycles), pa.int64()),
    }


def json_bodies(cols: dict[str, pa.Array], nonces: pa.Array, first_seq: int, kind: str, ts_us: int) -> pa.Array:
    """Every line of one kind without its hash (``...}`` with the chain's part still to add), at once."""
    n = len(cols["task_id"])
    released = kind == "release"
    created = iso_utc(START_TS_US, "seconds")
    settled = f'"{iso_utc(ts_us, "seconds")}"' if released else "null"
    status = "released" if released else "escrow_locked"
    seqs = pa.array(np.arange(first_seq, first_seq + n, dtype=np.int64)).cast(pa.string())
    usd = pc.divide(cols["amount_micros"].cast(pa.float64()), 1e6).cast(pa.string())
    parts = [
        '{"v":1,"seq":', seqs, f',"ts_us":{ts_us},"kind":"{kind}","mode":"live","shard":0,"task_id":"',
        cols["task_id"], '","source_agent":"', cols["source_agent"], '","target_agent":"', cols["target_agent"],
        '","amount_usd":', usd, ',"amount_micros":', cols["amount_micros"].cast(pa.string()),
        f',"amount_tokens":0.0,"status":"{status}","tx_signature":null,"payer_wallet":null,"nonce":"', nonces,
        f'","settled_at":{settled},"created_at":"{created}","reason":null,"proof_digest":null}}',
    ]
    return pc.binary_join_element_wise(*[pa.scalar(p) if isinstance(p, str) else p for p in parts], "")


def chain(bodies: list[bytes], previous: bytes) -> tuple[list[bytes], list[str]]:
    """The JSONL writer's chain: each line's hash covers the one before it and the line."""
    lines, hashes, sha256 = [], [], hashlib.sha256
    for body in bodies:
        previous = sha256(previous + body).hexdigest()[:32].encode()
        lines.append(b'%s,"hash":"%s"}\n' % (body[:-1], previous))
        hashes.append(previous.decode())
    return lines, hashes


def parquet_table(cols: dict[str, pa.Array], nonces: pa.Array, hashes: list[str], ts: list[int]) -> pa.Table:
    """The same events as rows of :data:`ARROW_SCHEMA`, from the columns (locks, then releases)."""
    n = len(cols["task_id"])
    twice = {name: pa.concat_arrays([array, array]) for name, array in cols.items()}
    micros = twice["amount_micros"]
    timestamp = pa.timestamp("us", tz="UTC")
    data = {
        "v": pa.array(np.ones(2 * n, np.int16)), "seq": pa.array(np.arange(2 * n, dtype=np.int64)),
        "ts": pa.array(np.repeat(np.array(ts, np.int64), n)).cast(timestamp),
        "kind": pa.DictionaryArray.from_arrays(np.repeat(np.array([0, 1], np.int32), n), ["lock", "release"]),
        "mode": pa.DictionaryArray.from_arrays(np.zeros(2 * n, np.int32), ["live"]),
        "shard": pa.array(np.zeros(2 * n, np.int32)), "task_id": twice["task_id"],
        "source_agent": twice["source_agent"].dictionary_encode(), "target_agent": twice["target_agent"].dictionary_encode(),
        "amount_micros": micros, "amount_usd": micros_to_decimal(micros.to_numpy()),
        "amount_tokens": pa.array(np.zeros(2 * n)),
        "status": pa.DictionaryArray.from_arrays(np.repeat(np.array([0, 1], np.int32), n), ["escrow_locked", "released"]),
        "nonce": pa.concat_arrays([nonces, nonces]),
        "created_at": pa.array(np.full(2 * n, START_TS_US // 1_000_000 * 1_000_000, np.int64)).cast(timestamp),
        "settled_at": pa.concat_arrays([pa.nulls(n, pa.int64()), pa.array(np.full(n, ts[1] // 1_000_000 * 1_000_000, np.int64))]).cast(timestamp),
        "hash": pa.array(hashes),
    }
    arrays = [data[f.name] if f.name in data else pa.nulls(2 * n, f.type) for f in ARROW_SCHEMA]
    return pa.Table.from_arrays([a.cast(f.type) for a, f in zip(arrays, ARROW_SCHEMA)], schema=ARROW_SCHEMA)


class _Steps:
    """CPU seconds (every thread of the process) and wall seconds of each step."""

    def __init__(self) -> None:
        self.cpu_s: dict[str, float] = {}
        self.wall_s: dict[str, float] = {}

    def start(self) -> None:
        self._cpu, self._wall = time.process_time(), time.perf_counter()

    def stop(self, step: str) -> None:
        self.cpu_s[step] = time.process_time() - self._cpu
        self.wall_s[step] = time.perf_counter() - self._wall


def one_run(cols: dict[str, pa.Array], root: Path) -> _Steps:
    """The cost of each step for one batch of lifecycles, written under ``root``."""
    n = len(cols["task_id"])
    ts = [START_TS_US, START_TS_US + 1_000]
    steps = _Steps()
    steps.start()
    nonces = pa.array([hashlib.blake2b(t.encode(), digest_size=16).hexdigest() for t in cols["task_id"].to_pylist()])
    steps.stop("nonces")
    steps.start()
    bodies = [body for kind, first, ts_us in (("lock", 0, ts[0]), ("release", n, ts[1]))
              for body in json_bodies(cols, nonces, first, kind, ts_us).cast(pa.binary()).to_pylist()]
    steps.stop("json_text")
    steps.start()
    lines, hashes = chain(bodies, b"0" * 32)
    steps.stop("chain")
    steps.start()
    fd = os.open(root / "toll_ledger.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(fd, b"".join(lines))
    os.fsync(fd)
    os.close(fd)
    steps.stop("write_fsync")
    steps.start()
    (root / "parquet" / "day=2026-01-01").mkdir(parents=True)
    pq.write_table(parquet_table(cols, nonces, hashes, ts), root / "parquet" / "day=2026-01-01" / "part-0.parquet",
                   compression="zstd")
    steps.stop("parquet")
    return steps


def check_output(root: Path) -> None:
    """The floor's files are a real ledger: verify passes; Parquet reads back equal to the JSONL."""
    result = verify(root / "toll_ledger.jsonl")
    assert result.ok, result.problems[:3]
    from_parquet = read_table(root / "parquet").drop_columns(["day"])
    from_jsonl = read_table(root / "toll_ledger.jsonl")
    assert from_parquet.cast(from_jsonl.schema).equals(from_jsonl), "Parquet rows differ from the JSONL's"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lifecycles", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed-lifecycles", type=int, default=20_000)
    parser.add_argument("--out", type=Path, default=Path("tollmesh-out") / "bench")
    args = parser.parse_args(argv)
    if args.lifecycles < 1 or args.repeats < 1 or args.seed_lifecycles < 1:
        parser.error("--lifecycles, --repeats and --seed-lifecycles must be at least 1")
    cols = columns(args.lifecycles)
    runs = []
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="bench-floor-") as tmp:
            runs.append(one_run(cols, Path(tmp)))
            if repeat == 0:
                check_output(Path(tmp))
    per_lifecycle = 1e6 / args.lifecycles
    cpu = {step: statistics.median(r.cpu_s[step] for r in runs) * per_lifecycle for step in STEPS}
    wall = {step: statistics.median(r.wall_s[step] for r in runs) * per_lifecycle for step in STEPS}
    cpu["total"] = statistics.median(sum(r.cpu_s.values()) for r in runs) * per_lifecycle
    wall["total"] = statistics.median(sum(r.wall_s.values()) for r in runs) * per_lifecycle
    report: dict[str, Any] = {
        "benchmark": "ledger_floor", "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                                 "platform": platform.platform()},
        "lifecycles": args.lifecycles, "repeats": args.repeats,
        "cpu_us_per_lifecycle_median": {k: round(v, 3) for k, v in cpu.items()},
        "wall_us_per_lifecycle_median": {k: round(v, 3) for k, v in wall.items()},
    }
    print(f"ledger floor, {args.lifecycles:,} lifecycles (2 events each), median of {args.repeats}; "
          f"{os.cpu_count()} cpus, python {platform.python_version()}")
    print(f"  {'step':12} {'CPU us':>8} {'wall us':>8}   per lifecycle")
    for step in (*STEPS, "total"):
        print(f"  {step:12} {cpu[step]:8.2f} {wall[step]:8.2f}")
    if seed_installed():
        with tempfile.TemporaryDirectory(prefix="bench-floor-seed-") as tmp:
            seed_per_s = args.seed_lifecycles / seed_lifecycles_elapsed_s(Path(tmp) / "l.jsonl", args.seed_lifecycles)
        budget_us = (os.cpu_count() or 1) * 1e6 / (TARGET_MULTIPLE * seed_per_s)
        report.update(seed_lifecycles_per_s=round(seed_per_s), target_lifecycles_per_s=round(TARGET_MULTIPLE * seed_per_s),
                      budget_cpu_us_per_lifecycle=round(budget_us, 3), floor_share_of_budget=round(cpu["total"] / budget_us, 3))
        print(f"seed: {seed_per_s:,.0f} lifecycles/s in process; {TARGET_MULTIPLE}x is {TARGET_MULTIPLE * seed_per_s:,.0f}/s: "
              f"{budget_us:.2f} us of CPU per lifecycle on {os.cpu_count()} cores for everything; "
              f"the ledger's floor alone takes {cpu['total'] / budget_us:.0%} of it")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "ledger_floor.json"
    path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
