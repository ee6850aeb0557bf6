"""Print the kernels' benchmark table (markdown) for this machine: ``python -m bench.table``.

Measures, on synthetic data shaped like the real one (``bench.synthetic``: 1M positions,
3 models, ~35 candidates per position):
- ``blend_nll_sums`` at 1 and 2 threads, B = 1 and 32 weight vectors: median ms per evaluation
  and per weight vector, and the candidate bytes read per second; ``blend_nll_grad_hess``
  (Newton's pass) at 1 and 2 threads;
- the machine's read floor: a pass that only sums the same values;
- per-position dict implementations like the prototype's at 10k positions, and the kernels'
  speed-up per position over them (same run): the prototype's pipeline stage by stage
  (``bench.prototype.prototype_pipeline_nll``, the baseline of the targets) and a lean one-pass
  version of it (``bench.prototype.prototype_corpus_nll``);
- the first call in a fresh process (the kernels load from Numba's cache, no compiling);
- ingest throughput on the bundled data (``ingest_rows``).

Timings on shared machines drift by 30% and more: compare rows of one run.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numba
import numpy as np

from bench.prototype import prototype_corpus_nll, prototype_pipeline_nll
from bench.synthetic import (
    PROTOTYPE_TEMPS,
    cached_synthetic_candidates,
    synthetic_records,
    temperature_weights,
)
from engine.kernels import blend_nll_grad_hess, blend_nll_sums
from ingest.jit import KERNEL, KERNEL_PARALLEL

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".approxft-cache" / "bench"
N_POSITIONS = 1_000_000
N_PROTOTYPE = 10_000


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls, after one untimed call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)



@numba.njit(**KERNEL_PARALLEL)
def _read_values(values):
    """Sum of ``values`` (R, C) float32 in 64 column blocks: a pass that only reads."""
    n_values = values.shape[1]
    partial = np.zeros(64)
    for k in numba.prange(64):
        partial[k] = _sum_columns(values, np.uint64(k * n_values // 64), np.uint64((k + 1) * n_values // 64))
    return partial.sum()


@numba.njit(**KERNEL)
def _sum_columns(values, lo, hi):
    total = np.float32(0.0)
    for r in range(values.shape[0]):
        for c in range(lo, hi):  # uint64 indices: no wraparound checks, so it vectorizes
            total += values[r, c]
    return total


def _cpu_seconds() -> tuple[float, float] | None:
    """(busy CPU seconds of the whole machine, of this process) so far; None without /proc."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    busy = (sum(fields) - fields[3] - fields[4]) / ticks  # all but idle and iowait
    own = os.times()
    return busy, own.user + own.system


def kernel_rows() -> tuple[list[tuple[str, str]], dict[int, float]]:
    """Rows for the kernel timings, and the seconds per position and weight vector on 2
    threads for B = 1 and B = 32."""
    data = cached_synthetic_candidates(N_POSITIONS, cache_dir=CACHE)
    group = np.zeros(data.n_positions, dtype=np.int32)
    n_bytes = data.nbytes + data.outside.nbytes + group.nbytes
    mean_run = data.values.shape[1] / data.n_positions
    rows = [("data", f"{data.n_positions:,} positions x {data.values.shape[0]} models, "
                     f"{mean_run:.1f} candidates per position, {n_bytes / 1e6:.0f} MB read per pass")]
    before = numba.get_num_threads()
    per_position = {}
    cpu_start, wall_start = _cpu_seconds(), time.perf_counter()
    try:
        for threads in (1, 2):
            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
            floor = median_seconds(lambda: _read_values(data.values), 9)
            rows.append((f"read floor, {threads} thread(s)",
                         f"{floor * 1e3:.1f} ms ({data.values.nbytes / floor / 1e9:.1f} GB/s): sum of the values only"))
            for n_vectors, repeats in ((1, 11), (32, 9)):
                weights = temperature_weights(n_vectors)
                seconds = median_seconds(
                    lambda: blend_nll_sums(data.offsets, data.values, weights, data.outside, 30.0, group, 1), repeats
                )
                rows.append((
                    f"blend_nll_sums, B = {n_vectors}, {threads} thread(s)",
                    f"{seconds * 1e3:.1f} ms per evaluation, {seconds * 1e3 / n_vectors:.2f} ms per weight vector, "
                    f"{n_bytes / seconds / 1e9:.1f} GB/s",
                ))
                if threads == 2:
                    per_position[n_vectors] = seconds / n_vectors / data.n_positions
            weights = temperature_weights(1)[0]
            seconds = median_seconds(
                lambda: blend_nll_grad_hess(data.offsets, data.values, weights, data.outside, 30.0, group), 7
            )
            rows.append((f"blend_nll_grad_hess, {threads} thread(s)",
                         f"{seconds * 1e3:.1f} ms per pass (NLL, gradient and Hessian in the 3 weights)"))
    finally:
        numba.set_num_threads(before)
    cpu_end = _cpu_seconds()
    if cpu_start and cpu_end:  # other processes share the 2 cores: say how much, timings drift with it
        others = (cpu_end[0] - cpu_start[0]) - (cpu_end[1] - cpu_start[1])
        share = max(0.0, others) / ((time.perf_counter() - wall_start) * (os.cpu_count() or 1))
        rows.append(("other processes", f"used {share:.0%} of the CPUs while the kernel rows ran"))
    return rows, per_position


