"""engine.kernels against its slow twins in tests/naive.py, on ordinary and nasty inputs."""

from __future__ import annotations

import math
import re

import llvmlite.binding
import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import kernels
from engine.kernels import LANES, blend_nll, blend_nll_sums
from tests.engine.naive import naive_blend_nll, naive_blend_nll_sums

if numba.config.DISABLE_JIT:  # kernel bodies run as numpy scalar code, which warns on inf - inf
    pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

EXAMPLES = settings(
    max_examples=60 if not numba.config.DISABLE_JIT else 15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --- inputs -------------------------------------------------------------------------------


def matrix(run_lengths, n_rows, rng, *, p_neg_inf=0.0, low=-40.0):
    """A random candidate matrix: offsets uint64, values float32 (R, C), finite or -inf."""
    offsets = np.zeros(len(run_lengths) + 1, dtype=np.uint64)
    np.cumsum(run_lengths, out=offsets[1:])
    values = rng.uniform(low, 0.0, (n_rows, int(offsets[-1]))).astype(np.float32)
    values[rng.random(values.shape) < p_neg_inf] = -np.inf
    return offsets, values


@st.composite
def blend_inputs(draw, *, max_n=24, max_b=40):
    """Ragged inputs: runs of 1 (and empty runs where outside), -inf values, zero and negative
    weights, R in 1..6 (the fused 3, 4 and 5-row loops and the generic one), B in 1..max_b (across the scalar/lane switch and the lane width)."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n = draw(st.integers(0, max_n))
    n_rows = draw(st.integers(1, 6))
    n_vectors = draw(st.integers(1, max_b))
    outside = rng.random(n) < draw(st.sampled_from([0.0, 0.2]))
    lengths = rng.integers(1, draw(st.sampled_from([2, 6, 40])), n)
    lengths[outside & (rng.random(n) < 0.5)] = 0  # empty runs only occur outside the support
    offsets, values = matrix(lengths, n_rows, rng, p_neg_inf=draw(st.sampled_from([0.0, 0.05, 0.3])))
    weights = rng.uniform(-4.0, 4.0, (n_vectors, n_rows)) * (rng.random((n_vectors, n_rows)) > 0.2)
    outside_nll = draw(st.sampled_from([30.0, 0.0]))
    return offsets, values, weights, outside, outside_nll


def assert_close_to_naive(got, offsets, values, weights, outside, outside_nll):
    """Same NaN/inf pattern exactly; finite NLLs within the fast path's error bound.

    The fast path computes shifted scores in float32, so its absolute error grows with
    S = max over the run of sum_r |w_r (v_r(c) - v_r(target))| (about 7e-8 * S measured),
    plus about 5e-7 relative from the polynomial exp and log and the float32 sums.
    """
    want = naive_blend_nll(offsets, values, weights, outside, outside_nll)
    assert got.shape == want.shape and got.dtype == np.float64
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    inf = np.isinf(want)
    np.testing.assert_array_equal(got[inf], want[inf])
    spread = shift_spread(offsets, values, weights)
    tol = 1e-12 + 1e-6 * np.abs(want) + 2e-7 * spread
    finite = np.isfinite(want)
    error = np.zeros_like(want)
    error[finite] = np.abs(got[finite] - want[finite])
    bad = finite & ~(error <= tol)
    assert not bad.any(), f"got {got[bad]}, want {want[bad]}"


def shift_spread(offsets, values, weights):
    """S per (weight vector, position): the largest weighted difference sum in the run."""
    n = len(offsets) - 1
    out = np.zeros((weights.shape[0], n))
    with np.errstate(invalid="ignore"):
        for i in range(n):
            lo, hi = int(offsets[i]), int(offsets[i + 1])
            if hi > lo:
                delta = values[:, lo:hi].astype(np.float64) - values[:, lo : lo + 1]
                delta = np.where(np.isfinite(delta), np.abs(delta), 0.0)
                out[:, i] = (np.abs(weights) @ delta).max(axis=1)
    return out


# --- against the naive twin ----------------------------------------------------------------


@EXAMPLES
@given(blend_inputs())
def test_blend_nll_matches_naive(inputs):
    offsets, values, weights, outside, outside_nll = inputs
    got = blend_nll(offsets, values, weights, outside, outside_nll)
    assert_close_to_naive(got, offsets, values, weights, outside, outside_nll)


@EXAMPLES
@given(blend_inputs(), st.integers(0, 4), st.data())
def test_blend_nll_sums_are_grouped_sums(inputs, n_groups, data):
    offsets, values, weights, outside, outside_nll = inputs
    n = len(outside)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    group = rng.integers(-1, n_groups, n).astype(np.int32) if n_groups else np.full(n, -1, np.int32)
    got = blend_nll_sums(offsets, values, weights, outside, outside_nll, group, n_groups)
    assert got.shape == (n_groups, weights.shape[0])
    per_position = blend_nll(offsets, values, weights, outside, outside_nll)
    want = np.zeros((n_groups, weights.shape[0]))
    keep = group >= 0
    np.add.at(want, group[keep], per_position[:, keep].T)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, equal_nan=True)
    naive = naive_blend_nll_sums(offsets, values, weights, outside, outside_nll, group, n_groups)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(naive))


def test_every_lane_chunking_matches_naive():
    """B around the scalar/lane switch and the lane width, with every row count."""
    rng = np.random.default_rng(7)
    for n_rows in (1, 2, 3, 4, 6):  # 6: more rows than the fused loops take
        offsets, values = matrix(rng.integers(1, 50, 60), n_rows, rng, p_neg_inf=0.02)
        outside = rng.random(60) < 0.1
        for n_vectors in (1, kernels._MIN_LANES_USED - 1, kernels._MIN_LANES_USED, LANES, LANES + 1, 2 * LANES + 3):
            weights = rng.uniform(-3, 3, (n_vectors, n_rows)) * (rng.random((n_vectors, n_rows)) > 0.2)
            got = blend_nll(offsets, values, weights, outside, 30.0)
            assert_close_to_naive(got, offsets, values, weights, outside, 30.0)


def test_realistic_data_within_1e6():
    """Log-probabilities and weights like the real data's: the plain 1e-6 relative bound."""
    from bench.synthetic import synthetic_candidates

    data = synthetic_candidates(2000, seed=3)
    weights = np.array([[1.0, 1.0, -1.0], [1.0, 0.0, 0.0], [0.8, 1.5, -1.2], [1 / 0.7, 1.0, -1 / 1.3]])
    got = blend_nll(data.offsets, data.values, weights, data.outside, 30.0)
    want = naive_blend_nll(data.offsets, data.values, weights, data.outside, 30.0)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)


