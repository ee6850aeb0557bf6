"""``approxft collect --verify N`` against servers that lie in ways no single response reveals:
an echo shifted by one position (llama-cpp-python's known bug), a tokenization that is not the
manifest's, a temperature applied to the log-probabilities. Each is refused with one line naming
the role, the position and the two values; an honest server passes, and its outcome is recorded
so that a rerun does not ask again. Real HTTP, the real openai client, the real CLI (in-process)."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from ingest.prepare.corpus import Document, prepare, write_prepared
from ingest.prepare.tokenizer import local_tokenizer
from tests.ingest.collect.fake_model import FakeModel, behaviour, log_probs, tempered
from tests.ingest.collect.fake_server import FakeServer, config, raw, run_collect

ROLES = {"big": {}, "tuned": {}, "untuned": {}}


@pytest.fixture()
def manifest(tmp_path) -> Path:
    words = ["king", "fisherman", "fox", "wolf", "goose", "tailor"]
    docs = [Document(f"doc {i}", f"The {word} said: “{i}”.\n\nThen " + " ".join(f"{word}{j}" for j in range(5)))
            for i, word in enumerate(words)]
    prepared = prepare(docs, local_tokenizer("gpt2"), chunk_tokens=12, finetune_share=0.2)
    return write_prepared(tmp_path / "run", prepared, logprobs=3, tokenizer="gpt2")


def verify_requests(server: FakeServer, model: str) -> int:
    """Requests the check sent to ``model``: next-token requests whose context is a chunk's
    whole prefix (token ids), beside the echoes."""
    return sum(b["model"] == model and isinstance(b["prompt"], list) for b in server.bodies)


def test_an_honest_server_passes_once_and_is_not_asked_again(manifest, capsys, tmp_path):
    server = FakeServer({}, behaviour({}))
    try:
        models = config(tmp_path / "models.toml", server.url, ROLES)
        status, summary, err = run_collect(capsys, models, manifest, "--verify", "6")
        asked = len(server.bodies)
        again, summary2, err2 = run_collect(capsys, models, manifest, "--verify", "6")
        resent = len(server.bodies) - asked
    finally:
        server.close()
    assert status == 0, err
    for role in ROLES:
        verify = summary["roles"][role]["verify"]
        assert verify["passed"] and verify["failure"] is None
        assert verify["compared"] == 6 and verify["skipped"] == 0
        assert verify["largest_difference"] < 1e-6  # the same distribution both ways (echo values parsed as float32)
        assert verify["tolerance"] == 0.1 and verify["logprobs"] == 3
        record = json.loads((manifest.parent / "raw" / f"{role}.endpoint.json").read_text())
        assert record["verify"]["passed"] and record["echo_max_tokens"] == 0
        assert summary["roles"][role]["main"]["complete"]
    assert verify_requests(server, "big") >= 6
    assert again == 0, err2
    assert resent == 0  # checks, probes and requests all recorded: nothing asked again
    assert all(summary2["roles"][role]["verify"]["reused"] for role in ROLES)


LIARS = {
    "shifted echo": (FakeModel(shift=True),
                     r"gives '.+' -?\d+\.\d{4}.* -?\d+\.\d{4}\)?; the next-token list matches the echo's list at the previous "
                     r"position: the echo is shifted by one position \(llama-cpp-python's known bug\)"),
    "other tokenization": (FakeModel(byte_tokens=True),
                           r"the server's echo has token 'T' where the manifest's tokenizer \(gpt2\) has 'The': the server tokenizes "
                           r"the text differently"),
    "tempered": (FakeModel(temperature=0.7),
                 r"echo gives .* -?\d+\.\d{4}, the next-token request -?\d+\.\d{4}.*scaled by 1\.4\d*: a temperature"),
}


@pytest.mark.parametrize("case", LIARS)
def test_a_lying_server_is_refused_with_the_position_and_both_values(manifest, capsys, tmp_path, case):
    model, message = LIARS[case]
    server = FakeServer({}, behaviour({"tuned": model}))
    try:
        models = config(tmp_path / "models.toml", server.url, ROLES)
        status, summary, err = run_collect(capsys, models, manifest, "--verify", "6")
        sent = len(server.bodies)
        rerun, _, err2 = run_collect(capsys, models, manifest)  # without --verify: still refused
        resent = [b for b in server.bodies[sent:] if b["model"] == "tuned"]
    finally:
        server.close()
    assert status == 1
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    assert re.fullmatch(r"approxft collect: error: tuned: --verify failed: request \d+ position \d+(?: \(tolerance 0\.1 nats\))?: "
                        + f".*{message}.*", errors[0]), errors[0]
    tuned = summary["roles"]["tuned"]
    assert tuned["verify"]["passed"] is False and "main" not in tuned  # not collected
    assert not (manifest.parent / "raw" / "tuned.jsonl").exists()
    assert summary["roles"]["big"]["main"]["complete"] and summary["roles"]["untuned"]["main"]["complete"]
    assert "raw/tuned.jsonl" not in summary["ingest"]
    record = json.loads((manifest.parent / "raw" / "tuned.endpoint.json").read_text())
    assert record["verify"]["passed"] is False and record["verify"]["failure"] in errors[0]
    assert rerun == 1 and resent == []
    assert "approxft collect: error: tuned: this endpoint failed --verify earlier" in err2


def test_the_two_values_are_the_models(manifest, capsys, tmp_path):
    """The message quotes the values the fake model really gives at that position: the echo's
    untempered log-probability and the next-token request's tempered one."""
    from ingest.prepare.bpe import GPT2_VOCAB_SIZE, gpt2

    server = FakeServer({}, behaviour({"big": FakeModel(temperature=0.7)}))
    try:
        status, _, err = run_collect(capsys, config(tmp_path / "models.toml", server.url, ROLES), manifest, "--verify", "4")
    finally:
        server.close()
    assert status == 1
    found = re.search(r"request (\d+) position (\d+) .*?echo gives ('.*?') (-?\d+\.\d+), the next-token request (-?\d+\.\d+)", err)
    assert found, err
    request, position, token, echo_value, next_value = found.groups()
    index = {s: i for i, s in enumerate(gpt2().api_tokens(list(range(GPT2_VOCAB_SIZE))))}
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    tokens = next(line["tokens"] for line in lines if line["request_index"] == int(request))
    lp = log_probs(tuple(index[t] for t in tokens[: int(position)]))
    column = index[ast.literal_eval(token)]
    assert float(echo_value) == pytest.approx(lp[column], abs=1e-4)
    assert float(next_value) == pytest.approx(tempered(lp, 0.7)[column], abs=1e-4)
    assert abs(float(echo_value) - float(next_value)) > 0.1


