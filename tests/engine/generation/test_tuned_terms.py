"""Reading the blend generation samples from: any number of terms, a plausibility mask, the
three-weight form written before blends had terms, and a corrected estimator; each malformed
field one error naming it."""

import json

import pytest

from engine.generation.generate import setup
from engine.generation.tuned import tuned_blend
from engine.masks import Mask

LEGACY = {"weights": [1.0, 1.0, -1.0], "estimator": "zipf-tail", "models": {"big": "b", "tuned": "t", "untuned": "u"}}
FOUR = {"terms": [{"model": "b", "weight": 1.0}, {"model": "t", "weight": 0.5}, {"model": "u", "weight": -0.5},
                  {"model": "bt", "weight": 0.25}], "estimator": "zipf-tail",
        "mask": {"rule": "relative", "model": "b", "value": 0.1, "floor": None, "targets_outside": {"val": 3}}}


def test_terms_and_a_mask_are_read_and_written_back():
    blend = tuned_blend(FOUR)
    assert blend.models == ("b", "t", "u", "bt") and blend.weights == (1.0, 0.5, -0.5, 0.25)
    assert blend.mask == Mask("relative", "b", 0.1)
    assert tuned_blend(blend.to_json()) == blend


def test_the_three_weight_form_names_its_models_by_role_or_not_at_all():
    assert tuned_blend(LEGACY).models == ("b", "t", "u")
    assert tuned_blend({**LEGACY, "models": None}).models is None
    # eval's JSON writes terms beside the role map: the terms are read.
    both = {**LEGACY, "terms": [{"model": m, "weight": w} for m, w in zip("btu", LEGACY["weights"], strict=True)]}
    assert tuned_blend(both).weights == (1.0, 1.0, -1.0)


@pytest.mark.parametrize("change, message", [
    ({"terms": []}, "field 'terms' must be a non-empty list"),
    ({"terms": [{"model": "b"}]}, "field 'terms[0]' must be {\"model\": name, \"weight\": finite number}"),
    ({"terms": [{"model": "b", "weight": 1.0}, {"model": "b", "weight": 2.0}]}, "field 'terms[1]': 'b' is in two terms"),
    ({"terms": [{"model": "b", "weight": float("nan")}]}, "field 'terms[0]'"),
    ({"weights": [1.0, 0.5, -0.5, 9.0]}, "field 'weights' is [1.0, 0.5, -0.5, 9.0], not the weights of field 'terms'"),
    ({"mask": {"rule": "relative", "model": "nowhere", "value": 0.1}}, "field 'mask': mask relative:nowhere=0.1: 'nowhere' is not a model"),
    ({"mask": {"rule": "top-k", "model": "b", "value": 0.1}}, "field 'mask': mask top-k:b=0.1: unknown rule"),
    ({"mask": {"rule": "top-p", "model": "b", "value": 0.0}}, "field 'mask': mask top-p:b=0: top_p must be in (0, 1]"),
    ({"mask": {"rule": "top-p", "model": "b"}}, "field 'mask': must hold a rule, a model and a finite value"),
    ({"estimator": "magic"}, "field 'estimator'"),
])
def test_a_malformed_field_is_named(change, message):
    with pytest.raises(ValueError, match=None) as err:
        tuned_blend({**FOUR, **change})
    assert message in str(err.value)


def test_a_mask_needs_named_models_and_the_legacy_form_three_weights():
    with pytest.raises(ValueError, match="field 'mask': a masked blend must name its models"):
        tuned_blend({**LEGACY, "models": None, "mask": FOUR["mask"]})
    with pytest.raises(ValueError, match="field 'weights' must be three finite numbers \\(or give field 'terms'\\)"):
        tuned_blend({**LEGACY, "weights": [1.0, 1.0]})


def test_a_corrected_blend_samples_from_its_base_estimator_and_says_so(tmp_path):
    blend = tuned_blend({**FOUR, "estimator": "corrected:zipf-tail"})
    assert blend.estimator == "zipf-tail" and blend.corrected and blend.to_json()["estimator"] == "zipf-tail"
    config = tmp_path / "models.toml"
    config.write_text('[defaults]\nbase_url = "http://127.0.0.1:9/v1"\n' + "".join(
        f'[models.{role}]\nmodel = "{model}"\n' for role, model in
        {"big": "b", "tuned": "t", "untuned": "u", "reference": "bt"}.items()))
    params = tmp_path / "tuned.json"
    params.write_text(json.dumps({"best": {**FOUR, "estimator": "corrected:zipf-tail"}}))
    ready = setup(config, params)
    assert ready.tuned == blend and list(ready.endpoints) == ["b", "t", "u", "bt"]
    assert any("samples from its base estimator, zipf-tail" in note for note in ready.notes)
