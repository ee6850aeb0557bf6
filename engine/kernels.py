"""Blend kernels: per-position NLL of log-linear blends over a filled candidate matrix.

A candidate matrix holds, for ``n`` positions, CSR runs of candidates (target first) and one
natural-log value per row (model) per candidate. For a weight vector ``w`` (one weight per row)
the score of candidate ``c`` is ``s(c) = sum_r w[r] * values[r, c]`` (a zero weight times -inf
counts as 0), and a position's NLL in nats is ``logsumexp over its run of s - s(target)``,
in extended reals (see ``tests/naive.py`` for the literal definition).

How the kernels are fast (measured reasons in DESIGN.md, "Performance"):
- one pass per position with every score shifted by the target's score, so the sum of
  ``exp`` starts at 1 and the NLL is simply its log: no max pass, and full relative precision
  for confident positions (NLL near 0);
- ``exp`` and ``log`` are polynomials the compiler vectorizes (llvmlite has no SVML, so
  ``math.exp`` stays one scalar libm call per element);
- an exact max-shifted fallback (libm ``exp``/``log``) for the rare positions where the
  shifted sum leaves the safe range or anything is non-finite;
- several weight vectors are evaluated as the vector lanes of one pass (``LANES`` at once);
- positions are split into fixed blocks; each block accumulates its own partial sums, which
  are added in block order afterwards, so results do not depend on the thread count.

Accuracy: the polynomial ``exp`` has relative error below 1.1e-7 (see ``_exp_poly``), the
polynomial ``log`` below 1e-12, so a fast-path NLL is within about 1.1e-7 relative (and
1.1e-7 absolute) of the exact value; sums over positions accumulate in float64.
"""

from __future__ import annotations

import math
from numbers import Real

import numpy as np
from numba import njit, prange

__all__ = ["LANES", "blend_nll", "blend_nll_sums"]

_FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}  # no 'nnan'/'ninf': values hold -inf
_JIT = dict(cache=True, fastmath=_FASTMATH)
_PJIT = dict(cache=True, fastmath=_FASTMATH, parallel=True)

LANES = 32
"""Weight vectors evaluated together by the lane-batched kernels (fixed at compile time)."""

_MIN_LANES_USED = 8
"""Fewest weight vectors worth a lane-batched pass; fewer run one scalar pass each.

A lane pass costs about as much as this many scalar passes (bench/table.py measures both).
"""

_BLOCK = 16384
"""Positions per parallel work item; each block keeps its own partial sums."""

_SUB = 256
"""Positions per inner step of a block (the buffer of sums waiting for their vectorized log)."""

_PARTIALS_BUDGET = 1 << 26
"""Bytes allowed for the per-block partial sums; beyond it, blocks grow (fewer of them)."""

_CHUNK = np.uint64(64)
"""Candidates scored per inner step of the scalar kernel (its scratch length)."""

_SUM_MAX = 1e300
"""Largest target-shifted sum of exp accepted from the fast path (every shifted score
<= ~690, so nothing overflowed); larger, inf or NaN falls back to the exact path."""

# Polynomial exp: exp(x) = 2^k * exp(r), k = round(x / ln 2), |r| <= ln(2)/2, with
# exp(r) ~ 1 + r + r^2 * P(r), P a degree-3 minimax fit of the relative error (max 1.05e-7
# over the reduced range; exp(0) is exactly 1). ln 2 split in two (Cody-Waite) so r is exact.
_EXP_P0 = 0.49999231791489995
_EXP_P1 = 0.1666711446534655
_EXP_P2 = 0.04189011316171747
_EXP_P3 = 0.008312524870673963
_LOG2E = 1.4426950408889634
_LN2_HI = 0.693145751953125
_LN2_LO = 1.42860682030941723212e-6
_EXP_LO = -708.0
"""Below this exp is 0 here (exp(-708) ~ 3e-308 is the smallest normal result)."""
_EXP_HI = 709.0
"""Inputs above this (and NaN) saturate at exp(709) ~ 8e307, which the callers' range check
sends to the exact path."""

_LN2 = 0.6931471805599453
_SQRT2 = 1.4142135623730951
_MANTISSA = np.int64((1 << 52) - 1)
_ONE_BITS = np.int64(1023 << 52)

