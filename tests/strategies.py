"""Shared hypothesis strategies for the public edges: ids good and bad, money inputs, caller decimal contexts.

Ids (see :mod:`mesh.core.ids`): ``good_ids`` is any text every part of tollmesh can write (1 to
MAX_ID_CHARS characters, UTF-8 encodable, no control character); ``bad_ids`` is the rest:
empty, too long, a lone surrogate or a control character inside good text, and values of
other types. Money: ``caller_contexts`` are random :class:`decimal.Context` s a caller may
have set; ``non_money`` is every type that is not money (bools, bytes, numpy scalars...).
"""

from __future__ import annotations

import decimal
import enum
from decimal import Decimal
from fractions import Fraction

import numpy as np
from hypothesis import strategies as st

from mesh.core.ids import MAX_ID_CHARS, MAX_PAYMENT_FIELD_CHARS

# -- ids ------------------------------------------------------------------------------------

#: Unicode's Cc category: C0, DEL and C1 (fixed forever by Unicode's stability policy).
CONTROL_CHARS = [chr(c) for c in range(0x20)] + [chr(c) for c in range(0x7F, 0xA0)]

#: Characters an id may hold: anything UTF-8 encodes but control characters.
id_chars = st.characters(codec="utf-8", exclude_categories=["Cc"])

#: Ids like the ones people write, and any valid text (accents, emoji, joiners, spaces, 256 characters).
good_ids = st.one_of(
    st.from_regex(r"[A-Za-z0-9_.:>@-]{1,40}", fullmatch=True),
    st.text(id_chars, min_size=1, max_size=24),
    st.text(id_chars, min_size=1, max_size=8).map(lambda s: (s * MAX_ID_CHARS)[:MAX_ID_CHARS]),
)

lone_surrogates = st.integers(0xD800, 0xDFFF).map(chr)
control_chars = st.sampled_from(CONTROL_CHARS)


