"""@monetize: lock -> release on return, refund on raise (then re-raise), in paper mode too."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from ledger.reader import read_events

from mesh import (
    InvalidAmountError,
    InvalidArgumentError,
    PaymentRequiredError,
    TollboothConfig,
    TollRejectedError,
    get_tollbooth,
    get_usage,
    monetize,
    reset_usage,
)


@pytest.fixture
def booth(ledger_path):
    return get_tollbooth(TollboothConfig(ledger_path=ledger_path))


def kinds(path):
    return [orjson.loads(line)["kind"] for line in path.read_bytes().splitlines()]


def test_sync_function_locks_then_releases_in_paper_mode(booth, ledger_path):
    @monetize(price_usd=0.01)
    def summarize(text: str) -> str:
        return text[:5]

    assert summarize("hello world") == "hello"
    assert kinds(ledger_path) == ["lock", "release"]
    stats = booth.get_stats()
    assert stats["released_micros"] == 10_000 and stats["active_escrows"] == 0
    assert summarize.__name__ == "summarize" and summarize.tollbooth_rail == "paper"


def test_raising_function_is_refunded_and_the_error_re_raised(booth, ledger_path):
    @monetize(price_usd=0.05)
    def broken() -> None:
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        broken()
    events = read_events(ledger_path).events  # a v2 line omits its null fields: the reader fills them
    assert [(e["kind"], e["reason"]) for e in events] == [("lock", None), ("refund", "handler_error")]
    assert booth.get_stats()["refunded_micros"] == 50_000


async def test_async_function(booth, ledger_path):
    @monetize(price_usd="0.002", source_agent="planner", target_agent="search")
    async def search(query: str) -> list[str]:
        await asyncio.sleep(0)
        return [query]

    @monetize(price_usd="0.002")
    async def fails() -> None:
        raise RuntimeError("nope")

    assert await search("x") == ["x"]
    with pytest.raises(RuntimeError):
        await fails()
    assert kinds(ledger_path) == ["lock", "release", "lock", "refund"]
    first = orjson.loads(ledger_path.read_bytes().splitlines()[0])
    assert first["source_agent"] == "planner" and first["target_agent"] == "search"


def test_over_the_cap_the_function_does_not_run(ledger_path):
    get_tollbooth(TollboothConfig(ledger_path=ledger_path, max_daily_toll_per_agent="0.02"))
    runs = []

    @monetize(price_usd=0.01)
    def work() -> None:
        runs.append(1)

    work()
    work()
    with pytest.raises(TollRejectedError) as info:
        work()
    assert info.value.record.reason == "over_daily_cap"
    assert len(runs) == 2


def test_payment_required_is_its_own_error(ledger_path):
    get_tollbooth(TollboothConfig(ledger_path=ledger_path, paper_mode=False, require_payment_before_route=True))

    @monetize(price_usd=0.01)
    def work() -> None:
        raise AssertionError("must not run")

    with pytest.raises(PaymentRequiredError):
        work()


def test_usage_counts(booth):
    @monetize()
    def ping() -> str:
        return "pong"

    for _ in range(3):
        ping()
    key = next(iter(get_usage(ping)))
    assert get_usage(ping) == {key: 3} and key.endswith("ping")
    assert get_usage()[key] == 3
    reset_usage()
    assert get_usage(ping) == {key: 0}


def test_many_calls_get_distinct_task_ids(booth):
    @monetize(price_usd=0)
    def noop() -> None:
        return None

    for _ in range(50):
        noop()
    assert booth.get_stats()["escrow_released"] == 50


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"price_usd": -1}, InvalidAmountError),
        ({"price_usd": 0.0000001}, InvalidAmountError),
        ({"rail": "ap4m"}, InvalidArgumentError),
        ({"source_agent": ""}, InvalidArgumentError),
    ],
)
def test_bad_decoration_fails_at_decoration_time(kwargs, error):
    with pytest.raises(error):
        monetize(**kwargs)


def test_a_very_long_function_name_still_gets_a_valid_task_id(booth):
    def work() -> int:
        return 1

    work.__qualname__ = "Outer." * 80 + "work"
    assert monetize(price_usd=0.01)(work)() == 1
    assert booth.get_stats()["escrow_released"] == 1
