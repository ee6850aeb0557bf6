"""Estimator ``union-kth-tail``: the union of the lists, k-th fill, one tail pseudo-token.

Assumptions:
- The support is the union of the blend's models' top-k lists plus the actual token.
- A model's value for a support token missing from its list is its k-th (lowest listed)
  log-probability at that position: an upper bound on the true value.
- Each model's remaining mass, ``1 - sum over the support of exp(value)``, sits on one tail
  pseudo-token whose value is the log of that mass. Where the filled values already account
  for more than all of a model's mass, the tail gets ``TAIL_MASS_FLOOR`` instead of zero: a
  weight of either sign must see a finite value.
The tail acts as a single token, so for weights that do not sum to one it misstates how the
blend treats the many tokens it stands for.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from ingest.jit import EXACT_PARALLEL

from ..candidates import CandidateMatrix, UnionCandidates
from ._fill import (
    TAIL_MASS_FLOOR,
    listed_stats,
    offsets_from_counts,
    support_members,
    support_sizes,
    support_slots,
)

NAME = "union-kth-tail"


@nb.njit(**EXACT_PARALLEL)
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
            entries, kth, _, _ = listed_stats(lp, rank, m, lo, hi)
            if entries == 0:
                kth = -np.inf
            mass = 0.0
            for s in range(members.size):
                v = lp[m, members[s]]
                if np.isnan(v):
                    v = kth
                values[m, out + s] = v
                mass += math.exp(v)
            rest = 1.0 - mass
            values[m, out + members.size] = math.log(rest) if rest > math.exp(log_floor) else log_floor


def filled_union(data: UnionCandidates, *, extra_rows: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The union support filled with k-th values, one tail pseudo-token last in each run.

    Args:
        data: the blend's observed candidates.
        extra_rows: zero rows to add below the models' (``spread-tail`` builds on this fill).

    Returns:
        ``(counts, offsets, values)``: run lengths int64 ``(n,)`` (the support plus the tail
        pseudo-token, 0 for an empty run), uint64 offsets ``(n + 1,)``, and float32
        ``(M + extra_rows, C)`` values.
    """
    sizes = support_sizes(data.offsets, data.rank)
    counts = np.where(sizes > 0, sizes + 1, 0)
    offsets = offsets_from_counts(counts)
    n_models = data.lp.shape[0]
    values = np.zeros((n_models + extra_rows, int(offsets[-1])), dtype=np.float32)
    _fill_union_kth_tail(data.offsets, data.lp, data.rank, offsets, values[:n_models], math.log(TAIL_MASS_FLOOR))
    return counts, offsets, values


def build(data: UnionCandidates) -> CandidateMatrix:
    """Fill the union support with k-th values and append each position's tail pseudo-token.

    Args:
        data: the blend's observed candidates.

    Returns:
        A matrix with one row per model; each run is the target, the rest of the union, and
        the tail pseudo-token last; nothing is outside the support.
    """
    _, offsets, values = filled_union(data)
    return CandidateMatrix.with_target_inside(offsets, values, n_models=data.lp.shape[0], estimator=NAME)


slots = support_slots
"""Generation: the run is the support in run order, then the tail pseudo-token."""
