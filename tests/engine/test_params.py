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
