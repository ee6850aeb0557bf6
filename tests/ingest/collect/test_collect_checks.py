"""What ``approxft collect`` refuses before it stores an answer or sends a request: an answer
that repeats a JSON key (sent directly, through the Batch API, or with a key in it to redact),
a manifest ingest would refuse (any line, ``--dry-run`` too), a hand-edited ``endpoint.json``,
and an echo answer ``--verify`` cannot read. Each is one clear message naming the file, line or
field. Real HTTP on 127.0.0.1, the real openai client, the real CLI (in-process)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ingest.errors import IngestError
from ingest.jsonl import loads_unique
from ingest.prepare.bpe import gpt2
from tests.http_fakes import FakeBatches, HttpServer, json_reply
from tests.ingest.collect.fake_model import FakeModel
from tests.ingest.collect.fake_server import (
    FakeServer,
    config,
    echo_response,
    next_token_answer,
    prepared_run,
    raw,
    run_collect,
)

ROLES = {"big": {}, "tuned": {}, "untuned": {}}
SECRET = "sk-test-REPEATED-KEYS-0123456789"
REPEAT = (b'{" the": -0.5, ', b'{" the": -0.5, " the": -0.7, ')
"""Makes the first list of an ``echo_response`` hold ' the' twice (json.dumps cannot)."""
REPEATED = "field 'choices[0].logprobs.top_logprobs[1]' repeats the key ' the': a JSON object holds each key once"


def repeating(model: str, prompt: str, max_tokens: int, *, extra: dict[str, Any] | None = None) -> bytes:
    """A well-formed echo answer but for a list that holds ' the' twice."""
    data = json.dumps({**echo_response(model, prompt, generate=max_tokens), **(extra or {})}).encode()
    assert REPEAT[0] in data
    return data.replace(*REPEAT, 1)


def test_loads_unique_names_the_object_and_the_key():
    assert loads_unique(b'{"a": {"b": 1}, "c": [{"d": 2}]}') == {"a": {"b": 1}, "c": [{"d": 2}]}
    with pytest.raises(IngestError, match=r"^field 'c\[1\]' repeats the key 'd'"):
        loads_unique('{"a": 1, "c": [{"d": 2}, {"d": 3, "d": 4}]}')
    with pytest.raises(IngestError, match=r"^repeats the key 'a'"):
        loads_unique('{"a": 1, "a": 1}')


def test_an_answer_that_repeats_a_key_is_an_invalid_response_naming_the_field(manifest, capsys, tmp_path, monkeypatch):
    """Request 1 repeats a key; request 2 also holds the key, so that the body is redacted (and
    re-serialized, were it parsed there) before it is read: both are refused, not stored with
    the last value of ' the' silently kept."""
    path, prompts = manifest
    monkeypatch.setenv("APPROXFT_TEST_KEY", SECRET)

    def behaviour(model: str, index: int, body: dict[str, Any]) -> tuple[int, bytes] | None:
        if model == "big" and index in (1, 2):
            return 200, repeating(model, body["prompt"], body["max_tokens"], extra={"id": f"cmpl {SECRET}"} if index == 2 else None)
        return None

    server = FakeServer(prompts, behaviour)
    try:
        roles = {"big": {"api_key_env": "APPROXFT_TEST_KEY"}, "tuned": {}, "untuned": {}}
        status, summary, err = run_collect(capsys, config(tmp_path / "models.toml", server.url, roles), path)
    finally:
        server.close()
    assert status == 1
    assert summary["roles"]["tuned"]["main"]["complete"] and summary["roles"]["untuned"]["main"]["complete"]
    big = summary["roles"]["big"]["main"]
    assert big["failed"] == 2 and big["pending"] == 2
    errors = {line["custom_id"]: line["error"] for line in raw(path.parent, "big") if line["error"]}
    assert set(errors) == {"request-1", "request-2"}
    for error in errors.values():
        assert error["code"] == "invalid_response"
        assert error["message"] == f"the response body is ambiguous: {REPEATED}"
    assert f"big main: 2 of {len(prompts)} requests not collected (2 failed, first: request-" in err
    written = (path.parent / "raw" / "big.jsonl").read_text()
    assert SECRET[:8] not in written + err + json.dumps(summary)


def test_a_next_token_list_ingest_would_refuse_is_recorded_as_an_invalid_response(manifest, capsys, tmp_path):
    """collect checks a next-token answer's list as ingest will (check_top_list): a value above 0
    is refused where it arrives, naming the field, not stored for ingest to refuse later."""
    path, prompts = manifest

    def behaviour(model: str, index: int, body: dict[str, Any]) -> tuple[int, bytes] | None:
        if model == "big" and not body.get("echo"):
            return 200, json.dumps(next_token_answer(model, {" the": -0.5, " a": 0.7})).encode()
        return None

    server = FakeServer(prompts, behaviour)
    try:
        roles = {"big": {"mode": "next_token", "positions_per_request": 1}, "tuned": {}, "untuned": {}}
        status, summary, _ = run_collect(capsys, config(tmp_path / "models.toml", server.url, roles), path)
    finally:
        server.close()
    assert status == 1 and summary["roles"]["big"]["main"]["completed"] == 0
    errors = [line["error"] for line in raw(path.parent, "big") if line["error"]]
    assert errors and all(e["code"] == "invalid_response" for e in errors)
    assert all("field 'choices[0].logprobs.top_logprobs[0][' a']' is 0.7, above 0" in e["message"] for e in errors), errors


def test_a_batch_output_line_that_repeats_a_key_is_that_requests_invalid_response(manifest, capsys, tmp_path):
    path, prompts = manifest

    def good_line(custom_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return {"response": {"status_code": 200, "body": echo_response(body["model"], body["prompt"], generate=1)}, "error": None}

    batches = FakeBatches(good_line, lambda batch: "completed")
    output_ids: list[str] = []

    def answer(request: Any) -> Any:
        reply = batches.handle(request)
        if reply is None:
            return json_reply({}, 404)
        if request.method == "GET" and request.path.startswith("/v1/batches/"):
            output_ids.append(json.loads(reply[2])["output_file_id"])
        if request.path == f"/v1/files/{output_ids[-1] if output_ids else None}/content":
            return reply[0], reply[1], reply[2].replace(*REPEAT, 1)  # the first output line repeats ' the'
        return reply

    with HttpServer(answer) as server:
        models = config(tmp_path / "models.toml", server.url, {"big": {"mode": "batch"}, "tuned": {}, "untuned": {}},
                        poll_seconds=0.05, retries=0)
        status, summary, err = run_collect(capsys, models, path, "--roles", "big")
    assert status == 1, err
    lines = raw(path.parent, "big")
    assert len(lines) == len(prompts)
    [bad] = [line for line in lines if line["error"]]
    assert bad["error"]["code"] == "invalid_response"
    assert bad["error"]["message"] == f"the output line is ambiguous: field 'response.body.{REPEATED[7:]}"
    assert summary["roles"]["big"]["main"]["failed"] == 1 and summary["roles"]["big"]["main"]["completed"] == len(prompts) - 1


def rewrite(path: Path, change) -> None:  # noqa: ANN001
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(line) + "\n" for line in change(lines)))


BAD_MANIFESTS = {
    "second line without request_index": (lambda ls: [ls[0], {k: v for k, v in ls[1].items() if k != "request_index"}, *ls[2:]],
                                          2, "field 'request_index' missing"),
    "an empty token string": (lambda ls: [*ls[:2], {**ls[2], "tokens": [*ls[2]["tokens"][:2], "", *ls[2]["tokens"][2:]]}, *ls[3:]],
                              3, "field 'tokens' is not a list of non-empty token strings"),
    "another k on a later line": (lambda ls: [*ls[:3], {**ls[3], "params": {**ls[3]["params"], "logprobs": 5}}, *ls[4:]],
                                  4, "field 'params.logprobs' is 5, other requests have 2: one k per dataset"),
    "no prompt text": (lambda ls: [*ls[:1], {**ls[1], "params": {k: v for k, v in ls[1]["params"].items() if k != "prompt"}},
                                   *ls[2:]], 2, "field 'params.prompt' missing: collection needs the prompt text"),
    "a negative k": (lambda ls: [{**line, "params": {**line["params"], "logprobs": -1}} for line in ls],
                     1, "field 'params.logprobs' is -1, not a non-negative integer"),
    "a tokenizer that is not a name": (lambda ls: [*ls[:1], {**ls[1], "tokenizer": 3}, *ls[2:]],
                                       2, "field 'tokenizer' is 3, not a tokenizer's name"),
}


@pytest.mark.parametrize("case", BAD_MANIFESTS)
def test_a_manifest_ingest_would_refuse_is_refused_before_anything_is_sent(manifest, capsys, tmp_path, case):
    """Every line is checked by ingest's own validator (``ingest.manifest``), in a dry run too:
    one line naming the file, line and field, exit 1, not a request sent."""
    path, prompts = manifest
    change, line, problem = BAD_MANIFESTS[case]
    rewrite(path, change)
    server = FakeServer(prompts, lambda model, index, body: None)
    try:
        models = config(tmp_path / "models.toml", server.url, ROLES)
        for options in (("--dry-run",), ()):
            status, summary, err = run_collect(capsys, models, path, *options)
            assert status == 1 and summary == {}, options
            assert err == f"approxft collect: error: {path} line {line}: {problem}\n", options
    finally:
        server.close()
    assert server.requests == [] and not (path.parent / "raw").exists()


@pytest.mark.parametrize("field, value, what", [
    ("echo_max_tokens", "x", "0 or 1 (or null: not probed yet)"),
    ("echo_max_tokens", True, "0 or 1 (or null: not probed yet)"),
    ("context_prompts", "ids", "'token ids' or 'text' (or null: not probed yet)"),
    ("verify", [1], "an object (or null)"),
    ("base_url", None, "a URL"),
])
def test_a_hand_edited_endpoint_record_is_one_error_naming_the_file_and_field(manifest, capsys, tmp_path, field, value, what):
    path, prompts = manifest
    server = FakeServer(prompts, lambda model, index, body: None)
    record = path.parent / "raw" / "big.endpoint.json"
    try:
        record.parent.mkdir()
        good = {"base_url": server.url, "model": "big", "echo_max_tokens": 0, "echo_probe": "max_tokens=0 answered"}
        record.write_text(json.dumps({**good, field: value}))
        status, summary, err = run_collect(capsys, config(tmp_path / "models.toml", server.url, ROLES), path)
    finally:
        server.close()
    assert status == 1 and summary == {}
    assert err.splitlines()[-1] == (f"approxft collect: error: {record}: field '{field}' is {value!r}, not {what}: move the "
                                    "file aside to probe the endpoint again")
    assert [line for line in err.splitlines() if "error:" in line or "Traceback" in line] == [err.splitlines()[-1]]
    assert json.loads(record.read_text()) == {**good, field: value}  # left as it was
    assert not any(b["model"] == "big" for b in server.bodies)  # nothing sent from a bad record


def vllm_answer(body: dict[str, Any]) -> bytes:
    """vLLM's prompt_logprobs answer for ``body``'s prompt (GPT-2 ids), whose first entry also
    lists token 60000 (past GPT-2's vocabulary) decoded as the actual token is. Read with the
    server's decoded names (the run's check) that is no clash, as the actual token's decoded text
    here differs; read with the manifest tokenizer's names (as --verify reads it) it is."""
    ids = gpt2().encode(body["prompt"])
    names = gpt2().api_tokens(ids)
    entries: list[Any] = [None]
    for i in range(1, len(ids)):
        entry = {str(ids[i]): {"logprob": -1.0, "rank": 1, "decoded_token": f"{names[i]}~{i}"}}
        if i == 1:
            entry["60000"] = {"logprob": -2.0, "rank": 2, "decoded_token": names[1]}
        entries.append(entry)
    choice = {"index": 0, "text": "x", "prompt_logprobs": entries, "prompt_token_ids": ids, "finish_reason": "length"}
    return json.dumps({"model": body["model"], "choices": [choice], "usage": {"prompt_tokens": len(ids)}}).encode()


def test_an_echo_answer_verify_cannot_read_refuses_that_role_only(tmp_path, capsys):
    path, prompts = prepared_run(tmp_path, tokenizer="gpt2")
    honest = FakeModel()
    server = FakeServer(prompts, lambda model, index, body: (200, vllm_answer(body)) if "prompt_logprobs" in body
                        else honest.answer(body))
    try:
        roles = {"big": {}, "tuned": {"mode": "prompt_logprobs"}, "untuned": {}}
        status, summary, err = run_collect(capsys, config(tmp_path / "models.toml", server.url, roles), path, "--verify", "2")
    finally:
        server.close()
    assert status == 1
    errors = [line for line in err.splitlines() if "error:" in line or "Traceback" in line]
    assert len(errors) == 1 and errors[0].startswith("approxft collect: error: tuned: --verify failed: the echo request of "
                                                     "request "), err
    assert "cannot be read: field 'choices[0].prompt_logprobs[1]['60000'].decoded_token' decodes to" in errors[0]
    tuned = summary["roles"]["tuned"]
    assert tuned["verify"]["passed"] is False and "main" not in tuned
    assert summary["roles"]["big"]["main"]["complete"] and summary["roles"]["untuned"]["main"]["complete"]
