"""``approxft collect`` against a local server of our own that misbehaves on purpose: 500s, a
hang, a 429, malformed bodies, tokens that do not spell the prompt, max_tokens=0 rejected, 401, 404,
insufficient_quota, a server that is down, a missing key variable; for whole distributions
(``--calibration-k all``), an endpoint that caps k, bad distributions, vLLM's id-keyed tokens and a
truncated gzip member. No mocks: real HTTP, the real
openai client, the real CLI (in-process for speed)."""

from __future__ import annotations

import gzip
import json
import math
import re
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from engine.cli import main
from ingest.prepare.bpe import GPT2_VOCAB_SIZE, gpt2
from tests.ingest.collect.fake_server import (
    FakeServer,
    config,
    echo_response,
    error_body,
    next_token_response,
    prepared_run,
    raw,
    run_collect,
)

SECRET = "sk-test-DO-NOT-LEAK-0123456789"


def test_transient_faults_are_retried_bad_responses_recorded_and_the_rest_collected(manifest, capsys, tmp_path):
    path, prompts = manifest
    n = len(prompts)

    def behaviour(model: str, index: int, body: dict[str, Any]) -> tuple[int, bytes] | None:
        first = server.calls[(model, index)] == 1
        if model == "big" and index == 1 and first:
            return 500, error_body("The server had an error while processing your request.")
        if model == "big" and index == 2 and first:
            time.sleep(2.5)  # past the 1 s timeout: retried
        if model == "tuned" and index == 1:
            return 200, b'{"choices": [{"logprobs": '  # cut off
        if model == "tuned" and index == 2:
            return 200, json.dumps(echo_response(model, "Something else entirely.")).encode()
        if model == "untuned" and index == 3 and first:
            return 429, error_body("Rate limit reached for requests", "rate_limit_exceeded")
        if model == "untuned" and body.get("max_tokens") == 0:
            return 400, error_body("max_tokens must be at least 1, got 0.")
        return None

    server = FakeServer(prompts, behaviour)
    try:
        # A 1 s timeout for the hang; 4 retries so that a slow machine does not fail the others.
        models = config(tmp_path / "models.toml", server.url, {"big": {}, "tuned": {}, "untuned": {}}, timeout=1.0, retries=4)
        status, summary, err = run_collect(capsys, models, path)
    finally:
        server.close()
    assert status == 1
    roles = summary["roles"]
    assert roles["big"]["main"]["complete"] and roles["untuned"]["main"]["complete"]
    assert roles["tuned"]["main"]["pending"] == 2 and roles["tuned"]["main"]["failed"] == 2
    assert "tuned main: 2 of" in err
    run = path.parent
    big = raw(run, "big")
    assert server.calls[("big", 1)] >= 2 and server.calls[("big", 2)] >= 2  # retried, then answered
    assert server.calls[("untuned", 3)] >= 2
    assert not any(line["error"] for line in big) and len({line["custom_id"] for line in big}) == len(big) == n
    tuned_errors = {line["custom_id"]: line["error"]["message"] for line in raw(run, "tuned") if line["error"]}
    assert "not JSON" in tuned_errors["request-1"]
    assert "do not spell the prompt" in tuned_errors["request-2"]
    assert all(line["response"]["body"]["usage"]["completion_tokens"] == 1 for line in raw(run, "untuned"))

    # Ingest: the complete roles land (the generated token dropped); the incomplete one says why.
    store = tmp_path / "store"
    assert main(["ingest", str(run / "raw" / "big.jsonl"), str(run / "raw" / "untuned.jsonl"), "--requests", str(path), "--out", str(store)]) == 0
    import engine

    ds = engine.open_dataset(store)
    expected = sum(len(json.loads(line)["tokens"]) - 1 for line in path.read_text().splitlines())
    assert ds.n_positions == expected
    capsys.readouterr()
    assert main(["ingest", str(run / "raw" / "tuned.jsonl"), "--requests", str(path), "--out", str(tmp_path / "s2")]) == 1
    assert "no successful response for request 1" in capsys.readouterr().err


def test_a_rerun_sends_only_what_failed(manifest, capsys, tmp_path):
    path, prompts = manifest
    broken = {"on": True}
    server = FakeServer(prompts, lambda model, index, body: (500, error_body("down")) if broken["on"] and index == 0 else None)
    try:
        models = config(tmp_path / "models.toml", server.url, {"big": {}, "tuned": {}, "untuned": {}}, retries=0)
        assert run_collect(capsys, models, path)[0] == 1
        calls = sum(server.calls.values())
        broken["on"] = False
        status, summary, _ = run_collect(capsys, models, path)
    finally:
        server.close()
    assert status == 0
    assert sum(server.calls.values()) - calls == 3  # request 0 once per role
    for role in ("big", "tuned", "untuned"):
        ok = [line["custom_id"] for line in raw(path.parent, role) if not line["error"]]
        assert len(ok) == len(set(ok)) == len(prompts)


