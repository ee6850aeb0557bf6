"""The tail estimators (spread-tail, zipf-tail, calibrated-tail) and their calibration, against
dict twins on random ragged data; the calibration sample's layout against the store's."""

import math
from dataclasses import replace
from functools import cache

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.calibration.fit import fit_missing_drops
from engine.calibration.sample import CalibrationSample
from engine.candidates import MissingDrops
from engine.estimators import ESTIMATORS, calibrated_tail, get_estimator
from engine.estimators._fill import BIN_RATIO, TAIL_MASS_FLOOR
from engine.kernels import blend_nll
from ingest.prepare.bpe import GPT2_VOCAB_SIZE
from tests.engine.estimators.naive import (
    Position,
    calibrated_tail_nll,
    random_positions,
    spread_tail_nll,
    union_candidates,
    zipf_tail_nll,
)

VOCAB = 40  # the tail holds VOCAB - |support| tokens (the positions draw from 12)

# The random positions have lists of 1 to 4 entries; the fits are for 4 (and say so where they differ).
pytestmark = pytest.mark.filterwarnings("ignore:calibrated-tail. the missing-value fit:UserWarning")


def nll(matrix, weights) -> np.ndarray:
    m = matrix
    return blend_nll(m.offsets, m.values, m.row_weights(np.atleast_2d(weights)), m.outside, m.outside_nll)[0]


def build(name: str, positions: list[Position], **kw):
    data = union_candidates(positions, vocab_size=VOCAB)
    return calibrated_tail.build(data, **kw) if kw else get_estimator(name).build(data)


weights_st = st.lists(st.floats(-2.0, 2.0, allow_nan=False).map(lambda x: round(x, 3)), min_size=3, max_size=3)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 20), weights=weights_st)
def test_spread_tail_matches_dict_twin(seed, n, weights):
    positions = random_positions(seed, n)
    expected = [spread_tail_nll(p, weights, TAIL_MASS_FLOOR, VOCAB) for p in positions]
    np.testing.assert_allclose(nll(build("spread-tail", positions), weights), expected, rtol=2e-5, atol=2e-5)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 20), weights=weights_st)
def test_zipf_tail_matches_dict_twin(seed, n, weights):
    positions = random_positions(seed, n)
    expected = [zipf_tail_nll(p, weights, VOCAB, BIN_RATIO, TAIL_MASS_FLOOR) for p in positions]
    np.testing.assert_allclose(nll(build("zipf-tail", positions), weights), expected, rtol=2e-5, atol=2e-5)


def random_drops(seed: int, n_models: int = 3, n_nodes: int = 4) -> MissingDrops:
    """Drops in 0-6 nats, node weights from a Dirichlet, some nodes unused."""
    rng = np.random.default_rng(seed)
    drop = rng.uniform(0.0, 6.0, size=(1 << n_models, n_nodes, n_models))
    weight = rng.dirichlet(np.ones(n_nodes), size=1 << n_models)
    weight[rng.random(weight.shape) < 0.3] = 0.0
    weight[:, 0] += weight.sum(axis=1) == 0
    weight /= weight.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore"):
        return MissingDrops(k=4, drop=drop, log_weight=np.log(weight))


@cache
def sample_fit() -> MissingDrops:
    """``fit_missing_drops`` on a synthetic deep sample at k = 4: a fit's structure (unused nodes,
    zero drops of listing models), as ``approxft calibrate`` writes one."""
    return fit_missing_drops(random_sample(7, n=80), 4)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 20), weights=weights_st, fitted=st.booleans())
