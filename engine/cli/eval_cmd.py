"""``approxft eval``: every model's exact perplexity and one blend's estimate (or every estimator's)."""

from __future__ import annotations

import argparse
import sys

from ..evaluation import evaluate
from ..params import PARAMETRIZATIONS
from .options import (
    add_blend_arguments,
    add_mask_arguments,
    add_ray_arguments,
    add_stream_argument,
    blend_terms,
    open_for,
    parse_floats,
    ray_cluster,
)
from .output import (
    csv_header,
    csv_row,
    emit_csv,
    emit_json,
    interval_notes,
    print_notes,
    render_table,
    report_header,
    report_rows,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate every model and one blend on a store",
        description="Print each stored model's exact perplexity per split (from the exact target "
        "log-probabilities) and the estimated perplexity of one blend. The blend is any number of "
        "models with their weights (--blend or --term), or three models in roles (--big, --tuned, "
        "--untuned) with log-linear weights (a_big, a_tuned, a_untuned), the prototype's temperatures "
        "(T_big, T_tuned, T_untuned[, w]) or a named formula (--formula); default: proxy-tuning "
        "weights 1,1,-1. With --estimator all, the blend is estimated by every estimator, one row (or "
        "JSON entry) each.",
        epilog="Example: approxft eval grimm.store --big grimm-big --tuned grimm-small-tuned "
        "--untuned grimm-small --weights 1,1,-1 --format json (add --estimator all to compare estimators; "
        "--ray HOST:6379 to run on a Ray cluster); approxft eval grimm.store --blend \"grimm-big + "
        "grimm-small-tuned - grimm-small + 0.5*grimm-big-tuned\"",
    )
    p.add_argument("store", metavar="STORE", help="store directory written by `approxft ingest`")
    add_blend_arguments(p, allow_all=True)
    how = p.add_mutually_exclusive_group()
    how.add_argument("--weights", type=parse_floats, metavar="aB,aT,aU", help="log-linear weights")
    how.add_argument("--temps", type=parse_floats, metavar="TB,TT,TU[,w]", help="the prototype's temperatures")
    how.add_argument("--formula", metavar="NAME[=P1,P2,...]",
                     help=f"a named formula ({', '.join(PARAMETRIZATIONS)}) and its parameters (its defaults if left "
                     "out), e.g. proxy-tuning=1.5")
    add_mask_arguments(p)
    p.add_argument("--format", choices=("table", "json", "csv"), default="table", help="output format (default: table)")
    add_stream_argument(p)
    add_ray_arguments(p)
    p.set_defaults(run=run)


def _blend_spec(args: argparse.Namespace, weights: list[float] | None) -> tuple[str, list[float]]:
    """(parametrization name, parameters) from ``--weights`` / ``--temps`` / ``--formula``, or
    the weights of ``--blend`` / ``--term``."""
    given = [f for f in ("weights", "temps", "formula") if getattr(args, f) is not None]
    if weights is not None:
        if given:
            raise ValueError(f"--{given[0]} applies to the role flags: --blend and --term give each weight")
        return "loglinear", weights
    if args.temps is not None:
        return "temperatures", args.temps
    if args.formula is not None:
        name, sep, values = args.formula.partition("=")
        try:
            return name, parse_floats(values) if sep else []
        except argparse.ArgumentTypeError as err:
            raise ValueError(f"--formula {args.formula!r}: {err}") from None
    return "loglinear", args.weights if args.weights is not None else [1.0, 1.0, -1.0]


def run(args: argparse.Namespace) -> int:
    models, weights = blend_terms(args)
    parametrization, params = _blend_spec(args, weights)
    ds = open_for(args)
    with ray_cluster(args) as cluster:
        result = evaluate(ds, models, parametrization=parametrization, params=params, estimator=args.estimator,
                          cluster=cluster, mask=args.mask, mask_floor=args.mask_floor)
        ray = cluster.describe() if cluster else None
    for name in result.skipped:
        print(f"note: {name} left out: {args.store} has no calibration fit for these models "
              "(approxft calibrate makes one)", file=sys.stderr)
    if args.format == "json":
        emit_json({**result.as_json(), **({"ray": ray} if ray else {})})
        return 0
    splits = ds.splits
    labelled = [(r.name, r) for r in result.models] + [(result.blend_label(r), r) for r in result.blends]
    labelled += [(f"blend, {r.name} (any tail consistent with the data)", r) for r in result.bounds or ()]
    if args.format == "csv":
        emit_csv(csv_header(splits), [csv_row(label, r, splits) for label, r in labelled])
    else:
        print(render_table(report_header(splits), [report_rows(label, r, splits) for label, r in labelled]))
        print_notes(interval_notes([*result.blends, *(result.bounds or ())], ds.documents_per_split))
    if result.mask_note:
        print(f"note: {result.mask_note}", file=sys.stderr)
    for model, n in result.unobserved.items():
        if n:
            print(f"note: {model}: {n:,} of {ds.n_positions:,} positions have no observed target value "
                  "(next-token collection, the actual token outside the top-k); its figures leave them out")
    return 0