def prototype_rows(kernel_per_position: dict[int, float]) -> list[tuple[str, str]]:
    records = synthetic_records(N_PROTOTYPE)
    rows = []
    for label, fn in (("prototype pipeline, stage by stage", prototype_pipeline_nll),
                      ("lean one-pass dict version", prototype_corpus_nll)):
        seconds = median_seconds(lambda: fn(records, PROTOTYPE_TEMPS, 1.0), 5)
        per_position = seconds / len(records)
        rows.append((label, f"{seconds * 1e3:.0f} ms for {len(records):,} positions "
                            f"({1 / per_position:,.0f} positions/s); blend_nll_sums is "
                            f"{per_position / kernel_per_position[1]:,.0f}x faster per position at B = 1, "
                            f"{per_position / kernel_per_position[32]:,.0f}x per weight vector at B = 32 "
                            "(2 threads, 1M)"))
    return rows


FRESH_PROCESS = textwrap.dedent("""
    import json, time
    start = time.perf_counter()
    import numba, numpy as np
    libraries = time.perf_counter()
    from engine import kernels
    imported = time.perf_counter()
    offsets = np.array([0, 3], dtype=np.uint64)
    values = np.zeros((3, 3), dtype=np.float32)
    for n_vectors in (1, kernels.LANES):
        kernels.blend_nll_sums(offsets, values, np.ones((n_vectors, 3)), np.zeros(1, bool), 30.0,
                               np.zeros(1, np.int32), 1)
    called = time.perf_counter()
    dispatchers = [kernels._nll_scalar, kernels._sums_scalar, kernels._nll_lanes, kernels._sums_lanes]
    print(json.dumps({
        "engine_s": imported - libraries,
        "first_calls_s": called - imported,
        "cache_hits": sum(sum(d.stats.cache_hits.values()) for d in dispatchers),
        "cache_misses": sum(sum(d.stats.cache_misses.values()) for d in dispatchers),
    }))
""")


