"""``CodedNames``, how the bulk path carries agents and methods: codes into distinct names.

Any column of ids encodes to distinct names and in-range int32 codes that decode to the
column; a part taken decodes to that part; a bad value is named by its place
in the whole column; codes that do not fit their names are refused.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.calls.coded import CodedNames
from mesh.core.errors import InvalidArgumentError, InvalidColumnError, InvalidIdError, InvalidTypeError
from mesh.core.ids import is_id

NAMES = st.lists(st.text(st.characters(categories=("L", "N", "P", "S")), min_size=1, max_size=12).filter(is_id),
                 min_size=1, max_size=8, unique=True)


@given(NAMES.flatmap(lambda names: st.lists(st.sampled_from(names), max_size=60)))
def test_a_column_encodes_to_distinct_names_and_codes_that_decode_to_it(values):
    coded = CodedNames.encode("sources", values)
    assert coded.decoded() == values and len(coded) == len(values)
    assert len(set(coded.names)) == len(coded.names) == len(set(values))
    assert coded.codes.dtype == np.int32
    assert coded.names == list(dict.fromkeys(values))  # in order of first appearance


@given(NAMES.flatmap(lambda names: st.lists(st.sampled_from(names), min_size=1, max_size=60)), st.data())
def test_a_part_taken_decodes_to_that_part(values, data):
    coded = CodedNames.encode("targets", values)
    at = np.array(data.draw(st.lists(st.integers(0, len(values) - 1), max_size=30)), np.int64)
    assert coded.take(at).decoded() == [values[i] for i in at.tolist()]
    assert coded.take(slice(2, 7)).decoded() == values[2:7]


def test_one_name_repeated_and_a_lookup_per_distinct_name():
    assert CodedNames.repeated("handle", 3).decoded() == ["handle"] * 3
    calls = []
    coded = CodedNames.encode("sources", ["a", "bb", "a", "ccc", "bb"])
    lengths = coded.of_names(lambda name: calls.append(name) or len(name), np.int64)
    assert lengths.tolist() == [1, 2, 1, 3, 2] and calls == ["a", "bb", "ccc"]


@pytest.mark.parametrize("values, error, words", [
    (["a", "b", None], InvalidTypeError, "sources[12]"),
    (["a", 7], InvalidTypeError, "sources[11]"),
    (["a", True], InvalidTypeError, "sources[11]"),
    (["a", "b", "c\nd"], InvalidIdError, "sources[12]"),
    (["a", "b", ""], InvalidIdError, "sources[12]"),
    (["a", "x" * 10_000], InvalidIdError, "sources[11]"),
    (["a", "\ud800"], InvalidIdError, "sources[11]"),
    (["a", b"b"], InvalidTypeError, "sources[11]"),
    (["a", np.str_("b")], InvalidTypeError, "sources[11]"),
    ("abc", InvalidColumnError, "sources"),
    (np.array(["a", "b"]), InvalidColumnError, "sources"),
])
def test_a_bad_value_is_named_by_its_place_in_the_whole_column(values, error, words):
    with pytest.raises(error) as raised:
        CodedNames.encode("sources", values, first_index=10)
    assert words in str(raised.value)


@pytest.mark.parametrize("codes, error", [
    (np.array([0, 2], np.int32), InvalidArgumentError),
    (np.array([-1], np.int32), InvalidArgumentError),
    (np.array([0, 1], np.int64), InvalidColumnError),
    (np.array([[0]], np.int32), InvalidColumnError),
    ([0, 1], InvalidColumnError),
])
def test_codes_that_do_not_fit_their_names_are_refused(codes, error):
    with pytest.raises(error, match="codes"):
        CodedNames(["a", "b"], codes)
