"""``@monetize``: put a toll on any function, sync or async.

Each call locks the price in escrow (in paper mode too), runs the function, then
releases the toll when it returns or refunds it when it raises (and re-raises).
A call the booth refuses (over the daily cap, no funds) raises
:class:`~mesh.core.errors.TollRejectedError` before the function runs.

>>> import tempfile, pathlib
>>> from mesh.booth.tollbooth import get_tollbooth, reset_tollbooth
>>> from mesh.booth.config import TollboothConfig
>>> reset_tollbooth()
>>> _ = get_tollbooth(TollboothConfig(ledger_path=pathlib.Path(tempfile.mkdtemp()) / "l.jsonl"))
>>> @monetize(price_usd=0.01)
... def double(x: int) -> int:
...     return 2 * x
>>> double(21), get_tollbooth().get_stats()["escrow_released"]
(42, 1)
>>> reset_tollbooth()
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import itertools
import os
import threading
from typing import Any, Callable, Optional, TypeVar

from mesh.core.errors import InvalidArgumentError, PaymentRequiredError, TollRejectedError
from mesh.core.ids import is_id
from mesh.core.money import UsdLike, format_usd, usd_to_micros
from mesh.core.records import Reason, SettlementStatus, TollRecord
from mesh.booth.tollbooth import Tollbooth, _check_id, get_tollbooth

F = TypeVar("F", bound=Callable[..., Any])

#: The seed's settlement rails. All settle through the same escrow; "stripe" and
#: "x402" name how the operator settles the netted tolls (see :func:`mesh.settle`).
RAILS = ("paper", "stripe", "x402")

_usage_counts: dict[str, int] = {}
_usage_lock = threading.Lock()
_call_ids = itertools.count(1)
_process_token = os.urandom(4).hex()


def monetize(
    price_usd: UsdLike = 0.001,
    *,
    source_agent: str = "caller",
    target_agent: str = "self",
    rail: str = "paper",
    booth: Optional[Tollbooth] = None,
) -> Callable[[F], F]:
    """Charge ``price_usd`` per call of the decorated function, through escrow.

    ``booth`` defaults to the process-wide :func:`~mesh.booth.tollbooth.get_tollbooth`,
    looked up at each call. ``rail`` is one of :data:`RAILS`.
    """
    price_micros = usd_to_micros(price_usd, field="price_usd")
    _check_id("source_agent", source_agent)
    _check_id("target_agent", target_agent)
    if rail not in RAILS:
        raise InvalidArgumentError("rail", rail, f"must be one of: {', '.join(RAILS)}")
    price_text = format_usd(price_micros)

    def decorator(fn: F) -> F:
        fn_key = _fn_key(fn)
        fn_tag = _id_part(fn_key)

        def lock() -> tuple[Tollbooth, str]:
            the_booth = booth or get_tollbooth()
            task_id = f"{fn_tag}:{_count_call(fn_key)}:{_process_token}"  # ids are at most 256 chars
            record = the_booth.charge_sync(
                task_id, source_agent, target_agent, amount_usd=price_text, escrow=True
            )
            _raise_if_refused(record)
            return the_booth, task_id

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                the_booth, task_id = lock()
                try:
                    result = await fn(*args, **kwargs)
                except BaseException:
                    the_booth.refund_sync(task_id, Reason.HANDLER_ERROR)
                    raise
                the_booth.release_sync(task_id)
                return result

            async_wrapper.tollbooth_rail = rail  # type: ignore[attr-defined]
            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            the_booth, task_id = lock()
            try:
                result = fn(*args, **kwargs)
            except BaseException:
                the_booth.refund_sync(task_id, Reason.HANDLER_ERROR)
                raise
            the_booth.release_sync(task_id)
            return result

        sync_wrapper.tollbooth_rail = rail  # type: ignore[attr-defined]
        return sync_wrapper  # type: ignore[return-value]

    return decorator


def get_usage(fn: Optional[Callable[..., Any]] = None) -> dict[str, int]:
    """Calls made so far per decorated function (``module.qualname``); pass ``fn`` for one."""
    with _usage_lock:
        if fn is not None:
            key = _fn_key(fn)
            return {key: _usage_counts.get(key, 0)}
        return dict(_usage_counts)


def reset_usage() -> None:
    """Forget all call counts (for tests)."""
    with _usage_lock:
        _usage_counts.clear()


def _raise_if_refused(record: TollRecord) -> None:
    if record.status is SettlementStatus.PENDING:
        raise PaymentRequiredError(record)
    if record.status is not SettlementStatus.ESCROW_LOCKED:
        raise TollRejectedError(record)


def _count_call(fn_key: str) -> int:
    with _usage_lock:
        count = _usage_counts.get(fn_key, 0) + 1
        _usage_counts[fn_key] = count
    return next(_call_ids)


def _id_part(fn_key: str) -> str:
    """The function's name as the start of its calls' task ids: its last 200 characters, or a digest
    of it when those would not make a valid id (a qualname set to text with control characters...)."""
    tail = fn_key[-200:]
    if is_id(tail):
        return tail
    return "fn-" + hashlib.blake2b(fn_key.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def _fn_key(fn: Callable[..., Any]) -> str:
    module = getattr(fn, "__module__", None) or "__unknown__"
    qualname = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", "fn")
    return f"{module}.{qualname}"
