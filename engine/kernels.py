"""Blend kernels: per-position NLL of log-linear blends over a filled candidate matrix.

A candidate matrix holds, for ``n`` positions, CSR runs of candidates (target first) and one
natural-log value per row (model) per candidate. For a weight vector ``w`` (one weight per row)
the score of candidate ``c`` is ``s(c) = sum_r w[r] * values[r, c]`` (a zero weight times -inf
counts as 0), and a position's NLL in nats is ``logsumexp over its run of s - s(target)`` in
extended reals (``tests/engine/naive.py`` spells it out). Positions flagged ``outside`` cost
``outside_nll`` whatever the weights.

How it is fast (each choice was measured on the project's 2-core AVX-512 machine: README,
"Benchmarks"; ``bench/``):
- One pass per position, shifted by the target's score: ``eps = sum over the run after the
  target of exp(s(c) - s(target))`` and ``NLL = log(1 + eps)``. Shifted scores are computed in
  float32 from differences ``values[r, c] - values[r, target]``, and ``eps`` keeps full
  relative precision for confident positions (NLL near 0).
- Polynomial float32 ``exp`` and ``log1p`` that LLVM vectorizes (llvmlite has no SVML, so
  ``math.exp`` would stay one scalar libm call per element), 8 lanes per AVX2 vector.
- The lane-batched loops are compiled for 512-bit vectors where the CPU has AVX-512 (16 lanes;
  LLVM prefers 256 bits there, and numba can change that only for the whole process, hence
  ``_wide_vectors``): 1.25-1.3x on them, where the one-vector and gradient loops, made for runs
  of 20-60 candidates, gained nothing or lost.
- An exact path (float64, max-shifted, libm ``exp``/``log``) for the rare positions where the
  fast path cannot answer: a non-finite target score, any NaN or +inf shifted score (a zero
  weight against a -inf difference included), or a shifted score near float32's exp range
  (``eps`` above ``_EPS_MAX``: some score more than about 87 nats above the target's).
- The one-vector loops prefetch the runs of the position ``_PREFETCH_AHEAD`` positions ahead
  (``_prefetch_ahead``): the hardware prefetcher alone left a one-vector pass 20% slower.
- Each run is read in whole steps of the vector loop (16 or 8 candidates), the lanes past its
  end masked (their score set to one whose exp is 0) by a float32 lane counter: no scalar
  remainder loop, which on runs of 20-60 candidates cost as much as the vector loop
  (``_whole_vectors``). The array's last runs, whose last step would read past its end, take
  the exact path.
- Zero-weight rows are dropped; 3 or 4 rows are read in one fused loop (fewer rows are
  repeated with their weights halved or quartered, which is exact); more take a generic loop.
- Several weight vectors are the vector lanes of one pass (``LANES`` at once).
- uint64 offsets and candidate indices (signed ones make numba emit wraparound checks that
  stop LLVM from vectorizing); ``error_model="numpy"`` (Python's division-by-zero check on
  every division does too).
- Positions are split into fixed blocks; each block keeps its own partial sums, which are added
  in block order afterwards, so results do not depend on the thread count. The parallel loops
  run over the blocks that hold a counted position only: a split is one stretch of the store,
  and a loop over all blocks would give it to one thread.

Accuracy of the fast path (tests/engine/test_kernels.py checks these bounds against the float64
twin): the polynomials are within 2e-7 (exp) and 3e-7 (log1p) relative; float32 shifted
scores add an absolute error of about 6e-8 * S to each, where S = sum_r |w_r| |values[r, c] -
values[r, target]|. So an NLL is within about 5e-7 relative plus 1e-7 * S absolute: 1e-6 or
better for weights near (1, 1, -1) on log-probabilities, up to 1e-5 for weights of size 3
against tail values near -30. Sums over positions are float64.
"""

from __future__ import annotations

import math
from numbers import Real

import numpy as np
from llvmlite import ir
from numba import config, njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from ingest.jit import KERNEL, KERNEL_IN_ORDER, KERNEL_PARALLEL

__all__ = ["LANES", "blend_nll", "blend_nll_sums", "blend_nll_grad_hess"]

LANES = 32
"""Weight vectors evaluated together by the lane-batched kernels (fixed at compile time)."""
READ_AHEAD = 16
"""The widest vector step of the loops over a run (``_whole_vectors``): a run whose last step
would read past the end of the values takes the exact path, so a matrix followed by this many
more columns gives its last positions the path they take inside a larger one
(``engine.blend.continued``)."""

_MIN_LANES_USED = 10
"""Fewest weight vectors worth a lane-batched pass; fewer run one scalar pass each
(a 32-lane pass costs about as much as 10 scalar passes; bench/table.py measures both)."""

_BLOCK = 16384
"""Positions per parallel work item; each block keeps its own partial sums."""

_MIN_BLOCKS = 64
"""Blocks wanted at least, so that the blocks of one split are shared among threads."""

_SUB = 256
"""Positions per inner step of a block (the buffer of sums waiting for their vectorized log)."""

_PARTIALS_BUDGET = 1 << 26
"""Bytes allowed for the per-block partial sums; beyond it, blocks grow (fewer of them)."""

_PREFETCH_AHEAD = 32
"""Positions between the run being read and the one prefetched (16 to 64 measured the same)."""

_PREFETCH_LINE = np.uint64(16)
"""float32 values per 64-byte cache line; ``_prefetch_ahead`` fetches two per row (runs of
~35 candidates span 2-3 lines; a third line measured no better)."""

_U1 = np.uint64(1)
_FAR_F32 = np.float32(-100.0)
"""A shifted score whose ``_exp_f32`` is exactly 0: the masked lanes of a run's last vector."""

# Polynomial exp in float32: exp(x) = 2^k * p(r), k = round(x / ln 2), r = x - k ln 2 (ln 2 in
# two parts, Cody-Waite, so r is accurate for every k), |r| <= ln(2)/2, and
# p(r) = 1 + r + r^2 (P0 + r (P1 + r (P2 + r P3))), a minimax fit of the relative error
# (1.05e-7 in exact arithmetic; p(0) = 1 exactly). k is rounded by adding 1.5 * 2^23, which
# leaves k in the low bits of the sum, and 2^k is applied by adding k << 23 to p's bits
# (valid for k in [-125, 127], hence the clamps). Measured: relative error < 2e-7 over
# [-86, 88] (tests/engine/test_kernels.py).
_EXP_P0 = np.float32(0.499992311000824)
_EXP_P1 = np.float32(0.16667114198207855)
_EXP_P2 = np.float32(0.041890114545822144)
_EXP_P3 = np.float32(0.008312525227665901)
_LOG2E_F32 = np.float32(1.4426950408889634)
_LN2_HI_F32 = np.float32(0.693359375)  # 8 significant bits: k * _LN2_HI_F32 is exact
_LN2_LO_F32 = np.float32(-2.12194440e-4)
_ROUND_F32 = np.float32(12582912.0)  # 1.5 * 2^23
_ONE_F32 = np.float32(1.0)
_ZERO_F32 = np.float32(0.0)
_INF_F32 = np.float32(np.inf)
_EXP_LO = np.float32(-86.0)
"""Below this (and at -inf) ``_exp_f32`` is 0; exp(-86) ~ 4e-38 is near float32's smallest
normal number."""
_EXP_HI = np.float32(88.0)
"""Above this, and at +inf and NaN, ``_exp_f32`` saturates at exp(88) ~ 1.65e38."""
_EPS_MAX = np.float32(1e38)
"""Largest fast-path ``eps`` trusted: below exp(88), so no term saturated."""

