"""Estimator ``prototype``: the original prototype's treatment of top-k data, reproduced exactly.

Assumptions (the prototype's, not approxft's recommendation):
- The support is the big model's top-k list; every other token has probability zero.
- Values come from top-k lists only (never from the exact target log-probabilities).
- A small model's value for a support token missing from its own list is its minimum over its
  values that lie inside the support; where none of its list lies inside the support, the
  minimum of its own list (the prototype produced NaN there).
- The actual token's log-probability is -30 where it is outside the support (NLL 30 nats),
  whatever the weights.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from ingest.jit import EXACT_PARALLEL

from ..candidates import CandidateMatrix, UnionCandidates
from ._fill import offsets_from_counts

NAME = "prototype"
OUTSIDE_LP = -30.0
"""The prototype's log-probability for an actual token outside the big model's top-k."""


@nb.njit(**EXACT_PARALLEL)
def _support_counts(offsets, rank_big):
    n = offsets.size - 1
    counts = np.zeros(n, dtype=np.int64)
    for i in nb.prange(n):
        for c in range(np.int64(offsets[i]), np.int64(offsets[i + 1])):
            if rank_big[c] >= 0:
                counts[i] += 1
    return counts


@nb.njit(**EXACT_PARALLEL)
def _fill_prototype(offsets, lp, rank, new_offsets, values, outside):
    n = offsets.size - 1
    n_models = lp.shape[0]
    for i in nb.prange(n):
        lo, hi = np.int64(offsets[i]), np.int64(offsets[i + 1])
        outside[i] = rank[0, lo] < 0
        for m in range(n_models):
            fill = np.inf
            if m > 0:
                for c in range(lo, hi):
                    if rank[0, c] >= 0 and rank[m, c] >= 0:
                        fill = min(fill, lp[m, c])
                if fill == np.inf:
                    for c in range(lo, hi):
                        if rank[m, c] >= 0:
                            fill = min(fill, lp[m, c])
                if fill == np.inf:  # the model reported no list here at all
                    fill = -np.inf
            j = np.int64(new_offsets[i])
            for c in range(lo, hi):
                if rank[0, c] >= 0:
                    values[m, j] = lp[m, c] if rank[m, c] >= 0 else fill
                    j += 1


def build(data: UnionCandidates) -> CandidateMatrix:
    """Fill the big model's top-k support the prototype's way.

    Args:
        data: the blend's observed candidates; row 0 must be the big model.

    Returns:
        A matrix with one row per model, runs restricted to the big model's list (so the target
        is slot 0 exactly where it is in that list), ``outside_nll = 30``.
    """
    counts = _support_counts(data.offsets, data.rank[0])
    new_offsets = offsets_from_counts(counts)
    values = np.empty((data.lp.shape[0], int(new_offsets[-1])), dtype=np.float32)
    outside = np.empty(data.n_positions, dtype=np.bool_)
    _fill_prototype(data.offsets, data.lp, data.rank, new_offsets, values, outside)
    return CandidateMatrix(
        offsets=new_offsets,
        values=values,
        outside=outside,
        outside_nll=-OUTSIDE_LP,
        n_models=data.lp.shape[0],
        estimator=NAME,
    )


def slots(data: UnionCandidates) -> list[list[int]]:
    """Generation's slot map (``Estimator.slots``): the run is the big model's list in run order;
    every other token has none (probability zero)."""
    out: list[list[int]] = [[] for _ in range(data.lp.shape[1])]
    support = [c for c in range(data.lp.shape[1]) if data.rank[0, c] >= 0]
    for s, c in enumerate(support):
        out[c] = [s]
    return out
