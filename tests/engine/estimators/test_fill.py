"""The power-law tail the estimators fill with (``engine.estimators._fill``): the exponent
``fit_beta`` finds gives the tail exactly the mass asked for, and the allocation-free helpers
give what the plain ones give, bit for bit."""

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.estimators._fill import (
    _BETA_MAX,
    bin_edges,
    fit_beta,
    power_sum,
    power_sums,
    tail_edges,
)

VOCABS = st.sampled_from([2_000, 32_000, 50_257, 256_000])


@settings(max_examples=300, deadline=None)
@given(k=st.sampled_from([1, 5, 20, 100, 1_000]), n_vocab=VOCABS, log_p_k=st.floats(-30.0, 0.0),
       log_rest=st.floats(-14.0, 0.0))
def test_the_exponent_gives_the_tail_the_mass_asked_for(k, n_vocab, log_p_k, log_rest):
    p_k, rest = math.exp(log_p_k), math.exp(log_rest)
    beta = fit_beta(k, n_vocab, p_k, rest)
    mass = p_k * power_sum(k, beta, k + 0.5, n_vocab + 0.5)  # ranks k+1 .. V under that exponent
    assert 0.0 <= beta <= _BETA_MAX
    if beta == 0.0:  # even a flat tail is too light: nothing flatter exists
        assert p_k * power_sum(k, 0.0, k + 0.5, n_vocab + 0.5) <= rest * (1 + 1e-12)
    elif beta == _BETA_MAX:  # even the steepest one is too heavy
        assert mass >= rest * (1 - 1e-12)
    else:
        assert abs(math.log(mass / rest)) < 1e-11, (beta, mass, rest)


@settings(max_examples=200, deadline=None)
@given(k=st.integers(1, 1_000), beta=st.one_of(st.floats(0.0, 8.0), st.just(1.0), st.floats(1 - 1e-10, 1 + 1e-10)),
       start=st.floats(0.5, 5_000.0), widths=st.lists(st.floats(0.5, 1e4), min_size=1, max_size=12))
def test_adjacent_power_sums_are_power_sums_bit_for_bit(k, beta, start, widths):
    x = np.cumsum([start, *widths])
    out = np.empty(len(widths))
    power_sums(k, beta, x, len(widths), out)
    assert out.tolist() == [power_sum(k, beta, x[j], x[j + 1]) for j in range(len(widths))]


def test_tail_edges_are_bin_edges_without_allocating_them():
    for ratio in (4.0, 2.0, 1.5):
        for n_vocab in (50_257, 2_000, 100, 7):
            geometric = bin_edges(n_vocab, ratio)
            edges = np.empty(geometric.size + 1)
            for n_tail in range(0, n_vocab + 1, max(1, n_vocab // 997)):
                n = tail_edges(geometric, n_tail, edges)
                assert edges[:n].tolist() == bin_edges(n_tail, ratio).tolist(), (ratio, n_vocab, n_tail)