_LN2_F32 = np.float32(0.6931471805599453)
_SQRT2_F32 = np.float32(1.4142135623730951)
_MANTISSA_F32 = np.int32((1 << 23) - 1)
_ONE_BITS_F32 = np.int32(127 << 23)

# Per-position status inside a block.
_FAST = 0
_OUTSIDE = 1
_SKIP = 2
_INVALID = 3


@njit("float32(float32)", **KERNEL_IN_ORDER)
def _exp_f32(x):
    """exp(x) in float32, relative error < 2e-7 on [-86, 88]; 0 below (and at -inf).

    +inf and NaN saturate at exp(88): not exp's value, but above ``_EPS_MAX``, so a sum that
    contains one is sent to the exact path. Compiled without 'reassoc', which would fold
    ``(y + _ROUND_F32) - _ROUND_F32`` to ``y``; LLVM still inlines it into the vector loops.
    """
    x = x if x < _EXP_HI else _EXP_HI  # NaN compares False: saturates too
    under = x < _EXP_LO
    x = x if x > _EXP_LO else _EXP_LO
    t = x * _LOG2E_F32 + _ROUND_F32
    k = t - _ROUND_F32
    r = (x - k * _LN2_HI_F32) - k * _LN2_LO_F32
    p = ((((_EXP_P3 * r + _EXP_P2) * r + _EXP_P1) * r + _EXP_P0) * r + _ONE_F32) * r + _ONE_F32
    k_bits = np.int32(np.int64(np.float32(t).view(np.int32)) << 23)  # k << 23, wrapped to 32 bits
    bits = np.int32(np.int64(np.float32(p).view(np.int32)) + np.int64(k_bits))  # p * 2^k
    return _ZERO_F32 if under else np.int32(bits).view(np.float32)


@njit("float32(float32)", **KERNEL_IN_ORDER)
def _log1p_f32(e):
    """log(1 + e) in float32 for finite e >= 0, relative error < 3e-7 (also for tiny e).

    u = 1 + e = 2^k m with m in [sqrt(1/2), sqrt(2)); log m = 2 atanh(z), z = (m - 1)/(m + 1),
    |z| <= 0.172, by its series to z^9. Rounding u loses some of a small e; the first-order
    correction (e - (u - 1)) / u, with 1/u ~ 1 - e (ample for a term below 6e-8), restores it.
    Compiled without 'reassoc', which would fold (1 + e) - 1 to e.
    """
    u = _ONE_F32 + e
    bits = np.float32(u).view(np.int32)
    k = (bits >> 23) - 127
    m = np.int32((bits & _MANTISSA_F32) | _ONE_BITS_F32).view(np.float32)  # in [1, 2)
    big = m > _SQRT2_F32
    m = m * np.float32(0.5) if big else m
    k = k + 1 if big else k
    z = (m - _ONE_F32) / (m + _ONE_F32)
    z2 = z * z
    s = (((np.float32(1.0 / 9.0) * z2 + np.float32(1.0 / 7.0)) * z2 + np.float32(1.0 / 5.0)) * z2
         + np.float32(1.0 / 3.0)) * z2
    log_u = np.float32(k) * _LN2_F32 + (z + z) * (_ONE_F32 + s)
    lost = e - (u - _ONE_F32)  # exact for u < 2, where it matters
    return log_u + lost * (_ONE_F32 - e) if e < _ONE_F32 else log_u


@njit(**KERNEL)
def _score(values, w, c):
    """Score of candidate ``c`` under row weights ``w`` (R,) float64; zero weights add 0."""
    s = 0.0
    for r in range(values.shape[0]):
        if w[r] != 0.0:
            s += w[r] * np.float64(values[r, c])
    return s


@njit(**KERNEL)
def _exact_nll(values, w, a, b):
    """NLL of the run ``a:b`` under ``w`` (R,): max-shifted logsumexp, libm exp/log, float64,
    extended reals."""
    s0 = _score(values, w, a)
    top = -np.inf
    for c in range(a, b):
        s = _score(values, w, c)
        if s != s:
            return np.nan
        if s > top:
            top = s
    if top == np.inf or top == -np.inf:
        return top - s0  # logsumexp is +-inf; inf - inf is NaN as in IEEE
    acc = 0.0
    for c in range(a, b):
        acc += math.exp(_score(values, w, c) - top)
    return top + math.log(acc) - s0


@njit(**KERNEL)
def _fill_status(offsets, outside, group, n_values, lo, hi, status):
    """status[i - lo] for positions ``lo:hi``: _FAST (compute), _OUTSIDE, _SKIP or _INVALID.

    ``n_values`` uint64; ``group`` None (no position skipped) or int32 (n,).
    """
    for i in range(lo, hi):
        a = offsets[i]
        b = offsets[i + 1]
        st = _FAST if (a < b and b <= n_values) else _INVALID
        st = _OUTSIDE if outside[i] else st
        if group is not None:
            st = _SKIP if group[i] < 0 else st
        status[i - lo] = st


@njit(**KERNEL)
def _whole_vectors(a, b, n_values, width):
    """The candidates after the target of run ``a:b``, rounded up to whole steps of the
    vectorized loop: ``(start, stop, n_keep)`` with ``stop - start`` a multiple of ``width``
    (uint64, a power of 2) and ``n_keep = b - start`` (float32) real ones. The loops mask the
    rest by a float32 lane counter (a uint64 compare would be 4 vectors wide), so that no run
    ends in a scalar remainder loop, which on runs of 20 to 60 candidates cost as much as the
    vector loop. The width is what LLVM makes of each loop: 8 lanes, twice unrolled in the NLL
    loops (16), once in the gradient loop (8); measured, not guaranteed, so a remainder loop
    stays in the code. ``stop > n_values`` only for the last runs of the array: they take the
    exact path instead of reading past its end."""
    start = a + _U1
    mask = width - _U1
    return start, start + ((b - start + mask) & ~mask), np.float32(b - start)


_WIDE_VECTOR_ATTRIBUTES = ('"prefer-vector-width"="512"', '"min-legal-vector-width"="512"')


