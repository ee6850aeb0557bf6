"""Masks (``engine.masks``) against their plain-NumPy twins (``tests/engine/naive.py``), on
random ragged matrices, batched over weight vectors through the kernels."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.candidates import CandidateMatrix
from engine.kernels import blend_nll
from engine.masks import Mask, apply_mask
from tests.engine.naive import naive_masked_nll
from tests.engine.test_kernels import matrix

MODELS = ("m0", "m1", "m2", "m3")


@st.composite
def masked_inputs(draw):
    """A filled matrix of 1..4 models, with or without a log-multiplicity row, some positions
    outside (with empty runs among them), a mask on any of its models, and B weight vectors."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = draw(st.integers(0, 20))
    n_models = draw(st.integers(1, 4))
    fixed = draw(st.sampled_from([0, 1]))
    outside = rng.random(n) < draw(st.sampled_from([0.0, 0.2]))
    lengths = rng.integers(1, draw(st.sampled_from([2, 8, 40])), n)
    lengths[outside & (rng.random(n) < 0.5)] = 0
    # -inf values only without outside positions: with them (the prototype's kind of matrix), a
    # dropped target keeps its slot with a -inf term, and the kernels' NaN where every kept slot
    # scores -inf too (which the prototype's finite fills never give) is no +inf.
    p_neg_inf = 0.0 if outside.any() else draw(st.sampled_from([0.0, 0.05]))
    offsets, values = matrix(lengths, n_models + fixed, rng, p_neg_inf=p_neg_inf, low=-12.0)
    if fixed:
        values[n_models] = np.log(rng.integers(1, 50, values.shape[1])).astype(np.float32)
    # An estimator that charges its own NLL outside its support (the prototype's 30) sets it; others 0.
    m = CandidateMatrix(offsets=offsets, values=values, outside=outside, outside_nll=30.0 if outside.any() else 0.0,
                        n_models=n_models, estimator="random")
    rule = draw(st.sampled_from(["top-p", "relative"]))
    value = draw(st.sampled_from([1.0, 0.9, 0.5, 0.1, 1e-3]))
    row = draw(st.integers(0, n_models - 1))
    weights = rng.uniform(0.0, 2.0, (draw(st.integers(1, 40)), n_models)) * (rng.random((1, n_models)) > 0.2)
    floor = draw(st.sampled_from([None, 30.0]))
    return m, Mask(rule, MODELS[row], value), row, weights, floor


@settings(max_examples=150, deadline=None)
@given(masked_inputs())
def test_masked_blend_matches_the_naive_twin(inputs):
    m, mask, row, weights, floor = inputs
    masked = apply_mask(m, MODELS[: m.n_models], mask, floor=floor)
    got = blend_nll(masked.matrix.offsets, masked.matrix.values, masked.matrix.row_weights(weights),
                    masked.matrix.outside, masked.matrix.outside_nll)
    want = naive_masked_nll(m.offsets, m.values, m.row_weights(weights), m.outside, m.outside_nll, row, m.n_models,
                            mask.rule, mask.value, floor)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    dropped = got[:, masked.target_outside]
    assert (dropped == floor).all() if floor is not None else (np.isinf(dropped) | np.isnan(dropped)).all()
    assert masked.matrix.values.shape[1] <= m.values.shape[1]  # masking never adds candidates


def test_top_p_one_keeps_everything_and_the_bounds_are_checked():
    rng = np.random.default_rng(0)
    offsets, values = matrix([5, 3, 7], 2, rng)
    m = CandidateMatrix.with_target_inside(offsets, values, n_models=2, estimator="random")
    same = apply_mask(m, ("a", "b"), Mask("top-p", "b", 1.0)).matrix
    assert (same.values == values).all() and not apply_mask(m, ("a", "b"), Mask("top-p", "b", 1.0)).target_outside.any()
    for rule, value, message in (("top-p", 0.0, r"top_p must be in \(0, 1\], got 0"),
                                 ("relative", 1.5, r"alpha must be in \(0, 1\], got 1.5"),
                                 ("top-p", float("nan"), "top_p must be in"),
                                 ("nucleus", 0.5, "unknown rule 'nucleus'")):
        with pytest.raises(ValueError, match=message):
            Mask(rule, "a", value)
    with pytest.raises(ValueError, match=r"mask top-p:c=0.9: 'c' is not a model of the blend \(a, b\)"):
        apply_mask(m, ("a", "b"), Mask("top-p", "c", 0.9))
    with pytest.raises(ValueError, match="floor must be a finite NLL >= 0"):
        apply_mask(m, ("a", "b"), Mask("top-p", "a", 0.9), floor=-1.0)


@settings(max_examples=100, deadline=None)
@given(masked_inputs(), st.floats(0.0, 1.0))
def test_masking_parts_and_putting_them_together_masks_the_whole(inputs, at):
    # What a sharded store streamed or dealt to Ray workers relies on: a part's masked matrix has
    # the whole's rows and outside NLL even where no target of the part is outside the estimator's
    # support or dropped (the prototype's kind of matrix: an extra fixed row, its own outside NLL).
    m, mask, _, _, floor = inputs
    n = m.outside.size
    cut = int(at * n)
    whole = apply_mask(m, MODELS[: m.n_models], mask, floor=floor)
    parts = [apply_mask(m.take(rows), MODELS[: m.n_models], mask, floor=floor)
             for rows in (np.arange(cut), np.arange(cut, n)) if rows.size]
    if not parts:
        return
    joined = CandidateMatrix.concatenate((p.matrix for p in parts), n_positions=n,
                                         n_rows=whole.matrix.values.shape[0], n_columns=whole.matrix.values.shape[1])
    for name in ("offsets", "values", "outside"):
        assert np.array_equal(getattr(joined, name), getattr(whole.matrix, name))
    assert joined.outside_nll == whole.matrix.outside_nll
    assert np.array_equal(np.concatenate([p.target_outside for p in parts]), whole.target_outside)
