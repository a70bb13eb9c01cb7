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
from decimal import (
    MAX_EMAX, MIN_EMIN, ROUND_HALF_EVEN, Context, Decimal, DivisionByZero, Inexact, InvalidOperation, Overflow,
    localcontext,
)
from typing import Union

from mesh.core.errors import InvalidAmountError, InvalidTypeError

MICROS_PER_USD = 1_000_000
#: The largest single amount we accept: one billion USD. Sums of up to ~9,000
#: such amounts still fit a signed 64-bit integer (Parquet's int64 column).
MAX_AMOUNT_USD = 1_000_000_000
MAX_AMOUNT_MICROS = MAX_AMOUNT_USD * MICROS_PER_USD

UsdLike = Union[int, float, str, Decimal]

#: The context every parse runs in, whatever the caller's ``decimal`` context is: wide enough
#: that every valid amount is exact (at most 16 digits of micros), every exponent Python can read
#: fits, and any rounding that would drop a digit (``Inexact``) raises instead of rounding.
_CONTEXT = Context(
    prec=40, rounding=ROUND_HALF_EVEN, Emin=MIN_EMIN, Emax=MAX_EMAX, capitals=1, clamp=0,
    traps=[InvalidOperation, DivisionByZero, Overflow, Inexact],
)
_EXPECTED = "a number of USD (int, float, str or Decimal; not bool, bytes or other types)"


def usd_to_micros(value: UsdLike, *, field: str = "amount_usd") -> int:
    """Convert a USD amount (int, float, str or Decimal) to exact integer micros.

    Raises :class:`InvalidTypeError` for any other type (a bool, bytes, a numpy scalar...)
    and :class:`InvalidAmountError` naming ``field`` and the value when it is negative,
    NaN, infinite, above the maximum or finer than 10^-6 USD. The result never depends
    on the caller's ``decimal`` context: the parse runs in its own.

    >>> usd_to_micros("0.000001"), usd_to_micros(Decimal("2.5")), usd_to_micros(3)
    (1, 2500000, 3000000)
    """
    with localcontext(_CONTEXT):
        amount = _to_decimal(value, field)
        if not amount.is_finite():
            raise InvalidAmountError(field, value, "must be a finite number")
        if amount < 0:
            raise InvalidAmountError(field, value, "must not be negative")
        if amount > MAX_AMOUNT_USD:
            raise InvalidAmountError(field, value, f"must be at most {MAX_AMOUNT_USD} USD")
        try:
            micros = amount.scaleb(6)  # exact: 10^6 times the amount, or Inexact (more than 40 digits)
        except Inexact:
            micros = None
        if micros is None or micros != micros.to_integral_value():
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


def format_usd(micros: int, *, grouped: bool = False) -> str:
    """Format integer micros as a USD string with six decimals, exactly; ``grouped`` puts
    thousands separators in the whole dollars (for text meant to be read, never for data).

    >>> format_usd(-1500), format_usd(7_200_000_000, grouped=True)
    ('-0.001500', '7,200.000000')
    """
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), MICROS_PER_USD)
    return f"{sign}{whole:,}.{frac:06d}" if grouped else f"{sign}{whole}.{frac:06d}"


def micros_to_usd(micros: int) -> float:
    """The nearest float to ``micros`` USD, for display and seed-compatible fields only.

    Never sum these: sum the micros and convert once.

    >>> micros_to_usd(100000)
    0.1
    """
    return micros / MICROS_PER_USD


def _to_decimal(value: UsdLike, field: str) -> Decimal:
    """``value`` as a Decimal, exactly; only the four types of :data:`UsdLike` (their subclasses
    are refused too: a bool is an int, a numpy float is a float, and neither is money)."""
    kind = type(value)
    if kind is int:
        return Decimal(value)
    if kind is str:
        text = value.strip()
        if not text.isascii():  # Decimal reads any script's digits; an amount is ASCII text
            raise InvalidAmountError(field, value, "is not a decimal number")
        try:
            return Decimal(text)
        except InvalidOperation:
            raise InvalidAmountError(field, value, "is not a decimal number") from None
    if kind is float:
        if math.isnan(value) or math.isinf(value):
            raise InvalidAmountError(field, value, "must be a finite number")
        return Decimal(repr(value))  # the shortest text that reads back as this float: 0.1 is 0.1
    if isinstance(value, Decimal):
        return value
    raise InvalidTypeError(field, value, _EXPECTED)
