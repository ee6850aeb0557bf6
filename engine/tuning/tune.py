"""``tune``: search a blend's parameters on ``val`` by one method, then report the best blend on
every split (what ``approxft tune`` prints, as a table or as JSON)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..blend import BATCH, Blend
from ..params import ROLES, Parametrization
from ..report import Report, blend_json
from .newton import newton_search
from .tpe import Progress, tpe_search

__all__ = ["METHODS", "Tuned", "tune"]

METHODS = ("tpe", "newton")
TUNING_SPLIT = "val"


@dataclass(frozen=True)
class Tuned:
    """The best blend a search found and its report on every split.

    Attributes:
        method: ``tpe`` or ``newton``.
        parametrization: the parametrization the optimum is expressed in.
        params: float64 ``(P,)``, the optimum in it (None where it has no expression).
        weights: float64 ``(3,)``, the optimum's log-linear weights.
        report: the blend's figures at the optimum (an estimate, under the blend's estimator).
        models: role -> model name.
        trials: complete TPE trials in the study (0 for Newton).
        seconds: wall time of the search (the report not included).
        min_context: the least context of a position tuned on.
        details: method-specific figures (TPE: the study; Newton: passes, iterations, convergence).
    """

    method: str
    parametrization: Parametrization
    params: np.ndarray | None
    weights: np.ndarray
    report: Report
    models: dict[str, str]
    trials: int
    seconds: float
    min_context: int
    details: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        """``approxft tune --format json``: ``best`` (a blend object, ``engine.report.blend_json``),
        the method, trials, seconds, what was tuned on, and the method's details."""
        params = None if self.params is None else self.parametrization.describe(self.params)
        best = blend_json(self.report, models=self.models, parametrization=self.parametrization.name, params=params)
        return {"best": best, "method": self.method, "trials": self.trials, "seconds": self.seconds,
                "tuned_on": {"split": TUNING_SPLIT, "min_context": self.min_context}, **self.details}


def tune(
    blend: Blend,
    *,
    method: str,
    parametrization: str = "loglinear",
    min_context: int = 1,
    trials: int = 100,
    batch: int = BATCH,
    seed: int = 0,
    storage: str | None = None,
    study_name: str | None = None,
    progress: Progress | None = None,
) -> Tuned:
    """Tune ``blend`` on ``val`` with ``method`` and report the optimum.

    TPE takes ``trials``, ``batch``, ``seed``, ``storage``, ``study_name`` and ``progress``
    (``engine.tuning.tpe.tpe_search``); Newton finds the exact optimum of the log-linear weights
    and expresses it in ``parametrization`` where it can (``engine.tuning.newton``).

    Raises:
        ValueError: unknown method or parametrization, storage options for Newton, or what the
            search raises.
    """
    start = time.perf_counter()
    if method == "tpe":
        found = tpe_search(blend, parametrization, trials=trials, batch=batch, seed=seed, split=TUNING_SPLIT,
                           min_context=min_context, storage=storage, study_name=study_name, progress=progress)
        param, params, n_trials = found.parametrization, found.params, found.trials
        details: dict[str, Any] = {"study": found.study_name}
    elif method == "newton":
        if storage or study_name:
            raise ValueError("--storage and --study apply to --method tpe only")
        found = newton_search(blend, split=TUNING_SPLIT, min_context=min_context, parametrization=parametrization)
        param, params, n_trials = found.parametrization, found.params, 0
        details = {"passes": found.passes, "iterations": found.iterations, "converged": found.converged,
                   "loglinear_weights": found.weights.tolist()}
    else:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    seconds = time.perf_counter() - start
    return Tuned(method=method, parametrization=param, params=params, weights=found.weights,
                 report=blend.evaluate(found.weights), models=dict(zip(ROLES, blend.models, strict=True)),
                 trials=n_trials, seconds=seconds, min_context=min_context, details=details)
