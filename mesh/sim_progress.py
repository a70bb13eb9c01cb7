"""How far a simulation got, read from its run directory: what ``tollmesh simulate --resume`` continues.

A run saves its scenario in ``run.json`` before it starts. Its driver sends tick after tick,
each once the one before is settled and durable, and names its calls ``m<n>`` in order, so
the highest ``n`` in the ledger tells the tick the run was in when it stopped: every tick
before it is finished. That tick is sent again (the calls it already made are repeats, and
the escrows it left locked are delivered and settled now), then the run goes on.

>>> from mesh.scenario import Scenario
>>> scenario = Scenario(messages=10, days=1, ticks_per_day=3,
...     groups=[{"name": "a", "count": 2}], traffic=[{"source": "a", "target": "a"}])
>>> tick_starts(scenario)
[0, 4, 7, 10]
>>> tick_of_message(scenario, 6), tick_of_message(scenario, 7)
(1, 2)
"""

from __future__ import annotations

import bisect
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from ledger.partitions import partition_count
from ledger.reader import read_table
from ledger.schema import EventKind
from ledger.tally import Tally, tally_ledger
from mesh.core.errors import ConfigError
from mesh.scenario import Scenario

RUN_FILE = "run.json"  # the scenario of a run, written before it starts
LEDGER_FILE = "toll_ledger.jsonl"
_DRIVER_TASK = re.compile(r"^m(\d+)$")  # the driver's calls; onward calls are m<n>>k


@dataclass
class RunProgress:
    """Where an interrupted run stands: the tick to send again, who got their deposit, what the ledger counts."""

    next_tick: int
    deposited: set[str] = field(default_factory=set)
    tally: Tally = field(default_factory=Tally)
    outcomes: Counter = field(default_factory=Counter)  # how the calls of the ticks before ``next_tick`` ended
    finished: bool = False


def tick_starts(scenario: Scenario) -> list[int]:
    """The number of the first message of each tick, and the total at the end (``ticks + 1`` numbers)."""
    ticks, messages = scenario.ticks, scenario.messages
    starts = [0]
    for tick in range(ticks):
        starts.append(starts[-1] + messages // ticks + (1 if tick < messages % ticks else 0))
    return starts


def tick_of_message(scenario: Scenario, number: int) -> int:
    """The tick that sends message ``m<number>``."""
    return bisect.bisect_right(tick_starts(scenario), number) - 1


def save_run(run_dir: Path, scenario: Scenario) -> None:
    """Write ``run.json``: what ``--resume`` needs to play the rest of the run."""
    (run_dir / RUN_FILE).write_bytes(orjson.dumps({"scenario": scenario.model_dump(mode="json")}, option=orjson.OPT_INDENT_2))


def load_run(run_dir: Path) -> Scenario:
    """The scenario of the run in ``run_dir``; ConfigError if it holds no run that can be resumed."""
    path = run_dir / RUN_FILE
    if not path.is_file():
        raise ConfigError(f"{run_dir} holds no run to resume (no {RUN_FILE}): start one with tollmesh simulate --out")
    try:
        return Scenario.model_validate_json(orjson.dumps(orjson.loads(path.read_bytes())["scenario"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not a run file this tollmesh can read: {exc}") from None


def read_progress(run_dir: Path, scenario: Scenario) -> RunProgress:
    """How far the run in ``run_dir`` got (see the module doc); ``finished`` if its report says it ended."""
    ledger = run_dir / LEDGER_FILE
    report = run_dir / "report.json"
    finished = report.is_file() and not _report_says_interrupted(report)
    if not ledger.exists() and partition_count(ledger) is None:  # a partitioned ledger has no file of its name
        return RunProgress(next_tick=0, finished=finished)
    table = read_table(ledger, columns=["kind", "task_id", "target_agent", "status", "reason"])
    kinds = table.column("kind").cast("string")
    deposits = table.filter(pc.equal(kinds, EventKind.DEPOSIT.value))
    deposited = set(deposits.column("target_agent").cast("string").to_pylist())
    task_ids = pc.unique(table.column("task_id").cast("string").drop_null()).to_pylist()
    numbers = [int(m.group(1)) for m in map(_DRIVER_TASK.match, task_ids) if m is not None]
    next_tick = tick_of_message(scenario, max(numbers)) if numbers else 0
    outcomes = _driver_outcomes(table, tick_starts(scenario)[next_tick])
    return RunProgress(next_tick=next_tick, deposited=deposited, tally=tally_ledger(ledger), outcomes=outcomes,
                       finished=finished)


def _driver_outcomes(table: pa.Table, before: int) -> Counter:
    """How the driver's calls ``m0`` .. ``m<before - 1>`` ended, by status (and reason), as the mesh answers them."""
    last: dict[str, tuple[str, Optional[str]]] = {}
    columns = [table.column(k).cast("string").to_pylist() for k in ("task_id", "status", "reason")]
    for task_id, status, reason in zip(*columns):  # in seq order: the last event of a task is how it ended
        if task_id is not None and status is not None:
            last[task_id] = (status, reason)
    ended: Counter = Counter()
    for n in range(before):
        status, reason = last.get(f"m{n}", (None, None))
        if status is not None:
            ended[status if reason is None else f"{status}:{reason}"] += 1
    return ended


def _report_says_interrupted(path: Path) -> bool:
    """Whether a run's saved report says it was interrupted (an unreadable one: as good as interrupted)."""
    try:
        return bool(orjson.loads(path.read_bytes())["run"]["interrupted"])
    except (OSError, ValueError, KeyError, TypeError):
        return True