# --- extended reals and the exact path -----------------------------------------------------


def test_extended_real_cases():
    inf = np.inf
    cases = [
        # (values (R, run), weights (R,), expected NLL)
        ([[-inf]], [1.0], math.nan),  # every score -inf: -inf - -inf
        ([[-inf, -1.0]], [1.0], math.inf),  # finite candidate, -inf target
        ([[-1.0, -inf]], [-1.0], math.inf),  # a candidate's score +inf
        ([[-inf, -1.0]], [-1.0], math.nan),  # target +inf: inf - inf
        ([[-inf, -2.0], [-1.0, -3.0]], [0.0, 1.0], math.log1p(math.exp(-2.0))),  # 0 * -inf is 0
        ([[-1.0, -inf], [-1.0, -3.0]], [1.0, 1.0], 0.0),  # candidate -inf: adds nothing
        ([[0.0, 200.0]], [1.0], 200.0 + math.log1p(math.exp(-200.0))),  # far past float32 exp
        ([[-5.0, -5.0, -5.0]], [0.0], math.log(3.0)),  # all weights zero: uniform
        ([[-3.0]], [2.0], 0.0),  # a run of one
    ]
    for vals, w, want in cases:
        values = np.asarray(vals, dtype=np.float32)
        offsets = np.array([0, values.shape[1]], dtype=np.uint64)
        for n_vectors in (1, LANES):  # the scalar and the lane kernels
            weights = np.tile(np.asarray(w, dtype=np.float64), (n_vectors, 1))
            got = blend_nll(offsets, values, weights, np.zeros(1, bool), 30.0)
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12, err_msg=f"{vals} {w}")


