"""Echo's ``max_tokens`` decided per endpoint by a probe (0, then 1) and recorded, against fake
servers that answer ``max_tokens=0`` as real ones do: an error of any status (OpenAI's 400,
``transformers serve``'s 500) or a completion that runs on (llama-cpp-python reads 0 as "no
limit"). Real HTTP, the real openai client, the real CLI (in-process)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ingest.prepare.corpus import Document, prepare, write_prepared
from ingest.prepare.tokenizer import local_tokenizer
from tests.ingest.collect.fake_model import FakeModel, behaviour
from tests.ingest.collect.fake_server import FakeServer, config, raw, run_collect

ROLES = ("big", "tuned", "untuned")


@pytest.fixture()
def manifest(tmp_path) -> Path:
    docs = [Document(f"doc {i}", f"The {word} went to the {word}house {i}. " * 3) for i, word in enumerate(["fox", "wolf", "owl", "elk"])]
    prepared = prepare(docs, local_tokenizer("gpt2"), chunk_tokens=10, finetune_share=0.2)
    return write_prepared(tmp_path / "run", prepared, logprobs=2, tokenizer="gpt2")


def echo_bodies(server: FakeServer, model: str) -> list[dict]:
    return [b for b in server.bodies if b["model"] == model and b.get("echo")]


def test_max_tokens_zero_is_probed_once_per_endpoint_and_recorded(manifest, capsys, tmp_path):
    models = {"big": FakeModel(zero="500"), "tuned": FakeModel(zero="no limit"), "untuned": FakeModel(zero="ok")}
    server = FakeServer({}, behaviour(models))
    n = len(manifest.read_text().splitlines())
    try:
        settings = config(tmp_path / "models.toml", server.url, {role: {} for role in ROLES})
        status, summary, err = run_collect(capsys, settings, manifest)
        first = {role: echo_bodies(server, role) for role in ROLES}
        (manifest.parent / "raw" / "big.jsonl").unlink()  # a rerun that has everything of big to send again
        status2, summary2, err2 = run_collect(capsys, settings, manifest)
        second = [b for b in server.bodies[sum(map(len, first.values())):] if b["model"] == "big"]
    finally:
        server.close()
    assert status == 0 and status2 == 0, err + err2
    probed = {role: summary["roles"][role]["echo_max_tokens"] for role in ROLES}
    assert probed["big"]["value"] == 1 and "max_tokens=0 answered HTTP 500: max_tokens must be at least 1" in probed["big"]["probe"]
    assert probed["tuned"] == {"value": 1, "probe": "max_tokens=0 generated tokens past the prompt (read as no limit); "
                                                    "max_tokens=1 answered"}
    assert probed["untuned"] == {"value": 0, "probe": "max_tokens=0 answered without generating"}
    for role, expected in (("big", 1), ("tuned", 1), ("untuned", 0)):
        record = json.loads((manifest.parent / "raw" / f"{role}.endpoint.json").read_text())
        assert record["echo_max_tokens"] == expected and record["base_url"] == server.url and record["model"] == role
        # The probe's own answer is the first request's: n requests in all, plus the refused 0 where 1 won.
        asked = [b["max_tokens"] for b in first[role]]
        assert asked.count(expected) == n and len(asked) == n + (expected == 1)
        # Stored answers generated what was asked (not the NO_LIMIT_TOKENS of tuned's probe).
        assert all(line["response"]["body"]["usage"]["completion_tokens"] == expected for line in raw(manifest.parent, role))
    assert summary2["roles"]["big"]["echo_max_tokens"]["value"] == 1 and len(second) == n
    assert all(b["max_tokens"] == 1 for b in second)  # the recorded answer, no probe


def test_max_tokens_in_models_toml_skips_the_probe(manifest, capsys, tmp_path):
    server = FakeServer({}, behaviour({}))
    try:
        roles = {"big": {"max_tokens": 1}, "tuned": {"max_tokens": 0}, "untuned": {"max_tokens": 0}}
        status, summary, err = run_collect(capsys, config(tmp_path / "models.toml", server.url, roles), manifest)
    finally:
        server.close()
    assert status == 0, err
    assert {b["max_tokens"] for b in echo_bodies(server, "big")} == {1}
    assert {b["max_tokens"] for b in echo_bodies(server, "tuned")} == {0}
    assert "echo_max_tokens" not in summary["roles"]["big"]
    assert not (manifest.parent / "raw" / "big.endpoint.json").exists()


def test_an_endpoint_that_answers_neither_is_asked_again_by_the_next_run(manifest, capsys, tmp_path):
    """A probe that learns nothing (0 and 1 both refused) records nothing: the run sends 1, its
    failures say why, and the next run probes again."""
    broken = {"on": True}
    honest = FakeModel()

    def answer(model, index, body):  # noqa: ANN001, ANN202
        if broken["on"] and model == "big":
            return 503, b'{"error": {"message": "warming up"}}'
        return honest.answer(body)

    server = FakeServer({}, answer)
    try:
        settings = config(tmp_path / "models.toml", server.url, {role: {} for role in ROLES}, retries=0)
        status, summary, err = run_collect(capsys, settings, manifest)
        recorded = (manifest.parent / "raw" / "big.endpoint.json").exists()
        broken["on"] = False
        status2, summary2, err2 = run_collect(capsys, settings, manifest)
    finally:
        server.close()
    assert status == 1
    big = summary["roles"]["big"]
    assert big["echo_max_tokens"]["value"] == 1
    assert big["echo_max_tokens"]["probe"] == ("max_tokens=0 answered HTTP 503: warming up (after 1 tries), and max_tokens=1 "
                                               "answered HTTP 503: warming up (after 1 tries)")
    assert re.fullmatch(r"the first \d+ requests all failed the same way \(server_error\): warming up \(after 1 tries\)",
                        big["main"]["fatal"])
    assert not recorded
    assert status2 == 0, err2
    assert summary2["roles"]["big"]["echo_max_tokens"] == {"value": 0, "probe": "max_tokens=0 answered without generating"}


def test_generated_reads_usage_else_text_or_tokens_past_the_prompt():
    from ingest.collect.probe import generated

    def body(text: str, tokens: list[str], usage: dict | None = None) -> dict:
        answer = {"choices": [{"text": text, "logprobs": {"tokens": tokens}}]}
        return answer if usage is None else {**answer, "usage": usage}

    assert generated(body("Hi there", ["Hi", " there"], {"prompt_tokens": 2, "completion_tokens": 1}), "Hi") is True
    assert generated(body("Hi there", ["Hi", " there"]), "Hi there") is False
    assert generated(body("Hi there you", ["Hi", " there"]), "Hi there") is True  # the text runs on
    assert generated(body("", ["Hi", " there", " you"]), "Hi there") is True  # the tokens run on
    assert generated({"choices": []}, "Hi") is False
