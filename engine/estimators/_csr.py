"""CSR helpers shared by the estimators' fill routines (numba, natural logs).

Every estimator that fills the union of the lists works on a position's *support*: the target
(slot 0 of its run) and every candidate some blend model lists.
"""

from __future__ import annotations

import numba as nb
import numpy as np


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


@nb.njit(cache=True)
def listed_mask(rank, c):
    """Bit ``m`` set where model ``m`` lists candidate ``c`` (rank int16 ``(M, C)``)."""
    mask = 0
    for m in range(rank.shape[0]):
        if rank[m, c] >= 0:
            mask |= 1 << m
    return mask


@nb.njit(cache=True)
def support_members(rank, lo, hi):
    """int64 ``(s,)``: the support of the run ``lo:hi``, target first, in run order."""
    members = np.empty(hi - lo, dtype=np.int64)
    n = 0
    for c in range(lo, hi):
        if c == lo or listed_mask(rank, c) != 0:
            members[n] = c
            n += 1
    return members[:n]


@nb.njit(cache=True)
def listed_min(lp, rank, m, lo, hi):
    """Model ``m``'s k-th (lowest listed) value in the run ``lo:hi``; -inf where it lists none."""
    kth = np.inf
    for c in range(lo, hi):
        if rank[m, c] >= 0:
            kth = min(kth, np.float64(lp[m, c]))
    return kth if kth < np.inf else -np.inf


@nb.njit(cache=True, parallel=True)
def support_sizes(offsets, rank):
    """int64 ``(n,)``: each position's support size (0 for an empty run)."""
    n = offsets.size - 1
    sizes = np.zeros(n, dtype=np.int64)
    for i in nb.prange(n):
        lo, hi = np.int64(offsets[i]), np.int64(offsets[i + 1])
        if hi > lo:
            sizes[i] = support_members(rank, lo, hi).size
    return sizes
