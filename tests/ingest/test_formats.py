"""Every collected format lands in the same store: the bundled Grimm responses rewritten as vLLM
``prompt_logprobs``, chat ``logprobs.content`` and Batch API output (shuffled, failures mixed in,
gzip) give the same model perplexities and the same blend estimates as the legacy files."""

from __future__ import annotations

import functools
import gzip
import json
import random
from pathlib import Path
from typing import Any

import pytest

import engine
from ingest import IngestError, ingest_responses
from ingest.parse.formats import detect_format, load_token_strings, to_completions
from ingest.tokens import token_bytes
from tests.helpers import GRIMM_DIR

N_REQUESTS = 6
MODELS = {"big": "grimm-big", "tuned": "grimm-small-tuned", "untuned": "grimm-small"}


@pytest.fixture(scope="module")
def reference(legacy, tmp_path_factory) -> tuple[Path, dict[str, Any]]:
    """The legacy files' store and figures."""
    manifest, bodies = legacy
    root = tmp_path_factory.mktemp("legacy")
    store = ingest_responses([write(root / f"{m}.jsonl", b) for m, b in bodies.items()], requests=manifest, out=root / "store")
    return store, figures(store)


@pytest.fixture(scope="module")
def legacy(tmp_path_factory) -> tuple[Path, dict[str, list[dict[str, Any]]]]:
    """The first requests of three Grimm models (a val/test mix) and their manifest."""
    root = tmp_path_factory.mktemp("formats")
    lines = (GRIMM_DIR / "requests.jsonl").read_text().splitlines()
    keep = list(range(N_REQUESTS // 2)) + list(range(len(lines) - N_REQUESTS // 2, len(lines)))
    manifest = root / "requests.jsonl"
    manifest.write_text("".join(lines[i] + "\n" for i in keep))
    bodies = {}
    for model in MODELS.values():
        with gzip.open(GRIMM_DIR / f"{model}.jsonl.gz", "rt", encoding="utf-8") as f:
            all_lines = f.readlines()
        bodies[model] = [json.loads(all_lines[i]) for i in keep]
    return manifest, bodies


def write(path: Path, records: list[Any]) -> Path:
    data = "".join(json.dumps(r) + "\n" for r in records).encode("utf-8")
    path.write_bytes(gzip.compress(data, compresslevel=1) if path.suffix == ".gz" else data)
    return path


@functools.lru_cache(maxsize=1)
def gpt2_ids() -> dict[str, int]:
    return {t: i for i, t in enumerate(load_token_strings("gpt2"))}


def as_vllm(body: dict[str, Any], *, ranks: bool = True) -> dict[str, Any]:
    """vLLM's shape: token-id keys, {logprob, rank, decoded_token}, the actual token included."""
    ids = gpt2_ids()
    lp = body["choices"][0]["logprobs"]
    prompt_ids = [ids[t] for t in lp["tokens"]]
    entries: list[Any] = [None]
    for pos in range(1, len(prompt_ids)):
        top = sorted(lp["top_logprobs"][pos].items(), key=lambda kv: -kv[1])
        entry = {}
        for rank, (token, value) in enumerate(top, start=1):
            entry[str(ids[token])] = {"logprob": value, "rank": rank, "decoded_token": token_bytes(token).decode("utf-8", "replace")}
        actual = str(prompt_ids[pos])
        if actual not in entry:
            decoded = token_bytes(lp["tokens"][pos]).decode("utf-8", "replace")
            entry[actual] = {"logprob": lp["token_logprobs"][pos], "rank": 1000 + pos, "decoded_token": decoded}
        if not ranks:
            for value in entry.values():
                del value["rank"]
        entries.append(entry)
    choice = {"index": 0, "text": "!", "prompt_logprobs": entries, "prompt_token_ids": prompt_ids, "logprobs": None}
    return {"id": "cmpl-1", "object": "text_completion", "model": body["model"], "choices": [choice]}


def as_chat(body: dict[str, Any]) -> dict[str, Any]:
    """Chat's shape: per token text, logprob, bytes and a top_logprobs list (the first token is the
    prompt's, so chat shows the rest as generated)."""
    lp = body["choices"][0]["logprobs"]

    def item(token: str, value: float) -> dict[str, Any]:
        raw = token_bytes(token)
        return {"token": raw.decode("utf-8", "replace"), "logprob": value, "bytes": list(raw)}

    content = [
        {**item(token, lp["token_logprobs"][pos]), "top_logprobs": [item(t, v) for t, v in lp["top_logprobs"][pos].items()]}
        for pos, token in enumerate(lp["tokens"][1:], start=1)
    ]
    message = {"role": "assistant", "content": "..."}
    return {"object": "chat.completion", "model": body["model"], "choices": [{"index": 0, "message": message, "logprobs": {"content": content}}]}


def as_batch(bodies: list[dict[str, Any]], manifest: Path, seed: int) -> list[dict[str, Any]]:
    """Batch API output lines in a shuffled order, with failed attempts mixed in."""
    indices = [json.loads(line)["request_index"] for line in manifest.read_text().splitlines()]
    lines = [{"id": f"batch_req_{i}", "custom_id": f"request-{i}", "response": {"status_code": 200, "request_id": "r", "body": b}, "error": None}
             for i, b in zip(indices, bodies, strict=True)]
    lines += [{"id": "x", "custom_id": f"request-{indices[0]}", "response": {"status_code": 500, "body": {"error": {}}}, "error": None},
              {"id": "y", "custom_id": f"request-{indices[1]}", "response": None, "error": {"code": "timeout", "message": "t"}}]
    random.Random(seed).shuffle(lines)
    return lines


def figures(store: Path) -> dict[str, Any]:
    ds = engine.open_dataset(store)
    out: dict[str, Any] = {m: {s: ds.model_report(m).splits[s].perplexity for s in ("val", "test")} for m in ds.models}
    blend = ds.blend(**MODELS).evaluate([1.0, 1.0, -1.0])
    out["blend"] = {s: blend.splits[s].perplexity for s in ("val", "test")}
    out["positions"] = ds.n_positions
    return out


@pytest.mark.parametrize("variant", ["vllm", "vllm-no-ranks", "vllm-named", "chat", "batch", "batch-of-vllm"])
def test_every_format_gives_the_legacy_figures(legacy, reference, tmp_path, variant):
    manifest, bodies = legacy
    reference_store, reference_figures = reference
    files = []
    for seed, (model, records) in enumerate(bodies.items()):
        if variant in ("vllm", "vllm-named"):
            converted = [as_vllm(b) for b in records]
        elif variant == "vllm-no-ranks":
            converted = [as_vllm(b, ranks=False) for b in records]
        elif variant == "chat":
            converted = [as_chat(b) for b in records]
        elif variant == "batch":
            converted = as_batch(records, manifest, seed)
        else:
            converted = as_batch([as_vllm(b) for b in records], manifest, seed)
        files.append(write(tmp_path / f"{model}.{variant}.jsonl.gz", converted))
    names = load_token_strings("gpt2") if variant == "vllm-named" else None
    store = ingest_responses(files, requests=manifest, out=tmp_path / f"{variant}.store", token_strings=names)
    got = figures(store)
    assert got == reference_figures
    if variant in ("vllm-named", "batch"):  # the same token strings: the same bytes, bits per byte too
        assert engine.open_dataset(store).store.vocab.sort("token")["token"].to_list() == \
            engine.open_dataset(reference_store).store.vocab.sort("token")["token"].to_list()


def test_detection_and_pure_conversion(legacy):
    _, bodies = legacy
    body = bodies["grimm-big"][0]
    assert detect_format(body) == "completions"
    assert detect_format(as_vllm(body)) == "vllm-prompt-logprobs"
    assert detect_format(as_chat(body)) == "chat"
    converted = to_completions(as_chat(body))["choices"][0]
    # Text rebuilt from bytes; curly quotes split across byte tokens come back whole.
    assert converted["text"] == body["choices"][0]["text"][len(token_bytes(body["choices"][0]["logprobs"]["tokens"][0]).decode()):]
    assert converted["logprobs"]["tokens"][1:] == body["choices"][0]["logprobs"]["tokens"][1:]


def test_format_errors_name_the_field(legacy, tmp_path):
    manifest, bodies = legacy
    broken = as_vllm(bodies["grimm-big"][0])
    del broken["choices"][0]["prompt_token_ids"]
    records = [broken] + [as_vllm(b) for b in bodies["grimm-big"][1:]]
    with pytest.raises(IngestError, match=r"line 1: field 'choices\[0\].prompt_token_ids' needs prompt_token_ids"):
        ingest_responses([write(tmp_path / "v.jsonl", records)], requests=manifest, out=tmp_path / "s")
    lines = as_batch(bodies["grimm-big"], manifest, 0)
    lines = [line for line in lines if not (line["custom_id"] == "request-1" and line["error"] is None and line["response"]["status_code"] == 200)]
    with pytest.raises(IngestError, match="no successful response for request 1: rerun approxft collect"):
        ingest_responses([write(tmp_path / "b.jsonl", lines)], requests=manifest, out=tmp_path / "s")
