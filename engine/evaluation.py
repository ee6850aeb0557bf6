"""``evaluate``: every stored model's exact figures and one blend's estimate, under one estimator
or all of them side by side with the bounds (what ``approxft eval`` prints); every figure but the
bounds with its bootstrap interval over documents (``engine.bootstrap``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .blend import Blend
from .bootstrap import with_document_intervals
from .dataset import Dataset
from .estimators import ESTIMATORS
from .estimators.bounds import nll_bounds
from .masked_blend import MaskedBlend, masked_blend
from .masks import Mask
from .params import ROLES, Parametrization, get_parametrization
from .report import Report, blend_json, report_json
from .terms import blend_models, format_blend

if TYPE_CHECKING:
    from .distributed import Cluster

__all__ = ["ALL_ESTIMATORS", "Evaluation", "evaluate", "bound_reports"]

ALL_ESTIMATORS = "all"
"""``--estimator all``: evaluate the blend under every estimator the store allows, side by side."""


@dataclass(frozen=True)
class Evaluation:
    """Every model's exact report and the blend's estimated report(s)."""

    models: list[Report]
    blends: list[Report]
    """One report per estimator asked for, in registry order for ``--estimator all``."""
    terms: tuple[str, ...]
    """The blend's models, in term order (the weights' order)."""
    parametrization: Parametrization
    params: list[float]
    unobserved: dict[str, int]
    """Per model, positions without an exact target value (next-token collection): left out of
    the model's figures."""
    default_estimator: str
    """The store's default estimator for these models (``Dataset.default_estimator``)."""
    all_estimators: bool = False
    skipped: tuple[str, ...] = ()
    """Under ``--estimator all``: estimators left out for want of a calibration fit."""
    bounds: tuple[Report, Report] | None = None
    """Under ``--estimator all``: the lower and upper bounds (``bound_reports``; none for a masked
    blend)."""
    mask: dict[str, Any] | None = None
    """The blend's plausibility mask (``MaskedBlend.describe``), None without one."""
    mask_note: str | None = None
    """One line on what the mask drops (``MaskedBlend.note``)."""

    @property
    def blend(self) -> Report:
        """The blend's report (the first estimator's under ``--estimator all``)."""
        return self.blends[0]

    def as_json(self) -> dict[str, Any]:
        """The ``eval`` JSON: ``models`` -> model -> splits, and ``blend``: one blend object, or
        under ``--estimator all`` a mapping from estimator name to such an object."""
        params = self.parametrization.describe(self.params)
        blends = {r.estimator: {**blend_json(r, models=self.terms, parametrization=self.parametrization.name,
                                             params=params), **({"mask": self.mask} if self.mask else {})}
                  for r in self.blends}
        return {
            "models": {r.name: {**report_json(r), "unobserved_targets": self.unobserved[r.name]} for r in self.models},
            "blend": blends if self.all_estimators else blends[self.blend.estimator],
            **({"bounds": {"lower": report_json(self.bounds[0]), "upper": report_json(self.bounds[1])}}
               if self.bounds else {}),
        }

    def blend_label(self, report: Report | None = None) -> str:
        """A table row's label for a blend report: its parameters and estimator."""
        report = self.blend if report is None else report
        values = ",".join(f"{v:g}" for v in self.parametrization.complete(self.params))
        default = " (default)" if self.all_estimators and report.estimator == self.default_estimator else ""
        name = (format_blend(self.terms, report.weights.tolist()) if len(self.terms) != len(ROLES)
                else f"{self.parametrization.name}({values})")
        m = self.mask
        masked = f" [mask {m['rule']}:{m['model']}={m['value']:g}]" if m else ""
        return f"blend {name}{masked}, estimate: {report.estimator}{default}"


