"""Corpus preparation, the offline GPT-2 BPE, collection config and request building (pure)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.collect.config import RoleConfig, read_config
from ingest.collect.jobs import (
    ManifestRequest,
    calibration_jobs,
    check_response,
    read_requests,
    role_jobs,
)
from ingest.errors import IngestError
from ingest.manifest import parse_manifest, read_manifest
from ingest.prepare.bpe import gpt2
from ingest.prepare.corpus import (
    Document,
    chunk_document,
    prepare,
    read_documents,
    split_documents,
    write_prepared,
)
from ingest.prepare.tokenizer import local_tokenizer
from tests.helpers import GRIMM_DIR


def test_gpt2_bpe_reproduces_every_recorded_grimm_token():
    """Per story (its chunks were cut from the story's tokens, so a chunk alone can tokenize
    differently at its edges), unless a chunk's text is lossy (cut inside a character)."""
    bpe = gpt2()
    stories = [json.loads(line)["story"] for line in (GRIMM_DIR / "requests.jsonl").read_text().splitlines()]
    texts: dict[str, list[str]] = {}
    tokens: dict[str, list[str]] = {}
    with gzip.open(GRIMM_DIR / "grimm-small.jsonl.gz", "rt", encoding="utf-8") as f:
        for story, line in zip(stories, f, strict=True):
            choice = json.loads(line)["choices"][0]
            texts.setdefault(story, []).append(choice["text"])
            tokens.setdefault(story, []).extend(choice["logprobs"]["tokens"])
    checked = [story for story, parts in texts.items() if not any("\ufffd" in t for t in parts)]
    for story in checked:
        assert bpe.api_tokens(bpe.encode("".join(texts[story]))) == tokens[story], story
    assert len(checked) >= 18


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab cd\n“”—é😀 "), min_size=0, max_size=80), st.integers(1, 6))
def test_chunks_spell_the_text_cut_at_character_boundaries(text, n):
    tokenize = local_tokenizer("gpt2")
    chunks = chunk_document(text, tokenize, n)
    assert "".join(chunk for chunk, _ in chunks) == text
    for chunk, pieces in chunks:
        raw = chunk.encode("utf-8")
        assert b"".join(pieces) == raw
        if len(pieces) > n:  # longer only where no cut within n tokens falls between characters
            ends = [sum(map(len, pieces[:k])) for k in range(1, n + 1)]
            assert all(raw[end] & 0xC0 == 0x80 for end in ends)


def test_split_keeps_the_nearest_60_percent_prefix_and_splits_held_out_by_document():
    docs = [Document(f"d{i}", "x" * size) for i, size in enumerate([30, 30, 10, 10, 10, 10])]
    finetune, val, test = split_documents(docs)
    assert [d.name for d in finetune] == ["d0", "d1"]  # 60 of 100 characters
    assert [d.name for d in val] == ["d2", "d3"] and [d.name for d in test] == ["d4", "d5"]
    finetune, val, test = split_documents(docs, finetune_share=0.7, val_share=0.25)
    assert [d.name for d in finetune] == ["d0", "d1", "d2"] and [d.name for d in val] == ["d3"]
    with pytest.raises(IngestError, match="finetune_share"):
        split_documents(docs, finetune_share=1.0)


