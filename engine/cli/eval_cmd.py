"""``approxft eval``: every model's exact perplexity and one blend's estimate (or every estimator's)."""

from __future__ import annotations

import argparse
import sys

from ..evaluation import evaluate
from .options import (
    add_blend_arguments,
    add_ray_arguments,
    add_stream_argument,
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
        "log-probabilities) and the estimated perplexity of one blend. The blend is given as "
        "log-linear weights (a_big, a_tuned, a_untuned) or as the prototype's temperatures "
        "(T_big, T_tuned, T_untuned[, w]); default: proxy-tuning weights 1,1,-1. With --estimator all, "
        "the blend is estimated by every estimator, one row (or JSON entry) each.",
        epilog="Example: approxft eval grimm.store --big grimm-big --tuned grimm-small-tuned "
        "--untuned grimm-small --weights 1,1,-1 --format json (add --estimator all to compare estimators; "
        "--ray HOST:6379 to run on a Ray cluster)",
    )
    p.add_argument("store", metavar="STORE", help="store directory written by `approxft ingest`")
    add_blend_arguments(p, allow_all=True)
    how = p.add_mutually_exclusive_group()
    how.add_argument("--weights", type=parse_floats, metavar="aB,aT,aU", help="log-linear weights")
    how.add_argument("--temps", type=parse_floats, metavar="TB,TT,TU[,w]", help="the prototype's temperatures")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table", help="output format (default: table)")
    add_stream_argument(p)
    add_ray_arguments(p)
    p.set_defaults(run=run)


def _blend_spec(args: argparse.Namespace) -> tuple[str, list[float]]:
    """(parametrization name, parameters) from ``--weights`` / ``--temps``."""
    if args.temps is not None:
        return "temperatures", args.temps
    return "loglinear", args.weights if args.weights is not None else [1.0, 1.0, -1.0]


def run(args: argparse.Namespace) -> int:
    ds = open_for(args)
    parametrization, params = _blend_spec(args)
    with ray_cluster(args) as cluster:
        result = evaluate(ds, big=args.big, tuned=args.tuned, untuned=args.untuned, parametrization=parametrization,
                          params=params, estimator=args.estimator, cluster=cluster)
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
    for model, n in result.unobserved.items():
        if n:
            print(f"note: {model}: {n:,} of {ds.n_positions:,} positions have no observed target value "
                  "(next-token collection, the actual token outside the top-k); its figures leave them out")
    return 0
