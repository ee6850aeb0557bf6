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
        "STORE/calibration/<big>+<tuned>+<untuned>.json. With it, calibrated-tail becomes the "
        "default estimator for blends of these three models (zipf-tail without one). Where the sample "
        "holds whole distributions (approxft collect --calibration N --calibration-k all), it is "
        "stored with the store too (STORE/calibration/<models>.full/), and the sampled correction "
        "over the best top-k estimator, with its 95% interval, becomes the default. Each role "
        "takes the store's model name and its file in DIR.",
        epilog="Example: approxft calibrate grimm.store --deep data/grimm/deep "
        "--big grimm-big=top1000_big.npz --tuned grimm-small-tuned=top1000_small_tuned.npz "
        "--untuned grimm-small=top1000_small.npz",
    )
    p.add_argument("store", metavar="STORE", help="store directory written by `approxft ingest`")
    p.add_argument("--deep", required=True, metavar="DIR", help="the deep sample's folder")
    p.add_argument("--big", required=True, type=model_file, metavar="MODEL=FILE", help="the big model and its .npz")
    p.add_argument("--tuned", required=True, type=model_file, metavar="MODEL=FILE",
                   help="the small fine-tuned model and its .npz")
    p.add_argument("--untuned", required=True, type=model_file, metavar="MODEL=FILE",
                   help="the small untuned model and its .npz")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    ds = open_dataset(args.store)
    roles = (args.big, args.tuned, args.untuned)
    fit, full = ds.calibrate(args.deep, models=[m for m, _ in roles], files=[f for _, f in roles])
    if fit is not None:
        print(f"fitted calibrated-tail at k = {fit.k} on {fit.positions} (depth {fit.depth}); wrote {fit.path} "
              f"in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    if full is not None:
        left = full.leaves_out()
        if fit is None:
            print(f"no calibrated-tail fit: {', '.join(f'{m} has top-{k} lists' for m, k in full.partial.items())}, "
                  "no deeper than the store's", file=sys.stderr)
        default = ds.default_estimator(**dict(zip(("big", "tuned", "untuned"), full.models, strict=True)))
        print(f"stored the full-distribution sample ({full.n_positions} positions) with the store: the default "
              f"estimator is now {default}" + (f"; it leaves out {left}" if left else ""), file=sys.stderr)
    print(fit.path if fit is not None else full_sample_dir(ds.store.path, full.models))
    return 0
