"""``approxft finetune``: the training file (fine-tuning share only), the OpenAI job flow, and a
local fine-tune of a tiny model.

The hosted fine-tuning service cannot run here: ``test_openai_*`` run the real CLI and the real
openai client against a real HTTP server on 127.0.0.1 (``tests.http_fakes``) that speaks the
same endpoints (``POST /v1/files``, ``POST /v1/fine_tuning/jobs``,
``GET /v1/fine_tuning/jobs/{id}``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ingest.prepare.corpus import read_documents, split_documents
from tests.helpers import run_cli, write_corpus
from tests.http_fakes import HttpServer, Reply, Request, json_reply


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def test_prepare_uses_the_finetuning_share_only(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus.txt", n_docs=10, chars=400)
    out = tmp_path / "train.jsonl"
    done = run_cli(capsys, "finetune", "prepare", corpus, "--out", out, "--words", 20)
    assert done.returncode == 0, done.stderr
    examples = lines(out)
    assert all(e["prompt"] == "" and e["completion"].startswith(" ") for e in examples)
    summary = json.loads(done.stderr.strip().splitlines()[-1])
    assert summary["examples"] == len(examples) and summary["gpt2_tokens"]["total"] > 0
    tune, val, test = split_documents(read_documents(corpus))
    text = "".join(e["completion"] for e in examples)
    for doc in tune:
        assert doc.text.split()[-1] in text
    for doc in val + test:  # held-out text never reaches the file
        body = " ".join(doc.text.split()[1:12])
        assert body not in " ".join(text.split())
    sizes = [len(e["completion"].split()) for e in examples]
    assert max(sizes) <= 25 and sum(s == 20 for s in sizes) >= len(sizes) // 2

    chat = run_cli(capsys, "finetune", "prepare", corpus, "--out", tmp_path / "chat.jsonl", "--format", "chat", "--words", 20)
    assert chat.returncode == 0, chat.stderr
    messages = lines(tmp_path / "chat.jsonl")
    assert [m["messages"][1]["content"] for m in messages] == [e["completion"][1:] for e in examples]


def test_prepare_drops_duplicates_and_refuses_a_corpus_without_a_finetuning_share(tmp_path, capsys):
    doc = "STORY\n" + " ".join(f"word{i}" for i in range(30))
    corpus = tmp_path / "dup.txt"
    corpus.write_text("\n\n\n".join([doc, doc, doc, "HELD\n" + doc]), encoding="utf-8")
    done = run_cli(capsys, "finetune", "prepare", corpus, "--out", tmp_path / "t.jsonl", "--words", 31, "--finetune-share", 0.75)
    assert done.returncode == 0, done.stderr
    assert len(lines(tmp_path / "t.jsonl")) == 1 and "2 duplicate chunk(s) dropped" in done.stderr

    single = tmp_path / "one.txt"
    single.write_text("one document only, all of it held out", encoding="utf-8")
    out = tmp_path / "none.jsonl"
    failed = run_cli(capsys, "finetune", "prepare", single, "--out", out)
    assert failed.returncode == 1 and "no fine-tuning share" in failed.stderr
    assert not out.exists() and not list(tmp_path.glob(".none.jsonl*"))


class FakeFineTuning:
    """The three fine-tuning endpoints, answered by a ``tests.http_fakes.HttpServer``: ``outcome``
    is the job's final status; ``uploaded`` the last file's bytes, ``model`` the job's model."""

    def __init__(self) -> None:
        self.outcome, self.polls, self.model, self.uploaded = "succeeded", 0, None, b""
        self.server = HttpServer(self.answer)
        self.url = self.server.url

    def job(self) -> dict:
        status = ["validating_files", "queued", "running", self.outcome][min(self.polls, 3)]
        error = {"message": "training file has too few examples", "code": "invalid_training_file", "param": None} \
            if status == "failed" else None
        return {"id": "ftjob-1", "object": "fine_tuning.job", "model": self.model, "created_at": 1, "status": status,
                "training_file": "file-1", "fine_tuned_model": "ft:small:approxft" if status == "succeeded" else None,
                "error": error, "hyperparameters": {"n_epochs": 1}, "organization_id": "org", "result_files": [],
                "seed": 0, "trained_tokens": 100 if status == "succeeded" else None, "validation_file": None,
                "finished_at": None}

    def answer(self, request: Request) -> Reply:
        if request.method == "POST" and request.path == "/v1/files":
            assert b'name="purpose"' in request.body and b"fine-tune" in request.body
            self.uploaded = request.body
            return json_reply({"id": "file-1", "object": "file", "bytes": len(request.body), "created_at": 1,
                               "filename": "train.jsonl", "purpose": "fine-tune", "status": "processed"})
        if request.method == "POST" and request.path == "/v1/fine_tuning/jobs":
            body = request.json()
            assert body["training_file"] == "file-1"
            self.model, self.polls = body["model"], 0
            return json_reply(self.job())
        if request.method == "GET" and request.path == "/v1/fine_tuning/jobs/ftjob-1":
            self.polls += 1
            return json_reply(self.job())
        return json_reply({"error": {"message": "not found"}}, 404)


