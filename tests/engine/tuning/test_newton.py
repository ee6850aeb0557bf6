"""Newton's optimum against brute force, and the gradient/Hessian kernel against its twin."""

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.blend import Blend
from engine.estimators import ESTIMATORS
from engine.kernels import blend_nll_grad_hess
from engine.tuning.newton import newton_search
from tests.engine.naive import naive_nll_grad_hess
from tests.helpers import GRIMM_ROLES


@st.composite
def candidate_matrices(draw):
    """Ragged runs (1..12 candidates), 1..4 rows of finite values, outside flags, skipped groups."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = draw(st.integers(0, 40))
    n_rows = draw(st.integers(1, 4))
    runs = rng.integers(1, 13, size=n)
    offsets = np.zeros(n + 1, dtype=np.uint64)
    np.cumsum(runs, out=offsets[1:])
    values = rng.normal(-5.0, 3.0, size=(n_rows, int(offsets[-1]))).astype(np.float32)
    w = rng.normal(0.0, 1.0, size=n_rows).round(2)
    outside = rng.random(n) < 0.1
    group = np.where(rng.random(n) < 0.2, -1, 0).astype(np.int32)
    return offsets, values, w, outside, 30.0, group


@settings(max_examples=40, deadline=None)
@given(data=candidate_matrices())
def test_grad_hess_kernel_matches_the_naive_twin(data):
    offsets, values, w, outside, outside_nll, group = data
    total, grad, hess = blend_nll_grad_hess(offsets, values, w, outside, outside_nll, group)
    e_total, e_grad, e_hess = naive_nll_grad_hess(offsets, values, w, outside, outside_nll, group)
    # The fast path computes in float32 with a 2e-7 polynomial exp, and each run's second
    # moments about the target's values (engine.kernels._run_moments3, _run_moments): on these
    # random values (spread 3, weights up to 3) the subtraction E[uu] - E[u]E[u] cancels up to
    # two digits of float32 on a single run. Real data is far tighter: see the test below.
    np.testing.assert_allclose(total, e_total, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(grad, e_grad, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(hess, e_hess, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("weights", [(1.0, 1.0, -1.0), (0.8, 1.3, -1.1), (2.0, -1.0, 0.5)])
def test_grad_hess_kernel_on_real_data(golden_dataset, weights):
    """On the golden Grimm slice under zipf-tail (4 rows: a log-multiplicity row not
    differentiated), the mean gradient is within 2e-6 relative (1e-6 absolute near zero) of the
    float64 twin and the mean Hessian within 2e-5 (measured: up to 8e-6 on these few hundred
    positions, 1.3e-7 or better on the whole bundled val split, where errors average out)."""
    blend = golden_dataset.blend(**GRIMM_ROLES, estimator="zipf-tail")
    m = blend.matrix
    group = blend.dataset.tuning_positions("val")[0]
    w = m.row_weights(np.array(weights))[0]
    total, grad, hess = blend_nll_grad_hess(m.offsets, m.values, w, m.outside, m.outside_nll, group, n_deriv=3)
    e_total, e_grad, e_hess = naive_nll_grad_hess(m.offsets, m.values, w, m.outside, m.outside_nll, group)
    count = int((group >= 0).sum())
    assert abs(total - e_total) / count < 1e-6
    np.testing.assert_allclose(grad / count, e_grad[:3] / count, rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(hess / count, e_hess[:3, :3] / count, rtol=2e-5, atol=1e-6)


def golden_blend(request, estimator: str) -> Blend:
    """The golden data's blend under ``estimator``; one that needs a calibration fit gets the
    Grimm store's (same models and k: the golden store has no deep sample of its own)."""
    golden = request.getfixturevalue("golden_dataset")
    if not ESTIMATORS[estimator].needs_calibration:
        return golden.blend(**GRIMM_ROLES, estimator=estimator)
    models = tuple(GRIMM_ROLES.values())
    fit = request.getfixturevalue("grimm_dataset").calibration(models)
    data = replace(golden.union_candidates(models), calibration=fit)
    return Blend(golden, models, ESTIMATORS[estimator].build(data))


@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
def test_newton_finds_the_minimum_of_a_dense_grid(request, estimator):
    blend = golden_blend(request, estimator)
    found = newton_search(blend, split="val")
    assert found.converged and found.iterations <= 20
    axis = np.linspace(-3.0, 3.0, 31)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)
    values = blend.mean_nll(grid, split="val")
    best = np.nanargmin(values)
    # Newton is at least as good as every grid point, and every small step away is worse.
    assert found.mean_nll <= values[best] + 1e-9
    around = found.weights + 0.01 * np.vstack([np.eye(3), -np.eye(3)])
    assert np.all(blend.mean_nll(around, split="val") > found.mean_nll)
    assert found.mean_nll == pytest.approx(float(blend.mean_nll(found.weights, split="val")), rel=1e-6)


def test_newton_on_the_bundled_data_is_a_minimum_and_maps_to_temperatures(grimm_dataset):
    blend = grimm_dataset.blend(**GRIMM_ROLES)
    found = newton_search(blend, split="val", parametrization="temperatures")
    assert found.converged and found.passes <= 30
    assert found.gradient_norm < 1e-4
    around = found.weights + 0.02 * np.vstack([np.eye(3), -np.eye(3)])
    assert np.all(blend.mean_nll(around, split="val") > found.mean_nll)
    if found.parametrization.name == "temperatures":
        np.testing.assert_allclose(found.parametrization.weights(found.params), found.weights)


def test_newton_rejects_an_empty_split(golden_dataset):
    blend = golden_dataset.blend(**GRIMM_ROLES)
    with pytest.raises(ValueError, match="no position with at least 1000"):
        newton_search(blend, split="val", min_context=1000)


def test_grad_hess_drops_candidates_that_score_minus_inf():
    """A candidate with a -inf value under a positive weight has probability 0: the kernel
    gives what the same matrix without it gives (its neighbours' vector lanes read it too)."""
    rng = np.random.default_rng(5)
    runs = [9, 6, 11, 5, 13]
    keep_cols, offsets, drop_offsets = [], [0], [0]
    values = rng.normal(-5.0, 2.0, size=(3, sum(runs) + 8)).astype(np.float32)  # 8 spare columns
    start = 0
    for length in runs:
        cols = np.arange(start, start + length)
        gone = cols[1:][rng.random(length - 1) < 0.4]  # never the target
        values[0, gone] = -np.inf
        keep_cols.extend(c for c in cols if c not in set(gone))
        offsets.append(start + length)
        drop_offsets.append(len(keep_cols))
        start += length
    w = np.array([1.0, 0.7, 0.4])
    n = len(runs)
    args = (np.zeros(n, bool), 30.0, np.zeros(n, np.int32))
    got = blend_nll_grad_hess(np.array(offsets, np.uint64), values, w, *args)
    want = blend_nll_grad_hess(np.array(drop_offsets, np.uint64), np.ascontiguousarray(values[:, keep_cols]), w, *args)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[2], want[2], rtol=1e-4, atol=1e-6)
