import decimal
import math
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest
import strategies
from hypothesis import given
from hypothesis import strategies as st

from mesh import MAX_AMOUNT_MICROS, InvalidAmountError, InvalidTypeError, format_usd, usd_to_micros
from mesh.core.money import MAX_AMOUNT_USD, MICROS_PER_USD, check_micros


@pytest.mark.parametrize(
    ("value", "micros"),
    [
        (0.1, 100_000), (0.01, 10_000), (0.001, 1_000), (0.000001, 1), (1e-6, 1),
        (0, 0), (3, 3_000_000), ("0.30", 300_000), (" 2.5 ", 2_500_000),
        (Decimal("0.000007"), 7), (0.3, 300_000), (1234.56789, 1_234_567_890),
        (1_000_000_000, MAX_AMOUNT_MICROS), ("1e-6", 1),
    ],
)
def test_usd_to_micros_is_exact(value, micros):
    assert usd_to_micros(value) == micros


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (-0.01, "negative"), ("-1", "negative"), (float("nan"), "finite"), (float("inf"), "finite"),
        ("NaN", "finite"), (Decimal("Infinity"), "finite"), (1_000_000_000.000001, "at most"),
        (10**10, "at most"), (0.0000001, "finer"), ("0.0000015", "finer"), (0.1 + 0.2, "finer"),
        ("abc", "not a decimal"), ("", "not a decimal"),
    ],
)
def test_bad_amounts_are_refused_with_the_value_named(value, problem):
    with pytest.raises(InvalidAmountError) as info:
        usd_to_micros(value, field="price_usd")
    assert problem in str(info.value)
    assert "price_usd=" in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("value", [None, True, [1], object()])
def test_non_numbers_are_type_errors(value):
    with pytest.raises(InvalidTypeError) as info:
        usd_to_micros(value)
    assert isinstance(info.value, TypeError)


def test_check_micros():
    assert check_micros(0) == 0
    with pytest.raises(InvalidAmountError):
        check_micros(-1)
    with pytest.raises(InvalidAmountError):
        check_micros(MAX_AMOUNT_MICROS + 1)
    with pytest.raises(InvalidTypeError):
        check_micros(1.0)


@given(st.integers(min_value=0, max_value=MAX_AMOUNT_MICROS))
def test_format_and_parse_round_trip(micros):
    text = format_usd(micros)
    assert usd_to_micros(text) == micros
    assert usd_to_micros(Decimal(text)) == micros


@given(st.integers(min_value=0, max_value=10**12))
def test_floats_that_print_as_six_decimals_convert_exactly(micros):
    as_float = float(format_usd(micros))
    assert usd_to_micros(as_float) == micros


def test_format_negative():
    assert format_usd(-1) == "-0.000001"


# -- the parse never depends on the caller's decimal context (issue 11, finding 7) -----------------


def _reference_micros(value) -> int | None:
    """The exact answer by fractions.Fraction: the micros, or None when the amount must be refused."""
    if isinstance(value, tuple):  # (text, its exact value) from decimal_texts
        value = value[1]
    elif type(value) is float:
        if not math.isfinite(value):
            return None
        value = Fraction(repr(value))
    elif isinstance(value, Decimal):
        if not value.is_finite():
            return None
        if value.is_zero():
            return 0
        if not -200 < value.adjusted() < 200:  # Fraction would build 10**exponent: far past the max, or far finer
            return None
        value = Fraction(value)
    amount = Fraction(value)
    if amount < 0 or amount > MAX_AMOUNT_USD:
        return None
    micros = amount * MICROS_PER_USD
    return micros.numerator if micros.denominator == 1 else None


def _parse(value):
    """usd_to_micros, its answer or the class of its refusal (an InvalidAmountError or InvalidTypeError)."""
    try:
        return usd_to_micros(value[0] if isinstance(value, tuple) else value, field="price_usd")
    except (InvalidAmountError, InvalidTypeError) as exc:
        return type(exc)


amounts = st.one_of(
    strategies.decimal_texts(), strategies.micro_decimals(),
    st.integers(-(10**3), 2 * MAX_AMOUNT_USD), st.sampled_from([MAX_AMOUNT_USD, MAX_AMOUNT_USD + 1, 0, -1]),
    st.floats(), st.floats(0, 2 * MAX_AMOUNT_USD), st.integers(0, 10**15).map(lambda m: m / MICROS_PER_USD),
)


@given(strategies.caller_contexts(), amounts)
def test_any_amount_under_any_caller_context_is_the_exact_answer(context, value):
    with decimal.localcontext(context) as caller:
        got = _parse(value)
        flags = [signal for signal in strategies.SIGNALS if caller.flags[signal]]
    expected = _reference_micros(value)
    if expected is None:
        assert got is InvalidAmountError
    else:
        assert got == expected
    assert flags == []  # nor does it touch the caller's context


@given(strategies.caller_contexts(), st.text(max_size=40))
def test_any_text_under_any_caller_context_is_an_amount_or_refused_the_same_way(context, text):
    fresh = _parse(text)
    with decimal.localcontext(context):
        assert _parse(text) == fresh
    assert fresh is InvalidAmountError or isinstance(fresh, int)


@given(strategies.non_money)
def test_every_type_that_is_not_money_is_refused_with_a_type_error(value):
    with pytest.raises(InvalidTypeError) as info:
        usd_to_micros(value, field="price_usd")
    assert str(info.value).startswith("price_usd=")


def test_the_caller_context_seen_in_the_finding():
    with decimal.localcontext() as caller:
        caller.prec = 6
        assert usd_to_micros("1.234567") == 1_234_567
        assert usd_to_micros(Decimal("999999999.999999")) == MAX_AMOUNT_MICROS - 1
        caller.traps[decimal.InvalidOperation] = False
        with pytest.raises(InvalidAmountError, match="not a decimal number"):
            usd_to_micros("abc")


@pytest.mark.parametrize("value", [True, False, b"1", bytearray(b"1"), np.float64(0.5), np.int64(1), 1 + 0j,
                                   Fraction(1, 2), "\u0661", "１"])
def test_bools_bytes_numpy_scalars_and_other_scripts_digits_are_not_money(value):
    with pytest.raises((InvalidTypeError, InvalidAmountError)):
        usd_to_micros(value)
