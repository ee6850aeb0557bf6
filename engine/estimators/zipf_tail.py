"""Estimator ``zipf-tail``: each model's unlisted mass follows a power law in rank.

Assumptions:
- Past its k-th entry a model's probabilities fall as a power of rank, ``p(r) = p_k·(r/k)^-β``;
  ``β`` is chosen per model and position so that ranks k+1 .. V hold exactly the mass the list
  leaves over (``1 - sum of the listed probabilities``). V is the tokenizer's vocabulary size.
- Union tokens missing from a model's list take the ranks right after its list, the one the
  other blend models rate highest first.
- The tokens outside the union are ranked alike by all models (comonotone tails): tail slot j
  is model m's rank ``k_m + u_m + j``. The tail is summed in geometric bins of slots; a bin is one
  pseudo-token whose per-model value is the mean probability over its ranks and whose
  log-multiplicity (the number of tokens it stands for) enters every blend score with weight 1,
  so weights that do not sum to one treat the many tail tokens correctly.
- Each model's values outside its list are rescaled so that, with its list and its exact
  target value, they sum to one: a single model blended alone keeps its exact perplexity.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from ingest.jit import EXACT, EXACT_PARALLEL

from ..blocks import BLOCKS, block_positions, longest_run
from ..candidates import CandidateMatrix, UnionCandidates
from ._fill import (
    BIN_RATIO,
    TAIL_MASS_FLOOR,
    bin_edges,
    fit_beta,
    listed_stats,
    offsets_from_counts,
    power_sum,
    power_sums,
    support_into,
    support_sizes,
    support_slots,
    tail_edges,
)

NAME = "zipf-tail"


@nb.njit(**EXACT)
def _counts(offsets, rank, n_vocab, geometric):
    """Run lengths: the support (sized in parallel) plus its tail bins (``geometric``:
    ``bin_edges(n_vocab, ratio)``)."""
    sizes = support_sizes(offsets, rank)
    counts = np.zeros(sizes.size, dtype=np.int64)
    edges = np.empty(geometric.size + 1)
    for i in range(sizes.size):
        if sizes[i] > 0:
            counts[i] = sizes[i] + tail_edges(geometric, n_vocab - sizes[i], edges) - 1
    return counts


@nb.njit(**EXACT_PARALLEL)
def _fill(offsets, lp, rank, new_offsets, values, n_vocab, geometric, log_floor):
    n = offsets.size - 1
    n_models = lp.shape[0]
    mult_row = n_models
    longest = longest_run(offsets)
    for block in nb.prange(BLOCKS):
        members = np.empty(longest, dtype=np.int64)
        order = np.empty(longest, dtype=np.int64)
        key = np.empty(longest, dtype=np.float64)
        edges = np.empty(geometric.size + 1, dtype=np.float64)
        x = np.empty(longest + geometric.size + 1, dtype=np.float64)
        shape = np.empty(longest + geometric.size + 1, dtype=np.float64)
        first, last = block_positions(block, n)
        for i in range(first, last):
            lo, hi = np.int64(offsets[i]), np.int64(offsets[i + 1])
            if hi == lo:
                continue
            n_sup = support_into(rank, lo, hi, members)
            n_bins = tail_edges(geometric, n_vocab - n_sup, edges) - 1
            out = np.int64(new_offsets[i])
            for s in range(n_sup):
                values[mult_row, out + s] = 0.0
            for b in range(n_bins):
                values[mult_row, out + n_sup + b] = math.log(edges[b + 1] - edges[b])
            for m in range(n_models):
                # The model's list: its size, k-th value and listed mass.
                k, kth, listed_mass, target_p = listed_stats(lp, rank, m, lo, hi)
                target_unlisted = rank[m, lo] < 0
                rest = max(1.0 - listed_mass, math.exp(log_floor))
                if k == 0:  # no list at all here: spread what is left evenly
                    k, kth = 0, math.log(rest / n_vocab)
                p_k = math.exp(kth)
                beta = fit_beta(max(k, 1), n_vocab, p_k, rest)
                # Missing union tokens, ranked by the other models' best value.
                n_missing = 0
                for s in range(1, n_sup):
                    c = members[s]
                    if rank[m, c] < 0:
                        best = -np.inf
                        for r in range(n_models):
                            if r != m and rank[r, c] >= 0:
                                best = max(best, lp[r, c])
                        j = n_missing
                        while j > 0 and key[j - 1] < best:  # insertion sort, descending
                            key[j] = key[j - 1]
                            order[j] = order[j - 1]
                            j -= 1
                        key[j] = best
                        order[j] = s
                        n_missing += 1
                # Unnormalized model mass outside the list: the missing tokens at ranks k+1, k+2,
                # ..., then the tail bins (each range's power-law mass; ``shape``: per token).
                kk = max(k, 1)
                for q in range(n_missing + 1):
                    x[q] = kk + q + 0.5
                power_sums(kk, beta, x, n_missing, shape)
                first = kk + n_missing + (1.0 if target_unlisted else 0.0)
                for b in range(n_bins + 1):
                    x[b] = first + edges[b] - 0.5
                power_sums(kk, beta, x, n_bins, shape[n_missing:])
                total = 0.0
                for q in range(n_missing):
                    shape[q] *= p_k
                    total += shape[q]
                for b in range(n_bins):
                    mass = p_k * shape[n_missing + b]
                    shape[n_missing + b] = mass / (edges[b + 1] - edges[b])
                    total += mass
                want = max(rest - target_p, math.exp(log_floor))
                scale = math.log(want / total) if total > 0 else 0.0
                # Write: listed values as they are, the exact target, rescaled estimates elsewhere.
                for s in range(n_sup):
                    c = members[s]
                    values[m, out + s] = lp[m, c] if (rank[m, c] >= 0 or s == 0) else -np.inf
                for q in range(n_missing):
                    values[m, out + order[q]] = math.log(shape[q]) + scale
                for b in range(n_bins):
                    values[m, out + n_sup + b] = math.log(shape[n_missing + b]) + scale
                if np.isnan(values[m, out]):  # target value unobserved: the first tail rank's value
                    values[m, out] = math.log(p_k * power_sum(kk, beta, kk + 0.5, kk + 1.5)) + scale


def build(data: UnionCandidates) -> CandidateMatrix:
    """Fill the union support from per-model power-law tails and append the binned tail.

    Args:
        data: the blend's observed candidates; ``data.vocab_size`` must cover the union.

    Returns:
        A matrix with one row per model plus a log-multiplicity row (weight 1); each run is the
        target, the rest of the union, then the tail bins.
    """
    geometric = bin_edges(data.vocab_size, BIN_RATIO)
    counts = _counts(data.offsets, data.rank, data.vocab_size, geometric)
    new_offsets = offsets_from_counts(counts)
    n_models = data.lp.shape[0]
    values = np.empty((n_models + 1, int(new_offsets[-1])), dtype=np.float32)
    _fill(data.offsets, data.lp, data.rank, new_offsets, values, data.vocab_size, geometric, math.log(TAIL_MASS_FLOOR))
    return CandidateMatrix.with_target_inside(new_offsets, values, n_models=n_models, estimator=NAME)


slots = support_slots
"""Generation: the run is the support in run order, then the tail bins (pseudo-tokens)."""
