"""Drawing a calibration sample: n of N positions, stratified with proportional allocation.

Each stratum (a split and a context-length bucket, say) gets its share ``n * N_h / N`` of the
sample, rounded by largest remainder so the shares add up to ``n``, and its positions are drawn
without replacement at random within it. Every position then has about the same chance
``n / N`` of being drawn, so a plain mean over the sample (``engine.correction``) stays an
unbiased estimate of the mean over the positions, and the strata's proportions are met exactly
rather than by luck (a variance reduction over a simple random sample, never an increase).
"""

from __future__ import annotations

import numpy as np

__all__ = ["proportional_allocation", "stratified_sample"]


def proportional_allocation(sizes: np.ndarray, n: int) -> np.ndarray:
    """int64 ``(H,)``: how many of ``n`` draws each of H strata of ``sizes`` (int ``(H,)``) gets:
    ``n * N_h / N`` rounded by largest remainder (ties to the earlier stratum), at most ``N_h``."""
    sizes = np.asarray(sizes, dtype=np.int64)
    total = int(sizes.sum())
    n = min(int(n), total)
    if n <= 0:
        return np.zeros(sizes.size, dtype=np.int64)
    exact = sizes * (n / total)
    share = np.floor(exact).astype(np.int64)
    remainder = exact - share
    extra = np.argsort(-remainder, kind="stable")[: n - int(share.sum())]
    share[extra] += 1
    return share


def stratified_sample(strata: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """int64 ascending indexes of ``n`` of the positions labelled ``strata`` (any integer
    ``(N,)``), drawn with proportional allocation per label (all of them when ``n >= N``)."""
    strata = np.asarray(strata)
    labels, inverse = np.unique(strata, return_inverse=True)
    share = proportional_allocation(np.bincount(inverse, minlength=labels.size), n)
    rng = np.random.default_rng(seed)
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(np.bincount(inverse, minlength=labels.size))])
    chosen = [rng.choice(order[starts[h] : starts[h + 1]], size=int(share[h]), replace=False)
              for h in range(labels.size) if share[h]]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)
