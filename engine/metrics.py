"""Corpus metrics from sums of negative log-likelihoods (natural logs throughout).

Corpus perplexity is ``exp(total NLL / positions)`` over all scored positions of a slice, never
a mean of per-chunk perplexities; bits per byte divides the same total, converted to bits, by
the UTF-8 bytes of the scored tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Figures", "context_buckets", "bucket_labels"]


@dataclass(frozen=True)
class Figures:
    """Metrics of one slice (a split, a context-length bucket, ...).

    Attributes:
        positions: scored positions in the slice.
        nll_sum: their total negative log-likelihood, nats.
        n_bytes: UTF-8 bytes of their target tokens.
    """

    positions: int
    nll_sum: float
    n_bytes: int

    @property
    def mean_nll(self) -> float:
        """Mean NLL per position, nats (NaN for an empty slice)."""
        return self.nll_sum / self.positions if self.positions else math.nan

    @property
    def perplexity(self) -> float:
        """``exp(mean NLL)``; NaN for an empty slice, inf where the NLL is infinite."""
        m = self.mean_nll
        return math.exp(m) if m < 709.0 else (math.inf if m == m else math.nan)

    @property
    def bits_per_byte(self) -> float:
        """Total NLL in bits divided by the target tokens' UTF-8 bytes (NaN without bytes)."""
        return self.nll_sum / (math.log(2) * self.n_bytes) if self.n_bytes else math.nan

    def as_dict(self) -> dict[str, float | int]:
        return {
            "positions": self.positions,
            "perplexity": self.perplexity,
            "mean_nll": self.mean_nll,
            "bits_per_byte": self.bits_per_byte,
        }


def context_buckets(context: np.ndarray) -> np.ndarray:
    """Context-length bucket of each position: ``floor(log2(context))``.

    Args:
        context: int ``(n,)``, tokens of context (>= 1).

    Returns:
        int32 ``(n,)``: 0 for context 1, 1 for 2-3, 2 for 4-7, ...
    """
    c = np.asarray(context, dtype=np.int64)
    if c.size and c.min() < 1:
        raise ValueError("context lengths must be >= 1")
    return (np.floor(np.log2(np.maximum(c, 1)))).astype(np.int32)


def bucket_labels(n_buckets: int) -> list[tuple[int, int]]:
    """Inclusive ``(lo, hi)`` context lengths of buckets ``0 .. n_buckets-1``."""
    return [(1 << b, (1 << (b + 1)) - 1) for b in range(n_buckets)]
