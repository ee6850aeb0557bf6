"""Bounds on a blend's NLL: the smallest and largest values consistent with the top-k data.

Not an estimator (no single filled matrix serves every weight vector); ``nll_bounds`` gives,
per position, an interval that contains the exact NLL under the data's constraints alone.

Assumptions (nothing beyond the data):
- Listed values and the actual token's exact values are the true values.
- A token missing from a model's list has a probability in ``(0, p_k]`` (p_k: that model's
  k-th listed probability at the position), and each model's probabilities over the V
  tokens of the vocabulary sum to one.

Lower bound, for any weights: the normalizer ``Z = sum_x prod_m p_m(x)^a_m`` is at least its
terms over the union of the lists where every positive-weight model's value is known, with
each negative-weight model's missing value at its largest possible value ``p_k``; every other
term (missing under a positive weight, and the whole tail) can be arbitrarily close to zero.

Upper bound: infinite as soon as a weight is negative (a token that model gives almost no
probability makes ``Z`` arbitrarily large). For nonnegative weights with sum ``s``: missing
values at ``p_k``, plus a bound on the tail from Hölder's inequality over the unlisted tokens,
``prod_m rest_m^a_m * n^(1-s)`` for ``s <= 1`` (n = V - |union|, rest_m = 1 - listed -
target) and ``prod_m (p_k,m^(s-1) rest_m)^(a_m/s)`` for ``s > 1``.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from ingest.jit import EXACT_PARALLEL

from ..candidates import UnionCandidates
from ..kernels import blend_nll
from ._fill import listed_stats, offsets_from_counts, support_members, support_sizes

__all__ = ["nll_bounds"]


@nb.njit(**EXACT_PARALLEL)
def _fill_bound(offsets, lp, rank, new_offsets, values, drop_unknown, kth_out, rest_out, n_out):
    """Union support (target first), listed values as they are; a missing value is -inf for
    models with ``drop_unknown`` (positive weights: the term may vanish), else the k-th."""
    n = offsets.size - 1
    n_models = lp.shape[0]
    for i in nb.prange(n):
        lo, hi = np.int64(offsets[i]), np.int64(offsets[i + 1])
        if hi == lo:
            continue
        members = support_members(rank, lo, hi)
        n_out[i] = members.size
        out = np.int64(new_offsets[i])
        for m in range(n_models):
            entries, kth, listed, target_p = listed_stats(lp, rank, m, lo, hi)
            if entries == 0:
                kth = -np.inf
            kth_out[m, i] = kth
            rest_out[m, i] = max(1.0 - listed - target_p, 0.0)
            for s in range(members.size):
                v = lp[m, members[s]]
                if np.isnan(v):
                    v = -np.inf if drop_unknown[m] else kth
                values[m, out + s] = v


def _support_matrix(data: UnionCandidates, drop_unknown: np.ndarray):
    offsets = offsets_from_counts(support_sizes(data.offsets, data.rank))
    n_models = data.lp.shape[0]
    values = np.empty((n_models, int(offsets[-1])), dtype=np.float32)
    kth = np.empty((n_models, data.n_positions))
    rest = np.empty((n_models, data.n_positions))
    n_support = np.zeros(data.n_positions, dtype=np.int64)
    _fill_bound(data.offsets, data.lp, data.rank, offsets, values, drop_unknown, kth, rest, n_support)
    return offsets, values, kth, rest, n_support


def nll_bounds(data: UnionCandidates, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-position lower and upper bounds on the blend NLL (nats).

    Args:
        data: the blend's observed candidates.
        weights: float64 ``(B, M)``.

    Returns:
        ``(lower, upper)``, each float64 ``(B, n)``; ``upper`` is +inf for weight vectors with
        a negative weight. Positions with no candidates get 0.
    """
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    n = data.n_positions
    lower = np.empty((w.shape[0], n))
    upper = np.full((w.shape[0], n), np.inf)
    outside = data.offsets[1:] == data.offsets[:-1]  # no candidates: reported as 0
    patterns: dict[tuple[bool, ...], list[int]] = {}
    for b, wb in enumerate(w):
        patterns.setdefault(tuple(bool(x > 0) for x in wb), []).append(b)
    for positive, rows in patterns.items():
        offsets, values, _, _, _ = _support_matrix(data, np.array(positive))
        lower[rows] = blend_nll(offsets, values, np.ascontiguousarray(w[rows]), outside, 0.0)
    nonneg = np.flatnonzero((w >= 0).all(axis=1))
    if nonneg.size:
        offsets, values, kth, rest, n_support = _support_matrix(data, np.zeros(w.shape[1], dtype=np.bool_))
        support_nll = blend_nll(offsets, values, np.ascontiguousarray(w[nonneg]), outside, 0.0)
        target = values[:, offsets[:-1].astype(np.int64).clip(max=max(values.shape[1] - 1, 0))].astype(np.float64)
        n_tail = np.maximum(data.vocab_size - n_support, 1).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_rest, log_kth = np.log(rest), kth
            for j, b in enumerate(nonneg):
                a = w[b][:, None]
                s = float(w[b].sum())
                target_score = np.where(a > 0, a * target, 0.0).sum(axis=0)
                if s <= 1:
                    log_tail = np.where(a > 0, a * log_rest, 0.0).sum(axis=0) + (1 - s) * np.log(n_tail)
                else:
                    log_tail = np.where(a > 0, a / s * ((s - 1) * log_kth + log_rest), 0.0).sum(axis=0)
                upper[b] = np.logaddexp(support_nll[j], log_tail - target_score)
    upper[:, outside] = 0.0
    return lower, upper