def test_outside_positions_cost_outside_nll_and_are_not_read():
    offsets = np.array([0, 0, 2, 2], dtype=np.uint64)  # empty runs at the outside positions
    values = np.array([[-1.0, -2.0]], dtype=np.float32)
    outside = np.array([True, False, True])
    got = blend_nll(offsets, values, np.array([[1.0], [2.0]]), outside, 30.0)
    np.testing.assert_allclose(got[:, [0, 2]], 30.0)
    np.testing.assert_allclose(got[:, 1], [math.log1p(math.exp(-1.0)), math.log1p(math.exp(-2.0))], rtol=1e-6)


def test_empty_input():
    offsets = np.zeros(1, dtype=np.uint64)
    values = np.zeros((3, 0), dtype=np.float32)
    for n_vectors in (1, LANES + 1):
        weights = np.ones((n_vectors, 3))
        assert blend_nll(offsets, values, weights, np.zeros(0, bool), 30.0).shape == (n_vectors, 0)
        sums = blend_nll_sums(offsets, values, weights, np.zeros(0, bool), 30.0, np.zeros(0, np.int32), 2)
        np.testing.assert_array_equal(sums, np.zeros((2, n_vectors)))


def test_skipped_positions_are_neither_computed_nor_checked():
    offsets = np.array([0, 2, 1, 3], dtype=np.uint64)  # position 1's run is invalid
    values = np.zeros((1, 3), dtype=np.float32)
    weights = np.ones((1, 1))
    outside = np.zeros(3, bool)
    group = np.array([0, -1, 0], dtype=np.int32)
    got = blend_nll_sums(offsets, values, weights, outside, 30.0, group, 1)
    np.testing.assert_allclose(got, [[2 * math.log(2.0)]])
    nothing = blend_nll_sums(offsets, values, weights, outside, 30.0, np.full(3, -1, np.int32), 0)
    assert nothing.shape == (0, 1)


def test_sums_do_not_depend_on_the_thread_count(monkeypatch):
    monkeypatch.setattr(kernels, "_BLOCK", 64)  # many blocks from a small input
    rng = np.random.default_rng(11)
    n = 3000 if not numba.config.DISABLE_JIT else 300
    offsets, values = matrix(rng.integers(1, 40, n), 3, rng, p_neg_inf=0.01)
    outside = rng.random(n) < 0.05
    group = rng.integers(-1, 5, n).astype(np.int32)
    group[n // 5 : n // 2] = -1  # whole blocks with no position counted: the loops skip them
    weights = rng.uniform(-2, 2, (LANES + 1, 3))
    before = numba.get_num_threads()
    results = []
    try:
        for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(threads)
            results.append(blend_nll_sums(offsets, values, weights, outside, 30.0, group, 5))
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(results[0], results[1])
    want = naive_blend_nll_sums(offsets, values, weights, outside, 30.0, group, 5)
    np.testing.assert_allclose(results[0], want, rtol=1e-5, atol=1e-4)


# --- validation ----------------------------------------------------------------------------


def good_inputs():
    offsets = np.array([0, 2, 3], dtype=np.uint64)
    values = np.zeros((3, 3), dtype=np.float32)
    return dict(offsets=offsets, values=values, weights=np.ones((2, 3)), outside=np.zeros(2, bool), outside_nll=30.0)


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        ("offsets", np.array([0, 2, 3], dtype=np.int64)),
        ("offsets", np.zeros((2, 2), dtype=np.uint64)),
        ("offsets", np.zeros(0, dtype=np.uint64)),
        ("offsets", np.array([0, 2, 4], dtype=np.uint64)),  # past the end of values
        ("offsets", np.array([0, 3, 2], dtype=np.uint64)),  # decreasing
        ("offsets", np.array([0, 0, 3], dtype=np.uint64)),  # empty run, not outside
        ("offsets", [0, 2, 3]),
        ("values", np.zeros((3, 3), dtype=np.float64)),
        ("values", np.zeros(9, dtype=np.float32)),
        ("values", np.zeros((3, 6), dtype=np.float32)[:, ::2]),  # not C-contiguous
        ("values", np.zeros((0, 3), dtype=np.float32)),
        ("weights", np.ones((2, 3), dtype=np.float32)),
        ("weights", np.ones((2, 4))),
        ("weights", np.ones(3)),
        ("weights", np.array([[1.0, np.nan, 0.0]])),
        ("weights", np.array([[1.0, np.inf, 0.0]])),
        ("outside", np.zeros(2, dtype=np.int8)),
        ("outside", np.zeros(3, dtype=bool)),
        ("outside_nll", "30"),
        ("outside_nll", True),
    ],
)
def test_validation_names_the_argument(name, bad):
    args = good_inputs() | {name: bad}
    with pytest.raises(ValueError, match=f"^{name}:"):
        blend_nll(**args)
    with pytest.raises(ValueError, match=f"^{name}:"):
        blend_nll_sums(**args, group=np.zeros(2, np.int32), n_groups=1)


