"""Every estimator against the deep reference: the Grimm calibration sample's top-1000 lists, and
the data card's exact proxy-tuning figures (``python -m bench.estimators`` prints these tables
after the exact ones of ``bench.exact``).

The tables:
1. Relative error of the blend perplexity at k = 5, 20, 100 against the deep reference, over a
   grid of weight vectors (``GRID_SIZE`` random ones with weight sums 0.5-1.5, plus the named
   points), per estimator: median, 90th percentile, signed median, and how far the grid point
   the estimator thinks best lies from the reference's best (in reference perplexity).
   Two-fold cross-validation over the 2,000 deep positions: ``calibrated-tail`` is fitted on one
   half and measured on the other, and so is every estimator (errors pooled over both folds).
2. The named points at k = 20.
3. ``calibrated-tail``'s error at k = 20 against the size and depth of its calibration sample,
   and when fitted at one k and used at another.
4. End to end: the proxy-tuning blend on the full bundled data (top-20) against the exact
   full-vocabulary perplexity of the data card, per estimator.

The reference ("deep") is ``zipf-tail`` on the full top-1000 lists: even 1,000 entries leave
some mass out (a median of about 6% for grimm-big), so the table also shows how much the other
tail treatments disagree with it at depth 1000, a floor on what any comparison here can resolve.
The reference is itself an estimate: these tables measure agreement, not error (``bench.exact``
measures error, against exact figures).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np

from engine.bundled import (
    EXACT_PROXY_TUNING,
    GRIMM,
    GRIMM_DEEP_FILES,
    bundled_data_dir,
    cached_store,
)
from engine.calibration.fit import fit_missing_drops
from engine.calibration.sample import CalibrationSample
from engine.candidates import UnionCandidates
from engine.dataset import Dataset, open_dataset
from engine.demo import PROXY_TUNING
from engine.estimators import ESTIMATORS, calibrated_tail, prototype
from engine.kernels import blend_nll
from engine.params import ROLES

from . import grid
from .grid import KS, NAMED
from .markdown import markdown, pct

GRID_SIZE = 120
REFERENCE = "zipf-tail"
SAMPLE_SIZES = (50, 200, 500, 1000)
SAMPLE_DEPTHS = (100, 300, 1000)


def weight_grid(n: int = GRID_SIZE, seed: int = 0) -> np.ndarray:
    """float64 ``(4 + n, 3)``: the named points, then ``n`` random weight vectors with sums
    uniform in 0.5-1.5 (a_big in 0.4-1.2, a_tuned in 0-1.5, a_untuned in -2-0.3)."""
    return grid.weight_grid(n, a_big=(0.4, 1.2), a_tuned=(0.0, 1.5), a_untuned=(-2.0, 0.3), seed=seed)


def grimm_deep_sample(ds: Dataset, data_dir: Path) -> CalibrationSample:
    """The bundled calibration sample: the first 2,000 scored val positions, top-1000 lists,
    matched to the store as ``approxft calibrate`` does."""
    sample, _ = ds.calibration_sample(data_dir / "deep", models=[GRIMM[r] for r in ROLES],
                                      files=[GRIMM_DEEP_FILES[r] for r in ROLES])
    return sample


def deep_perplexity(build, data: UnionCandidates, weights: np.ndarray) -> np.ndarray:
    """float64 ``(B,)``: perplexity over all positions of ``data`` for each weight vector
    ``(B, M)``, with the candidate matrix that ``build`` (an estimator's build) makes."""
    m = build(data)
    nll = blend_nll(m.offsets, m.values, m.row_weights(weights), m.outside, m.outside_nll)
    return np.exp(nll.mean(axis=1))


def relative_errors(estimate: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``|estimate / reference - 1|`` per weight vector."""
    return np.abs(estimate / reference - 1.0)


def folds(n: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Two-fold split of ``n`` positions: [(fit A, measure B), (fit B, measure A)]."""
    perm = np.random.default_rng(seed).permutation(n)
    a, b = np.sort(perm[: n // 2]), np.sort(perm[n // 2 :])
    return [(a, b), (b, a)]


def builder(name: str, fit: CalibrationSample | None, k: int):
    """An estimator's build; ``calibrated-tail`` refitted on ``fit`` at list length ``k``."""
    if name != calibrated_tail.NAME or fit is None:
        return ESTIMATORS[name].build
    drops = fit_missing_drops(fit, k)
    return lambda data: calibrated_tail.build(data, drops)


def optimum_gap(estimate: np.ndarray, reference: np.ndarray) -> float:
    """Reference perplexity at the estimator's best grid point over the reference's best, minus 1."""
    return float(reference[np.argmin(estimate)] / reference.min() - 1.0)


def grid_errors(sample: CalibrationSample, grid: np.ndarray, names: list[str]) -> dict:
    """Per (estimator, k): pooled relative and signed errors over both folds, optimum gaps,
    named-point estimates; plus the references' disagreement at full depth."""
    out: dict = {"err": {}, "signed": {}, "gap": {}, "named": {}, "ref_named": [], "ref_spread": {}}
    for fit_rows, test_rows in folds(sample.n_positions):
        fit, test = sample.subset(fit_rows), sample.subset(test_rows)
        deep = test.union(test.depth)
        reference = deep_perplexity(ESTIMATORS[REFERENCE].build, deep, grid)
        out["ref_named"].append(reference[: len(NAMED)])
        for other in ("union-kth-tail", "spread-tail"):
            other_ppl = deep_perplexity(ESTIMATORS[other].build, deep, grid)
            out["ref_spread"].setdefault(other, []).append(relative_errors(other_ppl, reference))
        for k in KS:
            data = test.union(k)
            for name in names:
                ppl = deep_perplexity(builder(name, fit, k), data, grid)
                key = (name, k)
                out["err"].setdefault(key, []).append(relative_errors(ppl, reference))
                out["signed"].setdefault(key, []).append(ppl / reference - 1.0)
                out["gap"].setdefault(key, []).append(optimum_gap(ppl, reference))
                out["named"].setdefault(key, []).append(ppl[: len(NAMED)])
    return out


def sample_size_errors(sample: CalibrationSample, grid: np.ndarray, k: int = 20) -> list[list[str]]:
    """``calibrated-tail`` at k measured on fold B, fitted on n positions of fold A truncated to a depth."""
    fit_rows, test_rows = folds(sample.n_positions)[0]
    test = sample.subset(test_rows)
    reference = deep_perplexity(ESTIMATORS[REFERENCE].build, test.union(test.depth), grid)
    data = test.union(k)
    rng = np.random.default_rng(1)
    rows = []
    for depth in SAMPLE_DEPTHS:
        for n in SAMPLE_SIZES:
            pick = np.sort(rng.choice(fit_rows, size=min(n, fit_rows.size), replace=False))
            drops = fit_missing_drops(sample.subset(pick, depth), k)
            ppl = deep_perplexity(lambda d: calibrated_tail.build(d, drops), data, grid)
            err = relative_errors(ppl, reference)
            rows.append([str(n), str(depth), pct(np.median(err)), pct(np.quantile(err, 0.9)),
                         pct(optimum_gap(ppl, reference))])
    return rows


def cross_k_errors(sample: CalibrationSample, grid: np.ndarray) -> list[list[str]]:
    """``calibrated-tail`` fitted at one k and used at another (both folds pooled)."""
    rows = []
    for fit_k in KS:
        cells = [str(fit_k)]
        for k in KS:
            errs = []
            for fit_rows, test_rows in folds(sample.n_positions):
                test = sample.subset(test_rows)
                reference = deep_perplexity(ESTIMATORS[REFERENCE].build, test.union(test.depth), grid)
                drops = fit_missing_drops(sample.subset(fit_rows), fit_k)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # the k mismatch is the point here
                    errs.append(relative_errors(deep_perplexity(lambda d: calibrated_tail.build(d, drops),
                                                                test.union(k), grid), reference))
            e = np.concatenate(errs)
            cells.append(f"{pct(np.median(e))} / {pct(np.quantile(e, 0.9))}")
        rows.append(cells)
    return rows


def print_deep_tables(cache: Path) -> None:
    """Print this module's tables (markdown) for the bundled Grimm data."""
    t0 = time.perf_counter()
    data_dir = bundled_data_dir()
    ds = open_dataset(cached_store(data_dir, cache))
    sample = grimm_deep_sample(ds, data_dir)
    roles = {r: GRIMM[r] for r in ROLES}
    default = ds.default_estimator(**roles)
    grid = weight_grid()
    names = [n for n in ESTIMATORS if n != prototype.NAME] + [prototype.NAME]
    res = grid_errors(sample, grid, names)

    print(f"## Relative error against the deep reference ({REFERENCE} on the top-1000 lists)\n")
    print(f"{len(grid)} weight vectors ({len(NAMED)} named, {GRID_SIZE} random with weight sums 0.5-1.5), "
          f"{sample.n_positions} positions in two folds ({calibrated_tail.NAME} fitted on the other fold). "
          "'optimum': the reference perplexity at the estimator's best grid point over the reference's best "
          "(mean of the folds).\n")
    rows = []
    for name in names:
        for k in KS:
            e = np.concatenate(res["err"][name, k])
            s = np.concatenate(res["signed"][name, k])
            rows.append([name + (" (default)" if name == default else ""), str(k), pct(np.median(e)),
                         pct(np.quantile(e, 0.9)), pct(np.median(s), True), pct(np.mean(res["gap"][name, k]))])
    print(markdown(["estimator", "k", "median", "p90", "signed median", "optimum"], rows))
    spread = ", ".join(f"{o}: median {pct(np.median(e))}, p90 {pct(np.quantile(e, 0.9))}"
                       for o, e in ((o, np.concatenate(v)) for o, v in res["ref_spread"].items()))
    print(f"\nOther tail treatments against the reference at depth 1000 (the resolution of this table): {spread}.\n")

    print("## Named points at k = 20 (perplexity over the deep positions, both folds averaged)\n")
    ref_named = np.mean(res["ref_named"], axis=0)
    rows = [[label, f"{ref_named[j]:.1f}", *(f"{np.mean(res['named'][n, 20], axis=0)[j]:.1f}" for n in names)]
            for j, label in enumerate(NAMED)]
    print(markdown(["weights", "deep reference", *names], rows))

    print(f"\n## {calibrated_tail.NAME} at k = 20 against the calibration sample's size and depth\n")
    print("Fitted on n positions of one fold, lists truncated to the depth; measured on the other fold.\n")
    print(markdown(["positions", "depth", "median", "p90", "optimum"], sample_size_errors(sample, grid)))

    print(f"\n## {calibrated_tail.NAME} fitted at one k, used at another (median / p90 error)\n")
    print(markdown(["fitted at k", *(f"used at k = {k}" for k in KS)], cross_k_errors(sample, grid)))

    print("\n## End to end: proxy-tuning (1, 1, -1) on the full bundled data (top-20)\n")
    rows = []
    for name in names:
        report = ds.blend(**roles, estimator=name).evaluate(PROXY_TUNING)
        cells = []
        for split, exact in EXACT_PROXY_TUNING.items():
            ppl = report.splits[split].perplexity
            cells += [f"{ppl:.2f}", pct(ppl / exact - 1, True)]
        rows.append([name, *cells])
    rows.append(["exact (data card)", f"{EXACT_PROXY_TUNING['val']:.2f}", "", f"{EXACT_PROXY_TUNING['test']:.2f}", ""])
    print(markdown(["estimator", "val", "error", "test", "error"], rows))
    print(f"\n({time.perf_counter() - t0:.0f} s)")
