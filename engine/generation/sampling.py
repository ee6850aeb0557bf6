"""Sampling one token from a blend's next-token distribution: renormalize over the real tokens,
apply temperature and top-p, and let one uniform draw pick (reproducible from the draw alone).

Sampling order is the real tokens by blended probability, descending (ties: candidate order);
the draw ``u`` picks the first token whose cumulative probability exceeds ``u``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SAMPLING_NOTE", "sampling_probs", "draw"]

SAMPLING_NOTE = ("pseudo-tokens (the estimator's mass outside the listed tokens) are never sampled: "
                 "the real tokens' blended probabilities are renormalized, then temperature and top-p apply")


def sampling_probs(logprob: np.ndarray, *, temperature: float, top_p: float) -> np.ndarray:
    """Sampling probabilities float64 ``(n,)`` from blended log-probabilities of the real tokens:
    renormalized over them, sharpened by ``temperature`` (0: the most probable token), cut to the
    smallest set holding ``top_p`` of the mass."""
    finite = np.isfinite(logprob)
    if not finite.any():
        raise ValueError("no candidate has a finite blended probability")
    p = np.zeros(logprob.size)
    if temperature == 0:
        p[int(np.argmax(np.where(finite, logprob, -np.inf)))] = 1.0
        return p
    scaled = np.where(finite, logprob / temperature, -np.inf)
    p = np.exp(scaled - scaled.max())
    p /= p.sum()
    if top_p < 1:
        order = np.argsort(-p, kind="stable")
        keep = np.searchsorted(np.cumsum(p[order]), top_p) + 1
        p[order[keep:]] = 0.0
        p /= p.sum()
    return p


def draw(p: np.ndarray, u: float) -> int:
    """The token index that uniform ``u`` in [0, 1) picks from ``p`` (descending order, stable)."""
    order = np.argsort(-p, kind="stable")
    cum = np.cumsum(p[order])
    return int(order[min(int(np.searchsorted(cum, u * cum[-1], side="right")), p.size - 1)])
