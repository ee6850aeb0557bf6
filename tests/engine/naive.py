"""Slow, obviously correct twins of the kernels (``engine.kernels``): the references the tests
compare them against.

All logs are natural logs; NLLs are in nats.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "naive_blend_nll",
    "naive_keep",
    "naive_masked_nll",
    "naive_blend_nll_sums",
    "naive_nll_grad_hess",
]


def naive_blend_nll(
    offsets: np.ndarray,
    values: np.ndarray,
    weights: np.ndarray,
    outside: np.ndarray,
    outside_nll: float,
) -> np.ndarray:
    """Twin of ``engine.kernels.blend_nll``: float64 ``(B, n)``, one position at a time.

    Literal extended-real semantics: ``s_b(c) = sum_r w[b, r] * values[r, c]`` with a zero
    weight contributing 0 even against -inf, summed in row order with IEEE rules
    (-inf + inf = NaN); ``NLL = logaddexp.reduce(s_b) - s_b(slot 0)`` (so +inf if any score is
    +inf, -inf - -inf = NaN when every score is -inf, NaN if any score is NaN).
    """
    n = len(offsets) - 1
    out = np.empty((weights.shape[0], n), dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        for b, w in enumerate(np.asarray(weights, dtype=np.float64)):
            for i in range(n):
                if outside[i]:
                    out[b, i] = outside_nll
                    continue
                run = values[:, int(offsets[i]) : int(offsets[i + 1])].astype(np.float64)
                scores = np.zeros(run.shape[1])
                for r in range(run.shape[0]):
                    if w[r] != 0.0:
                        scores = scores + w[r] * run[r]
                out[b, i] = np.logaddexp.reduce(scores) - scores[0]
    return out


def naive_blend_nll_sums(offsets, values, weights, outside, outside_nll, group, n_groups) -> np.ndarray:
    """Twin of ``engine.kernels.blend_nll_sums``: float64 ``(n_groups, B)``; group -1 skipped."""
    keep = np.flatnonzero(np.asarray(group) >= 0)
    out = np.zeros((n_groups, weights.shape[0]), dtype=np.float64)
    for i in keep:
        nll = naive_blend_nll(offsets[i : i + 2], values, weights, outside[i : i + 1], outside_nll)
        out[group[i]] += nll[:, 0]
    return out


def naive_nll_grad_hess(offsets, values, w, outside, outside_nll, group):
    """Total NLL, gradient (R,) and Hessian (R, R) in the weights, position by position:
    softmax p over the run, gradient E_p[v] - v(target), Hessian Cov_p(v)."""
    n_rows = values.shape[0]
    total, grad, hess = 0.0, np.zeros(n_rows), np.zeros((n_rows, n_rows))
    for i in range(offsets.size - 1):
        if group[i] < 0:
            continue
        if outside[i]:
            total += outside_nll
            continue
        v = values[:, int(offsets[i]) : int(offsets[i + 1])].astype(np.float64)  # (R, run)
        s = w @ v
        log_z = np.logaddexp.reduce(s)
        p = np.exp(s - log_z)
        mean = v @ p
        total += log_z - s[0]
        grad += mean - v[:, 0]
        hess += (v * p) @ v.T - np.outer(mean, mean)
    return total, grad, hess


def naive_keep(values_run: np.ndarray, row: int, n_models: int, rule: str, value: float) -> np.ndarray:
    """Twin of ``engine.masks.keep_slots`` for one run ``values_run`` float32 ``(R, L)``: bool ``(L,)``.

    ``relative``: ``v >= max v + log value`` on row ``row``. ``top-p``: slots by descending
    value (ties in run order), each slot's mass ``exp(v + fixed rows)``; a slot is kept while the
    mass before it is below ``value`` times the run's mass (every slot for ``value = 1``).
    """
    v = values_run[row].astype(np.float64)
    if v.max() == -np.inf or (rule == "top-p" and value >= 1.0):
        return np.ones(v.size, dtype=bool)
    if rule == "relative":
        return v >= v.max() + np.log(value)
    mass = np.exp(v + values_run[n_models:].astype(np.float64).sum(axis=0) - v.max())
    keep = np.zeros(v.size, dtype=bool)
    before = 0.0
    for j in sorted(range(v.size), key=lambda j: (-v[j], j)):
        keep[j] = before < value * mass.sum()
        before += mass[j]
    return keep


def naive_masked_nll(offsets, values, weights, outside, outside_nll, row, n_models, rule, value, floor=None):
    """Per-position NLL float64 ``(B, n)`` of a masked blend, from the unmasked matrix: dropped
    slots get probability 0, so a dropped target costs ``+inf``, or ``floor`` where given."""
    n = len(offsets) - 1
    out = np.empty((weights.shape[0], n))
    for i in range(n):
        lo, hi = int(offsets[i]), int(offsets[i + 1])
        if outside[i]:
            out[:, i] = outside_nll
            continue
        keep = naive_keep(values[:, lo:hi], row, n_models, rule, value)
        if not keep[0]:
            out[:, i] = np.inf if floor is None else floor
            continue
        run = values[:, lo:hi][:, keep]
        out[:, i] = naive_blend_nll(np.array([0, run.shape[1]], dtype=np.uint64), run, weights,
                                    np.zeros(1, dtype=bool), 0.0)[:, 0]
    return out
