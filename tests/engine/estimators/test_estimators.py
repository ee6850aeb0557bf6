"""Estimators (fill + kernel) against per-position dict twins on random ragged data."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.prototype import prototype_position_nll
from engine.estimators import ESTIMATORS, get_estimator
from engine.estimators._fill import TAIL_MASS_FLOOR
from engine.kernels import blend_nll
from tests.engine.estimators.naive import (
    Position,
    random_positions,
    union_candidates,
    union_kth_tail_nll,
)


def engine_nll(name: str, positions: list[Position], weights) -> np.ndarray:
    m = get_estimator(name).build(union_candidates(positions))
    return blend_nll(m.offsets, m.values, m.row_weights(np.atleast_2d(weights)), m.outside, m.outside_nll)[0]


weights_st = st.lists(st.floats(-2.0, 2.0, allow_nan=False).map(lambda x: round(x, 3)), min_size=3, max_size=3)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 25), weights=weights_st)
def test_union_kth_tail_matches_dict_twin(seed, n, weights):
    positions = random_positions(seed, n)
    expected = [union_kth_tail_nll(p, weights, TAIL_MASS_FLOOR) for p in positions]
    np.testing.assert_allclose(engine_nll("union-kth-tail", positions, weights), expected, rtol=2e-5, atol=2e-5)


temps_st = st.tuples(st.floats(0.05, 5.0), st.floats(0.05, 10.0), st.floats(0.05, 10.0), st.floats(0.0, 2.0))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 25), temps=temps_st)
def test_prototype_matches_the_prototype_dict_pipeline(seed, n, temps):
    t_big, t_tuned, t_untuned, w = temps
    positions = random_positions(seed, n)
    expected = [
        prototype_position_nll(*(_as_str(d) for d in p.lists), str(p.target), temps=(t_big, t_tuned, t_untuned), w=w)
        for p in positions
    ]
    weights = [1 / t_big, w / t_tuned, -w / t_untuned]
    np.testing.assert_allclose(engine_nll("prototype", positions, weights), expected, rtol=2e-5, atol=2e-5)


def _as_str(d: dict[int, float]) -> dict[str, float]:
    return {str(t): v for t, v in d.items()}


def test_prototype_charges_thirty_nats_outside_the_big_list():
    p = Position(({1: -0.1, 2: -2.5}, {1: -1.0}, {2: -0.5}), target=3, target_lp=(-5.0, -4.0, -3.0))
    assert engine_nll("prototype", [p], [1.0, 1.0, -1.0]).tolist() == [30.0]


def test_union_kth_tail_single_model_is_its_exact_nll():
    """With one model at weight 1, the tail makes the blend that model itself: NLL = -lp(target)."""
    positions = random_positions(7, 40, vocab=200)
    got = engine_nll("union-kth-tail", positions, [1.0, 0.0, 0.0])
    # Exact wherever the k-th fill leaves the tail some mass (otherwise the floor applies).
    def rest(p: Position) -> float:
        d, kth = p.lists[0], min(p.lists[0].values())
        support = {p.target}.union(*(l.keys() for l in p.lists))
        return 1.0 - sum(math.exp(p.target_lp[0] if t == p.target else d.get(t, kth)) for t in support)

    exact = np.array([-p.target_lp[0] for p in positions])
    ok = np.array([rest(p) > TAIL_MASS_FLOOR for p in positions])
    assert ok.sum() > 10
    np.testing.assert_allclose(got[ok], exact[ok], rtol=1e-5, atol=1e-5)


def test_every_estimator_is_documented():
    for name, est in ESTIMATORS.items():
        assert est.name == name
        assert "Assumptions" in est.assumptions, name


def test_unknown_estimator_lists_known_ones():
    with pytest.raises(ValueError, match="known: "):
        get_estimator("oracle")
