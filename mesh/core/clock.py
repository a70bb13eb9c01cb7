"""Injectable clocks: real UTC time for production, a manual clock for simulations and tests.

The core works in integer microseconds since the Unix epoch (``ts_us``), so a
replay computes exactly the same days and deadlines as the live run. A *day* is
the number of whole days since the epoch, so caps roll over at UTC midnight on
the system clock and at simulated midnight on a :class:`ManualClock`.

>>> clock = ManualClock(start_s=86_400 * 3 - 1)
>>> day_of(now_us(clock))
2
>>> clock.advance(1)
>>> day_of(now_us(clock))
3

A clock's time is a finite number of seconds from the epoch to the end of year 9999
(:data:`END_TIME_S`, the last instant ISO text and Python's datetime can name):
``ManualClock(float("nan"))`` or ``clock.advance(float("inf"))`` raise.
"""

from __future__ import annotations

import math
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

from mesh.core.errors import InvalidArgumentError, InvalidTypeError

SECONDS_PER_DAY = 86_400
US_PER_SECOND = 1_000_000
US_PER_DAY = SECONDS_PER_DAY * US_PER_SECOND
#: 10000-01-01T00:00:00Z: every time tollmesh stamps is before it (ISO text and datetime end at year 9999).
END_TIME_S = 253_402_300_800


class Clock(Protocol):
    """Anything with ``now_s()``: seconds since the Unix epoch, UTC."""

    def now_s(self) -> float: ...


class SystemClock:
    """The machine's UTC wall clock."""

    def now_s(self) -> float:
        return time.time()


class ManualClock:
    """A clock that moves only when told to; thread-safe; never moves backwards."""

    def __init__(self, start_s: float = 0.0) -> None:
        self._now_s = check_time_s("start_s", start_s)
        self._lock = threading.Lock()

    def now_s(self) -> float:
        return self._now_s

    def advance(self, seconds: float) -> None:
        """Move on by ``seconds`` (a finite number, 0 or more; the time must stay before :data:`END_TIME_S`)."""
        check_seconds("seconds", seconds)
        if not seconds >= 0:
            raise InvalidArgumentError("seconds", seconds, "a clock only moves forward")
        with self._lock:
            self._now_s = check_time_s("seconds", self._now_s + seconds, given=seconds)

    def set(self, now_s: float) -> None:
        """Move on to ``now_s`` (not before the clock's time, before :data:`END_TIME_S`)."""
        check_time_s("now_s", now_s)
        with self._lock:
            if not now_s >= self._now_s:
                raise InvalidArgumentError("now_s", now_s, "a clock only moves forward")
            self._now_s = float(now_s)


def check_time_s(field: str, now_s: Any, *, given: Any = None) -> float:
    """``now_s`` as a float of seconds, if it is a time a clock may show (see the module doc).

    >>> check_time_s("start_s", 86_400)
    86400.0
    >>> check_time_s("start_s", float("nan"))
    Traceback (most recent call last):
    ...
    mesh.core.errors.InvalidArgumentError: start_s=nan: must be a finite number of seconds
    """
    check_seconds(field, now_s)
    shown = now_s if given is None else given
    if not 0 <= now_s < END_TIME_S:
        raise InvalidArgumentError(
            field, shown, "the time must be from the Unix epoch (0) to the end of year 9999 UTC "
            f"(before {END_TIME_S} s)")
    return float(now_s)


def check_seconds(field: str, seconds: Any) -> None:
    """Raise unless ``seconds`` is a finite int or float (not a bool, not NaN or infinite)."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise InvalidTypeError(field, seconds, "an int or float of seconds")
    if not math.isfinite(seconds):
        raise InvalidArgumentError(field, seconds, "must be a finite number of seconds")


def now_us(clock: Clock) -> int:
    """The clock's time as integer microseconds since the epoch."""
    return round(clock.now_s() * US_PER_SECOND)


def day_of(ts_us: int) -> int:
    """The day number (days since 1970-01-01 UTC) that ``ts_us`` falls in."""
    return ts_us // US_PER_DAY


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


_last_second: list = [None, ""]  # a one-entry cache: [whole second, its ISO text]


def iso_utc(ts_us: int, timespec: str = "microseconds") -> str:
    """ISO-8601 UTC text for ``ts_us``, to the second or to the microsecond.

    >>> iso_utc(1_500_000, "seconds"), iso_utc(1_500_000)
    ('1970-01-01T00:00:01+00:00', '1970-01-01T00:00:01.500000+00:00')
    """
    second, micros = divmod(ts_us, US_PER_SECOND)
    cached = _last_second
    if cached[0] != second:
        text = (_EPOCH + timedelta(seconds=second)).isoformat(timespec="seconds")[:-6]
        cached[0], cached[1] = second, text  # a racing thread writes the same pair
    text = cached[1]
    if timespec == "seconds":
        return text + "+00:00"
    return f"{text}.{micros:06d}+00:00"
