"""``tune``: search a blend's parameters on ``val`` by one method, then report the best blend on
every split (what ``approxft tune`` prints, as a table or as JSON)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from ..blend import BATCH, Blend
from ..bootstrap import with_document_intervals
from ..correction import CorrectedBlend, UpperEnd
from ..masked_blend import MaskedBlend, masked_blend
from ..masks import Mask
from ..params import Parametrization, get_parametrization
from ..report import Report, blend_json
from .newton import newton_search
from .tpe import Progress, tpe_search

if TYPE_CHECKING:
    from ..distributed import Cluster

__all__ = ["METHODS", "OBJECTIVES", "WIDE_INTERVAL", "FEW_SAMPLED", "Tuned", "tune"]

METHODS = ("tpe", "newton")
OBJECTIVES = ("estimate", "upper")
"""What tuning minimizes: the blend's estimate, or the upper end of its 95% interval (a corrected
blend only, TPE only)."""
TUNING_SPLIT = "val"
WIDE_INTERVAL = 0.02
"""A tuned blend's val interval wider than this (half-width over the figure) gets a warning: the
full-distribution sample barely constrains the estimate there (2%: the issue's error target)."""
FEW_SAMPLED = 100
"""Fewer sampled positions than this in the tuning split get a warning: the interval is not to be
trusted on so few (``python -m bench.correction``: 91% coverage at 100 positions, 93% at 300)."""


@dataclass(frozen=True)
class Tuned:
    """The best blend a search found and its report on every split.

    Attributes:
        method: ``tpe`` or ``newton``.
        parametrization: the parametrization the optimum is expressed in.
        params: float64 ``(P,)``, the optimum in it (None where it has no expression).
        weights: float64 ``(N,)``, the optimum's log-linear weights, one per model.
        report: the blend's figures at the optimum (an estimate, under the blend's estimator).
        models: the blend's models, in term order (the weights' order).
        trials: complete TPE trials in the study (0 for Newton).
        seconds: wall time of the search (the report not included).
        min_context: the least context of a position tuned on.
        details: method-specific figures (TPE: the study; Newton: passes, iterations, convergence).
        objective: ``estimate`` or ``upper`` (``OBJECTIVES``).
        warnings: what the user should know about the optimum's figures (a wide interval).
        mask: the plausibility mask tuned under (``MaskedBlend.describe``), None without one.
    """

    method: str
    parametrization: Parametrization
    params: np.ndarray | None
    weights: np.ndarray
    report: Report
    models: tuple[str, ...]
    trials: int
    seconds: float
    min_context: int
    details: dict[str, Any]
    objective: str = "estimate"
    warnings: tuple[str, ...] = ()
    mask: dict[str, Any] | None = None

    def as_json(self) -> dict[str, Any]:
        """``approxft tune --format json``: ``best`` (a blend object, ``engine.report.blend_json``,
        with its ``mask`` where it has one),
        the method, trials, seconds, what was tuned on, and the method's details."""
        params = None if self.params is None else self.parametrization.describe(self.params)
        best = blend_json(self.report, models=self.models, parametrization=self.parametrization.name, params=params)
        if self.mask:
            best["mask"] = self.mask
        return {"best": best, "method": self.method, "objective": self.objective, "trials": self.trials,
                "seconds": self.seconds, "tuned_on": {"split": TUNING_SPLIT, "min_context": self.min_context},
                "warnings": list(self.warnings), **self.details}


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
    objective: str = "estimate",
    fixed: Mapping[str, float] | None = None,
    mask: Mask | None = None,
    mask_floor: float | None = None,
    cluster: Cluster | None = None,
) -> Tuned:
    """Tune ``blend`` on ``val`` with ``method`` and report the optimum, with its intervals (the
    estimator's where it has one, and over documents) and warnings.

    TPE takes ``trials``, ``batch``, ``seed``, ``storage``, ``study_name`` and ``progress``
    (``engine.tuning.tpe.tpe_search``); Newton finds the exact optimum of the log-linear weights
    and expresses it in ``parametrization`` where it can (``engine.tuning.newton``). ``objective``
    ``upper`` minimizes the upper end of a corrected blend's 95% interval instead (TPE).
    ``fixed`` holds some parameters at a value (TPE searches the rest; Newton takes none: it
    finds all N weights). A formula with a mask (``dexperts``, ``contrastive``), or ``mask`` on a
    blend given by its weights, restricts the blend's support while the rest is tuned (its mask
    parameters are fixed, at their defaults unless ``fixed``); ``mask_floor`` is the NLL charged
    where the mask drops the target: without one, tuning refuses a split where it does.
    ``cluster``: a Ray cluster to run the kernels on (``engine.distributed``), the blend
    distributed once masked (a blend distributed already takes no mask).

    Raises:
        ValueError: unknown method, objective or parametrization, storage options for Newton,
            ``upper`` without a corrected blend or with Newton, ``fixed`` with Newton, or what the
            search raises.
    """
    blend = _masked(blend, parametrization, fixed, mask, mask_floor)
    if cluster is not None:
        blend = cluster.distribute(blend)
    target = _objective(blend, objective, method)
    start = time.perf_counter()
    if method == "tpe":
        found = tpe_search(target, parametrization, trials=trials, batch=batch, seed=seed, split=TUNING_SPLIT,
                           min_context=min_context, storage=storage, study_name=study_name, progress=progress,
                           fixed=fixed)
        param, params, n_trials = found.parametrization, found.params, found.trials
        details: dict[str, Any] = {"study": found.study_name}
    elif method == "newton":
        if storage or study_name or fixed:
            raise ValueError("--storage, --study and --fix apply to --method tpe only (Newton finds every weight)")
        found = newton_search(blend, split=TUNING_SPLIT, min_context=min_context, parametrization=parametrization)
        param, params, n_trials = found.parametrization, found.params, 0
        details = {"passes": found.passes, "iterations": found.iterations, "converged": found.converged,
                   "loglinear_weights": found.weights.tolist()}
    else:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    seconds = time.perf_counter() - start
    report = with_document_intervals([blend.evaluate(found.weights)], blend.document_sums(found.weights))[0]
    return Tuned(method=method, parametrization=param, params=params, weights=found.weights, report=report,
                 models=tuple(blend.models), trials=n_trials, seconds=seconds,
                 min_context=min_context, details=details, objective=objective,
                 warnings=_warnings(blend, report, min_context),
                 mask=blend.describe() if isinstance(blend, MaskedBlend) else None)


