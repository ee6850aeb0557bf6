"""Calibration samples: deeper top-K lists for some positions, and what estimators learn from them.

A calibration sample holds, for ``n`` positions of a dataset and each blend model, the model's
top-K list (K in the hundreds or thousands, far deeper than the k the dataset stores) and its
exact log-probability of the actual token. ``data/grimm/deep/`` is one (K = 1000, n = 2000).

- ``CalibrationSample.union(k)`` truncates every list to its first ``k`` entries and lays the
  positions out as ``UnionCandidates``, exactly as the store would for top-k data, so any
  estimator can run at k and at the full depth K.
- ``deep_perplexity`` / ``relative_errors``: an estimator's blend perplexity over the sample at
  depth k, and its error against a reference at the full depth (``bench/estimators.py``).
- ``fit_missing_drops``: the ``calibrated-tail`` estimator's parameters (how far below the k-th
  value a model's missing values lie), fitted on a subset of positions (cross-validate: fit on
  one half, measure on the other).

Natural logs throughout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numba as nb
import numpy as np

from .candidates import UnionCandidates
from .kernels import blend_nll

__all__ = [
    "CalibrationSample", "load_deep_sample", "deep_perplexity", "relative_errors", "fit_missing_drops",
    "NODE_MASSES", "PAIR_SPLITS",
]


@dataclass(frozen=True)
class CalibrationSample:
    """Deep top-K lists of M models at n positions (models in blend order: big, tuned, untuned).

    Attributes:
        ids: int64 ``(M, n, K)``; token ids in the tokenizer's numbering, each row sorted by
            log-probability, descending.
        lp: float32 ``(M, n, K)``; the models' natural-log probabilities of ``ids``.
        target: int64 ``(n,)``; the actual token's id.
        target_lp: float32 ``(M, n)``; each model's exact log-probability of the actual token.
        vocab_size: the tokenizer's vocabulary size V.
    """

    ids: np.ndarray
    lp: np.ndarray
    target: np.ndarray
    target_lp: np.ndarray
    vocab_size: int

    @property
    def n_positions(self) -> int:
        return int(self.target.size)

    @property
    def depth(self) -> int:
        return int(self.ids.shape[2])

    def subset(self, rows: np.ndarray, depth: int | None = None) -> "CalibrationSample":
        """The sample restricted to ``rows`` (indices into positions) and the first ``depth``
        entries of each list."""
        d = self.depth if depth is None else depth
        return CalibrationSample(
            ids=np.ascontiguousarray(self.ids[:, rows, :d]),
            lp=np.ascontiguousarray(self.lp[:, rows, :d]),
            target=self.target[rows],
            target_lp=np.ascontiguousarray(self.target_lp[:, rows]),
            vocab_size=self.vocab_size,
        )

    def union(self, k: int) -> UnionCandidates:
        """The positions as top-``k`` data: target first, then the union of the models' first
        ``k`` entries in first-seen order (model by model), values NaN where a model has none."""
        if not 1 <= k <= self.depth:
            raise ValueError(f"k must be in 1..{self.depth}, got {k}")
        counts = _union_counts(self.ids, self.target, k, self.vocab_size)
        offsets = np.zeros(counts.size + 1, dtype=np.uint64)
        np.cumsum(counts, out=offsets[1:])
        n_models = self.ids.shape[0]
        lp = np.empty((n_models, int(offsets[-1])), dtype=np.float32)
        rank = np.empty((n_models, int(offsets[-1])), dtype=np.int16)
        _union_fill(self.ids, self.lp, self.target, self.target_lp, k, self.vocab_size, offsets, lp, rank)
        return UnionCandidates(
            offsets=offsets, lp=lp, rank=rank, k=np.full(n_models, k, dtype=np.int64), vocab_size=self.vocab_size
        )


def load_deep_sample(
    folder: str | Path, files: Sequence[str], target: np.ndarray, *, vocab_size: int
) -> CalibrationSample:
    """Read ``data/grimm/deep``-style ``.npz`` files (``ids``, ``lp``, ``target_lp``), one per
    model in blend order; ``target``: the actual token ids of the sample's positions."""
    parts = [np.load(Path(folder) / f) for f in files]
    return CalibrationSample(
        ids=np.stack([p["ids"].astype(np.int64) for p in parts]),
        lp=np.stack([p["lp"].astype(np.float32) for p in parts]),
        target=np.asarray(target, dtype=np.int64),
        target_lp=np.stack([p["target_lp"].astype(np.float32) for p in parts]),
        vocab_size=vocab_size,
    )


