"""Waiting for Ray to bring a killed actor back as a new process."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def answer_once_restarted(ask: Callable[[], dict[str, Any]], old_pid: int, deadline_s: float = 60.0) -> dict[str, Any]:
    """``ask()``'s answer once a new process gives it (its ``pid`` differs from ``old_pid``).

    ``ray.kill`` returns before the old process is gone, so the old process may still answer
    a while, and a restarting actor raises ``RayActorError`` (``ActorUnavailableError`` is one):
    both mean "not yet".
    """
    import ray

    started = time.monotonic()
    while time.monotonic() - started < deadline_s:
        try:
            answer = ask()
        except ray.exceptions.RayActorError:
            answer = None
        if answer is not None and answer["pid"] != old_pid:
            return answer
        time.sleep(0.2)
    raise AssertionError(f"the actor did not come back as a new process within {deadline_s} s")
