"""Slow, obviously correct twins of the estimators, one position at a time over Python dicts.

A position is given as each model's top-k list ``{token: logprob}``, the actual token, and each
model's exact log-probability of it. Natural logs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from engine.candidates import UnionCandidates


@dataclass(frozen=True)
class Position:
    lists: tuple[dict[int, float], ...]  # per model: top-k token -> logprob
    target: int
    target_lp: tuple[float, ...]  # per model: exact logprob of the target


def logsumexp(xs: list[float]) -> float:
    return float(np.logaddexp.reduce(np.asarray(xs, dtype=np.float64)))


def union_kth_tail_nll(pos: Position, weights, tail_floor: float) -> float:
    """NLL of the actual token: union support, k-th fill, one tail pseudo-token."""
    support = {pos.target}.union(*(d.keys() for d in pos.lists))
    scores = {}
    tail = 0.0
    for m, d in enumerate(pos.lists):
        kth = min(d.values()) if d else -math.inf
        values = {t: (pos.target_lp[m] if t == pos.target else d.get(t, kth)) for t in support}
        for t, v in values.items():
            scores[t] = scores.get(t, 0.0) + (0.0 if weights[m] == 0 else weights[m] * v)
        rest = 1.0 - sum(math.exp(v) for v in values.values())
        tail_value = math.log(rest) if rest > tail_floor else math.log(tail_floor)
        tail += weights[m] * tail_value
    return logsumexp([*scores.values(), tail]) - scores[pos.target]


def union_candidates(positions: list[Position], vocab_size: int = 50257) -> UnionCandidates:
    """The store's CSR layout built the plain way: target first, then lists in first-seen order."""
    n_models = len(positions[0].lists) if positions else 3
    offsets, lp, rank = [0], [[] for _ in range(n_models)], [[] for _ in range(n_models)]
    for pos in positions:
        run = [pos.target]
        for d in pos.lists:
            run += [t for t in sorted(d, key=lambda t: -d[t]) if t not in run]
        for m, d in enumerate(pos.lists):
            order = sorted(d, key=lambda t: -d[t])
            for t in run:
                lp[m].append(pos.target_lp[m] if t == pos.target else d.get(t, math.nan))
                rank[m].append(order.index(t) if t in d else -1)
        offsets.append(offsets[-1] + len(run))
    return UnionCandidates(
        offsets=np.asarray(offsets, dtype=np.uint64),
        lp=np.asarray(lp, dtype=np.float32).reshape(n_models, -1),
        rank=np.asarray(rank, dtype=np.int16).reshape(n_models, -1),
        k=np.asarray([max((len(p.lists[m]) for p in positions), default=0) for m in range(n_models)]),
        vocab_size=vocab_size,
    )