def evaluate(
    ds: Dataset,
    models: Sequence[str] | None = None,
    *,
    big: str | None = None,
    tuned: str | None = None,
    untuned: str | None = None,
    parametrization: str,
    params: Sequence[float],
    estimator: str | None = None,
    cluster: Cluster | None = None,
    mask: Mask | None = None,
    mask_floor: float | None = None,
) -> Evaluation:
    """Evaluate the stored models and one blend of ``models`` (in term order; or ``big``, ``tuned``
    and ``untuned``, the three roles' shorthand).

    Args:
        parametrization, params: the blend's parameters (``engine.params``): ``loglinear`` and
            one weight per model, or a named formula of three models.
        estimator: a registry name, ``ALL_ESTIMATORS``, or None for the store's default.
        cluster: a Ray cluster to run the blends' kernels on (``engine.distributed``), or None.
        mask: a plausibility mask on a blend given by its weights (a formula such as
            ``dexperts`` brings its own); ``mask_floor``: the NLL charged where it drops the
            target (None: infinite, and counted).

    Raises:
        ValueError: unknown model (naming its term), a model in two terms, an unknown estimator
            or parametrization, parameters outside its domain, a mask on a model not in the
            blend, or a mask on an estimator that cannot take one.
    """
    terms = ds.require_blend(blend_models(models, big=big, tuned=tuned, untuned=untuned))
    param = get_parametrization(parametrization, len(terms))
    weights = param.weights(params)
    default = ds.default_estimator(terms)
    every = estimator == ALL_ESTIMATORS
    names = ds.usable_estimators(terms) if every else [estimator or default]
    blends = [ds.blend(terms, estimator=n) for n in names]
    formula_mask = param.mask(params, terms)
    if mask is not None and formula_mask is not None:
        raise ValueError(f"parametrization {param.name!r} brings its own mask; --mask applies to a blend given by its weights")
    mask = mask or formula_mask
    if mask_floor is not None and mask is None:
        raise ValueError("--mask-floor applies to a masked blend (--mask, or a formula with a mask: dexperts, contrastive)")
    if mask is not None:
        blends = [masked_blend(b, mask, floor=mask_floor) for b in blends]
    first = blends[0]
    models = [ds.model_report(m) for m in ds.models]
    return Evaluation(
        models=with_document_intervals(models, ds.model_document_sums(ds.models)),
        # One distributed blend at a time: each holds its workers' CPUs until it is dropped.
        blends=[_blend_report(cluster.distribute(b) if cluster else b, weights) for b in blends],
        terms=terms,
        parametrization=param,
        params=list(params),
        unobserved=ds.unobserved_targets(),
        default_estimator=default,
        all_estimators=every,
        skipped=tuple(n for n in ESTIMATORS if every and n not in names),
        bounds=bound_reports(ds, blends[0].models, weights) if every and mask is None else None,
        mask=first.describe() if isinstance(first, MaskedBlend) else None,
        mask_note=first.note() if isinstance(first, MaskedBlend) else None,
    )


def _blend_report(blend: Blend, weights: np.ndarray) -> Report:
    """A blend's report at ``weights`` ``(N,)``, with its bootstrap intervals over documents."""
    with np.errstate(invalid="ignore"):  # a mask's infinite NLL: the interval over documents is NaN
        return with_document_intervals([blend.evaluate(weights)], blend.document_sums(weights))[0]


def bound_reports(ds: Dataset, models: Sequence[str], weights: Sequence[float] | np.ndarray) -> tuple[Report, Report]:
    """Reports of the smallest and largest blend perplexity consistent with the top-k data alone
    (``engine.estimators.bounds``), for one weight vector ``(N,)`` of a blend of ``models``;
    their ``estimator`` is ``"bounds"``."""
    w = np.asarray(weights, dtype=np.float64)
    lower, upper = nll_bounds(ds.union_candidates(models), w)
    reports = []
    for name, nll in (("lower bound", lower[0]), ("upper bound", upper[0])):
        splits, by_context = ds.report(np.bincount(ds.whole.group, weights=nll, minlength=ds.n_groups))
        reports.append(Report(name=name, estimator="bounds", weights=w, splits=splits, by_context=by_context,
                              interval_kind="none: a bound that holds for every completion of the top-k data"))
    return reports[0], reports[1]
