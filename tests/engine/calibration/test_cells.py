"""The cell compression of full distributions (engine.calibration.cells) and a matrix's row subset,
against a float64 log-sum-exp over every token."""

import numpy as np

from engine.calibration.cells import cell_runs
from engine.candidates import CandidateMatrix
from engine.kernels import blend_nll


def _exact(lp, target, w):
    s = np.einsum("m,mpv->pv", w, lp.astype(np.float64))
    top = s.max(axis=1, keepdims=True)
    return (top[:, 0] + np.log(np.exp(s - top).sum(axis=1))) - s[np.arange(s.shape[0]), target]


def test_cells_match_the_full_vocabulary_within_their_stated_error():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(1, 40, 3000)) * 2.5
    lp = np.concatenate([logits, logits + rng.normal(size=(2, 40, 3000)) * 0.7])  # three correlated models
    lp = (lp - np.log(np.exp(lp).sum(axis=2, keepdims=True))).astype(np.float32)
    target = rng.integers(0, 3000, size=40)
    lengths, values = cell_runs(lp, target, 0.25)
    assert values.shape[0] == 4 and lengths.sum() == values.shape[1] and (lengths < 3000).all()
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.uint64)
    m = CandidateMatrix.with_target_inside(offsets, values, n_models=3, estimator="cells")
    # every token counted once: the log-count row sums to V - 1 besides the target
    counts = [np.exp(values[3, int(offsets[i]) + 1 : int(offsets[i + 1])].astype(np.float64)).sum() for i in range(40)]
    np.testing.assert_allclose(counts, 2999, rtol=1e-5)
    for w in ([1.0, 1.0, -1.0], [0.3, 1.2, -0.5], [1.0, 0.0, 0.0]):
        got = blend_nll(m.offsets, m.values, m.row_weights(np.array([w])), m.outside, 0.0)[0]
        want = _exact(lp, target, np.array(w))
        assert np.abs(got - want).max() < 0.05 and abs((got - want).mean()) < 5e-3
        assert (got <= want + 1e-4).all()  # Jensen: a cell never counts more than its tokens


def test_tokens_a_model_lacks_are_left_out():
    lp = np.log(np.full((2, 1, 4), 0.25, dtype=np.float32))
    lp[1, 0, 3] = np.nan
    lengths, values = cell_runs(lp, np.array([0]), 0.25)
    assert lengths.tolist() == [2]  # the target, and one cell of tokens 1 and 2
    assert np.exp(values[2, 1]) == np.float32(2.0)


def test_take_keeps_the_runs_of_the_rows_asked_in_order():
    offsets = np.array([0, 2, 5, 6], dtype=np.uint64)
    values = np.arange(12, dtype=np.float32).reshape(2, 6)
    m = CandidateMatrix.with_target_inside(offsets, values, n_models=2, estimator="x")
    sub = m.take(np.array([2, 0]))
    assert sub.offsets.tolist() == [0, 1, 3]
    assert sub.values.tolist() == [[5, 0, 1], [11, 6, 7]]
