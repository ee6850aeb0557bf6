"""Slow, obviously correct twins of the fast code: the references the tests compare against.

All logs are natural logs; NLLs are in nats.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "naive_blend_nll",
    "naive_blend_nll_sums",
    "naive_nll_grad_hess",
    "prototype_corpus_nll",
    "prototype_pipeline_nll",
    "prototype_position_nll",
]


def naive_blend_nll(
    offsets: np.ndarray,
    values: np.ndarray,
    weights: np.ndarray,
    outside: np.ndarray,
    outside_nll: float,
) -> np.ndarray:
    """Twin of ``engine.kernels.blend_nll``: float64 ``(B, n)``, one position at a time.

    Literal extended-real semantics: ``s_b(c) = sum_r w[b, r] * values[r, c]`` with a zero
    weight contributing 0 even against -inf, summed in row order with IEEE rules
    (-inf + inf = NaN); ``NLL = logaddexp.reduce(s_b) - s_b(slot 0)`` (so +inf if any score is
    +inf, -inf - -inf = NaN when every score is -inf, NaN if any score is NaN).
    """
    n = len(offsets) - 1
    out = np.empty((weights.shape[0], n), dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        for b, w in enumerate(np.asarray(weights, dtype=np.float64)):
            for i in range(n):
                if outside[i]:
                    out[b, i] = outside_nll
                    continue
                run = values[:, int(offsets[i]) : int(offsets[i + 1])].astype(np.float64)
                scores = np.zeros(run.shape[1])
                for r in range(run.shape[0]):
                    if w[r] != 0.0:
                        scores = scores + w[r] * run[r]
                out[b, i] = np.logaddexp.reduce(scores) - scores[0]
    return out


def naive_blend_nll_sums(offsets, values, weights, outside, outside_nll, group, n_groups) -> np.ndarray:
    """Twin of ``engine.kernels.blend_nll_sums``: float64 ``(n_groups, B)``; group -1 skipped."""
    keep = np.flatnonzero(np.asarray(group) >= 0)
    out = np.zeros((n_groups, weights.shape[0]), dtype=np.float64)
    for i in keep:
        nll = naive_blend_nll(offsets[i : i + 2], values, weights, outside[i : i + 1], outside_nll)
        out[group[i]] += nll[:, 0]
    return out


PROTOTYPE_OUTSIDE_LP = -30.0
"""The prototype's log-probability for an actual token outside the big model's top-k."""


def prototype_position_nll(
    big: Mapping[str, float],
    tuned: Mapping[str, float],
    untuned: Mapping[str, float],
    target: str,
    temps: Sequence[float] = (1.0, 1.0, 1.0),
    w: float = 1.0,
) -> float:
    """NLL (nats) of ``target`` at one position, the original prototype's way, with dicts.

    Args:
        big, tuned, untuned: each model's top-k list as {token: natural-log probability}.
        target: the actual token.
        temps: (T_B, T_T, T_U).
        w: the weight of the tuned-minus-untuned difference.

    The support is ``big``'s tokens. A small model's value for a support token missing from its
    own list is its minimum over its values inside the support, or the minimum of its own list
    if none is inside (-inf if its list is empty). Score = big/T_B + w*(tuned/T_T - untuned/T_U),
    softmax over the support. A target outside the support gets log-probability -30.
    """
    if target not in big:
        return -PROTOTYPE_OUTSIDE_LP
    t_big, t_tuned, t_untuned = temps
    support = list(big)
    filled_tuned = _filled(tuned, support)
    filled_untuned = _filled(untuned, support)
    scores = {
        tok: big[tok] / t_big + w * (filled_tuned[tok] / t_tuned - filled_untuned[tok] / t_untuned)
        for tok in support
    }
    top = max(scores.values())
    log_z = top + math.log(sum(math.exp(s - top) for s in scores.values()))
    return log_z - scores[target]


def _filled(model: Mapping[str, float], support: list[str]) -> dict[str, float]:
    inside = [model[tok] for tok in support if tok in model]
    if inside:
        fill = min(inside)
    elif model:
        fill = min(model.values())
    else:
        fill = -math.inf
    return {tok: model.get(tok, fill) for tok in support}


def prototype_corpus_nll(
    records: Iterable[tuple[tuple[Mapping[str, float], Mapping[str, float], Mapping[str, float]], str]],
    temps: Sequence[float] = (1.0, 1.0, 1.0),
    w: float = 1.0,
) -> float:
    """Total NLL (nats) over ``records``, each ``((big, tuned, untuned), target)``."""
    total = 0.0
    for (big, tuned, untuned), target in records:
        total += prototype_position_nll(big, tuned, untuned, target, temps, w)
    return total


def prototype_pipeline_nll(
    records: Sequence[tuple[tuple[Mapping[str, float], Mapping[str, float], Mapping[str, float]], str]],
    temps: Sequence[float] = (1.0, 1.0, 1.0),
    w: float = 1.0,
) -> float:
    """Total NLL (nats) over ``records``, computed the way the prototype's tuning loop did it
    for every trial: stage by stage over the whole list, each stage a helper applied to every
    model's {token: log-probability} dict, turning it into numpy arrays and back.

    The stages, as its README and helpers describe them: copy the raw lists (so the trial
    cannot change them); align the small models to the big model's tokens (drop the others,
    NaN where missing) and sort all three dicts by token; fill each model's NaNs with its
    minimum inside the support (``nanmin``; where all are NaN, the minimum of its own list, as
    ``prototype_position_nll``); divide each model by its temperature; blend ``big + w (tuned
    - untuned)``; normalize with a softmax; read the target's log-probability, -30 if missing.
    The same numbers as ``prototype_corpus_nll`` (tests/test_naive_prototype.py), at the
    prototype's pace: the speed baseline of ``python -m bench.table``.
    """
    copied = copy.deepcopy(list(records))
    aligned = []
    for (big, tuned, untuned), _ in copied:
        keys = set(big)
        small = [{k: v for k, v in m.items() if k in keys} for m in (tuned, untuned)]
        for d in small:
            for k in keys - d.keys():
                d[k] = np.nan
        aligned.append([dict(sorted(d.items())) for d in (big, *small)])
    imputed = []
    for lists, (own, _) in zip(aligned, copied):
        filled = []
        for d, own_list in zip(lists, own):  # the big model's list too: it has no NaN
            arr = np.array(list(d.values()), dtype=np.float64)
            missing = np.isnan(arr)
            if missing.all():
                arr[:] = min(own_list.values()) if own_list else -np.inf
            elif missing.any():
                arr[missing] = np.nanmin(arr)
            filled.append(dict(zip(np.array(list(d.keys())), arr)))
        imputed.append(filled)
    total = 0.0
    for lists, (_, target) in zip(imputed, copied):
        scaled = []
        for d, t in zip(lists, temps):
            keys, values = zip(*d.items())
            scaled.append(dict(zip(keys, np.array(values) / t)))
        big, tuned, untuned = (np.array(list(d.values())) for d in scaled)
        blended = dict(zip(scaled[0].keys(), big + w * (tuned - untuned)))
        scores = np.array(list(blended.values()))
        top = scores.max()
        normalized = dict(zip((str(k) for k in blended.keys()), scores - (top + np.log(np.exp(scores - top).sum()))))
        total -= normalized.get(target, PROTOTYPE_OUTSIDE_LP)
    return total


def naive_nll_grad_hess(offsets, values, w, outside, outside_nll, group):
    """Total NLL, gradient (R,) and Hessian (R, R) in the weights, position by position:
    softmax p over the run, gradient E_p[v] - v(target), Hessian Cov_p(v)."""
    n_rows = values.shape[0]
    total, grad, hess = 0.0, np.zeros(n_rows), np.zeros((n_rows, n_rows))
    for i in range(offsets.size - 1):
        if group[i] < 0:
            continue
        if outside[i]:
            total += outside_nll
            continue
        v = values[:, int(offsets[i]) : int(offsets[i + 1])].astype(np.float64)  # (R, run)
        s = w @ v
        log_z = np.logaddexp.reduce(s)
        p = np.exp(s - log_z)
        mean = v @ p
        total += log_z - s[0]
        grad += mean - v[:, 0]
        hess += (v * p) @ v.T - np.outer(mean, mean)
    return total, grad, hess