def _masked(blend: Blend, parametrization: str, fixed: Mapping[str, float] | None, mask: Mask | None,
            mask_floor: float | None) -> Blend:
    """``blend`` under the formula's mask or ``mask`` (checked before any trial runs)."""
    param = get_parametrization(parametrization, len(blend.models))
    own = (param.with_fixed(fixed) if fixed else param).search_mask(tuple(blend.models))
    if own is not None and mask is not None:
        raise ValueError(f"parametrization {param.name!r} brings its own mask; --mask applies to a blend given by its weights")
    mask = own or mask
    if mask is None:
        if mask_floor is not None:
            raise ValueError("--mask-floor applies to a masked blend (--mask, or a formula with a mask: dexperts, "
                             "contrastive)")
        return blend
    masked = masked_blend(blend, mask, floor=mask_floor)
    dropped = masked.targets_outside().get(TUNING_SPLIT, 0)
    if dropped and mask_floor is None:
        raise ValueError(f"mask {mask.describe()} drops the target at {dropped:,} {TUNING_SPLIT} positions: their NLL is "
                         "infinite at any weights, so there is nothing to tune; give --mask-floor NLL to charge a floor "
                         "there (the prototype charged 30 nats)")
    return masked


def _objective(blend: Blend, objective: str, method: str):
    """What the search minimizes (``OBJECTIVES``), checked before any trial runs."""
    if objective == "estimate":
        return blend
    if objective != "upper":
        raise ValueError(f"unknown objective {objective!r}; known: {', '.join(OBJECTIVES)}")
    if not isinstance(blend, CorrectedBlend):
        raise ValueError(f"--objective upper needs an interval to minimize the upper end of: estimator {blend.estimator!r} "
                         "has none (a corrected estimator needs a full-distribution sample: approxft collect "
                         "--calibration N --calibration-k all, then approxft calibrate)")
    if method != "tpe":
        raise ValueError("--objective upper needs --method tpe: the interval's upper end has no Hessian for Newton")
    return UpperEnd(blend)


def _warnings(blend: Blend, report: Report, min_context: int) -> tuple[str, ...]:
    """Where the full-distribution sample barely constrains the optimum's estimate: a val interval
    wider than ``WIDE_INTERVAL``, or fewer than ``FEW_SAMPLED`` sampled positions tuned on."""
    if not isinstance(blend, CorrectedBlend):
        return ()
    out = []
    interval = report.interval.get(TUNING_SPLIT)
    value = report.splits[TUNING_SPLIT].perplexity
    if interval is not None and (interval[1] - interval[0]) / 2 / value > WIDE_INTERVAL:
        half = (interval[1] - interval[0]) / 2 / value
        out.append(f"the optimum's {TUNING_SPLIT} interval [{interval[0]:.2f}, {interval[1]:.2f}] is +-{100 * half:.1f}% "
                   "wide: the full-distribution sample barely constrains the estimate there")
    group, _ = blend.dataset.tuning_positions(TUNING_SPLIT, min_context)
    sampled = int((group[blend.sample.rows] >= 0).sum())
    if sampled < FEW_SAMPLED:
        out.append(f"only {sampled} positions of the full-distribution sample are in {TUNING_SPLIT}: it barely constrains "
                   "the estimate, and its interval is not to be trusted on so few")
    if out:
        out[-1] += "; a larger sample (approxft collect --calibration N) would say more"
    return tuple(out)
