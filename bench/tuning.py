"""Tuning benchmarks: ``python -m bench.tuning`` prints a markdown table.

- 100 TPE trials over 1M synthetic positions (in memory and with journal storage): total
  seconds, and how they split between the engine and Optuna itself, measured in the same run
  as Optuna alone with an instant objective.
- Newton on 1M positions: passes and seconds to converge; one gradient-and-Hessian pass, on
  the val split that tuning reads and on all positions.
- One trial on the bundled data (53k positions): engine milliseconds, alone and batched.
Medians of repeats; these machines are noisy.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import engine
from engine.kernels import blend_nll_grad_hess, blend_nll_sums
from engine.tuning import newton_search, tpe_search

from .synthetic_store import MODELS, synthetic_store
from .table import median_seconds

N_SYNTHETIC = 1_000_000
TRIALS = 100
CACHE = Path(".approxft-cache") / "bench"


class _Timed:
    """A blend whose ``mean_nll`` calls are timed (or, with ``instant``, not made at all)."""

    def __init__(self, blend, *, instant: bool = False):
        self._blend, self._instant, self.seconds = blend, instant, 0.0
        self.models, self.estimator, self.dataset = blend.models, blend.estimator, blend.dataset

    def mean_nll(self, weights, **kw):
        if self._instant:
            return np.zeros(np.atleast_2d(weights).shape[0])
        start = time.perf_counter()
        out = self._blend.mean_nll(weights, **kw)
        self.seconds += time.perf_counter() - start
        return out


def _median_ms(fn, repeats: int = 7) -> float:
    return 1e3 * median_seconds(fn, repeats)


def _tpe_row(label: str, blend, storage: str | None) -> list[str]:
    timed, instant = _Timed(blend), _Timed(blend, instant=True)
    with tempfile.TemporaryDirectory() as tmp:
        where = None if storage is None else str(Path(tmp) / storage)
        start = time.perf_counter()
        tpe_search(timed, "loglinear", trials=TRIALS, storage=where, study_name="a")
        total = time.perf_counter() - start
        where = None if storage is None else str(Path(tmp) / ("instant-" + storage))
        start = time.perf_counter()
        tpe_search(instant, "loglinear", trials=TRIALS, storage=where, study_name="b")
        optuna_alone = time.perf_counter() - start
    return [label, f"{total:.2f} s", f"{1e3 * timed.seconds / TRIALS:.2f} ms",
            f"{1e3 * optuna_alone / TRIALS:.2f} ms", f"{100 * timed.seconds / total:.0f}%"]


def main() -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    store = CACHE / f"synthetic-{N_SYNTHETIC}.store"
    if not (store / "store.json").exists():
        print(f"writing {store} ...", flush=True)
        synthetic_store(store, N_SYNTHETIC)
    ds = engine.open_dataset(store)
    blend = ds.blend(big=MODELS[0], tuned=MODELS[1], untuned=MODELS[2])
    print(f"estimator: {blend.estimator}; {ds.n_positions:,} positions, "
          f"{blend.matrix.values.shape[1] / ds.n_positions:.1f} candidates per position\n")

    print(f"| {TRIALS} TPE trials, 1M positions | total | engine per trial | Optuna alone per trial | engine share |")
    print("| --- | --- | --- | --- | --- |")
    for label, storage in (("in memory", None), ("journal file", "study.journal")):
        print("| " + " | ".join(_tpe_row(label, blend, storage)) + " |")

    m = blend.matrix
    w = m.row_weights(np.array([1.0, 1.0, -1.0]))[0]
    print("\n| Newton, 1M positions (tunes on val: 45%) | value |\n| --- | --- |")
    for split in ("val", None):
        group = ds.tuning_positions(split)[0] if split else np.zeros(ds.n_positions, dtype=np.int32)
        gh_ms = _median_ms(lambda: blend_nll_grad_hess(m.offsets, m.values, w, m.outside, m.outside_nll, group,
                                                        n_deriv=m.n_models))
        nll_ms = _median_ms(lambda: blend_nll_sums(m.offsets, m.values, w[None, :], m.outside, m.outside_nll,
                                                   group, 1))
        print(f"| gradient + Hessian pass, {split or 'all positions'} | {gh_ms:.1f} ms "
              f"(NLL-only pass: {nll_ms:.1f} ms) |")
    newton_search(blend)  # warm
    runs = [newton_search(blend) for _ in range(3)]
    print(f"| passes to converge | {runs[0].passes} ({runs[0].iterations} Newton steps) |")
    print(f"| seconds to converge (median of 3) | {statistics.median(r.seconds for r in runs):.3f} s |")

    grimm = engine.open_dataset(_grimm_store())
    roles = {"big": "grimm-big", "tuned": "grimm-small-tuned", "untuned": "grimm-small"}
    batch = np.random.default_rng(0).normal(size=(32, 3))
    print(f"\n| bundled data ({grimm.n_positions:,} positions, val {int((grimm.whole.split_code == 0).sum()):,}) "
          "| candidates per position | one trial | batched, 32 per pass (per trial) |")
    print("| --- | --- | --- | --- |")
    for name in grimm.usable_estimators(**roles):
        g = grimm.blend(**roles, estimator=name)
        one = _median_ms(lambda: g.mean_nll([1.0, 1.0, -1.0], split="val"), repeats=21)
        many = _median_ms(lambda: g.mean_nll(batch, split="val"), repeats=21) / 32
        per = g.matrix.values.shape[1] / grimm.n_positions
        print(f"| {name} | {per:.1f} | {one:.3f} ms | {many:.3f} ms |")


def _grimm_store() -> Path:
    from engine.bundled import bundled_data_dir, cached_store

    return cached_store(bundled_data_dir(), Path(".approxft-cache"))


if __name__ == "__main__":
    main()
