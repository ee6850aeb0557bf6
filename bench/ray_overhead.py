"""Ray's cost per trial: ``python -m bench.ray_overhead`` prints markdown tables (a few minutes;
the 1M store is written once, about 20 s, and cached like ``bench.tuning``'s).

On the bundled Grimm store (53k positions) and a synthetic 1M-position store
(``bench.synthetic_store``), the medians of: one TPE trial (``mean_nll`` over val, B = 1), a
batch of 32 trials in one pass, and a Newton pass (gradient and Hessian over val), each in this
process (the kernels on 1 and on 2 threads) and on a local Ray cluster with 1 and 2 workers (one
thread each). Then the constants of the cost model in the README ("Evaluation and tuning on
Ray"): the kernel's time per position and thread, the Ray round trip per call, and what each
worker adds to it; and the break-even store size they imply.

A 2-core machine cannot show a speed-up from 2 Ray workers over 2 kernel threads (they share
the cores); it measures the overhead, and the model extrapolates to workers on their own cores.
"""

from __future__ import annotations

import gc
import statistics
import time
from pathlib import Path

import numba
import numpy as np
import ray

import engine
from engine.distributed import connect

from .synthetic_store import MODELS, synthetic_store
from .table import CACHE, median_seconds

N_SYNTHETIC = 1_000_000
BATCH = 32
GRIMM = {"big": "grimm-big", "tuned": "grimm-small-tuned", "untuned": "grimm-small"}


def _grimm_store() -> Path:
    from engine.bundled import bundled_data_dir, cached_store

    return cached_store(bundled_data_dir(), CACHE.parent)


def _synthetic() -> Path:
    store = CACHE / f"synthetic-{N_SYNTHETIC}.store"
    if not (store / "store.json").exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        print(f"writing {store} ...", flush=True)
        synthetic_store(store, N_SYNTHETIC)
    return store


def _timings(blend, repeats: int) -> dict[str, float]:
    """Median milliseconds of one trial, a batch of ``BATCH`` trials, and a Newton pass."""
    one = np.array([1.0, 1.0, -1.0])
    batch = np.random.default_rng(0).normal(one, 0.3, size=(BATCH, 3))
    return {
        "trial": 1e3 * median_seconds(lambda: blend.mean_nll(one, split="val"), repeats),
        "batch": 1e3 * median_seconds(lambda: blend.mean_nll(batch, split="val"), repeats),
        "newton": 1e3 * median_seconds(lambda: blend.mean_nll_grad_hess(one, split="val"), repeats),
    }


def _paired_overhead_ms(local, blend, repeats: int) -> dict[str, float]:
    """Ray's overhead per call: the median over ``repeats`` rounds of (the call on ``blend``'s
    workers minus the same call in process), each round timing both back to back, so that the
    machine's drift cancels."""
    one = np.array([1.0, 1.0, -1.0])
    batch = np.random.default_rng(0).normal(one, 0.3, size=(BATCH, 3))
    calls = {"trial": lambda b: b.mean_nll(one, split="val"), "batch": lambda b: b.mean_nll(batch, split="val"),
             "newton": lambda b: b.mean_nll_grad_hess(one, split="val")}
    out = {}
    for name, call in calls.items():
        diffs = []
        for _ in range(repeats):
            times = []
            for b in (local, blend):
                start = time.perf_counter()
                call(b)
                times.append(time.perf_counter() - start)
            diffs.append(times[1] - times[0])
        out[name] = 1e3 * statistics.median(diffs)
    return out


def _round_trip_ms(workers: list, repeats: int = 201) -> float:
    """Median milliseconds of an empty call to every worker at once (submit, run, gather)."""
    return 1e3 * median_seconds(lambda: ray.get([w.pid.remote() for w in workers]), repeats)


def main() -> None:
    synthetic_roles = dict(zip(("big", "tuned", "untuned"), MODELS, strict=True))
    stores = {"Grimm": (_grimm_store(), GRIMM, 101), "synthetic 1M": (_synthetic(), synthetic_roles, 11)}
    rows, constants = [], {}
    with connect("local:2") as cluster:
        for label, (path, roles, repeats) in stores.items():
            ds = engine.open_dataset(path)
            local = ds.blend(**roles, estimator="zipf-tail")
            val = int(np.count_nonzero(ds.tuning_positions("val")[0] >= 0))
            measured = {}
            for threads in (1, 2):
                numba.set_num_threads(threads)
                measured[f"in process, {threads} thread{'s' * (threads > 1)}"] = _timings(local, repeats)
            for workers in (1, 2):
                cluster.workers = workers
                blend = cluster.distribute(local)
                rt = _round_trip_ms(blend.workers)
                measured[f"Ray, {workers} worker{'s' * (workers > 1)} (empty call {rt:.2f} ms)"] = _timings(blend, repeats)
                if label == "Grimm" and workers == 1:  # the smallest kernel time: least drowned in noise
                    numba.set_num_threads(1)
                    constants["overhead"] = _paired_overhead_ms(local, blend, repeats)
                    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
                constants.setdefault(f"round_trip_{workers}", []).append(rt)
                del blend
                gc.collect()  # its workers end, and free their CPUs for the next
            numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
            base = measured["in process, 1 thread"]
            if label != "Grimm":
                constants["ns_per_position_trial"] = 1e6 * base["trial"] / val
                constants["ns_per_position_batch"] = 1e6 * base["batch"] / val
                constants["ns_per_position_newton"] = 1e6 * base["newton"] / val
            for how, t in measured.items():
                rows.append([f"{label} ({ds.n_positions:,}; val {val:,})", how, f"{t['trial']:.2f}",
                             f"{t['batch']:.2f}", f"{t['newton']:.2f}"])
    print(f"| store (positions) | where | one trial, ms | {BATCH} trials in one pass, ms | Newton pass, ms |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    over = constants["overhead"]
    latency = over["trial"]
    per_worker = statistics.median(constants["round_trip_2"]) - statistics.median(constants["round_trip_1"])
    t = constants["ns_per_position_trial"]
    print("\n| cost-model constant (this machine) | value |\n| --- | --- |")
    print(f"| kernel, one trial, per position tuned on and thread (1M store) | {t:.1f} ns |")
    print(f"| kernel, {BATCH} trials in one pass, per position and thread | {constants['ns_per_position_batch']:.1f} ns "
          f"({constants['ns_per_position_batch'] / BATCH:.1f} ns per trial) |")
    print(f"| kernel, Newton pass, per position and thread | {constants['ns_per_position_newton']:.1f} ns |")
    print(f"| Ray's overhead per call, 1 worker (Grimm, paired: Ray 1 worker minus in process 1 thread): one trial, "
          f"{BATCH} trials, Newton pass | {latency:.2f}, {over['batch']:.2f}, {over['newton']:.2f} ms |")
    print(f"| empty call to every worker, 1 / 2 workers | {statistics.median(constants['round_trip_1']):.2f} / "
          f"{statistics.median(constants['round_trip_2']):.2f} ms |")
    print(f"| each further worker adds to a call | {per_worker:.2f} ms |")
    for w in (2, 8, 64):
        n = (latency + (w - 1) * per_worker) * 1e6 / (t * (1 - 1 / w))
        print(f"| break-even positions tuned on (one trial per call), {w} workers on cores of their own vs 1 "
              f"thread | {n:,.0f} |")

if __name__ == "__main__":
    main()