@pytest.fixture
def fake_api():
    api = FakeFineTuning()
    with api.server:
        yield api


def test_openai_flow_uploads_polls_and_prints_the_model(fake_api, tmp_path, capsys):
    train = tmp_path / "train.jsonl"
    train.write_text('{"prompt": "", "completion": " Once upon a time"}\n', encoding="utf-8")
    url = fake_api.url
    done = run_cli(capsys, "finetune", "openai", train, "--model", "small", "--base-url", url, "--poll-seconds", 0.01)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ft:small:approxft"
    assert b"Once upon a time" in fake_api.uploaded and fake_api.model == "small"
    assert "running" in done.stderr and "succeeded" in done.stderr

    fake_api.outcome = "failed"
    failed = run_cli(capsys, "finetune", "openai", train, "--model", "small", "--base-url", url, "--poll-seconds", 0.01)
    assert failed.returncode == 1 and failed.stdout == ""
    assert "ftjob-1 failed: training file has too few examples (invalid_training_file)" in failed.stderr
    fake_api.outcome = "cancelled"
    cancelled = run_cli(capsys, "finetune", "openai", train, "--model", "small", "--base-url", url, "--poll-seconds", 0.01)
    assert cancelled.returncode == 1 and "cancelled" in cancelled.stderr


def test_local_finetune_lowers_the_loss_and_the_training_perplexity(tmp_path, capsys):
    pytest.importorskip("torch", reason="needs the local extra: pip install 'approxft[local]'")
    pytest.importorskip("transformers", reason="needs the local extra: pip install 'approxft[local]'")
    from ingest.finetune.local import perplexity
    from ingest.finetune.training_file import read_training_texts
    from tests.tiny_models import make_tiny_gpt2

    base = make_tiny_gpt2(tmp_path / "base", seed=3, n_layer=1, n_embd=16, n_positions=64)
    corpus = write_corpus(tmp_path / "corpus.txt", n_docs=6, chars=200)
    train = tmp_path / "train.jsonl"
    assert run_cli(capsys, "finetune", "prepare", corpus, "--out", train, "--words", 30).returncode == 0
    out = tmp_path / "tuned"
    done = run_cli(capsys, "finetune", "local", base, train, "--out", out, "--steps", 24, "--lr", 3e-3)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["last_loss"] < result["first_loss"]
    texts = read_training_texts(train)
    assert perplexity(out, texts) < 0.8 * perplexity(base, texts)
    assert not list(tmp_path.glob(".tuned*"))

    again = run_cli(capsys, "finetune", "local", base, train, "--out", out, "--steps", 1)
    assert again.returncode == 1 and "exists" in again.stderr