@nb.njit(cache=True, parallel=True)
def _union_counts(ids, target, k, n_vocab):
    n_models, n, _ = ids.shape
    counts = np.zeros(n, dtype=np.int64)
    for i in nb.prange(n):
        seen = np.zeros(n_vocab, dtype=np.bool_)
        seen[target[i]] = True
        c = 1
        for m in range(n_models):
            for j in range(k):
                t = ids[m, i, j]
                if not seen[t]:
                    seen[t] = True
                    c += 1
        counts[i] = c
    return counts


@nb.njit(cache=True, parallel=True)
def _union_fill(ids, lps, target, target_lp, k, n_vocab, offsets, lp, rank):
    n_models, n, _ = ids.shape
    for i in nb.prange(n):
        slot = np.full(n_vocab, -1, dtype=np.int64)
        lo = np.int64(offsets[i])
        slot[target[i]] = 0
        c = 1
        for m in range(n_models):
            for j in range(k):
                t = ids[m, i, j]
                if slot[t] < 0:
                    slot[t] = c
                    c += 1
        for m in range(n_models):
            for q in range(c):
                lp[m, lo + q] = np.nan
                rank[m, lo + q] = -1
            for j in range(k):
                s = lo + slot[ids[m, i, j]]
                lp[m, s] = lps[m, i, j]
                rank[m, s] = j
            lp[m, lo] = target_lp[m, i]  # the exact value, listed or not


def deep_perplexity(build, data: UnionCandidates, weights: np.ndarray) -> np.ndarray:
    """float64 ``(B,)``: perplexity over all positions of ``data`` for each weight vector
    ``(B, M)``, with the candidate matrix that ``build`` (an estimator's build) makes."""
    m = build(data)
    nll = blend_nll(m.offsets, m.values, m.row_weights(weights), m.outside, m.outside_nll)
    return np.exp(nll.mean(axis=1))


def relative_errors(estimate: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``|estimate / reference - 1|`` per weight vector."""
    return np.abs(estimate / reference - 1.0)


NODE_MASSES = (0.6, 0.3, 0.1)
"""Probabilities of the quantile bins a fitted drop distribution is summarized by (one node
each, at the bin's mean drop); the thin last bin keeps the deep tail that negative weights
reward."""

PAIR_SPLITS = 2
"""A token missing from several lists: each quantile bin (of the summed drops) is split again
into this many equal bins by the difference of the first two models' drops, which is what a
blend with opposite-signed weights sees."""


@nb.njit(cache=True)
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
):
    """Fit ``calibrated-tail``'s missing-value distributions on a calibration sample at list length k.

    For every union token of the sample truncated to k that some model's first k entries miss,
    the drops ``D_m = (m's k-th value) - (m's deep value)`` of the missing models (the last deep
    value where the token lies past the sample's depth) are collected per set of listing
    models and summarized by weighted nodes: quantile bins of probability ``masses`` of the
    summed drops, each split into ``splits`` bins by the difference of the first two missing
    models' drops when two or more are missing; a node is its bin's mean drop vector.

    Returns:
        ``engine.estimators.calibrated_tail.MissingDrops``.
    """
    from .estimators.calibrated_tail import MissingDrops

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
