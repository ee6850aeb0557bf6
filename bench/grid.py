"""The weight vectors the estimator benchmarks measure at: named points and a seeded random grid.

``bench.deep_reference`` (Grimm) and ``bench.exact`` (the testbed) both draw from here; each
chooses its own ranges.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from engine.demo import PROXY_TUNING

__all__ = ["KS", "NAMED", "weight_grid"]

KS = (5, 20, 100)
NAMED = {
    "big alone (1, 0, 0)": (1.0, 0.0, 0.0),
    "proxy-tuning (1, 1, -1)": PROXY_TUNING,
    "prototype temps (1/1.67, 1/2.23, -1/8.83)": (1 / 1.67, 1 / 2.23, -1 / 8.83),
    "(1, 0.5, -0.5)": (1.0, 0.5, -0.5),
}


def weight_grid(
    n: int,
    *,
    named: Mapping[str, tuple[float, float, float]] = NAMED,
    a_big: tuple[float, float],
    a_tuned: tuple[float, float],
    a_untuned: tuple[float, float],
    seed: int = 0,
) -> np.ndarray:
    """float64 ``(len(named) + n, 3)``: the named points, then ``n`` random weight vectors
    (a_big, a_tuned, a_untuned) with sums uniform in 0.5-1.5, a_big and a_tuned uniform in their
    ranges, and a_untuned (the rest of the sum) kept when inside its range."""
    rng = np.random.default_rng(seed)
    out: list[list[float]] = []
    while len(out) < n:
        total, big, tuned = rng.uniform(0.5, 1.5), rng.uniform(*a_big), rng.uniform(*a_tuned)
        untuned = total - big - tuned
        if a_untuned[0] <= untuned <= a_untuned[1]:
            out.append([big, tuned, untuned])
    return np.array([*named.values(), *out], dtype=np.float64)
