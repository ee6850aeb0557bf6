"""``approxft demo``: the main job on the bundled Grimm data."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..bundled import EXACT_PROXY_TUNING, GRIMM
from ..demo import PROXY_TUNING, DemoResult, run_demo
from ..estimators import prototype
from ..report import gap_closed
from .output import fmt, render_table


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="evaluate the bundled Grimm data: every model, the proxy-tuning blend, a plot",
        description="Ingest data/grimm into a cache directory and calibrate calibrated-tail on its deep "
        "sample (once; see approxft calibrate), print each model's exact "
        "perplexity per split, the proxy-tuning blend (1, 1, -1) under every estimator beside the "
        "exact full-vocabulary figure from the data card, and write a PNG of perplexity against "
        "context length.",
        epilog="Example: approxft demo --cache /tmp/approxft-cache",
    )
    p.add_argument("--data", type=Path, default=None, help="data directory (default: the bundled data/grimm)")
    p.add_argument("--cache", type=Path, default=Path(".approxft-cache"), help="cache directory (default: .approxft-cache)")
    p.set_defaults(run=run)


def _relative_error(estimate: float, exact: float) -> str:
    ratio = estimate / exact
    return f"{100 * (ratio - 1):+.1f}%" if ratio < 10 else f"{ratio:,.0f}x"


def _gap_closed(value: float, big: float, reference: float) -> str:
    """Share of the gap between the big model and the big-tuned reference that ``value`` closes,
    in perplexity and in log-perplexity."""
    linear, log = gap_closed(value, big, reference)
    return f"{100 * linear:.1f}% / {100 * log:.1f}%"


def _print_tuning(result: DemoResult) -> None:
    models = {r.name: r for r in result.models}
    big, ref = models[GRIMM["big"]].splits["test"].perplexity, models[GRIMM["reference"]].splits["test"].perplexity
    estimator = result.tuned[0][1].estimator
    print(f"Tuned on val, reported on test (blends: estimate: {estimator}; models: exact)")
    rows = [[f"{name} (model)", fmt(r.splits["val"].perplexity), fmt(r.splits["test"].perplexity),
             _gap_closed(r.splits["test"].perplexity, big, ref)] for name, r in models.items()]
    rows += [[label, fmt(r.splits["val"].perplexity), fmt(r.splits["test"].perplexity),
              _gap_closed(r.splits["test"].perplexity, big, ref)] for label, r in result.tuned]
    print(render_table(["", "ppl val", "ppl test", "gap closed on test (ppl / log-ppl)"], rows))
    print(f"gap closed: how far from {GRIMM['big']} (0%) towards the fine-tuned {GRIMM['reference']} (100%).")


def run(args: argparse.Namespace) -> int:
    result = run_demo(data_dir=args.data, cache_dir=args.cache)
    splits = result.dataset.splits
    print("Models (exact: from each model's own log-probability of the actual token)")
    rows = [
        [r.name, *(fmt(r.splits[s].perplexity) for s in splits), *(fmt(r.splits[s].bits_per_byte, 3) for s in splits),
         f"{100 * result.outside_topk[r.name]:.0f}%"]
        for r in result.models
    ]
    header = ["model", *(f"ppl {s}" for s in splits), *(f"bpb {s}" for s in splits), "target outside top-k"]
    print(render_table(header, rows))
    print()
    weights = ", ".join(f"{w:g}" for w in PROXY_TUNING)
    print(f"Proxy-tuning blend, weights (big, tuned, untuned) = ({weights}): estimates from the top-k data")
    rows = []
    for name, report in result.blends.items():
        cells = []
        for s in splits:
            ppl = report.splits[s].perplexity
            exact = EXACT_PROXY_TUNING.get(s)
            err = f" ({_relative_error(ppl, exact)})" if exact else ""
            cells.append(fmt(ppl) + err)
        rows.append([name + (" (default)" if name == result.default_estimator else ""), *cells])
    rows.append(["exact, full vocabulary (data card)", *(fmt(EXACT_PROXY_TUNING[s]) if s in EXACT_PROXY_TUNING else "-" for s in splits)])
    print(render_table(["estimator", *(f"ppl {s} (error vs exact)" for s in splits)], rows))
    print(f"{prototype.NAME}: the original prototype's estimator; it charges {-prototype.OUTSIDE_LP:g} nats wherever the")
    print("actual token is outside the big model's top-k list. The other estimators are described in the README.")
    print()
    _print_tuning(result)
    print()
    print(f"Wrote the perplexity-by-context plot (test split) to {result.plot}")
    print(f"Wrote the TPE optimization history plot to {result.history_plot}")
    return 0
