"""Evaluation and tuning on a real local Ray cluster (2 workers) give the single-process figures.

What "the same" means, asserted exactly so: each position's NLL is the same to the bit on a worker
(``engine.distributed.blend.worker_part``), and every sum (NLL per cell, gradient, Hessian) is
within 1e-12 relative of the single-process one (the workers' parts are added in another order;
in practice the difference is 0 or a few ulps). TPE with a fixed seed proposes the same trials.
"""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest

pytest.importorskip("ray", reason="the Ray tests need the ray extra: pip install -e '.[ray]'")

import ray  # noqa: E402

from engine.distributed import ClusterError, connect  # noqa: E402
from engine.distributed.blend import RayBlend  # noqa: E402
from engine.evaluation import evaluate  # noqa: E402
from engine.tuning import tune  # noqa: E402
from engine.tuning.tpe import tpe_search  # noqa: E402
from tests.engine.tuning.study_tools import STUDY, states  # noqa: E402
from tests.helpers import GRIMM_ROLES, ROLE_ARGS, approxft  # noqa: E402

REL = 1e-12
WORKERS = 2


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster: 4 logical CPUs (2 for the blends' 2 workers here, 2 for a CLI process
    that joins it), shut down after the module."""
    with connect("local:4", workers=WORKERS) as c:
        yield c


def close(a, b) -> bool:
    return np.allclose(a, b, rtol=REL, atol=0)


def test_eval_figures_equal_the_single_process_ones(cluster, grimm_dataset):
    weights = [1.0, 1.0, -1.0]
    local = evaluate(grimm_dataset, **GRIMM_ROLES, parametrization="loglinear", params=weights)
    remote = evaluate(grimm_dataset, **GRIMM_ROLES, parametrization="loglinear", params=weights, cluster=cluster)
    for a, b in zip(local.blends, remote.blends, strict=True):
        assert a.estimator == b.estimator
        for split in grimm_dataset.splits:
            assert a.splits[split].positions == b.splits[split].positions
            assert close(a.splits[split].nll_sum, b.splits[split].nll_sum)
            assert close(a.documents[split], b.documents[split])  # bootstrap over per-document sums
        assert close(a.by_context["perplexity"].to_numpy(), b.by_context["perplexity"].to_numpy())


def test_every_estimator_side_by_side_runs_one_distributed_blend_at_a_time(cluster, golden_dataset):
    # 4 estimators x 2 workers would need 8 CPUs at once; the cluster has 4 (this would hang).
    kw = {**GRIMM_ROLES, "parametrization": "loglinear", "params": [1.0, 0.5, -0.5], "estimator": "all"}
    local, remote = evaluate(golden_dataset, **kw), evaluate(golden_dataset, **kw, cluster=cluster)
    assert len(remote.blends) == len(golden_dataset.usable_estimators(**GRIMM_ROLES)) >= 4
    for a, b in zip(local.blends, remote.blends, strict=True):
        assert a.estimator == b.estimator and close(a.splits["test"].nll_sum, b.splits["test"].nll_sum)


def test_every_worker_holds_part_of_every_split_and_batches_equal(cluster, grimm_dataset):
    local = grimm_dataset.blend(**GRIMM_ROLES, estimator="zipf-tail")
    blend = cluster.distribute(local)
    assert isinstance(blend, RayBlend) and len(blend.workers) == WORKERS
    assert np.array_equal(np.sort(np.concatenate(blend.rows)), np.arange(grimm_dataset.n_positions))
    for rows in blend.rows:
        assert set(grimm_dataset.whole.split_code[rows]) == set(range(len(grimm_dataset.splits)))
    w = np.random.default_rng(0).normal([1.0, 1.0, -1.0], 0.3, size=(20, 3))  # lanes and single vectors
    assert close(blend.mean_nll(w, split="val", min_context=3), local.mean_nll(w, split="val", min_context=3))
    sums = blend.document_sums(w[:3])
    assert close(sums.cell_nll, local.document_sums(w[:3]).cell_nll)
    f, g, h = blend.mean_nll_grad_hess(w[0], split="test")
    f0, g0, h0 = local.mean_nll_grad_hess(w[0], split="test")
    assert close(f, f0) and close(g, g0) and close(h, h0)


def test_kernel_errors_reach_the_driver_as_themselves(cluster, golden_dataset):
    blend = cluster.distribute(golden_dataset.blend(**GRIMM_ROLES))
    with pytest.raises(ValueError, match="weights must have 3 columns"):
        blend.mean_nll(np.ones((2, 4)), split="val")


def test_newton_and_tpe_find_the_single_process_optimum(cluster, golden_dataset):
    local = golden_dataset.blend(**GRIMM_ROLES)
    blend = cluster.distribute(local)
    a, b = tune(local, method="newton"), tune(blend, method="newton")
    assert a.details["passes"] == b.details["passes"]
    assert close(a.weights, b.weights) and close(a.report.splits["test"].nll_sum, b.report.splits["test"].nll_sum)
    a = tpe_search(local, "temperatures", trials=24, batch=8, seed=3)
    b = tpe_search(blend, "temperatures", trials=24, batch=8, seed=3)
    assert b.trials == 24 and np.array_equal(a.params, b.params) and close(a.history, b.history)


def worker_killer(blend: RayBlend, after: int):
    """A TPE progress callback that kills worker 0's process once ``after`` trials are complete."""
    pid = ray.get(blend.workers[0].pid.remote())

    def progress(done: int, total: int, best: float) -> None:
        if done == after:
            os.kill(pid, signal.SIGKILL)

    return pid, progress


