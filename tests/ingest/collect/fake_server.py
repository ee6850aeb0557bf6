"""A /v1/completions server of our own for collect's tests (real HTTP on 127.0.0.1, answered by a
``behaviour`` function), the answers it gives, and the run folder, config and CLI helpers those
tests share."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.cli import main
from ingest.prepare.bpe import gpt2
from ingest.prepare.corpus import Document, prepare, write_prepared
from ingest.prepare.tokenizer import local_tokenizer
from tests.http_fakes import HttpServer, Reply, Request, json_reply

Behaviour = Callable[[str, int, dict[str, Any]], "tuple[int, bytes] | None"]


def echo_response(model: str, prompt: str, *, generate: int = 0) -> dict[str, Any]:
    """A well-formed legacy echo response with made-up values (GPT-2 tokens of ``prompt``)."""
    bpe = gpt2()
    tokens = bpe.api_tokens(bpe.encode(prompt)) + [" x"] * generate
    lps = [None] + [-1.0 - 0.01 * i for i in range(1, len(tokens))]
    tops = [None] + [{" the": -0.5, tokens[i]: lps[i]} for i in range(1, len(tokens))]
    offsets, at = [], 0
    for t in tokens:
        offsets.append(at)
        at += len(t) if not t.startswith("bytes:") else 0
    return {
        "model": model,
        "choices": [{"text": prompt, "index": 0, "logprobs": {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}}],
        "usage": {"prompt_tokens": len(tokens) - generate, "completion_tokens": generate},
    }


def next_token_answer(model: str, top: dict[str, float] | None = None) -> dict[str, Any]:
    """A legacy next-token completion (``max_tokens=1``) whose list is ``top`` (made-up values
    by default)."""
    top = top or {" the": -0.5, " a": -1.5}
    token, value = max(top.items(), key=lambda kv: kv[1])
    logprobs = {"tokens": [token], "token_logprobs": [value], "top_logprobs": [top], "text_offset": [0]}
    return {"model": model, "choices": [{"text": token, "index": 0, "logprobs": logprobs, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1}}


def next_token_response(model: str, top: dict[str, float]) -> bytes:
    """``next_token_answer`` as the bytes of an answer's body."""
    return json.dumps(next_token_answer(model, top)).encode()


class FakeServer(HttpServer):
    """A /v1/completions server; ``behaviour(model, request_index, body)`` may return
    ``(status, body bytes)`` to misbehave, or None for a good response (``echo_response``, or
    ``next_token_answer`` without echo). ``request_index`` is
    the manifest request whose chunk is the prompt, else -1 (a next-token context, token ids);
    ``calls`` counts requests by (model, request_index), ``bodies`` keeps them in order. Every
    answer says ``Retry-After: 0.1`` (read on a 429 only)."""

    def __init__(self, prompts: dict[str, int], behaviour: Behaviour) -> None:
        gpt2()  # load the vocabulary now, not inside the first (timed) requests
        self.calls: Counter[tuple[str, int]] = Counter()
        self.bodies: list[dict[str, Any]] = []

        def answer(request: Request) -> Reply:
            body = request.json()
            prompt = body.get("prompt")
            index = prompts.get(prompt, -1) if isinstance(prompt, str) else -1
            self.calls[(body["model"], index)] += 1
            self.bodies.append(body)
            misbehaving = behaviour(body["model"], index, body)
            if misbehaving is not None:
                return misbehaving[0], "application/json", misbehaving[1]
            if body.get("echo"):
                return json_reply(echo_response(body["model"], body["prompt"], generate=body["max_tokens"]))
            return json_reply(next_token_answer(body["model"]))

        super().__init__(answer, headers=lambda request: {"Retry-After": "0.1"})


def prepared_run(tmp_path: Path, *, tokenizer: str | None = None) -> tuple[Path, dict[str, int]]:
    """A corpus of 8 short documents prepared (gpt2, 8-token chunks, k=2) into ``tmp_path/run``:
    the manifest's path and each request's index by its prompt text; ``tokenizer`` recorded in
    the manifest where given."""
    words = ["king", "fisherman", "fox", "wolf", "goose", "tailor", "miller", "baker"]
    # Every chunk distinct, so that the fake server knows which request it answers.
    docs = [Document(f"doc {i}", f"The {word} “{i}” " + " ".join(f"{word}{i}x{j}" for j in range(6))) for i, word in enumerate(words)]
    prepared = prepare(docs, local_tokenizer("gpt2"), chunk_tokens=8, finetune_share=0.25)
    path = write_prepared(tmp_path / "run", prepared, logprobs=2, tokenizer=tokenizer)
    prompts = {json.loads(line)["params"]["prompt"]: json.loads(line)["request_index"] for line in path.read_text().splitlines()}
    return path, prompts


def error_body(message: str, code: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}).encode()


def config(path: Path, url: str, roles: dict[str, dict[str, Any]], **defaults: Any) -> Path:
    settings = {"base_url": url, "retries": 2, "backoff": 0.01, "timeout": 10.0, "concurrency": 3, "rpm": 60000, **defaults}
    lines = ["[defaults]", *(f"{k} = {json.dumps(v)}" for k, v in settings.items())]
    for role, extra in roles.items():
        lines += [f"[models.{role}]", f'model = "{role}"', *(f"{k} = {json.dumps(v)}" for k, v in extra.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_collect(capsys, models: Path, manifest: Path, *options: str) -> tuple[int, dict[str, Any], str]:
    """``approxft collect`` in-process into the manifest's folder: (exit status, the JSON summary
    ({} when none was printed), stderr)."""
    status = main(["collect", "--models", str(models), "--corpus", str(manifest), "--out", str(manifest.parent), *options])
    captured = capsys.readouterr()
    return status, json.loads(captured.out) if captured.out.strip() else {}, captured.err


def raw(run: Path, role: str) -> list[dict[str, Any]]:
    """The role's raw file, every line parsed (so it is valid JSONL)."""
    return [json.loads(line) for line in (run / "raw" / f"{role}.jsonl").read_text().splitlines()]
