"""Corpus metrics from NLL sums, and context-length buckets."""

import math

import numpy as np
import pytest

from engine.report import Figures, bucket_labels, context_buckets


def test_perplexity_is_exp_of_the_mean_over_positions_not_a_mean_of_chunks():
    # Two chunks: 1 position at NLL 4, 3 positions at NLL 0.
    f = Figures(positions=4, nll_sum=4.0, n_bytes=8)
    assert f.perplexity == pytest.approx(math.e)
    chunk_mean = (math.exp(4.0) + math.exp(0.0)) / 2
    assert f.perplexity != pytest.approx(chunk_mean)
    assert f.bits_per_byte == pytest.approx(4.0 / (8 * math.log(2)))


def test_empty_and_infinite_slices():
    assert math.isnan(Figures(0, 0.0, 0).perplexity)
    assert math.isnan(Figures(0, 0.0, 0).bits_per_byte)
    assert Figures(2, math.inf, 3).perplexity == math.inf
    assert math.isnan(Figures(2, math.nan, 3).perplexity)


def test_context_buckets_are_powers_of_two():
    c = np.array([1, 2, 3, 4, 7, 8, 511, 512])
    assert context_buckets(c).tolist() == [0, 1, 1, 2, 2, 3, 8, 9]
    assert bucket_labels(4) == [(1, 1), (2, 3), (4, 7), (8, 15)]
    with pytest.raises(ValueError):
        context_buckets(np.array([0, 1]))


def test_t95_is_students_quantile():
    from engine.report import Z95, t95

    # Published two-sided 95% critical values of Student's t.
    for df, quantile in [(2, 4.303), (5, 2.571), (10, 2.228), (30, 2.042), (100, 1.984)]:
        assert t95(df) == pytest.approx(quantile, rel=1e-2 if df < 5 else 1e-3)
    assert t95(1e9) == pytest.approx(Z95)
