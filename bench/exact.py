"""Every estimator against exact truth: the testbed's oracle (``engine.oracle``).

On a testbed (``bench/testbed``), for every estimator and list length k:

- the relative error of its blend perplexity against the exact full-vocabulary figure, per split,
  over a grid of weight vectors (``weight_grid``: random ones with weight sums 0.5-1.5 and
  strongly negative untuned weights, plus the named points);
- the tuned-blend regret: the exact test perplexity at the optimum of the estimator's own
  estimate (Newton over the log-linear weights, TPE over the prototype's temperatures, both on
  val), against the exact optimum's (Newton on the oracle), and the error of the estimator's
  report of its optimum.

Top-k data at k <= the store's k is the store's own lists cut to k, as an API would return them
(the store is what ``approxft collect`` and ``ingest`` made); deeper lists come from the models'
full distributions (``Oracle.topk``). ``calibrated-tail`` is fitted at each k on the testbed's
deep sample, as ``approxft calibrate`` fits it.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.blend import Blend
from engine.bundled import BundledData
from engine.calibration.fit import fit_missing_drops
from engine.candidates import UnionCandidates
from engine.dataset import Dataset
from engine.estimators import ESTIMATORS, calibrated_tail
from engine.oracle import Oracle
from engine.params import ROLES
from engine.tuning import newton_search, tpe_search
from ingest.atomic import write_text_atomic
from ingest.store import POSITIONS_FILE
from ingest.union import union_candidates

from . import grid
from .grid import KS

__all__ = ["KS", "NAMED", "weight_grid", "topk_union", "ExactTables", "exact_truth", "exact_tables"]

GRID_SIZE = 200
TPE_TRIALS = 200
NAMED = {**grid.NAMED, "(1, 2, -2)": (1.0, 2.0, -2.0)}


def weight_grid(n: int = GRID_SIZE, seed: int = 0) -> np.ndarray:
    """float64 ``(len(NAMED) + n, 3)``: the named points, then ``n`` random weight vectors with
    sums uniform in 0.5-1.5 (a_big in 0.2-1.3, a_tuned in 0-2.5, a_untuned in -2.5-0.3)."""
    return grid.weight_grid(n, named=NAMED, a_big=(0.2, 1.3), a_tuned=(0.0, 2.5), a_untuned=(-2.5, 0.3),
                            seed=seed)


def topk_union(ds: Dataset, oracle: Oracle, models: tuple[str, str, str], k: int) -> UnionCandidates:
    """Every position's top-``k`` data for ``models``: the store's lists cut to ``k`` where the
    store holds that many, else the models' own top-``k`` (``Oracle.topk``); targets' values
    are the store's exact ones."""
    store = ds.store
    target_lp = np.stack([store.target_lp(m) for m in models])
    if all(store.k[m] >= k for m in models):
        lists = [store.topk(m) for m in models]
        target = store.positions.get_column("target").to_numpy()
        layout = union_candidates(target, target_lp, [ids[:, :k] for ids, _ in lists], [lp[:, :k] for _, lp in lists],
                                  n_vocab=store.vocab.height)
    else:
        rows = np.arange(ds.n_positions)
        ids, lp = oracle.topk(rows, k)
        layout = union_candidates(oracle.target_ids(rows).astype(np.int32), target_lp, list(ids.astype(np.int32)),
                                  list(lp), n_vocab=oracle.vocab_size)
    return UnionCandidates(offsets=layout.offsets, lp=layout.lp, rank=layout.rank,
                           k=np.full(len(models), k, dtype=np.int64), vocab_size=ds.vocab_size)


@dataclass(frozen=True)
class ExactTables:
    """What ``exact_tables`` measured.

    Attributes:
        grid: float64 ``(B, 3)`` weight vectors.
        exact: per split, float64 ``(B,)`` exact perplexities.
        estimates: per (estimator, k) and split, float64 ``(B,)`` estimated perplexities.
        optimum: the exact optimum on val: its weights and exact val/test perplexity.
        tuned: per (estimator, k, method): the optimum's weights, its estimated val/test
            perplexity and its exact test perplexity.
        seconds: per stage, wall time.
    """

    grid: np.ndarray
    exact: dict[str, np.ndarray]
    estimates: dict[tuple[str, int], dict[str, np.ndarray]]
    optimum: dict[str, object]
    tuned: dict[tuple[str, int, str], dict[str, object]]
    seconds: dict[str, float]

    def errors(self, name: str, k: int) -> np.ndarray:
        """Relative errors ``|estimate / exact - 1|`` over the grid and both splits."""
        return np.concatenate([np.abs(self.estimates[name, k][s] / self.exact[s] - 1.0) for s in self.exact])


