"""One position's blended next-token distribution, target-free, through the engine's estimators.

Generation knows each model's top-k list for the next token and no actual token. The lists
become a one-position ``UnionCandidates`` (the union of the lists, NaN where a model does not
list a token), the blend's estimator builds its ``CandidateMatrix`` exactly as it does for
evaluation, and each real token's blended log-probability is its score (row weights from
``CandidateMatrix.row_weights``) minus the log-sum-exp over the whole run, pseudo-tokens
included. So a token every model lists gets the value evaluation (``blend_nll``) gives it as
the actual token, whose exact values are then its listed ones (tests/test_next_token.py).

The candidate matrix's first slot is the target's. Here the slot goes to a token every model
lists (the big model's best such token), where one exists: estimators treat a listed target
like any listed candidate, so the distribution does not depend on which one holds the slot.
Where no token is in every list, the slot goes to the big model's top token, which
``zipf-tail`` and ``calibrated-tail`` then treat as the target (a model missing it gets the
first tail rank's value instead of a place among the missing tokens).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .candidates import CandidateMatrix, UnionCandidates
from .estimators import get_estimator
from .estimators.calibrated_tail import MissingDrops

__all__ = ["NextToken", "next_token_candidates", "blend_next_token"]


@dataclass(frozen=True)
class NextToken:
    """A blend's distribution over the next token.

    Attributes:
        tokens: the real candidates (the union of the lists), as the API writes them.
        logprob: float64 ``(len(tokens),)``, natural logs, normalized over the estimator's
            whole support: the real tokens plus its pseudo-tokens (tail mass).
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
        lists: one ``{token: natural-log probability}`` per model, in blend order (big, tuned,
            untuned); each the model's top-k.
        vocab_size: the tokenizer's vocabulary size V.
        calibration: the calibration fit for these models (``calibrated-tail`` needs one).

    Returns:
        ``(tokens, data)``: candidate i of ``data`` is ``tokens[i]``; ``data.lp`` float32
        ``(M, C)`` (NaN where a model does not list the token), ``data.rank`` int16 ``(M, C)``.
    """
    if not lists or not lists[0]:
        raise ValueError("the big model's list is empty: no next-token candidates")
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


def _slots(name: str, data: UnionCandidates) -> list[list[int]]:
    """For each input candidate, the matrix slots (offsets within the run) that hold it; the
    other slots are pseudo-tokens. Each estimator's ``build`` documents this layout: the
    target, then the support in input order (``seed``: the big model's list; the others: every
    listed token), one slot each except ``calibrated-tail``'s partly listed tokens, one slot
    per node of their missing-value distribution."""
    n_cand = data.lp.shape[1]
    listed = (data.rank >= 0).any(axis=0)
    slots: list[list[int]] = [[] for _ in range(n_cand)]
    if name == "seed":
        support = [c for c in range(n_cand) if data.rank[0, c] >= 0]
        for s, c in enumerate(support):
            slots[c] = [s]
        return slots
    if name in ("union-kth-tail", "spread-tail", "zipf-tail"):
        support = [c for c in range(n_cand) if c == 0 or listed[c]]
        for s, c in enumerate(support):
            slots[c] = [s]
        return slots
    if name == "calibrated-tail":
        d = data.calibration
        if d is None:
            raise ValueError("calibrated-tail needs a calibration fit (approxft calibrate)")
        full = (1 << data.lp.shape[0]) - 1
        slots[0] = [0]
        j = 1
        for c in range(1, n_cand):
            mask = sum(1 << m for m in range(data.lp.shape[0]) if data.rank[m, c] >= 0)
            if mask == 0:
                continue
            n = 1 if mask == full else int(np.sum(d.log_weight[mask] > -np.inf))
            slots[c] = list(range(j, j + n))
            j += n
        return slots
    raise ValueError(f"generation does not know where estimator {name!r} puts each token")


def _logsumexp(x: np.ndarray) -> float:
    top = float(np.max(x)) if x.size else -np.inf
    if not np.isfinite(top):
        return top
    return top + float(np.log(np.sum(np.exp(x - top))))


def blend_next_token(
    lists: Sequence[Mapping[str, float]],
    weights: Sequence[float] | np.ndarray,
    estimator: str,
    *,
    vocab_size: int,
    calibration: MissingDrops | None = None,
) -> NextToken:
    """The blended log-probabilities of one position's real candidate tokens.

    Args:
        lists: one ``{token: natural-log probability}`` top-k list per model, blend order.
        weights: the blend weights ``(a_B, a_T, a_U)``.
        estimator: a registered estimator's name (``engine.estimators``).
        vocab_size: the tokenizer's vocabulary size V.
        calibration: the fit ``calibrated-tail`` needs.

    Returns:
        The distribution over the union's tokens; ``exp(logprob).sum() + pseudo_mass == 1``.
    """
    est = get_estimator(estimator)
    tokens, data = next_token_candidates(lists, vocab_size=vocab_size, calibration=calibration)
    matrix: CandidateMatrix = est.build(data)
    if matrix.outside[0]:  # cannot happen: the target slot's token is always in the support
        raise ValueError(f"estimator {estimator!r} left the first candidate outside its support")
    lo, hi = int(matrix.offsets[0]), int(matrix.offsets[1])
    row_w = matrix.row_weights(np.asarray(weights, dtype=np.float64))[0]
    values = matrix.values[:, lo:hi].astype(np.float64)
    with np.errstate(invalid="ignore"):
        terms = row_w[:, None] * values
    terms[(row_w[:, None] == 0) & np.isinf(values)] = 0.0  # 0 · -inf counts as 0, as in the kernels
    scores = terms.sum(axis=0)
    log_z = _logsumexp(scores)
    slots = _slots(est.name, data)
    logprob = np.array([_logsumexp(scores[s]) - log_z if s else -np.inf for s in slots])
    real = np.zeros(scores.size, dtype=bool)
    for s in slots:
        real[s] = True
    pseudo_mass = float(np.exp(_logsumexp(scores[~real]) - log_z)) if (~real).any() else 0.0
    return NextToken(tokens=tokens, logprob=logprob, pseudo_mass=pseudo_mass, estimator=est.name)
