"""The masked formulas (``dexperts``, ``contrastive``) and ``--mask`` on the bundled data, each
against the plain-NumPy twin (``tests/engine/naive.py``) over the unmasked estimator matrix."""

import numpy as np
import pytest

from engine.evaluation import evaluate
from engine.masked_blend import masked_blend
from engine.masks import Mask, apply_mask
from engine.params import get_parametrization
from engine.tuning import tune
from tests.engine.naive import naive_keep, naive_masked_nll
from tests.helpers import GRIMM_ROLES

ROLES = tuple(GRIMM_ROLES.values())
FOUR = (*ROLES, "grimm-big-tuned")


@pytest.mark.parametrize("name, params, rule, value", [
    ("dexperts", [1.5, 0.95], "top-p", 0.95),
    ("dexperts", [], "top-p", 0.9),
    ("contrastive", [0.05, 0.7], "relative", 0.05),
])
@pytest.mark.parametrize("estimator", ["zipf-tail", "union-kth-tail", "prototype"])
def test_masked_formulas_agree_with_the_naive_twin(grimm_dataset, name, params, rule, value, estimator):
    param = get_parametrization(name)
    mask = param.mask(params, ROLES)
    assert (mask.rule, mask.model, mask.value) == (rule, "grimm-big", value)
    base = grimm_dataset.blend(ROLES, estimator=estimator)
    blend = masked_blend(base, mask)
    rows = np.arange(0, grimm_dataset.n_positions, 53)
    weights = np.array([param.weights(params), [1.0, 1.0, -1.0], [0.5, 0.2, 0.0]])
    got = blend.nll(weights, rows)
    m = base.matrix.take(rows)
    want = naive_masked_nll(m.offsets, m.values, m.row_weights(weights), m.outside, m.outside_nll, 0, m.n_models,
                            rule, value)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    dropped = [not m.outside[i] and not naive_keep(m.values[:, int(m.offsets[i]):int(m.offsets[i + 1])], 0,
                                                   m.n_models, rule, value)[0] for i in range(rows.size)]
    outside = apply_mask(base.matrix, ROLES, mask).target_outside
    assert (outside[rows] == np.array(dropped)).all()
    assert blend.outside.tolist() == [int((outside & grimm_dataset.split_mask(s)).sum()) for s in grimm_dataset.splits]
    assert np.isinf(got[:, np.array(dropped, dtype=bool)]).all()


def test_evaluate_reports_what_the_mask_drops(grimm_dataset):
    result = evaluate(grimm_dataset, ROLES, parametrization="dexperts", params=[1.0, 0.9], estimator="zipf-tail")
    counts = result.mask["targets_outside"]
    assert result.mask["floor"] is None and counts["val"] > 0 and counts["test"] > 0
    assert result.blend.splits["val"].perplexity == np.inf
    floored = evaluate(grimm_dataset, ROLES, parametrization="dexperts", params=[1.0, 0.9], estimator="zipf-tail",
                       mask_floor=30.0)
    assert floored.mask["targets_outside"] == counts and np.isfinite(floored.blend.splits["val"].perplexity)
    # The floor is charged per dropped target: the difference to the unfloored sum is all of it.
    unmasked = grimm_dataset.blend(ROLES, estimator="zipf-tail")
    loose = masked_blend(unmasked, Mask("top-p", "grimm-big", 0.9))
    inside = ~apply_mask(unmasked.matrix, ROLES, Mask("top-p", "grimm-big", 0.9)).target_outside
    nll = loose.nll([1.0, 1.0, -1.0])
    val = grimm_dataset.split_mask("val")
    want = (nll[inside & val].sum() + 30.0 * counts["val"]) / val.sum()
    assert np.log(floored.blend.splits["val"].perplexity) == pytest.approx(want, rel=1e-9)
    json = floored.as_json()["blend"]
    assert json["mask"] == {"rule": "top-p", "model": "grimm-big", "value": 0.9, "floor": 30.0,
                            "targets_outside": counts}


def test_a_mask_on_a_four_model_blend(grimm_dataset):
    mask = Mask("relative", "grimm-big-tuned", 0.001)
    result = evaluate(grimm_dataset, FOUR, parametrization="loglinear", params=[1.0, 1.0, -1.0, 0.5],
                      estimator="zipf-tail", mask=mask, mask_floor=20.0)
    assert result.mask["model"] == "grimm-big-tuned" and result.bounds is None
    with pytest.raises(ValueError, match=r"'grimm-big-tuned' is not a model of the blend"):
        evaluate(grimm_dataset, ROLES, parametrization="loglinear", params=[1.0, 1.0, -1.0], mask=mask)
    with pytest.raises(ValueError, match="brings its own mask"):
        evaluate(grimm_dataset, ROLES, parametrization="dexperts", params=[], mask=Mask("top-p", "grimm-big", 0.5))
    with pytest.raises(ValueError, match="--mask-floor applies to a masked blend"):
        evaluate(grimm_dataset, ROLES, parametrization="loglinear", params=[1.0, 1.0, -1.0], mask_floor=30.0)
    with pytest.raises(ValueError, match=r"'dexperts': top_p must be in \(0, 1\], got top_p=0"):
        evaluate(grimm_dataset, ROLES, parametrization="dexperts", params=[1.0, 0.0])


def test_tuning_a_masked_formula_holds_the_mask_and_needs_a_floor(grimm_dataset):
    blend = grimm_dataset.blend(ROLES, estimator="zipf-tail")
    with pytest.raises(ValueError, match=r"mask top-p:grimm-big=0.9 drops the target at [\d,]+ val positions"):
        tune(blend, method="tpe", parametrization="dexperts", trials=4)
    found = tune(blend, method="tpe", parametrization="dexperts", trials=24, mask_floor=30.0,
                 fixed={"top_p": 0.8})
    assert found.params[1] == 0.8 and found.weights[0] == 1.0 and found.weights[1] == -found.weights[2]
    assert found.mask["value"] == 0.8 and found.mask["floor"] == 30.0
    # The optimum's figure is the masked blend's at those weights.
    masked = masked_blend(blend, Mask("top-p", "grimm-big", 0.8), floor=30.0)
    assert found.report.splits["val"].perplexity == pytest.approx(
        float(np.exp(masked.mean_nll(found.weights, split="val"))), rel=1e-9)


def test_a_blend_masked_already_takes_no_second_mask(grimm_dataset):
    masked = masked_blend(grimm_dataset.blend(ROLES, estimator="zipf-tail"), Mask("top-p", "grimm-big", 0.9))
    with pytest.raises(ValueError, match=r"^mask relative:grimm-big=0.1: a mask applies to one candidate matrix of a "
                       r"top-k estimator; this 'zipf-tail' blend is masked already$"):
        masked_blend(masked, Mask("relative", "grimm-big", 0.1))
