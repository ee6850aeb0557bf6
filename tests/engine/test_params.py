"""Parametrizations: named maps from parameters to blend weights, and back."""

import numpy as np
import pytest

from engine.params import PARAMETRIZATIONS, get_parametrization


def test_loglinear_is_identity():
    assert get_parametrization("loglinear").weights([1, 1, -1]).tolist() == [1.0, 1.0, -1.0]


def test_temperatures_map_to_weights():
    p = get_parametrization("temperatures")
    np.testing.assert_allclose(p.weights([1.67, 2.23, 8.83]), [1 / 1.67, 1 / 2.23, -1 / 8.83])
    np.testing.assert_allclose(p.weights([2.0, 4.0, 5.0, 0.5]), [0.5, 0.125, -0.1])
    assert p.describe([1.67, 2.23, 8.83]) == {"T_big": 1.67, "T_tuned": 2.23, "T_untuned": 8.83, "w": 1.0}


@pytest.mark.parametrize(
    "name, params, message",
    [
        ("temperatures", [1.0, 0.0, 1.0], "temperatures must be positive"),
        ("temperatures", [1.0, 2.0], "takes 3 to 4 values"),
        ("loglinear", [1.0, 2.0, 3.0, 4.0], "takes 3 values"),
        ("loglinear", [1.0, float("nan"), 3.0], "must be finite"),
    ],
)
def test_bad_parameters_are_named(name, params, message):
    with pytest.raises(ValueError, match=message):
        get_parametrization(name).weights(params)


def test_unknown_parametrization_lists_known_ones():
    with pytest.raises(ValueError, match="known: " + ", ".join(PARAMETRIZATIONS)):
        get_parametrization("softmax")


@pytest.mark.parametrize("name, params, weights", [
    ("proxy-tuning", [], [1.0, 1.0, -1.0]),
    ("proxy-tuning", [1.7], [1.0, 1.7, -1.7]),
    ("eft-upscale", [0.5], [1.0, 0.5, -0.5]),
    ("seed", [2.0, 4.0, 5.0], [0.5, 0.25, -0.2]),
])
def test_named_formulas_map_to_weights_and_back(name, params, weights):
    p = get_parametrization(name)
    assert p.reference and p.n_models == 3
    np.testing.assert_allclose(p.weights(params), weights)
    back = p.from_weights(weights)
    np.testing.assert_allclose(p.weights(back), weights)


def test_seed_is_the_prototypes_temperatures():
    seed, temps = get_parametrization("seed"), get_parametrization("temperatures")
    for params in ([1.67, 2.23, 8.83], [0.5, 3.0, 2.0, 0.7]):
        assert seed.weights(params).tolist() == temps.weights(params).tolist()
    with pytest.raises(ValueError, match=r"'seed': temperatures must be positive, got T_big=-1"):
        seed.weights([-1.0, 1.0, 1.0])


def test_weights_off_a_formula_have_no_parameters():
    assert get_parametrization("proxy-tuning").from_weights([0.9, 1.0, -1.0]) is None
    assert get_parametrization("eft-upscale").from_weights([1.0, 1.0, -0.5]) is None


def test_loglinear_takes_any_number_of_models():
    p = get_parametrization("loglinear", 4)
    assert p.names == ("a_1", "a_2", "a_3", "a_4") and set(p.space) == set(p.names)
    assert p.weights([1, 2, 3, 4]).tolist() == [1.0, 2.0, 3.0, 4.0]
    with pytest.raises(ValueError, match="takes 4 values"):
        p.weights([1, 2, 3])
    with pytest.raises(ValueError, match=r"must be finite, got a_2=inf"):
        p.weights([1, float("inf"), 3, 4])
    with pytest.raises(ValueError, match="formula over 3 models"):
        get_parametrization("seed", 2)


def test_fixed_parameters_leave_the_search_space():
    p = get_parametrization("temperatures").with_fixed({"T_big": 1.0, "w": 0.5})
    assert set(p.space) == {"T_tuned", "T_untuned"}
    np.testing.assert_allclose(p.point({"T_tuned": 2.0, "T_untuned": 4.0}), [1.0, 2.0, 4.0, 0.5])
    with pytest.raises(ValueError, match="has no parameter 'T_huge'"):
        p.with_fixed({"T_huge": 1.0})
    with pytest.raises(ValueError, match="must be finite"):
        p.with_fixed({"T_tuned": float("nan")})


def test_a_search_point_fills_parameters_before_the_searched_ones():
    p = get_parametrization("contrastive")
    np.testing.assert_allclose(p.point({"beta": 1.5}), [0.1, 1.5])
    np.testing.assert_allclose(p.with_fixed({"alpha": 0.3}).point({"beta": 2.0}), [0.3, 2.0])
    assert p.search_mask(("B", "T", "U")).value == 0.1
