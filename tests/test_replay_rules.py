"""A replay applies what the ledger says happened, whatever today's configuration (issue 11, finding 6).

A booth reopened with a lower ``escrow_timeout_s``, lower caps, paper mode or payment rules
flipped rebuilds the same state and then follows its new rules; ``ledger verify`` agrees.
Balances tracking is the ledger's own: a booth that would write a ledger of two kinds (funds
checked on some locks, not on others) is refused with a clear ``ConfigError``, never bricked
by a replay error.
"""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import replay_file, snapshot, verify
from mesh import ConfigError, ManualClock, SettlementStatus, Tollbooth, TollboothConfig
from mesh.core.budget import BudgetBook
from mesh.core.clock import now_us
from mesh.core.escrow import EscrowBook

START_S = 1_767_225_600.0


def last_event(path):
    return orjson.loads(path.read_bytes().splitlines()[-1])


def replay_with(path, clock, **book):
    """A book of any configuration, replayed: it never raises on a ledger that verifies."""
    replayed = EscrowBook(BudgetBook(default_cap_micros=book.pop("cap", None), track_balances=book.pop("balances", False)),
                          escrow_timeout_s=book.pop("timeout_s", 300.0))
    replay_file(replayed, path)
    return snapshot(replayed, now_us(clock))


def test_a_lower_timeout_does_not_judge_history_again_and_applies_from_then_on(make_booth, ledger_path, clock):
    booth = make_booth(escrow_timeout_s=100)
    booth.charge_sync("t1", "a", "b")
    clock.advance(50)
    booth.release_sync("t1")  # released 50 s after its lock: past the new timeout, inside the old one
    booth.charge_sync("t2", "a", "b")
    clock.advance(5)
    before = booth.snapshot()
    booth.close()
    again = make_booth(escrow_timeout_s=10)  # t2 was locked 5 s ago: 5 s left under the new rule
    assert again.snapshot() == before
    assert again.charge_sync("t1", "a", "b").status is SettlementStatus.RELEASED
    clock.advance(4)
    assert again.expire_stale() == []
    clock.advance(1)
    [expired] = again.expire_stale()
    assert (expired.task_id, expired.reason) == ("t2", "escrow_timeout")
    again.close()
    assert verify(ledger_path).ok
    assert replay_with(ledger_path, clock, timeout_s=1) == replay_with(ledger_path, clock, timeout_s=None)


def test_an_expire_in_the_ledger_is_applied_as_written_under_a_longer_timeout(make_booth, ledger_path, clock):
    booth = make_booth(escrow_timeout_s=10)
    booth.charge_sync("t1", "a", "b")
    clock.advance(11)
    booth.expire_stale()
    booth.close()
    again = make_booth(escrow_timeout_s=None)
    record = again.charge_sync("t1", "a", "b")
    assert (record.status, record.reason) == (SettlementStatus.REFUNDED, "escrow_timeout")
    assert again.snapshot()["open_escrows"] == {}


def test_lower_caps_keep_what_was_locked_and_refuse_what_comes(make_booth, ledger_path, clock):
    booth = make_booth(max_daily_toll_per_agent=5, toll_per_message_usd=1)
    for n in range(4):
        booth.charge_sync(f"t{n}", "a", "b")
    booth.release_sync("t0")
    before = booth.snapshot()
    booth.close()
    again = make_booth(max_daily_toll_per_agent=1, toll_per_message_usd=1, agent_daily_caps_usd={"a": "0.5"})
    assert again.snapshot() == before  # 4 USD used today, over the new cap of 0.50: history stands
    assert again.charge_sync("t4", "a", "b").reason == "over_daily_cap"
    assert again.refund_sync("t1").status is SettlementStatus.REFUNDED
    assert again.charge_sync("t5", "c", "b").status is SettlementStatus.ESCROW_LOCKED  # the new default cap: 1 USD
    assert verify(ledger_path).ok
    assert replay_with(ledger_path, clock, cap=1) == replay_with(ledger_path, clock)


