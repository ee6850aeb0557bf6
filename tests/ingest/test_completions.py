"""The pure response parser, on small handwritten responses: one test per format fact."""

from __future__ import annotations

import copy
import math
import pickle
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.errors import IngestError
from ingest.parse.completions import (
    LISTED_TOLERANCE,
    MASS_TOLERANCE,
    check_top_list,
    parse_completion,
)
from ingest.parse.formats import to_completions


def response(
    tokens: list[str],
    token_logprobs: list[Any],
    top: list[Any],
    *,
    usage: dict[str, int] | None = None,
    text_offset: list[int] | None = None,
    model: str | None = "m",
) -> dict[str, Any]:
    logprobs: dict[str, Any] = {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top}
    if text_offset is not None:
        logprobs["text_offset"] = text_offset
    out: dict[str, Any] = {"choices": [{"index": 0, "text": "".join(tokens), "logprobs": logprobs}]}
    if model is not None:
        out["model"] = model
    if usage is not None:
        out["usage"] = usage
    return out


def tops(c) -> list[list[tuple[str, float]]]:
    """The parsed top lists, per scored position, as (token, lp) pairs."""
    out, start = [], 0
    for count in c.top_counts:
        out.append(list(zip(c.top_tokens[start : start + count], c.top_lp[start : start + count].tolist())))
        start += count
    return out


THREE = response(
    ["A", " b", " c"],
    [None, -1.5, -0.25],
    [None, {" b": -1.5, " x": -2.0}, {" c": -0.25, " y": -3.0}],
)


def test_echo_first_token_is_not_scored():
    c = parse_completion(THREE)
    assert c.tokens == ["A", " b", " c"]
    assert c.target_lp.dtype == np.float32
    assert c.target_lp.tolist() == [-1.5, -0.25]
    assert c.top_counts.tolist() == [2, 2]
    assert tops(c) == [[(" b", -1.5), (" x", -2.0)], [(" c", -0.25), (" y", -3.0)]]
    assert c.model == "m"


def test_first_entries_need_not_be_null():
    # Some servers fill the first entries; the first token is unscored either way.
    r = response(["A", " b"], [-9.0, -1.0], [{"A": -9.0}, {" b": -1.0}])
    c = parse_completion(r)
    assert c.target_lp.tolist() == [-1.0]
    assert tops(c) == [[(" b", -1.0)]]


@pytest.mark.parametrize("n", [0, 1])
def test_requests_too_short_to_score_are_empty(n):
    c = parse_completion(response(["A"][:n], [None][:n], [None][:n]))
    assert len(c.tokens) == n
    assert c.target_lp.shape == (0,) and c.top_lp.shape == (0,) and c.top_counts.shape == (0,)


def test_bytes_tokens_are_kept_as_the_api_wrote_them():
    r = response(["x", "bytes:\\xe2\\x80", "bytes:\\x99"], [None, -1.0, -0.5],
                 [None, {"bytes:\\xe2\\x80": -1.0}, {"bytes:\\x99": -0.5}])
    c = parse_completion(r)
    assert c.tokens[1] == "bytes:\\xe2\\x80" and len(c.tokens[1]) == 14
    assert c.top_tokens == ["bytes:\\xe2\\x80", "bytes:\\x99"]


def test_lists_are_sorted_by_lp_descending_ties_in_server_order():
    r = response(["A", " b"], [None, -2.0], [None, {" x": -3.0, " b": -2.0, " y": -1.0, " z": -2.0}])
    assert tops(parse_completion(r)) == [[(" y", -1.0), (" b", -2.0), (" z", -2.0), (" x", -3.0)]]


