"""Budget shards without Ray: random programs over several shards, as the coordinator drives them.

Money moves between shards (a release pays an agent another shard holds, through a
credit), the clock crosses days and deadlines, and at any point a shard may be
rebuilt from the ledger. At every step each shard conserves its money; at the end
every shard's replay equals its live state, one global replay equals their union,
and ``ledger verify`` passes.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from actors.budget_shard import LOCK, REJECT, ShardCore, ShardSpec
from ledger.replay import merge_snapshots
from ledger import replay_file, snapshot, verify
from ledger.jsonl import JsonlWriter
from mesh.core.budget import BudgetBook
from mesh.core.escrow import EscrowBook
from mesh.core.sharding import shard_of

AGENTS = [f"agent-{i}" for i in range(7)]
START_US = 1_767_225_600_000_000
SHARDS = 3


class Driver:
    """What the coordinator does with shard answers: write them in call order, then forward credits."""

    def __init__(self, root: Path, *, cap_micros: int | None) -> None:
        self.path = root / "toll_ledger.jsonl"
        self.writer = JsonlWriter(self.path)
        self.specs = [
            ShardSpec(index=i, shards=SHARDS, default_cap_micros=cap_micros, track_balances=True,
                      escrow_timeout_s=60, ledger_path=str(self.path))
            for i in range(SHARDS)
        ]
        self.shards = [ShardCore(spec) for spec in self.specs]
        self.now_us = START_US
        self.open: dict[str, str] = {}  # task id -> source
        self.tasks = 0

    def record(self, answer: tuple) -> None:
        records, lines, events, credits, _, _ = answer
        if events:
            first_seq = self.writer.next_seq
            self.writer.append_encoded(lines)
            for agent, amount, index in credits:
                self.shards[shard_of(agent, SHARDS)].credit([(agent, amount, first_seq + index)])
        for record in records:
            if record is not None and record.status.value != "escrow_locked":
                self.open.pop(record.task_id, None)

    def lock(self, source: str, target: str, amount: int, reject: bool) -> None:
        self.tasks += 1
        task_id = f"t{self.tasks}"
        op = (REJECT if reject else LOCK, task_id, source, target, amount, 0.0, None, None, "x402_rejected" if reject else None)
        answer = self.shards[shard_of(source, SHARDS)].lock_batch([op], self.now_us, "live")
        if answer[0][0].status.value == "escrow_locked":
            self.open[task_id] = source
        self.record(answer)

    def settle(self, pick: int, release: bool) -> None:
        if not self.open:
            return
        task_id = sorted(self.open)[pick % len(self.open)]
        shard = self.shards[shard_of(self.open[task_id], SHARDS)]
        self.record(shard.settle_batch([(task_id, release, None if release else "handler_error")], self.now_us, "live"))

    def check_conserved(self) -> None:
        for shard in self.shards:
            s = shard.stats()
            held = s["balances_total_micros"] + s["locked_total_micros"]
            assert held == s["deposits_total_micros"] + s["transfers_in_micros"] - s["transfers_out_micros"]


def nonzero(values: dict) -> dict:
    return {k: v for k, v in values.items() if v}


operation = st.one_of(
    st.tuples(st.just("deposit"), st.sampled_from(AGENTS), st.integers(1, 50_000)),
    st.tuples(st.just("lock"), st.sampled_from(AGENTS), st.sampled_from(AGENTS), st.integers(0, 20_000), st.booleans()),
    st.tuples(st.just("settle"), st.integers(0, 1_000), st.booleans()),
    st.tuples(st.just("advance"), st.sampled_from([1, 30, 61, 3_600, 86_400])),
    st.tuples(st.just("expire"), st.integers(0, SHARDS - 1)),
    st.tuples(st.just("rebuild"), st.integers(0, SHARDS - 1)),
)


@given(program=st.lists(operation, max_size=60), cap_micros=st.sampled_from([None, 30_000]))
def test_random_programs_over_shards_conserve_money_and_replay_exactly(tmp_path_factory, program, cap_micros):
    driver = Driver(tmp_path_factory.mktemp("shards"), cap_micros=cap_micros)
    for op in program:
        kind = op[0]
        if kind == "deposit":
            shard = driver.shards[shard_of(op[1], SHARDS)]
            driver.record(shard.deposit(op[1], op[2], driver.now_us, "live"))
        elif kind == "lock":
            driver.lock(op[1], op[2], op[3], op[4])
        elif kind == "settle":
            driver.settle(op[1], op[2])
        elif kind == "advance":
            driver.now_us += op[1] * 1_000_000
        elif kind == "expire":
            driver.record(driver.shards[op[1]].expire_due(driver.now_us, "live"))
        else:
            driver.shards[op[1]].rebuild()  # everything it made is written: the rebuild equals it
        driver.check_conserved()
    driver.writer.close()

    for shard in driver.shards:  # each shard's replay equals its live state
        live = shard.snapshot(driver.now_us)
        rebuilt = ShardCore(shard.spec)
        assert rebuilt.snapshot(driver.now_us) == live
    merged = merge_snapshots([s.snapshot(driver.now_us) for s in driver.shards])
    book = EscrowBook(BudgetBook(default_cap_micros=cap_micros, track_balances=True), escrow_timeout_s=60)
    replay_file(book, driver.path)
    replayed = snapshot(book, driver.now_us)
    for key in ("locked_total_micros", "deposits_total_micros"):
        assert replayed[key] == merged[key], key
    for key in ("balances_micros", "open_escrows", "used_today_micros"):
        assert nonzero(replayed[key]) == nonzero(merged[key]), key
    assert sum(merged["balances_micros"].values()) + merged["locked_total_micros"] == merged["deposits_total_micros"]
    if driver.path.exists():
        result = verify(driver.path)
        assert result.ok, result.problems


def test_a_credit_already_replayed_by_a_rebuild_is_not_applied_twice(tmp_path):
    driver = Driver(tmp_path, cap_micros=None)
    source = "agent-0"
    target = next(a for a in AGENTS if shard_of(a, SHARDS) != shard_of(source, SHARDS))
    holder = driver.shards[shard_of(target, SHARDS)]
    driver.record(driver.shards[shard_of(source, SHARDS)].deposit(source, 100, driver.now_us, "live"))
    driver.lock(source, target, 40, reject=False)
    task_id = next(iter(driver.open))
    answer = driver.shards[shard_of(source, SHARDS)].settle_batch([(task_id, True, None)], driver.now_us, "live")
    first_seq = driver.writer.next_seq
    driver.writer.append_encoded(answer[1])
    (agent, amount, index), = answer[3]
    holder.rebuild()  # the release is on disk: the rebuild credits it
    assert holder.snapshot(driver.now_us)["balances_micros"][target] == 40
    assert holder.credit([(agent, amount, first_seq + index)]) == 0  # the coordinator's retry changes nothing
    assert holder.snapshot(driver.now_us)["balances_micros"][target] == 40
