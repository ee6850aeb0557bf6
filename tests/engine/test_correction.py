"""The sampled correction (``engine.correction``) against the exact oracle, on a store of two
testbed requests whose every position has the models' whole distributions in a stored sample
(written as ``approxft collect --calibration-k all`` writes one, stored by ``calibrate``)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

pytest.importorskip("torch", reason="needs the local extra: pip install 'approxft[local]'")

from bench.testbed.reader import TESTBED_DIR, model_dirs  # noqa: E402
from engine import open_dataset  # noqa: E402
from engine.calibration.full import full_sample_dir  # noqa: E402
from engine.correction import CorrectedBlend  # noqa: E402
from engine.report import NO_INTERVAL  # noqa: E402
from engine.tuning import newton_search, tune  # noqa: E402
from ingest.deep_sample import FULL_STEP, DeepLists, quantize_full, write_deep_sample  # noqa: E402
from ingest.sampling import stratified_sample  # noqa: E402
from ingest.serve.model import load_model  # noqa: E402
from tests.helpers import approxft  # noqa: E402

from .conftest import TESTBED_MODELS  # noqa: E402

ROLES = dict(zip(("big", "tuned", "untuned"), TESTBED_MODELS, strict=True))
FILES = [f"{role}.npz" for role in ROLES]
WEIGHTS = np.array([[1.0, 1.0, -1.0], [0.6, 1.8, -1.7], [1.3, 0.4, -0.2], [0.235, 0.975, -0.217]])


def write_full_sample(ds, oracle, out, *, top_only: dict[str, int] | None = None) -> None:
    """Every position's whole distributions from the oracle, as ``<role>.npz`` in ``out``;
    ``top_only``: roles known by their top-K lists instead."""
    rows = np.arange(ds.n_positions)
    lp = np.concatenate([chunk for _, chunk in oracle.distributions(rows)], axis=1)  # (3, n, V)
    target = oracle.target_ids(rows)
    pos = ds.store.positions
    request, position = pos.get_column("request").to_numpy(), pos.get_column("position").to_numpy()
    lists = {}
    for m, role in enumerate(ROLES):
        target_lp = lp[m, rows, target]
        k = (top_only or {}).get(role)
        if k is None:
            lists[role] = DeepLists(ids=None, lp=None, target_lp=target_lp, request=request, position=position,
                                    full=quantize_full(lp[m]))
        else:
            ids = np.argsort(-lp[m], axis=1)[:, :k]
            lists[role] = DeepLists(ids=ids, lp=np.take_along_axis(lp[m], ids, axis=1), target_lp=target_lp,
                                    request=request, position=position)
    strings = load_model(model_dirs(TESTBED_DIR)[TESTBED_MODELS[0]], TESTBED_MODELS[0]).token_strings
    write_deep_sample(out, lists.items(), strings)


@pytest.fixture(scope="module")
def full(small, oracle, tmp_path_factory):
    """A copy of the two-request store, calibrated on a full sample of all its positions, and
    that sample's folder."""
    ds, _ = small
    root = tmp_path_factory.mktemp("full")
    store = shutil.copytree(ds.store.path, root / "store")
    write_full_sample(ds, oracle, root / "deep")
    full_ds = open_dataset(store)
    full_ds.calibrate(root / "deep", models=TESTBED_MODELS, files=FILES)
    return full_ds, root / "deep"


def test_the_default_is_the_correction_and_a_census_gives_the_exact_figure(full, oracle):
    ds, _ = full
    blend = ds.blend(**ROLES)
    assert isinstance(blend, CorrectedBlend) and blend.estimator == "corrected:calibrated-tail"
    exact = oracle.evaluate(WEIGHTS)
    for report, truth in zip(blend.evaluate(WEIGHTS), exact, strict=True):
        for split in ("val", "test"):
            # Every position sampled: only the cells and the fixed point are left (<= 2.4e-3 nats).
            assert report.splits[split].mean_nll == pytest.approx(truth.splits[split].mean_nll, abs=3e-3)
            lo, hi = report.interval[split]
            assert hi - lo < 1e-9 * hi  # a census: no sampling error left
        assert "95% interval of the sampled correction" in report.interval_kind
    base = ds.blend(**ROLES, estimator="calibrated-tail").evaluate(WEIGHTS[1])
    assert base.interval_kind == NO_INTERVAL
    assert abs(base.splits["test"].mean_nll - exact[1].splits["test"].mean_nll) > 0.05  # the correction mattered