def test_appended_actual_token_does_not_count_towards_k():
    # OpenAI adds the actual token when it is outside the top k: k+1 entries, it being lowest.
    k_plus_1 = response(["A", " b"], [None, -7.0], [None, {" x": -1.0, " y": -2.0, " b": -7.0}])
    inside = response(["A", " b"], [None, -1.0], [None, {" b": -1.0, " y": -2.0}])
    absent = response(["A", " b"], [None, -7.0], [None, {" x": -1.0, " y": -2.0}])
    assert parse_completion(k_plus_1).list_sizes.tolist() == [2]
    assert parse_completion(inside).list_sizes.tolist() == [2]
    assert parse_completion(absent).list_sizes.tolist() == [2]
    # The appended entry is still an observed value; the top-k table drops it (see test_topk).
    assert parse_completion(k_plus_1).top_counts.tolist() == [3]


@pytest.mark.parametrize("sentinel", [-9999, -9999.0, -1e10, float("nan"), None])
def test_sentinel_in_top_list_is_dropped(sentinel):
    r = response(["A", " b"], [None, -1.0], [None, {" b": -1.0, " x": sentinel, " y": -2.0}])
    c = parse_completion(r)
    assert tops(c) == [[(" b", -1.0), (" y", -2.0)]]
    assert c.top_counts.tolist() == [2]


@pytest.mark.parametrize("sentinel", [-9999, -12345.5, float("nan"), None])
def test_sentinel_target_lp_is_not_a_number(sentinel):
    c = parse_completion(response(["A", " b", " c"], [None, sentinel, -1.0], [None, {}, {}]))
    assert math.isnan(c.target_lp[0]) and c.target_lp[1] == -1.0


def test_minus_inf_is_a_real_log_prob():
    r = response(["A", " b"], [None, float("-inf")], [None, {" b": float("-inf"), " x": -1.0}])
    c = parse_completion(r)
    assert c.target_lp.tolist() == [-math.inf]
    assert tops(c) == [[(" x", -1.0), (" b", -math.inf)]]


