"""Sharded stores (``ingest --shard-positions N``, ``--append``): read as a whole they give the
very arrays an unsharded store of the same data gives; an append grows a store in one step; a
shard that is not the store's own, or is missing or damaged, is refused by name."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest import IngestError, StoreError, ingest_responses, open_store
from ingest.shards import shard_cuts
from ingest.store import (
    POSITIONS_FILE,
    SHARD_KEY,
    SHARDED_VERSION,
    STORE_JSON,
    VOCAB_FILE,
    Store,
    shard_files,
    shard_folder,
)
from tests.helpers import approxft, cut_collection

MODELS = ("grimm-big", "grimm-small-tuned", "grimm-small")


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> dict[str, tuple[list[Path], Path]]:
    root = tmp_path_factory.mktemp("parts")
    return {"a": cut_collection(root / "a", 0, 20, MODELS), "b": cut_collection(root / "b", 20, 34, MODELS),
            "whole": cut_collection(root / "whole", 0, 34, MODELS)}


@pytest.fixture(scope="module")
def plain(parts, tmp_path_factory) -> Store:
    files, manifest = parts["whole"]
    return open_store(ingest_responses(files, requests=manifest, out=tmp_path_factory.mktemp("plain") / "s",
                                       vocab_size=50257))


def assert_same_data(a: Store, b: Store) -> None:
    """``a`` and ``b`` hold the same data: every array the reader gives is equal (vocab ids aside:
    both name the same token strings)."""
    assert (a.models, a.k, a.n_positions, a.n_requests, a.vocab_size) == (b.models, b.k, b.n_positions, b.n_requests,
                                                                          b.vocab_size)
    assert np.array_equal(a.offsets(), b.offsets())
    tokens_a, tokens_b = (np.array(s.vocab.get_column("token").to_list(), dtype=object) for s in (a, b))
    ca, cb = a.candidates(), b.candidates()
    assert np.array_equal(tokens_a[ca.token], tokens_b[cb.token])
    assert np.array_equal(ca.lp, cb.lp, equal_nan=True) and np.array_equal(ca.rank, cb.rank)
    for model in a.models:
        assert np.array_equal(a.target_lp(model), b.target_lp(model), equal_nan=True)
        (ids_a, lp_a), (ids_b, lp_b) = a.topk(model), b.topk(model)
        assert np.array_equal(np.where(ids_a >= 0, tokens_a[ids_a], ""), np.where(ids_b >= 0, tokens_b[ids_b], ""))
        assert np.array_equal(lp_a, lp_b, equal_nan=True)
    keys = ["request", "position", "split", "document"]
    assert a.positions.select(keys).equals(b.positions.select(keys))
    assert np.array_equal(tokens_a[a.positions["target"].to_numpy()], tokens_b[b.positions["target"].to_numpy()])


@given(st.lists(st.integers(1, 9), max_size=30), st.integers(1, 12))
def test_shards_hold_whole_consecutive_requests_within_the_limit(lengths, limit):
    request = np.repeat(np.arange(len(lengths)), lengths)
    cuts = shard_cuts(request, limit)
    assert cuts[0] == 0 and cuts[-1] == request.size and all(a < b for a, b in zip(cuts[1:-1], cuts[2:]))
    starts = set(np.flatnonzero(np.diff(request, prepend=-1)).tolist()) | {request.size}
    assert set(cuts) <= starts  # every cut falls between two requests
    for lo, hi in zip(cuts, cuts[1:]):
        assert hi - lo <= limit or len(set(request[lo:hi].tolist())) == 1  # over the limit: one long request
    for lo, hi, after in zip(cuts, cuts[1:], cuts[2:]):
        assert after - lo > limit  # greedy: the next request would not have fitted


def test_a_sharded_store_reads_as_the_same_data(parts, plain, tmp_path):
    files, manifest = parts["whole"]
    sharded = open_store(ingest_responses(files, requests=manifest, out=tmp_path / "s", vocab_size=50257,
                                          shard_positions=3000))
    assert sharded.sharded and len(sharded.shards) >= 3 and sharded.sources == plain.sources
    assert json.loads((tmp_path / "s" / STORE_JSON).read_text())["version"] == SHARDED_VERSION
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["shards", STORE_JSON, VOCAB_FILE]
    assert_same_data(sharded, plain)
    assert sharded.fingerprint != plain.fingerprint  # the layout is part of what a fingerprint covers
    sizes = [s.stop - s.start for s in sharded.shards]
    assert max(sizes) <= 3000 and sum(sizes) == plain.n_positions
    for i, shard in enumerate(sharded.shards):
        view = sharded.shard(i)
        rows = slice(shard.start, shard.stop)
        assert view.n_positions == sizes[i] and view.fingerprint == shard.fingerprint
        assert np.array_equal(view.target_lp(MODELS[0]), plain.target_lp(MODELS[0])[rows], equal_nan=True)
        for name in shard_files(sharded.models):
            assert pq.read_metadata(shard.folder / name).metadata[SHARD_KEY] == shard.fingerprint.encode()


@pytest.mark.parametrize("first", ["unsharded", "sharded"])
def test_appended_shards_make_the_store_an_ingest_of_everything_makes(parts, plain, tmp_path, first):
    out = tmp_path / "s"
    files, manifest = parts["a"]
    ingest_responses(files, requests=manifest, out=out, vocab_size=50257,
                     shard_positions=None if first == "unsharded" else 4000)
    before = open_store(out)
    old_vocab = before.vocab
    linked = {p: os.stat(p).st_ino for s in before.shards if before.sharded for p in s.folder.iterdir()}
    files, manifest = parts["b"]
    grown = open_store(ingest_responses(files, requests=manifest, out=out, append=True))
    assert grown.sharded and len(grown.shards) == len(before.shards) + 1
    entries = json.loads((out / STORE_JSON).read_text())["shards"]
    assert grown.sources == before.sources and entries[-1]["sources"] == {f.stem: str(f) for f in files}
    assert entries[0]["sources"] == {f.stem: str(f) for f in parts["a"][0]}
    assert_same_data(grown, plain)
    assert grown.vocab.head(before.vocab_rows).equals(old_vocab)  # the old ids keep their tokens
    assert all(os.stat(p).st_ino == inode for p, inode in linked.items())  # the old shards' files, linked


def test_appended_requests_are_numbered_after_the_store_s(parts, tmp_path):
    """The later collection's manifest numbers its requests from 0 again: the store renumbers."""
    out = tmp_path / "s"
    files, manifest = parts["a"]
    ingest_responses(files, requests=manifest, out=out, shard_positions=100_000)
    files, manifest = parts["b"]
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    renumbered = tmp_path / "renumbered.jsonl"
    renumbered.write_text("".join(json.dumps({**r, "request_index": i}) + "\n" for i, r in enumerate(lines)))
    last = int(open_store(out).positions["request"][-1])
    grown = open_store(ingest_responses(files, requests=renumbered, out=out, append=True))
    new = grown.shard(len(grown.shards) - 1).positions["request"].unique(maintain_order=True).to_list()
    assert new[0] == last + 1 and new == sorted(new)