def test_prepared_manifest_is_a_valid_manifest_with_prompts_and_tokens(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("TITLE ONE\nOnce upon a time.\n\n\nTITLE TWO\nThere was a “king”.\n\n\nTHREE\nThe end, and more text here.\n")
    docs = read_documents(corpus)
    assert [d.name for d in docs] == ["TITLE ONE", "TITLE TWO", "THREE"]
    prepared = prepare(docs, local_tokenizer("gpt2"), chunk_tokens=4, finetune_share=0.3)
    path = write_prepared(tmp_path / "run", prepared, logprobs=5)
    manifest = read_manifest(path)
    assert manifest.k == 5 and set(manifest.split) == {"val", "test"}
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert all(line["params"]["echo"] and line["params"]["max_tokens"] == 0 for line in lines)
    assert "".join(line["params"]["prompt"] for line in lines if line["story"] == "TITLE TWO") == docs[1].text
    assert all(len(line["tokens"]) <= 4 for line in lines)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["finetune.jsonl", "requests.jsonl"]  # no temp files


def test_corpus_errors_name_file_line_and_field(tmp_path):
    bad = tmp_path / "docs.jsonl"
    bad.write_text('{"text": "ok"}\n{"title": "no text"}\n')
    with pytest.raises(IngestError, match=r"docs.jsonl line 2: field 'text' missing"):
        read_documents(bad)
    with pytest.raises(IngestError, match="expected gpt2, gpt2:DIR, tiktoken:ENCODING or server"):
        local_tokenizer("sentencepiece")


def test_tiktoken_is_optional_with_an_install_hint():
    try:
        import tiktoken  # noqa: F401
    except ImportError:
        with pytest.raises(IngestError, match="pip install tiktoken"):
            local_tokenizer("tiktoken:cl100k_base")
    else:
        assert b"".join(local_tokenizer("tiktoken:cl100k_base")("Hello “world”")) == "Hello “world”".encode()


def test_config_errors_are_precise(tmp_path):
    def config(text: str) -> Path:
        path = tmp_path / "m.toml"
        path.write_text(text)
        return path

    base = "".join(f'[models.{r}]\nmodel = "{r}"\nbase_url = "http://h/v1"\n' for r in ("big", "tuned", "untuned"))
    assert [r.role for r in read_config(config(base))] == ["big", "tuned", "untuned"]
    with pytest.raises(IngestError, match=r"field 'models.big.temprature' is not a known setting"):
        read_config(config(base.replace('model = "big"', 'model = "big"\ntemprature = 1')))
    with pytest.raises(IngestError, match=r"field 'models.big.mode' is 'stream'"):
        read_config(config(base.replace('model = "big"', 'model = "big"\nmode = "stream"')))
    with pytest.raises(IngestError, match="is not valid TOML"):
        read_config(config("[models"))


def test_next_token_jobs_skip_contexts_that_end_inside_a_character():
    tokens = gpt2().api_tokens(gpt2().encode("He said “hi”"))
    request = ManifestRequest(index=3, prompt="He said “hi”", logprobs=5, tokens=tokens)
    role = RoleConfig(role="big", model="m", base_url="http://h/v1", mode="next_token", context_tokens=2)
    jobs = role_jobs(role, [request])
    assert tokens == ["He", " said", "bytes:\\x20\\xe2\\x80", "bytes:\\x9c", "hi", "bytes:\\xe2\\x80", "bytes:\\x9d"]
    # Positions 3 and 6 follow a token that ends inside “ or ”: their context cannot be text.
    assert [j.custom_id for j in jobs] == [f"request-3-position-{p}" for p in (1, 2, 4, 5)]
    assert all(j.body["max_tokens"] == 1 and j.body["temperature"] == 0 for j in jobs)
    assert jobs[-1].body["prompt"].endswith("hi")  # at most 2 tokens of context
    sample = calibration_jobs(role, [request], n=2, k=50)
    assert [j.custom_id for j in sample] == [j.custom_id for j in calibration_jobs(role, [request], n=2, k=50)]  # seeded
    assert all(j.body["logprobs"] == 50 for j in sample)


def test_check_response_catches_tokens_that_do_not_spell_the_prompt():
    records = [(1, {"request_index": 0, "split": "val", "story": "s", "params": {"prompt": "Hello there", "logprobs": 1}})]
    role = RoleConfig(role="big", model="m", base_url="http://h/v1")
    job = role_jobs(role, read_requests(parse_manifest(records, path="r.jsonl")))[0]
    body = {"choices": [{"logprobs": {"tokens": ["Hello", " here"], "token_logprobs": [None, -1.0], "top_logprobs": [None, {" here": -1.0}]}}], "usage": {"prompt_tokens": 2}}
    assert check_response(job, body) == "the response's tokens do not spell the prompt (they differ at byte 6 of 11)"
    body["choices"][0]["logprobs"]["tokens"][1] = " there"
    assert check_response(job, body) is None
    assert "field 'choices' missing" in check_response(job, {"error": "x"})
