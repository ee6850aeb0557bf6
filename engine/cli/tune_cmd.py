"""``approxft tune``: search blend parameters on ``val``, report them on ``test``."""

from __future__ import annotations

import argparse
import math
import sys

from ..blend import BATCH
from ..params import PARAMETRIZATIONS, Parametrization, get_parametrization
from ..tuning import METHODS, OBJECTIVES, tune
from .options import (
    add_blend_arguments,
    add_mask_arguments,
    add_ray_arguments,
    add_stream_argument,
    blend_terms,
    open_for,
    ray_cluster,
)
from .output import (
    emit_json,
    interval_notes,
    print_notes,
    render_table,
    report_header,
    report_rows,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tune",
        help="tune a blend on the val split (Optuna TPE or exact Newton) and report it on test",
        description="Search the blend's parameters to minimize mean NLL on the val split only, then "
        "report val and test perplexity of the best blend. --method tpe searches any "
        "parametrization with Optuna (seeded, in batches, resumable with --storage); --method "
        "newton finds the exact optimum of the log-linear weights (the NLL is convex in them) "
        "and maps it back to temperatures where it can. A blend of any number of models (--blend, "
        "--term) tunes its weights (loglinear): Newton all of them, TPE those not held by --fix.",
        epilog="Example: approxft tune grimm.store --big grimm-big --tuned grimm-small-tuned "
        "--untuned grimm-small --param temperatures --method tpe --trials 200 --storage study.journal "
        "(add --ray HOST:6379 to run on a Ray cluster); approxft tune grimm.store --blend \"grimm-big + "
        "grimm-small-tuned - grimm-small + 0.5*grimm-big-tuned\" --method tpe --fix grimm-big",
    )
    p.add_argument("store", metavar="STORE", help="store directory written by `approxft ingest`")
    add_blend_arguments(p)
    p.add_argument("--param", default="loglinear", choices=sorted(PARAMETRIZATIONS), help="parametrization (default: loglinear)")
    p.add_argument("--fix", action="append", metavar="NAME[=VALUE]",
                   help="TPE: hold a parameter at VALUE and search the rest; for loglinear, NAME may be a model of "
                   "the blend, VALUE then defaulting to its weight in --blend/--term (repeat for several)")
    p.add_argument("--method", default="tpe", choices=METHODS, help="search method (default: tpe)")
    p.add_argument("--trials", type=int, default=100, help="TPE: complete trials wanted in the study (default: 100)")
    p.add_argument("--batch", type=int, default=BATCH,
                   help=f"TPE: trials evaluated per kernel pass (default: {BATCH}, the kernel's vector lanes)")
    p.add_argument("--min-context", type=int, default=1, metavar="N",
                   help="tune only on positions with at least N tokens of context (the prototype used 25)")
    p.add_argument("--storage", default=None, metavar="URL",
                   help="TPE: a journal file path, or an RDB URL such as sqlite:///study.db (default: in memory)")
    p.add_argument("--study", default=None, metavar="NAME", help="TPE: study name (default: derived from --param and --estimator)")
    p.add_argument("--seed", type=int, default=0, help="TPE: sampler seed (default: 0)")
    p.add_argument("--objective", choices=OBJECTIVES, default="estimate",
                   help="minimize the blend's estimate (default) or the upper end of its 95%% interval (upper: a "
                   "corrected estimator, --method tpe)")
    add_mask_arguments(p)
    p.add_argument("--format", choices=("table", "json"), default="table", help="output format (default: table)")
    p.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
    add_stream_argument(p)
    add_ray_arguments(p)
    p.set_defaults(run=run)


def _progress_bar(quiet: bool):
    if quiet:
        return None

    def show(done: int, total: int, best: float) -> None:
        width = 30
        filled = int(width * done / total)
        best_ppl = f"{math.exp(best):,.2f}" if math.isfinite(best) else "-"
        print(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} trials, best val ppl {best_ppl}",
              end="" if done < total else "\n", file=sys.stderr, flush=True)

    return show


def _fixed(texts: list[str], param: Parametrization, models: tuple[str, ...], weights: list[float] | None
           ) -> dict[str, float]:
    """``--fix`` as ``{parameter: value}``: a loglinear blend's model names map to their weights'
    parameters, and take their ``--blend``/``--term`` weight where no VALUE is given."""
    out = {}
    for text in texts:
        name, sep, value = text.rpartition("=") if "=" in text else (text, "", "")
        term = models.index(name) if param.name == "loglinear" and name in models else None
        if param.name == "loglinear" and term is None and name not in param.names:
            raise ValueError(f"--fix {text!r}: {name!r} is neither a model of the blend ({', '.join(models)}) nor a "
                             f"weight ({', '.join(param.names)})")
        key = param.names[term] if term is not None else name
        if sep:
            try:
                out[key] = float(value)
            except ValueError:
                raise ValueError(f"--fix {text!r}: {value!r} is not a number") from None
        elif term is not None and weights is not None:
            out[key] = weights[term]
        else:
            raise ValueError(f"--fix {text!r}: give its value, NAME=VALUE (only a model of a --blend or --term "
                             "blend takes its weight there)")
    return out


def run(args: argparse.Namespace) -> int:
    models, weights = blend_terms(args)
    fixed = _fixed(args.fix or [], get_parametrization(args.param, len(models)), models, weights)
    ds = open_for(args)
    blend = ds.blend(models, estimator=args.estimator)
    with ray_cluster(args) as cluster:
        found = tune(blend, method=args.method, parametrization=args.param, min_context=args.min_context,
                     trials=args.trials, batch=args.batch, seed=args.seed, storage=args.storage, study_name=args.study,
                     progress=_progress_bar(args.quiet), objective=args.objective, fixed=fixed, mask=args.mask,
                     mask_floor=args.mask_floor, cluster=cluster)
        ray = cluster.describe() if cluster else None
    for warning in found.warnings:
        print(f"approxft tune: warning: {warning}", file=sys.stderr)
    if args.format == "json":
        emit_json({**found.as_json(), **({"ray": ray} if ray else {})})
        return 0
    report = found.report
    upper = ", minimizing the 95% upper end" if args.objective == "upper" else ""
    label = f"{args.method} best ({found.parametrization.name}{upper}), estimate: {report.estimator}"
    print(render_table(report_header(ds.splits), [report_rows(label, report, ds.splits)]))
    print_notes(interval_notes([report], ds.documents_per_split))
    if found.mask:
        m = found.mask
        print(f"note: tuned under mask {m['rule']}:{m['model']}={m['value']:g}; it drops the target at "
              + ", ".join(f"{n:,} {s}" for s, n in m["targets_outside"].items()) + " positions"
              + (f", each charged a floor of {m['floor']:g} nats" if m["floor"] is not None else ""), file=sys.stderr)
    params = found.parametrization.describe(found.params) if found.params is not None else None
    shown = params or {"(not expressible)": math.nan}
    print("params: " + ", ".join(f"{k}={v:.4g}" for k, v in shown.items())
          + "; weights: " + ", ".join(f"{w:.4g}" for w in found.weights) + f"; {found.seconds:.2f} s", file=sys.stdout)
    return 0
