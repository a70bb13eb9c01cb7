"""Run an x402 verifier hook safely: sync or async, bounded in time, failing closed.

A verifier is ``fn(wallet, signature, amount_usd) -> bool``, plain or ``async``.
:func:`verify_async` and :func:`verify_sync` never raise: they return None when
the payment verifies, or the :class:`~mesh.core.records.Reason` it failed for:
``x402_rejected`` (it returned False), ``x402_error`` (it raised or returned a
non-bool) or ``x402_timeout`` (it ran past ``timeout_s``). Sync verifiers run on
bounded daemon threads, so one that hangs costs a thread, never the caller.

A verifier that also has ``check_payment(task_id, wallet, signature, amount_micros)``
(a :class:`PaymentChecker`, such as :class:`mesh.x402.ExactEvmVerifier`) is asked that
instead: it answers None or the ``x402_*`` reason itself (``x402_expired``,
``x402_replayed``...), gets the exact amount, and the task id its payment is for (a
nonce seen again for the same task is that task's retry, not a replay). One with
``check_payments(items)`` too checks a whole batch on one thread (:func:`verify_many_async`).

>>> verify_sync(lambda wallet, sig, amount: amount == 0.01, "w", "s", 0.01, timeout_s=1.0) is None
True
>>> verify_sync(lambda wallet, sig, amount: 1, "w", "s", 0.01, timeout_s=1.0).value
'x402_error'
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import threading
from typing import Any, Awaitable, Callable, Optional, Protocol, Union, runtime_checkable

from mesh.core.records import Reason

logger = logging.getLogger("tollmesh.x402")

Verifier = Callable[[str, str, float], Union[bool, Awaitable[bool]]]

#: At most this many verifier calls run at once on threads. A hung verifier holds its
#: (daemon) thread until it returns; calls beyond the limit fail closed as timeouts.
MAX_VERIFIER_THREADS = 8

_slots = threading.BoundedSemaphore(MAX_VERIFIER_THREADS)

#: One payment to check in a batch: (task_id, wallet, signature, amount_micros).
PaymentItem = tuple[str, str, str, int]


@runtime_checkable
class PaymentChecker(Protocol):
    """A verifier that names why it refuses (see the module doc); ``check_payments`` is optional."""

    def check_payment(self, task_id: str, wallet: str, signature: str, amount_micros: int) -> Optional[Reason]:
        ...


def verify_sync(
    fn: Verifier, wallet: str, signature: str, amount_usd: float, *, timeout_s: float,
    task_id: str = "", amount_micros: Optional[int] = None,
) -> Optional[Reason]:
    """Run ``fn`` to completion from synchronous code; see the module doc."""
    call = _Call(fn, task_id, wallet, signature, amount_usd, amount_micros)
    future = _start_thread(timeout_s, _call_to_completion, call, timeout_s)
    if future is None:
        return _timed_out(timeout_s)
    try:
        return _judge(future.result(timeout=timeout_s))
    except concurrent.futures.TimeoutError:
        return _timed_out(timeout_s)
    except Exception as exc:  # noqa: BLE001 - the verifier's own failure: fail closed
        return _errored(exc)


async def verify_async(
    fn: Verifier, wallet: str, signature: str, amount_usd: float, *, timeout_s: float,
    task_id: str = "", amount_micros: Optional[int] = None,
) -> Optional[Reason]:
    """Run ``fn`` from a coroutine: async verifiers on the caller's loop, sync ones on threads."""
    call = _Call(fn, task_id, wallet, signature, amount_usd, amount_micros)
    try:
        if inspect.iscoroutinefunction(fn):
            outcome = await asyncio.wait_for(fn(wallet, signature, amount_usd), timeout_s)
        else:
            future = _start_thread(0, _call_to_completion, call, timeout_s)
            if future is None:
                return _timed_out(timeout_s)
            outcome = await asyncio.wait_for(asyncio.wrap_future(future), timeout_s)
        return _judge(outcome)
    except asyncio.TimeoutError:
        return _timed_out(timeout_s)
    except Exception as exc:  # noqa: BLE001 - the verifier's own failure: fail closed
        return _errored(exc)


