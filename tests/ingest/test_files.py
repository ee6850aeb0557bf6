"""ingest_responses end to end on small handwritten files: format facts, errors, atomicity."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from ingest import IngestError, ingest_responses, open_store
from ingest.store import lp_column, rank_column
from tests.ingest.synthetic import (
    TOKENS,
    dataset,
    manifest,
    response,
    text,
    write_jsonl,
)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def snapshot(store: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(store.iterdir())}


def test_small_dataset(tmp_path):
    files, requests = dataset(tmp_path)
    out = ingest_responses(files, requests=requests, out=tmp_path / "store")
    assert out == tmp_path / "store" and leftovers(tmp_path) == []
    store = open_store(out)
    assert store.models == ["small", "big"] and store.k == {"small": 2, "big": 2}
    assert store.n_requests == 3 and store.n_positions == 6
    assert store.sources == {"small": str(files[0]), "big": str(files[1])}
    pos = store.positions
    assert pos["request"].to_list() == [0, 0, 0, 2, 2, 2]
    assert pos["position"].to_list() == [1, 2, 3, 1, 2, 3]
    assert pos["split"].to_list() == ["val"] * 3 + ["test"] * 3
    assert pos["document"].to_list() == ["S0"] * 3 + ["S1"] * 3
    assert pos[lp_column("big")].to_list() == [-2.0, -3.0, -4.0] * 2
    vocab = dict(zip(store.vocab["token"], store.vocab["bytes"], strict=True))
    assert vocab["bytes:\\xe2\\x80"] == b"\xe2\x80" and vocab[" b"] == b" b"
    tokens = store.vocab["token"].to_list()
    assert [tokens[t] for t in pos["target"]] == TOKENS[0][1:] + TOKENS[2][1:]
    # Target first, then the two models' (identical) top-2: 3 candidates per position.
    assert pos["n_candidates"].to_list() == [3] * 6


def test_requests_with_nothing_to_score(tmp_path):
    tokens = [[], ["A", " b"], ["C"]]
    files = [write_jsonl(tmp_path / f"{m}.jsonl", [response(t, m) for t in tokens]) for m in ("x", "y")]
    store = open_store(ingest_responses(files, requests=manifest(tmp_path), out=tmp_path / "s"))
    assert store.n_requests == 3 and store.n_positions == 1
    assert store.positions["request"].to_list() == [1] and store.positions["position"].to_list() == [1]
    assert "C" in store.vocab["token"].to_list()


def test_model_name_falls_back_to_the_file_stem_and_gzip_is_told_by_magic(tmp_path):
    requests = manifest(tmp_path)
    # gzip content under a plain name, plain content under a .gz name, and a two-member gzip.
    a = tmp_path / "alpha.jsonl"
    a.write_bytes(gzip.compress("".join(json.dumps(response(t, None)) + "\n" for t in TOKENS).encode()))
    b = write_jsonl(tmp_path / "beta.jsonl.gz", [response(t, None) for t in TOKENS])
    c = tmp_path / "gamma.jsonl.gz"
    lines = [json.dumps(response(t, None)) + "\n" for t in TOKENS]
    c.write_bytes(gzip.compress("".join(lines[:2]).encode()) + gzip.compress(lines[2].encode()))
    store = open_store(ingest_responses([a, b, c], requests=requests, out=tmp_path / "s"))
    assert store.models == ["alpha", "beta", "gamma"]


def test_appended_target_and_k(tmp_path):
    # Lists of k+1 = 3 where OpenAI appended the actual token, k = 2 from nothing but the data.
    records = []
    for tokens in TOKENS:
        r = response(tokens, "m")
        lp = r["choices"][0]["logprobs"]
        for p in range(1, len(tokens)):
            lp["top_logprobs"][p][tokens[p]] = lp["token_logprobs"][p]
        records.append(r)
    requests = manifest(tmp_path, logprobs=None)
    store = open_store(ingest_responses([write_jsonl(tmp_path / "m.jsonl", records)], requests=requests,
                                        out=tmp_path / "s"))
    assert store.k == {"m": 2}
    ids, lp = store.topk("m")
    assert ids.shape == (6, 2) and lp.dtype == np.float32
    target = store.positions["target"].to_numpy()
    assert not (ids == target[:, None]).any()  # the appended entry, lowest, fell away
    assert (np.diff(lp, axis=1) <= 0).all()
    # k given explicitly wins and keeps the highest.
    store = open_store(ingest_responses([tmp_path / "m.jsonl"], requests=requests, out=tmp_path / "s", k=1))
    ids1, lp1 = store.topk("m")
    np.testing.assert_array_equal(ids1, ids[:, :1])
    np.testing.assert_array_equal(lp1, lp[:, :1])


def test_k_from_the_argument_else_the_manifest(tmp_path):
    files, requests = dataset(tmp_path, logprobs=1)  # the lists hold 2
    assert open_store(ingest_responses(files, requests=requests, out=tmp_path / "s")).k == {"small": 1, "big": 1}
    store = open_store(ingest_responses(files, requests=requests, out=tmp_path / "s", k=2))
    assert store.k == {"small": 2, "big": 2}


def test_generated_token_is_excluded(tmp_path):
    records = []
    for tokens in TOKENS:
        r = response(tokens + [" gen"], "m")
        r["usage"] = {"prompt_tokens": len(tokens), "completion_tokens": 1, "total_tokens": len(tokens) + 1}
        records.append(r)
    requests = manifest(tmp_path)
    store = open_store(ingest_responses([write_jsonl(tmp_path / "m.jsonl", records)], requests=requests,
                                        out=tmp_path / "s"))
    assert store.n_positions == 6
    assert " gen" not in store.vocab["token"].to_list()
    # Without usage, the prompt text in the manifest tells where generation starts.
    for r in records:
        del r["usage"]
    lines = [{"request_index": i, "split": "val", "story": "S", "params": {"max_tokens": 1, "prompt": text(t)}}
             for i, t in enumerate(TOKENS)]
    write_jsonl(tmp_path / "requests.jsonl", lines)
    store = open_store(ingest_responses([write_jsonl(tmp_path / "m.jsonl", records)], requests=requests,
                                        out=tmp_path / "s", k=2))
    assert store.n_positions == 6 and " gen" not in store.vocab["token"].to_list()


def test_sentinels_are_unknown_values_never_numbers(tmp_path):
    records = [response(t, "m") for t in TOKENS]
    lp = records[0]["choices"][0]["logprobs"]
    lp["token_logprobs"][2] = -9999
    lp["token_logprobs"][3] = float("-inf")  # a real log-prob: zero mass
    lp["top_logprobs"][1][" o10"] = -9999.0
    requests = manifest(tmp_path)
    store = open_store(ingest_responses([write_jsonl(tmp_path / "m.jsonl", records)], requests=requests,
                                        out=tmp_path / "s"))
    assert store.positions[lp_column("m")].to_list()[:3] == [-2.0, None, -math.inf]
    ids, lps = store.topk("m")
    assert ids[0, 1] == -1 and math.isnan(lps[0, 1]) and ids[0, 0] >= 0
    cand = store.candidates()
    start = int(store.offsets()[1])
    assert math.isnan(cand.lp[0, start])  # the target row of position 2
    table = pq.read_table(tmp_path / "s" / "candidates.parquet")
    assert table[lp_column("m")][start].as_py() is None
    assert table[rank_column("m")].null_count == 0


def test_replaces_an_existing_store_only_when_done(tmp_path):
    files, requests = dataset(tmp_path)
    out = tmp_path / "store"
    ingest_responses(files[:1], requests=requests, out=out)
    ingest_responses(files, requests=requests, out=out)
    assert open_store(out).models == ["small", "big"] and leftovers(tmp_path) == []


def test_write_failure_leaves_nothing_behind(tmp_path, monkeypatch):
    files, requests = dataset(tmp_path)
    out = tmp_path / "store"
    ingest_responses(files[:1], requests=requests, out=out)
    before = snapshot(out)
    calls = []

    def failing_write(table, where, **kw):
        calls.append(where)
        if len(calls) == 3:
            raise OSError("disk full")
        pq_write(table, where, **kw)

    pq_write = pq.write_table
    monkeypatch.setattr(pq, "write_table", failing_write)
    with pytest.raises(OSError, match="disk full"):
        ingest_responses(files, requests=requests, out=out)
    assert snapshot(out) == before and leftovers(tmp_path) == []


# Each case breaks one file of the small dataset; the message must name the file, line and field.
def _set(line: int, f) -> Any:
    def edit(records):
        f(records[line - 1])
        return records
    return edit


def _logprobs(r):
    return r["choices"][0]["logprobs"]


def _append_token(r, token):
    for field, value in (("tokens", token), ("token_logprobs", -1.0), ("top_logprobs", {}), ("text_offset", 9)):
        _logprobs(r)[field].append(value)
    r["usage"]["prompt_tokens"] += 1


MODEL_FILE_CASES = {
    "malformed JSON": (lambda rs: rs[:1] + ['{"choices": [}'] + rs[2:],
                       r"big\.jsonl line 2: malformed JSON \(Expecting value at column 14\)"),
    "no choices": (_set(1, lambda r: r.pop("choices")), r"big\.jsonl line 1: field 'choices' missing"),
    "no logprobs": (_set(3, lambda r: r["choices"][0].pop("logprobs")),
                    r"big\.jsonl line 3: field 'choices\[0\]\.logprobs' missing"),
    "unequal lengths": (_set(3, lambda r: _logprobs(r)["token_logprobs"].pop()),
                        r"big\.jsonl line 3: field 'choices\[0\]\.logprobs\.token_logprobs' "
                        r"has 3 entries but tokens has 4"),
    "bad value": (_set(3, lambda r: _logprobs(r)["top_logprobs"][2].update({" q": "x"})),
                  r"big\.jsonl line 3: field 'choices\[0\]\.logprobs\.top_logprobs\[2\]\[' q'\]' "
                  r"is 'x', not a number"),
    "fewer lines": (lambda rs: rs[:2],
                    r"big\.jsonl line 3: 2 responses, but the manifest .*requests\.jsonl has 3 requests"),
    "more lines": (lambda rs: rs + rs[:1], r"big\.jsonl line 4: 4 responses, but the manifest .*has 3 requests"),
    "other token": (_set(3, lambda r: _logprobs(r)["tokens"].__setitem__(1, " X")),
                    r"big\.jsonl line 3: field 'choices\[0\]\.logprobs\.tokens\[1\]' is ' X' but .*small\.jsonl "
                    r"line 3 has ' h' \(request_index 2, position 1\)"),
    "extra token": (_set(1, lambda r: _append_token(r, " e")),
                    r"big\.jsonl line 1: field 'choices\[0\]\.logprobs\.tokens\[4\]' is ' e' but .*small\.jsonl "
                    r"line 1 has absent \(only 4 tokens\) \(request_index 0, position 4\)"),
    "two models in a file": (_set(2, lambda r: r.update(model="other")),
                             r"big\.jsonl line 2: field 'model' is 'other' but line 1 has 'big': one model per file"),
    "model missing on a line": (_set(2, lambda r: r.pop("model")),
                                r"big\.jsonl line 2: field 'model' missing but line 1 has 'big'"),
    "duplicate model": (lambda rs: [r | {"model": "small"} for r in rs],
                        r"big\.jsonl: names model 'small', as does .*small\.jsonl: one file per model"),
}


@pytest.fixture(params=["fresh", "existing store"])
def out(request, tmp_path):
    """Where the failing ingest writes: nothing there yet, or a good store that must survive."""
    out = tmp_path / "store"
    if request.param == "existing store":
        (tmp_path / "old").mkdir()
        files, requests = dataset(tmp_path / "old")
        ingest_responses(files, requests=requests, out=out)
    return out


def assert_failed_cleanly(out: Path, before: dict[str, bytes] | None):
    if before is None:
        assert not out.exists()
    else:
        assert snapshot(out) == before
    assert leftovers(out.parent) == []


@pytest.mark.parametrize("case", MODEL_FILE_CASES)
def test_malformed_model_file(case, tmp_path, out):
    edit, message = MODEL_FILE_CASES[case]
    files, requests = dataset(tmp_path)
    records = [json.loads(line) for line in files[1].read_text().splitlines()]
    write_jsonl(files[1], edit(records))
    before = snapshot(out) if out.exists() else None
    with pytest.raises(IngestError, match=message) as err:
        ingest_responses(files, requests=requests, out=out)
    assert "\n" not in str(err.value)
    assert_failed_cleanly(out, before)


def test_truncated_gzip(tmp_path, out):
    files, requests = dataset(tmp_path)
    data = gzip.compress(files[1].read_bytes())
    broken = tmp_path / "big.jsonl.gz"
    broken.write_bytes(data[: len(data) - 12])  # drop the trailer and some deflate data
    before = snapshot(out) if out.exists() else None
    with pytest.raises(IngestError, match=r"big\.jsonl\.gz line \d: gzip stream truncated"):
        ingest_responses([files[0], broken], requests=requests, out=out)
    assert_failed_cleanly(out, before)


MANIFEST_CASES = {
    "malformed": (lambda ls: ls[:1] + ["{"] + ls[2:], r"requests\.jsonl line 2: malformed JSON"),
    "no split": (lambda ls: [ls[0], {k: v for k, v in ls[1].items() if k != "split"}, ls[2]],
                 r"requests\.jsonl line 2: field 'split' missing"),
    "no story": (lambda ls: ls[:2] + [{k: v for k, v in ls[2].items() if k != "story"}],
                 r"requests\.jsonl line 3: field 'story' missing"),
    "order": (lambda ls: [ls[1], ls[0], ls[2]],
              r"requests\.jsonl line 2: field 'request_index' is 0, not greater than"),
    "k not a number": (lambda ls: ls[:2] + [ls[2] | {"params": {"logprobs": "20"}}],
                       r"requests\.jsonl line 3: field 'params\.logprobs' is '20', not an integer"),
    "prompt not text": (lambda ls: [ls[0] | {"params": {"prompt": ["A"]}}] + ls[1:],
                        r"requests\.jsonl line 1: field 'params\.prompt' is not a string"),
    "negative index": (lambda ls: [ls[0] | {"request_index": -1}] + ls[1:],
                       r"requests\.jsonl line 1: field 'request_index' is -1"),
    "not an object": (lambda ls: [[1]] + ls[1:], r"requests\.jsonl line 1: field 'request' is not a JSON object"),
    "two k": (lambda ls: ls[:2] + [ls[2] | {"params": {"logprobs": 5}}],
              r"requests\.jsonl line 3: field 'params\.logprobs' is 5, other requests have 2"),
}


@pytest.mark.parametrize("case", MANIFEST_CASES)
def test_malformed_manifest(case, tmp_path, out):
    edit, message = MANIFEST_CASES[case]
    files, requests = dataset(tmp_path)
    lines = [json.loads(line) for line in requests.read_text().splitlines()]
    write_jsonl(requests, edit(lines))
    before = snapshot(out) if out.exists() else None
    with pytest.raises(IngestError, match=message):
        ingest_responses(files, requests=requests, out=out)
    assert_failed_cleanly(out, before)


def test_bad_arguments(tmp_path):
    files, requests = dataset(tmp_path)
    with pytest.raises(IngestError, match="no response files"):
        ingest_responses([], requests=requests, out=tmp_path / "s")
    with pytest.raises(IngestError, match="field 'k' is 0, not a positive integer"):
        ingest_responses(files, requests=requests, out=tmp_path / "s", k=0)
    with pytest.raises(IngestError, match=r"nothing\.jsonl: cannot be read"):
        ingest_responses([tmp_path / "nothing.jsonl"], requests=requests, out=tmp_path / "s")
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(IngestError, match=r"precious\.txt: exists and is not an approxft store"):
        ingest_responses(files, requests=requests, out=tmp_path / "precious.txt")
    assert (tmp_path / "precious.txt").read_text() == "keep me"
    assert leftovers(tmp_path) == []


def test_ingest_replaces_a_store_and_nothing_that_merely_looks_like_one(tmp_path):
    files, requests = dataset(tmp_path)
    store = ingest_responses(files, requests=requests, out=tmp_path / "s")
    (store / "calibration").mkdir()
    assert ingest_responses(files, requests=requests, out=store) == store  # a store (fits and all) is replaced
    # A folder with a store.json but other things in it, or a store.json of something else: kept.
    (store / "notes.md").write_text("my notes")
    other = tmp_path / "other"
    other.mkdir()
    (other / "store.json").write_text('{"format": "something-else"}')
    for out in (store, other):
        before = sorted(p.name for p in out.iterdir())
        with pytest.raises(IngestError, match="exists and is not an approxft store: not replacing it"):
            ingest_responses(files, requests=requests, out=out)
        assert sorted(p.name for p in out.iterdir()) == before
    assert (store / "notes.md").read_text() == "my notes"


def test_no_k_anywhere(tmp_path):
    requests = manifest(tmp_path, logprobs=None, n=1)
    empty = write_jsonl(tmp_path / "m.jsonl", [response(["A"], "m")])
    with pytest.raises(IngestError, match=r"m\.jsonl: has no top_logprobs entries to tell k from"):
        ingest_responses([empty], requests=requests, out=tmp_path / "s")
    store = open_store(ingest_responses([empty], requests=requests, out=tmp_path / "s", k=3))
    assert store.n_positions == 0 and store.topk("m")[0].shape == (0, 3)
    assert isinstance(store.positions, pl.DataFrame) and store.offsets().tolist() == [0]
    lp, rank = store.union_columns(["m"])
    assert lp.shape == rank.shape == (1, 0) and store.target_lp("m").shape == (0,)
