"""Run an x402 verifier hook safely: sync or async, bounded in time, failing closed.

A verifier is ``fn(wallet, signature, amount_usd) -> bool``, plain or ``async``.
:func:`verify_async` and :func:`verify_sync` never raise: they return None when
the payment verifies, or the :class:`~mesh.records.Reason` it failed for:
``x402_rejected`` (it returned False), ``x402_error`` (it raised or returned a
non-bool) or ``x402_timeout`` (it ran past ``timeout_s``). Sync verifiers run on
bounded daemon threads, so one that hangs costs a thread, never the caller.

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
from typing import Any, Awaitable, Callable, Optional, Union

from mesh.records import Reason

logger = logging.getLogger("tollmesh.x402")

Verifier = Callable[[str, str, float], Union[bool, Awaitable[bool]]]

#: At most this many verifier calls run at once on threads. A hung verifier holds its
#: (daemon) thread until it returns; calls beyond the limit fail closed as timeouts.
MAX_VERIFIER_THREADS = 8

_slots = threading.BoundedSemaphore(MAX_VERIFIER_THREADS)


def verify_sync(
    fn: Verifier, wallet: str, signature: str, amount_usd: float, *, timeout_s: float
) -> Optional[Reason]:
    """Run ``fn`` to completion from synchronous code; see the module doc."""
    future = _start_thread(timeout_s, _call_to_completion, fn, wallet, signature, amount_usd, timeout_s)
    if future is None:
        return _timed_out(timeout_s)
    try:
        return _judge(future.result(timeout=timeout_s))
    except concurrent.futures.TimeoutError:
        return _timed_out(timeout_s)
    except Exception as exc:  # noqa: BLE001 - the verifier's own failure: fail closed
        return _errored(exc)


async def verify_async(
    fn: Verifier, wallet: str, signature: str, amount_usd: float, *, timeout_s: float
) -> Optional[Reason]:
    """Run ``fn`` from a coroutine: async verifiers on the caller's loop, sync ones on threads."""
    try:
        if inspect.iscoroutinefunction(fn):
            outcome = await asyncio.wait_for(fn(wallet, signature, amount_usd), timeout_s)
        else:
            future = _start_thread(0, _call_to_completion, fn, wallet, signature, amount_usd, timeout_s)
            if future is None:
                return _timed_out(timeout_s)
            outcome = await asyncio.wait_for(asyncio.wrap_future(future), timeout_s)
        return _judge(outcome)
    except asyncio.TimeoutError:
        return _timed_out(timeout_s)
    except Exception as exc:  # noqa: BLE001 - the verifier's own failure: fail closed
        return _errored(exc)


def _call_to_completion(fn: Verifier, wallet: str, signature: str, amount_usd: float, timeout_s: float) -> Any:
    """Call ``fn``; if it hands back an awaitable, run it on a private loop with the timeout."""
    outcome = fn(wallet, signature, amount_usd)
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
    logger.error("x402 verifier returned %r, not a bool: failing closed", outcome)
    return Reason.X402_ERROR


def _timed_out(timeout_s: float) -> Reason:
    logger.error("x402 verifier ran past %.3f s: failing closed", timeout_s)
    return Reason.X402_TIMEOUT


def _errored(exc: BaseException) -> Reason:
    logger.error("x402 verifier raised %s: %s: failing closed", type(exc).__name__, exc)
    return Reason.X402_ERROR


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