def test_an_append_that_fails_leaves_the_store_as_it_was(parts, tmp_path):
    out = tmp_path / "s"
    files, manifest = parts["a"]
    ingest_responses(files, requests=manifest, out=out, shard_positions=4000)
    snapshot = {str(p): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    bad = tmp_path / "bad.jsonl"
    lines = parts["b"][0][0].read_text().splitlines(keepends=True)
    bad.write_text("".join(lines[:-1]) + "{not json\n")
    with pytest.raises(IngestError, match="bad.jsonl"):
        ingest_responses([bad, *parts["b"][0][1:]], requests=parts["b"][1], out=out, append=True)
    assert {str(p): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == snapshot
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "s"]  # nothing left beside it


def test_an_append_must_match_the_store(parts, tmp_path):
    out = tmp_path / "s"
    files, manifest = parts["a"]
    ingest_responses(files, requests=manifest, out=out, vocab_size=50257)
    files, manifest = parts["b"]
    with pytest.raises(IngestError, match=r"s: cannot append models grimm-big, grimm-small: the store holds "):
        ingest_responses(files[::2], requests=manifest, out=out, append=True)
    with pytest.raises(IngestError, match=r"cannot append k = 5 for model 'grimm-big': the store has k = 20"):
        ingest_responses(files, requests=manifest, out=out, append=True, k=5)
    with pytest.raises(IngestError, match=r"cannot append with vocabulary size 100: the store records 50257"):
        ingest_responses(files, requests=manifest, out=out, append=True, vocab_size=100)
    with pytest.raises(IngestError, match=r"nowhere: cannot append to it: .*not an approxft store"):
        ingest_responses(files, requests=manifest, out=tmp_path / "nowhere", append=True)


@pytest.fixture
def two_stores(parts, tmp_path) -> tuple[Path, Path]:
    files, manifest = parts["whole"]
    a = ingest_responses(files, requests=manifest, out=tmp_path / "a", shard_positions=3000)
    b = ingest_responses(files[:2], requests=manifest, out=tmp_path / "b", shard_positions=3000)
    return a, b


def test_a_shard_file_from_another_shard_or_store_is_refused(two_stores, parts, tmp_path):
    a, b = two_stores
    moved = a / shard_folder(1) / POSITIONS_FILE
    shutil.copy(a / shard_folder(2) / POSITIONS_FILE, moved)
    with pytest.raises(StoreError, match=rf"{moved}: (\d+ rows, store\.json says \d+|not this store's shard)"):
        open_store(a)
    files, manifest = parts["whole"]
    other = ingest_responses(files, requests=manifest, out=tmp_path / "c", shard_positions=3000, k=19)
    shutil.copy(other / shard_folder(1) / POSITIONS_FILE, moved)
    with pytest.raises(StoreError, match=rf"{moved}: not this store's shard: it carries fingerprint sha256:"):
        open_store(a)
    shutil.copy(b / shard_folder(1) / POSITIONS_FILE, moved)  # two models, not three
    with pytest.raises(StoreError, match=rf"{moved}: schema differs from format approxft-store"):
        open_store(a)


@pytest.mark.parametrize("damage", ["missing", "truncated", "empty"])
def test_a_missing_or_damaged_shard_is_named(two_stores, damage):
    a, _ = two_stores
    victim = a / shard_folder(1) / "candidates.parquet"
    if damage == "missing":
        victim.unlink()
    else:
        data = victim.read_bytes()
        victim.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"")
    with pytest.raises(StoreError, match=rf"^{victim}: cannot be read"):
        open_store(a)


