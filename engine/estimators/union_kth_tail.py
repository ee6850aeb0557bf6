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
from ._csr import listed_min, offsets_from_counts, support_members, support_sizes

NAME = "union-kth-tail"
TAIL_FLOOR = 1e-6
"""Smallest probability mass given to a tail pseudo-token (see the module docstring)."""


@nb.njit(cache=True, parallel=True)
def _fill_union_kth_tail(offsets, lp, rank, new_offsets, values, log_floor):
    n = offsets.size - 1
    n_models = lp.shape[0]
    for i in nb.prange(n):
        lo, hi = np.int64(offsets[i]), np.int64(offsets[i + 1])
        if hi == lo:
            continue
        members = support_members(rank, lo, hi)
        out = np.int64(new_offsets[i])
        for m in range(n_models):
            kth = listed_min(lp, rank, m, lo, hi)
            mass = 0.0
            for s in range(members.size):
                v = lp[m, members[s]]
                if np.isnan(v):
                    v = kth
                values[m, out + s] = v
                mass += math.exp(v)
            rest = 1.0 - mass
            values[m, out + members.size] = math.log(rest) if rest > math.exp(log_floor) else log_floor


def run_lengths(data: UnionCandidates) -> np.ndarray:
    """int64 ``(n,)``: each position's support plus its tail pseudo-token (0 for an empty run)."""
    sizes = support_sizes(data.offsets, data.rank)
    return np.where(sizes > 0, sizes + 1, 0)


def build(data: UnionCandidates) -> CandidateMatrix:
    """Fill the union support with k-th values and append each position's tail pseudo-token.

    Args:
        data: the blend's observed candidates.

    Returns:
        A matrix with one row per model; each run is the target, the rest of the union, and
        the tail pseudo-token last; nothing is outside the support.
    """
    new_offsets = offsets_from_counts(run_lengths(data))
    values = np.empty((data.lp.shape[0], int(new_offsets[-1])), dtype=np.float32)
    _fill_union_kth_tail(data.offsets, data.lp, data.rank, new_offsets, values, math.log(TAIL_FLOOR))
    return CandidateMatrix.with_target_inside(new_offsets, values, n_models=data.lp.shape[0], estimator=NAME)
