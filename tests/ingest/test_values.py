"""One check of JSON numbers and token ids (``ingest.values``), and the one way to put a message
or a bad value on one line (``ingest.errors``)."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.errors import VALUE_LIMIT, one_line, shown
from ingest.values import finite_number, is_integer, is_token_id, number

HUGE = json.loads("1" + "0" * 400)  # what json.loads makes of a 401-digit integer: an exact int


def test_a_huge_json_integer_is_not_a_number():
    assert isinstance(HUGE, int)
    with pytest.raises(OverflowError):
        float(HUGE)  # what every unchecked reader did with it
    assert number(HUGE) is None and number(-HUGE) is None and finite_number(HUGE) is None
    assert number(2**1024 - 2**971) == 1.7976931348623157e308 and number(2**1024 - 2**970) is None  # the largest float


@pytest.mark.parametrize("value", [True, False, None, "1.5", "nan", [1.0], {"a": 1}])
def test_booleans_strings_and_containers_are_not_numbers(value):
    assert number(value) is None and finite_number(value) is None


def test_nan_and_infinities_are_numbers_but_not_finite():
    for value in (math.nan, math.inf, -math.inf, json.loads("1e400"), json.loads("-Infinity")):
        assert number(value) is not None and finite_number(value) is None
    assert math.isnan(number(json.loads("NaN")))
    assert finite_number(-3) == -3.0 and isinstance(finite_number(-3), float) and finite_number(0.25) == 0.25


@given(st.one_of(st.integers(), st.floats(), st.booleans(), st.none(), st.text()))
def test_number_is_float_of_exactly_the_json_numbers_a_float_holds(value):
    got = number(value)
    # Integers from 2**1024 - 2**970 on round to 2**1024: past the largest float.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, int) and abs(value) >= 2**1024 - 2**970):
        assert got is None
    elif isinstance(value, float) and math.isnan(value):
        assert math.isnan(got)
    else:
        assert got == float(value)


def test_integers_and_token_ids():
    assert is_integer(0) and is_integer(-5) and is_integer(HUGE)
    assert not any(is_integer(v) for v in (True, False, 1.0, "1", None))
    assert is_token_id(0) and is_token_id(HUGE) and not is_token_id(-1) and not is_token_id(True)
    assert is_token_id(49, 50) and not is_token_id(50, 50) and not is_token_id(HUGE, 50)


def test_one_line_joins_lines_and_keeps_spaces_within_them():
    assert one_line("a\n  b\r\n\nc ") == "a b c"
    assert one_line("field '  the' is bad") == "field '  the' is bad"  # a token's own spaces
    assert one_line("x" * 400) == "x" * 299 + "…" and one_line("x" * 400, limit=None) == "x" * 400
    assert one_line(ValueError("first\nsecond"), limit=None) == "first second"


def test_a_bad_value_is_shown_short():
    assert shown("low") == "'low'" and shown(None) == "None" and shown([1]) == "[1]"
    assert len(shown(HUGE)) == VALUE_LIMIT and shown(HUGE).startswith("1000") and shown(HUGE).endswith("…")
