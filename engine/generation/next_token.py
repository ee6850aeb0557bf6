"""One position's blended next-token distribution, target-free, through the engine's estimators.

Generation knows each model's top-k list for the next token and no actual token. The lists
become a one-position ``UnionCandidates`` (the union of the lists, NaN where a model does not
list a token), the blend's estimator builds its ``CandidateMatrix`` exactly as it does for
evaluation, and each real token's blended log-probability is its score
(``CandidateMatrix.run_scores``) minus the log-sum-exp over the whole run, pseudo-tokens
included; the estimator says which slots hold which token (``Estimator.slots``). So a token
every model lists gets the value evaluation (``blend_nll``) gives it as the actual token, whose
exact values are then its listed ones.

The candidate matrix's first slot is the target's. Here the slot goes to a token every model
lists (the first term's best such token: the big model's), where one exists: estimators treat a
listed target like any listed candidate, so the distribution does not depend on which one holds
the slot. Where no token is in every list, the slot goes to the first term's top token, which
``zipf-tail`` and ``calibrated-tail`` then treat as the target (a model missing it gets the
first tail rank's value instead of a place among the missing tokens).

A plausibility mask (``engine.masks``) applies to the built matrix as evaluation applies it: the
candidates its rule drops on its model's values (real tokens and pseudo-tokens alike) get
probability 0, and the blend is normalized over the rest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..candidates import CandidateMatrix, MissingDrops, UnionCandidates
from ..estimators import get_estimator
from ..masks import Mask, keep_slots

__all__ = ["NextToken", "next_token_candidates", "blend_next_token"]


@dataclass(frozen=True)
class NextToken:
    """A blend's distribution over the next token.

    Attributes:
        tokens: the real candidates (the union of the lists), as the API writes them.
        logprob: float64 ``(len(tokens),)``, natural logs, normalized over the estimator's
            whole support: the real tokens plus its pseudo-tokens (tail mass); -inf where a
            mask drops the token.
        pseudo_mass: the probability the blend gives the pseudo-tokens (never sampled).
        estimator: the estimator's name.
    """

    tokens: list[str]
    logprob: np.ndarray
    pseudo_mass: float
    estimator: str


def next_token_candidates(
    lists: Sequence[Mapping[str, float]], *, vocab_size: int, calibration: MissingDrops | None = None
) -> tuple[list[str], UnionCandidates]:
    """The one-position ``UnionCandidates`` of the models' next-token lists.

    Args:
        lists: one ``{token: natural-log probability}`` per model, in term order; each the
            model's top-k.
        vocab_size: the tokenizer's vocabulary size V.
        calibration: the calibration fit for these models (``calibrated-tail`` needs one).

    Returns:
        ``(tokens, data)``: candidate i of ``data`` is ``tokens[i]``; ``data.lp`` float32
        ``(M, C)`` (NaN where a model does not list the token), ``data.rank`` int16 ``(M, C)``.
    """
    if not lists or not lists[0]:
        raise ValueError("the first term's list is empty: no next-token candidates")
    ordered = [sorted(lst.items(), key=lambda kv: -kv[1]) for lst in lists]
    everywhere = [t for t, _ in ordered[0] if all(t in lst for lst in lists)]
    first = everywhere[0] if everywhere else ordered[0][0][0]
    tokens = [first]
    seen = {first}
    for lst in ordered:
        for t, _ in lst:
            if t not in seen:
                seen.add(t)
                tokens.append(t)
    index = {t: i for i, t in enumerate(tokens)}
    lp = np.full((len(lists), len(tokens)), np.nan, dtype=np.float32)
    rank = np.full((len(lists), len(tokens)), -1, dtype=np.int16)
    for m, lst in enumerate(ordered):
        for r, (t, v) in enumerate(lst):
            lp[m, index[t]] = v
            rank[m, index[t]] = r
    if vocab_size <= len(tokens):
        raise ValueError(f"vocab_size {vocab_size} does not exceed the {len(tokens)} listed tokens")
    data = UnionCandidates(
        offsets=np.array([0, len(tokens)], dtype=np.uint64),
        lp=lp,
        rank=rank,
        k=np.array([len(lst) for lst in lists], dtype=np.int64),
        vocab_size=int(vocab_size),
        calibration=calibration,
    )
    return tokens, data


def _logsumexp(x: np.ndarray) -> float:
    top = float(np.max(x)) if x.size else -np.inf
    if not np.isfinite(top):
        return top
    return top + float(np.log(np.sum(np.exp(x - top))))


def blend_next_token(
    lists: Mapping[str, Mapping[str, float]],
    weights: Sequence[float] | np.ndarray,
    estimator: str,
    *,
    vocab_size: int,
    calibration: MissingDrops | None = None,
    mask: Mask | None = None,
) -> NextToken:
    """The blended log-probabilities of one position's real candidate tokens.

    Args:
        lists: model -> its ``{token: natural-log probability}`` top-k list, in term order.
        weights: the blend weights, one per term.
        estimator: a registered estimator's name (``engine.estimators``).
        vocab_size: the tokenizer's vocabulary size V.
        calibration: the fit ``calibrated-tail`` needs (for these models, in this order).
        mask: a plausibility mask on one of the models, or None.

    Returns:
        The distribution over the union's tokens; ``exp(logprob).sum() + pseudo_mass == 1``.
    """
    est = get_estimator(estimator)
    models = tuple(lists)
    if len(weights) != len(models):
        raise ValueError(f"{len(weights)} weights for {len(models)} models ({', '.join(models)})")
    tokens, data = next_token_candidates(list(lists.values()), vocab_size=vocab_size, calibration=calibration)
    matrix: CandidateMatrix = est.build(data)
    if matrix.outside[0]:  # cannot happen: the target slot's token is always in the support
        raise ValueError(f"estimator {estimator!r} left the first candidate outside its support")
    scores = matrix.run_scores(0, np.asarray(weights, dtype=np.float64))
    if mask is not None:
        scores[~keep_slots(matrix, mask.rule, mask.term(models), mask.value)[:scores.size]] = -np.inf
    log_z = _logsumexp(scores)
    slots = est.slots(data)
    logprob = np.array([_logsumexp(scores[s]) - log_z if s else -np.inf for s in slots])
    real = np.zeros(scores.size, dtype=bool)
    for s in slots:
        real[s] = True
    pseudo_mass = float(np.exp(_logsumexp(scores[~real]) - log_z)) if (~real).any() else 0.0
    return NextToken(tokens=tokens, logprob=logprob, pseudo_mass=pseudo_mass, estimator=est.name)