def test_verify_is_skipped_for_modes_without_echo(manifest, capsys, tmp_path):
    server = FakeServer({}, behaviour({}))
    try:
        roles = {"big": {"mode": "next_token"}, "tuned": {}, "untuned": {}}
        status, summary, err = run_collect(capsys, config(tmp_path / "models.toml", server.url, roles), manifest, "--verify", "3")
    finally:
        server.close()
    assert status == 0, err
    assert summary["roles"]["big"]["verify"] == {"skipped": "next_token mode has no echo request to compare with"}
    assert "big: --verify skipped" in err
    assert summary["roles"]["tuned"]["verify"]["passed"]
    assert all(not line["error"] for line in raw(manifest.parent, "big"))


def test_verify_needs_the_manifests_tokens(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    manifest = run / "requests.jsonl"
    line = {"request_index": 0, "split": "val", "story": "s", "params": {"prompt": "Hello there", "logprobs": 2}}
    manifest.write_text(json.dumps(line) + "\n")
    models = config(tmp_path / "models.toml", "http://127.0.0.1:9/v1", ROLES)
    status, summary, err = run_collect(capsys, models, manifest, "--verify", "2")
    assert status == 1 and summary == {}
    assert err.strip() == ("approxft collect: error: field '--verify' needs token strings in the manifest "
                           "(prepare with a local tokenizer)")