def test_unfixable_errors_stop_the_role_at_once_and_keys_stay_secret(manifest, capsys, tmp_path, monkeypatch):
    path, prompts = manifest
    monkeypatch.setenv("APPROXFT_TEST_KEY", SECRET)
    monkeypatch.delenv("APPROXFT_MISSING_KEY", raising=False)

    def behaviour(model: str, index: int, body: dict[str, Any]) -> tuple[int, bytes] | None:
        if model == "big":
            return 401, error_body(f"Incorrect API key provided: {SECRET}.", "invalid_api_key")
        if model == "tuned":
            return 404, error_body("The model `tuned` does not exist", "model_not_found")
        return 429, error_body("You exceeded your current quota.", "insufficient_quota")

    server = FakeServer(prompts, behaviour)
    try:
        roles = {
            "big": {"api_key_env": "APPROXFT_TEST_KEY"},
            "tuned": {"api_key_env": "APPROXFT_TEST_KEY"},
            "untuned": {"api_key_env": "APPROXFT_TEST_KEY"},
            "extra": {"api_key_env": "APPROXFT_MISSING_KEY"},
        }
        status, summary, err = run_collect(capsys, config(tmp_path / "models.toml", server.url, roles, concurrency=1), path)
    finally:
        server.close()
    assert status == 1
    assert server.calls[("big", 0)] == 1 and sum(server.calls.values()) == 3  # one request per role, no retries
    assert "AuthenticationError" in summary["roles"]["big"]["main"]["fatal"]
    assert "does not exist" in summary["roles"]["tuned"]["main"]["fatal"]
    assert "insufficient_quota" in summary["roles"]["untuned"]["main"]["fatal"]
    assert summary["roles"]["extra"]["error"] == "environment variable APPROXFT_MISSING_KEY (api_key_env) is not set"
    assert "APPROXFT_MISSING_KEY" in err
    files = "".join(p.read_text() for p in (path.parent / "raw").glob("*.jsonl"))
    assert SECRET not in files + err + json.dumps(summary)
    assert "Incorrect API key provided: ***." in files


def test_a_server_that_is_down_fails_fast_with_a_clear_message(manifest, capsys, tmp_path):
    path, _ = manifest
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    models = config(tmp_path / "models.toml", f"http://127.0.0.1:{port}/v1", {"big": {}, "tuned": {}, "untuned": {}}, retries=1)
    status, summary, err = run_collect(capsys, models, path)
    assert status == 1
    assert f"cannot reach http://127.0.0.1:{port}/v1" in summary["roles"]["big"]["main"]["fatal"]
    assert "big main: stopped: cannot reach" in err
    for role in ("big", "tuned", "untuned"):
        assert all(line["error"] for line in raw(path.parent, role))


def test_a_partial_last_line_from_a_killed_run_is_dropped_and_redone(manifest, capsys, tmp_path):
    path, prompts = manifest
    run = path.parent
    (run / "raw").mkdir()
    good = json.dumps({"custom_id": "request-0", "response": {"status_code": 200, "body": echo_response("big", next(iter(prompts)))}, "error": None})
    (run / "raw" / "big.jsonl").write_text(good + "\n" + good[:40])
    server = FakeServer(prompts, lambda model, index, body: None)
    try:
        status, summary, err = run_collect(capsys, config(tmp_path / "models.toml", server.url, {"big": {}, "tuned": {}, "untuned": {}}), path)
    finally:
        server.close()
    assert status == 0, err
    assert "dropping a partial last line" in err
    assert summary["roles"]["big"]["main"]["already_done"] == 1
    assert server.calls[("big", 0)] == 0
    assert len(raw(run, "big")) == len(prompts)


