"""Estimator ``spread-tail``: union-kth-tail with its tail mass spread evenly over the unlisted tokens.

Assumptions:
- The support, the k-th fill of missing values and each model's remaining mass are those of
  ``union-kth-tail`` (the remaining mass floored at ``TAIL_MASS_FLOOR``).
- That remaining mass is spread evenly over the ``V - |support|`` tokens outside the support
  (V: the tokenizer's vocabulary size), and all models spread it over the same tokens. The
  tail is one pseudo-token of value ``log(rest / (V - |support|))`` with that many tokens'
  multiplicity (a fixed row of weight 1), so a blend whose weights do not sum to one sees the
  many small tail tokens instead of one token holding all the mass. For weights summing to
  one it equals ``union-kth-tail``.
"""

from __future__ import annotations

import numpy as np

from ..candidates import CandidateMatrix, UnionCandidates
from ._fill import support_slots
from .union_kth_tail import filled_union

NAME = "spread-tail"


def build(data: UnionCandidates) -> CandidateMatrix:
    """The ``union-kth-tail`` matrix with its tail pseudo-token spread over ``V - |support|`` tokens.

    Args:
        data: the blend's observed candidates; ``data.vocab_size`` must exceed every support.

    Returns:
        A matrix with one row per model plus a log-multiplicity row (weight 1), 0 everywhere
        but at the tail pseudo-token (last in each run).
    """
    counts, new_offsets, values = filled_union(data, extra_rows=1)
    n_models = data.lp.shape[0]
    has_run = counts > 0
    tail = new_offsets[1:][has_run].astype(np.int64) - 1
    n_tail = data.vocab_size - (counts[has_run] - 1)
    if (n_tail < 1).any():
        raise ValueError(f"vocab_size {data.vocab_size} does not exceed the support at every position")
    log_n = np.log(n_tail.astype(np.float64))
    values[:n_models, tail] = (values[:n_models, tail] - log_n).astype(np.float32)
    values[n_models, tail] = log_n.astype(np.float32)
    return CandidateMatrix.with_target_inside(new_offsets, values, n_models=n_models, estimator=NAME)


slots = support_slots
"""Generation: the run is the support in run order, then the spread tail pseudo-token."""
