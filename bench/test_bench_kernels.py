"""Benchmarks of the blend kernels (NLL sums; gradient and Hessian) and of the prototype's dict
pipeline they replace.

Run with ``pytest bench --benchmark-enable`` (the project's pytest options disable benchmarks
by default). Inputs come from ``bench.synthetic`` (1M positions, 3 models, ~35 candidates per
position, cached under .approxft-cache/bench); every kernel is called once before timing.
"""

from __future__ import annotations

from pathlib import Path

import numba
import numpy as np
import pytest

from bench.prototype import prototype_corpus_nll, prototype_pipeline_nll
from bench.synthetic import (
    PROTOTYPE_TEMPS,
    cached_synthetic_candidates,
    synthetic_records,
    temperature_weights,
)
from engine.kernels import blend_nll_grad_hess, blend_nll_sums

N_POSITIONS = 1_000_000
N_PROTOTYPE = 10_000
CACHE = Path(__file__).resolve().parents[1] / ".approxft-cache" / "bench"


@pytest.fixture(scope="module")
def matrix():
    return cached_synthetic_candidates(N_POSITIONS, cache_dir=CACHE)


@pytest.fixture
def threads(request):
    before = numba.get_num_threads()
    numba.set_num_threads(min(request.param, numba.config.NUMBA_NUM_THREADS))
    yield numba.get_num_threads()
    numba.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 2], indirect=True, ids=lambda t: f"threads{t}")
@pytest.mark.parametrize("n_vectors", [1, 32], ids=lambda b: f"B{b}")
def test_blend_nll_sums(benchmark, matrix, threads, n_vectors):
    weights = temperature_weights(n_vectors)
    group = np.zeros(matrix.n_positions, dtype=np.int32)
    args = (matrix.offsets, matrix.values, weights, matrix.outside, 30.0, group, 1)
    blend_nll_sums(*args)  # compiled (or loaded from the cache) before timing
    benchmark.extra_info.update(positions=matrix.n_positions, weight_vectors=n_vectors, threads=threads)
    benchmark.pedantic(blend_nll_sums, args=args, rounds=9 if n_vectors == 1 else 3, warmup_rounds=1)
    benchmark.extra_info["ms_per_weight_vector"] = benchmark.stats.stats.median * 1e3 / n_vectors


@pytest.mark.parametrize("threads", [1, 2], indirect=True, ids=lambda t: f"threads{t}")
def test_blend_nll_grad_hess(benchmark, matrix, threads):
    group = np.zeros(matrix.n_positions, dtype=np.int32)
    args = (matrix.offsets, matrix.values, temperature_weights(1)[0], matrix.outside, 30.0, group)
    blend_nll_grad_hess(*args)
    benchmark.extra_info.update(positions=matrix.n_positions, threads=threads)
    benchmark.pedantic(blend_nll_grad_hess, args=args, rounds=7, warmup_rounds=1)


@pytest.mark.parametrize("pipeline", [prototype_pipeline_nll, prototype_corpus_nll],
                         ids=["stage_by_stage", "lean_one_pass"])
def test_prototype_dict_pipeline(benchmark, pipeline):
    records = synthetic_records(N_PROTOTYPE)
    benchmark.extra_info.update(positions=len(records))
    benchmark.pedantic(pipeline, args=(records, PROTOTYPE_TEMPS, 1.0), rounds=3, warmup_rounds=0)
