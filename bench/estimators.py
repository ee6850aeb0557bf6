"""How wrong is each estimator? Measured against exact truth on the testbed, and against the deep
reference on the bundled Grimm data.

    python -m bench.estimators [--testbed DIR] [--cache DIR] [--only exact|deep]

Prints markdown tables: first ``bench.exact``'s (every estimator and k against the testbed's
exact oracle: errors over the weight grid, the named points, the tuned-blend regret, the
oracle's own cost), then ``bench.deep_reference``'s (the Grimm deep sample, which measures
agreement with a deeper estimate, not error).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from engine.estimators import ESTIMATORS, prototype

from .deep_reference import print_deep_tables
from .exact import KS, NAMED, ExactTables, exact_tables, weight_grid
from .markdown import markdown, pct
from .testbed.reader import TESTBED_DIR, open_testbed


def _names(default: str) -> list[str]:
    names = [n for n in ESTIMATORS if n != prototype.NAME] + [prototype.NAME]
    return [n + (" (default)" if n == default else "") for n in names]


def print_exact_tables(testbed: Path, cache: Path) -> ExactTables:
    """Print ``bench.exact``'s tables for the testbed in ``testbed``; returns what they show."""
    bundle, ds, oracle = open_testbed(testbed, cache)
    roles = bundle.blend_roles
    default = ds.default_estimator(**roles)
    grid = weight_grid()
    res = exact_tables(ds, oracle, bundle, testbed / "deep", grid=grid, cache=cache / "bench",
                       log=lambda line: print(f"bench.estimators: {line}", file=sys.stderr, flush=True))
    names = [n for n in ESTIMATORS if n != prototype.NAME] + [prototype.NAME]
    labels = dict(zip(names, _names(default), strict=True))
    positions = {s: int(ds.split_mask(s).sum()) for s in ds.splits}
    print(f"## Error against exact truth: the testbed's oracle ({testbed})\n")
    print(f"{len(grid)} weight vectors ({len(NAMED)} named, {len(grid) - len(NAMED)} random with weight sums 0.5-1.5 and "
          f"untuned weights down to -2.5); the error of each estimator's val and test perplexity against the exact "
          f"full-vocabulary figure, over {', '.join(f'{n:,} {s}' for s, n in positions.items())} positions. Top-k "
          "lists up to the store's k are the store's own (cut to k); deeper ones come from the models.\n")
    rows = []
    for name in names:
        for k in KS:
            e = res.errors(name, k)
            signed = np.concatenate([res.estimates[name, k][s] / res.exact[s] - 1 for s in res.exact])
            rows.append([labels[name], str(k), pct(np.median(e)), pct(np.quantile(e, 0.9)), pct(e.max()),
                         pct(np.median(signed), True)])
    print(markdown(["estimator", "k", "median", "p90", "worst", "signed median"], rows))

    print("\n## Named points, test perplexity: exact and each estimator at k = 20\n")
    rows = [[label, f"{res.exact['test'][j]:.2f}", *(f"{res.estimates[n, 20]['test'][j]:.2f}" for n in names)]
            for j, label in enumerate(NAMED)]
    print(markdown(["weights", "exact", *names], rows))

    opt = res.optimum
    print("\n## Tuned on val: the exact test perplexity at each estimator's optimum\n")
    print(f"The exact optimum (Newton on the oracle, val, {opt['passes']} passes): weights "
          f"{', '.join(f'{w:.3g}' for w in opt['weights'])}, val {opt['val']:.2f}, test {opt['test']:.2f}. "
          "'regret': the exact test perplexity at the estimator's optimum over the exact optimum's; 'report "
          "error': the estimator's own test figure there against the exact one. Newton searches the log-linear "
          "weights, TPE the prototype's temperatures (200 trials).\n")
    rows = []
    for (name, k, method), t in res.tuned.items():
        rows.append([labels[name], str(k), method, ", ".join(f"{w:.3g}" for w in t["weights"]), f"{t['test']:.2f}",
                     f"{t['exact_test']:.2f}", pct(t["exact_test"] / opt["test"] - 1, True),
                     pct(t["test"] / t["exact_test"] - 1, True)])
    print(markdown(["estimator", "k", "method", "optimum", "reported test", "exact test", "regret", "report error"],
                   rows))

    n_positions = ds.n_positions
    print("\n## The oracle's own cost\n")
    rows = [[stage, f"{sec:.1f} s"] for stage, sec in res.seconds.items()]
    per = res.seconds["oracle: the grid"] / (len(grid) * n_positions) * 1e6
    rows.append(["oracle: per weight vector and position (the grid)", f"{per:.2f} µs over {oracle.vocab_size:,} tokens"])
    print(markdown(["stage", "time"], rows))
    print()
    return res


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.estimators", description=__doc__.splitlines()[0])
    p.add_argument("--testbed", type=Path, default=TESTBED_DIR, help=f"testbed folder (default: {TESTBED_DIR})")
    p.add_argument("--cache", type=Path, default=Path(".approxft-cache"), help="store cache (as approxft demo)")
    p.add_argument("--only", choices=("exact", "deep"), default=None, help="print one part only")
    args = p.parse_args(argv)
    if args.only != "deep":
        print_exact_tables(args.testbed, args.cache)
    if args.only != "exact":
        print_deep_tables(args.cache)


if __name__ == "__main__":
    main()
