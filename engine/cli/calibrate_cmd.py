"""``approxft calibrate``: fit the calibrated-tail estimator on a deep sample, store it with the store."""

from __future__ import annotations

import argparse
import sys
import time

from ..calibration.full import full_sample_dir
from ..dataset import open_dataset


def model_file(text: str) -> tuple[str, str]:
    """``"grimm-big=top1000_big.npz"`` -> ``("grimm-big", "top1000_big.npz")`` (argparse type)."""
    model, sep, path = text.rpartition("=")
    if not sep or not model or not path:
        raise argparse.ArgumentTypeError(f"expected MODEL=FILE, got {text!r}")
    return model, path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate",
        help="fit the calibrated-tail estimator on a deep sample and store the fit with the store",
        description="Read a calibration sample (deeper top-K lists for some positions: one .npz per "
        "model with ids, lp, target_lp, plus token_strings.json, as in data/grimm/deep or the deep/ "
        "folder of approxft collect), match it to the store's positions (by its request/position "
        "arrays, else the first n scored val positions), fit calibrated-tail's missing-value "
        "distributions at the store's k, and write them atomically to "
        "STORE/calibration/<big>+<tuned>+<untuned>.json (<model>+<model>+....json for a blend of any "
        "models given by --model, in its term order). With it, calibrated-tail becomes the "
        "default estimator for blends of these models in this order (zipf-tail without one). Where the sample "
        "holds whole distributions (approxft collect --calibration N --calibration-k all), it is "
        "stored with the store too (STORE/calibration/<models>.full/), and the sampled correction "
        "over the best top-k estimator, with its 95% interval, becomes the default. Each role "
        "(or --model) takes the store's model name and its file in DIR.",
        epilog="Example: approxft calibrate grimm.store --deep data/grimm/deep "
        "--big grimm-big=top1000_big.npz --tuned grimm-small-tuned=top1000_small_tuned.npz "
        "--untuned grimm-small=top1000_small.npz (or --model MODEL=FILE once per model of a blend, in its order)",
    )
    p.add_argument("store", metavar="STORE", help="store directory written by `approxft ingest`")
    p.add_argument("--deep", required=True, metavar="DIR", help="the deep sample's folder")
    p.add_argument("--big", type=model_file, metavar="MODEL=FILE", help="the big model and its .npz")
    p.add_argument("--tuned", type=model_file, metavar="MODEL=FILE", help="the small fine-tuned model and its .npz")
    p.add_argument("--untuned", type=model_file, metavar="MODEL=FILE", help="the small untuned model and its .npz")
    p.add_argument("--model", type=model_file, action="append", metavar="MODEL=FILE",
                   help="instead of the roles: one model of a blend and its .npz; repeat it for each, in the "
                   "blend's term order")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    ds = open_dataset(args.store)
    roles = (args.big, args.tuned, args.untuned)
    if args.model and any(roles):
        raise ValueError("give the models by --model or by the role flags, not both")
    if not args.model and not all(roles):
        raise ValueError("give --big, --tuned and --untuned, or --model MODEL=FILE once per model")
    roles = args.model or roles
    fit, full = ds.calibrate(args.deep, models=[m for m, _ in roles], files=[f for _, f in roles])
    if fit is not None:
        print(f"fitted calibrated-tail at k = {fit.k} on {fit.positions} (depth {fit.depth}); wrote {fit.path} "
              f"in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    if full is not None:
        left = full.leaves_out()
        if fit is None:
            print(f"no calibrated-tail fit: {', '.join(f'{m} has top-{k} lists' for m, k in full.partial.items())}, "
                  "no deeper than the store's", file=sys.stderr)
        default = ds.default_estimator(full.models)
        print(f"stored the full-distribution sample ({full.n_positions} positions) with the store: the default "
              f"estimator is now {default}" + (f"; it leaves out {left}" if left else ""), file=sys.stderr)
    print(fit.path if fit is not None else full_sample_dir(ds.store.path, full.models))
    return 0
