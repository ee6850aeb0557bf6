"""``approxft eval``: every model's exact perplexity and one blend's estimate (or every estimator's)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..dataset import Dataset, Report, open_dataset
from ..estimators import CALIBRATED_ESTIMATOR, ESTIMATORS, FALLBACK_ESTIMATOR
from ..estimators.bounds import nll_bounds
from ..params import Parametrization, get_parametrization
from .output import emit_csv, emit_json, render_table, report_json, report_rows


def parse_floats(text: str) -> list[float]:
    """``"1,1,-1"`` -> ``[1.0, 1.0, -1.0]`` (argparse type)."""
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


ALL_ESTIMATORS = "all"
"""``--estimator all``: evaluate the blend under every registered estimator, side by side."""


def add_blend_arguments(p: argparse.ArgumentParser, *, allow_all: bool = False) -> None:
    """The model-role options shared by the commands that build a blend (``allow_all``: accept
    ``--estimator all``)."""
    p.add_argument("--big", required=True, metavar="MODEL", help="the big model")
    p.add_argument("--tuned", required=True, metavar="MODEL", help="the small fine-tuned model")
    p.add_argument("--untuned", required=True, metavar="MODEL", help="the small untuned base model")
    choices = [*sorted(ESTIMATORS), *([ALL_ESTIMATORS] if allow_all else [])]
    p.add_argument(
        "--estimator", default=None, choices=choices,
        help=f"how missing values and unlisted mass are estimated (default: {CALIBRATED_ESTIMATOR} where the "
        f"store has a calibration fit for these three models, from `approxft calibrate`; {FALLBACK_ESTIMATOR} "
        "otherwise" + (f"; {ALL_ESTIMATORS}: every estimator the store allows side by side, with bounds)"
                       if allow_all else ")"),
    )


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate every model and one blend on a store",
        description="Print each stored model's exact perplexity per split (from the exact target "
        "log-probabilities) and the estimated perplexity of one blend. The blend is given as "
        "log-linear weights (a_big, a_tuned, a_untuned) or as the prototype's temperatures "
        "(T_big, T_tuned, T_untuned[, w]); default: proxy-tuning weights 1,1,-1. With --estimator all, "
        "the blend is estimated by every estimator, one row (or JSON entry) each.",
        epilog="Example: approxft eval grimm.store --big grimm-big --tuned grimm-small-tuned "
        "--untuned grimm-small --weights 1,1,-1 --format json (add --estimator all to compare estimators)",
    )
    p.add_argument("store", metavar="STORE", help="store directory written by `approxft ingest`")
    add_blend_arguments(p, allow_all=True)
    how = p.add_mutually_exclusive_group()
    how.add_argument("--weights", type=parse_floats, metavar="aB,aT,aU", help="log-linear weights")
    how.add_argument("--temps", type=parse_floats, metavar="TB,TT,TU[,w]", help="the prototype's temperatures")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table", help="output format (default: table)")
    p.set_defaults(run=run)


def blend_spec(args: argparse.Namespace) -> tuple[str, list[float]]:
    """(parametrization name, parameters) from ``--weights`` / ``--temps``."""
    if args.temps is not None:
        return "seed", args.temps
    return "loglinear", args.weights if args.weights is not None else [1.0, 1.0, -1.0]


@dataclass(frozen=True)
class Evaluation:
    """What ``eval`` computed: every model's exact report and the blend's estimated report(s)."""

    models: list[Report]
    blends: list[Report]
    """One report per estimator asked for, in registry order for ``--estimator all``."""
    roles: dict[str, str]
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
    """Under ``--estimator all``: the lower and upper bounds (``engine.estimators.bounds``)."""

    @property
    def blend(self) -> Report:
        """The blend's report (the first estimator's under ``--estimator all``)."""
        return self.blends[0]

    def as_json(self) -> dict[str, Any]:
        """The ``eval`` JSON: ``models`` -> model -> splits, and ``blend``: one blend object, or
        under ``--estimator all`` a mapping from estimator name to such an object."""
        blends = {r.estimator: self._blend_json(r) for r in self.blends}
        return {
            "models": {r.name: {**report_json(r), "unobserved_targets": self.unobserved[r.name]} for r in self.models},
            "blend": blends if self.all_estimators else blends[self.blend.estimator],
            **({"bounds": {"lower": report_json(self.bounds[0]), "upper": report_json(self.bounds[1])}}
               if self.bounds else {}),
        }

    def _blend_json(self, report: Report) -> dict[str, Any]:
        return {
            "models": self.roles,
            "parametrization": self.parametrization.name,
            "params": self.parametrization.describe(self.params),
            "weights": report.weights.tolist(),
            "estimator": report.estimator,
            "estimate": True,
            **report_json(report),
        }

    def blend_label(self, report: Report | None = None) -> str:
        report = self.blend if report is None else report
        values = ",".join(f"{v:g}" for v in self.parametrization.complete(self.params))
        default = " (default)" if self.all_estimators and report.estimator == self.default_estimator else ""
        return f"blend {self.parametrization.name}({values}), estimate: {report.estimator}{default}"


def evaluate(ds: Dataset, args: argparse.Namespace) -> Evaluation:
    """Evaluate the stored models and the blend that ``args`` describe."""
    name, params = blend_spec(args)
    param = get_parametrization(name)
    roles = {"big": args.big, "tuned": args.tuned, "untuned": args.untuned}
    default = ds.default_estimator(**roles)
    if args.estimator == ALL_ESTIMATORS:
        names = ds.usable_estimators(**roles)
    else:
        names = [args.estimator or default]
    blends = [ds.blend(**roles, estimator=n) for n in names]
    weights = param.weights(params)
    return Evaluation(
        models=[ds.model_report(m) for m in ds.models],
        blends=[b.evaluate(weights) for b in blends],
        roles=dict(zip(("big", "tuned", "untuned"), blends[0].models, strict=True)),
        parametrization=param,
        params=list(params),
        unobserved=ds.unobserved_targets(),
        default_estimator=default,
        all_estimators=args.estimator == ALL_ESTIMATORS,
        skipped=tuple(n for n in ESTIMATORS if args.estimator == ALL_ESTIMATORS and n not in names),
        bounds=blend_bounds(ds, blends[0].models, weights) if args.estimator == ALL_ESTIMATORS else None,
    )


def blend_bounds(ds: Dataset, models: tuple[str, ...], weights) -> tuple[Report, Report]:
    """Reports of the smallest and largest blend perplexity consistent with the data."""
    lower, upper = nll_bounds(ds.union_candidates(models), weights)
    reports = []
    for name, nll in (("lower bound", lower[0]), ("upper bound", upper[0])):
        sums = np.bincount(ds.group, weights=nll, minlength=ds.n_groups)
        splits, by_context = ds.report(sums, ds.group)
        reports.append(Report(name=name, estimator="bounds", weights=np.asarray(weights, dtype=np.float64),
                              splits=splits, by_context=by_context))
    return reports[0], reports[1]


def run(args: argparse.Namespace) -> int:
    ds = open_dataset(args.store)
    result = evaluate(ds, args)
    for name in result.skipped:
        print(f"note: {name} left out: {args.store} has no calibration fit for these models "
              "(approxft calibrate makes one)", file=sys.stderr)
    if args.format == "json":
        emit_json(result.as_json())
        return 0
    splits = ds.splits
    header = ["", *(f"ppl {s}" for s in splits), *(f"bpb {s}" for s in splits)]
    rows = [report_rows(r.name, r, splits) for r in result.models]
    rows += [report_rows(result.blend_label(r), r, splits) for r in result.blends]
    if result.bounds:
        rows += [report_rows(f"blend, {r.name} (any tail consistent with the data)", r, splits) for r in result.bounds]
    if args.format == "csv":
        emit_csv(header, rows)
    else:
        print(render_table(header, rows))
    for model, n in result.unobserved.items():
        if n:
            print(f"note: {model}: {n:,} of {ds.n_positions:,} positions have no observed target value "
                  "(next-token collection, the actual token outside the top-k); its figures leave them out")
    return 0
