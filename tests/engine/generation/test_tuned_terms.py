"""What generation refuses of a tuned blend it cannot reproduce: more or fewer than three
models, or a plausibility mask."""

import pytest

from engine.generation.tuned import tuned_blend

BLOCK = {"weights": [1.0, 1.0, -1.0], "estimator": "zipf-tail",
         "models": {"big": "b", "tuned": "t", "untuned": "u"}}


def test_three_terms_without_a_mask_are_read():
    assert tuned_blend(BLOCK).weights == (1.0, 1.0, -1.0)
    assert tuned_blend({**BLOCK, "terms": [{}, {}, {}], "mask": None}).models == BLOCK["models"]


@pytest.mark.parametrize("extra, message", [
    ({"terms": [{}, {}, {}, {}], "weights": [1.0, 1.0, -1.0, 0.5], "models": None},
     "field 'terms': generation blends three models .* this blend has 4"),
    ({"mask": {"rule": "top-p"}}, "field 'mask': generation does not apply a plausibility mask"),
])
def test_what_generation_cannot_reproduce_is_named(extra, message):
    with pytest.raises(ValueError, match=message):
        tuned_blend({**BLOCK, **extra})
