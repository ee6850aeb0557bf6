"""Fitting ``calibrated-tail`` on a calibration sample: how far below the k-th value a model's
missing values lie (``fit_missing_drops``), per set of models that list the token.

Fit on a subset of positions and measure on the rest (``bench.estimators`` cross-validates over
two folds). Natural logs throughout.
"""

from __future__ import annotations

import math
from typing import Sequence

import numba as nb
import numpy as np

from ingest.jit import EXACT

from ..candidates import MissingDrops
from .sample import CalibrationSample

__all__ = ["fit_missing_drops", "NODE_MASSES", "PAIR_SPLITS"]


NODE_MASSES = (0.6, 0.3, 0.1)
"""Probabilities of the quantile bins a fitted drop distribution is summarized by (one node
each, at the bin's mean drop); the thin last bin keeps the deep tail that negative weights
reward."""

PAIR_SPLITS = 2
"""A token missing from several lists: each quantile bin (of the summed drops) is split again
into this many equal bins by the difference of the first two models' drops, which is what a
blend with opposite-signed weights sees."""


@nb.njit(**EXACT)
def _drop_samples(ids, lps, target, k, n_vocab):
    """Listed-by mask ``(N,)`` and per-model drops ``(N, M)`` (0 where listed) for every union
    token but the target that some model's first k entries miss; a value past the sample's
    depth counts as the model's last deep value."""
    n_models, n, depth = ids.shape
    masks = []
    drops = []
    deep_rank = np.full((n_models, n_vocab), -1, dtype=np.int32)
    for i in range(n):
        for m in range(n_models):
            for j in range(depth):
                deep_rank[m, ids[m, i, j]] = j
        for o in range(n_models):
            for j in range(k):
                t = ids[o, i, j]
                if t == target[i]:
                    continue
                first = True  # count each token once: at its first listing model
                for o2 in range(o):
                    if 0 <= deep_rank[o2, t] < k:
                        first = False
                if not first:
                    continue
                mask = 0
                for r in range(n_models):
                    if 0 <= deep_rank[r, t] < k:
                        mask |= 1 << r
                if mask == (1 << n_models) - 1:
                    continue
                d = np.zeros(n_models)
                for m in range(n_models):
                    rm = deep_rank[m, t]
                    if 0 <= rm < k:
                        continue
                    v = lps[m, i, rm] if rm >= 0 else lps[m, i, depth - 1]
                    d[m] = max(0.0, lps[m, i, k - 1] - v)
                masks.append(mask)
                drops.append(d)
        for m in range(n_models):
            for j in range(depth):
                deep_rank[m, ids[m, i, j]] = -1
    out = np.zeros((len(drops), n_models))
    for q in range(len(drops)):
        out[q] = drops[q]
    return np.array(masks, dtype=np.int64), out


def _quantile_bins(order: np.ndarray, masses: Sequence[float]) -> list[np.ndarray]:
    """Split the indices ``order`` (sorted by some key) into consecutive bins of ``masses``."""
    edges = np.round(np.concatenate([[0.0], np.cumsum(masses)]) / sum(masses) * order.size).astype(int)
    return [order[a:b] for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


def fit_missing_drops(
    sample: CalibrationSample, k: int, *, masses: Sequence[float] = NODE_MASSES, splits: int = PAIR_SPLITS
) -> MissingDrops:
    """Fit ``calibrated-tail``'s missing-value distributions on a calibration sample at list length k.

    For every union token of the sample truncated to k that some model's first k entries miss,
    the drops ``D_m = (m's k-th value) - (m's deep value)`` of the missing models (the last deep
    value where the token lies past the sample's depth) are collected per set of listing
    models and summarized by weighted nodes: quantile bins of probability ``masses`` of the
    summed drops, each split into ``splits`` bins by the difference of the first two missing
    models' drops when two or more are missing; a node is its bin's mean drop vector.

    Returns:
        The fit, ``MissingDrops``.
    """
    n_models = sample.ids.shape[0]
    mask_of, d = _drop_samples(sample.ids, sample.lp, sample.target, k, sample.vocab_size)
    q_max = len(masses) * splits
    drop = np.zeros((1 << n_models, q_max, n_models))
    log_weight = np.full((1 << n_models, q_max), -np.inf)
    for mask in range(1, (1 << n_models) - 1):
        rows = np.flatnonzero(mask_of == mask)
        missing = [m for m in range(n_models) if not mask >> m & 1]
        if rows.size == 0:  # never seen: the k-th fill
            log_weight[mask, 0] = 0.0
            continue
        bins = _quantile_bins(rows[np.argsort(d[rows][:, missing].sum(axis=1), kind="stable")], masses)
        if len(missing) >= 2:
            bins = [
                part
                for b in bins
                for part in _quantile_bins(b[np.argsort(d[b, missing[0]] - d[b, missing[1]], kind="stable")],
                                           [1.0] * splits)
            ]
        for q, b in enumerate(bins):
            drop[mask, q] = d[b].mean(axis=0)
            log_weight[mask, q] = math.log(b.size / rows.size)
    return MissingDrops(k=k, drop=drop, log_weight=log_weight)
