"""Exact money: integer micro-USD (10^-6 USD, the base unit of USDC).

Floats are accepted only at the edges and converted through their shortest
decimal representation, so ``0.1`` is exactly 100_000 micros. Nothing finer than
one micro, nothing negative, nothing above :data:`MAX_AMOUNT_MICROS`.

>>> usd_to_micros(0.1)
100000
>>> format_usd(1_234_500)
'1.234500'
"""

from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation
from typing import Union

from mesh.errors import InvalidAmountError, InvalidTypeError

MICROS_PER_USD = 1_000_000
#: The largest single amount we accept: one billion USD. Sums of up to ~9,000
#: such amounts still fit a signed 64-bit integer (Parquet's int64 column).
MAX_AMOUNT_USD = 1_000_000_000
MAX_AMOUNT_MICROS = MAX_AMOUNT_USD * MICROS_PER_USD

UsdLike = Union[int, float, str, Decimal]

_ONE_MICRO = Decimal("0.000001")


def usd_to_micros(value: UsdLike, *, field: str = "amount_usd") -> int:
    """Convert a USD amount (int, float, str or Decimal) to exact integer micros.

    Raises :class:`InvalidAmountError` naming ``field`` and the value when it is
    negative, NaN, infinite, above the maximum or finer than 10^-6 USD.

    >>> usd_to_micros("0.000001"), usd_to_micros(Decimal("2.5")), usd_to_micros(3)
    (1, 2500000, 3000000)
    """
    amount = _to_decimal(value, field)
    if not amount.is_finite():
        raise InvalidAmountError(field, value, "must be a finite number")
    if amount < 0:
        raise InvalidAmountError(field, value, "must not be negative")
    if amount > MAX_AMOUNT_USD:
        raise InvalidAmountError(field, value, f"must be at most {MAX_AMOUNT_USD} USD")
    micros = amount * MICROS_PER_USD
    if micros != micros.to_integral_value():
        raise InvalidAmountError(field, value, "is finer than 10^-6 USD (one micro-USD)")
    return int(micros)


def check_micros(value: int, *, field: str = "amount_micros") -> int:
    """Validate an integer micro-USD amount and return it unchanged.

    >>> check_micros(5)
    5
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidTypeError(field, value, "an int of micro-USD")
    if value < 0:
        raise InvalidAmountError(field, value, "must not be negative")
    if value > MAX_AMOUNT_MICROS:
        raise InvalidAmountError(field, value, f"must be at most {MAX_AMOUNT_MICROS} micros")
    return value


def format_usd(micros: int) -> str:
    """Format integer micros as a USD string with six decimals, exactly.

    >>> format_usd(-1500)
    '-0.001500'
    """
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), MICROS_PER_USD)
    return f"{sign}{whole}.{frac:06d}"


def micros_to_usd(micros: int) -> float:
    """The nearest float to ``micros`` USD, for display and seed-compatible fields only.

    Never sum these: sum the micros and convert once.

    >>> micros_to_usd(100000)
    0.1
    """
    return micros / MICROS_PER_USD


def _to_decimal(value: UsdLike, field: str) -> Decimal:
    if isinstance(value, bool):
        raise InvalidTypeError(field, value, "a number of USD (int, float, str or Decimal)")
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise InvalidAmountError(field, value, "must be a finite number")
        return Decimal(repr(value))
    if isinstance(value, str):
        try:
            return Decimal(value.strip())
        except InvalidOperation:
            raise InvalidAmountError(field, value, "is not a decimal number") from None
    raise InvalidTypeError(field, value, "a number of USD (int, float, str or Decimal)")
