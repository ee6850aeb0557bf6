"""Estimator ``calibrated-tail``: missing values drawn from distributions fitted on a calibration sample.

Assumptions:
- The support is the union of the blend's models' top-k lists plus the actual token; listed
  values and the actual token's exact values are used as they are.
- A union token missing from some lists has, for each model m that misses it, a value below
  m's k-th value by a drop ``D_m >= 0``. The vector of drops follows a discrete joint
  distribution (a few weighted nodes) fitted on a calibration sample (deeper lists for some
  positions, see ``engine.calibration``), separately for each set of models that list the
  token: a token only the tuned model lists is far more often deep in the untuned model's
  tail than one the big model lists. (The listing models' values themselves hardly predict
  the drop on the Grimm sample, so they are not used.) The token becomes one pseudo-token per
  node, with the node's probability as its multiplicity: the blend averages ``exp(score)``
  over the distribution, which matters for negative weights (a token the untuned model rates
  far below its k-th value is rewarded). A target without an exact value takes the k-th.
- Where a model's list and target leave less mass than its missing tokens' expected mass, those
  values are lowered together by one shift so that the model's values still sum to one.
- The rest of each model's mass (1 - listed - exact target - expected missing mass) lies
  outside the union and falls as a power of rank, as in ``zipf-tail``: comonotone tails,
  binned into geometric bins with a log-multiplicity row, so weights that do not sum to one
  treat the many tail tokens correctly.
- The fitted distributions are valid for the models and the list length k they were fitted
  on, so the fit belongs to the dataset: ``approxft calibrate`` fits it on the dataset's
  calibration sample (``engine.calibration.fit.fit_missing_drops``) and stores it with the store,
  and ``Dataset`` passes it in as ``UnionCandidates.calibration``. Without one this estimator
  refuses to run (``python -m bench.estimators`` measures the fit on held-out positions).
"""

from __future__ import annotations

import math
import warnings

import numba as nb
import numpy as np

from ingest.jit import EXACT, EXACT_PARALLEL

from ..candidates import CandidateMatrix, MissingDrops, UnionCandidates
from ._fill import (
    BIN_RATIO,
    TAIL_MASS_FLOOR,
    bin_edges,
    fit_beta,
    listed_mask,
    listed_stats,
    offsets_from_counts,
    power_sums,
    support_members,
)

NAME = "calibrated-tail"
NEEDS_CALIBRATION = True


@nb.njit(**EXACT)
def _n_nodes(log_weight, mask):
    q = 0
    for j in range(log_weight.shape[1]):
        if log_weight[mask, j] > -np.inf:
            q += 1
    return q


@nb.njit(**EXACT_PARALLEL)
def _counts(offsets, rank, log_weight, n_vocab, ratio):
    n = offsets.size - 1
    counts = np.zeros(n, dtype=np.int64)
    for i in nb.prange(n):
        lo, hi = np.int64(offsets[i]), np.int64(offsets[i + 1])
        if hi == lo:
            continue
        total = 1
        n_sup = 1
        for c in range(lo + 1, hi):
            mask = listed_mask(rank, c)
            if mask == 0:
                continue
            n_sup += 1
            total += 1 if mask == (1 << rank.shape[0]) - 1 else _n_nodes(log_weight, mask)
        counts[i] = total + bin_edges(n_vocab - n_sup, ratio).size - 1
    return counts


