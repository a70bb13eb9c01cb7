from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh import MAX_AMOUNT_MICROS, InvalidAmountError, InvalidTypeError, format_usd, usd_to_micros
from mesh.money import check_micros


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
