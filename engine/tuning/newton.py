"""Exact log-linear weights by Newton's method.

For a fixed estimator the blend's mean NLL is a log-sum-exp of affine functions of the weights
minus an affine function, hence convex in them: Newton with a backtracking line search reaches
the global optimum in a handful of kernel passes, each returning the NLL, its gradient and its
Hessian together (``Objective.mean_nll_grad_hess``: a ``Blend``'s estimate, or the oracle's exact
figures).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..params import Parametrization, get_parametrization
from .objective import Objective

__all__ = ["NewtonResult", "newton_search"]

_SLACK = 1e-7
"""Relative increase of the mean NLL the line search tolerates: the fast kernel's NLL is exact
to about 1e-6 per position, so near the optimum a true decrease can read as a tiny increase."""


@dataclass(frozen=True)
class NewtonResult:
    """The optimum found.

    Attributes:
        weights: float64 ``(N,)``, the optimal log-linear weights (one per model of the blend).
        parametrization: the parametrization asked for, or ``loglinear`` where the optimum has
            no expression in it (e.g. temperatures need a_big > 0, a_tuned > 0, a_untuned < 0).
        params: the optimum in that parametrization, float64 ``(P,)``.
        mean_nll: mean NLL at the optimum on the tuning positions, nats.
        gradient_norm: the gradient's Euclidean norm there.
        iterations: Newton steps taken.
        passes: kernel passes (each Newton step and each line-search trial is one).
        converged: whether the Newton decrement fell below the tolerance.
        seconds: wall time.
    """

    weights: np.ndarray
    parametrization: Parametrization
    params: np.ndarray
    mean_nll: float
    gradient_norm: float
    iterations: int
    passes: int
    converged: bool
    seconds: float


def newton_search(
    blend: Objective,
    *,
    split: str = "val",
    min_context: int = 1,
    parametrization: str = "loglinear",
    start: Sequence[float] | None = None,
    tol: float = 1e-9,
    max_iter: int = 50,
) -> NewtonResult:
    """Minimize the blend's mean NLL over log-linear weights on one split.

    Args:
        blend: the blend (its estimator is the one optimized under), or any ``Objective``.
        split, min_context: the positions tuned on.
        parametrization: what to express the optimum in (see ``NewtonResult.parametrization``).
        start: the starting weights ``(N,)`` (default: the first model alone, ``(1, 0, ..., 0)``).
        tol: stop when the Newton decrement ``g·H⁻¹g / 2`` (the predicted distance to the
            optimum's mean NLL, nats) falls below this.
        max_iter: the most Newton steps.

    Raises:
        ValueError: unknown parametrization (or one for another number of models), an empty split,
            or a non-finite NLL at ``start``.
    """
    began = time.perf_counter()
    n = len(blend.models)
    target = get_parametrization(parametrization, n)
    passes = 0

    def evaluate(w: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        # Every pass returns the derivatives too, so an accepted line-search point needs no
        # second pass.
        nonlocal passes
        passes += 1
        return blend.mean_nll_grad_hess(w, split=split, min_context=min_context)

    w = np.eye(1, n)[0] if start is None else np.asarray(start, dtype=np.float64)
    f, g, h = evaluate(w)
    if not math.isfinite(f):
        raise ValueError(f"the mean NLL is not finite at the starting weights {w.tolist()}")
    converged = False
    iterations = 0
    while iterations < max_iter:
        step = _newton_step(g, h)
        decrement = float(-g @ step) / 2
        if decrement < tol:
            converged = True
            break
        iterations += 1
        t = 1.0
        while True:  # backtracking (Armijo) line search
            f_new, g_new, h_new = evaluate(w + t * step)
            if f_new <= f - 0.5 * t * decrement + _SLACK * abs(f) or t < 1e-10:
                break
            t *= 0.5
        w, f, g, h = w + t * step, f_new, g_new, h_new
    params = target.from_weights(w)
    if params is None:
        target, params = get_parametrization("loglinear", n), w.copy()
    return NewtonResult(
        weights=w,
        parametrization=target,
        params=params,
        mean_nll=f,
        gradient_norm=float(np.linalg.norm(g)),
        iterations=iterations,
        passes=passes,
        converged=converged,
        seconds=time.perf_counter() - began,
    )


def _newton_step(g: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Solve ``H d = -g``; a convex NLL's Hessian is positive semi-definite, so a tiny ridge makes
    a singular one (e.g. two identical models) solvable and keeps ``d`` a descent direction."""
    ridge = 1e-12 * max(1.0, float(np.trace(h)))
    return np.linalg.solve(h + ridge * np.eye(h.shape[0]), -g)