@intrinsic
def _wide_vectors(typingctx):
    """Compile the calling function for 512-bit vectors where the CPU has AVX-512.

    Call it first in an ``@njit`` function. LLVM's X86 backend prefers 256-bit vectors on
    AVX-512 CPUs, and numba can lift that only for the whole process (``NUMBA_CPU_FEATURES``);
    these per-function attributes (clang's ``-mprefer-vector-width=512``) lift it for one function,
    which is kept out of its callers (``noinline``: inlined, it would take theirs). A no-op on
    CPUs without AVX-512. llvmlite checks function attributes against a fixed list without
    LLVM's string attributes, so they are added to its attribute set directly; should a later
    llvmlite not keep them in a set, the function compiles with the default width
    (tests/engine/test_kernels.py checks that they reach the compiled code).
    """

    def codegen(context, builder, signature, args):
        attributes = builder.function.attributes
        attributes.add("noinline")
        if isinstance(attributes, set):
            for attribute in _WIDE_VECTOR_ATTRIBUTES:
                set.add(attributes, attribute)
        return context.get_dummy_value()

    return types.none(), codegen


@intrinsic
def _prefetch(typingctx, values, r, c):
    """Ask the CPU to bring the cache line of ``values[r, c]`` (float32 2-D C-contiguous, uint64
    indices within bounds) into its caches: ``llvm.prefetch`` for reading, kept in all cache
    levels. It has no effect on results."""

    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        array = context.make_array(array_type)(context, builder, args[0])
        pointer = cgutils.get_item_pointer(context, builder, array_type, array, args[1:], wraparound=False)
        i8_ptr = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8_ptr, i32, i32, i32]), "llvm.prefetch.p0"
        )
        # read (0), keep in all cache levels (3), data cache (1)
        builder.call(fn, [builder.bitcast(pointer, i8_ptr), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return types.none(values, r, c), codegen


if config.DISABLE_JIT:  # the kernels run as plain Python: nothing is compiled, nothing to widen

    def _wide_vectors():
        pass

    def _prefetch(values, r, c):
        pass


@njit(**KERNEL)
def _prefetch_ahead(offsets, values, rows, i):
    """Prefetch the first two cache lines, in each of ``rows`` (uint64), of the run of position
    ``i + _PREFETCH_AHEAD`` (if there is one and it lies within ``values``)."""
    j = i + _PREFETCH_AHEAD
    if j >= offsets.shape[0] - 1 or offsets[j] >= np.uint64(values.shape[1]):
        return
    last = np.uint64(values.shape[1] - 1)
    first = offsets[j]
    second = min(first + _PREFETCH_LINE, last)
    for q in range(rows.shape[0]):
        _prefetch(values, rows[q], first)
        _prefetch(values, rows[q], second)


@njit(**KERNEL)
def _scalar_eps(offsets, values, rows, w32, outside, group, lo, hi, eps, status):
    """Fast-path sums for positions ``lo:hi`` under one weight vector.

    ``rows`` uint64 (K,) are the rows read and ``w32`` float32 (K,) their weights: K == 3, 4
    or 5 take a fused loop in whole vectors (``_whole_vectors``), other K a generic one. Sets
    ``status[t]`` and, for _FAST positions, ``eps[t]`` (t = i - lo): the sum over the run after
    the target of exp(shifted score), or +inf where the target's own score is not finite or
    the run is one of the array's last (both send the position to the exact path).
    """
    n_values = np.uint64(values.shape[1])
    _fill_status(offsets, outside, group, n_values, lo, hi, status)
    k = rows.shape[0]
    t_val = np.empty(k, dtype=np.float32)
    for i in range(lo, hi):
        t = i - lo
        eps[t] = 0.0
        if status[t] != _FAST:
            continue
        _prefetch_ahead(offsets, values, rows, i)
        a = offsets[i]
        b = offsets[i + 1]
        total = _ZERO_F32
        for q in range(k):
            t_val[q] = values[rows[q], a]
            total += t_val[q]
        # The target's own score must be finite. (Not math.isfinite: it is x - x == 0, which
        # 'reassoc' folds to True for a sum.)
        if not abs(total) < np.inf:
            eps[t] = np.inf
            continue
        acc = _ZERO_F32
        start, stop, n_keep = _whole_vectors(a, b, n_values, np.uint64(16))
        if stop > n_values:  # one of the last runs, whose last vector would read past the end
            eps[t] = np.inf  # the exact path
            continue
        lane = _ZERO_F32
        if k == 3:
            r0, r1, r2 = rows[0], rows[1], rows[2]
            t0, t1, t2 = t_val[0], t_val[1], t_val[2]
            w0, w1, w2 = w32[0], w32[1], w32[2]
            for c in range(start, stop):
                d = w0 * (values[r0, c] - t0) + w1 * (values[r1, c] - t1) + w2 * (values[r2, c] - t2)
                acc += _exp_f32(d if lane < n_keep else _FAR_F32)
                lane += _ONE_F32
        elif k == 4:
            r0, r1, r2, r3 = rows[0], rows[1], rows[2], rows[3]
            t0, t1, t2, t3 = t_val[0], t_val[1], t_val[2], t_val[3]
            w0, w1, w2, w3 = w32[0], w32[1], w32[2], w32[3]
            for c in range(start, stop):
                d = (w0 * (values[r0, c] - t0) + w1 * (values[r1, c] - t1)
                     + w2 * (values[r2, c] - t2) + w3 * (values[r3, c] - t3))
                acc += _exp_f32(d if lane < n_keep else _FAR_F32)
                lane += _ONE_F32
        elif k == 5:  # four models and an estimator's multiplicity row
            r0, r1, r2, r3, r4 = rows[0], rows[1], rows[2], rows[3], rows[4]
            t0, t1, t2, t3, t4 = t_val[0], t_val[1], t_val[2], t_val[3], t_val[4]
            w0, w1, w2, w3, w4 = w32[0], w32[1], w32[2], w32[3], w32[4]
            for c in range(start, stop):
                d = (w0 * (values[r0, c] - t0) + w1 * (values[r1, c] - t1) + w2 * (values[r2, c] - t2)
                     + w3 * (values[r3, c] - t3) + w4 * (values[r4, c] - t4))
                acc += _exp_f32(d if lane < n_keep else _FAR_F32)
                lane += _ONE_F32
        else:
            for c in range(a + _U1, b):
                d = _ZERO_F32
                for q in range(k):
                    d += w32[q] * (values[rows[q], c] - t_val[q])
                acc += _exp_f32(d)
        eps[t] = acc


@njit(**KERNEL)
def _lanes_eps(offsets, values, rows, w32, outside, group, lo, hi, eps, status, acc, d):
    """Fast-path sums for positions ``lo:hi`` under ``LANES`` weight vectors.

    ``w32`` float32 (K, LANES); ``eps`` float32 (>= hi - lo, LANES); ``acc``, ``d`` float32
    (LANES,) scratch. Otherwise as ``_scalar_eps``.
    """
    _wide_vectors()
    _fill_status(offsets, outside, group, np.uint64(values.shape[1]), lo, hi, status)
    k = rows.shape[0]
    t_val = np.empty(k, dtype=np.float32)
    for i in range(lo, hi):
        t = i - lo
        for j in range(LANES):
            eps[t, j] = 0.0
        if status[t] != _FAST:
            continue
        a = offsets[i]
        b = offsets[i + 1]
        total = _ZERO_F32
        for q in range(k):
            t_val[q] = values[rows[q], a]
            total += t_val[q]
        if not abs(total) < np.inf:  # the target's own score is not finite
            for j in range(LANES):
                eps[t, j] = np.inf
            continue
        for j in range(LANES):
            acc[j] = 0.0
        if k == 3:
            r0, r1, r2 = rows[0], rows[1], rows[2]
            t0, t1, t2 = t_val[0], t_val[1], t_val[2]
            for c in range(a + _U1, b):
                d0 = values[r0, c] - t0
                d1 = values[r1, c] - t1
                d2 = values[r2, c] - t2
                for j in range(LANES):
                    acc[j] += _exp_f32(w32[0, j] * d0 + w32[1, j] * d1 + w32[2, j] * d2)
        elif k == 4:
            r0, r1, r2, r3 = rows[0], rows[1], rows[2], rows[3]
            t0, t1, t2, t3 = t_val[0], t_val[1], t_val[2], t_val[3]
            for c in range(a + _U1, b):
                d0 = values[r0, c] - t0
                d1 = values[r1, c] - t1
                d2 = values[r2, c] - t2
                d3 = values[r3, c] - t3
                for j in range(LANES):
                    acc[j] += _exp_f32(w32[0, j] * d0 + w32[1, j] * d1 + w32[2, j] * d2 + w32[3, j] * d3)
        elif k == 5:  # four models and an estimator's multiplicity row
            r0, r1, r2, r3, r4 = rows[0], rows[1], rows[2], rows[3], rows[4]
            t0, t1, t2, t3, t4 = t_val[0], t_val[1], t_val[2], t_val[3], t_val[4]
            for c in range(a + _U1, b):
                d0 = values[r0, c] - t0
                d1 = values[r1, c] - t1
                d2 = values[r2, c] - t2
                d3 = values[r3, c] - t3
                d4 = values[r4, c] - t4
                for j in range(LANES):
                    acc[j] += _exp_f32(w32[0, j] * d0 + w32[1, j] * d1 + w32[2, j] * d2 + w32[3, j] * d3
                                       + w32[4, j] * d4)
        else:
            for c in range(a + _U1, b):
                for j in range(LANES):
                    d[j] = 0.0
                for q in range(k):
                    dq = values[rows[q], c] - t_val[q]
                    for j in range(LANES):
                        d[j] += w32[q, j] * dq
                for j in range(LANES):
                    acc[j] += _exp_f32(d[j])
        for j in range(LANES):
            eps[t, j] = acc[j]


@njit(**KERNEL)
def _scalar_finish(offsets, values, w, outside_nll, lo, hi, eps, status, nll):
    """NLL of positions ``lo:hi`` into ``nll[:hi - lo]`` (float64) from ``eps`` (float32,
    overwritten): log(1 + eps) at _FAST positions (the exact path where the fast path cannot
    answer), ``outside_nll`` at outside ones, 0 at skipped and invalid ones."""
    n_exact = 0
    for t in range(hi - lo):  # float32 in, float32 out: 8 lanes per vector
        e = eps[t]
        exact = not (e <= _EPS_MAX)  # NaN too
        n_exact += (status[t] == _FAST) & exact
        y = _log1p_f32(_ZERO_F32 if exact else e)
        eps[t] = _INF_F32 if exact else y  # inf marks the exact path's positions
    for t in range(hi - lo):
        st = status[t]
        nll[t] = np.float64(eps[t]) if st == _FAST else (outside_nll if st == _OUTSIDE else 0.0)
    if n_exact > 0:  # rare: a loop of its own keeps the loops above vectorized
        for i in range(lo, hi):
            t = i - lo
            if status[t] == _FAST and eps[t] == _INF_F32:
                nll[t] = _exact_nll(values, w, offsets[i], offsets[i + 1])


@njit(**KERNEL)
def _lanes_finish(offsets, values, w, outside_nll, lo, hi, eps, status, nll):
    """As ``_scalar_finish`` for ``LANES`` weight vectors ``w`` (LANES, R); ``eps`` float32 and
    ``nll`` float64 (>= hi - lo, LANES)."""
    _wide_vectors()
    n_exact = 0
    for t in range(hi - lo):
        fast = status[t] == _FAST
        for j in range(LANES):
            e = eps[t, j]
            exact = not (e <= _EPS_MAX)
            n_exact += fast & exact
            y = _log1p_f32(_ZERO_F32 if exact else e)
            eps[t, j] = _INF_F32 if exact else y
    for t in range(hi - lo):
        st = status[t]
        fill = outside_nll if st == _OUTSIDE else 0.0
        for j in range(LANES):
            nll[t, j] = np.float64(eps[t, j]) if st == _FAST else fill
    if n_exact > 0:
        for i in range(lo, hi):
            t = i - lo
            if status[t] == _FAST:
                for j in range(LANES):
                    if eps[t, j] == _INF_F32:
                        nll[t, j] = _exact_nll(values, w[j], offsets[i], offsets[i + 1])


@njit(**KERNEL)
def _add_to_groups(group, lo, hi, nll, partial):
    """partial[group[i]] += nll[i - lo] over positions ``lo:hi``; group -1 skipped.

    A sub-block within one group (the usual case) is summed vectorized first.
    """
    g0 = group[lo]
    n_other = 0
    for i in range(lo, hi):
        n_other += group[i] != g0
    if n_other == 0:
        if g0 >= 0:
            s = 0.0
            for t in range(hi - lo):
                s += nll[t]
            partial[g0] += s
        return
    for i in range(lo, hi):
        g = group[i]
        if g >= 0:
            partial[g] += nll[i - lo]


@njit(**KERNEL)
def _add_to_groups_lanes(group, lo, hi, nll, partial):
    """As ``_add_to_groups`` with ``nll`` (>= hi - lo, LANES) and ``partial`` (n_groups, LANES)."""
    for i in range(lo, hi):
        g = group[i]
        if g >= 0:
            for j in range(LANES):
                partial[g, j] += nll[i - lo, j]


@njit(**KERNEL)
def _first_invalid(status, lo, hi):
    for i in range(lo, hi):
        if status[i - lo] == _INVALID:
            return i
    return -1


@njit(**KERNEL)
def _min_valid(first_bad):
    for k in range(first_bad.shape[0]):
        if first_bad[k] >= 0:
            return first_bad[k]  # blocks are in position order
    return -1


@njit(**KERNEL)
def _active_blocks(group, block):
    """int64 indices of the blocks of ``block`` positions that hold a position with
    ``group >= 0``, in order. The parallel loops run over these alone: a split is usually one
    contiguous stretch of positions (val first), and a loop over all blocks would hand it to
    one thread."""
    n = group.shape[0]
    n_blocks = (n + block - 1) // block
    keep = np.empty(n_blocks, dtype=np.int64)
    m = 0
    for k in range(n_blocks):
        for i in range(k * block, min(n, (k + 1) * block)):
            if group[i] >= 0:
                keep[m] = k
                m += 1
                break
    return keep[:m]


_ARGS = "uint64[::1], float32[:, ::1], uint64[::1]"  # offsets, values, rows


@njit(f"int64({_ARGS}, float32[::1], float64[::1], boolean[::1], float64, int64, float64[::1])", **KERNEL_PARALLEL)
def _nll_scalar(offsets, values, rows, w32, w, outside, outside_nll, block, out):
    """out[i] = NLL of position i under ``w`` (R,); returns the first invalid position or -1."""
    n = outside.shape[0]
    n_blocks = (n + block - 1) // block
    first_bad = np.full(n_blocks, -1, dtype=np.int64)
    for k in prange(n_blocks):
        eps = np.empty(_SUB, dtype=np.float32)
        nll = np.empty(_SUB, dtype=np.float64)
        status = np.empty(_SUB, dtype=np.int8)
        for lo in range(k * block, min(n, (k + 1) * block), _SUB):
            hi = min(lo + _SUB, n, (k + 1) * block)
            _scalar_eps(offsets, values, rows, w32, outside, None, lo, hi, eps, status)
            _scalar_finish(offsets, values, w, outside_nll, lo, hi, eps, status, nll)
            out[lo:hi] = nll[: hi - lo]
            if first_bad[k] < 0:
                first_bad[k] = _first_invalid(status, lo, hi)
    return _min_valid(first_bad)


@njit(
    f"int64({_ARGS}, float32[::1], float64[::1], boolean[::1], float64, int32[::1], int64, float64[::1])",
    **KERNEL_PARALLEL,
)
def _sums_scalar(offsets, values, rows, w32, w, outside, outside_nll, group, block, out):
    """out[g] += sum of NLL over group g's positions under ``w`` (R,); group -1 skipped."""
    n = outside.shape[0]
    n_groups = out.shape[0]
    n_blocks = (n + block - 1) // block
    partial = np.zeros((n_blocks, n_groups), dtype=np.float64)
    first_bad = np.full(n_blocks, -1, dtype=np.int64)
    active = _active_blocks(group, block)
    for a_k in prange(active.size):
        k = active[a_k]
        eps = np.empty(_SUB, dtype=np.float32)
        nll = np.empty(_SUB, dtype=np.float64)
        status = np.empty(_SUB, dtype=np.int8)
        for lo in range(k * block, min(n, (k + 1) * block), _SUB):
            hi = min(lo + _SUB, n, (k + 1) * block)
            _scalar_eps(offsets, values, rows, w32, outside, group, lo, hi, eps, status)
            _scalar_finish(offsets, values, w, outside_nll, lo, hi, eps, status, nll)
            _add_to_groups(group, lo, hi, nll, partial[k])
            if first_bad[k] < 0:
                first_bad[k] = _first_invalid(status, lo, hi)
    for k in range(n_blocks):  # in block order: the same sums whatever the thread count
        for g in range(n_groups):
            out[g] += partial[k, g]
    return _min_valid(first_bad)


@njit(f"int64({_ARGS}, float32[:, ::1], float64[:, ::1], boolean[::1], float64, int64, float64[:, ::1])", **KERNEL_PARALLEL)
def _nll_lanes(offsets, values, rows, w32, w, outside, outside_nll, block, out):
    """out[j, i] = NLL of position i under lane j's weights ``w[j]``, for j < out.shape[0]."""
    n = outside.shape[0]
    n_used = out.shape[0]
    n_blocks = (n + block - 1) // block
    first_bad = np.full(n_blocks, -1, dtype=np.int64)
    for k in prange(n_blocks):
        eps = np.empty((_SUB, LANES), dtype=np.float32)
        nll = np.empty((_SUB, LANES), dtype=np.float64)
        status = np.empty(_SUB, dtype=np.int8)
        acc = np.empty(LANES, dtype=np.float32)
        d = np.empty(LANES, dtype=np.float32)
        for lo in range(k * block, min(n, (k + 1) * block), _SUB):
            hi = min(lo + _SUB, n, (k + 1) * block)
            _lanes_eps(offsets, values, rows, w32, outside, None, lo, hi, eps, status, acc, d)
            _lanes_finish(offsets, values, w, outside_nll, lo, hi, eps, status, nll)
            for j in range(n_used):
                for i in range(lo, hi):
                    out[j, i] = nll[i - lo, j]
            if first_bad[k] < 0:
                first_bad[k] = _first_invalid(status, lo, hi)
    return _min_valid(first_bad)


@njit(
    f"int64({_ARGS}, float32[:, ::1], float64[:, ::1], boolean[::1], float64, int32[::1], int64, float64[:, ::1])",
    **KERNEL_PARALLEL,
)
def _sums_lanes(offsets, values, rows, w32, w, outside, outside_nll, group, block, out):
    """out[g, j] += sum of NLL over group g's positions under lane j's weights; -1 skipped."""
    n = outside.shape[0]
    n_groups = out.shape[0]
    n_blocks = (n + block - 1) // block
    partial = np.zeros((n_blocks, n_groups, LANES), dtype=np.float64)
    first_bad = np.full(n_blocks, -1, dtype=np.int64)
    active = _active_blocks(group, block)
    for a_k in prange(active.size):
        k = active[a_k]
        eps = np.empty((_SUB, LANES), dtype=np.float32)
        nll = np.empty((_SUB, LANES), dtype=np.float64)
        status = np.empty(_SUB, dtype=np.int8)
        acc = np.empty(LANES, dtype=np.float32)
        d = np.empty(LANES, dtype=np.float32)
        for lo in range(k * block, min(n, (k + 1) * block), _SUB):
            hi = min(lo + _SUB, n, (k + 1) * block)
            _lanes_eps(offsets, values, rows, w32, outside, group, lo, hi, eps, status, acc, d)
            _lanes_finish(offsets, values, w, outside_nll, lo, hi, eps, status, nll)
            _add_to_groups_lanes(group, lo, hi, nll, partial[k])
            if first_bad[k] < 0:
                first_bad[k] = _first_invalid(status, lo, hi)
    for k in range(n_blocks):  # in block order: the same sums whatever the thread count
        for g in range(n_groups):
            for j in range(LANES):
                out[g, j] += partial[k, g, j]
    return _min_valid(first_bad)


# ---------------------------------------------------------------------------------------------
# Public functions


def blend_nll(
    offsets: np.ndarray,
    values: np.ndarray,
    weights: np.ndarray,
    outside: np.ndarray,
    outside_nll: float,
) -> np.ndarray:
    """Per-position NLL (nats) of every blend in ``weights``.

    Args:
        offsets: uint64 ``(n + 1,)`` C-contiguous; position i's candidates are
            ``offsets[i]:offsets[i+1]``, the target first.
        values: float32 ``(R, C)`` C-contiguous, model-major natural-log values, each finite
            or -inf.
        weights: float64 ``(B, R)``, finite; one weight vector per blend.
        outside: bool ``(n,)``; True where the target is outside the support.
        outside_nll: the NLL at outside positions, whatever the weights.

    Returns:
        float64 ``(B, n)``: ``logsumexp_c s_b(c) - s_b(target)``, or ``outside_nll``.

    Raises:
        ValueError: an argument has the wrong type, dtype or shape; weights are not finite;
            or a run is invalid (decreasing offsets, past the end of ``values``, or empty at
            a position that is not outside).
    """
    offsets, values, weights, outside, outside_nll = _checked(offsets, values, weights, outside, outside_nll)
    n = outside.shape[0]
    out = np.empty((weights.shape[0], n), dtype=np.float64)
    for start, stop in _lane_chunks(weights.shape[0]):
        if stop - start == 1:
            w = weights[start]
            rows, w32 = _fused_rows(w[:, None])
            bad = _nll_scalar(offsets, values, rows, w32[:, 0].copy(), w, outside, outside_nll,
                              _block_size(n, 1, 1), out[start])
        else:
            w = _padded(weights[start:stop])
            rows, w32 = _fused_rows(w.T)
            bad = _nll_lanes(offsets, values, rows, w32, w, outside, outside_nll, _block_size(n, 1, 1),
                             out[start:stop])
        _raise_if_invalid(bad)
    return out


def blend_nll_sums(
    offsets: np.ndarray,
    values: np.ndarray,
    weights: np.ndarray,
    outside: np.ndarray,
    outside_nll: float,
    group: np.ndarray,
    n_groups: int,
) -> np.ndarray:
    """Sum of per-position NLL (nats) per group, for every blend in ``weights``.

    Args:
        offsets, values, weights, outside, outside_nll: as for ``blend_nll``.
        group: int32 ``(n,)``; each position's group in ``0..n_groups-1``, or -1 to skip the
            position entirely (it is neither computed nor checked).
        n_groups: number of groups, >= 0.

    Returns:
        float64 ``(n_groups, B)``. Sums are accumulated in float64 over fixed blocks of
        positions and added in block order, so they do not depend on the thread count.

    Raises:
        ValueError: as for ``blend_nll``, or ``group``/``n_groups`` invalid.
    """
    offsets, values, weights, outside, outside_nll = _checked(offsets, values, weights, outside, outside_nll)
    n = outside.shape[0]
    n_groups = _checked_count(n_groups, "n_groups")
    group = _checked_array(group, "group", np.int32, (n,))
    if n and (group.min() < -1 or group.max() >= n_groups):
        raise ValueError(f"group: values must be -1 or in [0, {n_groups}), got [{group.min()}, {group.max()}]")
    out = np.zeros((n_groups, weights.shape[0]), dtype=np.float64)
    for start, stop in _lane_chunks(weights.shape[0]):
        if stop - start == 1:
            w = weights[start]
            rows, w32 = _fused_rows(w[:, None])
            sums = np.zeros(n_groups, dtype=np.float64)
            bad = _sums_scalar(offsets, values, rows, w32[:, 0].copy(), w, outside, outside_nll, group,
                               _block_size(n, n_groups, 1), sums)
            out[:, start] = sums
        else:
            w = _padded(weights[start:stop])
            rows, w32 = _fused_rows(w.T)
            sums = np.zeros((n_groups, LANES), dtype=np.float64)
            bad = _sums_lanes(offsets, values, rows, w32, w, outside, outside_nll, group,
                              _block_size(n, n_groups, LANES), sums)
            out[:, start:stop] = sums[:, : stop - start]
        _raise_if_invalid(bad)
    return out


def _lane_chunks(n_vectors: int) -> list[tuple[int, int]]:
    """Split weight vectors into lane-batched chunks (at most LANES) and single vectors."""
    chunks = []
    start = 0
    while n_vectors - start >= _MIN_LANES_USED:
        stop = min(start + LANES, n_vectors)
        chunks.append((start, stop))
        start = stop
    chunks.extend((i, i + 1) for i in range(start, n_vectors))
    return chunks


def _padded(weights: np.ndarray) -> np.ndarray:
    """(LANES, R) weights: ``weights`` then copies of its last row, whose NLLs are computed and
    dropped (copies rather than zeros, which would send -inf values to the exact path)."""
    out = np.empty((LANES, weights.shape[1]), dtype=np.float64)
    out[: weights.shape[0]] = weights
    out[weights.shape[0] :] = weights[-1]
    return out


def _fused_rows(weights_t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows to read and their float32 weights, from row weights ``weights_t`` (R, L).

    Rows whose weights are all zero are dropped (so 0 * -inf adds nothing). One to three rows
    left fill exactly 3 slots, by repeating rows with their weights halved or quartered (exact
    in binary): e.g. rows (0, 2) -> (0, 2, 2) with weights (w0, w2/2, w2/2). The kernels have
    fused loops for 3, 4 and 5 slots and a generic loop for more.

    Returns:
        uint64 ``(K,)`` row indices and C-contiguous float32 ``(K, L)`` weights.
    """
    active = np.flatnonzero((weights_t != 0.0).any(axis=1))
    if active.size == 0:
        active = np.zeros(1, dtype=np.int64)  # all weights zero: every score is 0
    if active.size < 3:
        shares = {1: [(0, 2), (0, 4), (0, 4)], 2: [(0, 1), (1, 2), (1, 2)]}[active.size]
        rows = active[[r for r, _ in shares]]
        w = weights_t[rows] / np.array([float(d) for _, d in shares])[:, None]
    else:
        rows, w = active, weights_t[active]
    return rows.astype(np.uint64), np.ascontiguousarray(w, dtype=np.float32)


def _block_size(n: int, n_groups: int, lanes: int) -> int:
    """Positions per block: ``_BLOCK``, fewer for small ``n`` (at least ``_MIN_BLOCKS`` blocks,
    so that threads share a split's blocks), more when the per-block partial sums would need
    too much memory. Depends on sizes only, so the sums do not depend on the thread count."""
    max_blocks = max(1, _PARTIALS_BUDGET // max(1, n_groups * lanes * 8))
    return max(min(_BLOCK, max(_SUB, -(-n // _MIN_BLOCKS))), -(-n // max_blocks))


def _raise_if_invalid(first_bad: int) -> None:
    if first_bad >= 0:
        raise ValueError(
            f"offsets: invalid run at position {first_bad} (decreasing offsets, past the end of "
            "values, or empty where outside is False)"
        )


def _checked(offsets, values, weights, outside, outside_nll):
    values = _checked_array(values, "values", np.float32, None, ndim=2, contiguous=True)
    n_rows, n_values = values.shape
    if n_rows < 1:
        raise ValueError("values: need at least one row (model)")
    offsets = _checked_array(offsets, "offsets", np.uint64, None, ndim=1, contiguous=True)
    if offsets.shape[0] < 1:
        raise ValueError("offsets: need shape (n + 1,), got (0,)")
    n = offsets.shape[0] - 1
    weights = _checked_array(weights, "weights", np.float64, (None, n_rows))
    if not np.isfinite(weights).all():
        raise ValueError("weights: must be finite")
    outside = _checked_array(outside, "outside", np.bool_, (n,))
    if not isinstance(outside_nll, Real) or isinstance(outside_nll, bool):
        raise ValueError(f"outside_nll: expected a real number, got {type(outside_nll).__name__}")
    return offsets, values, weights, outside, float(outside_nll)


def _checked_array(x, name, dtype, shape, *, ndim=None, contiguous=False):
    """``x`` as a C-contiguous array after checking its dtype and shape (None: any length).

    Small arrays are made contiguous; big ones (``contiguous=True``) must already be, rather
    than be copied behind the caller's back.
    """
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name}: expected a numpy array, got {type(x).__name__}")
    if x.dtype != dtype:
        raise ValueError(f"{name}: expected dtype {np.dtype(dtype)}, got {x.dtype}")
    if shape is not None:
        ndim = len(shape)
    if x.ndim != ndim or (shape is not None and any(s is not None and s != d for s, d in zip(shape, x.shape))):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")" if shape else f"{ndim}-d"
        raise ValueError(f"{name}: expected shape {want}, got {x.shape}")
    if contiguous and not x.flags.c_contiguous:
        raise ValueError(f"{name}: must be C-contiguous")
    return np.ascontiguousarray(x)


def _checked_count(n, name):
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"{name}: expected a non-negative integer, got {n!r}")
    return int(n)


# --- Gradient and Hessian (for Newton) ------------------------------------------------------

_GH_Z_MAX = np.float32(1e25)
"""Largest fast-path ``1 + eps`` the gradient/Hessian kernel trusts: every shifted score is
below about 57.6, far from float32's exp overflow (a moment that still overflows, on huge
values, is not finite and sends the run to the exact path as well)."""


@njit(**KERNEL)
def _exact_grad_hess(values, w, lo, hi, n_deriv, ev, evv, out):
    """Add one run's NLL, gradient and upper-triangular Hessian (first ``n_deriv`` rows) to
    ``out``: float64, max-shifted, libm exp/log."""
    top = -np.inf
    for c in range(lo, hi):
        top = max(top, _score(values, w, c))
    z = 0.0
    ev[:] = 0.0
    evv[:] = 0.0
    for c in range(lo, hi):
        e = math.exp(_score(values, w, c) - top)
        if e == 0.0:
            continue
        z += e
        t = 0
        for r in range(n_deriv):
            vr = np.float64(values[r, c])
            ev[r] += e * vr
            for q in range(r, n_deriv):
                evv[t] += e * vr * np.float64(values[q, c])
                t += 1
    out[0] += top + math.log(z) - _score(values, w, lo)
    t = 0
    for r in range(n_deriv):
        mean_r = ev[r] / z
        out[1 + r] += mean_r - values[r, lo]
        for q in range(r, n_deriv):
            out[1 + n_deriv + t] += evv[t] / z - mean_r * (ev[q] / z)
            t += 1


@njit(**KERNEL)
def _run_moments3(values, w32, a, b, mom):
    """Fast path of one run for D = 3 differentiated rows of R = 3 or 4 (log-linear weights,
    with or without an estimator's log-multiplicity row), fused by hand so that LLVM
    vectorizes it: returns ``eps`` (float32 sum of ``exp(shifted score)`` over the run after
    the target; +inf where a moment is not finite or the run is one of the array's last, see
    ``_whole_vectors``) and sets ``mom`` float32 (9,) to the means ``E_p[u_r]`` of ``u_r = v_r -
    v_r(target)``, then the upper-triangular covariances ``E_p[u_r u_q] - E_p[u_r] E_p[u_q]``.
    ``w32`` float32 (R,) are all rows' weights.

    One loop over the run (a second, centred pass cost 1.4x as much): moments about the
    target's values, so the covariances lose the float32 digits that ``E[uu] - E[u]E[u]``
    cancels. Measured against the float64 twin (tests/engine/tuning/test_newton.py): within 1e-5 relative
    on a few hundred positions of real log-probabilities, 1e-7 on the bundled val split, up to
    1e-4 on adversarial random runs; the means (the gradient) keep about 1e-6. Ample for
    Newton's steps, whose fixed point depends on the gradient alone.
    """
    n_rows = values.shape[0]
    n_values = np.uint64(values.shape[1])
    start, stop, n_keep = _whole_vectors(a, b, n_values, np.uint64(8))
    if stop > n_values:
        return np.float32(np.inf)  # the exact path
    q0, q1, q2, q3 = np.uint64(0), np.uint64(1), np.uint64(2), np.uint64(n_rows - 1)
    t0, t1, t2, t3 = values[q0, a], values[q1, a], values[q2, a], values[q3, a]
    w0, w1, w2 = w32[0], w32[1], w32[2]
    w3 = w32[3] if n_rows == 4 else _ZERO_F32
    eps = _ZERO_F32
    s0 = _ZERO_F32
    s1 = _ZERO_F32
    s2 = _ZERO_F32
    h00 = _ZERO_F32
    h01 = _ZERO_F32
    h02 = _ZERO_F32
    h11 = _ZERO_F32
    h12 = _ZERO_F32
    h22 = _ZERO_F32
    lane = _ZERO_F32
    for c in range(start, stop):
        u0, u1, u2 = values[q0, c] - t0, values[q1, c] - t1, values[q2, c] - t2
        d = w0 * u0 + w1 * u1 + w2 * u2 + w3 * (values[q3, c] - t3)
        x = _exp_f32(d if lane < n_keep else _FAR_F32)  # masked lanes: x = 0, so x * u = 0
        lane += _ONE_F32
        eps += x
        x0, x1, x2 = x * u0, x * u1, x * u2
        s0 += x0
        s1 += x1
        s2 += x2
        h00 += x0 * u0
        h01 += x0 * u1
        h02 += x0 * u2
        h11 += x1 * u1
        h12 += x1 * u2
        h22 += x2 * u2
    inv = _ONE_F32 / (_ONE_F32 + eps)
    m0, m1, m2 = s0 * inv, s1 * inv, s2 * inv
    c00, c01, c02 = h00 * inv - m0 * m0, h01 * inv - m0 * m1, h02 * inv - m0 * m2
    c11, c12, c22 = h11 * inv - m1 * m1, h12 * inv - m1 * m2, h22 * inv - m2 * m2
    mom[0], mom[1], mom[2], mom[3], mom[4], mom[5], mom[6], mom[7], mom[8] = m0, m1, m2, c00, c01, c02, c11, c12, c22
    # NaN or +-inf in any moment makes the sum NaN or inf (not math.isfinite: it is x - x == 0,
    # which 'reassoc' folds to True)
    finite = abs(m0 + m1 + m2 + c00 + c01 + c02 + c11 + c12 + c22) < np.inf
    return eps if finite else np.float32(np.inf)


@njit(**KERNEL)
def _run_moments(values, w32, a, b, u, mom):
    """As ``_run_moments3`` for any D = len(u) rows differentiated (the first D) and any R:
    plain loops over rows, not vectorized; ``u`` float32 (D,) is scratch, ``mom`` float32
    (D + D(D+1)/2,)."""
    n_rows = values.shape[0]
    n_deriv = u.shape[0]
    eps = _ZERO_F32
    mom[:] = _ZERO_F32
    for c in range(a + _U1, b):
        d = _ZERO_F32
        for r in range(n_rows):
            d += w32[r] * (values[r, c] - values[r, a])
        x = _exp_f32(d)
        eps += x
        for r in range(n_deriv):
            u[r] = values[r, c] - values[r, a]
        t = n_deriv
        for r in range(n_deriv):
            mom[r] += x * u[r]
            for q in range(r, n_deriv):
                mom[t] += x * u[r] * u[q]
                t += 1
    inv = _ONE_F32 / (_ONE_F32 + eps)
    t = n_deriv
    for r in range(n_deriv):
        mom[r] *= inv
    for r in range(n_deriv):
        for q in range(r, n_deriv):
            mom[t] = mom[t] * inv - mom[r] * mom[q]
            t += 1
    total = _ZERO_F32
    for x in range(mom.shape[0]):
        total += mom[x]
    return eps if abs(total) < np.inf else np.float32(np.inf)


@njit(**KERNEL_PARALLEL)
def _grad_hess_blocks(offsets, values, w32, w, n_deriv, outside, outside_nll, group, block):
    """Per-block partial sums ``[nll, grad (D), upper-triangular Hessian (D(D+1)/2)]`` over the
    first ``D = n_deriv`` rows, under weights ``w`` float64 (R,) (``w32`` the same in float32).

    Fast path per position: ``_run_moments3`` (``_run_moments`` for other D or R), its NLL
    ``log1p(eps)`` by ``_log1p_f32``, added to float64 block sums. Runs where ``1 + eps``
    reaches ``_GH_Z_MAX`` (a shifted score above about 57, or not finite, a zero weight against
    a -inf value included; a moment not finite) take the exact path.
    """
    n = offsets.size - 1
    n_tri = n_deriv * (n_deriv + 1) // 2
    n_blocks = (n + block - 1) // block
    acc = np.zeros((n_blocks, 1 + n_deriv + n_tri))
    fused = n_deriv == 3 and (values.shape[0] == 3 or values.shape[0] == 4)
    active = _active_blocks(group, block)
    for a_k in prange(active.size):
        blk = active[a_k]
        ev = np.empty(n_deriv)
        evv = np.empty(n_tri)
        u = np.empty(n_deriv, dtype=np.float32)
        mom = np.empty(n_deriv + n_tri, dtype=np.float32)
        out = acc[blk]
        for i in range(blk * block, min(n, (blk + 1) * block)):
            if group[i] < 0:
                continue
            if outside[i]:
                out[0] += outside_nll
                continue
            a = offsets[i]
            b = offsets[i + 1]
            if fused:
                eps = _run_moments3(values, w32, a, b, mom)
            else:
                eps = _run_moments(values, w32, a, b, u, mom)
            if _ONE_F32 + eps < _GH_Z_MAX:  # False for NaN too
                out[0] += np.float64(_log1p_f32(eps))
                for x in range(mom.size):
                    out[1 + x] += np.float64(mom[x])
            else:
                _exact_grad_hess(values, w, a, b, n_deriv, ev, evv, out)
    return acc


def blend_nll_grad_hess(
    offsets: np.ndarray,
    values: np.ndarray,
    weights: np.ndarray,
    outside: np.ndarray,
    outside_nll: float,
    group: np.ndarray,
    *,
    n_deriv: int | None = None,
) -> tuple[float, np.ndarray, np.ndarray]:
    """Total NLL and its gradient and Hessian in the row weights, in one pass.

    For a position with softmax ``p`` over its run, ``d NLL / d w_r = E_p[v_r] - v_r(target)``
    and ``d2 NLL / d w_r d w_q = Cov_p(v_r, v_q)`` (positive semi-definite: the NLL is convex
    in ``w``). Positions outside the support add ``outside_nll`` and nothing else.

    Args:
        offsets, values, outside, outside_nll: the candidate matrix (see ``blend_nll``).
        weights: float64 ``(R,)``, one weight vector.
        group: int32 ``(n,)``: positions with a negative group are skipped.
        n_deriv: differentiate in the first ``D`` rows only (default: all R); later rows are
            fixed terms (e.g. an estimator's log-multiplicity row).

    Returns:
        ``(total NLL, gradient float64 (D,), Hessian float64 (D, D))``, sums over the positions
        counted (nats); divide by their number for means. Each position's NLL is within
        about 5e-7 relative (as ``blend_nll``), its gradient within about 1e-6 and its Hessian
        within about 1e-5 (float32 moments over its run, see ``_run_moments3``); the sums over
        positions are float64.
    """
    if not isinstance(weights, np.ndarray) or weights.ndim != 1:
        raise ValueError("weights: expected a 1-d numpy array (one weight vector)")
    offsets, values, w, outside, outside_nll = _checked(offsets, values, weights[None, :], outside, outside_nll)
    w = w[0]
    n = offsets.size - 1
    group = _checked_array(group, "group", np.int32, (n,))
    n_rows = values.shape[0] if n_deriv is None else n_deriv
    if not 1 <= n_rows <= values.shape[0]:
        raise ValueError(f"n_deriv: expected 1..{values.shape[0]}, got {n_deriv}")
    acc = _grad_hess_blocks(offsets, values, w.astype(np.float32), w, n_rows, outside, outside_nll, group,
                             _block_size(n, 1, 1 + n_rows * (n_rows + 3) // 2))
    total = acc.sum(axis=0)  # blocks are fixed, so the sum does not depend on the thread count
    hess = np.empty((n_rows, n_rows))
    upper = np.triu_indices(n_rows)
    hess[upper] = total[1 + n_rows :]
    hess.T[upper] = total[1 + n_rows :]
    return float(total[0]), total[1 : 1 + n_rows].copy(), hess