def _inside(bad: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Good text with one bad character somewhere in it (at the start, the end, or between)."""
    return st.tuples(st.text(id_chars, max_size=12), bad, st.text(id_chars, max_size=12)).map("".join)


surrogate_ids = _inside(lone_surrogates)
control_ids = _inside(control_chars)
long_ids = st.tuples(st.text(id_chars, min_size=1, max_size=8), st.integers(1, 64)).map(
    lambda t: (t[0] * (MAX_ID_CHARS + t[1]))[: MAX_ID_CHARS + t[1]]
)


class _StrLike:
    def __str__(self) -> str:
        return "alice"


#: Values of other types than str (None aside: it means "none given" in some places).
non_str = st.one_of(
    st.binary(min_size=1, max_size=12), st.binary(max_size=12).map(bytearray), st.integers(), st.booleans(),
    st.floats(), st.lists(st.text(max_size=3), max_size=2), st.tuples(st.text(max_size=3)),
    st.just(_StrLike()),
)

#: Text that is not a valid id, and values that are not text.
bad_text_ids = st.one_of(st.just(""), surrogate_ids, control_ids, long_ids)
bad_ids = st.one_of(bad_text_ids, non_str)

#: Payment fields (payer_wallet, tx_signature): None or text of at most MAX_PAYMENT_FIELD_CHARS.
good_payment_fields = st.one_of(st.none(), st.just(""), good_ids)
bad_payment_fields = st.one_of(
    surrogate_ids, control_ids, non_str,
    st.text(id_chars, min_size=1, max_size=4).map(lambda s: (s * MAX_PAYMENT_FIELD_CHARS) + "x"),
)

# -- money ----------------------------------------------------------------------------------

ROUNDINGS = [decimal.ROUND_UP, decimal.ROUND_DOWN, decimal.ROUND_CEILING, decimal.ROUND_FLOOR,
             decimal.ROUND_HALF_UP, decimal.ROUND_HALF_DOWN, decimal.ROUND_HALF_EVEN, decimal.ROUND_05UP]
SIGNALS = [decimal.Clamped, decimal.DivisionByZero, decimal.Inexact, decimal.InvalidOperation, decimal.Overflow,
           decimal.Rounded, decimal.Subnormal, decimal.Underflow, decimal.FloatOperation]


@st.composite
def caller_contexts(draw: st.DrawFn) -> decimal.Context:
    """A decimal context a caller may have set: any precision 1..50, rounding, traps, exponent range."""
    return decimal.Context(
        prec=draw(st.integers(1, 50)), rounding=draw(st.sampled_from(ROUNDINGS)),
        Emax=draw(st.integers(0, 10**6)), Emin=draw(st.integers(-(10**6), 0)),
        capitals=draw(st.integers(0, 1)), clamp=draw(st.integers(0, 1)),
        traps=draw(st.lists(st.sampled_from(SIGNALS), unique=True)), flags=[],
    )


@st.composite
def decimal_texts(draw: st.DrawFn) -> tuple[str, Fraction]:
    """A decimal number as text (positional or with an exponent, signs, zeros, spaces) and its exact value."""
    sign = draw(st.sampled_from(["", "+", "-"]))
    digits = draw(st.from_regex(r"[0-9]{1,30}", fullmatch=True))
    exponent = draw(st.one_of(st.integers(-30, 12), st.integers(-(10**9), 10**9)))
    value = Fraction(int(digits)) * Fraction(10) ** exponent if abs(exponent) < 10**4 else None
    if draw(st.booleans()) or value is None:
        text = f"{sign}{digits}{draw(st.sampled_from(['e', 'E']))}{exponent}"
    else:
        text = f"{sign}{_positional(digits, exponent)}"
    pad = draw(st.sampled_from(["", " ", "\t", "\n "]))
    if value is None:  # too far from 1 to write out: past the maximum, or finer than a micro (unless it is 0)
        value = Fraction(0) if int(digits) == 0 else (Fraction(10**30) if exponent > 0 else Fraction(1, 10**30))
    return pad + text + pad[::-1], -value if sign == "-" else value


def _positional(digits: str, exponent: int) -> str:
    if exponent >= 0:
        return digits + "0" * exponent
    digits = digits.rjust(-exponent + 1, "0")
    return f"{digits[:exponent]}.{digits[exponent:]}"


def micro_decimals() -> st.SearchStrategy[Decimal]:
    """Decimals near the micro: whole micros with extra zeros, finer ones, huge and tiny exponents."""
    return st.one_of(
        st.tuples(st.integers(0, 10**16), st.integers(0, 40)).map(lambda t: Decimal(f"{t[0] * 10**t[1]}e-{6 + t[1]}")),
        st.tuples(st.integers(-(10**20), 10**20), st.integers(-50, 50)).map(lambda t: Decimal(f"{t[0]}e{t[1]}")),
        st.sampled_from(["1e-999999999", "1e999999999", "0e-999999999", "-0", "sNaN", "-Infinity", "NaN"]).map(Decimal),
        st.decimals(allow_nan=True, allow_infinity=True),
    )


class _Colour(enum.IntEnum):
    RED = 1


#: Every type that is not money: bools, bytes, None, containers, complex, fractions, numpy scalars, int subclasses.
non_money = st.one_of(
    st.booleans(), st.binary(max_size=8), st.binary(max_size=8).map(bytearray), st.none(),
    st.lists(st.integers(), max_size=2), st.tuples(st.integers()), st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
    st.sets(st.integers(), max_size=2), st.complex_numbers(), st.fractions(),
    st.integers(0, 10**6).map(np.int64), st.floats(0, 1e6).map(np.float64), st.floats(0, 1e6, width=32).map(np.float32),
    st.booleans().map(np.bool_), st.integers(0, 9).map(np.uint8), st.just(_Colour.RED), st.just(object()),
    st.just(memoryview(b"1")), st.just(Ellipsis),
)