def test_a_worker_killed_in_a_study_is_restarted_and_the_study_ends_as_without(cluster, golden_dataset, tmp_path):
    local = golden_dataset.blend(**GRIMM_ROLES)
    expected = tpe_search(local, "loglinear", trials=24, batch=8, seed=5)
    blend = cluster.distribute(local)
    pid, progress = worker_killer(blend, 8)
    storage = str(tmp_path / "study.journal")
    found = tpe_search(blend, "loglinear", trials=24, batch=8, seed=5, storage=storage, study_name=STUDY,
                       progress=progress)
    assert ray.get(blend.workers[0].pid.remote()) != pid  # it did die, and came back
    assert states(storage) == {"COMPLETE": 24}  # the batch it was in was retried, not failed
    assert np.array_equal(found.params, expected.params) and close(found.history, expected.history)


def test_a_worker_lost_for_good_fails_its_trials_and_the_study_resumes(cluster, golden_dataset, tmp_path):
    local = golden_dataset.blend(**GRIMM_ROLES)
    cluster.restarts = 0
    try:
        blend = cluster.distribute(local)
    finally:
        cluster.restarts = 3
    _, progress = worker_killer(blend, 8)
    storage = str(tmp_path / "study.journal")
    with pytest.raises(ClusterError, match="a Ray worker was lost and not brought back after 0 restarts"):
        tpe_search(blend, "loglinear", trials=24, batch=8, seed=5, storage=storage, study_name=STUDY, progress=progress)
    assert states(storage) == {"COMPLETE": 8, "FAIL": 8}  # the lost batch failed at once: nothing left running
    assert isinstance(ClusterError("x"), OSError)  # so the CLI prints it as one line
    resumed = tpe_search(cluster.distribute(local), "loglinear", trials=24, batch=8, seed=5, storage=storage,
                         study_name=STUDY)
    assert resumed.trials == 24 and states(storage) == {"COMPLETE": 24, "FAIL": 8}


def test_cli_tune_joins_a_running_cluster_by_address(cluster, golden_dataset):
    address = ray.get_runtime_context().gcs_address
    out = approxft("tune", golden_dataset.store.path, *ROLE_ARGS, "--method", "newton", "--ray", address,
                   "--ray-workers", WORKERS, "--format", "json")
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    assert found["ray"] == {"address": address, "workers": WORKERS, "cpus": 4}
    local = tune(golden_dataset.blend(**GRIMM_ROLES), method="newton")
    assert close(found["loglinear_weights"], local.weights)
    assert close(found["best"]["test"], local.report.splits["test"].perplexity)