# Per-position status inside a block.
_FAST = 0
_OUTSIDE = 1
_SKIP = 2
_INVALID = 3
_FALLBACK = 4


@njit("float64(float64)", **_JIT)
def _exp_poly(x):
    """exp(x), float64, relative error < 1.1e-7 on [-708, 709]; 0 below; saturates above.

    NaN and +inf map to exp(709): not exp's value, but large enough for the callers' range
    check to route the position to the exact path. -inf maps to 0.
    """
    x = x if x <= _EXP_HI else _EXP_HI  # also catches NaN (comparison is False)
    under = x < _EXP_LO
    x = x if x >= _EXP_LO else _EXP_LO  # keep k a valid exponent; result zeroed below
    k = np.floor(x * _LOG2E + 0.5)
    r = x - k * _LN2_HI - k * _LN2_LO
    p = ((_EXP_P3 * r + _EXP_P2) * r + _EXP_P1) * r + _EXP_P0
    y = 1.0 + r + r * r * p
    scale = np.int64((np.int64(k) + 1023) << 52).view(np.float64)  # 2^k from its bits
    return 0.0 if under else y * scale


@njit("float64(float64)", **_JIT)
def _log_poly(x):
    """log(x) for positive normal finite float64 x, relative error < 1e-12 (absolute near 1).

    x = 2^e * m with m in [sqrt(1/2), sqrt(2)); log m = 2 atanh(z), z = (m - 1) / (m + 1),
    |z| <= 0.172, by its series to z^13. Other inputs give meaningless finite values.
    """
    bits = np.float64(x).view(np.int64)
    e = (bits >> 52) - 1023
    m = np.int64((bits & _MANTISSA) | _ONE_BITS).view(np.float64)  # in [1, 2)
    big = m > _SQRT2
    m = 0.5 * m if big else m
    e = e + 1 if big else e
    z = (m - 1.0) / (m + 1.0)
    z2 = z * z
    s = ((((((1.0 / 13.0) * z2 + 1.0 / 11.0) * z2 + 1.0 / 9.0) * z2 + 1.0 / 7.0) * z2 + 1.0 / 5.0)
         * z2 + 1.0 / 3.0) * z2
    return e * _LN2 + (2.0 * z + 2.0 * z * s)


@njit(**_JIT)
def _score(values, w, c):
    """Score of candidate ``c`` under row weights ``w`` (R,), zero weights contributing 0."""
    s = 0.0
    for r in range(values.shape[0]):
        if w[r] != 0.0:
            s += w[r] * np.float64(values[r, c])
    return s


@njit(**_JIT)
def _exact_nll(values, w, a, b):
    """NLL of the run ``a:b`` by a max-shifted logsumexp with libm exp/log, extended reals."""
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


@njit(**_JIT)
def _run_status(offsets, outside, group, n_values, i):
    """What to do at position ``i``: _FAST (compute), _OUTSIDE, _SKIP or _INVALID."""
    if group is not None and group[i] < 0:
        return _SKIP
    if outside[i]:
        return _OUTSIDE
    a = offsets[i]
    b = offsets[i + 1]
    if a < b and b <= n_values:
        return _FAST
    return _INVALID


@njit(**_JIT)
def _block_scalar(offsets, values, w, outside, outside_nll, group, lo, hi, nll, status):
    """NLL of positions ``lo:hi`` under one weight vector ``w`` (R,) into ``nll[:hi - lo]``.

    Vectorized along each run's candidates. ``status`` (>= hi - lo,) int8 receives each
    position's status (_FAST positions whose sum left the safe range become _FALLBACK);
    skipped and invalid positions get NLL 0.
    """
    n_rows, n_values = values.shape
    scratch = np.empty(_CHUNK, dtype=np.float64)
    for i in range(lo, hi):
        t = i - lo
        st = _run_status(offsets, outside, group, n_values, i)
        status[t] = st
        nll[t] = 1.0  # a sum of exp whose log is 0, for the vectorized log below
        if st != _FAST:
            continue
        a = offsets[i]
        b = offsets[i + 1]
        s0 = _score(values, w, a)
        acc = 0.0
        c0 = a
        while c0 < b:
            m = b - c0
            if m > _CHUNK:
                m = _CHUNK
            for j in range(m):
                scratch[j] = 0.0
            for r in range(n_rows):
                wr = w[r]
                if wr != 0.0:  # skipping the row is what makes 0 * -inf count as 0
                    for j in range(m):
                        scratch[j] += wr * np.float64(values[r, c0 + j])
            for j in range(m):
                acc += _exp_poly(scratch[j] - s0)
            c0 += m
        if acc <= _SUM_MAX:
            nll[t] = acc
        else:
            status[t] = _FALLBACK
    for t in range(hi - lo):
        nll[t] = _log_poly(nll[t])
    for i in range(lo, hi):
        t = i - lo
        st = status[t]
        if st == _OUTSIDE:
            nll[t] = outside_nll
        elif st == _FALLBACK:
            nll[t] = _exact_nll(values, w, offsets[i], offsets[i + 1])
        elif st != _FAST:
            nll[t] = 0.0


