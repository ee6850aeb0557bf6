"""Blends of any number of models through the Python API: evaluation, Newton, TPE over a subset,
and the calibration of a blend other than the three roles'."""

import shutil

import numpy as np
import pytest

import engine
from engine.estimators import CALIBRATED_ESTIMATOR, FALLBACK_ESTIMATOR
from engine.tuning import tune
from tests.engine.naive import naive_blend_nll
from tests.helpers import GRIMM_DIR

FOUR = ("grimm-big", "grimm-small-tuned", "grimm-small", "grimm-big-tuned")
W4 = np.array([1.0, 0.7, -0.9, 0.4])


@pytest.mark.parametrize("estimator", ["zipf-tail", "spread-tail", "union-kth-tail"])
def test_four_models_agree_with_the_plain_twin_and_do_not_depend_on_term_order(grimm_dataset, estimator):
    blend = grimm_dataset.blend(FOUR, estimator=estimator)
    m = blend.matrix
    assert blend.models == FOUR and m.n_models == 4
    rows = np.arange(0, grimm_dataset.n_positions, 97)
    got = blend.nll(W4, rows)
    small = m.take(rows)
    want = naive_blend_nll(small.offsets, small.values, small.row_weights(W4), small.outside, small.outside_nll)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    order = [3, 1, 0, 2]
    permuted = grimm_dataset.blend([FOUR[i] for i in order], estimator=estimator)
    np.testing.assert_allclose(permuted.nll(W4[order]), blend.nll(W4), atol=1e-4)


def test_a_four_model_report_carries_its_weights_and_batches(grimm_dataset):
    blend = grimm_dataset.blend(FOUR)
    assert blend.estimator == FALLBACK_ESTIMATOR  # the store's fit is for the three roles only
    batch = np.array([W4, [1.0, 0.0, 0.0, 0.0], [0.2, 0.3, -0.7, 1.0]])
    reports = blend.evaluate(batch)
    for w, r in zip(batch, reports, strict=True):
        assert r.weights.tolist() == w.tolist()
        single = blend.mean_nll(w, split="test")
        assert np.log(r.splits["test"].perplexity) == pytest.approx(float(single), rel=1e-9)
    with pytest.raises(ValueError, match="4 columns"):
        blend.mean_nll([1.0, 1.0, -1.0], split="val")


def test_newton_finds_the_optimum_of_all_four_weights(grimm_dataset):
    blend = grimm_dataset.blend(FOUR)
    found = tune(blend, method="newton")
    assert found.weights.shape == (4,) and found.details["converged"]
    assert found.parametrization.names == ("a_1", "a_2", "a_3", "a_4")
    best = float(blend.mean_nll(found.weights, split="val"))
    rng = np.random.default_rng(0)
    around = found.weights + rng.normal(scale=0.05, size=(16, 4))
    assert (blend.mean_nll(around, split="val") > best).all()
    _, grad, _ = blend.mean_nll_grad_hess(found.weights, split="val")
    assert np.abs(grad).max() < 1e-4
    # All four weights moved: the optimum is no three-model blend.
    assert (np.abs(found.weights) > 0.05).all()


def test_tpe_searches_a_subset_and_holds_the_rest(grimm_dataset):
    blend = grimm_dataset.blend(FOUR)
    found = tune(blend, method="tpe", trials=32, fixed={"a_1": 1.0, "a_3": -1.0})
    assert found.weights[0] == 1.0 and found.weights[2] == -1.0
    assert found.params.tolist() == found.weights.tolist()
    with pytest.raises(ValueError, match="has no parameter 'a_5'"):
        tune(blend, method="tpe", trials=2, fixed={"a_5": 1.0})
    with pytest.raises(ValueError, match="nothing left to search"):
        tune(blend, method="tpe", trials=2, fixed={f"a_{i}": 0.0 for i in range(1, 5)})
    with pytest.raises(ValueError, match="--fix apply to --method tpe only"):
        tune(blend, method="newton", fixed={"a_1": 1.0})


def test_a_formula_of_three_models_refuses_four(grimm_dataset):
    with pytest.raises(ValueError, match="'proxy-tuning' is a formula over 3 models .* this blend has 4"):
        engine.get_parametrization("proxy-tuning", 4)
    with pytest.raises(ValueError, match="formula over 3 models"):
        tune(grimm_dataset.blend(FOUR), method="tpe", parametrization="temperatures", trials=2)


def test_calibration_of_a_two_model_blend(grimm_store, tmp_path):
    store = tmp_path / "grimm.store"
    shutil.copytree(grimm_store, store)
    ds = engine.open_dataset(store)
    pair = ("grimm-small-tuned", "grimm-big")
    assert ds.default_estimator(pair) == FALLBACK_ESTIMATOR
    fit, _ = ds.calibrate(GRIMM_DIR / "deep", models=pair, files=["top1000_small_tuned.npz", "top1000_big.npz"])
    assert fit.path.name == "grimm-small-tuned+grimm-big.json" and fit.drops.drop.shape[2] == 2
    assert ds.default_estimator(pair) == CALIBRATED_ESTIMATOR
    figure = ds.blend(pair).evaluate([1.0, 0.5]).splits["test"].perplexity
    assert np.isfinite(figure) and figure != ds.blend(pair, estimator=FALLBACK_ESTIMATOR).evaluate(
        [1.0, 0.5]).splits["test"].perplexity
    # The fit is for this order of these models: another order or another set has none.
    for other in (pair[::-1], (*pair, "grimm-small")):
        with pytest.raises(ValueError, match=f"needs a calibration fit for {', '.join(other)} \\(in this order\\)"):
            ds.blend(other, estimator=CALIBRATED_ESTIMATOR)
