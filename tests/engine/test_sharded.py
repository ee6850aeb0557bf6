"""A sharded store evaluates as the unsharded store of the same data does: every estimator's
figures to the bit in memory (each estimator fills a position from its own data alone), and
shard by shard (``--stream``) per-position NLL to the bit and sums within 1e-12 relative (added
shard by shard: another rounding). Its blend matrices are cached per shard, so an append keeps
the older shards' caches."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import engine
import engine.matrix_cache as matrix_cache
from engine.calibration.fit_file import read_fit
from engine.evaluation import evaluate
from engine.masked_blend import masked_blend
from engine.masks import Mask, apply_mask
from engine.tuning.tune import tune
from ingest import ingest_responses
from ingest.store import BLEND_CACHE_DIR, Store
from tests.helpers import (
    GRIMM_DIR,
    GRIMM_ROLES,
    ROLE_ARGS,
    SHARD_POSITIONS,
    approxft,
    cut_collection,
)

WEIGHTS = np.array([[1.0, 1.0, -1.0], [0.7, 1.6, -0.9], [1.3, 0.4, -0.2]])


def test_calibrate_fits_a_grimm_sharded_store_as_it_fits_the_unsharded_one(grimm_sharded_store, grimm_dataset):
    sharded = engine.open_dataset(grimm_sharded_store)
    assert len(sharded.store.shards) == 5
    models = list(GRIMM_ROLES.values())
    assert read_fit(sharded.store, models).to_json() == read_fit(grimm_dataset.store, models).to_json()


@pytest.mark.parametrize("estimator", ["calibrated-tail", "zipf-tail", "spread-tail", "union-kth-tail", "prototype"])
def test_every_estimator_gives_the_unsharded_figures_in_memory_to_the_bit(grimm_sharded_store, grimm_dataset, estimator):
    plain = grimm_dataset.blend(**GRIMM_ROLES, estimator=estimator)
    sharded = engine.open_dataset(grimm_sharded_store).blend(**GRIMM_ROLES, estimator=estimator)
    for name in ("offsets", "values", "outside"):
        assert np.array_equal(getattr(sharded.matrix, name), getattr(plain.matrix, name))
    assert np.array_equal(sharded.nll(WEIGHTS), plain.nll(WEIGHTS))
    assert np.array_equal(sharded.mean_nll(WEIGHTS, split="val"), plain.mean_nll(WEIGHTS, split="val"))


@pytest.mark.parametrize("estimator", ["calibrated-tail", "zipf-tail", "prototype"])
def test_streamed_shard_by_shard_the_figures_are_the_same(grimm_sharded_store, grimm_dataset, estimator):
    plain = grimm_dataset.blend(**GRIMM_ROLES, estimator=estimator)
    streamed = engine.open_dataset(grimm_sharded_store, streaming=True).blend(**GRIMM_ROLES, estimator=estimator)
    assert streamed.matrix is None and streamed.estimator == plain.estimator
    assert np.array_equal(streamed.nll(WEIGHTS), plain.nll(WEIGHTS))  # per position: to the bit
    rows = np.array([0, SHARD_POSITIONS - 5, 30_000, grimm_dataset.n_positions - 1])
    assert np.array_equal(streamed.nll(WEIGHTS[0], rows), plain.nll(WEIGHTS[0], rows))
    for split in ("val", "test"):
        np.testing.assert_allclose(streamed.mean_nll(WEIGHTS, split=split, min_context=50),
                                   plain.mean_nll(WEIGHTS, split=split, min_context=50), rtol=1e-12)
    for got, want in zip(streamed.mean_nll_grad_hess(WEIGHTS[1], split="val"),
                         plain.mean_nll_grad_hess(WEIGHTS[1], split="val"), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    got, want = streamed.evaluate(WEIGHTS[2]), plain.evaluate(WEIGHTS[2])
    for split in ("val", "test"):
        assert got.splits[split].positions == want.splits[split].positions
        assert got.splits[split].perplexity == pytest.approx(want.splits[split].perplexity, rel=1e-12)
    np.testing.assert_allclose(streamed.document_sums(WEIGHTS).cell_nll, plain.document_sums(WEIGHTS).cell_nll,
                               rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("mask", [None, Mask("top-p", "grimm-big", 0.9)])
def test_streamed_eval_and_tune_hold_nothing_per_position_for_the_whole_store(grimm_sharded_store, grimm_dataset, mask):
    # What makes a streamed store's memory independent of its size: every figure of eval and tune
    # (model reports and their document intervals, the blend's, tuning's passes) reads each shard's
    # positions as it reaches it; the store-wide arrays (``Dataset.whole``, the positions table,
    # the candidate runs' offsets) are never made.
    ds = engine.open_dataset(grimm_sharded_store, streaming=True)
    floor = 30.0 if mask else None
    got = evaluate(ds, models=list(GRIMM_ROLES.values()), parametrization="loglinear", params=list(WEIGHTS[1]),
                   estimator="zipf-tail", mask=mask, mask_floor=floor)
    found = tune(ds.blend(**GRIMM_ROLES, estimator="zipf-tail") if mask is None
                 else masked_blend(ds.blend(**GRIMM_ROLES, estimator="zipf-tail"), mask, floor=floor), method="newton")
    assert "whole" not in vars(ds) and "positions" not in vars(ds.store) and "_offsets" not in vars(ds.store)
    # Its layout, made shard by shard, is the one made from the whole positions table.
    assert (ds.layout.splits, ds.layout.n_buckets) == (grimm_dataset.layout.splits, grimm_dataset.layout.n_buckets)
    assert ds.layout.documents.equals(grimm_dataset.layout.documents)
    want = evaluate(grimm_dataset, models=list(GRIMM_ROLES.values()), parametrization="loglinear",
                    params=list(WEIGHTS[1]), estimator="zipf-tail", mask=mask, mask_floor=floor)
    assert got.unobserved == want.unobserved and got.mask == want.mask
    for mine, theirs in zip([*got.models, got.blend], [*want.models, want.blend], strict=True):
        for split in grimm_dataset.splits:
            assert mine.splits[split].positions == theirs.splits[split].positions
            assert mine.splits[split].n_bytes == theirs.splits[split].n_bytes
            assert mine.splits[split].perplexity == pytest.approx(theirs.splits[split].perplexity, rel=1e-12)
            assert mine.documents[split] == pytest.approx(theirs.documents[split], rel=1e-12)
        assert mine.by_context.select("split", "context_lo", "positions").equals(
            theirs.by_context.select("split", "context_lo", "positions"))
    plain = grimm_dataset.blend(**GRIMM_ROLES, estimator="zipf-tail")
    np.testing.assert_allclose(found.weights, tune(plain if mask is None else masked_blend(plain, mask, floor=floor),
                                                   method="newton").weights, rtol=1e-9)


@pytest.mark.parametrize(("estimator", "floor"), [("zipf-tail", None), ("prototype", None), ("calibrated-tail", 30.0)])
def test_a_masked_blend_streamed_gives_the_in_memory_masked_figures(grimm_sharded_store, grimm_dataset, estimator,
                                                                   floor):
    # The three ways a mask charges a dropped target: +inf outside the matrix (zipf-tail), a -inf
    # fixed term beside the prototype's own outside NLL, a floor (calibrated-tail: a fixed row).
    mask = Mask("top-p", "grimm-big", 0.9)
    plain = masked_blend(grimm_dataset.blend(**GRIMM_ROLES, estimator=estimator), mask, floor=floor)
    base = engine.open_dataset(grimm_sharded_store, streaming=True).blend(**GRIMM_ROLES, estimator=estimator)
    streamed = masked_blend(base, mask, floor=floor)
    assert streamed.matrix is None and streamed.inner.source.mask == mask and base.source.mask is None
    assert np.array_equal(streamed.outside, plain.outside) and streamed.outside.sum() > 0
    assert streamed.describe() == plain.describe() and streamed.note() == plain.note()
    with pytest.raises(ValueError, match=f"this '{estimator}' blend is masked already$"):  # its source masks
        masked_blend(streamed.inner, Mask("relative", "grimm-big", 0.1))
    # Per position to the bit: each shard is masked as it is read, then continued (the other order
    # would drop the padding that keeps a shard's last runs on the in-matrix kernel path).
    nll = plain.nll(WEIGHTS)
    assert np.array_equal(streamed.nll(WEIGHTS), nll)
    unmasked = grimm_dataset.blend(**GRIMM_ROLES, estimator=estimator).matrix
    dropped = nll[:, apply_mask(unmasked, tuple(GRIMM_ROLES.values()), mask).target_outside]
    assert np.isinf(dropped).all() if floor is None else (dropped == floor).all()
    # Sums within 1e-12 relative (added shard by shard), infinite in the same cells.
    np.testing.assert_allclose(streamed.document_sums(WEIGHTS).cell_nll, plain.document_sums(WEIGHTS).cell_nll,
                               rtol=1e-12, atol=1e-9)
    got, want = streamed.evaluate(WEIGHTS[2]), plain.evaluate(WEIGHTS[2])
    np.testing.assert_allclose(got.by_context["perplexity"].to_numpy(), want.by_context["perplexity"].to_numpy(),
                               rtol=1e-12)
    if floor is not None:
        for split in ("val", "test"):
            assert got.splits[split].perplexity == pytest.approx(want.splits[split].perplexity, rel=1e-12)
        for a, b in zip(streamed.mean_nll_grad_hess(WEIGHTS[1], split="val"),
                        plain.mean_nll_grad_hess(WEIGHTS[1], split="val"), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_masked_matrices_are_never_cached_the_cache_holds_the_unmasked_ones(tmp_path, monkeypatch,
                                                                           grimm_sharded_store):
    store = tmp_path / "copy.store"
    shutil.copytree(grimm_sharded_store, store)
    monkeypatch.setattr(matrix_cache, "MIN_POSITIONS", 0)
    plain = engine.open_dataset(store).blend(**GRIMM_ROLES, estimator="zipf-tail")
    cached = cache_folders(store)
    mask = Mask("relative", "grimm-big", 0.05)
    streamed = masked_blend(engine.open_dataset(store, streaming=True).blend(**GRIMM_ROLES, estimator="zipf-tail"),
                            mask)
    assert np.array_equal(streamed.nll(WEIGHTS), masked_blend(plain, mask).nll(WEIGHTS))
    # The masked matrices were made from the unmasked shards' caches, and not stored.
    assert len(cached) == 5 and cache_folders(store) == cached


def test_newton_tunes_a_grimm_sharded_store_to_the_same_weights(grimm_sharded_store, grimm_dataset):
    want = tune(grimm_dataset.blend(**GRIMM_ROLES), method="newton")
    got = tune(engine.open_dataset(grimm_sharded_store).blend(**GRIMM_ROLES), method="newton")
    assert np.array_equal(got.weights, want.weights)
    streamed = tune(engine.open_dataset(grimm_sharded_store, streaming=True).blend(**GRIMM_ROLES), method="newton")
    np.testing.assert_allclose(streamed.weights, want.weights, rtol=1e-9)
    assert streamed.report.splits["test"].perplexity == pytest.approx(want.report.splits["test"].perplexity, rel=1e-9)


def cache_folders(store) -> set[str]:
    return {p.name for p in (store / BLEND_CACHE_DIR).iterdir()}


def test_the_matrix_is_cached_per_shard_and_an_append_keeps_the_older_shards_caches(tmp_path, monkeypatch,
                                                                                     grimm_dataset):
    monkeypatch.setattr(matrix_cache, "MIN_POSITIONS", 0)
    n_requests = len((GRIMM_DIR / "requests.jsonl").read_text().splitlines())
    first, later = cut_collection(tmp_path / "a", 0, 60), cut_collection(tmp_path / "b", 60, n_requests)
    store = ingest_responses(first[0], requests=first[1], out=tmp_path / "s", vocab_size=50257,
                             shard_positions=SHARD_POSITIONS)
    engine.open_dataset(store).blend(**GRIMM_ROLES, estimator="zipf-tail")
    cached = cache_folders(store)
    assert len(cached) == len(engine.open_dataset(store).store.shards) == 3
    ingest_responses(later[0], requests=later[1], out=store, append=True)
    assert cache_folders(store) == cached  # carried over, each still keyed by its shard

    built, read = [], Store.union_columns

    def recording(self, models):
        built.append([s.folder.name for s in self.shards])
        return read(self, models)

    monkeypatch.setattr(Store, "union_columns", recording)
    blend = engine.open_dataset(store).blend(**GRIMM_ROLES, estimator="zipf-tail")
    assert built == [["00003"]] and len(cache_folders(store)) == 4
    want = grimm_dataset.blend(**GRIMM_ROLES, estimator="zipf-tail")
    assert np.array_equal(blend.matrix.values, want.matrix.values)
    assert np.array_equal(blend.nll(WEIGHTS), want.nll(WEIGHTS))


@pytest.mark.parametrize("mask", [[], ["--mask", "top-p:grimm-big=0.9"]])
def test_eval_stream_prints_the_in_memory_figures(grimm_sharded_store, tmp_path, mask):
    copy = tmp_path / "copy.store"
    shutil.copytree(grimm_sharded_store, copy)
    args = ["eval", copy, *ROLE_ARGS, "--weights", "0.9,1.2,-0.8", *mask, "--format", "json"]
    memory, streamed = approxft(*args), approxft(*args, "--stream")
    assert memory.returncode == 0 and streamed.returncode == 0, streamed.stderr
    a, b = json.loads(memory.stdout), json.loads(streamed.stdout)
    if mask:  # the same block; no floor: the splits' perplexities are infinite (null), the buckets' some finite
        assert b["blend"]["mask"] == a["blend"]["mask"] and b["blend"]["mask"]["targets_outside"]["val"] > 0
        assert b["blend"]["val"] is None

    def numbers(x):
        if isinstance(x, dict):
            return [n for v in x.values() for n in numbers(v)]
        if isinstance(x, list):
            return [n for v in x for n in numbers(v)]
        return [x]

    assert [type(x) for x in numbers(a)] == [type(x) for x in numbers(b)]
    for x, y in zip(numbers(a), numbers(b), strict=True):
        assert x == y if not isinstance(x, float) else x == pytest.approx(y, rel=1e-12)


def test_tune_stream_under_a_mask_refuses_dropped_targets_unless_floored(grimm_sharded_store, grimm_dataset):
    args = ["tune", grimm_sharded_store, *ROLE_ARGS, "--stream", "--mask", "relative:grimm-big=0.05", "--method",
            "newton", "--format", "json"]
    mask = Mask("relative", "grimm-big", 0.05)
    dropped = masked_blend(grimm_dataset.blend(**GRIMM_ROLES), mask).targets_outside()["val"]
    refused = approxft(*args)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert f"mask relative:grimm-big=0.05 drops the target at {dropped:,} val positions" in refused.stderr
    floored = approxft(*args, "--mask-floor", "30")
    assert floored.returncode == 0, floored.stderr
    got = json.loads(floored.stdout)
    want = tune(grimm_dataset.blend(**GRIMM_ROLES), method="newton", mask=mask, mask_floor=30.0)
    assert got["best"]["mask"] == want.mask
    assert got["best"]["mask"]["floor"] == 30.0 and got["best"]["mask"]["targets_outside"]["val"] == dropped
    np.testing.assert_allclose(got["loglinear_weights"], want.weights, rtol=1e-9)
    assert got["best"]["test"] == pytest.approx(want.report.splits["test"].perplexity, rel=1e-9)


@pytest.mark.parametrize(("extra", "message"), [
    (["--ray", "local:2"], "--stream runs in this process: leave out --ray"),
    (["--estimator", "all"], "--stream evaluates one estimator's blend: name one instead of --estimator all"),
])
def test_stream_refuses_what_it_cannot_do_in_one_line(grimm_sharded_store, extra, message):
    done = approxft("eval", grimm_sharded_store, *ROLE_ARGS, "--stream", *extra)
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and message in done.stderr


def test_matrices_are_put_together_only_where_their_runs_fill_them(grimm_dataset):
    from engine.blend import continued
    from engine.candidates import CandidateMatrix

    matrix = grimm_dataset.blend(**GRIMM_ROLES, estimator="zipf-tail").matrix
    head, tail = matrix.take(np.arange(100)), matrix.take(np.arange(100, 250))
    sizes = {"n_positions": 250, "n_rows": matrix.values.shape[0],
             "n_columns": head.values.shape[1] + tail.values.shape[1]}
    whole = CandidateMatrix.concatenate([head, tail], **sizes, trailing=16)
    assert np.array_equal(whole.values[:, :-16], matrix.take(np.arange(250)).values)
    assert not whole.values[:, -16:].any() and np.array_equal(whole.offsets, matrix.take(np.arange(250)).offsets)
    with pytest.raises(ValueError, match="parts cannot skip columns"):
        CandidateMatrix.concatenate([continued(head), tail], **{**sizes, "n_columns": sizes["n_columns"] + 16})
