"""One exception hierarchy for every public boundary of tollmesh.

Every error names the field and the value it refuses, so a caller can fix the
call without reading our code. Errors subclass ``ValueError`` or ``TypeError``
where that is the natural Python category, so ``except ValueError`` keeps working.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mesh.core.records import TollRecord


class TollmeshError(Exception):
    """Base class of every error tollmesh raises on purpose."""


class InvalidArgumentError(TollmeshError, ValueError):
    """An argument has the right type but a value we refuse."""

    def __init__(self, field: str, value: Any, problem: str) -> None:
        self.field = field
        self.value = value
        self.problem = problem
        super().__init__(f"{field}={value!r}: {problem}")

    def __reduce__(self) -> tuple:  # rebuilt across processes (Ray sends errors back to callers)
        return (type(self), (self.field, self.value, self.problem))


class InvalidAmountError(InvalidArgumentError):
    """A money amount that is negative, NaN, infinite, too large or finer than 10^-6 USD."""


class InvalidTypeError(TollmeshError, TypeError):
    """An argument of a type we do not accept."""

    def __init__(self, field: str, value: Any, expected: str) -> None:
        self.field = field
        self.value = value
        self.expected = expected
        super().__init__(f"{field}={value!r}: expected {expected}, got {type(value).__name__}")

    def __reduce__(self) -> tuple:
        return (type(self), (self.field, self.value, self.expected))


class ConfigError(TollmeshError, ValueError):
    """A configuration that does not validate; the message lists every bad field."""


class LedgerError(TollmeshError):
    """The ledger could not be read or written; nothing was half-written."""


class TollRejectedError(TollmeshError):
    """A call was refused before it ran (over cap, x402 rejected...); ``record`` says why."""

    def __init__(self, record: TollRecord) -> None:
        self.record = record
        super().__init__(
            f"toll for task_id={record.task_id!r} was {record.status.value}"
            f" (reason: {record.reason or 'none'})"
        )

    def __reduce__(self) -> tuple:
        return (type(self), (self.record,))


class PaymentRequiredError(TollRejectedError):
    """A live booth requires payment before routing and the call carried none."""


class CallFailedError(TollmeshError):
    """A mesh call did not succeed: refused, or its handler failed (its toll refunded).

    ``result`` is the :class:`~mesh.calls.agent.CallResult`: its ``record`` says what happened
    to the toll and ``error`` what went wrong.
    """

    def __init__(self, result: Any) -> None:
        self.result = result
        record = result.record
        super().__init__(
            f"call {record.task_id!r} from {record.source_agent!r} to {record.target_agent!r}: "
            f"{record.status.value} ({record.reason or 'no reason'}){': ' + result.error if result.error else ''}"
        )

    def __reduce__(self) -> tuple:
        return (type(self), (self.result,))


class RayUnavailableError(TollmeshError):
    """Ray could not be started or reached, or its cluster went away (see :mod:`mesh.ray_session`)."""


class InvalidIdError(InvalidArgumentError):
    """An id (agent, task) or payment field that is not text every part of tollmesh can write:
    empty, too long, not encodable as UTF-8 (a lone surrogate) or holding a control character."""


class InvalidColumnError(InvalidTypeError):
    """A column (a numpy array or a list of ids) of the wrong kind, dtype, shape or length.

    ``value`` describes what was given (its type and dtype), not the whole column.
    """

    def __init__(self, field: str, value: Any, expected: str) -> None:
        self.field = field
        self.value = value
        self.expected = expected
        TypeError.__init__(self, f"{field}: expected {expected}, got {value}")
