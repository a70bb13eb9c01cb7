"""The seed-compatible Tollbooth: statuses, idempotency, caps, x402, expiry, ledger lines."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from mesh import (
    ConfigError,
    InvalidAmountError,
    InvalidArgumentError,
    InvalidTypeError,
    LedgerError,
    SettlementStatus,
    Tollbooth,
    TollboothConfig,
    TollboothMode,
    TollmeshError,
)

SEED_STATS_KEYS = {
    "messages_charged", "total_usd", "total_tokens", "escrow_locked", "escrow_released",
    "escrow_refunded", "paper_mode", "active_escrows", "total_records",
}


def lines(path):
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


async def test_paper_mode_charge_is_released_at_once_with_one_ledger_line(make_booth, ledger_path):
    booth = make_booth(paper_mode=True, toll_per_message_usd=0.01)
    record = await booth.charge("t1", "alice", "bob")
    assert record.status is SettlementStatus.RELEASED
    assert record.amount_micros == 10_000 and record.amount_usd == 0.01
    [event] = lines(ledger_path)
    assert event["kind"] == "paper_release" and event["status"] == "released"
    assert event["amount_micros"] == 10_000 and event["amount_usd"] == 0.01
    assert {"task_id", "source_agent", "target_agent", "amount_usd", "status", "created_at"} <= event.keys()


async def test_live_lock_release_refund(make_booth, ledger_path):
    booth = make_booth()
    locked = await booth.charge("t1", "alice", "bob")
    assert locked.status is SettlementStatus.ESCROW_LOCKED
    released = await booth.release("t1")
    assert released.status is SettlementStatus.RELEASED and released.settled_at
    assert await booth.release("t1") == released
    assert await booth.refund("t1") == released
    await booth.charge("t2", "alice", "bob")
    refunded = await booth.refund("t2")
    assert refunded.status is SettlementStatus.REFUNDED and refunded.reason == "refunded_by_caller"
    assert await booth.release("t2") == refunded
    assert [e["kind"] for e in lines(ledger_path)] == ["lock", "release", "lock", "refund"]
    assert [e["seq"] for e in lines(ledger_path)] == [0, 1, 2, 3]


async def test_unknown_task_id_gives_none(make_booth):
    booth = make_booth()
    assert await booth.release("nope") is None
    assert await booth.refund("nope") is None
    assert booth.get_record("nope") is None


async def test_charging_twice_returns_the_first_record_and_writes_nothing(make_booth, ledger_path):
    booth = make_booth()
    first = await booth.charge("t1", "alice", "bob")
    again = await booth.charge("t1", "carol", "dave", amount_usd=5)
    assert again is first
    assert len(lines(ledger_path)) == 1
    assert booth.get_stats()["messages_charged"] == 1


async def test_payment_required_gives_pending_then_a_paid_retry_locks(make_booth):
    booth = make_booth(require_payment_before_route=True)
    pending = await booth.charge("t1", "alice", "bob")
    assert pending.status is SettlementStatus.PENDING and pending.reason == "payment_required"
    assert booth.get_stats()["escrow_locked"] == 0
    paid = await booth.charge("t1", "alice", "bob", payer_wallet="0xabc", tx_signature="sig")
    assert paid.status is SettlementStatus.ESCROW_LOCKED


async def test_over_daily_cap_fails_and_a_refund_gives_room_back(make_booth):
    booth = make_booth(toll_per_message_usd="0.40", max_daily_toll_per_agent=1)
    assert (await booth.charge("t1", "alice", "bob")).status is SettlementStatus.ESCROW_LOCKED
    assert (await booth.charge("t2", "alice", "bob")).status is SettlementStatus.ESCROW_LOCKED
    over = await booth.charge("t3", "alice", "bob")
    assert over.status is SettlementStatus.FAILED and over.reason == "over_daily_cap"
    assert (await booth.charge("t4", "carol", "bob")).status is SettlementStatus.ESCROW_LOCKED
    await booth.refund("t2")
    assert (await booth.charge("t5", "alice", "bob")).status is SettlementStatus.ESCROW_LOCKED
    await booth.release("t1")
    assert (await booth.charge("t6", "alice", "bob")).reason == "over_daily_cap"


async def test_days_roll_over_by_themselves(make_booth, clock):
    booth = make_booth(toll_per_message_usd=1, max_daily_toll_per_agent=1)
    await booth.charge("t1", "alice", "bob")
    await booth.release("t1")
    assert (await booth.charge("t2", "alice", "bob")).reason == "over_daily_cap"
    clock.advance(86_400)
    assert (await booth.charge("t3", "alice", "bob")).status is SettlementStatus.ESCROW_LOCKED


async def test_reset_daily_is_the_seeds_manual_rollover(make_booth):
    booth = make_booth(toll_per_message_usd=1, max_daily_toll_per_agent=1)
    await booth.charge("t1", "alice", "bob")
    booth.reset_daily()
    assert (await booth.charge("t2", "alice", "bob")).status is SettlementStatus.ESCROW_LOCKED


async def test_per_agent_caps_and_no_cap(make_booth):
    booth = make_booth(toll_per_message_usd=1, max_daily_toll_per_agent=None, agent_daily_caps_usd={"alice": "1"})
    await booth.charge("t1", "alice", "bob")
    assert (await booth.charge("t2", "alice", "bob")).reason == "over_daily_cap"
    for n in range(20):
        assert (await booth.charge(f"c{n}", "carol", "bob")).status is SettlementStatus.ESCROW_LOCKED


async def test_escrow_timeout_refunds_with_reason(make_booth, clock, ledger_path):
    booth = make_booth(escrow_timeout_s=10)
    await booth.charge("t1", "alice", "bob")
    clock.advance(9.999)
    assert booth.get_record("t1").status is SettlementStatus.ESCROW_LOCKED
    clock.advance(0.001)
    expired = await booth.release("t1")
    assert expired.status is SettlementStatus.REFUNDED and expired.reason == "escrow_timeout"
    assert [e["kind"] for e in lines(ledger_path)] == ["lock", "expire"]
    stats = booth.get_stats()
    assert stats["escrow_expired"] == 1 and stats["active_escrows"] == 0


async def test_balances_conserve_and_refuse_overdraft(make_booth):
    booth = make_booth(track_balances=True, toll_per_message_usd="0.6", max_daily_toll_per_agent=None)
    booth.deposit("alice", 1)
    unknown = await booth.charge("t0", "mallory", "bob")
    assert unknown.reason == "unknown_agent"
    await booth.charge("t1", "alice", "bob")
    assert (await booth.charge("t2", "alice", "bob")).reason == "insufficient_funds"
    await booth.release("t1")
    assert booth.balance_micros("alice") == 400_000 and booth.balance_micros("bob") == 600_000


async def test_stats_have_the_seeds_keys(make_booth):
    booth = make_booth(toll_per_message_usd=0.25, toll_per_message_tokens=3)
    await booth.charge("t1", "a", "b")
    await booth.charge("t2", "a", "b")
    await booth.release("t1")
    stats = booth.get_stats()
    assert SEED_STATS_KEYS <= stats.keys()
    assert stats["messages_charged"] == 2 and stats["total_usd"] == 0.5 and stats["total_micros"] == 500_000
    assert stats["escrow_locked"] == 2 and stats["escrow_released"] == 1 and stats["active_escrows"] == 1
    assert stats["total_tokens"] == 6 and stats["paper_mode"] is False


def test_env_overrides_the_mode(monkeypatch, ledger_path):
    monkeypatch.setenv("TOLLBOOTH_PAPER_MODE", "0")
    config = TollboothConfig(ledger_path=ledger_path)
    assert config.paper_mode is False and config.mode is TollboothMode.LIVE
    monkeypatch.setenv("TOLLBOOTH_PAPER_MODE", "true")
    config = TollboothConfig(ledger_path=ledger_path, paper_mode=False)
    assert config.paper_mode is True and config.mode is TollboothMode.PAPER


def test_mode_and_paper_mode_agree(ledger_path):
    assert TollboothConfig(mode="live").paper_mode is False
    assert TollboothConfig(paper_mode=False).mode is TollboothMode.LIVE
    assert TollboothConfig().paper_mode is True


# -- x402 verifier -----------------------------------------------------------------


async def test_rejecting_verifier_fails_the_charge(make_booth):
    booth = make_booth()
    seen = []

    async def verifier(wallet, signature, amount_usd):
        seen.append((wallet, signature, amount_usd))
        return signature == "good"

    booth.set_x402_verifier(verifier)
    bad = await booth.charge("t1", "a", "b", payer_wallet="0xw", tx_signature="bad")
    assert bad.status is SettlementStatus.FAILED and bad.reason == "x402_rejected"
    good = await booth.charge("t2", "a", "b", payer_wallet="0xw", tx_signature="good")
    assert good.status is SettlementStatus.ESCROW_LOCKED
    assert seen == [("0xw", "bad", 0.001), ("0xw", "good", 0.001)]


@pytest.mark.parametrize(
    ("verifier", "reason"),
    [
        (lambda w, s, a: 1 / 0, "x402_error"),
        (lambda w, s, a: "yes", "x402_error"),
        (lambda w, s, a: None, "x402_error"),
        (lambda w, s, a: False, "x402_rejected"),
        (lambda w, s, a: time.sleep(5) or True, "x402_timeout"),
    ],
)
def test_misbehaving_sync_verifiers_fail_closed(make_booth, verifier, reason):
    booth = make_booth(x402_verify_timeout_s=0.2)
    booth.set_x402_verifier(verifier)
    sync = booth.charge_sync("t1", "a", "b", payer_wallet="w", tx_signature="s")
    assert sync.status is SettlementStatus.FAILED and sync.reason == reason
    from_async = asyncio.run(booth.charge("t2", "a", "b", payer_wallet="w", tx_signature="s"))
    assert from_async.status is SettlementStatus.FAILED and from_async.reason == reason


async def test_hanging_async_verifier_times_out(make_booth):
    booth = make_booth(x402_verify_timeout_s=0.1)

    async def hangs(wallet, signature, amount_usd):
        await asyncio.sleep(60)
        return True

    async def raises(wallet, signature, amount_usd):
        raise ConnectionError("facilitator down")

    booth.set_x402_verifier(hangs)
    assert (await booth.charge("t1", "a", "b", "w", "s")).reason == "x402_timeout"
    assert booth.charge_sync("t2", "a", "b", "w", "s").reason == "x402_timeout"
    booth.set_x402_verifier(raises)
    assert (await booth.charge("t3", "a", "b", "w", "s")).reason == "x402_error"
    assert booth.charge_sync("t4", "a", "b", "w", "s").reason == "x402_error"
    assert booth.get_stats()["rejected_by_reason"] == {"x402_timeout": 2, "x402_error": 2}


async def test_verifier_runs_only_with_a_payment_and_not_callable_is_refused(make_booth):
    booth = make_booth()
    booth.set_x402_verifier(lambda w, s, a: False)
    assert (await booth.charge("t1", "a", "b")).status is SettlementStatus.ESCROW_LOCKED
    with pytest.raises(InvalidTypeError):
        booth.set_x402_verifier("not callable")


# -- bad input -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "named"),
    [
        ({"task_id": ""}, InvalidArgumentError, "task_id"),
        ({"task_id": 5}, InvalidTypeError, "task_id"),
        ({"task_id": "x" * 257}, InvalidArgumentError, "task_id"),
        ({"source_agent": None}, InvalidTypeError, "source_agent"),
        ({"target_agent": ""}, InvalidArgumentError, "target_agent"),
        ({"payer_wallet": 7}, InvalidTypeError, "payer_wallet"),
        ({"amount_usd": -1}, InvalidAmountError, "amount_usd"),
        ({"amount_usd": float("nan")}, InvalidAmountError, "amount_usd"),
        ({"amount_usd": 0.0000001}, InvalidAmountError, "amount_usd"),
        ({"escrow": "yes"}, InvalidTypeError, "escrow"),
    ],
)
async def test_bad_charge_arguments_raise_and_write_nothing(make_booth, ledger_path, kwargs, error, named):
    booth = make_booth()
    call = {"task_id": "t1", "source_agent": "a", "target_agent": "b", **kwargs}
    with pytest.raises(error) as info:
        await booth.charge(**call)
    assert named in str(info.value) and isinstance(info.value, TollmeshError)
    assert not ledger_path.exists() or ledger_path.read_bytes() == b""
    assert booth.get_stats()["total_records"] == 0


async def test_bad_refund_reason_is_refused(make_booth):
    booth = make_booth()
    await booth.charge("t1", "a", "b")
    with pytest.raises(InvalidArgumentError, match="reason"):
        await booth.refund("t1", reason="because")
    assert booth.get_record("t1").status is SettlementStatus.ESCROW_LOCKED


@pytest.mark.parametrize(
    "options",
    [
        {"toll_per_message_usd": -0.01}, {"toll_per_message_usd": "abc"}, {"max_daily_toll_per_agent": float("inf")},
        {"escrow_timeout_s": 0}, {"x402_verify_timeout_s": -1}, {"ledger_fsync": "sometimes"},
        {"agent_daily_caps_usd": {"a": -1}}, {"no_such_field": 1}, {"max_settled_records": -1},
    ],
)
def test_bad_config_is_a_config_error_naming_the_field(options):
    with pytest.raises(ConfigError) as info:
        TollboothConfig(**options)
    assert next(iter(options)) in str(info.value)


def test_bad_config_assignment_is_refused():
    config = TollboothConfig()
    with pytest.raises(ConfigError, match="toll_per_message_usd"):
        config.toll_per_message_usd = -1
    assert config.toll_per_message_usd == 0.001


def test_config_must_be_a_config():
    with pytest.raises(InvalidTypeError):
        Tollbooth({"paper_mode": False})


# -- the ledger --------------------------------------------------------------------


async def test_a_failing_ledger_write_changes_nothing(make_booth, ledger_path):
    booth = make_booth()
    await booth.charge("t1", "a", "b")
    booth._writer.jsonl.close()  # the disk goes away
    with pytest.raises(LedgerError):
        await booth.charge("t2", "a", "b")
    with pytest.raises(LedgerError):
        await booth.release("t1")
    assert booth.get_record("t2") is None
    assert booth.get_record("t1").status is SettlementStatus.ESCROW_LOCKED
    stats = booth.get_stats()
    assert stats["messages_charged"] == 1 and stats["escrow_released"] == 0


async def test_a_new_booth_restores_its_state_from_the_ledger(make_booth, clock):
    first = make_booth(track_balances=True, toll_per_message_usd=1, max_daily_toll_per_agent=2)
    first.deposit("alice", 10)
    await first.charge("t1", "alice", "bob")
    await first.charge("t2", "alice", "bob")
    await first.release("t1")
    before = first.snapshot()
    first.close()
    second = make_booth(track_balances=True, toll_per_message_usd=1, max_daily_toll_per_agent=2)
    assert second.snapshot() == before
    assert (await second.charge("t3", "alice", "bob")).reason == "over_daily_cap"
    assert (await second.charge("t1", "alice", "bob")).status is SettlementStatus.RELEASED
    assert (await second.release("t2")).status is SettlementStatus.RELEASED
    assert second.balance_micros("bob") == 2_000_000


async def test_a_torn_last_line_is_tolerated_and_marked(make_booth, ledger_path):
    first = make_booth()
    await first.charge("t1", "a", "b")
    first.close()
    with open(ledger_path, "ab") as f:
        f.write(b'{"v":1,"seq":1,"kind":"rel')  # the crash
    second = make_booth()
    assert second.get_record("t1").status is SettlementStatus.ESCROW_LOCKED
    await second.release("t1")
    raw = ledger_path.read_bytes().splitlines()
    assert raw[1] == b'{"v":1,"seq":1,"kind":"rel'
    events = [orjson.loads(line) for line in raw[2:]]
    assert [(e["kind"], e["seq"]) for e in events] == [("recover", 1), ("release", 2)]
    assert events[0]["torn_bytes"] == len(raw[1])
    second.close()  # one writer at a time holds a ledger
    third = make_booth()
    assert third.get_record("t1").status is SettlementStatus.RELEASED


def test_closed_booth_refuses_changes(make_booth):
    booth = make_booth()
    booth.close()
    with pytest.raises(LedgerError, match="closed"):
        booth.charge_sync("t1", "a", "b")


def test_ledger_can_be_disabled(tmp_path, clock):
    booth = Tollbooth(TollboothConfig(ledger_enabled=False, ledger_path=tmp_path / "x.jsonl"), clock=clock)
    assert booth.charge_sync("t1", "a", "b").status is SettlementStatus.RELEASED
    assert not (tmp_path / "x.jsonl").exists()


def test_settled_records_are_bounded(make_booth):
    booth = make_booth(max_settled_records=3, max_daily_toll_per_agent=None)
    for n in range(10):
        booth.charge_sync(f"t{n}", "a", "b")
        booth.release_sync(f"t{n}")
    assert booth.get_stats()["total_records"] == 3
    assert booth.get_record("t9") is not None and booth.get_record("t0") is None


def test_deposits_need_balances(make_booth, ledger_path):
    booth = make_booth()
    with pytest.raises(InvalidArgumentError, match="track_balances"):
        booth.deposit("alice", 1)
    assert not ledger_path.exists() or ledger_path.read_bytes() == b""


def test_switching_paper_mode_later_is_what_the_booth_and_its_ledger_follow(make_booth, ledger_path):
    booth = make_booth(paper_mode=True)
    booth.config.paper_mode = False
    assert booth.charge_sync("t1", "a", "b").status is SettlementStatus.ESCROW_LOCKED
    assert lines(ledger_path)[-1]["mode"] == "live"