def test_calibrated_tail_matches_dict_twin(seed, n, weights, fitted):
    positions = random_positions(seed, n)
    drops = sample_fit() if fitted else random_drops(seed)
    expected = [calibrated_tail_nll(p, weights, drops, VOCAB, BIN_RATIO, TAIL_MASS_FLOOR) for p in positions]
    np.testing.assert_allclose(nll(build("calibrated-tail", positions, drops=drops), weights), expected,
                               rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("name", ["zipf-tail", "calibrated-tail"])
def test_a_single_model_keeps_its_exact_nll(name):
    """Each model's values sum to one, so the blend (1, 0, 0) is the big model itself (spread-tail:
    where union-kth-tail's is, see the next test)."""
    positions = random_positions(3, 60, vocab=200)
    data = replace(union_candidates(positions, vocab_size=GPT2_VOCAB_SIZE), calibration=sample_fit())
    got = nll(ESTIMATORS[name].build(data), [1.0, 0.0, 0.0])
    np.testing.assert_allclose(got, [-p.target_lp[0] for p in positions], rtol=1e-5, atol=1e-5)


def test_spread_tail_equals_union_kth_tail_when_weights_sum_to_one():
    positions = random_positions(5, 50)
    data = union_candidates(positions, vocab_size=VOCAB)
    for w in ([1.0, 0.0, 0.0], [0.5, 0.8, -0.3], [1.0, 1.0, -1.0]):
        np.testing.assert_allclose(nll(ESTIMATORS["spread-tail"].build(data), w),
                                   nll(ESTIMATORS["union-kth-tail"].build(data), w), rtol=1e-5, atol=1e-5)


def random_sample(seed: int, n: int = 30, vocab: int = 60, depth: int = 25, n_models: int = 3) -> CalibrationSample:
    """Deep lists of real softmax distributions (correlated models) over a small vocabulary."""
    rng = np.random.default_rng(seed)
    ids = np.empty((n_models, n, depth), dtype=np.int64)
    lp = np.empty((n_models, n, depth), dtype=np.float32)
    target = rng.integers(vocab, size=n)
    target_lp = np.empty((n_models, n), dtype=np.float32)
    for i in range(n):
        base = rng.normal(scale=2.0, size=vocab)
        for m in range(n_models):
            logits = base + rng.normal(scale=1.0, size=vocab)
            full = logits - np.logaddexp.reduce(logits)
            order = np.argsort(-full, kind="stable")[:depth]
            ids[m, i], lp[m, i], target_lp[m, i] = order, full[order], full[target[i]]
    return CalibrationSample(ids=ids, lp=lp, target=target, target_lp=target_lp, vocab_size=vocab)


def test_calibration_sample_union_is_the_stores_layout():
    sample = random_sample(0)
    k = 6
    positions = [
        Position(tuple({int(t): float(v) for t, v in zip(sample.ids[m, i, :k], sample.lp[m, i, :k], strict=True)}
                       for m in range(3)), int(sample.target[i]), tuple(float(x) for x in sample.target_lp[:, i]))
        for i in range(sample.n_positions)
    ]
    got, want = sample.union(k), union_candidates(positions, vocab_size=sample.vocab_size)
    np.testing.assert_array_equal(got.offsets, want.offsets)
    np.testing.assert_array_equal(got.rank, want.rank)
    np.testing.assert_array_equal(got.lp, want.lp)
    assert got.k.tolist() == [k] * 3


def test_fitted_drops_are_distributions_of_observed_drops():
    sample = random_sample(1, n=80)
    drops = fit_missing_drops(sample, 5)
    weight = np.exp(drops.log_weight)
    full = (1 << 3) - 1
    for mask in range(1, full):
        assert weight[mask].sum() == pytest.approx(1.0)
        used = weight[mask] > 0
        assert (drops.drop[mask][used] >= 0).all()
        listed = [m for m in range(3) if mask >> m & 1]
        assert (drops.drop[mask][:, listed] == 0).all()
    # The drops a deeper sample sees at k are what the fit summarizes: their overall mean matches.
    assert drops.drop[1:full][weight[1:full] > 0].max() < 30


def test_calibrated_tail_refuses_drops_for_another_number_of_models():
    positions = random_positions(2, 5)
    with pytest.raises(ValueError, match="models"):
        calibrated_tail.build(union_candidates(positions), random_drops(0, n_models=2))


def test_calibrated_tail_without_a_fit_says_how_to_make_one():
    data = union_candidates(random_positions(2, 5))
    assert data.calibration is None
    with pytest.raises(ValueError, match="approxft calibrate"):
        calibrated_tail.build(data)
    # The data's own fit is the default; an explicit one wins.
    fitted = replace(data, calibration=sample_fit())
    np.testing.assert_array_equal(calibrated_tail.build(fitted).values, calibrated_tail.build(data, sample_fit()).values)


@pytest.mark.slow
def test_default_estimator_is_close_to_the_exact_proxy_tuning_figure(grimm_dataset):
    """The data card's exact full-vocabulary figure (data/grimm/README.md): within 3% (issue 4's target)."""
    from engine.bundled import EXACT_PROXY_TUNING
    from engine.estimators import CALIBRATED_ESTIMATOR
    from tests.helpers import GRIMM_ROLES

    report = grimm_dataset.blend(**GRIMM_ROLES).evaluate([1.0, 1.0, -1.0])
    assert report.estimator == CALIBRATED_ESTIMATOR  # the store is calibrated (conftest)
    for split, exact in EXACT_PROXY_TUNING.items():
        assert report.splits[split].perplexity == pytest.approx(exact, rel=0.03), split
    assert math.isfinite(report.splits["test"].bits_per_byte)


def positions_with_truth(seed: int, n: int, vocab: int = 12, k: int = 4):
    """Random positions (as ``random_positions``) and each one's full distributions ``(M, vocab)``."""
    rng = np.random.default_rng(seed)
    positions, full = [], []
    for _ in range(n):
        target = int(rng.integers(vocab))
        lps = []
        for _ in range(3):
            logits = rng.normal(scale=rng.uniform(0.5, 4.0), size=vocab)
            lps.append(logits - np.logaddexp.reduce(logits))
        lists = tuple({int(t): float(np.float32(lp[t])) for t in np.argsort(-lp)[: int(rng.integers(1, k + 1))]}
                      for lp in lps)
        positions.append(Position(lists, target, tuple(float(np.float32(lp[target])) for lp in lps)))
        full.append(np.array(lps))
    return positions, full


bound_weights_st = st.lists(st.floats(-2.0, 2.0, allow_nan=False).map(lambda x: round(x, 2)), min_size=3, max_size=3)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 15), weights=bound_weights_st)
def test_bounds_contain_the_exact_nll(seed, n, weights):
    from engine.estimators.bounds import nll_bounds

    positions, full = positions_with_truth(seed, n)
    a = np.asarray(weights)
    exact = [np.logaddexp.reduce(a @ lp) - a @ lp[:, p.target] for p, lp in zip(positions, full, strict=True)]
    lower, upper = nll_bounds(union_candidates(positions, vocab_size=12), a[None])
    assert (lower[0] <= np.asarray(exact) + 1e-4).all()
    assert (np.asarray(exact) <= upper[0] + 1e-4).all()
    assert np.isinf(upper[0]).all() == (a < 0).any()


def test_the_tail_exponent_is_the_root_sixty_bisections_find():
    """``fit_beta`` (Newton's method in a shrinking bracket) against the naive twin's bisection,
    over list lengths, vocabularies and masses far wider than the data's."""
    from engine.estimators._fill import fit_beta
    from tests.engine.estimators.naive import fit_exponent

    rng = np.random.default_rng(7)
    for _ in range(3000):
        k, vocab = int(rng.integers(1, 2000)), int(rng.choice([1000, 32000, 50257, 152064, 256000]))
        p_k, rest = float(np.exp(rng.uniform(-25, -0.2))), float(np.exp(rng.uniform(-14, 0)))
        if vocab > k + 2:
            assert fit_beta(k, vocab, p_k, rest) == pytest.approx(fit_exponent(k, vocab, p_k, rest), rel=1e-11, abs=1e-15)
