"""The store: golden files (real recorded responses) with the Arrow schema pinned, the union
layout's invariants, the reader's errors, and the bundled Grimm data against its data card."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ingest import IngestError, Store, StoreError, ingest_responses, open_store
from ingest.quirks import QUIRKS
from ingest.store import lp_column
from tests.helpers import GOLDEN_DIR, GRIMM_DIR

MODELS = ["grimm-small", "grimm-small-tuned", "grimm-big", "grimm-big-tuned"]


def golden_files() -> list[Path]:
    return [next(GOLDEN_DIR.glob(f"{m}.jsonl*")) for m in MODELS]


def golden_responses(model: str) -> list[dict]:
    path = next(GOLDEN_DIR.glob(f"{model}.jsonl*"))
    data = path.read_bytes()
    text = gzip.decompress(data) if path.suffix == ".gz" else data
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture(scope="module")
def golden(tmp_path_factory) -> Store:
    out = tmp_path_factory.mktemp("golden") / "store"
    return open_store(ingest_responses(golden_files(), requests=GOLDEN_DIR / "requests.jsonl", out=out))


def lp_schema(kind: pa.DataType) -> list[pa.Field]:
    return [pa.field(f"lp_{m}", kind) for m in MODELS]


PINNED = {
    "positions.parquet": pa.schema(
        [
            pa.field("request", pa.int32(), nullable=False),
            pa.field("position", pa.int32(), nullable=False),
            pa.field("split", pa.string(), nullable=False),
            pa.field("document", pa.string(), nullable=False),
            pa.field("target", pa.int32(), nullable=False),
            pa.field("n_candidates", pa.int32(), nullable=False),
        ]
        + lp_schema(pa.float32())
    ),
    "candidates.parquet": pa.schema(
        [pa.field("token", pa.int32(), nullable=False)]
        + lp_schema(pa.float32())
        + [pa.field(f"rank_{m}", pa.int16(), nullable=False) for m in MODELS]
    ),
    "vocab.parquet": pa.schema(
        [
            pa.field("id", pa.int32(), nullable=False),
            pa.field("token", pa.string(), nullable=False),
            pa.field("bytes", pa.binary(), nullable=False),
        ]
    ),
} | {
    f"topk_{m}.parquet": pa.schema(
        [
            pa.field("ids", pa.list_(pa.int32(), 20), nullable=False),
            pa.field("lp", pa.list_(pa.float32(), 20), nullable=False),
        ]
    )
    for m in MODELS
}


def test_golden_schema_is_pinned(golden):
    names = sorted(p.name for p in golden.path.iterdir())
    assert names == sorted([*PINNED, "store.json"])
    for name, schema in PINNED.items():
        assert pq.read_schema(golden.path / name).equals(schema), name
        assert pq.ParquetFile(golden.path / name).metadata.row_group(0).column(0).compression == "ZSTD"
    meta = json.loads((golden.path / "store.json").read_text())
    assert meta == {
        "format": "approxft-store",
        "version": 1,
        "models": MODELS,
        "k": dict.fromkeys(MODELS, 20),
        "n_positions": 78,
        "n_requests": 2,
        "sources": {m: str(f) for m, f in zip(MODELS, golden_files(), strict=True)},
        "vocab_size": None,
        # Pinned: a change of the hash would drop every store's calibration fits on re-ingest
        # and refuse every study's resume (ingest.fingerprint).
        "fingerprint": "sha256:7cc1c09278cbd6fd6bccd4e1293605b0b9e1a521c7375162f557954c4163dfb1",
        # The manifest has no prompt text or tokens to check the lines against: nothing else tolerated.
        "quirks": {m: dict.fromkeys(QUIRKS, 0) | {"order_only": 2} for m in MODELS},
    }


def test_golden_positions_and_topk_match_the_responses(golden):
    pos = golden.positions
    assert pos["request"].to_list() == [4] * 39 + [89] * 39
    assert pos["position"].to_list() == list(range(1, 40)) * 2
    assert pos["split"].to_list() == ["val"] * 39 + ["test"] * 39
    assert pos["document"].unique(maintain_order=True).to_list() == ["CLEVER HANS", "KING GRISLY-BEARD"]
    tokens = golden.vocab["token"].to_list()
    for model in MODELS:
        responses = [r["choices"][0]["logprobs"] for r in golden_responses(model)]
        assert [tokens[t] for t in pos["target"]] == [t for r in responses for t in r["tokens"][1:]]
        expected_lp = np.array([v for r in responses for v in r["token_logprobs"][1:]], np.float32)
        np.testing.assert_array_equal(pos[lp_column(model)].to_numpy(), expected_lp)
        ids, lp = golden.topk(model)
        lists = [top for r in responses for top in r["top_logprobs"][1:]]
        assert [[tokens[i] for i in row] for row in ids] == [list(top) for top in lists]
        np.testing.assert_array_equal(lp, np.array([list(top.values()) for top in lists], np.float32))


def test_golden_vocab_bytes(golden):
    vocab = dict(zip(golden.vocab["token"], golden.vocab["bytes"], strict=True))
    assert vocab["bytes:\\x20\\xe2\\x80"] == b" \xe2\x80"
    assert vocab["bytes:\\x98"] == b"\x98"
    assert vocab[" Hans"] == b" Hans"
    assert golden.vocab["id"].to_list() == list(range(len(vocab)))
    assert golden.vocab["token"].n_unique() == len(vocab)
    # Request 89 opens with a bytes token: unscored, but it is in the vocabulary.
    first = golden_responses("grimm-big")[1]["choices"][0]["logprobs"]["tokens"][0]
    assert first.startswith("bytes:") and first in vocab


def assert_union_layout(store: Store) -> None:
    """Every run: the target first, then each top-k id of every model exactly once, in
    first-seen order (models in store order, rank order); ranks and values agree with topk."""
    pos = store.positions
    offsets = store.offsets()
    cand = store.candidates()
    n, n_vocab = len(pos), len(store.vocab)
    counts = pos["n_candidates"].to_numpy()
    assert offsets.dtype == np.uint64 and (counts >= 1).all()
    starts = offsets[:-1].astype(np.int64)
    run = np.repeat(np.arange(n), counts)
    is_target = np.zeros(cand.token.size, dtype=bool)
    is_target[starts] = True
    np.testing.assert_array_equal(cand.token[starts], pos["target"].to_numpy())
    key = run * n_vocab + cand.token
    assert np.unique(key).size == key.size, "an id appears twice in a run"
    for m, model in enumerate(store.models):
        ids, lp = store.topk(model)
        np.testing.assert_array_equal(cand.lp[m, starts], pos[lp_column(model)].to_numpy().astype(np.float32))
        # Each top-k id is in its run, at the rank the table gives, with the table's value.
        has = cand.rank[m] >= 0
        assert has.sum() == (ids >= 0).sum()
        np.testing.assert_array_equal(ids[run[has], cand.rank[m, has]], cand.token[has])
        other = has & ~is_target
        np.testing.assert_array_equal(lp[run[other], cand.rank[m, other]], cand.lp[m, other])
        assert np.isnan(cand.lp[m, ~has & ~is_target]).all()
    # Every other candidate comes from some top-k, in first-seen order.
    ranked = cand.rank >= 0
    assert ranked[:, ~is_target].any(axis=0).all()
    first_model = np.argmax(ranked, axis=0)
    order = first_model * 1_000 + cand.rank[first_model, np.arange(cand.token.size)]
    same_run = (run[1:] == run[:-1]) & ~is_target[:-1]
    assert (np.diff(order)[same_run] > 0).all()


def test_golden_union_layout(golden):
    assert_union_layout(golden)
    # A model subset in another order: the same columns, reordered.
    full = golden.candidates()
    part = golden.candidates(["grimm-big", "grimm-small"])
    lp, rank = golden.union_columns(["grimm-big", "grimm-small"])
    np.testing.assert_array_equal(lp, part.lp)
    np.testing.assert_array_equal(rank, part.rank)
    np.testing.assert_array_equal(part.lp, full.lp[[2, 0]])
    np.testing.assert_array_equal(part.rank, full.rank[[2, 0]])
    np.testing.assert_array_equal(part.token, full.token)
    assert part.lp.flags.c_contiguous and part.lp.dtype == np.float32 and part.rank.dtype == np.int16


# The reader: a missing, corrupt or foreign store is a StoreError naming the path.
def broken_copy(golden: Store, tmp_path: Path) -> Path:
    path = tmp_path / "copy"
    shutil.copytree(golden.path, path)
    return path


def edit_meta(path: Path, **changes) -> None:
    meta = json.loads((path / "store.json").read_text()) | changes
    (path / "store.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda p: shutil.rmtree(p), r"copy: not an approxft store \(no store\.json\)"),
        (lambda p: (p / "store.json").write_text("{"), r"copy/store\.json: cannot be read"),
        (lambda p: edit_meta(p, version=3), r"copy/store\.json: version 3; this reader knows versions 1 and 2 \(sharded\)"),
        (lambda p: edit_meta(p, format="other"), r"copy/store\.json: not an approxft store"),
        (lambda p: edit_meta(p, models=["grimm-big"]), r"copy/store\.json: malformed"),
        (lambda p: edit_meta(p, n_positions=77), r"copy/positions\.parquet: 78 rows, store\.json says 77"),
        (lambda p: (p / "topk_grimm-big.parquet").unlink(), r"copy/topk_grimm-big\.parquet: cannot be read"),
        (lambda p: (p / "candidates.parquet").write_bytes((p / "candidates.parquet").read_bytes()[:-100]),
         r"copy/candidates\.parquet: cannot be read"),
        (lambda p: pq.write_table(pq.read_table(p / "vocab.parquet").drop_columns(["bytes"]), p / "vocab.parquet"),
         r"copy/vocab\.parquet: schema differs"),
    ],
)
def test_broken_store(golden, tmp_path, breakage, message):
    path = broken_copy(golden, tmp_path)
    breakage(path)
    with pytest.raises(StoreError, match=message):
        open_store(path)


def test_unknown_model(golden):
    with pytest.raises(StoreError, match="no model 'nope'"):
        golden.candidates(["nope"])
    with pytest.raises(StoreError, match="no model 'nope'"):
        golden.topk("nope")
    with pytest.raises(StoreError, match="no model 'nope'"):
        golden.target_lp("nope")


def test_ingest_refuses_the_golden_files_with_another_manifest(tmp_path):
    requests = tmp_path / "requests.jsonl"
    requests.write_text((GOLDEN_DIR / "requests.jsonl").read_text().splitlines()[0] + "\n")
    with pytest.raises(IngestError, match=r"grimm-small\.jsonl\.gz line 2: 2 responses, but the manifest"):
        ingest_responses(golden_files(), requests=requests, out=tmp_path / "s")


# The bundled data against its data card (data/grimm/README.md).
DATA_CARD = {  # model: (val perplexity, test perplexity, % of positions with the target outside the top 20)
    "grimm-small": (647.74, 650.30, 52),
    "grimm-small-tuned": (103.89, 107.81, 39),
    "grimm-big": (572.24, 554.95, 47),
    "grimm-big-tuned": (57.66, 58.91, 32),
}


@pytest.fixture(scope="module")
def grimm(grimm_store) -> Store:
    """The bundled data, ingested once per session by the shared ``grimm_store`` fixture."""
    return open_store(grimm_store)


@pytest.mark.slow
def test_grimm_counts(grimm):
    assert sorted(grimm.models) == sorted(MODELS) and grimm.k == dict.fromkeys(grimm.models, 20)
    assert grimm.sources == {m: str(GRIMM_DIR / f"{m}.jsonl.gz") for m in MODELS}
    assert grimm.n_requests == 115 and grimm.n_positions == 53_220
    counts = dict(grimm.positions.group_by("split").len().iter_rows())
    assert counts == {"val": 23_064, "test": 30_156}
    assert grimm.positions["request"].n_unique() == 115


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_grimm_perplexities_match_the_data_card(grimm, model):
    val, test, outside_pct = DATA_CARD[model]
    nll = -pl.col(lp_column(model)).cast(pl.Float64)
    ppl = dict(grimm.positions.group_by("split").agg(nll.mean().exp()).iter_rows())
    assert ppl["val"] == pytest.approx(val, abs=0.01)
    assert ppl["test"] == pytest.approx(test, abs=0.01)
    ids, _ = grimm.topk(model)
    outside = ~(ids == grimm.positions["target"].to_numpy()[:, None]).any(axis=1)
    assert round(100 * outside.mean()) == outside_pct
    assert grimm.positions[lp_column(model)].null_count() == 0
    np.testing.assert_array_equal(grimm.target_lp(model), grimm.positions[lp_column(model)].to_numpy())


@pytest.mark.slow
def test_grimm_union_layout(grimm):
    assert_union_layout(grimm)