async def verify_many_async(fn: Verifier, items: list[PaymentItem], *, timeout_s: float) -> list[Optional[Reason]]:
    """The reason each payment of a batch fails (None: it verified), in order; never raises.

    A verifier with ``check_payments`` gets the whole batch at once on one thread, within
    ``timeout_s`` (past it, or if it raises, every payment of the batch fails closed);
    any other is asked one payment at a time, concurrently (:func:`verify_async`).
    """
    check_payments = getattr(fn, "check_payments", None)
    if check_payments is None:
        return list(await asyncio.gather(*(
            verify_async(fn, wallet, signature, amount / 1e6, timeout_s=timeout_s, task_id=task_id, amount_micros=amount)
            for task_id, wallet, signature, amount in items
        )))
    deadline = asyncio.get_running_loop().time() + timeout_s
    try:
        future = await _start_thread_async(deadline, check_payments, items)
        if future is None:
            return [_timed_out(timeout_s)] * len(items)
        outcomes = await asyncio.wait_for(asyncio.wrap_future(future), max(deadline - asyncio.get_running_loop().time(), 0))
    except asyncio.TimeoutError:
        return [_timed_out(timeout_s)] * len(items)
    except Exception as exc:  # noqa: BLE001 - the verifier's own failure: fail closed
        return [_errored(exc)] * len(items)
    if not isinstance(outcomes, (list, tuple)) or len(outcomes) != len(items):
        logger.error("x402 verifier's check_payments answered %r for %d payments: failing closed", type(outcomes), len(items))
        return [Reason.X402_ERROR] * len(items)
    return [_judge(_passed(outcome)) for outcome in outcomes]


class _Call:
    """One payment to verify, and how to ask ``fn`` about it (its reasons, or the seed's bool)."""

    __slots__ = ("fn", "task_id", "wallet", "signature", "amount_usd", "amount_micros")

    def __init__(self, fn: Verifier, task_id: str, wallet: str, signature: str, amount_usd: float,
                 amount_micros: Optional[int]) -> None:
        self.fn, self.task_id, self.wallet, self.signature = fn, task_id, wallet, signature
        self.amount_usd = amount_usd
        self.amount_micros = round(amount_usd * 1_000_000) if amount_micros is None else amount_micros

    def __call__(self) -> Any:
        check = getattr(self.fn, "check_payment", None)
        if check is not None:
            return _passed(check(self.task_id, self.wallet, self.signature, self.amount_micros))
        return self.fn(self.wallet, self.signature, self.amount_usd)


def _passed(reason: Any) -> Any:
    """A checker's answer in the seed's terms: None (it verified) is True; a reason stays what it is."""
    return True if reason is None else reason


def _call_to_completion(call: _Call, timeout_s: float) -> Any:
    """Make the call; if it hands back an awaitable, run it on a private loop with the timeout."""
    outcome = call()
    if inspect.isawaitable(outcome):
        return asyncio.run(_await_with_timeout(outcome, timeout_s))
    return outcome


async def _await_with_timeout(awaitable: Awaitable[Any], timeout_s: float) -> Any:
    return await asyncio.wait_for(awaitable, timeout_s)


def _judge(outcome: Any) -> Optional[Reason]:
    if outcome is True:
        return None
    if outcome is False:
        return Reason.X402_REJECTED
    if isinstance(outcome, Reason) and outcome.value.startswith("x402_"):
        return outcome
    logger.error("x402 verifier returned %r, not a bool: failing closed", outcome)
    return Reason.X402_ERROR


def _timed_out(timeout_s: float) -> Reason:
    logger.error("x402 verifier ran past %.3f s: failing closed", timeout_s)
    return Reason.X402_TIMEOUT


def _errored(exc: BaseException) -> Reason:
    logger.error("x402 verifier raised %s: %s: failing closed", type(exc).__name__, exc)
    return Reason.X402_ERROR


async def _start_thread_async(deadline: float, fn: Callable[..., Any], *args: Any) -> Optional[concurrent.futures.Future]:
    """:func:`_start_thread` from a coroutine: waits for a free slot until ``deadline`` (loop time) without blocking the loop."""
    loop = asyncio.get_running_loop()
    while True:
        future = _start_thread(0, fn, *args)
        if future is not None or loop.time() >= deadline:
            return future
        await asyncio.sleep(0.001)


def _start_thread(wait_s: float, fn: Callable[..., Any], *args: Any) -> Optional[concurrent.futures.Future]:
    """Run ``fn(*args)`` on a daemon thread; None if no slot frees up within ``wait_s``."""
    acquired = _slots.acquire(timeout=wait_s) if wait_s > 0 else _slots.acquire(blocking=False)
    if not acquired:
        return None
    future: concurrent.futures.Future = concurrent.futures.Future()

    def run() -> None:
        try:
            outcome, error = fn(*args), None
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
            outcome, error = None, exc
        finally:
            _slots.release()
        if future.set_running_or_notify_cancel():  # False: the caller gave up (timed out) already
            future.set_exception(error) if error is not None else future.set_result(outcome)

    threading.Thread(target=run, name="tollmesh-x402", daemon=True).start()
    return future
