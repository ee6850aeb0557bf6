"""What the estimators' fill routines share (numba, natural logs): a run's support, each model's
listed statistics, the power-law tail past a list, and the slot map generation reads.

Every estimator that fills the union of the lists works on a position's *support*: the target
(slot 0 of its run) and every candidate some blend model lists, in run order.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from ingest.jit import EXACT, EXACT_PARALLEL

from ..candidates import UnionCandidates

TAIL_MASS_FLOOR = 1e-6
"""Smallest probability mass left to a model's unlisted tokens, where its list (with the filled
values) already claims all of it: a weight of either sign must see a finite value."""

BIN_RATIO = 4.0
"""Geometric growth of the power-law tail's bins (slots 1..3, 4..15, 16..63, ...)."""


def offsets_from_counts(counts: np.ndarray) -> np.ndarray:
    """Run offsets from run lengths.

    Args:
        counts: integer ``(n,)``, the length of each position's run.

    Returns:
        uint64 ``(n + 1,)``: ``[0, cumsum(counts)...]``.
    """
    offsets = np.zeros(counts.size + 1, dtype=np.uint64)
    np.cumsum(counts, out=offsets[1:])
    return offsets


@nb.njit(**EXACT)
def listed_mask(rank, c):
    """Bit ``m`` set where model ``m`` lists candidate ``c`` (rank int16 ``(M, C)``)."""
    mask = 0
    for m in range(rank.shape[0]):
        if rank[m, c] >= 0:
            mask |= 1 << m
    return mask


@nb.njit(**EXACT)
def support_members(rank, lo, hi):
    """int64 ``(s,)``: the support of the run ``lo:hi``, target first, in run order."""
    members = np.empty(hi - lo, dtype=np.int64)
    n = 0
    for c in range(lo, hi):
        if c == lo or listed_mask(rank, c) != 0:
            members[n] = c
            n += 1
    return members[:n]


@nb.njit(**EXACT_PARALLEL)
def support_sizes(offsets, rank):
    """int64 ``(n,)``: each position's support size (0 for an empty run)."""
    n = offsets.size - 1
    sizes = np.zeros(n, dtype=np.int64)
    for i in nb.prange(n):
        lo, hi = np.int64(offsets[i]), np.int64(offsets[i + 1])
        if hi > lo:
            sizes[i] = support_members(rank, lo, hi).size
    return sizes


@nb.njit(**EXACT)
def listed_stats(lp, rank, m, lo, hi):
    """Model ``m``'s list in the run ``lo:hi`` (lp float32 and rank int16 ``(M, C)``).

    Returns:
        ``(entries, kth, listed_mass, target_mass)``: how many candidates it lists, its k-th
        (lowest listed) value (+inf where it lists none), the probability its list holds, and
        the target's exact probability where the target is not in the list (else 0). Masses are
        float64 sums (numba's exp of a float32 is float32, too coarse for ``1 - listed mass``).
    """
    entries = 0
    kth = np.inf
    listed_mass = 0.0
    for c in range(lo, hi):
        if rank[m, c] >= 0:
            entries += 1
            kth = min(kth, np.float64(lp[m, c]))
            listed_mass += math.exp(np.float64(lp[m, c]))
    target_mass = 0.0
    if rank[m, lo] < 0 and not np.isnan(lp[m, lo]):
        target_mass = math.exp(np.float64(lp[m, lo]))
    return entries, kth, listed_mass, target_mass


@nb.njit(**EXACT)
def bin_edges(n_tail, ratio):
    """Slot edges ``1 = e_0 < e_1 < ... < e_B = n_tail + 1`` growing by ``ratio`` (float64)."""
    edges = [1.0]
    while edges[-1] <= n_tail:
        nxt = max(math.floor(edges[-1] * ratio), edges[-1] + 1.0)
        edges.append(min(nxt, n_tail + 1.0))
    return np.array(edges)


@nb.njit(**EXACT)
def power_sum(k, beta, a, b):
    """Integral of (x/k)^-beta over [a, b]: the mass shape of ranks a..b (continuous)."""
    if abs(beta - 1.0) < 1e-9:
        return k * math.log(b / a)
    e = 1.0 - beta
    return k**beta * (b**e - a**e) / e


@nb.njit(**EXACT)
def fit_beta(k, n_vocab, p_k, rest):
    """The exponent that gives ranks k+1..V the mass ``rest`` (0 where even a flat tail is too
    light, 64 where even that steep a tail is too heavy): the root of the log of
    ``p_k * power_sum(k, beta, k + 0.5, V + 0.5) / rest``, decreasing in beta, by Newton's method
    kept inside a bracket that shrinks on every step (bisecting where a step would leave it),
    to the last bit or two of float64 in about 5 steps; 60 bisections of [0, 64] found the same
    root, within 1e-15 absolute, at 7 times the cost (the fill's largest single cost)."""
    lo_x, hi_x = k + 0.5, n_vocab + 0.5
    if p_k * power_sum(k, 0.0, lo_x, hi_x) <= rest:
        return 0.0
    target = math.log(rest / p_k)
    low, high = 0.0, 64.0
    if math.log(power_sum(k, high, lo_x, hi_x)) >= target:
        return high
    beta = 1.0
    for _ in range(200):
        g = math.log(power_sum(k, beta, lo_x, hi_x)) - target
        if g == 0.0:
            return beta
        if g > 0.0:
            low = beta
        else:
            high = beta
        nxt = beta - g / _log_power_sum_slope(k, beta, lo_x, hi_x)
        if not low < nxt < high:
            nxt = 0.5 * (low + high)
        tol = 2e-16 * max(1.0, abs(beta))
        if abs(nxt - beta) <= tol or high - low <= tol:
            return nxt
        beta = nxt
    return beta


@nb.njit(**EXACT)
def _log_power_sum_slope(k, beta, a, b):
    """d/dbeta of log power_sum(k, beta, a, b): minus the mean of log(x/k) under the weight
    (x/k)^-beta on [a, b] (closed form; its first-order series where beta is within 1e-6 of 1)."""
    la, lb = math.log(a / k), math.log(b / k)
    e = 1.0 - beta
    if abs(e) < 1e-6:
        return -0.5 * (lb * lb - la * la) / (lb - la)
    ea, eb = math.exp(e * la), math.exp(e * lb)
    moment = eb * (lb / e - 1.0 / (e * e)) - ea * (la / e - 1.0 / (e * e))
    return -moment / ((eb - ea) / e)


def support_slots(data: UnionCandidates) -> list[list[int]]:
    """The generation slot map of an estimator whose run is the support in run order, one slot
    per token (``Estimator.slots``): for each candidate of a one-position ``data``, the slots
    that hold it; candidates outside the support hold none."""
    listed = (data.rank >= 0).any(axis=0)
    support = [c for c in range(data.lp.shape[1]) if c == 0 or listed[c]]
    slots: list[list[int]] = [[] for _ in range(data.lp.shape[1])]
    for s, c in enumerate(support):
        slots[c] = [s]
    return slots
