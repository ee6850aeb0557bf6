"""A role stops early, with the server's own message, when the first ``min(8, pending)`` finished
requests of a run all failed the same way (same code, same message once numbers are set aside),
instead of sending every request to fail alike. Real HTTP, the real openai client, the real CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ingest.collect.runner import EARLY_STOP
from ingest.prepare.corpus import Document, prepare, write_prepared
from ingest.prepare.tokenizer import local_tokenizer
from tests.ingest.collect.fake_model import FakeModel, behaviour
from tests.ingest.collect.fake_server import (
    FakeServer,
    config,
    error_body,
    raw,
    run_collect,
)

ROLES = {"big": {}, "tuned": {}, "untuned": {}}


@pytest.fixture()
def manifest(tmp_path) -> tuple[Path, dict[str, int]]:
    docs = [Document(f"doc {i}", " ".join(f"{word}{i}x{j}" for j in range(12))) for i, word in enumerate(["fox", "owl", "elk", "ram"])]
    prepared = prepare(docs, local_tokenizer("gpt2"), chunk_tokens=6, finetune_share=0.1)
    path = write_prepared(tmp_path / "run", prepared, logprobs=2, tokenizer="gpt2")
    prompts = {json.loads(line)["params"]["prompt"]: json.loads(line)["request_index"] for line in path.read_text().splitlines()}
    assert len(prompts) >= 3 * EARLY_STOP
    return path, prompts


def sent(server: FakeServer, model: str) -> int:
    return sum(b["model"] == model for b in server.bodies)


def test_a_server_without_logprobs_stops_the_role_after_its_first_requests(manifest, capsys, tmp_path):
    path, prompts = manifest
    server = FakeServer(prompts, behaviour({"big": FakeModel(logprobs=False)}))
    try:
        status, summary, err = run_collect(capsys, config(tmp_path / "models.toml", server.url, ROLES), path)
    finally:
        server.close()
    assert status == 1
    message = f"the first {EARLY_STOP} requests all failed the same way (invalid_response): field 'choices[0].logprobs' missing"
    assert summary["roles"]["big"]["main"]["fatal"] == message
    assert [line for line in err.splitlines() if "error:" in line] == [f"approxft collect: error: big main: stopped: {message}"]
    assert sent(server, "big") <= EARLY_STOP + 2  # the first 8, and at most the 2 others in flight (concurrency 3)
    assert summary["roles"]["tuned"]["main"]["complete"] and summary["roles"]["untuned"]["main"]["complete"]
    failures = raw(path.parent, "big")
    assert EARLY_STOP <= len(failures) <= EARLY_STOP + 2 and all(line["error"]["code"] == "invalid_response" for line in failures)


def test_every_request_refused_alike_stops_with_the_servers_message(manifest, capsys, tmp_path):
    path, prompts = manifest
    honest = FakeModel()

    def answer(model: str, index: int, body: dict[str, Any]) -> tuple[int, bytes]:
        if model == "tuned":  # numbers that differ per request are the same reason
            return 422, error_body(f"This model's maximum context length is 4 tokens, however you requested {10 + index} tokens")
        return honest.answer(body)

    server = FakeServer(prompts, answer)
    try:
        status, summary, err = run_collect(capsys, config(tmp_path / "models.toml", server.url, ROLES, concurrency=1), path)
    finally:
        server.close()
    assert status == 1
    fatal = summary["roles"]["tuned"]["main"]["fatal"]
    assert fatal.startswith(f"the first {EARLY_STOP} requests all failed the same way (http_422): This model's maximum "
                            "context length is 4 tokens, however you requested ")
    assert sent(server, "tuned") == EARLY_STOP + 1  # one at a time; the probe's 0, then its 1 is the first request
    assert f"tuned main: stopped: {fatal}" in err


@pytest.mark.parametrize("case", ["one success among them", "different reasons"])
def test_first_requests_that_do_not_all_fail_alike_go_on(manifest, capsys, tmp_path, case):
    path, prompts = manifest
    honest = FakeModel()
    odd = {index for index in prompts.values() if index % 2}

    def answer(model: str, index: int, body: dict[str, Any]) -> tuple[int, bytes]:
        if model != "big" or (case == "one success among them" and index == 3):
            return honest.answer(body)
        if case == "different reasons" and index in odd:
            return 400, error_body("logprobs must be at most 1")
        return 400, error_body("echo is not supported")

    server = FakeServer(prompts, answer)
    try:
        status, summary, err = run_collect(capsys, config(tmp_path / "models.toml", server.url, ROLES, concurrency=1,
                                                          max_tokens=1), path)
    finally:
        server.close()
    assert status == 1
    big = summary["roles"]["big"]["main"]
    assert big["fatal"] is None and big["total"] == len(prompts)
    assert big["failed"] == len(prompts) - (case == "one success among them")
    assert sent(server, "big") == len(prompts)  # every request was tried
