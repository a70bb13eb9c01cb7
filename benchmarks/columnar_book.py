"""CPU per lifecycle of the columnar shard book against today's record shard (``ShardCore``).

A lifecycle is one message's lock, its settlement (98% released, 2% refunded with
``handler_error``) and both events encoded as the ledger's JSON lines: what a budget
shard does per message. Both books hold the same agents (each with a deposit, a default
cap, and 1% hot agents with a small cap that runs out inside every batch, so the exact
one-by-one path runs too) and are fed the same seeded messages; the CPU time of the
process (``time.process_time``) is divided by the messages. Also measured, with
``tracemalloc``: memory per agent and per open escrow of each book.

Run: ``PYTHONPATH=. python -m benchmarks.columnar_book [--json PATH] [--quick]``
(default JSON: ``tollmesh-out/columnar_book.json``). Timings are never asserted.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

from actors.budget_shard import LOCK, ShardCore, ShardSpec
from mesh.columnar import REASON_CODE, ColumnarBook

START_US = 1_767_225_600_000_000
DEFAULT_CAP_MICROS = 10_000_000
HOT_CAP_MICROS = 20_000
DEPOSIT_MICROS = 10**12
FAIL_RATE = 0.02
HANDLER_ERROR = REASON_CODE["handler_error"]


def names(agents: int) -> list[str]:
    return [f"agent-{i:06d}" for i in range(agents)]


def messages(rng: np.random.Generator, agents: int, batch: int, round_: int) -> dict[str, Any]:
    """One batch: a tenth of it from the hot agents (1% of all), the rest spread; prices 1..2,000 micros."""
    hot = max(1, agents // 100)
    source = rng.integers(0, agents, batch)
    hot_rows = rng.random(batch) < 0.1
    source[hot_rows] = rng.integers(0, hot, int(hot_rows.sum()))
    return {
        "task_ids": [f"r{round_}-m{i}" for i in range(batch)],
        "source": source.astype(np.int64), "target": rng.integers(0, agents, batch).astype(np.int64),
        "price": rng.integers(1, 2_001, batch).astype(np.int64), "ok": rng.random(batch) >= FAIL_RATE,
    }


def columnar_book(agent_names: list[str]) -> ColumnarBook:
    book = ColumnarBook(default_cap_micros=DEFAULT_CAP_MICROS, track_balances=True, escrow_timeout_s=300, shard=0, shards=1)
    agents = book.register(agent_names)
    for name in agent_names[: max(1, len(agent_names) // 100)]:
        book.set_cap(name, HOT_CAP_MICROS)
    book.deposit(agents.astype(np.int64), np.full(len(agents), DEPOSIT_MICROS, np.int64), START_US)
    return book


def record_shard(agent_names: list[str]) -> ShardCore:
    hot = {name: HOT_CAP_MICROS for name in agent_names[: max(1, len(agent_names) // 100)]}
    core = ShardCore(ShardSpec(index=0, shards=1, default_cap_micros=DEFAULT_CAP_MICROS, agent_caps_micros=hot,
                               track_balances=True, escrow_timeout_s=300))
    core.deposit_batch([(name, DEPOSIT_MICROS) for name in agent_names], START_US, "live")
    return core


def run_columnar(book: ColumnarBook, batches: list[dict[str, Any]]) -> dict[str, float]:
    """CPU seconds of lock, encode and settle over ``batches`` (each batch a new day: the hot caps run out again)."""
    spent = {"lock_s": 0.0, "settle_s": 0.0, "encode_s": 0.0}
    lines = 0
    for day, m in enumerate(batches):
        now_us = START_US + day * 86_400_000_000
        t0 = time.process_time()
        locked = book.lock(m["task_ids"], m["source"], m["target"], m["price"], now_us)
        t1 = time.process_time()
        lock_lines = book.encode(locked.events)
        t2 = time.process_time()
        reasons = np.where(m["ok"], 0, HANDLER_ERROR)
        settled = book.settle_rows(locked.rows, m["ok"], reasons, now_us + 1_000)
        t3 = time.process_time()
        settle_lines = book.encode(settled.events)
        t4 = time.process_time()
        spent["lock_s"] += t1 - t0
        spent["encode_s"] += (t2 - t1) + (t4 - t3)
        spent["settle_s"] += t3 - t2
        lines += lock_lines.count(b"\n") + settle_lines.count(b"\n")
    spent["total_s"] = spent["lock_s"] + spent["settle_s"] + spent["encode_s"]
    spent["lines"] = lines
    return spent


def run_record(core: ShardCore, agent_names: list[str], batches: list[dict[str, Any]]) -> dict[str, float]:
    """CPU seconds of ``ShardCore.lock_batch`` + ``settle_batch`` (each encodes its events) over ``batches``."""
    total, lines = 0.0, 0
    for day, m in enumerate(batches):
        now_us = START_US + day * 86_400_000_000
        ops = [(LOCK, t, agent_names[s], agent_names[g], p, 0.0, None, None, None)
               for t, s, g, p in zip(m["task_ids"], m["source"].tolist(), m["target"].tolist(), m["price"].tolist())]
        settle_ops = [(t, ok, None if ok else "handler_error") for t, ok in zip(m["task_ids"], m["ok"].tolist())]
        t0 = time.process_time()
        lock_answer = core.lock_batch(ops, now_us, "live")
        settle_answer = core.settle_batch(settle_ops, now_us + 1_000, "live")
        total += time.process_time() - t0
        lines += lock_answer[2] + settle_answer[2]
    return {"total_s": total, "lines": lines}


def measure(agents: int, batch: int, *, columnar_messages: int, record_messages: int, seed: int = 7) -> dict[str, Any]:
    agent_names = names(agents)
    rng = np.random.default_rng(seed)
    rounds = max(1, columnar_messages // batch)
    batches = [messages(rng, agents, batch, r) for r in range(rounds)]
    book = columnar_book(agent_names)
    gc.collect()
    columnar = run_columnar(book, batches)
    core = record_shard(agent_names)
    record_batches = batches[: max(1, record_messages // batch)]
    gc.collect()
    record = run_record(core, agent_names, record_batches)
    n_col, n_rec = rounds * batch, len(record_batches) * batch
    result = {
        "agents": agents, "batch": batch,
        "columnar_messages": n_col, "record_messages": n_rec,
        "columnar_us_per_lifecycle": 1e6 * columnar["total_s"] / n_col,
        "columnar_lock_us": 1e6 * columnar["lock_s"] / n_col,
        "columnar_settle_us": 1e6 * columnar["settle_s"] / n_col,
        "columnar_encode_us": 1e6 * columnar["encode_s"] / n_col,
        "record_us_per_lifecycle": 1e6 * record["total_s"] / n_rec,
        "columnar_lines_per_message": columnar["lines"] / n_col,
        "record_lines_per_message": record["lines"] / n_rec,
    }
    result["speedup"] = result["record_us_per_lifecycle"] / result["columnar_us_per_lifecycle"]
    return result


def memory(agents: int, open_escrows: int) -> dict[str, Any]:
    """Bytes per agent (registered, with a deposit) and per open escrow, by tracemalloc, of both books."""
    agent_names = names(agents)
    rng = np.random.default_rng(3)
    m = messages(rng, agents, open_escrows, 0)
    op_rows = [(LOCK, t, agent_names[s], agent_names[g], p, 0.0, None, None, None)
               for t, s, g, p in zip(m["task_ids"], m["source"].tolist(), m["target"].tolist(), m["price"].tolist())]
    figures: dict[str, Any] = {"agents": agents, "open_escrows": open_escrows}
    for label, build, lock in (
        ("columnar", columnar_book, lambda book: book.lock(m["task_ids"], m["source"], m["target"], m["price"], START_US)),
        ("record", record_shard, lambda core: core.lock_batch(op_rows, START_US, "live")),
    ):
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        book = build(agent_names)
        gc.collect()
        after_agents = tracemalloc.get_traced_memory()[0]
        answer = lock(book)
        del answer
        gc.collect()
        after_locks = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        figures[f"{label}_bytes_per_agent"] = (after_agents - before) / agents
        figures[f"{label}_bytes_per_open_escrow"] = (after_locks - after_agents) / open_escrows
        if label == "columnar":
            figures["columnar_column_bytes"] = book.nbytes()
            figures["columnar_open_escrows"] = book.open_count
        del book
    figures["names_bytes_per_agent_outside_books"] = sum(sys.getsizeof(n) for n in agent_names) / agents
    figures["task_id_bytes_per_escrow_outside_books"] = sum(sys.getsizeof(t) for t in m["task_ids"]) / open_escrows
    return figures


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="tollmesh-out/columnar_book.json", help="where to save the figures")
    parser.add_argument("--quick", action="store_true", help="fewer messages (seconds, not a minute)")
    args = parser.parse_args(argv)
    columnar_messages, record_messages = (40_000, 20_000) if args.quick else (200_000, 60_000)
    runs = []
    print(f"{'agents':>8} {'batch':>6} | {'record us':>9} | {'columnar us':>11} (lock settle encode) | speedup")
    for agents in (1_000, 100_000):
        for batch in (1_000, 20_000):
            r = measure(agents, batch, columnar_messages=columnar_messages, record_messages=record_messages)
            runs.append(r)
            print(f"{agents:>8} {batch:>6} | {r['record_us_per_lifecycle']:>9.2f} | {r['columnar_us_per_lifecycle']:>11.2f} "
                  f"({r['columnar_lock_us']:.2f} {r['columnar_settle_us']:.2f} {r['columnar_encode_us']:.2f}) | "
                  f"{r['speedup']:.1f}x", flush=True)
    mem = memory(100_000, 20_000 if args.quick else 100_000)
    print(f"memory, {mem['agents']} agents: columnar {mem['columnar_bytes_per_agent']:.0f} B/agent "
          f"({mem['columnar_column_bytes']['agent_column_bytes_per_agent']} in its numpy columns), "
          f"record {mem['record_bytes_per_agent']:.0f} B/agent; per open escrow ({mem['open_escrows']}): "
          f"columnar {mem['columnar_bytes_per_open_escrow']:.0f} B, record {mem['record_bytes_per_open_escrow']:.0f} B "
          f"(task id strings, {mem['task_id_bytes_per_escrow_outside_books']:.0f} B each, made by the caller and "
          "held by both, are not counted)")
    report = {"bench": "columnar_book", "python": platform.python_version(), "machine": platform.machine(),
              "cpus": __import__("os").cpu_count(), "runs": runs, "memory": mem,
              "lifecycle": "lock + settle (98% release, 2% refund) + both events encoded as JSON lines; CPU of the process"}
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(f"saved {path}")
    return report


if __name__ == "__main__":
    main()