def test_token_generated_after_the_prompt_is_dropped_by_usage():
    r = response(["A", " b", " c", " gen"], [None, -1.0, -2.0, -3.0],
                 [None, {" b": -1.0}, {" c": -2.0}, {" gen": -3.0}],
                 usage={"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4})
    c = parse_completion(r, max_tokens=1)
    assert c.tokens == ["A", " b", " c"]
    assert c.target_lp.tolist() == [-1.0, -2.0]
    assert c.top_tokens == [" b", " c"]


def test_token_generated_after_the_prompt_is_dropped_by_text_offset():
    r = response(["A", " b", " c", " gen"], [None, -1.0, -2.0, -3.0],
                 [None, {" b": -1.0}, {" c": -2.0}, {" gen": -3.0}], text_offset=[0, 1, 3, 5])
    c = parse_completion(r, max_tokens=1, prompt="A b c")
    assert c.tokens == ["A", " b", " c"]
    assert c.target_lp.tolist() == [-1.0, -2.0]


def test_generated_token_without_usage_or_prompt_is_an_error():
    r = response(["A", " b"], [None, -1.0], [None, {}])
    with pytest.raises(IngestError, match=r"field 'usage.prompt_tokens' missing and the request has max_tokens=1"):
        parse_completion(r, max_tokens=1)
    assert parse_completion(r, max_tokens=0).tokens == ["A", " b"]


@pytest.mark.parametrize(
    ("mutate", "field", "problem"),
    [
        (lambda r: r.pop("choices"), "choices", "missing"),
        (lambda r: r.update(choices=[]), "choices", "is not a non-empty list"),
        (lambda r: r["choices"][0].pop("logprobs"), "choices[0].logprobs", "missing"),
        (lambda r: r["choices"][0].update(logprobs=None), "choices[0].logprobs", "missing"),
        (lambda r: r["choices"][0]["logprobs"].pop("tokens"), "choices[0].logprobs.tokens", "missing"),
        (lambda r: r["choices"][0]["logprobs"]["top_logprobs"].pop(),
         "choices[0].logprobs.top_logprobs", "has 2 entries but tokens has 3"),
        (lambda r: r["choices"][0]["logprobs"]["token_logprobs"].append(-1.0),
         "choices[0].logprobs.token_logprobs", "has 4 entries but tokens has 3"),
        (lambda r: r["choices"][0]["logprobs"].update(text_offset=[0]),
         "choices[0].logprobs.text_offset", "has 1 entries but tokens has 3"),
        (lambda r: r["choices"][0]["logprobs"]["tokens"].__setitem__(1, 7),
         "choices[0].logprobs.tokens[1]", "is 7, not a string"),
        (lambda r: r["choices"][0]["logprobs"]["token_logprobs"].__setitem__(2, "low"),
         "choices[0].logprobs.token_logprobs[2]", "is 'low', not a number"),
        (lambda r: r["choices"][0]["logprobs"]["token_logprobs"].__setitem__(2, float("inf")),
         "choices[0].logprobs.token_logprobs[2]", "is inf, above 0: not a log-probability"),
        (lambda r: r["choices"][0]["logprobs"]["token_logprobs"].__setitem__(2, 0.5),
         "choices[0].logprobs.token_logprobs[2]", "is 0.5, above 0: not a log-probability (tolerance 0.0001)"),
        (lambda r: r["choices"][0]["logprobs"]["top_logprobs"][2].update({" y": 0.01}),
         "choices[0].logprobs.top_logprobs[2][' y']", "is 0.01, above 0"),
        (lambda r: r["choices"][0]["logprobs"]["top_logprobs"][2].update({" y": [1]}),
         "choices[0].logprobs.top_logprobs[2][' y']", "is [1], not a number"),
        (lambda r: r["choices"][0]["logprobs"]["top_logprobs"].__setitem__(1, None),
         "choices[0].logprobs.top_logprobs[1]", "is None, not an object"),
        (lambda r: r.update(usage={"prompt_tokens": 4}), "usage.prompt_tokens", "is 4, but the response has 3 tokens"),
        (lambda r: r.update(model=3), "model", "is 3, not a string"),
    ],
)
def test_malformed_response_names_the_field(mutate, field, problem):
    r = copy.deepcopy(THREE)
    mutate(r)
    with pytest.raises(IngestError) as err:
        parse_completion(r)
    assert err.value.field == field
    assert str(err.value).startswith(f"field '{field}' {problem}")


def test_error_located_in_a_file_reads_as_one_line():
    err = IngestError("missing", field="choices[0].logprobs").located(file="grimm-big.jsonl.gz", line=17)
    assert str(err) == "grimm-big.jsonl.gz line 17: field 'choices[0].logprobs' missing"
    assert isinstance(err, ValueError)
    again = pickle.loads(pickle.dumps(err))  # crosses process pools intact
    assert str(again) == str(err) and again.line == 17 and again.field == "choices[0].logprobs"


# A list is one distribution: its mass, and its value of the actual token.
def test_list_mass_up_to_the_tolerance():
    # Two entries of 0.5 each: mass 1 (within float rounding) is a distribution ...
    half = math.log(0.5)
    assert parse_completion(response(["A", " b"], [None, half], [None, {" b": half, " x": half}])).top_counts.tolist() == [2]
    # ... and just inside the tolerance too; past it, not.
    inside = math.log((1 + MASS_TOLERANCE / 2) / 2)
    parse_completion(response(["A", " b"], [None, inside], [None, {" b": inside, " x": inside}]))
    over = math.log((1 + 2 * MASS_TOLERANCE) / 2)
    with pytest.raises(IngestError) as err:
        parse_completion(response(["A", " b", " c"], [None, -1.0, over], [None, {" b": -1.0}, {" c": over, " y": over}]))
    assert err.value.field == "choices[0].logprobs.top_logprobs[2]"
    assert str(err.value).startswith("field 'choices[0].logprobs.top_logprobs[2]' holds probability 1.002, more than 1 "
                                     "(tolerance 0.001)")


def test_list_mass_counts_the_actual_token_outside_the_list():
    # 0.6 listed + 0.6 for the actual token, which is another token: 1.2.
    lp = math.log(0.6)
    with pytest.raises(IngestError, match=r"top_logprobs\[1\]' holds probability 1\.2 with the actual token's"):
        parse_completion(response(["A", " b"], [None, lp], [None, {" x": lp}]))
    # The same values with the actual token in the list: 0.6 in all.
    assert parse_completion(response(["A", " b"], [None, lp], [None, {" b": lp}])).target_lp.tolist() == [pytest.approx(lp)]


def test_actual_token_value_must_agree_with_its_list_entry():
    # A server that shifts token_logprobs by one position against top_logprobs.
    shifted = response(["A", " b", " c"], [None, -0.25, -1.5], [None, {" b": -1.5, " x": -2.0}, {" c": -0.25, " y": -3.0}])
    with pytest.raises(IngestError) as err:
        parse_completion(shifted)
    assert err.value.field == "choices[0].logprobs.token_logprobs[1]"
    assert "is -0.25 but top_logprobs[1] gives the same token ' b' -1.5 (tolerance 0.001 nats)" in str(err.value)
    near = response(["A", " b"], [None, -1.5 + LISTED_TOLERANCE / 2], [None, {" b": -1.5}])
    assert parse_completion(near).target_lp.tolist() == [pytest.approx(-1.5, abs=LISTED_TOLERANCE)]
    # A sentinel on either side is no value to compare; -inf equals -inf.
    parse_completion(response(["A", " b"], [None, -9999], [None, {" b": -1.5}]))
    parse_completion(response(["A", " b"], [None, float("-inf")], [None, {" b": float("-inf"), " x": -1.0}]))


def test_an_empty_scored_token_is_an_error_and_an_unnamed_list_entry_is_dropped():
    with pytest.raises(IngestError) as err:
        parse_completion(response(["A", "", " c"], [None, -1.0, -1.0], [None, {"": -1.0}, {" c": -1.0}]))
    field = "choices[0].logprobs.tokens[1]"
    assert err.value.field == field and str(err.value) == f"field '{field}' is empty: a scored token spells at least one byte"
    # llama-cpp-python names the bytes of a partial character "": not a token anyone can look up,
    # so it is dropped (never one vocabulary entry shared by every such token) and counted.
    parsed = parse_completion(response(["A", " b", " c"], [None, -1.0, -1.0],
                                       [None, {" b": -1.0, "": -2.0, " x": -3.0}, {"": -0.5, " c": -1.0}]))
    assert parsed.top_tokens == [" b", " x", " c"] and parsed.top_counts.tolist() == [2, 1]
    assert parsed.unnamed == 2


def test_what_the_parser_tolerates_is_counted():
    r = response(
        ["A", " b", " c", " d", " gen"],
        [None, -9999, None, -1.0, -0.5],
        [None, {" x": -3.0, " b": -2.0, " y": -1.0}, {" c": None, " z": -4.0}, {" d": -1.0}, {" gen": -0.5}],
        usage={"prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5},
    )
    c = parse_completion(r, max_tokens=1)
    # Two targets and one list entry not observed; lists 1 (order) and 2 (a null entry) re-sorted.
    assert (c.unobserved, c.resorted, c.generated) == (3, 2, 1)
    assert c.actual_lowest.tolist() == [False, False, True]
    clean = parse_completion(THREE)
    assert (clean.unobserved, clean.resorted, clean.generated) == (0, 0, 0)


# Numbers: exactly the JSON numbers a float holds (``ingest.values.number``).
HUGE = 10**400  # json.loads reads a 401-digit integer exactly: float() of it overflows


@pytest.mark.parametrize(
    ("where", "value", "problem"),
    [
        ("token_logprobs[2]", -HUGE, f"is {str(-HUGE)[:39]}…, not a number"),
        ("top_logprobs[2][' y']", -HUGE, f"is {str(-HUGE)[:39]}…, not a number"),
        ("top_logprobs[2][' y']", HUGE, f"is {str(HUGE)[:39]}…, not a number"),
        ("top_logprobs[2][' y']", False, "is False, not a number"),  # numpy read it as 0.0: certain
        ("top_logprobs[2][' y']", True, "is True, not a number"),
        ("token_logprobs[2]", "-0.5", "is '-0.5', not a number"),  # numpy read a numeric string as its number
    ],
)
def test_values_are_json_numbers_a_float_holds(where, value, problem):
    r = copy.deepcopy(THREE)
    lp = r["choices"][0]["logprobs"]
    if where.startswith("token_logprobs"):
        lp["token_logprobs"][2] = value
    else:
        lp["top_logprobs"][2][" y"] = value
    with pytest.raises(IngestError) as err:
        parse_completion(r)
    assert err.value.field == f"choices[0].logprobs.{where}" and str(err.value) == f"field '{err.value.field}' {problem}"


def test_one_list_is_checked_as_every_list():
    field = "response.body.choices[0].logprobs.top_logprobs[0]"
    got = check_top_list({" a": -0.5, " b": -9999, " c": None, " d": float("-inf")}, field=field)
    assert list(got) == [" a", " b", " c", " d"] and got[" a"] == -0.5 and got[" b"] == -9999
    assert math.isnan(got[" c"]) and got[" d"] == -math.inf
    assert check_top_list({}, field=field) == {}
    assert check_top_list({" a": -1.0, "": -2.0}, field=field) == {" a": -1.0}  # unnamed: dropped
    half = math.log(0.5)
    assert check_top_list({" a": half, " b": half}, field=field) == {" a": half, " b": half}
    cases = [
        ([" a"], None, "is [' a'], not an object"),
        ({" a": 0.7}, " a", "is 0.7, above 0: not a log-probability (tolerance 0.0001)"),
        ({" a": -HUGE}, " a", f"is {str(-HUGE)[:39]}…, not a number"),
        ({" a": "x"}, " a", "is 'x', not a number"),
        ({" a": math.log(0.6), " b": math.log(0.6)}, None,
         "holds probability 1.2, more than 1 (tolerance 0.001): not a distribution"),
    ]
    for top, key, problem in cases:
        with pytest.raises(IngestError) as err:
            check_top_list(top, field=field)
        where = field if key is None else f"{field}[{key!r}]"
        assert err.value.field == where and str(err.value) == f"field '{where}' {problem}", top
    # Where every value is needed (generation), null and NaN are refused.
    for missing in (None, float("nan")):
        with pytest.raises(IngestError) as err:
            check_top_list({" a": -1.0, " b": missing}, field=field, unobserved=False)
        assert err.value.field == f"{field}[' b']" and "not observed" in str(err.value)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**500), max_value=10**500) | st.floats() | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=6,
)
PLACES = [  # (path into THREE, key) where a hostile value goes
    (("choices", 0, "logprobs", "tokens"), 1), (("choices", 0, "logprobs", "token_logprobs"), 2),
    (("choices", 0, "logprobs", "top_logprobs"), 2), (("choices", 0, "logprobs", "top_logprobs", 1), " x"),
    (("choices", 0, "logprobs",), "text_offset"), (("choices", 0, "logprobs",), "top_logprobs"),
    (("choices", 0), "logprobs"), ((), "usage"), ((), "model"), ((), "choices"),
]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(PLACES), JSON_VALUES, st.sampled_from([None, "A b c"]))
def test_any_json_value_anywhere_is_parsed_or_one_ingest_error(place, value, prompt):
    """Whatever a hostile server writes, the parser (as collect and ingest call it) answers with an
    IngestError or a parse: never another exception (OverflowError, TypeError...)."""
    r = copy.deepcopy(THREE)
    node = r
    for step in place[0]:
        node = node[step]
    node[place[1]] = value
    try:
        parse_completion(to_completions(r), prompt=prompt)
    except IngestError as err:
        assert "\n" not in str(err)