def test_paper_mode_and_payment_rules_flipped_both_ways(make_booth, ledger_path, clock):
    paper = make_booth(paper_mode=True)
    paper.charge_sync("t1", "a", "b")
    paper.close()
    live = make_booth(paper_mode=False, require_payment_before_route=True)
    assert live.charge_sync("t1", "a", "b").status is SettlementStatus.RELEASED
    assert live.charge_sync("t2", "a", "b").status is SettlementStatus.PENDING
    before = live.snapshot()
    live.close()
    again = make_booth(paper_mode=True)
    assert again.snapshot() == before
    assert again.charge_sync("t2", "a", "b").status is SettlementStatus.RELEASED  # the pending toll, paid now
    assert last_event(ledger_path)["mode"] == "paper"
    again.close()
    assert verify(ledger_path).ok


def test_balances_turned_off_on_a_ledger_that_tracks_them_is_refused_clearly(make_booth, ledger_path, clock):
    booth = make_booth(track_balances=True, max_daily_toll_per_agent=None)
    booth.deposit("a", 1)
    booth.charge_sync("t1", "a", "b")
    booth.close()
    size = ledger_path.stat().st_size
    with pytest.raises(ConfigError, match="track_balances=False, but the ledger .* tracks balances"):
        make_booth(track_balances=False)
    assert ledger_path.stat().st_size == size
    assert replay_with(ledger_path, clock, balances=False) == replay_with(ledger_path, clock, balances=True)
    again = make_booth(track_balances=True, max_daily_toll_per_agent=None)
    assert again.release_sync("t1").status is SettlementStatus.RELEASED
    assert again.balance_micros("b") == 1_000


def test_balances_turned_on_on_a_ledger_written_without_them_is_refused_clearly(make_booth, ledger_path, clock):
    booth = make_booth(track_balances=False)
    booth.charge_sync("t1", "a", "b")
    booth.close()
    with pytest.raises(ConfigError, match="track_balances=True, but the ledger .* was written without balances"):
        make_booth(track_balances=True)
    assert replay_with(ledger_path, clock, balances=True) == replay_with(ledger_path, clock, balances=False)


def test_a_ledger_that_decides_nothing_about_balances_takes_either(make_booth, ledger_path, clock):
    booth = make_booth(track_balances=True)
    assert booth.charge_sync("t1", "a", "b").reason == "unknown_agent"  # rejected: no deposit yet
    booth.close()
    assert make_booth(track_balances=False).charge_sync("t2", "a", "b").status is SettlementStatus.ESCROW_LOCKED
    assert verify(ledger_path).ok


@settings(max_examples=100, deadline=None)
@given(
    first=st.fixed_dictionaries({"timeout_s": st.sampled_from([None, 5.0, 60.0]), "cap": st.sampled_from([None, "0.003"]),
                                 "paper": st.booleans()}),
    second=st.fixed_dictionaries({"timeout_s": st.sampled_from([None, 1.0, 5.0, 600.0]),
                                  "cap": st.sampled_from([None, "0.001", "0.003"]), "paper": st.booleans()}),
    steps=st.lists(st.tuples(st.sampled_from(["charge", "charge", "release", "refund", "advance"]), st.integers(0, 3)),
                   max_size=25),
)
def test_any_config_reopens_any_ledger_to_the_same_state(tmp_path_factory, first, second, steps):
    path = tmp_path_factory.mktemp("reopen") / "toll_ledger.jsonl"
    clock = ManualClock(START_S)

    def booth_of(options):
        return Tollbooth(TollboothConfig(ledger_path=path, paper_mode=options["paper"], escrow_timeout_s=options["timeout_s"],
                                         max_daily_toll_per_agent=options["cap"]), clock=clock)

    booth = booth_of(first)
    for op, n in steps:
        if op == "advance":
            clock.advance(3.0 * n)
        elif op == "charge":
            booth.charge_sync(f"t{n}", "a", "b", escrow=True if n % 2 else None)
        else:
            getattr(booth, f"{op}_sync")(f"t{n}")
    before = booth.snapshot()
    booth.close()
    again = booth_of(second)  # never a replay error, whatever changed
    assert again.snapshot() == before
    for n in range(6):
        again.charge_sync(f"n{n}", "a", "b")
        clock.advance(1.0)
    again.expire_stale()
    after = again.snapshot()
    again.close()
    result = verify(path)
    assert result.ok, [str(p) for p in result.problems]
    assert replay_with(path, clock, timeout_s=second["timeout_s"]) == after
