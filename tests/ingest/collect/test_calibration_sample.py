"""The calibration sample's parts that need no server: positions stratified by split and context
length, the manifest's tokenizer vocabulary for ``--calibration-k all``, the option itself, and
the streamed reading of raw logs that a killed run may have cut short (plain and gzip)."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from engine.cli import main
from ingest.collect.config import RoleConfig
from ingest.collect.deep import manifest_vocabulary
from ingest.collect.jobs import (
    ManifestRequest,
    calibration_jobs,
    calibration_positions,
    read_requests,
)
from ingest.errors import IngestError
from ingest.jsonl import Extent, read_lines
from ingest.manifest import read_manifest
from ingest.prepare.bpe import GPT2_VOCAB_SIZE, gpt2
from ingest.prepare.corpus import Document, prepare, write_prepared
from ingest.prepare.tokenizer import local_tokenizer


def requests(lengths: dict[str, list[int]]) -> list[ManifestRequest]:
    """Requests of ASCII words (every position requestable), ``lengths[split]`` tokens each."""
    out = []
    for split, sizes in lengths.items():
        for n in sizes:
            out.append(ManifestRequest(index=len(out), prompt="", logprobs=5, tokens=[f" w{i}" for i in range(n)], split=split))
    return out


def strata(picks) -> Counter:
    return Counter((r.split, p.bit_length() - 1) for r, p in picks)


def test_positions_are_allocated_in_proportion_to_split_and_context_bucket():
    reqs = requests({"val": [64, 64, 20], "test": [64, 9]})
    population = strata((r, p) for r in reqs for p in range(1, len(r.tokens)))
    total = sum(population.values())
    for n in (1, 7, 50, 100):
        picks = calibration_positions(reqs, n=n, seed=3)
        assert len(picks) == len(set((r.index, p) for r, p in picks)) == n
        got = strata(picks)
        for stratum, size in population.items():  # largest remainder: floor or ceil of the quota
            assert n * size // total <= got[stratum] <= -(-n * size // total), (n, stratum)
        assert picks == sorted(picks, key=lambda rp: (rp[0].index, rp[1]))
    # 32 positions per request: buckets of 1, 2, 4, 8, 16 and 1; half of the 96 drawn.
    exact = requests({"val": [33, 33], "test": [33]})
    got = strata(calibration_positions(exact, n=48, seed=1))
    assert {b: got[("val", b)] for b in range(6)} == {0: 1, 1: 2, 2: 4, 3: 8, 4: 16, 5: 1}
    assert {b: got[("test", b)] for b in range(1, 5)} == {1: 1, 2: 2, 3: 4, 4: 8}
    assert sorted([got[("test", 0)], got[("test", 5)]]) == [0, 1]  # the one left over: a seeded tie-break
    everything = calibration_positions(reqs, n=10_000, seed=0)
    assert len(everything) == total


def test_the_draw_is_seeded_and_the_same_for_every_role():
    reqs = requests({"val": [40, 33], "test": [50]})
    ids = lambda role, seed: [j.custom_id for j in calibration_jobs(role, reqs, n=12, k=7, seed=seed)]  # noqa: E731
    big = RoleConfig(role="big", model="b", base_url="http://h/v1")
    small = RoleConfig(role="untuned", model="s", base_url="http://h/v1", context_tokens=4)
    assert ids(big, 5) == ids(small, 5) == ids(big, 5)
    assert ids(big, 5) != ids(big, 6)
    jobs = calibration_jobs(big, reqs, n=12, k=GPT2_VOCAB_SIZE, full=True)
    assert all(j.full == GPT2_VOCAB_SIZE and j.body["logprobs"] == GPT2_VOCAB_SIZE for j in jobs)
    assert all(j.full is None for j in calibration_jobs(big, reqs, n=12, k=7))


def manifest(tmp_path, tokenizer: str | None) -> tuple[Path, list[ManifestRequest]]:
    docs = [Document(f"d{i}", f"Once upon a time there was a miller number {i} who had a cat.") for i in range(6)]
    path = write_prepared(tmp_path / "run", prepare(docs, local_tokenizer("gpt2"), chunk_tokens=8, finetune_share=0.3),
                          logprobs=2, tokenizer=tokenizer)
    return path, read_requests(read_manifest(path))


def test_the_vocabulary_of_the_manifest_tokenizer(tmp_path):
    path, reqs = manifest(tmp_path, "gpt2")
    assert all(r.tokenizer == "gpt2" for r in reqs) and [r.line for r in reqs] == list(range(1, len(reqs) + 1))
    assert manifest_vocabulary(reqs, file=str(path)) == gpt2().api_tokens(list(range(GPT2_VOCAB_SIZE)))
    with pytest.raises(IngestError, match=r"requests\.jsonl line 3: field 'tokenizer' missing: --calibration-k all needs"):
        manifest_vocabulary([*reqs[:2], replace(reqs[2], tokenizer=None)], file=str(path))
    with pytest.raises(IngestError, match=r"line 1: field 'tokenizer' is 'server': its vocabulary is not known here"):
        manifest_vocabulary([replace(r, tokenizer="server") for r in reqs], file=str(path))
    with pytest.raises(IngestError, match=r"line 2: field 'tokenizer' names 2 tokenizers"):
        manifest_vocabulary([reqs[0], replace(reqs[1], tokenizer="tiktoken:cl100k_base")], file=str(path))
    # A manifest from before the field (the testbed's): --tokenizer's, where it holds every token.
    old = [replace(r, tokenizer=None) for r in reqs]
    assert manifest_vocabulary(old, file=str(path), fallback="gpt2") == gpt2().api_tokens(list(range(GPT2_VOCAB_SIZE)))
    foreign = [*old[:1], replace(old[1], tokens=[*old[1].tokens, "<not gpt2>"])]
    with pytest.raises(IngestError, match=r"line 2: field 'tokens' names no tokenizer, and holds '<not gpt2>'"):
        manifest_vocabulary(foreign, file=str(path), fallback="gpt2")


def test_calibration_k_is_a_positive_int_or_all(tmp_path, capsys):
    path, _ = manifest(tmp_path, None)
    models = tmp_path / "models.toml"
    models.write_text("".join(f'[models.{r}]\nmodel = "{r}"\nbase_url = "http://127.0.0.1:9/v1"\n' for r in ("big", "tuned", "untuned")))
    args = ["collect", "--models", str(models), "--corpus", str(path), "--out", str(path.parent), "--calibration", "3"]
    for bad in ("0", "-2", "most"):
        with pytest.raises(SystemExit) as exit_:
            main([*args, "--calibration-k", bad])
        assert exit_.value.code == 2
        assert f"expected a positive integer or all, got '{bad}'" in capsys.readouterr().err
    # A manifest that does not say which tokenizer prepared it, with a token --tokenizer (gpt2) lacks:
    # one clear error before any request.
    lines = path.read_text().splitlines()
    first = json.loads(lines[0])
    path.write_text("\n".join([json.dumps({**first, "tokens": [*first["tokens"], "<not gpt2>"]}), *lines[1:]]) + "\n")
    assert main([*args, "--calibration-k", "all"]) == 1
    err = capsys.readouterr().err
    assert err == f"approxft collect: error: {path} line 1: field 'tokens' names no tokenizer, and holds '<not gpt2>', " \
                  "which is not one of --tokenizer gpt2's 50257 tokens: prepare the corpus again with its tokenizer\n"
    assert not (path.parent / "raw").exists()
    assert main([*args, "--calibration-k", "20", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["roles"]["big"]["calibration"]["requests"] == 3


@pytest.mark.parametrize("chunk", [5, 1 << 22])
def test_raw_logs_are_read_as_a_stream_and_a_partial_tail_is_told_apart(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr("ingest.jsonl._CHUNK", chunk)  # member and line boundaries inside chunks, or not
    records = [json.dumps({"custom_id": f"calibration-0-{i}", "n": "x" * 40 * i}).encode() + b"\n" for i in range(4)]
    members = [gzip.compress(r, mtime=0) for r in records]
    log = tmp_path / "big.calibration.jsonl.gz"
    log.write_bytes(b"".join(members))
    assert [line for _, line in read_lines(log)] == [r[:-1] for r in records]
    log.write_bytes(b"".join(members)[:-20])  # killed while writing the last member
    with pytest.raises(IngestError, match=r"big\.calibration\.jsonl\.gz line 4: gzip stream truncated"):
        list(read_lines(log))
    extent = Extent()
    assert [number for number, _ in read_lines(log, extent=extent)] == [1, 2, 3]
    assert extent.complete == sum(map(len, members[:3])) and extent.size == log.stat().st_size and extent.partial
    plain = tmp_path / "big.jsonl"
    plain.write_bytes(b"".join(records) + records[0][:9])
    extent = Extent()
    assert len(list(read_lines(plain, extent=extent))) == 4 and extent.complete == sum(map(len, records))
    assert len(list(read_lines(plain))) == 5  # a last line without newline is a line (for ingest)
