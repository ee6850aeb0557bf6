"""The exact oracle on the committed testbed models, against an independent computation: each
model's own forward pass over the whole request, its full log-softmax in float64, blended and
normalized over the whole vocabulary by torch; and, where a blend is one model, the store's exact
figures. The store here holds two real testbed requests (one val, one test), so that every figure
is cheap to compute both ways."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs the local extra: pip install 'approxft[local]'")

from bench.testbed.reader import TESTBED_DIR, model_dirs  # noqa: E402
from engine.oracle import Oracle, OracleError  # noqa: E402
from engine.tuning import newton_search  # noqa: E402
from ingest.serve.model import load_model  # noqa: E402

from .conftest import TESTBED_MODELS  # noqa: E402

MODELS = TESTBED_MODELS
WEIGHTS = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, -1.0], [0.6, 1.8, -1.7],
                    [1.3, 0.4, -0.2]])


def brute_force(ds, manifest, weights: np.ndarray) -> np.ndarray:
    """float64 ``(B, n)``: every position's blend NLL from each model's own forward pass, float64."""
    prompts = {json.loads(line)["request_index"]: json.loads(line)["params"]["prompt"]
               for line in manifest.read_text(encoding="utf-8").splitlines()}
    request = ds.store.positions.get_column("request").to_numpy()
    position = ds.store.positions.get_column("position").to_numpy()
    dirs = model_dirs(TESTBED_DIR)
    models = [load_model(dirs[m], m) for m in MODELS]
    out = np.empty((weights.shape[0], ds.n_positions))
    with torch.no_grad():
        for r in np.unique(request):
            rows = np.flatnonzero(request == r)
            ids = models[0].tokenizer.encode(prompts[int(r)], add_special_tokens=False)
            lp = torch.stack([torch.log_softmax(m.model(torch.tensor([ids])).logits[0].double(), dim=-1) for m in models])
            for row in rows:
                p = int(position[row])
                scores = torch.tensor(weights) @ lp[:, p - 1, :]  # (B, V)
                out[:, row] = (torch.logsumexp(scores, dim=-1) - scores[:, ids[p]]).numpy()
    return out


def test_per_position_nll_equals_a_float64_full_vocabulary_computation(small, oracle):
    ds, manifest = small
    want = brute_force(ds, manifest, WEIGHTS)
    got = oracle.nll(WEIGHTS, np.arange(ds.n_positions))
    np.testing.assert_allclose(got, want, rtol=0, atol=5e-5)  # float32 models and kernel sums
    assert np.abs(got.mean(axis=1) - want.mean(axis=1)).max() < 2e-5


def test_a_blend_of_one_model_is_that_models_exact_figure_in_the_store(small, oracle):
    ds, _ = small
    got = oracle.nll(WEIGHTS[:3])
    for m, model in enumerate(MODELS):
        np.testing.assert_allclose(got[m], -ds.store.target_lp(model), rtol=0, atol=5e-5, err_msg=model)
        report = oracle.evaluate(WEIGHTS[m])
        for split, figures in ds.model_report(model).splits.items():
            assert report.splits[split].perplexity == pytest.approx(figures.perplexity, rel=1e-5)


def test_gradient_and_hessian_are_the_float64_ones(small, oracle):
    ds, manifest = small
    w = WEIGHTS[4]
    val = ds.split_mask("val")
    eps = 1e-3
    # Central differences of the brute-force mean NLL: exact to O(eps^2) for this smooth function.
    steps = [w + eps * d for d in np.vstack([np.eye(3), -np.eye(3)])]
    f = brute_force(ds, manifest, np.vstack([w, *steps]))[:, val].mean(axis=1)
    grad_fd = (f[1:4] - f[4:7]) / (2 * eps)
    mean, grad, hess = oracle.mean_nll_grad_hess(w, split="val")
    assert mean == pytest.approx(f[0], abs=2e-5)
    np.testing.assert_allclose(grad, grad_fd, rtol=1e-4, atol=1e-5)
    hess_fd = np.column_stack([
        (oracle.mean_nll_grad_hess(w + eps * d, split="val")[1] - oracle.mean_nll_grad_hess(w - eps * d, split="val")[1])
        / (2 * eps) for d in np.eye(3)
    ])
    np.testing.assert_allclose(hess, hess_fd, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(hess, hess.T)
    assert np.linalg.eigvalsh(hess).min() > -1e-9  # convex


def test_newton_on_the_oracle_finds_the_exact_optimum(oracle):
    found = newton_search(oracle, split="val")
    assert found.converged
    best = oracle.mean_nll(found.weights, split="val")
    rng = np.random.default_rng(0)
    around = found.weights + rng.normal(scale=0.05, size=(16, 3))
    assert (oracle.mean_nll(around, split="val") > best).all()
    report = oracle.evaluate(found.weights)
    assert not report.is_estimate and report.estimator == oracle.estimator


def test_another_tokenizer_or_a_missing_model_is_one_clear_error(small, tmp_path):
    ds, manifest = small
    other = tmp_path / "requests.jsonl"
    records = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]
    records[0]["params"]["prompt"] = records[0]["params"]["prompt"].replace(" ", "  ", 1)
    other.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    with pytest.raises(OracleError, match="otherwise than the store|into .* tokens, the store has"):
        Oracle(ds, MODELS, model_dirs(TESTBED_DIR), requests=other).nll(WEIGHTS[3])
    with pytest.raises(OracleError, match="no model directory for"):
        Oracle(ds, MODELS, {MODELS[0]: model_dirs(TESTBED_DIR)[MODELS[0]]}, requests=manifest)
    broken = tmp_path / "broken"
    shutil.copytree(model_dirs(TESTBED_DIR)[MODELS[0]], broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(OracleError, match="cannot be loaded"):
        Oracle(ds, MODELS, {**model_dirs(TESTBED_DIR), MODELS[0]: broken}, requests=manifest)

