"""The light agent every mesh of the bench hosts, and the messages it is sent.

``Echo`` returns its payload (the default price, $0.001 a call) and raises on a negative one, so a
message's outcome is chosen by the driver: the failure-rate sweep marks a seeded share of
payloads negative (the handler raises, the toll is refunded), the contention sweep sends a share
of the messages from a few hot sources whose daily cap holds :data:`HOT_CAP_CALLS` calls.

>>> ids = agent_ids(100)
>>> batch = make_messages(ids, 1_000, seed=7, failure_rate=0.1, hot_share=0.2, hot_sources=hot_ids("h", 5))
>>> sum(m.payload < 0 for m in batch.messages), sum(m.source.startswith("h-") for m in batch.messages)
(100, 200)
>>> batch.expected["released"] + batch.expected["refunded:handler_error"] + batch.expected["failed:over_daily_cap"]
1000
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any, NamedTuple

from mesh.calls.agent import Agent, Message

PRICE_MICROS = 1_000
HOT_CAP_USD = "0.01"
HOT_CAP_CALLS = 10  # HOT_CAP_USD / $0.001
HOT_SOURCES = 10  # hot sources a contention point sends from


class Echo(Agent):
    """Returns its payload; raises on a negative one (the toll is refunded)."""

    def handle(self, ctx: Any, payload: Any) -> Any:
        if payload < 0:
            raise ValueError(f"payload {payload} asks to fail")
        return payload


class Batch(NamedTuple):
    """Messages to send, and how many of them must end in each outcome (``status`` or ``status:reason``)."""

    messages: list[Message]
    expected: Counter


def agent_ids(count: int) -> list[str]:
    return [f"agent-{n:07d}" for n in range(count)]


def hot_ids(tag: str, count: int) -> list[str]:
    """Sources with the hot cap (see :data:`HOT_CAP_USD`), not agents: ``tag-0``, ``tag-1``..."""
    return [f"{tag}-{n}" for n in range(count)]


def make_messages(ids: list[str], count: int, *, seed: int, failure_rate: float = 0.0,
                  hot_share: float = 0.0, hot_sources: tuple[str, ...] | list[str] = ()) -> Batch:
    """``count`` messages between ``ids`` (source != target, seeded); ``round(failure_rate * count)`` of
    them fail in the handler, ``round(hot_share * count)`` (at most the rest) come from ``hot_sources``."""
    if failure_rate < 0 or hot_share < 0 or failure_rate + hot_share > 1:
        raise ValueError(f"failure_rate {failure_rate} and hot_share {hot_share}: each at least 0, together at most 1")
    rng = random.Random(seed)
    hot_count = round(hot_share * count) if hot_sources else 0
    failing = set(rng.sample(range(count), round(failure_rate * count)))
    hot_count = min(hot_count, count - len(failing))  # both rounded up (0.5 and 0.5 of 3: 2 and 2) must still fit
    hot_at = iter(sorted(rng.sample(sorted(set(range(count)) - failing), hot_count)))
    next_hot, messages, hot_calls = next(hot_at, -1), [], Counter()
    for n in range(count):
        source, target = rng.sample(ids, 2)
        if n == next_hot:
            source = hot_sources[n % len(hot_sources)]
            hot_calls[source] += 1
            next_hot = next(hot_at, -1)
        messages.append(Message(source, target, -n - 1 if n in failing else n))
    over_cap = sum(max(0, calls - HOT_CAP_CALLS) for calls in hot_calls.values())
    expected = Counter({"released": count - len(failing) - over_cap, "refunded:handler_error": len(failing),
                        "failed:over_daily_cap": over_cap})
    return Batch(messages, +expected)