@nb.njit(**EXACT_PARALLEL)
def _fill(offsets, lp, rank, drop, log_weight, new_offsets, values, n_vocab, ratio, log_floor):
    n = offsets.size - 1
    n_models = lp.shape[0]
    n_nodes = log_weight.shape[1]
    full = (1 << n_models) - 1
    mult_row = n_models
    for i in nb.prange(n):
        lo, hi = np.int64(offsets[i]), np.int64(offsets[i + 1])
        if hi == lo:
            continue
        members = support_members(rank, lo, hi)
        n_sup = members.size
        # Per model: k-th value, listed mass, and what is left after the target and the
        # expected mass of its missing union tokens.
        kth = np.full(n_models, -np.inf)
        k_m = np.zeros(n_models, dtype=np.int64)
        listed_mass = np.zeros(n_models)
        rest = np.zeros(n_models)
        n_missing = np.zeros(n_models, dtype=np.int64)
        for m in range(n_models):
            k_m[m], best, listed_mass[m], target_p = listed_stats(lp, rank, m, lo, hi)
            kth[m] = best if k_m[m] > 0 else math.log(1.0 / n_vocab)
            rest[m] = 1.0 - listed_mass[m] - target_p
        missing_mass = np.zeros(n_models)
        for s in range(1, n_sup):
            c = members[s]
            mask = listed_mask(rank, c)
            for m in range(n_models):
                if rank[m, c] < 0:
                    n_missing[m] += 1
                    for q in range(n_nodes):
                        if log_weight[mask, q] > -np.inf:
                            missing_mass[m] += math.exp(log_weight[mask, q] + kth[m] - drop[mask, q, m])
        # Where the missing tokens' expected mass would leave the tail less than the floor, they
        # are lowered together (a shift of their values) so the model's mass still sums to one.
        shift = np.zeros(n_models)
        floor = math.exp(log_floor)
        for m in range(n_models):
            if missing_mass[m] > 0 and rest[m] - missing_mass[m] < floor:
                shift[m] = math.log(max(rest[m] - floor, floor) / missing_mass[m])
                missing_mass[m] *= math.exp(shift[m])
            rest[m] -= missing_mass[m]
        # The support: the target, then each other union token as one pseudo-token per node.
        out = np.int64(new_offsets[i])
        for m in range(n_models):
            values[m, out] = lp[m, lo] if not np.isnan(lp[m, lo]) else kth[m]
        values[mult_row, out] = 0.0
        j = out + 1
        for s in range(1, n_sup):
            c = members[s]
            mask = listed_mask(rank, c)
            if mask == full:
                for m in range(n_models):
                    values[m, j] = lp[m, c]
                values[mult_row, j] = 0.0
                j += 1
                continue
            for q in range(n_nodes):
                if log_weight[mask, q] == -np.inf:
                    continue
                for m in range(n_models):
                    values[m, j] = lp[m, c] if rank[m, c] >= 0 else kth[m] - drop[mask, q, m] + shift[m]
                values[mult_row, j] = log_weight[mask, q]
                j += 1
        # The tail: power law past each model's list and missing tokens, binned alike.
        edges = bin_edges(n_vocab - n_sup, ratio)
        n_bins = edges.size - 1
        for b in range(n_bins):
            values[mult_row, j + b] = math.log(edges[b + 1] - edges[b])
        x = np.empty(n_bins + 1)
        shape = np.empty(n_bins)
        for m in range(n_models):
            kk = max(k_m[m], 1)
            p_k = math.exp(kth[m])
            beta = fit_beta(kk, n_vocab, p_k, max(1.0 - listed_mass[m], math.exp(log_floor)))
            first = kk + n_missing[m] + (1.0 if rank[m, lo] < 0 else 0.0)
            for b in range(n_bins + 1):
                x[b] = first + edges[b] - 0.5
            power_sums(kk, beta, x, n_bins, shape)
            total = 0.0
            for b in range(n_bins):
                total += p_k * shape[b]
            scale = math.log(max(rest[m], math.exp(log_floor)) / total) if total > 0 else 0.0
            for b in range(n_bins):
                width = edges[b + 1] - edges[b]
                mass = p_k * shape[b]
                values[m, j + b] = math.log(mass / width) + scale if mass > 0 else -np.inf


def build(data: UnionCandidates, drops: MissingDrops | None = None) -> CandidateMatrix:
    """Fill the union with calibrated missing-value nodes and append the power-law tail bins.

    Args:
        data: the blend's observed candidates; ``data.vocab_size`` must cover the union.
        drops: the fitted missing-value distributions; default ``data.calibration`` (the
            dataset's fit for these models).

    Returns:
        A matrix with one row per model plus a log-multiplicity row (weight 1): the target,
        the union's node combinations, then the tail bins.

    Raises:
        ValueError: no fit given and ``data`` carries none.
    """
    d = data.calibration if drops is None else drops
    if d is None:
        raise ValueError(
            f"{NAME} needs a calibration fit for the blend's models and the data has none; "
            "run `approxft calibrate STORE --deep DIR ...` (see approxft calibrate --help) or choose another estimator"
        )
    if (data.k != d.k).any():
        warnings.warn(
            f"{NAME}: the missing-value fit is for top-{d.k} lists, the data has k = {data.k.tolist()} "
            "(on the Grimm sample a fit transfers across k with a little more error; a fit at this k "
            "is better: approxft calibrate)",
            stacklevel=2,
        )
    n_models = data.lp.shape[0]
    if d.drop.shape[2] != n_models:
        raise ValueError(f"drops fitted for {d.drop.shape[2]} models, the blend has {n_models}")
    drop = np.ascontiguousarray(d.drop, dtype=np.float64)
    log_weight = np.ascontiguousarray(d.log_weight, dtype=np.float64)
    counts = _counts(data.offsets, data.rank, log_weight, data.vocab_size, BIN_RATIO)
    new_offsets = offsets_from_counts(counts)
    values = np.empty((n_models + 1, int(new_offsets[-1])), dtype=np.float32)
    _fill(data.offsets, data.lp, data.rank, drop, log_weight, new_offsets, values, data.vocab_size, BIN_RATIO,
          math.log(TAIL_MASS_FLOOR))
    return CandidateMatrix.with_target_inside(new_offsets, values, n_models=n_models, estimator=NAME)


def slots(data: UnionCandidates) -> list[list[int]]:
    """Generation's slot map (``Estimator.slots``): the target, then each support token in run
    order, one slot if every model lists it, else one per node of its missing-value
    distribution; the tail bins after them are pseudo-tokens."""
    d = data.calibration
    if d is None:
        raise ValueError(f"{NAME} needs a calibration fit (approxft calibrate)")
    n_models, n_cand = data.lp.shape
    full = (1 << n_models) - 1
    out: list[list[int]] = [[] for _ in range(n_cand)]
    out[0] = [0]
    j = 1
    for c in range(1, n_cand):
        mask = sum(1 << m for m in range(n_models) if data.rank[m, c] >= 0)
        if mask == 0:
            continue
        n = 1 if mask == full else int(np.sum(d.log_weight[mask] > -np.inf))
        out[c] = list(range(j, j + n))
        j += n
    return out