def fresh_process_rows() -> list[tuple[str, str]]:
    """The first calls in a new interpreter: the kernels must come from Numba's cache."""
    out = subprocess.run([sys.executable, "-c", FRESH_PROCESS], cwd=REPO, capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return [(
        "fresh process (cache hit)",
        f"import engine {r['engine_s'] * 1e3:.0f} ms after numpy and numba (the 4 kernels load from "
        f"Numba's cache: {r['cache_hits']} hits, {r['cache_misses']} misses), then the first scalar and "
        f"lane calls {r['first_calls_s'] * 1e3:.0f} ms (thread pool start included)",
    )]


# --- ingest throughput -----------------------------------------------------------------------


INGEST_REPEATS = 5


def ingest_rows() -> list[tuple[str, str]]:
    """Ingest the bundled Grimm responses (4 models) into a fresh store, median of
    ``INGEST_REPEATS`` runs after an untimed one: positions x models per second, the CPU time of
    the same runs (ingest reads ahead and writes Parquet files on a second thread: more CPU than
    wall time where a second core is free) and the load average as they start, and the same
    run's baseline: only reading the files' lines with the standard library's ``json.loads``
    (no duplicate-key check, no conversion), what the whole ingest is compared with."""
    try:
        from ingest import ingest_responses
        from ingest.jsonl import read_lines
    except ImportError as exc:
        return [("ingest", f"not measured: ingest is not importable ({exc})")]
    grimm = REPO / "data" / "grimm"
    paths = sorted(grimm.glob("grimm-*.jsonl.gz"))
    cpu: list[float] = []

    def ingest(out: Path) -> None:
        start = time.process_time()
        ingest_responses(paths, requests=grimm / "requests.jsonl", out=out)
        cpu.append(time.process_time() - start)

    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "grimm.store"
        seconds = median_seconds(lambda: ingest(out), INGEST_REPEATS)
        meta = json.loads((out / "store.json").read_text())
    baseline = median_seconds(lambda: [json.loads(line) for path in paths for _, line in read_lines(path)], 3)
    cells = meta["n_positions"] * len(meta["models"])
    return [(
        "ingest (bundled Grimm data)",
        f"{meta['n_positions']:,} positions x {len(meta['models'])} models in {seconds:.2f} s (median of "
        f"{INGEST_REPEATS}; {statistics.median(cpu[1:]):.2f} s of CPU time, load average {load:.1f}): "
        f"{cells / seconds:,.0f} positions x models per second; {baseline / seconds:.2f} times "
        f"the speed of only reading the same lines with the standard library's json.loads ({baseline:.2f} s, "
        f"{cells / baseline:,.0f} per second)",
    )]


# --- the exact oracle ------------------------------------------------------------------------

ORACLE_POSITIONS = 2_000
"""Testbed positions (the first ones of the val split) the oracle's rows are timed on."""


def oracle_rows() -> list[tuple[str, str]]:
    """The exact oracle on the committed testbed (``engine.oracle``): the models' forward passes
    over the requests once, then a pass of B = 1 and B = 32 weight vectors, and a gradient and
    Hessian pass, per position (over the whole vocabulary)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return [("exact oracle", "not measured: needs the local extra (torch, transformers)")]
    from bench.testbed.reader import TESTBED_DIR, open_testbed

    _, ds, oracle = open_testbed(TESTBED_DIR, CACHE)
    rows = np.flatnonzero(ds.split_mask("val"))[:ORACLE_POSITIONS]
    start = time.perf_counter()
    oracle.target_ids(rows)  # runs the models over the requests that hold these rows
    forward = time.perf_counter() - start
    per_b = {b: median_seconds(lambda b=b: oracle.nll(temperature_weights(b), rows), 3) for b in (1, 32)}
    newton = median_seconds(lambda: oracle.mean_nll_grad_hess(temperature_weights(1)[0], split="val"), 1)
    us = 1e6 / rows.size
    return [(
        "exact oracle (testbed, 3 models, full vocabulary)",
        f"forward passes {forward * us:.0f} µs per position (once); then {per_b[1] * us:.0f} µs per position at "
        f"B = 1 and {per_b[32] * us / 32:.0f} µs per position and weight vector at B = 32 ({rows.size:,} val "
        f"positions, V = {oracle.vocab_size:,}); a gradient and Hessian pass over the whole val split "
        f"({int(ds.split_mask('val').sum()):,} positions) {newton:.1f} s",
    )]


def main() -> None:
    started = time.perf_counter()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    rows = [("machine", f"{os.cpu_count()} CPUs, load average {load} at the start; numba {numba.__version__}")]
    kernels, kernel_per_position = kernel_rows()
    rows += kernels + prototype_rows(kernel_per_position) + fresh_process_rows() + ingest_rows() + oracle_rows()
    print("| measurement | result |\n| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")
    print(f"table took {time.perf_counter() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