@pytest.mark.parametrize("edit", ["no shards", "a folder elsewhere", "sizes that do not add up", "requests out of order"])
def test_a_store_json_that_lists_its_shards_wrongly_is_refused(two_stores, edit):
    a, _ = two_stores
    meta = json.loads((a / STORE_JSON).read_text())
    if edit == "no shards":
        meta["shards"] = []
        want = r"store\.json: field 'shards' must list the store's shards"
    elif edit == "a folder elsewhere":
        meta["shards"][1]["folder"] = "../elsewhere"
        want = r"store\.json: field 'shards' item 1 is not \{folder: 'shards/00001'"
    elif edit == "sizes that do not add up":
        meta["n_positions"] += 1
        want = r"store\.json: its shards hold \d+ positions, field 'n_positions' says \d+"
    else:
        meta["shards"][1], meta["shards"][2] = meta["shards"][2], meta["shards"][1]
        for i, entry in enumerate(meta["shards"]):
            os.rename(a / entry["folder"], a / f"moved{i}")
        for i, entry in enumerate(meta["shards"]):
            os.rename(a / f"moved{i}", a / shard_folder(i))
            entry["folder"] = shard_folder(i)
        want = r"shards/00002/positions\.parquet: row 0 \(request \d+\) does not follow the previous shard's last"
    (a / STORE_JSON).write_text(json.dumps(meta))
    with pytest.raises(StoreError, match=want):
        open_store(a)


def test_the_cli_shards_and_appends_and_says_so_in_one_line_when_it_cannot(parts, plain, tmp_path):
    out = tmp_path / "s"
    files, manifest = parts["a"]
    done = approxft("ingest", *files, "--requests", manifest, "--out", out, "--vocab-size", 50257,
                    "--shard-positions", 5000)
    assert done.returncode == 0, done.stderr
    files, manifest = parts["b"]
    done = approxft("ingest", *files, "--requests", manifest, "--out", out, "--append")
    assert done.returncode == 0, done.stderr
    assert_same_data(open_store(out), plain)
    bad = approxft("ingest", files[0], "--requests", manifest, "--out", out, "--append")
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1, bad.stderr
    assert f"{out}: cannot append models grimm-big: the store holds" in bad.stderr
    assert_same_data(open_store(out), plain)