def test_bad_config_is_one_clear_line(tmp_path, capsys, manifest):
    path, _ = manifest
    bad = tmp_path / "models.toml"
    bad.write_text('[models.big]\nmodel = "b"\nbase_url = "http://x/v1"\n[models.tuned]\nmodel = "t"\nbase_url = "http://x/v1"\n')
    assert main(["collect", "--models", str(bad), "--corpus", str(path), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"approxft collect: error: {bad}: field 'models.untuned' missing: roles big, tuned, untuned are required"


def test_two_runs_cannot_write_one_raw_file(tmp_path):
    from ingest.collect.rawlog import RawLog

    first = RawLog(tmp_path / "raw" / "big.jsonl")
    try:
        with pytest.raises(ValueError, match="another approxft collect is writing this file"):
            RawLog(tmp_path / "raw" / "big.jsonl")
    finally:
        first.close()
    RawLog(tmp_path / "raw" / "big.jsonl").close()


# --calibration-k all: whole distributions, from endpoints that give them or not.

def whole_distribution(seed: int, *, token_ids: bool = False) -> dict[str, float]:
    """A normalized distribution over the GPT-2 vocabulary, keyed by API string (or vLLM's
    ``token_id:<id>`` with ``--return-tokens-as-token-ids``)."""
    import numpy as np

    logits = np.random.default_rng(seed).normal(scale=3.0, size=GPT2_VOCAB_SIZE)
    lp = logits - np.logaddexp.reduce(logits)
    names = [f"token_id:{i}" for i in range(GPT2_VOCAB_SIZE)] if token_ids else gpt2().api_tokens(list(range(GPT2_VOCAB_SIZE)))
    return dict(zip(names, lp.tolist(), strict=True))


@pytest.fixture()
def gpt2_manifest(tmp_path) -> tuple[Path, dict[str, int]]:
    """The ``manifest`` fixture's corpus, prepared with the tokenizer's name recorded (gpt2)."""
    return prepared_run(tmp_path, tokenizer="gpt2")


def collect_all(capsys, models: Path, manifest: Path, n: int = 4) -> tuple[int, dict[str, Any], str]:
    status = main(["collect", "--models", str(models), "--corpus", str(manifest), "--out", str(manifest.parent),
                   "--calibration", str(n), "--calibration-k", "all"])
    captured = capsys.readouterr()
    return status, json.loads(captured.out) if captured.out.strip() else {}, captured.err


def is_calibration(body: dict[str, Any]) -> bool:
    return body.get("logprobs") == GPT2_VOCAB_SIZE  # not an echo, nor the token-id probe's next-token requests


@pytest.mark.parametrize("cap", ["short list", "refused"])
def test_an_endpoint_that_caps_k_stops_the_calibration_with_one_clear_error(gpt2_manifest, capsys, tmp_path, cap):
    path, prompts = gpt2_manifest
    top20 = dict(sorted(whole_distribution(0).items(), key=lambda kv: -kv[1])[:20])

    def behaviour(model: str, index: int, body: dict[str, Any]) -> tuple[int, bytes] | None:
        if not is_calibration(body):
            return None
        if cap == "refused":  # vLLM without --max-logprobs
            return 400, error_body(f"Requested sample logprobs of {body['logprobs']}, which is greater than max allowed: 20")
        return 200, next_token_response(model, top20)  # an endpoint that lists 20 at most

    server = FakeServer(prompts, behaviour)
    try:
        models = config(tmp_path / "models.toml", server.url, {"big": {}, "tuned": {}, "untuned": {}}, retries=3)
        status, summary, err = collect_all(capsys, models, path, n=12)
        main_files = {role: (path.parent / "raw" / f"{role}.jsonl").read_bytes() for role in ("big", "tuned", "untuned")}
        again = collect_all(capsys, models, path, n=12)
    finally:
        server.close()
    assert status == 1 and again[0] == 1
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 3 and all("calibration: stopped" in line for line in errors), err  # one per role
    got = "got 20 distinct tokens back" if cap == "short list" else "the server refused: Requested sample logprobs of 50257"
    for line in errors:
        assert f"asked logprobs={GPT2_VOCAB_SIZE}" in line and got in line
        assert "approxft serve" in line and "--max-logprobs -1 --return-tokens-as-token-ids" in line
    for role in ("big", "tuned", "untuned"):
        assert summary["roles"][role]["main"]["complete"]
        assert summary["roles"][role]["calibration"]["fatal"] and "npz" not in summary["roles"][role]["calibration"]
        calls = sum(b["model"] == role and b.get("logprobs") == GPT2_VOCAB_SIZE for b in server.bodies)  # not the probe's
        assert calls <= 2 * 3, calls  # at most the requests in flight (concurrency 3), per run: not 12 tries, no retries
        lines = raw(path.parent, role)
        assert len(lines) == len(prompts) and not any(line["error"] for line in lines)
        assert (path.parent / "raw" / f"{role}.jsonl").read_bytes() == main_files[role]  # untouched by the rerun
    assert not (path.parent / "deep").exists()


BAD_FULL = {
    "unnormalized": (lambda top: {t: v + math.log(0.99) for t, v in top.items()}, r"total probability 0\.99, off by more than 0\.001"),
    "another tokenizer": (lambda top: {**dict(list(top.items())[1:]), "<|id:99999|>": -30.0},
                          r"lists '<\|id:99999\|>', which is not one of the 50257 tokens of the manifest's tokenizer"),
}  # a value above 0 is refused as the answer arrives: test_collect_checks


@pytest.mark.parametrize("case", BAD_FULL)
def test_a_bad_whole_distribution_is_one_error_naming_file_and_line(gpt2_manifest, capsys, tmp_path, case):
    path, prompts = gpt2_manifest
    edit, message = BAD_FULL[case]
    good, bad = next_token_response("m", whole_distribution(1)), next_token_response("m", edit(whole_distribution(2)))
    first = {"done": False}

    def behaviour(model: str, index: int, body: dict[str, Any]) -> tuple[int, bytes] | None:
        if not is_calibration(body):
            return None
        if model == "tuned" and not first["done"]:  # the tuned model's first answer
            first["done"] = True
            return 200, bad
        return 200, good

    server = FakeServer(prompts, behaviour)
    try:
        models = config(tmp_path / "models.toml", server.url, {"big": {}, "tuned": {}, "untuned": {}}, concurrency=1)
        status, summary, err = collect_all(capsys, models, path, n=2)
    finally:
        server.close()
    assert status == 1 and summary == {}, err
    raw_log = path.parent / "raw" / "tuned.calibration.jsonl.gz"
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and re.fullmatch(rf"approxft collect: error: {re.escape(str(raw_log))} line 1: field "
                                             rf"'choices\[0\]\.logprobs\.top_logprobs\[0\]' .*{message}.*", errors[0]), err
    assert list((path.parent / "deep").iterdir()) == []  # nothing half-written, not even the roles before


def test_vllm_token_id_keys_and_a_truncated_gzip_member_resume_once_each(gpt2_manifest, capsys, tmp_path):
    """vLLM's ``token_id:<id>`` names (--return-tokens-as-token-ids) read as ids; a run killed
    while writing a record leaves a truncated last gzip member, which the next run cuts off (with
    a notice) and asks again: every calibration id once. A later run with another N keeps only
    its own draw in the sample."""
    import numpy as np

    from ingest.collect.jobs import calibration_positions, read_requests
    from ingest.deep_sample import read_deep_lists, read_token_strings
    from ingest.manifest import read_manifest

    path, prompts = gpt2_manifest
    answers = {role: whole_distribution(seed, token_ids=role == "big") for seed, role in enumerate(("big", "tuned", "untuned"))}
    bodies = {role: next_token_response(role, top) for role, top in answers.items()}  # made once: fast answers
    server = FakeServer(prompts, lambda model, index, body: (200, bodies[model]) if is_calibration(body) else None)
    deep = path.parent / "deep"
    log = path.parent / "raw" / "big.calibration.jsonl.gz"
    try:
        models = config(tmp_path / "models.toml", server.url, {"big": {}, "tuned": {}, "untuned": {}})
        status, summary, err = collect_all(capsys, models, path, n=5)
        assert status == 0, err
        data = log.read_bytes()
        assert data.count(b"\x1f\x8b\x08\x00\x00\x00\x00\x00") == 5  # gzip headers (mtime 0): one member per record
        log.write_bytes(data[: len(data) - 1000])  # killed inside the last record
        status, summary, err = collect_all(capsys, models, path, n=5)
        assert status == 0, err
        assert f"{log}: dropping a truncated last gzip member" in err
        calibration = summary["roles"]["big"]["calibration"]
        assert calibration["already_done"] == 4 and calibration["completed"] == 1
        assert summary["roles"]["tuned"]["calibration"]["completed"] == 0
        with gzip.open(log) as f:
            ids = [json.loads(line)["custom_id"] for line in f]
        assert len(ids) == len(set(ids)) == 5
        calls = Counter(b["model"] for b in server.bodies if is_calibration(b))
        assert calls == {"big": 6, "tuned": 5, "untuned": 5}
        assert read_token_strings(deep / "token_strings.json") == gpt2().api_tokens(list(range(GPT2_VOCAB_SIZE)))
        for role, top in answers.items():
            lists = read_deep_lists(deep / f"{role}.npz")
            assert lists.full.shape == (5, GPT2_VOCAB_SIZE)
            expected = np.array(list(top.values()), dtype=np.float32)  # both key forms are in id order
            assert np.abs(lists.full_lp(slice(None)) - expected).max() <= 2.0**-11 + 1e-6
        status, _, err = collect_all(capsys, models, path, n=3)  # another draw: only its positions make the sample
        assert status == 0, err
    finally:
        server.close()
    requests = read_requests(read_manifest(path))
    drawn = [(r.index, p) for r, p in calibration_positions(requests, n=3)]
    three = read_deep_lists(deep / "tuned.npz")
    assert list(zip(three.request.tolist(), three.position.tolist(), strict=True)) == drawn
