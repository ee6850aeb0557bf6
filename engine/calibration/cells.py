"""The kernel that compresses whole next-token distributions into cells a blend kernel can read.

At a sampled position, a blend of M models over the full vocabulary needs
``log sum_v exp(sum_m w_m lp_m(v))``: V terms per weight vector (50,257 for GPT-2; about 8 ms per
weight vector at 1,000 positions on this machine, four times the correction's budget). Tokens
close to each other in all M log-probabilities contribute alike, so every token but the target
goes into a cell of an M-dimensional grid of side ``h`` nats over its values; a cell is one
candidate at its tokens' centroid, with the log of their count as a fixed row (weight 1), the
layout ``engine.kernels`` already reads for pseudo-tokens. The target stays exact, first in its
run. A cell stands for ``n exp(w . mean)`` where its tokens sum to ``sum exp(w . v)``: by Jensen
the cell is never above, and the gap is second order in the spread ``w . (v - mean)`` within
it. With ``h`` = 0.25 this keeps about 6,500 candidates per position and moved the mean NLL of
1,000 testbed positions by at most 2.4e-3 nats over the benchmark's weight grid, median 2e-4
(``bench/README.md``; ``python -m bench.correction`` reports it every run).

Tokens for which any model has no value (NaN: a model known by its top-K lists only) are left
out; the caller says so.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ingest.jit import EXACT, EXACT_PARALLEL

__all__ = ["CELL_NATS", "cell_runs"]

CELL_NATS = 0.25
"""Side of a cell, nats (chosen on the testbed: ``engine/calibration/cells.py``'s docstring)."""
_SPAN = 1024
"""Cells per model axis: values down to -256 nats at 0.25 nats a cell (lower ones share the last)."""


@njit(**EXACT)
def _keys(lp, target, h, keys):
    """Cell key of every token of one position (-1: the target, or a token some model lacks)."""
    n_models, n_vocab = lp.shape
    for v in range(n_vocab):
        key = np.int64(0)
        for m in range(n_models):
            x = lp[m, v]
            if not x <= 0.0 and not x > 0.0:  # NaN: unknown to this model
                key = -1
                break
            c = _SPAN - 1 if x <= -h * (_SPAN - 1) else np.int64(-x / h)  # -inf included
            key = key * _SPAN + c
        keys[v] = -1 if v == target else key


@njit(**EXACT_PARALLEL)
def _count_cells(lp, target, h, counts):
    for i in prange(lp.shape[1]):
        keys = np.empty(lp.shape[2], dtype=np.int64)
        _keys(lp[:, i, :], target[i], h, keys)
        keys.sort()
        n = 0
        for j in range(keys.size):
            if keys[j] >= 0 and (j == 0 or keys[j] != keys[j - 1]):
                n += 1
        counts[i] = n + 1  # and the target


@njit(**EXACT_PARALLEL)
def _fill_cells(lp, target, h, offsets, values):
    n_models = lp.shape[0]
    for i in prange(lp.shape[1]):
        keys = np.empty(lp.shape[2], dtype=np.int64)
        _keys(lp[:, i, :], target[i], h, keys)
        order = np.argsort(keys, kind="mergesort")
        at = offsets[i]
        for m in range(n_models):
            values[m, at] = lp[m, i, target[i]]
        values[n_models, at] = 0.0
        j = 0
        while j < order.size and keys[order[j]] < 0:
            j += 1
        while j < order.size:
            at += 1
            key = keys[order[j]]
            total = np.zeros(n_models)
            count = 0
            while j < order.size and keys[order[j]] == key:
                for m in range(n_models):
                    total[m] += lp[m, i, order[j]]
                count += 1
                j += 1
            for m in range(n_models):
                values[m, at] = total[m] / count
            values[n_models, at] = np.log(count)


def cell_runs(lp: np.ndarray, target: np.ndarray, h: float = CELL_NATS) -> tuple[np.ndarray, np.ndarray]:
    """Compress P positions' full distributions into candidate runs (target first, then cells).

    Args:
        lp: float32 ``(M, P, V)``: each model's natural-log next-token distribution, NaN where
            a model has no value for a token.
        target: int64 ``(P,)``: the actual token's index into V (every model has its value).
        h: a cell's side, nats.

    Returns:
        ``(lengths, values)``: int64 ``(P,)`` run lengths, and float32 ``(M + 1, sum(lengths))``
        C-contiguous: the models' values (the target's exact, a cell's centroid), then a row of
        log-counts (0 for the target).
    """
    lp = np.ascontiguousarray(lp, dtype=np.float32)
    target = np.ascontiguousarray(target, dtype=np.int64)
    counts = np.empty(lp.shape[1], dtype=np.int64)
    _count_cells(lp, target, h, counts)
    offsets = np.zeros(counts.size + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    values = np.empty((lp.shape[0] + 1, int(offsets[-1])), dtype=np.float32)
    _fill_cells(lp, target, h, offsets, values)
    return counts, values
