"""The main job on the bundled Grimm data (``engine.bundled``): evaluate, compare, tune, plot.

``run_demo`` returns the numbers and paths it produced so tests can check them; the CLI prints.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .bootstrap import (
    DocumentSums,
    PairedDifference,
    paired_difference,
    with_document_intervals,
)
from .bundled import GRIMM, bundled_data_dir, cached_store
from .dataset import Dataset, open_dataset
from .formula_table import FormulaRow, formula_rows
from .params import ROLES, get_parametrization
from .plot import context_curves, draw_context_plot, draw_search_history
from .report import Report
from .tuning import newton_search, tpe_search

__all__ = ["DemoResult", "run_demo", "PROXY_TUNING"]

PROXY_TUNING = (1.0, 1.0, -1.0)

PUBLISHED_TEMPERATURES = (1.67, 2.23, 8.83)
"""The prototype's published tuned temperatures (T_big, T_tuned, T_untuned), w = 1."""

DEMO_TRIALS = 200


@dataclass(frozen=True)
class DemoResult:
    """What the demo computed.

    Attributes:
        dataset: the opened bundled dataset.
        models: each model's exact report.
        outside_topk: per model, the share of positions whose target is outside its top-k.
        blends: the proxy-tuning blend's report under each estimator the store allows.
        default_estimator: the store's default estimator for the Grimm roles.
        plot: where the perplexity-by-context PNG was written.
        tuned: ``(label, report)`` rows of the tuning table, all under the default estimator,
            tuned on val: the published temperatures, proxy-tuning, TPE, Newton (with their
            bootstrap intervals over documents, as the models' reports).
        versus_tuned: per tuned row, its test perplexity minus the small tuned model's, with
            the paired bootstrap interval over documents.
        history_plot: where the TPE optimization history PNG was written.
        formulas: the published formulas at their defaults and tuned, the big-tuned reference and
            a four-model blend (``engine.formula_table``).
    """

    dataset: Dataset
    models: list[Report]
    outside_topk: dict[str, float]
    blends: dict[str, Report]
    default_estimator: str
    plot: Path
    tuned: list[tuple[str, Report]]
    versus_tuned: list[PairedDifference]
    history_plot: Path
    formulas: list[FormulaRow]


def run_demo(*, data_dir: Path | None = None, cache_dir: Path = Path(".approxft-cache")) -> DemoResult:
    """Ingest the bundled data (once), evaluate every model and the proxy-tuning blend, plot."""
    ds = open_dataset(cached_store(data_dir or bundled_data_dir(), cache_dir))
    models = with_document_intervals([ds.model_report(m) for m in ds.models], ds.model_document_sums(ds.models))
    roles = {r: GRIMM[r] for r in ROLES}
    blends = {name: ds.blend(**roles, estimator=name).evaluate(PROXY_TUNING) for name in ds.usable_estimators(**roles)}
    default = ds.default_estimator(**roles)
    tuned, versus, history_plot = _tune(ds, roles, cache_dir)
    tuned_label = f"tuned blend, Newton (estimate: {default}; band: {_band(tuned[-1][1])})"
    curves = context_curves(
        [(r.name, r) for r in models]
        + [(f"proxy-tuning blend (estimate: {default})", blends[default]), (tuned_label, tuned[-1][1])],
        split="test",
    )
    plot = draw_context_plot(
        curves, cache_dir / "demo" / "perplexity-by-context.png",
        title="Grimm test split: perplexity by context length", bands=[tuned_label],
    )
    outside = {m: float(ds.target_outside_topk(m).mean()) for m in ds.models}
    return DemoResult(
        dataset=ds, models=models, outside_topk=outside, blends=blends, default_estimator=default, plot=plot,
        tuned=tuned, versus_tuned=versus, history_plot=history_plot,
        formulas=formula_rows(ds, roles=[GRIMM[r] for r in ROLES], extra=GRIMM["reference"]),
    )


def _tune(ds: Dataset, roles: dict[str, str], cache_dir: Path
          ) -> tuple[list[tuple[str, Report]], list[PairedDifference], Path]:
    """Tune on val with TPE (the prototype's temperatures) and Newton (log-linear weights); each
    row's bootstrap intervals over documents, and its paired difference from the small tuned model."""
    blend = ds.blend(**roles)
    temperatures = get_parametrization("temperatures")
    tpe = tpe_search(blend, "temperatures", trials=DEMO_TRIALS, seed=0)
    newton = newton_search(blend, parametrization="temperatures")
    temps = ", ".join(f"{t:g}" for t in PUBLISHED_TEMPERATURES)
    labelled = [
        (f"prototype's published temperatures ({temps})", temperatures.weights(PUBLISHED_TEMPERATURES)),
        ("proxy-tuning (1, 1, -1)", np.array(PROXY_TUNING)),
        (f"TPE, {tpe.trials} trials ({_temps(tpe.params)})", tpe.weights),
        (f"Newton, {newton.passes} passes ({_weights(newton.weights)})", newton.weights),
    ]
    weights = np.array([w for _, w in labelled])
    sums = blend.document_sums(weights)
    reports = with_document_intervals(blend.evaluate(weights), sums)
    small = ds.model_report(roles["tuned"])
    small_sums = ds.model_document_sums([roles["tuned"]])
    versus = [paired_difference(r, small, DocumentSums.stack(sums.row(f), small_sums), "test")
              for f, r in enumerate(reports)]
    history = draw_search_history(
        tpe.history, cache_dir / "demo" / "tpe-history.png",
        title=f"TPE over the prototype's temperatures, val split (estimate: {blend.estimator})",
        reference={"Newton optimum": float(np.exp(newton.mean_nll))},
    )
    return [(label, r) for (label, _), r in zip(labelled, reports, strict=True)], versus, history


def _band(report: Report) -> str:
    """What the plot's bands of a tuned blend's curve are."""
    return ("95% interval, darker; over documents, lighter" if report.interval
            else "95% over documents; no estimator interval")


def _temps(params: np.ndarray) -> str:
    return "T = " + ", ".join(f"{t:.3g}" for t in params[:3])


def _weights(weights: np.ndarray) -> str:
    return "a = " + ", ".join(f"{a:.3g}" for a in weights)
