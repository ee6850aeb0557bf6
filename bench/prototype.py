"""The original prototype's way of scoring a blend, with Python dicts per position: the speed
baseline of the benchmarks and the reference twin of the ``prototype`` estimator.

``prototype_position_nll`` scores one position; ``prototype_corpus_nll`` sums it (a lean
one-pass version); ``prototype_pipeline_nll`` runs the prototype's tuning loop stage by stage,
as its notebooks did for every trial. All logs are natural logs; NLLs are in nats.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

__all__ = ["PROTOTYPE_OUTSIDE_LP", "prototype_position_nll", "prototype_corpus_nll", "prototype_pipeline_nll"]


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
    The same numbers as ``prototype_corpus_nll`` (tests/bench/test_prototype.py), at the
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
