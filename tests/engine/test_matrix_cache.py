"""The blend matrix cache (``engine.matrix_cache``): read back bit for bit instead of built, keyed
by what the matrix depends on, rebuilt where it is damaged or stale, never in the way."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import engine.matrix_cache as matrix_cache
from engine import open_dataset
from engine.dataset import Dataset
from ingest.store import BLEND_CACHE_DIR, Store, is_store
from tests.helpers import GRIMM_ROLES

WEIGHTS = np.array([[1.0, 1.0, -1.0], [0.7, 1.6, -0.9]])


@pytest.fixture
def store(golden_dataset, tmp_path, monkeypatch):
    """A copy of the golden store, small as it is, cached as a large one would be."""
    monkeypatch.setattr(matrix_cache, "MIN_POSITIONS", 0)
    path = tmp_path / "golden.store"
    shutil.copytree(golden_dataset.store.path, path)
    return path


def figures(ds: Dataset, estimator: str = "zipf-tail") -> np.ndarray:
    blend = ds.blend(**GRIMM_ROLES, estimator=estimator)
    return np.stack([blend.mean_nll(WEIGHTS, split=s) for s in ("val", "test")])


def folders(store):
    return sorted(p.name for p in (store / BLEND_CACHE_DIR).iterdir())


def test_a_cached_matrix_is_read_back_bit_for_bit_without_reading_the_candidates(store, monkeypatch):
    built = open_dataset(store).blend(**GRIMM_ROLES, estimator="zipf-tail").matrix
    [key] = folders(store)
    assert sorted(p.name for p in (store / BLEND_CACHE_DIR / key).iterdir()) == [
        "matrix.json", "offsets.npy", "outside.npy", "values.npy"]
    assert is_store(store)  # ingest may still replace it

    def unread(self, models):
        raise AssertionError("the candidates were read: the cache was not used")

    monkeypatch.setattr(Store, "union_columns", unread)
    again = open_dataset(store).blend(**GRIMM_ROLES, estimator="zipf-tail").matrix
    for name in ("offsets", "values", "outside"):
        assert np.array_equal(getattr(again, name), getattr(built, name))
    assert (again.estimator, again.n_models, again.outside_nll) == (built.estimator, built.n_models, built.outside_nll)


def test_each_estimator_and_model_order_has_its_own_key(store):
    ds = open_dataset(store)
    zipf, spread = figures(ds, "zipf-tail"), figures(ds, "spread-tail")
    ds.blend(big=GRIMM_ROLES["tuned"], tuned=GRIMM_ROLES["big"], untuned=GRIMM_ROLES["untuned"], estimator="zipf-tail")
    assert len(folders(store)) == 3
    again = open_dataset(store)
    assert np.array_equal(figures(again, "zipf-tail"), zipf) and np.array_equal(figures(again, "spread-tail"), spread)


@pytest.mark.parametrize("damage", ["truncated values", "values of another shape", "a NaN", "no matrix.json"])
def test_a_damaged_cache_is_built_again_and_replaced(store, damage):
    want = figures(open_dataset(store))
    [key] = folders(store)
    folder = store / BLEND_CACHE_DIR / key
    values = np.load(folder / "values.npy")
    original = values.copy()
    if damage == "truncated values":
        (folder / "values.npy").write_bytes((folder / "values.npy").read_bytes()[:1000])
    elif damage == "values of another shape":
        np.save(folder / "values.npy", values[:, :-1])
    elif damage == "a NaN":
        values[1, 5] = np.nan
        np.save(folder / "values.npy", values)
    else:
        (folder / "matrix.json").unlink()
    assert np.array_equal(figures(open_dataset(store)), want)
    assert folders(store) == [key]  # replaced under the same key
    assert np.array_equal(np.load(folder / "values.npy"), original) and (folder / "matrix.json").exists()


def test_a_cache_of_older_code_is_never_read_and_is_removed(store, monkeypatch):
    want = figures(open_dataset(store))
    [key] = folders(store)
    old = store / BLEND_CACHE_DIR / key
    meta = json.loads((old / "matrix.json").read_text())
    values = np.load(old / "values.npy")
    np.save(old / "values.npy", values - 1.0)  # what older code might have filled
    (old / "matrix.json").write_text(json.dumps({**meta, "code": "older"}))
    monkeypatch.setattr(matrix_cache, "_code_digest", lambda: "newer")  # the code has changed since
    assert np.array_equal(figures(open_dataset(store)), want)
    [new] = folders(store)
    assert new != key


def test_a_store_folder_that_cannot_hold_a_cache_is_left_as_it_is(store):
    (store / BLEND_CACHE_DIR).write_text("not a folder")
    want = figures(open_dataset(store))
    assert (store / BLEND_CACHE_DIR).read_text() == "not a folder"
    assert np.array_equal(figures(open_dataset(store)), want)


def test_small_stores_are_not_cached(golden_dataset, tmp_path):
    path = tmp_path / "golden.store"
    shutil.copytree(golden_dataset.store.path, path)
    figures(open_dataset(path))
    assert not (path / BLEND_CACHE_DIR).exists()


def test_a_large_unsharded_store_is_built_and_cached_in_pieces_bit_for_bit(store, golden_dataset, monkeypatch):
    # Pieces of 30 rows stand for 250,000: each piece reads the Parquet row groups holding its
    # rows, keeps its slice, and is cached under the store's fingerprint with its range; put
    # together, the matrix is the whole build's.
    monkeypatch.setattr(matrix_cache, "PIECE_POSITIONS", 30)
    whole = golden_dataset.blend(**GRIMM_ROLES, estimator="zipf-tail").matrix  # built whole: no cache
    built = open_dataset(store).blend(**GRIMM_ROLES, estimator="zipf-tail").matrix
    assert len(folders(store)) == -(-golden_dataset.n_positions // 30) > 1  # a cache per piece
    monkeypatch.setattr(Store, "union_columns", lambda self, models: pytest.fail("read again, not from the cache"))
    again = open_dataset(store).blend(**GRIMM_ROLES, estimator="zipf-tail").matrix
    for name in ("offsets", "values", "outside"):
        assert np.array_equal(getattr(built, name), getattr(whole, name))
        assert np.array_equal(getattr(again, name), getattr(whole, name))


def test_a_piece_of_a_store_reads_its_rows_of_every_table(grimm_dataset):
    full = grimm_dataset.store
    models = list(GRIMM_ROLES.values())
    lp, rank = full.union_columns(models)
    offsets = full.offsets()
    ids, top = full.topk(models[0])
    for lo, hi in ((0, 1), (12_345, 40_000), (40_000, full.n_positions)):
        piece = full.piece(lo, hi)
        assert piece.n_positions == hi - lo and piece.fingerprint == f"{full.fingerprint}#rows {lo}:{hi}"
        c_lo, c_hi = int(offsets[lo]), int(offsets[hi])
        np.testing.assert_array_equal(piece.offsets(), offsets[lo : hi + 1] - offsets[lo])
        got_lp, got_rank = piece.union_columns(models)
        np.testing.assert_array_equal(got_lp, lp[:, c_lo:c_hi])
        np.testing.assert_array_equal(got_rank, rank[:, c_lo:c_hi])
        np.testing.assert_array_equal(piece.candidates(models).token, full.candidates(models).token[c_lo:c_hi])
        assert piece.positions.equals(full.positions.slice(lo, hi - lo))
        np.testing.assert_array_equal(piece.topk(models[0])[0], ids[lo:hi])
        np.testing.assert_array_equal(piece.target_lp(models[1]), full.target_lp(models[1])[lo:hi])
