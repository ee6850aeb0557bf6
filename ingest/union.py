"""The union candidate layout (CSR): per scored position, the target, then every model's top-k
ids, each once (``Candidates``). Built once at ingest for the store, and for deep samples at any
list length (``engine.calibration``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numba import njit

from ingest.jit import EXACT
from ingest.store import Candidates


def union_candidates(
    target: np.ndarray,
    target_lp: np.ndarray,
    topk_ids: Sequence[np.ndarray],
    topk_lp: Sequence[np.ndarray],
    *,
    n_vocab: int,
) -> Candidates:
    """Build the union layout (see ``Candidates``).

    target int32 (n,); target_lp float32 (M, n) exact target log-probs (NaN = not observed);
    topk_ids[m] int32 (n, k_m) ids by rank, -1 = empty slot; topk_lp[m] float32 (n, k_m);
    every id < n_vocab.
    """
    n_models = len(topk_ids)
    target = np.ascontiguousarray(target, dtype=np.int32)
    if target_lp.shape != (n_models, target.size) or len(topk_lp) != n_models:
        raise ValueError("target_lp must be (M, n) with one top-k table per model")
    for ids, lp in zip(topk_ids, topk_lp, strict=True):
        if ids.shape != lp.shape or ids.ndim != 2 or ids.shape[0] != target.size:
            raise ValueError("each model's top-k ids and lp must be (n, k) arrays")
    # All models side by side: column j is rank col_rank[j] of model col_model[j].
    ids = np.ascontiguousarray(np.hstack([np.asarray(a, np.int32) for a in topk_ids]))
    lps = np.ascontiguousarray(np.hstack([np.asarray(a, np.float32) for a in topk_lp]))
    col_model = np.concatenate([np.full(a.shape[1], m, np.int64) for m, a in enumerate(topk_ids)])
    col_rank = np.concatenate([np.arange(a.shape[1], dtype=np.int16) for a in topk_ids])
    if target.size and (target.min() < 0 or target.max() >= n_vocab or ids.max(initial=-1) >= n_vocab):
        raise ValueError("ids must lie in 0..n_vocab-1 (top-k slots may be -1)")

    counts = _run_lengths(target, ids, n_vocab)
    offsets = np.zeros(target.size + 1, dtype=np.uint64)
    np.cumsum(counts, out=offsets[1:])
    n_candidates = int(offsets[-1])
    token = np.empty(n_candidates, dtype=np.int32)
    lp = np.full((n_models, n_candidates), np.nan, dtype=np.float32)
    rank = np.full((n_models, n_candidates), -1, dtype=np.int16)
    target_lp = np.ascontiguousarray(target_lp, dtype=np.float32)
    _fill_runs(target, target_lp, ids, lps, col_model, col_rank, offsets, token, lp, rank, n_vocab)
    return Candidates(offsets=offsets, token=token, lp=lp, rank=rank)


@njit(**EXACT)
def _run_lengths(target, ids, n_vocab):
    # seen[v] == i marks id v as already in run i: O(1) dedup without clearing between runs.
    seen = np.full(n_vocab, -1, dtype=np.int64)
    counts = np.empty(target.size, dtype=np.uint64)
    for i in range(target.size):
        seen[target[i]] = i
        count = 1
        for j in range(ids.shape[1]):
            v = ids[i, j]
            if v >= 0 and seen[v] != i:
                seen[v] = i
                count += 1
        counts[i] = count
    return counts


@njit(**EXACT)
def _fill_runs(target, target_lp, ids, lps, col_model, col_rank, offsets, token, lp, rank, n_vocab):
    seen = np.full(n_vocab, -1, dtype=np.int64)
    slot = np.empty(n_vocab, dtype=np.int64)
    for i in range(target.size):
        start = offsets[i]
        t = target[i]
        seen[t] = i
        slot[t] = start
        token[start] = t
        for m in range(target_lp.shape[0]):
            lp[m, start] = target_lp[m, i]
        end = start + 1
        for j in range(ids.shape[1]):
            v = ids[i, j]
            if v < 0:
                continue
            if seen[v] != i:
                seen[v] = i
                slot[v] = end
                token[end] = v
                end += 1
            s = slot[v]
            m = col_model[j]
            rank[m, s] = col_rank[j]
            if s != start:  # the target keeps its exact log-prob, not the top-k copy
                lp[m, s] = lps[i, j]