@njit(**_JIT)
def _block_lanes(offsets, values, w, wt, outside, outside_nll, group, lo, hi, nll, status):
    """NLL of positions ``lo:hi`` under ``LANES`` weight vectors into ``nll[:hi - lo, :]``.

    ``w`` (LANES, R) and its transpose ``wt`` (R, LANES); vectorized along the lanes.
    """
    n_rows, n_values = values.shape
    s = np.empty(LANES, dtype=np.float64)
    s0 = np.empty(LANES, dtype=np.float64)
    acc = np.empty(LANES, dtype=np.float64)
    for i in range(lo, hi):
        t = i - lo
        st = _run_status(offsets, outside, group, n_values, i)
        status[t] = st
        if st != _FAST:
            for j in range(LANES):
                nll[t, j] = outside_nll if st == _OUTSIDE else 0.0
            continue
        a = offsets[i]
        b = offsets[i + 1]
        _lane_scores(values, wt, a, s0)
        for j in range(LANES):
            acc[j] = 0.0
        for c in range(a, b):
            _lane_scores(values, wt, c, s)
            for j in range(LANES):
                acc[j] += _exp_poly(s[j] - s0[j])
        n_out = 0
        for j in range(LANES):
            nll[t, j] = _log_poly(acc[j])
            n_out += not (acc[j] <= _SUM_MAX)
        if n_out > 0:
            for j in range(LANES):
                if not (acc[j] <= _SUM_MAX):
                    nll[t, j] = _exact_nll(values, w[j], a, b)


@njit(**_JIT)
def _lane_scores(values, wt, c, s):
    """s[j] = score of candidate ``c`` under lane j's weights (``wt`` is (R, LANES))."""
    for j in range(LANES):
        s[j] = 0.0
    for r in range(values.shape[0]):
        v = np.float64(values[r, c])
        if math.isfinite(v):
            for j in range(LANES):
                s[j] += wt[r, j] * v
        else:  # -inf: a zero weight contributes 0, not NaN
            for j in range(LANES):
                s[j] += wt[r, j] * v if wt[r, j] != 0.0 else 0.0


@njit(**_JIT)
def _first_invalid(status, lo, hi):
    for i in range(lo, hi):
        if status[i - lo] == _INVALID:
            return i
    return -1


@njit(**_JIT)
def _min_valid(first_bad):
    for k in range(first_bad.shape[0]):
        if first_bad[k] >= 0:
            return first_bad[k]  # blocks are in position order
    return -1


_SIG_NLL_SCALAR = "int64(uint64[::1], float32[:, ::1], float64[::1], boolean[::1], float64, int64, float64[::1])"
_SIG_SUMS_SCALAR = (
    "int64(uint64[::1], float32[:, ::1], float64[::1], boolean[::1], float64, int32[::1], int64, float64[::1])"
)
_SIG_NLL_LANES = "int64(uint64[::1], float32[:, ::1], float64[:, ::1], boolean[::1], float64, int64, float64[:, ::1])"
_SIG_SUMS_LANES = (
    "int64(uint64[::1], float32[:, ::1], float64[:, ::1], boolean[::1], float64, int32[::1], int64, float64[:, ::1])"
)


