"""Slow, obviously correct twins of the estimators, one position at a time over Python dicts.

A position is given as each model's top-k list ``{token: logprob}``, the actual token, and each
model's exact log-probability of it. Natural logs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from engine.candidates import UnionCandidates
from ingest.prepare.bpe import GPT2_VOCAB_SIZE


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


def union_run(pos: Position) -> list[int]:
    """The position's support in the store's order: the target, then each list in turn."""
    run = [pos.target]
    for d in pos.lists:
        run += [t for t in sorted(d, key=lambda t: -d[t]) if t not in run]
    return run


def spread_tail_nll(pos: Position, weights, tail_floor: float, vocab_size: int) -> float:
    """NLL of the actual token: ``union-kth-tail`` with its tail spread over the unlisted tokens."""
    support = union_run(pos)
    scores = {t: 0.0 for t in support}
    n_tail = vocab_size - len(support)
    tail = math.log(n_tail)  # the multiplicity: n_tail tokens, each of value rest / n_tail
    for m, d in enumerate(pos.lists):
        kth = min(d.values())
        values = {t: (pos.target_lp[m] if t == pos.target else d.get(t, kth)) for t in support}
        for t, v in values.items():
            scores[t] += 0.0 if weights[m] == 0 else weights[m] * v
        rest = 1.0 - sum(math.exp(v) for v in values.values())
        tail += weights[m] * ((math.log(rest) if rest > tail_floor else math.log(tail_floor)) - math.log(n_tail))
    return logsumexp([*scores.values(), tail]) - scores[pos.target]


# The power-law tail of zipf-tail and calibrated-tail, written out plainly.


def tail_bins(n_tail: int, ratio: float) -> list[tuple[float, float]]:
    """Geometric bins of tail slots ``[a, b)``: 1, then each edge ``max(floor(ratio * e), e + 1)``."""
    edges = [1.0]
    while edges[-1] <= n_tail:
        edges.append(min(max(math.floor(edges[-1] * ratio), edges[-1] + 1.0), n_tail + 1.0))
    return list(zip(edges[:-1], edges[1:]))


def power_mass(k: float, beta: float, a: float, b: float) -> float:
    """Integral of ``(x / k) ** -beta`` over ``[a, b]``."""
    if abs(beta - 1.0) < 1e-9:
        return k * math.log(b / a)
    return k**beta * (b ** (1 - beta) - a ** (1 - beta)) / (1 - beta)


def fit_exponent(k: int, vocab_size: int, p_k: float, rest: float) -> float:
    """The beta with ``p_k * power_mass(k, beta, k + 0.5, V + 0.5) = rest`` (60 bisections of [0, 64])."""
    if p_k * power_mass(k, 0.0, k + 0.5, vocab_size + 0.5) <= rest:
        return 0.0
    lo, hi = 0.0, 64.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if p_k * power_mass(k, mid, k + 0.5, vocab_size + 0.5) > rest else (lo, mid)
    return (lo + hi) / 2


def zipf_tail_nll(pos: Position, weights, vocab_size: int, ratio: float, mass_floor: float) -> float:
    """NLL of the actual token under ``zipf-tail``: power-law ranks for missing tokens and the tail."""
    support = union_run(pos)
    bins = tail_bins(vocab_size - len(support), ratio)
    scores = {t: 0.0 for t in support}
    tail = [math.log(b - a) for a, b in bins]
    for m, d in enumerate(pos.lists):
        w = weights[m]
        k, kth = len(d), min(d.values())
        p_k = math.exp(kth)
        unlisted_target = pos.target not in d
        target_p = math.exp(pos.target_lp[m]) if unlisted_target else 0.0
        rest = max(1.0 - sum(math.exp(v) for v in d.values()), mass_floor)
        beta = fit_exponent(k, vocab_size, p_k, rest)

        def best_other(t):
            return max(o[t] for r, o in enumerate(pos.lists) if r != m and t in o)

        missing = sorted((t for t in support[1:] if t not in d), key=lambda t: -best_other(t))
        miss = {t: p_k * power_mass(k, beta, k + q + 0.5, k + q + 1.5) for q, t in enumerate(missing)}
        first = k + len(missing) + unlisted_target
        bin_mass = [p_k * power_mass(k, beta, first + a - 0.5, first + b - 0.5) for a, b in bins]
        scale = max(rest - target_p, mass_floor) / (sum(miss.values()) + sum(bin_mass))
        for t in support:
            v = pos.target_lp[m] if t == pos.target else d[t] if t in d else math.log(miss[t] * scale)
            scores[t] += 0.0 if w == 0 else w * v
        for j, ((a, b), mass) in enumerate(zip(bins, bin_mass, strict=True)):
            tail[j] += w * math.log(mass / (b - a) * scale)
    return logsumexp([*scores.values(), *tail]) - scores[pos.target]


def calibrated_tail_nll(pos: Position, weights, drops, vocab_size: int, ratio: float, mass_floor: float) -> float:
    """NLL of the actual token under ``calibrated-tail`` with fitted ``drops`` (a ``MissingDrops``).

    Each union token some list misses becomes one pseudo-token per node of its listed-by mask,
    valued ``k-th - drop`` where missing, with the node's probability as multiplicity.
    """
    support = union_run(pos)
    n_models = len(pos.lists)
    listed_by = {t: sum(1 << m for m, d in enumerate(pos.lists) if t in d) for t in support}
    full = (1 << n_models) - 1
    kth = [min(d.values()) for d in pos.lists]
    nodes = [q for q in range(drops.log_weight.shape[1])]

    shift = [0.0] * n_models  # set below, before any node value is read
    cands = [(list(pos.target_lp), 0.0)]  # (values per model, log multiplicity)
    bins = tail_bins(vocab_size - len(support), ratio)
    tail = [[0.0] * n_models for _ in bins]
    for m, d in enumerate(pos.lists):
        k = len(d)
        p_k = math.exp(kth[m])
        target_p = math.exp(pos.target_lp[m]) if pos.target not in d else 0.0
        missing = [t for t in support[1:] if t not in d]
        missing_mass = sum(
            math.exp(drops.log_weight[listed_by[t], q] + kth[m] - drops.drop[listed_by[t], q, m])
            for t in missing for q in nodes if drops.log_weight[listed_by[t], q] > -math.inf
        )
        listed = sum(math.exp(v) for v in d.values())
        rest = 1.0 - listed - target_p
        if missing_mass > 0 and rest - missing_mass < mass_floor:  # lower the missing values together
            shift[m] = math.log(max(rest - mass_floor, mass_floor) / missing_mass)
        rest -= missing_mass * math.exp(shift[m])
        beta = fit_exponent(k, vocab_size, p_k, max(1.0 - listed, mass_floor))
        first = k + len(missing) + (pos.target not in d)
        bin_mass = [p_k * power_mass(k, beta, first + a - 0.5, first + b - 0.5) for a, b in bins]
        scale = max(rest, mass_floor) / sum(bin_mass)
        for j, ((a, b), mass) in enumerate(zip(bins, bin_mass, strict=True)):
            tail[j][m] = math.log(mass / (b - a) * scale)

    def node_values(t, q):
        return [d[t] if t in d else kth[m] - drops.drop[listed_by[t], q, m] + shift[m] for m, d in enumerate(pos.lists)]

    for t in support[1:]:
        if listed_by[t] == full:
            cands.append(([d[t] for d in pos.lists], 0.0))
        else:
            cands += [(node_values(t, q), drops.log_weight[listed_by[t], q]) for q in nodes
                      if drops.log_weight[listed_by[t], q] > -math.inf]
    cands += [(v, math.log(b - a)) for v, (a, b) in zip(tail, bins, strict=True)]

    def score(values, log_mult):
        return log_mult + sum(0.0 if w == 0 else w * v for w, v in zip(weights, values, strict=True))

    scores = [score(v, lm) for v, lm in cands]
    return logsumexp(scores) - scores[0]


def union_candidates(positions: list[Position], vocab_size: int = GPT2_VOCAB_SIZE) -> UnionCandidates:
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


def random_positions(seed: int, n: int, *, vocab: int = 12, k: int = 4, n_models: int = 3) -> list[Position]:
    """Positions drawn from real softmax distributions over a small vocabulary (float32 values)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        lists, target_lp = [], []
        target = int(rng.integers(vocab))
        for _ in range(n_models):
            logits = rng.normal(scale=rng.uniform(0.5, 4.0), size=vocab)
            lp = (logits - np.logaddexp.reduce(logits)).astype(np.float32)
            top = np.argsort(-lp, kind="stable")[: int(rng.integers(1, k + 1))]
            lists.append({int(t): float(lp[t]) for t in top})
            target_lp.append(float(lp[target]))
        out.append(Position(tuple(lists), target, tuple(target_lp)))
    return out
