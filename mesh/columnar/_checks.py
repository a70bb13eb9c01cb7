"""Strict checks of the columnar book's inputs: numpy dtypes, lengths, ranges; errors name the field.

>>> import numpy as np
>>> amounts("price_micros", np.array([1.5]), 1)
Traceback (most recent call last):
...
mesh.core.errors.InvalidColumnError: price_micros: expected an integer numpy array of micro-USD (money is int micros; a float price is refused), got a numpy array of dtype float64 and shape (1,)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mesh.core.clock import END_TIME_S, US_PER_SECOND
from mesh.core.errors import InvalidAmountError, InvalidArgumentError, InvalidColumnError, InvalidTypeError
from mesh.core.ids import check_id, is_id
from mesh.core.money import MAX_AMOUNT_MICROS

_END_US = END_TIME_S * US_PER_SECOND


def describe(value: Any) -> str:
    """What ``value`` is, for an error message (never the whole column)."""
    if isinstance(value, np.ndarray):
        return f"a numpy array of dtype {value.dtype} and shape {value.shape}"
    return f"a {type(value).__name__}"


def ids(field: str, values: Any) -> list[str]:
    """A list or tuple of valid ids (see :mod:`mesh.core.ids`), as a list; the first bad one is named by its index."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "UO" and values.ndim == 1:
        values = values.tolist()
    if not isinstance(values, (list, tuple)):
        raise InvalidColumnError(field, describe(values), "a list or tuple of str")
    if not all(map(is_id, values)):
        for index, value in enumerate(values):
            check_id(f"{field}[{index}]", value)
    return values if isinstance(values, list) else list(values)


def int_column(field: str, values: Any, n: int, what: str) -> np.ndarray:
    """A 1-D integer numpy array of length ``n`` (no bool, no float), as int64."""
    if not isinstance(values, np.ndarray) or values.dtype.kind not in "iu" or values.ndim != 1:
        raise InvalidColumnError(field, describe(values), what)
    if len(values) != n:
        raise InvalidArgumentError(field, f"{len(values)} values", f"must have one value per message ({n})")
    if values.dtype == np.uint64 and len(values) and values.max() > np.iinfo(np.int64).max:
        raise InvalidArgumentError(field, int(values.max()), "is too large for int64")
    return values.astype(np.int64, copy=False)


def amounts(field: str, values: Any, n: int) -> np.ndarray:
    """Integer micro-USD amounts, each from 0 to ``MAX_AMOUNT_MICROS``."""
    column = int_column(field, values, n, "an integer numpy array of micro-USD (money is int micros; a float price is refused)")
    if n:
        low, high = int(column.min()), int(column.max())
        if low < 0:
            raise InvalidAmountError(f"{field}[{int(np.argmin(column))}]", low, "must not be negative")
        if high > MAX_AMOUNT_MICROS:
            raise InvalidAmountError(f"{field}[{int(np.argmax(column))}]", high, f"must be at most {MAX_AMOUNT_MICROS} micros")
    return column


def indices(field: str, values: Any, n: int, count: int) -> np.ndarray:
    """Dense indices, each from 0 to ``count - 1`` (agents registered, or task rows), as int64."""
    column = int_column(field, values, n, "an integer numpy array of dense indices")
    if n:
        low, high = int(column.min()), int(column.max())
        if low < 0 or high >= count:
            bad = int(np.argmin(column)) if low < 0 else int(np.argmax(column))
            raise InvalidArgumentError(f"{field}[{bad}]", int(column[bad]), f"is not one of the {count} known (0 to {count - 1})")
    return column


def bools(field: str, values: Any, n: int) -> np.ndarray:
    if not isinstance(values, np.ndarray) or values.dtype != np.bool_ or values.ndim != 1:
        raise InvalidColumnError(field, describe(values), "a numpy array of bool")
    if len(values) != n:
        raise InvalidArgumentError(field, f"{len(values)} values", f"must have one value per message ({n})")
    return values


def reason_codes(field: str, values: Any, n: int, *, need: np.ndarray, reason_count: int) -> np.ndarray:
    """Reason codes (int8, see ``mesh.columnar._codes``), from 1 where ``need`` says, 0 or more elsewhere."""
    column = int_column(field, values, n, "an integer numpy array of reason codes")
    if n and (int(column.min()) < 0 or int(column.max()) > reason_count):
        bad = int(np.flatnonzero((column < 0) | (column > reason_count))[0])
        raise InvalidArgumentError(f"{field}[{bad}]", int(column[bad]), f"is not a reason code (1 to {reason_count})")
    missing = np.flatnonzero(need & (column == 0))
    if missing.size:
        raise InvalidArgumentError(f"{field}[{int(missing[0])}]", 0, "a refund needs a reason")
    return column.astype(np.int8)


def now(field: str, value: Any) -> int:
    """A time in integer microseconds since the epoch, before the end of year 9999."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise InvalidTypeError(field, value, "an int of microseconds since the epoch")
    value = int(value)
    if not 0 <= value < _END_US:
        raise InvalidArgumentError(field, value, f"must be from 0 to {_END_US - 1} microseconds")
    return value


def cap(field: str, value: Any) -> int | None:
    """A daily cap: None (no cap) or int micros."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidTypeError(field, value, "an int of micro-USD or None")
    if not 0 <= value <= MAX_AMOUNT_MICROS:
        raise InvalidAmountError(field, value, f"must be from 0 to {MAX_AMOUNT_MICROS} micros")
    return value
