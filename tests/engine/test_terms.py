"""A blend written out: ``engine.terms`` parses it and checks its models."""

import pytest

from engine.terms import (
    Term,
    format_blend,
    parse_blend,
    parse_term,
    require_terms,
    terms_models,
    terms_weights,
)

STORE = ("grimm-big", "grimm-small-tuned", "grimm-small", "grimm-big-tuned")


@pytest.mark.parametrize("text, terms", [
    ("grimm-big + 1.0*grimm-small-tuned - 1.0*grimm-small",
     [("grimm-big", 1.0), ("grimm-small-tuned", 1.0), ("grimm-small", -1.0)]),
    ("- 0.5*a-b + c+d - 2e-1*x", [("a-b", -0.5), ("c+d", 1.0), ("x", -0.2)]),
    ("  solo ", [("solo", 1.0)]),
])
def test_blend_text_parses_to_terms_and_back(text, terms):
    parsed = parse_blend(text)
    assert [tuple(t) for t in parsed] == terms
    again = parse_blend(format_blend(terms_models(parsed), terms_weights(parsed)))
    assert again == parsed


@pytest.mark.parametrize("text, message", [
    ("grimm-big + nan*grimm-small", r"term 2 \('nan\*grimm-small'\) .*weight 'nan' is not finite"),
    ("grimm-big - inf*grimm-small", r"term 2 .*weight 'inf' is not finite"),
    ("grimm-big + 2x*grimm-small", r"term 2 .*weight '2x' is not a number"),
    ("grimm-big + 1.5*", r"term 2 .*no model named"),
    ("grimm-big + ", r"term 1 .*holds a space"),
    ("", r"term 1 .*empty"),
])
def test_bad_blend_text_names_the_term(text, message):
    with pytest.raises(ValueError, match=message):
        parse_blend(text)


def test_term_flag():
    assert parse_term("org/model=a=-0.25") == Term("org/model=a", -0.25)
    for bad, message in (("grimm-big", "expected MODEL=WEIGHT"), ("grimm-big=nan", "not finite"),
                         ("=1", "no model named"), ("grimm-big=x", "not a number")):
        with pytest.raises(ValueError, match=message):
            parse_term(bad)


def test_models_are_checked_against_the_store_by_term():
    assert require_terms(STORE, STORE) == STORE
    with pytest.raises(ValueError, match=r"^term 4: unknown model 'davinci'; the store holds: grimm-big, "):
        require_terms((*STORE[:3], "davinci"), STORE)
    with pytest.raises(ValueError, match=r"^term 2 \(tuned\): unknown model 'davinci'"):
        require_terms(("grimm-big", "davinci", "grimm-small"), STORE)
    with pytest.raises(ValueError, match=r"grimm-big is in two terms \(terms 1 and 4\)"):
        require_terms(("grimm-big", "grimm-small", "grimm-small-tuned", "grimm-big"), STORE)
    with pytest.raises(ValueError, match="at least one model"):
        require_terms((), STORE)
