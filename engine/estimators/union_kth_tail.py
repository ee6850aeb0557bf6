"""Estimator ``union-kth-tail``: the union of the lists, k-th fill, one tail pseudo-token.

Assumptions:
- The support is the union of the blend's models' top-k lists plus the actual token.
- A model's value for a support token missing from its list is its k-th (lowest listed)
  log-probability at that position: an upper bound on the true value.
- Each model's remaining mass, ``1 - sum over the support of exp(value)``, sits on one tail
  pseudo-token whose value is the log of that mass. Where the filled values already account
  for more than all of a model's mass, the tail gets ``TAIL_FLOOR`` instead of zero: a
  weight of either sign must see a finite value.
The tail acts as a single token, so for weights that do not sum to one it misstates how the
blend treats the many tokens it stands for.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from ..candidates import CandidateMatrix, UnionCandidates
from ._csr import offsets_from_counts

NAME = "union-kth-tail"
TAIL_FLOOR = 1e-6
"""Smallest probability mass given to a tail pseudo-token (see the module docstring)."""


@nb.njit(cache=True, parallel=True)
def _union_counts(offsets, rank):
    n = offsets.size - 1
    counts = np.zeros(n, dtype=np.int64)
    for i in nb.prange(n):
        lo, hi = np.int64(offsets[i]), np.int64(offsets[i + 1])
        if hi == lo:
            continue
        counts[i] = 2  # the target and the tail pseudo-token
        for c in range(lo + 1, hi):
            for m in range(rank.shape[0]):
                if rank[m, c] >= 0:
                    counts[i] += 1
                    break
    return counts


@nb.njit(cache=True, parallel=True)
def _fill_union_kth_tail(offsets, lp, rank, new_offsets, values, log_floor):
    n = offsets.size - 1
    n_models = lp.shape[0]
    for i in nb.prange(n):
        lo, hi = np.int64(offsets[i]), np.int64(offsets[i + 1])
        if hi == lo:
            continue
        for m in range(n_models):
            kth = np.inf
            for c in range(lo, hi):
                if rank[m, c] >= 0:
                    kth = min(kth, lp[m, c])
            if kth == np.inf:  # the model reported no list here at all
                kth = -np.inf
            j = np.int64(new_offsets[i])
            mass = 0.0
            for c in range(lo, hi):
                in_support = c == lo
                for r in range(n_models):
                    if rank[r, c] >= 0:
                        in_support = True
                if in_support:
                    v = lp[m, c]
                    if np.isnan(v):
                        v = kth
                    values[m, j] = v
                    mass += math.exp(v)
                    j += 1
            rest = 1.0 - mass
            values[m, j] = math.log(rest) if rest > math.exp(log_floor) else log_floor


def build(data: UnionCandidates) -> CandidateMatrix:
    """Fill the union support with k-th values and append each position's tail pseudo-token.

    Args:
        data: the blend's observed candidates.

    Returns:
        A matrix with one row per model; each run is the target, the rest of the union, and
        the tail pseudo-token last; nothing is outside the support.
    """
    counts = _union_counts(data.offsets, data.rank)
    new_offsets = offsets_from_counts(counts)
    values = np.empty((data.lp.shape[0], int(new_offsets[-1])), dtype=np.float32)
    _fill_union_kth_tail(data.offsets, data.lp, data.rank, new_offsets, values, math.log(TAIL_FLOOR))
    return CandidateMatrix(
        offsets=new_offsets,
        values=values,
        outside=np.zeros(data.n_positions, dtype=np.bool_),
        outside_nll=0.0,
        n_models=data.lp.shape[0],
        estimator=NAME,
    )