def test_intervals_from_a_third_of_the_positions_cover_the_exact_figure(full, oracle):
    ds, _ = full
    blend = ds.blend(**ROLES)
    census = blend.sample
    exact = oracle.evaluate(WEIGHTS)
    covered, total = 0, 0
    for seed in range(40):
        index = stratified_sample(ds.whole.group[census.rows], census.n_positions // 3, seed)
        part = CorrectedBlend(blend.base, census.take(index, f"a third, seed {seed}"))
        for report, truth in zip(part.evaluate(WEIGHTS), exact, strict=True):
            for split in ("val", "test"):
                lo, hi = report.interval[split]
                covered += lo <= truth.splits[split].perplexity <= hi
                total += 1
    assert covered / total >= 0.85, (covered, total)  # a 95% interval, 320 draws of correlated samples


def test_the_corrected_gradient_and_hessian_are_its_finite_differences(full):
    ds, _ = full
    blend = ds.blend(**ROLES)
    w = np.array([0.6, 1.5, -1.1])
    mean, grad, hess = blend.mean_nll_grad_hess(w, split="val")
    assert mean == pytest.approx(float(blend.mean_nll(w, split="val")), abs=1e-6)
    eps = 1e-3  # the kernels sum in float32: a smaller step differences rounding
    for i, d in enumerate(np.eye(3)):
        fd = (blend.mean_nll(w + eps * d, split="val") - blend.mean_nll(w - eps * d, split="val")) / (2 * eps)
        assert grad[i] == pytest.approx(float(fd), rel=1e-3, abs=1e-3)
        fd_h = (blend.mean_nll_grad_hess(w + eps * d, split="val")[1]
                - blend.mean_nll_grad_hess(w - eps * d, split="val")[1]) / (2 * eps)
        np.testing.assert_allclose(hess[i], fd_h, rtol=1e-2, atol=2e-3)


def test_tuning_the_correction_lands_near_the_exact_optimum_and_reports_its_interval(full, oracle):
    ds, _ = full
    tuned = tune(ds.blend(**ROLES), method="newton")
    truth = oracle.evaluate(tuned.weights)
    best = oracle.evaluate(newton_search(oracle, split="val").weights)
    assert truth.splits["test"].perplexity <= best.splits["test"].perplexity * 1.01
    assert set(tuned.report.interval) == {"val", "test"}
    assert tuned.report.documents == {}  # one document per split here: nothing to resample
    assert tuned.as_json()["best"]["details"]["test"]["interval"] is not None
    with pytest.raises(ValueError, match="--method tpe"):
        tune(ds.blend(**ROLES), method="newton", objective="upper")
    upper = tune(ds.blend(**ROLES), method="tpe", objective="upper", trials=32, parametrization="loglinear")
    assert upper.objective == "upper" and upper.report.interval["val"] is not None
    assert tuned.warnings == ()  # a census constrains it everywhere
    census = ds.blend(**ROLES).sample
    few = CorrectedBlend(ds.blend(**ROLES).base, census.take(stratified_sample(ds.whole.group[census.rows], 12, 0), "12"))
    loose = tune(few, method="newton")
    assert len(loose.warnings) == 1 and "barely constrains" in loose.warnings[0], loose.report.interval
    assert loose.as_json()["warnings"] == list(loose.warnings)


def test_a_sample_with_the_big_model_at_top_20_says_what_it_assumes(full, small, oracle, tmp_path):
    ds, _ = full
    write_full_sample(small[0], oracle, tmp_path / "mixed", top_only={"big": 20})
    store = shutil.copytree(ds.store.path, tmp_path / "store")
    mixed_ds = open_dataset(store)
    fit, sample = mixed_ds.calibrate(tmp_path / "mixed", models=TESTBED_MODELS, files=FILES)
    assert fit is None and sample.partial == {TESTBED_MODELS[0]: 20}  # top-20 lists at k = 20: nothing to fit
    exact = oracle.evaluate(WEIGHTS)
    for m, truth in zip(mixed_ds.blend(**ROLES).evaluate(WEIGHTS), exact, strict=True):
        assert (f"the error of {TESTBED_MODELS[0]}'s probabilities beyond its top 20 at the sampled positions (its "
                f"remaining mass spread in proportion to {TESTBED_MODELS[2]}'s)") in m.interval_kind
        for split in ("val", "test"):
            # Its tail is assumed, not known: off, but by the shape assumed, not by a lost normalizer.
            assert m.splits[split].perplexity == pytest.approx(truth.splits[split].perplexity, rel=0.3)
            assert m.interval[split] is not None


def snapshot(path):
    return {p.relative_to(path).as_posix(): p.stat().st_mtime_ns for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("damage, message", [
    ("unnormalized", "full"),
    ("narrow", "differ in size"),
])
def test_a_bad_full_sample_is_one_error_and_leaves_the_store_as_it_was(full, tmp_path, damage, message):
    ds, deep = full
    bad = shutil.copytree(deep, tmp_path / "bad")
    with np.load(bad / "tuned.npz") as z:
        arrays = dict(z)
    if damage == "unnormalized":
        arrays["full"] = arrays["full"].copy()
        arrays["full"][3] = np.maximum(arrays["full"][3].astype(np.int64) - 700, 0).astype(np.uint16)  # x 2 mass
    else:  # another tokenizer's 1,000 tokens, normalized
        lp = arrays["full"][:, :1000].astype(np.float64) * -FULL_STEP
        arrays["full"] = quantize_full(lp - np.log(np.exp(lp).sum(axis=1, keepdims=True)))
    np.savez_compressed(bad / "tuned.npz", **arrays)
    store = shutil.copytree(ds.store.path, tmp_path / "store")
    before = snapshot(store)
    args = [a for (role, model), file in zip(ROLES.items(), FILES, strict=True) for a in (f"--{role}", f"{model}={file}")]
    done = approxft("calibrate", store, "--deep", bad, *args)
    assert done.returncode == 1
    assert message in done.stderr and ("tuned.npz" in done.stderr or str(bad) in done.stderr)
    assert len(done.stderr.strip().splitlines()) == 1
    assert snapshot(store) == before
    assert full_sample_dir(store, TESTBED_MODELS).is_dir()  # the earlier sample is still there


def test_a_sharded_store_streamed_gives_the_in_memory_correction(full, small, tmp_path):
    # The correction needs the base's matrix at the sampled positions: a streamed base takes them
    # from each shard's matrix (one request a shard here), and every figure is the in-memory one's.
    ds, deep = full
    _, manifest = small
    from ingest import ingest_responses

    store = ingest_responses(sorted(TESTBED_DIR.glob("testbed-*.jsonl.gz")), requests=manifest, out=tmp_path / "store",
                             vocab_size=ds.store.vocab_size, shard_positions=1)
    open_dataset(store).calibrate(deep, models=TESTBED_MODELS, files=FILES)
    streamed = open_dataset(store, streaming=True).blend(**ROLES)
    plain = ds.blend(**ROLES)
    assert len(streamed.dataset.store.shards) == 2 and streamed.base.matrix is None
    assert streamed.estimator == plain.estimator == "corrected:calibrated-tail"
    for got, want in zip(streamed.evaluate(WEIGHTS), plain.evaluate(WEIGHTS), strict=True):
        for split in ("val", "test"):
            assert got.splits[split].perplexity == pytest.approx(want.splits[split].perplexity, rel=1e-12)
            assert got.interval[split] == pytest.approx(want.interval[split], rel=1e-12)
    np.testing.assert_allclose(streamed.mean_nll(WEIGHTS, split="val"), plain.mean_nll(WEIGHTS, split="val"), rtol=1e-12)
