"""``approxft collect`` against a server that answers with a JSON integer too large for a float
(10**400: json.loads reads it exactly, float() of it overflows): the answer is recorded as an
invalid response naming its field, the run goes on and ends with one line; never a traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ingest.prepare.corpus import Document, prepare, write_prepared
from ingest.prepare.tokenizer import local_tokenizer
from tests.ingest.collect.fake_server import (
    FakeServer,
    config,
    echo_response,
    raw,
    run_collect,
)


def small_manifest(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    docs = [Document(f"doc {i}", f"The {word} went " + " ".join(f"{word}{i}x{j}" for j in range(6)))
            for i, word in enumerate(["fox", "wolf", "goose", "miller"])]
    path = write_prepared(tmp_path / "run", prepare(docs, local_tokenizer("gpt2"), chunk_tokens=8, finetune_share=0.25), logprobs=2)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return path, {r["params"]["prompt"]: r["request_index"] for r in records}


def test_a_huge_integer_in_an_answer_is_an_invalid_response(tmp_path, capsys):
    path, prompts = small_manifest(tmp_path)
    hostile = {1: ("token_logprobs", 10**400), 2: ("top_logprobs", -(10**400))}

    def behaviour(model: str, index: int, body: dict[str, Any]) -> tuple[int, bytes] | None:
        if model != "big" or index not in hostile:
            return None
        answer = echo_response(model, body["prompt"], generate=body["max_tokens"])
        logprobs = answer["choices"][0]["logprobs"]
        name, value = hostile[index]
        if name == "token_logprobs":
            logprobs["token_logprobs"][1] = value
        else:
            logprobs["top_logprobs"][1][" the"] = value
        return 200, json.dumps(answer).encode()

    server = FakeServer(prompts, behaviour)
    try:
        models = config(tmp_path / "models.toml", server.url, {"big": {}, "tuned": {}, "untuned": {}}, retries=0)
        status, summary, err = run_collect(capsys, models, path)
    finally:
        server.close()
    assert status == 1 and "Traceback" not in err and err.strip(), err
    assert summary["roles"]["big"]["main"]["failed"] == 2
    errors = {line["custom_id"]: line["error"]["message"] for line in raw(path.parent, "big") if line["error"]}
    assert set(errors) == {"request-1", "request-2"}
    assert "field 'choices[0].logprobs.token_logprobs[1]' is 1000" in errors["request-1"] and "not a number" in errors["request-1"]
    assert "field 'choices[0].logprobs.top_logprobs[1][' the']' is -1000" in errors["request-2"]
    assert len(raw(path.parent, "big")) == len(prompts)  # every other request collected
