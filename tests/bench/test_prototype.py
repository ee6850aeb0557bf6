"""Handwritten checks of the prototype's per-position pipeline (tests/naive.py), and its
stage-by-stage form against it."""

from __future__ import annotations

import math

import pytest

from bench.prototype import (
    prototype_corpus_nll,
    prototype_pipeline_nll,
    prototype_position_nll,
)
from bench.synthetic import synthetic_records

BIG = {"a": math.log(0.5), "b": math.log(0.3), "c": math.log(0.2)}


def test_identical_small_models_leave_the_big_models_softmax():
    same = {"a": -1.0, "b": -2.0, "c": -3.0}
    assert prototype_position_nll(BIG, same, same, "a") == pytest.approx(math.log(2.0))
    assert prototype_position_nll(BIG, same, same, "c") == pytest.approx(-math.log(0.2))


def test_big_temperature_flattens():
    same = {"a": -1.0}
    z = math.sqrt(0.5) + math.sqrt(0.3) + math.sqrt(0.2)  # scores lp / 2: softmax of sqrt(p)
    got = prototype_position_nll(BIG, same, same, "b", temps=(2.0, 1.0, 1.0))
    assert got == pytest.approx(-math.log(math.sqrt(0.3) / z))


def test_tuned_minus_untuned_shifts_the_scores():
    big = {"a": -0.7, "b": -0.7}
    tuned = {"a": -1.0, "b": -2.0}
    untuned = {"a": -2.0, "b": -1.0}
    # Scores: a = -0.7 + (-1 + 2) = 0.3, b = -0.7 + (-2 + 1) = -1.7.
    assert prototype_position_nll(big, tuned, untuned, "a") == pytest.approx(math.log1p(math.exp(-2.0)))
    # Temperatures divide each model; w scales the tuned-minus-untuned difference.
    got = prototype_position_nll(big, tuned, untuned, "b", temps=(1.0, 0.5, 2.0), w=0.5)
    score_a = -0.7 + 0.5 * (-1.0 / 0.5 - -2.0 / 2.0)
    score_b = -0.7 + 0.5 * (-2.0 / 0.5 - -1.0 / 2.0)
    assert got == pytest.approx(math.log(math.exp(score_a) + math.exp(score_b)) - score_b)
    assert prototype_position_nll(big, tuned, untuned, "a", w=0.0) == pytest.approx(math.log(2.0))


def test_target_outside_the_big_list_costs_30():
    assert prototype_position_nll(BIG, BIG, BIG, "zzz") == 30.0
    assert prototype_position_nll(BIG, {"zzz": -0.1}, {}, "zzz", temps=(0.3, 2.0, 5.0), w=3.0) == 30.0


def test_missing_values_are_filled_with_the_minimum_inside_the_support():
    big = {"a": -1.0, "b": -2.0, "c": -3.0}
    tuned = {"a": -0.5, "b": -4.0, "x": -9.0}  # c missing: min over a, b (x is outside) = -4
    untuned = {"b": -1.5}  # a, c missing: -1.5
    scores = {"a": -1.0 + (-0.5 - -1.5), "b": -2.0 + (-4.0 - -1.5), "c": -3.0 + (-4.0 - -1.5)}
    log_z = math.log(sum(math.exp(s) for s in scores.values()))
    assert prototype_position_nll(big, tuned, untuned, "c") == pytest.approx(log_z - scores["c"])


def test_a_list_with_nothing_inside_the_support_fills_with_its_own_minimum():
    big = {"a": -1.0, "b": -2.0}
    tuned = {"x": -3.0, "y": -6.0}  # nothing inside: every support token gets -6
    untuned = {"a": -1.0, "b": -1.0}
    # The tuned fill is the same for a and b, so it cancels: the big model's softmax is left.
    assert prototype_position_nll(big, tuned, untuned, "a") == pytest.approx(math.log1p(math.exp(-1.0)))
    # An empty list fills with -inf: every score -inf - (-1) = -inf, so the softmax is NaN.
    assert math.isnan(prototype_position_nll(big, {}, untuned, "a"))


def test_corpus_nll_is_the_sum_over_records():
    same = {"a": -1.0}
    records = [((BIG, same, same), "a"), ((BIG, same, same), "c"), ((BIG, same, same), "zzz")]
    assert prototype_corpus_nll(records) == pytest.approx(math.log(2.0) - math.log(0.2) + 30.0)
    assert prototype_corpus_nll([]) == 0.0


@pytest.mark.parametrize(("temps", "w"), [((1.0, 1.0, 1.0), 1.0), ((1.67, 2.23, 8.83), 1.0), ((0.5, 3.0, 0.7), -0.4)])
def test_the_stage_by_stage_pipeline_gives_the_same_numbers(temps, w):
    records = synthetic_records(400, seed=3)
    # Some targets outside the big list, some small lists with nothing inside the support.
    records[0] = ((records[0][0][0], records[1][0][1], records[0][0][2]), "not-a-token")
    records[2] = ((records[2][0][0], {"x": -1.0, "y": -4.0}, records[2][0][2]), records[2][1])
    want = prototype_corpus_nll(records, temps, w)
    assert prototype_pipeline_nll(records, temps, w) == pytest.approx(want, rel=1e-12)
    assert prototype_pipeline_nll(records[:1], temps, w) == 30.0
