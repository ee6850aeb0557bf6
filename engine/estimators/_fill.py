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
def support_into(rank, lo, hi, members):
    """Write the support of the run ``lo:hi`` (target first, in run order) into ``members``
    (int64, ``>= hi - lo``); return its size."""
    n = 0
    for c in range(lo, hi):
        if c == lo or listed_mask(rank, c) != 0:
            members[n] = c
            n += 1
    return n


@nb.njit(**EXACT)
def support_members(rank, lo, hi):
    """int64 ``(s,)``: the support of the run ``lo:hi``, target first, in run order."""
    members = np.empty(hi - lo, dtype=np.int64)
    return members[:support_into(rank, lo, hi, members)]


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
def power_sums(k, beta, x, n, out):
    """``out[j] = power_sum(k, beta, x[j], x[j + 1])`` for ``j < n``: the masses of ``n``
    adjacent intervals (edges ``x`` float64 ``(>= n + 1,)``, ``out`` float64 ``(>= n,)``), bit for
    bit ``power_sum``'s, each edge's power taken once instead of twice."""
    if abs(beta - 1.0) < 1e-9:
        for j in range(n):
            out[j] = power_sum(k, beta, x[j], x[j + 1])
        return
    e = 1.0 - beta
    scale = k**beta
    low = x[0] ** e
    for j in range(n):
        high = x[j + 1] ** e
        out[j] = scale * (high - low) / e
        low = high


@nb.njit(**EXACT)
def tail_edges(geometric, n_tail, edges):
    """Write ``bin_edges(n_tail, ratio)`` into ``edges`` (float64 ``(>= geometric.size + 1,)``)
    from ``geometric = bin_edges(V, ratio)`` for a vocabulary of ``V >= n_tail`` (its edges are
    the same up to ``n_tail``, then the tail's end); return how many edges it has. No
    allocation: every run calls it."""
    n = 0
    while n < geometric.size and geometric[n] <= n_tail:
        edges[n] = geometric[n]
        n += 1
    edges[n] = n_tail + 1.0
    return n + 1


@nb.njit(**EXACT)
def log_power_sum(log_k, beta, log_a, log_b):
    """``(log(power_sum(k, beta, a, b)), its derivative in beta)`` from the logs of ``k``, ``a``
    and ``b``: with ``e = 1 - beta`` and ``d = log(b / a)``, ``log k^beta (b^e - a^e) / e =
    beta log k + e log a + log(expm1(e d) / e)``, whose slope is ``log(k / a) - d e^(e d) /
    expm1(e d) + 1 / e`` (a series where ``e d`` is small: the two last terms cancel there)."""
    e = 1.0 - beta
    d = log_b - log_a
    t = e * d
    grown = math.expm1(t)
    if e == 0.0:
        value = log_k + math.log(d)
    else:
        value = beta * log_k + e * log_a + math.log(grown / e)
    if abs(t) < 1e-5:
        slope = log_k - log_a - (d / 2.0 + e * d * d / 12.0)
    else:
        slope = log_k - log_a - (d * (grown + 1.0) / grown - 1.0 / e)
    return value, slope


_BETA_MAX = 64.0
"""The steepest tail exponent ``fit_beta`` returns (a list whose k-th value leaves almost no
mass for the tail)."""


@nb.njit(**EXACT)
def fit_beta(k, n_vocab, p_k, rest):
    """The exponent that gives ranks k+1..V the mass ``rest``: the root in [0, ``_BETA_MAX``] of
    the log tail mass (which falls as the exponent grows), by Newton's method kept inside a
    shrinking bracket (a bisection step where Newton's would leave it), to a few units in the
    last place: about 4 steps, against 60 bisections. It starts where the mass of a steep tail,
    about ``p_k k / (beta - 1)``, is ``rest``. 0 where even a flat tail is too light,
    ``_BETA_MAX`` where even that one is too heavy."""
    log_k, log_a, log_b = math.log(k), math.log(k + 0.5), math.log(n_vocab + 0.5)
    target = math.log(rest) - math.log(p_k) if p_k > 0 else np.inf
    lo, hi = 0.0, _BETA_MAX
    if not log_power_sum(log_k, lo, log_a, log_b)[0] > target:
        return lo
    if log_power_sum(log_k, hi, log_a, log_b)[0] >= target:
        return hi
    x = 1.0 + k * math.exp(min(-target, 50.0))
    if not lo < x < hi:
        x = 0.5 * (lo + hi)
    for _ in range(200):
        value, slope = log_power_sum(log_k, x, log_a, log_b)
        f = value - target
        if f > 0:
            lo = x
        elif f < 0:
            hi = x
        else:
            return x
        step = f / slope if slope < 0 else 0.0
        nxt = x - step
        if step == 0.0 or not lo < nxt < hi:
            nxt = 0.5 * (lo + hi)
        if abs(nxt - x) <= 2e-16 * x or hi - lo <= 4e-16 * hi:
            return nxt
        x = nxt
    return x


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
