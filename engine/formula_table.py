"""The published formulas side by side on one store: each at its default parameters and tuned on
val, with the big-tuned reference and a four-model blend (what ``approxft demo`` prints as its
comparison table, and the README shows).

Every row is a ``Report`` with its bootstrap interval over documents and the estimator it was
made under; the masked formulas also say how many targets their mask drops. Tuning: TPE over the
formula's tuned parameters (``TRIALS`` trials, seeded), Newton for the log-linear weights; a
masked formula is tuned with the prototype's floor of ``FLOOR`` nats where its mask drops a
target (its default row shows the unfloored figure: infinite where any target is dropped).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .bootstrap import with_document_intervals
from .dataset import Dataset
from .estimators import prototype
from .masked_blend import MaskedBlend, masked_blend
from .params import get_parametrization
from .report import Report
from .tuning import tune

__all__ = ["FormulaRow", "FORMULAS", "FLOOR", "TRIALS", "formula_rows"]

FORMULAS = ("proxy-tuning", "eft-upscale", "seed", "dexperts", "contrastive")
"""The named formulas of three roles compared, in table order (then ``loglinear``)."""

SEED_DEFAULT = (1.67, 2.23, 8.83)
"""``seed``'s default row: the prototype's published temperatures (it has no defaults of its own)."""

FLOOR = -prototype.OUTSIDE_LP
"""The NLL (nats) a tuned masked formula is charged where its mask drops the target: the
prototype's 30, labelled as a floor wherever it is used."""

TRIALS = 64
"""TPE trials per tuned formula (one or two parameters each)."""


@dataclass(frozen=True)
class FormulaRow:
    """One row of the comparison.

    Attributes:
        label: the formula and how its parameters were set (``default`` or ``tuned ...``).
        models: the blend's models, in term order (one model for the reference row).
        params: the parameters shown, by name (empty for the reference).
        report: the figures (an exact model report for the reference) with intervals over documents.
        mask: the mask's ``MaskedBlend.describe()``, None without one.
    """

    label: str
    models: tuple[str, ...]
    params: dict[str, float]
    report: Report
    mask: dict[str, Any] | None = None


def formula_rows(ds: Dataset, *, roles: Sequence[str], extra: str, trials: int = TRIALS) -> list[FormulaRow]:
    """The comparison on ``ds``: each of ``FORMULAS`` at its defaults and tuned, ``loglinear``
    tuned by Newton, the model ``extra`` alone (the reference), and the four-model blend
    ``roles + extra`` at weights (1, 1, -1, 1) and tuned by Newton. ``roles``: (big, tuned,
    untuned); every blend of them under the store's default estimator for them, the four-model
    one under the default for four."""
    roles = tuple(roles)
    rows = []
    for name in FORMULAS:
        param = get_parametrization(name)
        default = list(SEED_DEFAULT) if name == "seed" else []
        rows.append(_evaluated(ds, roles, f"{name}, default", name, default))
        masked = param.mask(param.complete(default), roles) is not None
        found = tune(ds.blend(roles), method="tpe", parametrization=name, trials=trials, seed=0,
                     mask_floor=FLOOR if masked else None)
        label = f"{name}, tuned (TPE, {trials} trials" + (f"; floor {FLOOR:g} nats)" if masked else ")")
        rows.append(FormulaRow(label, roles, param.describe(found.params), found.report, found.mask))
    newton = tune(ds.blend(roles), method="newton")
    rows.append(FormulaRow("loglinear, tuned (Newton)", roles, dict(zip(newton.parametrization.names,
                                                                         newton.weights.tolist(), strict=True)),
                           newton.report))
    reference = with_document_intervals([ds.model_report(extra)], ds.model_document_sums([extra]))[0]
    rows.append(FormulaRow(f"{extra} alone (reference, exact)", (extra,), {}, reference))
    four = (*roles, extra)
    rows.append(_evaluated(ds, four, "4 models, default (1, 1, -1, 1)", "loglinear", [1.0, 1.0, -1.0, 1.0]))
    newton4 = tune(ds.blend(four), method="newton")
    rows.append(FormulaRow("4 models, tuned (Newton)", four, dict(zip(newton4.parametrization.names,
                                                                       newton4.weights.tolist(), strict=True)),
                           newton4.report))
    return rows


def _evaluated(ds: Dataset, models: tuple[str, ...], label: str, name: str, params: list[float]) -> FormulaRow:
    """A formula's row at ``params`` (completed with its defaults), under its mask if it has one."""
    param = get_parametrization(name, len(models))
    p = param.complete(params)
    mask = param.mask(p, models)
    blend = ds.blend(models) if mask is None else masked_blend(ds.blend(models), mask)
    w = param.weights(p)
    with np.errstate(invalid="ignore"):  # a dropped target's infinite NLL: the interval is NaN
        report = with_document_intervals([blend.evaluate(w)], blend.document_sums(w))[0]
    return FormulaRow(label, models, param.describe(p), report,
                      blend.describe() if isinstance(blend, MaskedBlend) else None)
