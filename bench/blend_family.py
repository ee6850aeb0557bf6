"""What N models and masks cost a kernel pass: ``python -m bench.blend_family [N_POSITIONS]``.

On the kernels' benchmark data (``bench.synthetic``: 1M positions, k = 20, ~35 candidates per
position for 3 models), all timings in one run, medians of a few repeats, printed as ratios:

- a 4-model blend against a 3-model one per weight vector, batched (B = 32) and single (B = 1), the two timed alternately:
  (a) the same candidates with one row more (the 4-model matrix, and it without its 4th row), the
  cost of a weight; (b) each blend over its own union (4 models list more tokens between them),
  the cost a user sees; (c) both with an estimator's log-multiplicity row added (``zipf-tail``
  and ``calibrated-tail`` matrices have one), where 5 rows leave the kernels' fused 4-row loop;
- a mask (``engine.masks``): the masked pass against the unmasked one (top-p 0.9 and relative
  0.1 on the big model's row), and building the masked matrix (once per mask, not per weight
  vector) against one batched pass.

Timings drift by 30% and more on a shared machine: compare the ratios of one run.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

from bench.synthetic import synthetic_candidates
from engine.candidates import CandidateMatrix
from engine.kernels import LANES, blend_nll_sums
from engine.masks import Mask, apply_mask

REPEATS = 7
MODELS = ("big", "tuned", "untuned", "big-tuned")


def weights(n_vectors: int, n_models: int, seed: int = 0) -> np.ndarray:
    """float64 ``(B, n_models)``: the big model near 1, the others scattered around +-1."""
    rng = np.random.default_rng(seed)
    w = rng.uniform(0.5, 1.5, (n_vectors, n_models))
    w[:, 2::2] *= -1
    return w


def a_pass(m: CandidateMatrix, n_vectors: int) -> Callable[[], object]:
    """One ``blend_nll_sums`` pass over ``m`` with B weight vectors."""
    w = m.row_weights(weights(n_vectors, m.n_models))
    group = np.zeros(m.outside.size, dtype=np.int32)
    return lambda: blend_nll_sums(m.offsets, m.values, w, m.outside, m.outside_nll, group, 1)


def paired(fa: Callable[[], object], fb: Callable[[], object], repeats: int = REPEATS) -> tuple[float, float]:
    """Median seconds of ``fa`` and of ``fb``, timed alternately (a shared machine's load drifts:
    alternating puts both under the same drift)."""
    fa(), fb()
    ta, tb = [], []
    for _ in range(repeats):
        for fn, times in ((fa, ta), (fb, tb)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(ta), statistics.median(tb)


def per_vector(a: CandidateMatrix, b: CandidateMatrix, n_vectors: int) -> tuple[float, float]:
    """Seconds per weight vector of a B-vector pass over ``a`` and over ``b``, timed alternately."""
    ta, tb = paired(a_pass(a, n_vectors), a_pass(b, n_vectors))
    return ta / n_vectors, tb / n_vectors


def matrix(values: np.ndarray, offsets: np.ndarray, n_models: int) -> CandidateMatrix:
    return CandidateMatrix.with_target_inside(offsets, np.ascontiguousarray(values), n_models=n_models,
                                              estimator="synthetic")


def with_multiplicity(m: CandidateMatrix, seed: int = 0) -> CandidateMatrix:
    """``m`` plus a log-multiplicity row (0 on most candidates, log of up to 5,000 on one per
    position, like a tail pseudo-token)."""
    rng = np.random.default_rng(seed)
    extra = np.zeros((1, m.values.shape[1]), dtype=np.float32)
    last = m.offsets[1:].astype(np.int64) - 1
    extra[0, last] = np.log(rng.integers(2, 5000, last.size)).astype(np.float32)
    return matrix(np.vstack([m.values, extra]), m.offsets, m.n_models)


def main(n: int) -> None:
    t0 = time.perf_counter()
    four = synthetic_candidates(n, n_models=4)
    three = synthetic_candidates(n, n_models=3)
    m4 = matrix(four.values, four.offsets, 4)
    m4_less = matrix(four.values[:3], four.offsets, 3)
    m3 = matrix(three.values, three.offsets, 3)
    print(f"data: {n:,} positions; 4 models {m4.values.shape[1] / n:.1f} candidates per position, 3 models "
          f"{m3.values.shape[1] / n:.1f} (generated in {time.perf_counter() - t0:.0f} s); medians of {REPEATS}, ms "
          "per weight vector")
    rows = []
    for b in (LANES, 1):
        cases = {
            "(a) same candidates": (m4, m4_less),
            "(b) own unions": (m4, m3),
            "(c) own unions + multiplicity row": (with_multiplicity(m4), with_multiplicity(m3)),
        }
        for label, (a, c) in cases.items():
            rows.append((f"4 vs 3 models, {label}, B = {b}", *per_vector(a, c, b)))
    base = with_multiplicity(m3)
    for mask in (Mask("top-p", "big", 0.9), Mask("relative", "big", 0.1)):
        masked = apply_mask(base, MODELS[:3], mask)
        share = masked.matrix.values.shape[1] / base.values.shape[1]
        for b in (LANES, 1):
            rows.append((f"mask {mask.describe()} ({share:.0%} of candidates kept), B = {b}: masked vs unmasked pass",
                         *per_vector(masked.matrix, base, b)))
        build, pass32 = paired(lambda mask=mask: apply_mask(base, MODELS[:3], mask), a_pass(base, LANES), 3)
        rows.append((f"mask {mask.describe()}: building it (once per mask) vs one B = 32 pass", build, pass32))
    width = max(len(r[0]) for r in rows)
    for label, a, c in rows:
        print(f"{label:<{width}}  {a * 1e3:9.3f} vs {c * 1e3:9.3f} ms  ratio {a / c:5.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