@njit(_SIG_NLL_SCALAR, **_PJIT)
def _nll_scalar(offsets, values, w, outside, outside_nll, block, out):
    """out[i] = NLL of position i under ``w`` (R,); returns the first invalid position or -1."""
    n = outside.shape[0]
    n_blocks = (n + block - 1) // block
    first_bad = np.full(n_blocks, -1, dtype=np.int64)
    for k in prange(n_blocks):
        buf = np.empty(_SUB, dtype=np.float64)
        status = np.empty(_SUB, dtype=np.int8)
        for lo in range(k * block, min(n, (k + 1) * block), _SUB):
            hi = min(lo + _SUB, n, (k + 1) * block)
            _block_scalar(offsets, values, w, outside, outside_nll, None, lo, hi, buf, status)
            for i in range(lo, hi):
                out[i] = buf[i - lo]
            if first_bad[k] < 0:
                first_bad[k] = _first_invalid(status, lo, hi)
    return _min_valid(first_bad)


@njit(_SIG_SUMS_SCALAR, **_PJIT)
def _sums_scalar(offsets, values, w, outside, outside_nll, group, block, out):
    """out[g] = sum of NLL over positions in group g under ``w`` (R,); group -1 skipped."""
    n = outside.shape[0]
    n_groups = out.shape[0]
    n_blocks = (n + block - 1) // block
    partial = np.zeros((n_blocks, n_groups), dtype=np.float64)
    first_bad = np.full(n_blocks, -1, dtype=np.int64)
    for k in prange(n_blocks):
        buf = np.empty(_SUB, dtype=np.float64)
        status = np.empty(_SUB, dtype=np.int8)
        for lo in range(k * block, min(n, (k + 1) * block), _SUB):
            hi = min(lo + _SUB, n, (k + 1) * block)
            _block_scalar(offsets, values, w, outside, outside_nll, group, lo, hi, buf, status)
            for i in range(lo, hi):
                g = group[i]
                if g >= 0:
                    partial[k, g] += buf[i - lo]
            if first_bad[k] < 0:
                first_bad[k] = _first_invalid(status, lo, hi)
    for k in range(n_blocks):  # in block order: the same sums whatever the thread count
        for g in range(n_groups):
            out[g] += partial[k, g]
    return _min_valid(first_bad)


@njit(_SIG_NLL_LANES, **_PJIT)
def _nll_lanes(offsets, values, w, outside, outside_nll, block, out):
    """out[j, i] = NLL of position i under lane j's weights ``w[j]`` for j < out.shape[0]."""
    n = outside.shape[0]
    n_used = out.shape[0]
    wt = np.ascontiguousarray(w.T)
    n_blocks = (n + block - 1) // block
    first_bad = np.full(n_blocks, -1, dtype=np.int64)
    for k in prange(n_blocks):
        buf = np.empty((_SUB, LANES), dtype=np.float64)
        status = np.empty(_SUB, dtype=np.int8)
        for lo in range(k * block, min(n, (k + 1) * block), _SUB):
            hi = min(lo + _SUB, n, (k + 1) * block)
            _block_lanes(offsets, values, w, wt, outside, outside_nll, None, lo, hi, buf, status)
            for j in range(n_used):
                for i in range(lo, hi):
                    out[j, i] = buf[i - lo, j]
            if first_bad[k] < 0:
                first_bad[k] = _first_invalid(status, lo, hi)
    return _min_valid(first_bad)