def _split_perplexities(blend: Blend, grid: np.ndarray) -> dict[str, np.ndarray]:
    reports = blend.evaluate(grid)
    return {s: np.array([r.splits[s].perplexity for r in reports]) for s in blend.dataset.splits}


def exact_truth(oracle: Oracle, grid: np.ndarray, cache: Path | None = None, log=print
                ) -> tuple[dict[str, np.ndarray], dict[str, object], dict[str, float]]:
    """The oracle's exact val/test perplexities over ``grid`` and its exact optimum (Newton on
    val), with the seconds each took; kept in ``cache`` (a folder, keyed by the grid and the
    store's positions table, which holds every model's values) when given, as they take minutes
    and never change.

    Returns:
        ``(exact, optimum, seconds)``: per split float64 ``(B,)``; ``weights``, ``val``, ``test``,
        ``passes``; per stage.
    """
    key = hashlib.sha256(grid.tobytes())
    key.update((Path(oracle.dataset.store.path) / POSITIONS_FILE).read_bytes())  # every model's exact target values
    path = None if cache is None else cache / f"exact-{key.hexdigest()[:16]}.json"
    if path is not None and path.exists():
        saved = json.loads(path.read_text(encoding="utf-8"))
        optimum = {**saved["optimum"], "weights": np.array(saved["optimum"]["weights"])}
        return {s: np.array(v) for s, v in saved["exact"].items()}, optimum, saved["seconds"]
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    exact = _split_perplexities(oracle, grid)
    seconds["oracle: the grid"] = time.perf_counter() - t
    log(f"oracle: {len(grid)} weight vectors in {seconds['oracle: the grid']:.0f} s")
    t = time.perf_counter()
    found = newton_search(oracle, split="val")
    report = oracle.evaluate(found.weights)
    optimum = {"weights": found.weights, "val": report.splits["val"].perplexity,
               "test": report.splits["test"].perplexity, "passes": found.passes}
    seconds["oracle: the exact optimum (Newton)"] = time.perf_counter() - t
    log(f"oracle: exact optimum {np.round(found.weights, 3).tolist()} in {found.passes} passes")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        saved = {"exact": {s: v.tolist() for s, v in exact.items()}, "seconds": seconds,
                 "optimum": {**optimum, "weights": found.weights.tolist()}}
        write_text_atomic(path, json.dumps(saved))
    return exact, optimum, seconds


def exact_tables(ds: Dataset, oracle: Oracle, bundle: BundledData, deep, *, grid: np.ndarray,
                 ks: tuple[int, ...] = KS, cache: Path | None = None, log=print) -> ExactTables:
    """Measure every estimator at every k against the oracle (see the module docstring)."""
    models = tuple(bundle.roles[r] for r in ROLES)
    exact, optimum, seconds = exact_truth(oracle, grid, cache, log)
    seconds = dict(seconds)
    sample, _ = ds.calibration_sample(deep, models=models, files=[bundle.deep_files[r] for r in ROLES])
    estimates: dict[tuple[str, int], dict[str, np.ndarray]] = {}
    tuned: dict[tuple[str, int, str], dict[str, object]] = {}
    t = time.perf_counter()
    for k in ks:
        data = topk_union(ds, oracle, models, k)
        fit = fit_missing_drops(sample, k)
        for name, est in ESTIMATORS.items():
            matrix = calibrated_tail.build(data, fit) if name == calibrated_tail.NAME else est.build(data)
            blend = Blend(ds, models, matrix)
            estimates[name, k] = _split_perplexities(blend, grid)
            for method, weights in (("newton", newton_search(blend, split="val").weights),
                                    ("tpe", tpe_search(blend, "temperatures", trials=TPE_TRIALS).weights)):
                mine = blend.evaluate(weights)
                tuned[name, k, method] = {"weights": weights, "val": mine.splits["val"].perplexity,
                                          "test": mine.splits["test"].perplexity}
        log(f"k = {k}: every estimator on the grid and tuned")
    seconds["estimators: grids and tuning"] = time.perf_counter() - t
    t = time.perf_counter()
    keys = list(tuned)
    for key, report in zip(keys, oracle.evaluate(np.array([tuned[key]["weights"] for key in keys])), strict=True):
        tuned[key]["exact_test"] = report.splits["test"].perplexity
    seconds["oracle: the tuned optima"] = time.perf_counter() - t
    return ExactTables(grid=grid, exact=exact, estimates=estimates, optimum=optimum, tuned=tuned, seconds=seconds)