def test_a_sharded_store_is_dealt_by_shards_which_the_workers_read_themselves(cluster, grimm_sharded_store,
                                                                              grimm_dataset, monkeypatch):
    from engine import open_dataset
    from ingest.store import Store

    streaming = open_dataset(grimm_sharded_store, streaming=True).blend(**GRIMM_ROLES, estimator="calibrated-tail")

    def unread(self, models):
        raise AssertionError("the driver read the candidates: the workers were to read their shards")

    monkeypatch.setattr(Store, "union_columns", unread)  # in this process only: the workers are others
    blend = cluster.distribute(streaming)
    assert isinstance(blend, RayBlend) and blend.matrix is None and blend.estimator == "calibrated-tail"
    assert blend.rows is None and [part.shards for part in blend.parts] == [(0, 2, 4), (1, 3)]
    monkeypatch.undo()
    local = grimm_dataset.blend(**GRIMM_ROLES, estimator="calibrated-tail")
    w = np.random.default_rng(1).normal([1.0, 1.0, -1.0], 0.3, size=(5, 3))
    assert close(blend.mean_nll(w, split="val"), local.mean_nll(w, split="val"))
    for got, want in zip(blend.mean_nll_grad_hess(w[0], split="test"), local.mean_nll_grad_hess(w[0], split="test"),
                         strict=True):
        assert np.allclose(got, want, rtol=REL, atol=1e-15)
    assert close(blend.document_sums(w).cell_nll, local.document_sums(w).cell_nll)
    assert close(blend.evaluate(w[1]).splits["val"].perplexity, local.evaluate(w[1]).splits["val"].perplexity)
    # The workers made each figure's cells from their own shards' positions: the driver holds
    # nothing per position (no store-wide arrays, positions table or candidate offsets).
    assert "whole" not in vars(streaming.dataset) and "positions" not in vars(streaming.dataset.store)
    assert "_offsets" not in vars(streaming.dataset.store)
    address = ray.get_runtime_context().gcs_address
    out = approxft("tune", grimm_sharded_store, *ROLE_ARGS, "--method", "newton", "--ray", address,
                   "--ray-workers", WORKERS, "--format", "json")
    assert out.returncode == 0, out.stderr
    assert close(json.loads(out.stdout)["loglinear_weights"], tune(local, method="newton").weights)


def test_a_masked_blend_runs_masked_on_the_workers_in_memory_and_by_shards(cluster, grimm_sharded_store,
                                                                           grimm_dataset):
    from engine import open_dataset
    from engine.masked_blend import MaskedBlend, masked_blend
    from engine.masks import Mask

    mask, w = Mask("top-p", "grimm-big", 0.9), [0.9, 1.2, -0.8]
    local = masked_blend(grimm_dataset.blend(**GRIMM_ROLES), mask, floor=30.0)
    # In memory (what `eval --mask --ray` runs): the workers get parts of the masked matrix.
    kw = {**GRIMM_ROLES, "parametrization": "loglinear", "params": w, "mask": mask, "mask_floor": 30.0}
    a, b = evaluate(grimm_dataset, **kw), evaluate(grimm_dataset, **kw, cluster=cluster)
    assert b.mask == a.mask == local.describe() and a.mask["targets_outside"]["val"] > 0
    for split in grimm_dataset.splits:
        assert close(a.blend.splits[split].nll_sum, b.blend.splits[split].nll_sum)
        assert close(a.blend.documents[split], b.blend.documents[split])
    # A sharded store: each worker masks the shards it reads.
    streamed = masked_blend(open_dataset(grimm_sharded_store, streaming=True).blend(**GRIMM_ROLES), mask, floor=30.0)
    blend = cluster.distribute(streamed)
    assert isinstance(blend, MaskedBlend) and isinstance(blend.inner, RayBlend) and blend.inner.matrix is None
    assert blend.describe() == local.describe()
    ws = np.random.default_rng(2).normal(w, 0.3, size=(5, 3))
    assert close(blend.mean_nll(ws, split="val"), local.mean_nll(ws, split="val"))
    for got, want in zip(blend.mean_nll_grad_hess(ws[0], split="test"), local.mean_nll_grad_hess(ws[0], split="test"),
                         strict=True):
        assert np.allclose(got, want, rtol=REL, atol=1e-15)
    assert close(blend.document_sums(ws).cell_nll, local.document_sums(ws).cell_nll)
    with pytest.raises(ValueError, match="blend is on Ray workers already"):  # masked before it is distributed
        masked_blend(blend.inner, mask)
    with pytest.raises(ValueError, match=r"drops the target at [\d,]+ val positions"):  # no floor: nothing to tune
        tune(open_dataset(grimm_sharded_store, streaming=True).blend(**GRIMM_ROLES), method="newton", mask=mask,
             cluster=cluster)
    address = ray.get_runtime_context().gcs_address
    out = approxft("tune", grimm_sharded_store, *ROLE_ARGS, "--method", "newton", "--mask", mask.describe(),
                   "--mask-floor", 30, "--ray", address, "--ray-workers", WORKERS, "--format", "json")
    assert out.returncode == 0, out.stderr
    found, want = json.loads(out.stdout), tune(grimm_dataset.blend(**GRIMM_ROLES), method="newton", mask=mask,
                                                mask_floor=30.0)
    assert found["best"]["mask"] == want.mask and close(found["loglinear_weights"], want.weights)
