"""next_token mode sends each context as the manifest's own token ids where the server takes
them (a probe decides, recorded); otherwise as text, dropping and counting the positions whose
context re-tokenizes into other tokens (GPT-2 reads a context ending in "\\n", "\\n" as one
"\\n\\n"), which then stay unobserved in the store instead of holding another context's list.
Real HTTP, the real openai client, the real CLI, real ingest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.cli import main
from ingest.parse.batch_lines import requestable_positions
from ingest.prepare.bpe import GPT2_VOCAB_SIZE, gpt2
from ingest.prepare.corpus import Document, prepare, write_prepared
from ingest.prepare.tokenizer import local_tokenizer
from tests.ingest.collect.fake_model import FakeModel, behaviour, log_probs
from tests.ingest.collect.fake_server import FakeServer, config, raw, run_collect

ROLES = {role: {"mode": "next_token"} for role in ("big", "tuned", "untuned")}


@pytest.fixture()
def manifest(tmp_path) -> Path:
    docs = [Document(f"doc {i}", f"The {word} ran.\n\nIt slept.\n\nThen the {word} woke up.") for i, word in enumerate(["fox", "owl", "elk"])]
    prepared = prepare(docs, local_tokenizer("gpt2"), chunk_tokens=12, finetune_share=0.2)
    return write_prepared(tmp_path / "run", prepared, logprobs=2, tokenizer="gpt2")


def manifest_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def ids_of(tokens: list[str]) -> list[int]:
    index = {s: i for i, s in enumerate(gpt2().api_tokens(list(range(GPT2_VOCAB_SIZE))))}
    return [index[t] for t in tokens]


def double_newlines(path: Path) -> set[tuple[int, int]]:
    """(request, position) whose context ends in "\\n", "\\n": GPT-2 re-tokenizes that text's end as
    one "\\n\\n" token."""
    return {(line["request_index"], p) for line in manifest_lines(path)
            for p in requestable_positions(line["tokens"]) if p >= 2 and line["tokens"][p - 2: p] == ["\n", "\n"]}


def ingest_empty_lists(capsys, run: Path, tmp_path: Path, role: str) -> set[tuple[int, int]]:
    """Ingest every role's raw file; the (request, position) where ``role`` has no top-k list."""
    import engine

    store = tmp_path / "store"
    files = [str(run / "raw" / f"{r}.jsonl") for r in ROLES]
    assert main(["ingest", *files, "--requests", str(run / "requests.jsonl"), "--out", str(store)]) == 0, capsys.readouterr().err
    ds = engine.open_dataset(store)
    ids, _ = ds.store.topk(role)
    request = ds.store.positions["request"].to_numpy()
    position = ds.store.positions["position"].to_numpy()
    empty = (ids < 0).all(axis=1)
    return set(zip(request[empty].tolist(), position[empty].tolist(), strict=True))


def test_token_ids_where_the_server_takes_them(manifest, capsys, tmp_path):
    server = FakeServer({}, behaviour({}))
    try:
        status, summary, err = run_collect(capsys, config(tmp_path / "models.toml", server.url, ROLES), manifest)
    finally:
        server.close()
    assert status == 0, err
    big = summary["roles"]["big"]
    assert big["context_prompts"]["sent_as"] == "token ids"
    assert big["context_prompts"]["probe"].startswith("token ids and text of one context (")
    assert big["main"]["dropped_positions"] == 0 and big["main"]["complete"]
    record = json.loads((manifest.parent / "raw" / "big.endpoint.json").read_text())
    assert record["context_prompts"] == "token ids"
    lines = {line["request_index"]: line["tokens"] for line in manifest_lines(manifest)}
    asked = [b for b in server.bodies if b["model"] == "big"][2:]  # after the probe's two
    assert len(asked) == sum(len(requestable_positions(t)) for t in lines.values())
    assert all(isinstance(b["prompt"], list) for b in asked)
    for line in raw(manifest.parent, "big"):  # each answer is the list of the manifest's own context
        request, position = map(int, line["custom_id"].removeprefix("request-").split("-position-"))
        top = line["response"]["body"]["choices"][0]["logprobs"]["top_logprobs"][0]
        expected = log_probs(tuple(ids_of(lines[request][:position])))
        assert max(top.values()) == pytest.approx(expected.max(), abs=1e-9)
    assert double_newlines(manifest) and not ingest_empty_lists(capsys, manifest.parent, tmp_path, "big")


def test_text_contexts_that_re_tokenize_otherwise_are_dropped_counted_and_left_unobserved(manifest, capsys, tmp_path):
    server = FakeServer({}, behaviour({"big": FakeModel(ids=False)}))
    try:
        status, summary, err = run_collect(capsys, config(tmp_path / "models.toml", server.url, ROLES), manifest)
    finally:
        server.close()
    assert status == 0, err
    dropped = double_newlines(manifest)
    big = summary["roles"]["big"]
    assert big["context_prompts"] == {"sent_as": "text", "probe": "token ids answered HTTP 400: prompt must be a string"}
    assert big["main"]["dropped_positions"] == len(dropped) > 0
    assert summary["roles"]["tuned"]["main"]["dropped_positions"] == 0  # token ids
    wanted = sum(len(requestable_positions(line["tokens"])) for line in manifest_lines(manifest))
    assert f"big main: dropped {len(dropped)} of {wanted} positions" in err
    lines = raw(manifest.parent, "big")
    asked = {line["custom_id"] for line in lines if "-position-" in line["custom_id"]}
    assert asked.isdisjoint({f"request-{i}-position-{p}" for i, p in dropped}) and len(asked) == wanted - len(dropped)
    plans = {int(line["custom_id"].split("-")[1]): line["response"]["body"]["positions"] for line in lines
             if line["custom_id"].endswith("-positions")}
    assert {i for i, _ in dropped} == set(plans)  # a plan line where a request lost positions, naming those asked
    for i, positions in plans.items():
        assert {(i, p) for p in positions}.isdisjoint(dropped)
    # Sent as text, those contexts would have been answered for "\n\n": another context's list.
    i, p = sorted(dropped)[0]
    tokens = next(line["tokens"] for line in manifest_lines(manifest) if line["request_index"] == i)
    mine, theirs = log_probs(tuple(ids_of(tokens[:p]))), log_probs(tuple(gpt2().encode("".join(tokens[:p]))))
    assert int(np.argmax(mine)) != int(np.argmax(theirs))
    assert ingest_empty_lists(capsys, manifest.parent, tmp_path, "big") == dropped
