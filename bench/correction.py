"""The sampled correction against exact truth on the testbed: error, interval coverage, speed.

    python -m bench.correction [--testbed DIR] [--cache DIR] [--draws N]

For each sample size (100, 300, 1,000 positions), ``--draws`` independent samples are drawn as
``approxft collect --calibration N`` draws them (``ingest.sampling``: stratified by split and
context-length bucket); each model's whole distribution there comes from the models (the
testbed's oracle), through the stored sample's uint16 fixed point (``ingest.deep_sample``). The
corrected estimate (``engine.correction`` over the store's default top-k estimator) of every
weight vector of ``bench.exact``'s grid is then set against the exact figure over the whole
split (``bench.exact.exact_truth``). Reported:

- the relative error (median, p90) and how often the 95% interval covers the exact value, over
  all draws, weight vectors and splits, and per draw (the worst draw); the median half-width;
- the same with the big model known by its top-20 lists only (an API's cap), which leaves out
  its mass beyond them;
- what the sample side itself costs in accuracy: cells and fixed point against the models'
  float32 distributions at the sampled positions;
- the tuned blend (Newton on the corrected val estimate): its exact test perplexity against the
  exact optimum's, and whether its reported interval holds the exact value;
- speed: a batched corrected trial on the store, Newton with the correction, the bootstrap.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.blend import BATCH, Blend
from engine.bootstrap import RESAMPLES, with_document_intervals
from engine.bundled import GRIMM, bundled_data_dir, cached_store
from engine.calibration.full import FullSample, cells_matrix, fill_tail, tail_proxy
from engine.candidates import CandidateMatrix
from engine.correction import CorrectedBlend
from engine.dataset import Dataset, open_dataset
from engine.estimators import prototype
from engine.kernels import blend_nll
from engine.oracle import Oracle
from engine.params import ROLES
from engine.tuning import newton_search
from ingest.deep_sample import DeepLists, quantize_full
from ingest.sampling import stratified_sample

from .exact import exact_truth, weight_grid
from .markdown import markdown, pct
from .table import median_seconds
from .testbed.reader import TESTBED_DIR, open_testbed

__all__ = ["SIZES", "draw_rows", "sample_cells", "main"]

SIZES = (100, 300, 1000)
DRAWS = 16
"""Independent samples per size (``--draws``)."""
MIXED_K = 20
"""The big model's list length in the mixed case (an API's cap)."""
COVERAGE_TARGET = 0.93
REPEATS = 7
"""Timed calls per speed row (medians)."""


def draw_rows(ds: Dataset, n: int, seed: int) -> np.ndarray:
    """int64 ascending store rows: ``n`` scored positions, stratified by split and context bucket."""
    scored = np.flatnonzero(ds.whole.group >= 0)
    return scored[stratified_sample(ds.whole.group[scored], n, seed)]


def _stored(lp: np.ndarray) -> np.ndarray:
    """float32, the shape of ``lp``: the values a stored full sample gives back (uint16 fixed point)."""
    return np.stack([DeepLists(ids=None, lp=None, target_lp=np.zeros(m.shape[0]), full=quantize_full(m)).full_lp()
                     for m in lp])


def _top_only(lp: np.ndarray, target: np.ndarray, k: int) -> np.ndarray:
    """``lp`` with the big model (row 0) known by its top-``k`` list and its target only (NaN elsewhere)."""
    big = lp[0]
    cut = np.partition(big, big.shape[1] - k, axis=1)[:, big.shape[1] - k][:, None]
    listed = big >= cut
    listed[np.arange(big.shape[0]), target] = True
    out = lp.copy()
    out[0][~listed] = np.nan
    return out


MIXED = {"full": None, "tail as untuned": "fill", "tail left out": "drop"}
"""The sample cases: every model full; the big model at top-``MIXED_K`` with its tail spread as
the untuned model's (``engine.calibration.full.fill_tail``, what ``approxft calibrate`` does), or
left out of the normalizer (the alternative it was chosen against)."""


def sample_cells(oracle: Oracle, rows: np.ndarray, case: str = "full") -> CandidateMatrix:
    """The cells (``engine.calibration.full.cells_matrix``) of store ``rows`` (int64 ascending)
    as a stored full sample gives them, for one of the ``MIXED`` cases."""
    target = oracle.target_ids(rows)

    def chunks():
        for chunk, lp in oracle.distributions(rows):
            t = target[np.searchsorted(rows, chunk)]
            stored = _stored(lp)
            if MIXED[case] is not None:
                stored = _top_only(stored, t, MIXED_K)
                if MIXED[case] == "fill":
                    fill_tail(stored, 0, tail_proxy([False, True, True]))
            yield stored, t

    return cells_matrix(chunks(), n_models=3)


@dataclass
class SizeResult:
    """One sample size's figures over its draws: per draw float64 ``(B, splits)`` arrays."""

    estimate: list[np.ndarray]
    lo: list[np.ndarray]
    hi: list[np.ndarray]

    def table_row(self, exact: np.ndarray) -> list[str]:
        est, lo, hi = (np.stack(x) for x in (self.estimate, self.lo, self.hi))  # (D, B, S)
        err = np.abs(est / exact - 1)
        covered = (lo <= exact) & (exact <= hi)
        per_draw = covered.reshape(covered.shape[0], -1).mean(axis=1)
        half = (hi - lo) / 2 / est
        spread = per_draw.std(ddof=1) / np.sqrt(per_draw.size) if per_draw.size > 1 else np.nan
        return [pct(np.median(err)), pct(np.quantile(err, 0.9)), f"{pct(covered.mean())} ± {pct(spread)}", pct(per_draw.min()),
                f"{int((per_draw >= COVERAGE_TARGET).sum())} of {per_draw.size}", pct(np.median(half)),
                pct(np.median(est / exact - 1), True)]