@pytest.mark.parametrize(
    ("name", "group", "n_groups"),
    [
        ("group", np.zeros(2, dtype=np.int64), 1),
        ("group", np.zeros(3, dtype=np.int32), 1),
        ("group", np.array([0, 1], dtype=np.int32), 1),
        ("group", np.array([0, -2], dtype=np.int32), 1),
        ("n_groups", np.zeros(2, dtype=np.int32), -1),
        ("n_groups", np.zeros(2, dtype=np.int32), 1.0),
        ("n_groups", np.zeros(2, dtype=np.int32), True),
    ],
)
def test_validation_of_groups(name, group, n_groups):
    with pytest.raises(ValueError, match=f"^{name}:"):
        blend_nll_sums(**good_inputs(), group=group, n_groups=n_groups)


# --- the polynomial exp and log ------------------------------------------------------------


def test_exp_f32_against_math_exp():
    xs = np.linspace(-86.0, 88.0, 20001, dtype=np.float32)
    got = np.array([kernels._exp_f32(x) for x in xs], dtype=np.float64)
    want = np.exp(xs.astype(np.float64))
    assert np.max(np.abs(got / want - 1.0)) < 2e-7
    assert kernels._exp_f32(np.float32(0.0)) == 1.0
    # Below its range (down to -700 and -inf) it is 0, where exp is below 2e-38 anyway.
    for x in (-86.5, -87.0, -100.0, -700.0, -np.inf):
        assert kernels._exp_f32(np.float32(x)) == 0.0
    # +inf and NaN saturate above _EPS_MAX, which sends their positions to the exact path.
    for x in (np.inf, np.nan, 1000.0):
        assert kernels._exp_f32(np.float32(x)) > kernels._EPS_MAX


def test_log1p_f32_against_math_log1p():
    es = np.concatenate([np.logspace(-30, 38, 4001), np.linspace(0.0, 3.0, 4001)[1:]]).astype(np.float32)
    got = np.array([kernels._log1p_f32(e) for e in es], dtype=np.float64)
    want = np.log1p(es.astype(np.float64))
    assert np.max(np.abs(got / want - 1.0)) < 3e-7
    assert kernels._log1p_f32(np.float32(0.0)) == 0.0


# --- code generation ---------------------------------------------------------------------------


@pytest.mark.skipif(numba.config.DISABLE_JIT, reason="inspects compiled code")
def test_wide_vectors_reach_the_compiled_code():
    """``_wide_vectors`` marks its caller for 512-bit vectors (and keeps it from being inlined
    into callers, whose attributes it would take); on an AVX-512 CPU the loop uses them."""

    @numba.njit(fastmath=True)
    def widened(x):
        kernels._wide_vectors()
        s = np.float32(0.0)
        for v in x:
            s += np.float32(2.0) * v
        return s

    x = np.arange(100, dtype=np.float32)
    assert widened(x) == 2.0 * x.sum()
    signature = widened.signatures[0]
    ir = widened.inspect_llvm(signature)
    define = next(line for line in ir.splitlines() if line.startswith("define") and "widened" in line)
    group = re.search(r"(#\d+) \{$", define).group(1)  # the function's attribute group
    attributes = next(line for line in ir.splitlines() if line.startswith(f"attributes {group} "))
    for attribute in (*kernels._WIDE_VECTOR_ATTRIBUTES, "noinline"):
        assert attribute in attributes
    if llvmlite.binding.get_host_cpu_features().get("avx512f"):
        assert "zmm" in widened.inspect_asm(signature)