@njit(_SIG_SUMS_LANES, **_PJIT)
def _sums_lanes(offsets, values, w, outside, outside_nll, group, block, out):
    """out[g, j] = sum of NLL over group g under lane j's weights; group -1 skipped."""
    n = outside.shape[0]
    n_groups = out.shape[0]
    wt = np.ascontiguousarray(w.T)
    n_blocks = (n + block - 1) // block
    partial = np.zeros((n_blocks, n_groups, LANES), dtype=np.float64)
    first_bad = np.full(n_blocks, -1, dtype=np.int64)
    for k in prange(n_blocks):
        buf = np.empty((_SUB, LANES), dtype=np.float64)
        status = np.empty(_SUB, dtype=np.int8)
        for lo in range(k * block, min(n, (k + 1) * block), _SUB):
            hi = min(lo + _SUB, n, (k + 1) * block)
            _block_lanes(offsets, values, w, wt, outside, outside_nll, group, lo, hi, buf, status)
            for i in range(lo, hi):
                g = group[i]
                if g >= 0:
                    for j in range(LANES):
                        partial[k, g, j] += buf[i - lo, j]
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
        offsets: uint64 ``(n + 1,)``; position i's candidates are ``offsets[i]:offsets[i+1]``,
            the target first. Non-decreasing, at most ``C``.
        values: float32 ``(R, C)`` C-contiguous, model-major natural-log values, each finite
            or -inf.
        weights: float64 ``(B, R)``, finite; one weight vector per row.
        outside: bool ``(n,)``; True where the target is outside the support.
        outside_nll: the NLL at outside positions, whatever the weights.

    Returns:
        float64 ``(B, n)``: ``logsumexp_c s_b(c) - s_b(target)``, or ``outside_nll``.

    Raises:
        ValueError: an argument has the wrong type, dtype or shape, weights are not finite,
            or a run is invalid (decreasing offsets, past ``C``, or empty at a position
            that is not outside).
    """
    offsets, values, weights, outside, outside_nll = _checked(offsets, values, weights, outside, outside_nll)
    n = outside.shape[0]
    out = np.empty((weights.shape[0], n), dtype=np.float64)
    for start, stop in _lane_chunks(weights.shape[0]):
        if stop - start == 1:
            bad = _nll_scalar(offsets, values, weights[start], outside, outside_nll, _BLOCK, out[start])
        else:
            bad = _nll_lanes(offsets, values, _padded(weights[start:stop]), outside, outside_nll, _BLOCK,
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
            position entirely (it is not computed, nor checked).
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
            sums = np.zeros(n_groups, dtype=np.float64)
            bad = _sums_scalar(offsets, values, weights[start], outside, outside_nll, group,
                               _block_size(n, n_groups, 1), sums)
            out[:, start] = sums
        else:
            sums = np.zeros((n_groups, LANES), dtype=np.float64)
            bad = _sums_lanes(offsets, values, _padded(weights[start:stop]), outside, outside_nll, group,
                              _block_size(n, n_groups, LANES), sums)
            out[:, start:stop] = sums[:, : stop - start]
        _raise_if_invalid(bad)
    return out


def _lane_chunks(n_vectors: int) -> list[tuple[int, int]]:
    """Split weight vectors into lane-batched chunks (2..LANES) and single vectors."""
    chunks = []
    start = 0
    while n_vectors - start >= _MIN_LANES_USED:
        stop = min(start + LANES, n_vectors)
        chunks.append((start, stop))
        start = stop
    chunks.extend((i, i + 1) for i in range(start, n_vectors))
    return chunks


def _padded(weights: np.ndarray) -> np.ndarray:
    """(LANES, R) weights: ``weights`` then zero rows (whose NLLs are computed and dropped)."""
    out = np.zeros((LANES, weights.shape[1]), dtype=np.float64)
    out[: weights.shape[0]] = weights
    return out


def _block_size(n: int, n_groups: int, lanes: int) -> int:
    """Positions per block: ``_BLOCK``, or more when the per-block partial sums need too much
    memory. Depends on the inputs' sizes only, so the sums do not depend on the thread count."""
    max_blocks = max(1, _PARTIALS_BUDGET // max(1, n_groups * lanes * 8))
    return max(_BLOCK, -(-n // max_blocks))


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
    if offsets[-1] > n_values:
        raise ValueError(f"offsets: last offset {offsets[-1]} is past the end of values ({n_values} columns)")
    n = offsets.shape[0] - 1
    weights = _checked_array(weights, "weights", np.float64, (None, n_rows))
    if not np.isfinite(weights).all():
        raise ValueError("weights: must be finite")
    outside = _checked_array(outside, "outside", np.bool_, (n,))
    if not isinstance(outside_nll, Real) or isinstance(outside_nll, bool):
        raise ValueError(f"outside_nll: expected a real number, got {type(outside_nll).__name__}")
    return offsets, values, weights, outside, float(outside_nll)


def _checked_array(x, name, dtype, shape, *, ndim=None, contiguous=False):
    """``x`` as a C-contiguous array after checking its dtype and shape (None = any length).

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