def _corrected_figures(base: Blend, sample: FullSample, grid: np.ndarray, splits: list[str]
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 ``(B, S)`` corrected perplexity and 95% interval ends over ``grid`` (``evaluate``)."""
    reports = CorrectedBlend(base, sample).evaluate(grid)
    est = np.array([[r.splits[s].perplexity for s in splits] for r in reports])
    lo = np.array([[r.interval[s][0] for s in splits] for r in reports])
    hi = np.array([[r.interval[s][1] for s in splits] for r in reports])
    return est, lo, hi


def run(testbed: Path, cache: Path, draws: int, log) -> None:
    bundle, ds, oracle = open_testbed(testbed, cache)
    roles = bundle.blend_roles
    base = ds.blend(**roles)
    splits = list(ds.splits)
    grid = weight_grid()
    exact, optimum, _ = exact_truth(oracle, grid, cache / "bench", log)
    exact_bs = np.stack([exact[s] for s in splits], axis=1)  # (B, S)
    t = time.perf_counter()
    draws_of = {(n, d): draw_rows(ds, n, seed=1000 * n + d) for n in SIZES for d in range(draws)}
    union = np.unique(np.concatenate(list(draws_of.values())))
    pools = {case: FullSample(models=base.models, rows=union, matrix=sample_cells(oracle, union, case),
                              partial={} if case == "full" else {base.models[0]: MIXED_K}, described="")
             for case in MIXED}
    log(f"{union.size} sampled positions' cells ({', '.join(MIXED)}) in {time.perf_counter() - t:.0f} s")

    def sample(case: str, rows: np.ndarray) -> FullSample:
        return pools[case].take(np.searchsorted(union, rows), f"{rows.size} positions drawn by bench.correction")

    def measure(blend: Blend, case: str, n: int) -> SizeResult:
        res = SizeResult([], [], [])
        for d in range(draws):
            est, lo, hi = _corrected_figures(blend, sample(case, draws_of[n, d]), grid, splits)
            res.estimate.append(est)
            res.lo.append(lo)
            res.hi.append(hi)
        return res

    results = {(case, n): measure(base, case, n) for case in MIXED for n in SIZES}
    log(f"{len(MIXED) * len(SIZES) * draws} samples over {len(grid)} weight vectors")
    bases = [name for name in ds.usable_estimators(**roles) if name != prototype.NAME and ":" not in name]
    by_base = {name: results["full", SIZES[-1]] if name == base.estimator
               else measure(ds.blend(**roles, estimator=name), "full", SIZES[-1]) for name in bases}
    alone = {name: _alone(ds.blend(**roles, estimator=name), grid, exact_bs, splits) for name in bases}

    header = ["sample", "positions", "median error", "p90 error", "covered", "worst draw",
              f"draws >= {pct(COVERAGE_TARGET)}", "half-width", "signed median"]
    print(f"## The sampled correction against exact truth ({testbed})\n")
    print(f"{len(grid)} weight vectors (bench.exact's grid), val and test, {draws} independent samples per size "
          f"drawn as `approxft collect --calibration N` draws them; base estimator `{base.estimator}` "
          f"(its error alone: {alone[base.estimator]}). 'covered': the 95% interval holds the exact figure, over all "
          "draws x vectors x splits (± the standard error over draws: a draw's vectors share its luck); 'worst draw': the lowest coverage of one sample; 'half-width': relative, median. "
          f"The mixed rows know the big model by its top {MIXED_K} only: its tail spread as the untuned model's "
          "(what `approxft calibrate` does) or left out of the blend's normalizer.\n")
    label = {"full": "all three full", "tail as untuned": f"big top-{MIXED_K}, tail as untuned",
             "tail left out": f"big top-{MIXED_K}, tail left out"}
    print(markdown(header, [[label[case], f"{n:,}", *res.table_row(exact_bs)] for (case, n), res in results.items()]))
    print(f"\n### The base estimator under the correction ({SIZES[-1]:,} positions, all three full)\n")
    print(markdown(["base", "error alone", *header[2:]],
                   [[name, alone[name], *res.table_row(exact_bs)] for name, res in by_base.items()]))
    print()

    _sample_side_table(oracle, pools["full"].matrix, union, draws_of[SIZES[-1], 0], grid)
    _tuned_table(oracle, base, lambda rows: sample("full", rows), [draws_of[SIZES[-1], d] for d in range(draws)],
                 optimum)
    _speed_table(base, sample("full", draws_of[SIZES[-1], 0]), grid, cache)


def _alone(blend: Blend, grid: np.ndarray, exact: np.ndarray, splits: list[str]) -> str:
    """The uncorrected estimator's error over the grid, in words."""
    est = np.array([[r.splits[s].perplexity for s in splits] for r in blend.evaluate(grid)])
    err = np.abs(est / exact - 1)
    return f"median {pct(np.median(err))}, p90 {pct(np.quantile(err, 0.9))}"


def _sample_side_table(oracle: Oracle, cells: CandidateMatrix, union: np.ndarray, rows: np.ndarray,
                       grid: np.ndarray) -> None:
    """The sample side's own error: the mean exact NLL at ``rows`` from the cells (fixed point
    and cells) against the models' float32 distributions (the oracle)."""
    m = cells.take(np.searchsorted(union, rows))
    mine = blend_nll(m.offsets, m.values, m.row_weights(grid), m.outside, m.outside_nll).mean(axis=1)
    truth = oracle.nll(grid, rows=rows).mean(axis=1)
    gap = np.abs(mine - truth)
    print(f"## The sample side: cells of {cells.values.shape[1] // union.size:,} candidates per position on average "
          f"(of {oracle.vocab_size:,} tokens)\n")
    print(f"Mean exact NLL over one sample of {rows.size:,} positions, from the stored fixed point through the cells, "
          f"against the models' own float32 distributions, over {len(grid)} weight vectors: median |error| "
          f"{np.median(gap):.1e} nats, max {gap.max():.1e} (Jensen: never above, signed median "
          f"{np.median(mine - truth):+.1e}).\n")


def _tuned_table(oracle: Oracle, base: Blend, sample_of, draws: list[np.ndarray], optimum: dict) -> None:
    """Newton on each 1,000-position sample's corrected val estimate, judged by the oracle."""
    found, reports = [], []
    for rows in draws:
        corrected = CorrectedBlend(base, sample_of(rows))
        weights = newton_search(corrected, split="val").weights
        found.append(weights)
        reports.append(corrected.evaluate(weights))
    exact = oracle.evaluate(np.array(found))
    rows_out = []
    for d, (weights, report, truth) in enumerate(zip(found, reports, exact, strict=True)):
        lo, hi = report.interval["test"]
        t = truth.splits["test"].perplexity
        rows_out.append([str(d), ", ".join(f"{w:.3f}" for w in weights), f"{report.splits['test'].perplexity:.2f}",
                         f"[{lo:.2f}, {hi:.2f}]", f"{t:.2f}", "yes" if lo <= t <= hi else "no",
                         pct(t / optimum["test"] - 1, True)])
    print(f"## Tuned on the corrected val estimate (Newton), {draws[0].size:,}-position samples\n")
    print(f"The exact optimum (Newton on the oracle): {', '.join(f'{w:.3f}' for w in optimum['weights'])}, test "
          f"{optimum['test']:.2f}. 'regret': the exact test perplexity at the tuned weights over the optimum's.\n")
    print(markdown(["draw", "tuned weights", "reported test", "95% interval", "exact test", "holds it", "regret"],
                   rows_out))
    print()


def _speed_table(base: Blend, sample: FullSample, grid: np.ndarray, cache: Path) -> None:
    """A batched trial, Newton and the bootstrap, corrected, on the testbed store and on the
    bundled Grimm store (53k positions) with the same sample's cells at 1,000 random Grimm rows
    (timing only: its figures mean nothing)."""
    grimm = open_dataset(cached_store(bundled_data_dir(), cache))
    grimm_base = grimm.blend(**{r: GRIMM[r] for r in ROLES})
    rows = np.sort(np.random.default_rng(0).choice(grimm.n_positions, sample.n_positions, replace=False))
    stand_in = FullSample(models=grimm_base.models, rows=rows, matrix=sample.matrix, partial={},
                          described="timing only")
    batch = grid[:BATCH]
    out = []
    for name, b, s in (("testbed", base, sample), ("Grimm", grimm_base, stand_in)):
        corrected = CorrectedBlend(b, s)
        n = f"{b.dataset.n_positions:,} positions"
        base_s = median_seconds(lambda: b.mean_nll(batch, split="val"), REPEATS)
        corrected_s = median_seconds(lambda: corrected.mean_nll(batch, split="val"), REPEATS)
        newton_s = median_seconds(lambda: newton_search(corrected, split="val"), repeats=3)
        w = grid[1]
        report = corrected.evaluate(w)
        sums_s = median_seconds(lambda: corrected.document_sums(w), REPEATS)
        sums = corrected.document_sums(w)
        boot_s = median_seconds(lambda: with_document_intervals([report], sums), REPEATS)
        out += [
            [f"{name} ({n}): trial, base alone", f"{1e3 * base_s / BATCH:.2f} ms per vector"],
            [f"{name}: trial, corrected ({s.n_positions:,}-position sample)", f"{1e3 * corrected_s / BATCH:.2f} ms per vector"],
            [f"{name}: Newton on the corrected estimate", f"{newton_s:.2f} s"],
            [f"{name}: per-document sums (one kernel pass)", f"{1e3 * sums_s:.1f} ms"],
            [f"{name}: bootstrap over documents, {RESAMPLES:,} resamples, both splits", f"{1e3 * boot_s:.1f} ms"],
        ]
    print(f"## Speed (batches of {BATCH} weight vectors, medians of {REPEATS} runs)\n")
    print(markdown(["what", "time"], out))
    print()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.correction", description=__doc__.splitlines()[0])
    p.add_argument("--testbed", type=Path, default=TESTBED_DIR, help=f"testbed folder (default: {TESTBED_DIR})")
    p.add_argument("--cache", type=Path, default=Path(".approxft-cache"), help="store cache (as approxft demo)")
    p.add_argument("--draws", type=int, default=DRAWS, help=f"independent samples per size (default {DRAWS})")
    args = p.parse_args(argv)
    run(args.testbed, args.cache, args.draws, log=lambda line: print(f"bench.correction: {line}", file=sys.stderr,
                                                                     flush=True))


if __name__ == "__main__":
    main()
