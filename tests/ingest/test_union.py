"""The union candidate layout against a slow, obviously correct twin."""

from __future__ import annotations

import numpy as np
import pytest

from ingest.store import Candidates
from ingest.union import union_candidates


def naive_union_candidates(target, target_lp, topk_ids, topk_lp) -> Candidates:
    """Run i: the target, then each model's ids in rank order, skipping -1 and ids already in."""
    n_models = len(topk_ids)
    offsets, token = [0], []
    lp: list[list[float]] = [[] for _ in range(n_models)]
    rank: list[list[int]] = [[] for _ in range(n_models)]
    for i in range(len(target)):
        run = [int(target[i])]
        for ids in topk_ids:
            for v in ids[i]:
                if v >= 0 and v not in run:
                    run.append(int(v))
        for slot, c in enumerate(run):
            token.append(c)
            for m in range(n_models):
                ranks = [r for r, v in enumerate(topk_ids[m][i]) if v == c]
                rank[m].append(ranks[0] if ranks else -1)
                if slot == 0:
                    lp[m].append(target_lp[m][i])
                else:
                    lp[m].append(topk_lp[m][i][ranks[0]] if ranks else np.nan)
        offsets.append(len(token))
    return Candidates(
        offsets=np.array(offsets, dtype=np.uint64),
        token=np.array(token, dtype=np.int32),
        lp=np.array(lp, dtype=np.float32).reshape(n_models, -1),
        rank=np.array(rank, dtype=np.int16).reshape(n_models, -1),
    )


def random_inputs(rng, *, n, ks, n_vocab, empty=0.2):
    target = rng.integers(0, n_vocab, n).astype(np.int32)
    target_lp = rng.normal(-3, 2, (len(ks), n)).astype(np.float32)
    target_lp[rng.random(target_lp.shape) < 0.1] = np.nan
    target_lp[rng.random(target_lp.shape) < 0.05] = -np.inf
    topk_ids, topk_lp = [], []
    for k in ks:
        ids = np.array([rng.choice(n_vocab, k, replace=False) for _ in range(n)], np.int32).reshape(n, k)
        lp = -np.sort(rng.exponential(2, (n, k)), axis=1).astype(np.float32)
        # Unobserved slots come last in a row, as in the store.
        n_empty = rng.binomial(k, empty, n)
        unused = np.arange(k)[None, :] >= (k - n_empty)[:, None]
        ids[unused], lp[unused] = -1, np.nan
        topk_ids.append(ids)
        topk_lp.append(lp)
    return target, target_lp, topk_ids, topk_lp


def assert_same(got: Candidates, want: Candidates):
    np.testing.assert_array_equal(got.offsets, want.offsets)
    np.testing.assert_array_equal(got.token, want.token)
    np.testing.assert_array_equal(got.lp, want.lp)  # NaN == NaN here
    np.testing.assert_array_equal(got.rank, want.rank)
    assert got.offsets.dtype == np.uint64 and got.token.dtype == np.int32
    assert got.lp.dtype == np.float32 and got.rank.dtype == np.int16
    assert got.lp.flags.c_contiguous


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(("ks", "n_vocab"), [((4, 2, 5), 12), ((20, 20), 60), ((1,), 3), ((3, 3, 3, 3), 5)])
def test_matches_naive(seed, ks, n_vocab):
    rng = np.random.default_rng(seed)
    inputs = random_inputs(rng, n=40, ks=ks, n_vocab=n_vocab)
    assert_same(union_candidates(*inputs, n_vocab=n_vocab), naive_union_candidates(*inputs))


def test_no_positions():
    inputs = random_inputs(np.random.default_rng(0), n=0, ks=(3, 2), n_vocab=5)
    got = union_candidates(*inputs, n_vocab=5)
    assert got.offsets.tolist() == [0] and got.token.shape == (0,) and got.lp.shape == (2, 0)


def test_all_slots_empty_leaves_the_target_alone():
    inputs = random_inputs(np.random.default_rng(1), n=6, ks=(3,), n_vocab=9, empty=1.0)
    got = union_candidates(*inputs, n_vocab=9)
    assert np.diff(got.offsets).tolist() == [1] * 6
    np.testing.assert_array_equal(got.token, inputs[0])
    assert (got.rank == -1).all()


def test_target_in_top_k_keeps_exact_lp_and_gets_rank():
    target = np.array([7], np.int32)
    target_lp = np.array([[-1.25], [-2.5]], np.float32)
    ids = [np.array([[3, 7, 5]], np.int32), np.array([[7, 3, -1]], np.int32)]
    lp = [np.array([[-1.0, -1.2, -4.0]], np.float32), np.array([[-2.4, -3.0, np.nan]], np.float32)]
    got = union_candidates(target, target_lp, ids, lp, n_vocab=8)
    assert got.token.tolist() == [7, 3, 5]
    np.testing.assert_array_equal(got.lp, np.array([[-1.25, -1.0, -4.0], [-2.5, -3.0, np.nan]], np.float32))
    assert got.rank.tolist() == [[1, 0, 2], [0, 1, -1]]


def test_rejects_ids_outside_the_vocabulary():
    inputs = random_inputs(np.random.default_rng(2), n=4, ks=(2,), n_vocab=9)
    with pytest.raises(ValueError, match="n_vocab"):
        union_candidates(*inputs, n_vocab=3)
