"""``approxft eval``: every model's exact perplexity and one blend's estimate."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from ..dataset import Dataset, Report, open_dataset
from ..estimators import DEFAULT_ESTIMATOR, ESTIMATORS
from ..params import Parametrization, get_parametrization
from .output import emit_csv, emit_json, render_table, report_json, report_rows


def parse_floats(text: str) -> list[float]:
    """``"1,1,-1"`` -> ``[1.0, 1.0, -1.0]`` (argparse type)."""
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def add_blend_arguments(p: argparse.ArgumentParser) -> None:
    """The model-role options shared by the commands that build a blend."""
    p.add_argument("--big", required=True, metavar="MODEL", help="the big model")
    p.add_argument("--tuned", required=True, metavar="MODEL", help="the small fine-tuned model")
    p.add_argument("--untuned", required=True, metavar="MODEL", help="the small untuned base model")
    p.add_argument(
        "--estimator", default=DEFAULT_ESTIMATOR, choices=sorted(ESTIMATORS),
        help=f"how missing values and unlisted mass are estimated (default: {DEFAULT_ESTIMATOR})",
    )


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate every model and one blend on a store",
        description="Print each stored model's exact perplexity per split (from the exact target "
        "log-probabilities) and the estimated perplexity of one blend. The blend is given as "
        "log-linear weights (a_big, a_tuned, a_untuned) or as the prototype's temperatures "
        "(T_big, T_tuned, T_untuned[, w]); default: proxy-tuning weights 1,1,-1.",
        epilog="Example: approxft eval grimm.store --big grimm-big --tuned grimm-small-tuned "
        "--untuned grimm-small --weights 1,1,-1 --format json",
    )
    p.add_argument("store", metavar="STORE", help="store directory written by `approxft ingest`")
    add_blend_arguments(p)
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
    """What ``eval`` computed: every model's exact report and one blend's estimated report."""

    models: list[Report]
    blend: Report
    roles: dict[str, str]
    parametrization: Parametrization
    params: list[float]

    def as_json(self) -> dict[str, Any]:
        """The ``eval`` JSON: ``models`` -> model -> splits, and ``blend``."""
        return {
            "models": {r.name: report_json(r) for r in self.models},
            "blend": {
                "models": self.roles,
                "parametrization": self.parametrization.name,
                "params": self.parametrization.describe(self.params),
                "weights": self.blend.weights.tolist(),
                "estimator": self.blend.estimator,
                "estimate": True,
                **report_json(self.blend),
            },
        }

    def blend_label(self) -> str:
        values = ",".join(f"{v:g}" for v in self.parametrization.complete(self.params))
        return f"blend {self.parametrization.name}({values}), estimate: {self.blend.estimator}"


def evaluate(ds: Dataset, args: argparse.Namespace) -> Evaluation:
    """Evaluate the stored models and the blend that ``args`` describe."""
    name, params = blend_spec(args)
    param = get_parametrization(name)
    blend = ds.blend(big=args.big, tuned=args.tuned, untuned=args.untuned, estimator=args.estimator)
    return Evaluation(
        models=[ds.model_report(m) for m in ds.models],
        blend=blend.evaluate(param.weights(params)),
        roles=dict(zip(("big", "tuned", "untuned"), blend.models, strict=True)),
        parametrization=param,
        params=list(params),
    )


def run(args: argparse.Namespace) -> int:
    ds = open_dataset(args.store)
    result = evaluate(ds, args)
    if args.format == "json":
        emit_json(result.as_json())
        return 0
    splits = ds.splits
    header = ["", *(f"ppl {s}" for s in splits), *(f"bpb {s}" for s in splits)]
    rows = [report_rows(r.name, r, splits) for r in result.models]
    rows.append(report_rows(result.blend_label(), result.blend, splits))
    if args.format == "csv":
        emit_csv(header, rows)
    else:
        print(render_table(header, rows))
    return 0
