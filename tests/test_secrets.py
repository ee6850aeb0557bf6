"""No key ever leaves approxft. Every command that talks to a server (``collect`` in every mode
and with ``--tokenizer server``, ``generate``, ``finetune openai``) runs against a real HTTP
server on 127.0.0.1 that echoes the Authorization header, and every other key it has seen or
knows, in many shapes (as sent, JSON-escaped once and twice, URL-quoted, base64, HTML-escaped, cut
short), in its error bodies (JSON and not, 4xx and 5xx, FastAPI's 422 ``detail``), in 200 answers
that are malformed, not JSON, or valid, and in a response header. Then every file under the
test's folder and every byte of stdout and stderr (captured at the file descriptors) are searched
for each key, in each shape, and for any 8 characters of it. The real CLI, the real openai client."""

from __future__ import annotations

import base64
import gzip
import html
import json
import re
import secrets
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest

from engine.cli import main
from ingest.prepare.bpe import gpt2
from ingest.server_text import GRAM
from tests.http_fakes import FakeBatches, HttpServer, Reply, Request, json_reply
from tests.ingest.collect.fake_server import (
    config,
    echo_response,
    next_token_response,
    prepared_run,
)


@pytest.fixture()
def manifest(tmp_path) -> tuple[Path, dict[str, int]]:
    """A prepared run folder's manifest and each request's index by prompt."""
    return prepared_run(tmp_path)


def unusual_key(tag: str) -> str:
    """A key unlike ``sk-...``: quotes, backslashes, URL and base64 specials, random parts."""
    return f'{tag}~{secrets.token_hex(5)}/Q+z="w\\R:y.{secrets.token_hex(4)}%2F!{secrets.token_hex(3)}'


@pytest.fixture()
def keys(monkeypatch) -> dict[str, str]:
    """Two role keys and OPENAI_API_KEY, fresh for each test (none can be held from another)."""
    found = {"APPROXFT_KEY_A": unusual_key("A"), "APPROXFT_KEY_B": unusual_key("B"), "OPENAI_API_KEY": unusual_key("O")}
    for name, value in found.items():
        monkeypatch.setenv(name, value)
    return found


def needles(key: str) -> set[str]:
    """What must appear nowhere: any 8 consecutive characters of the key, as they are or in each
    shape the server sends them in, and any 8 characters of the base64 of ``Bearer <key>`` from
    its first character that only the key decides."""
    grams = {key[i:i + GRAM] for i in range(len(key) - GRAM + 1)}
    shapes = [lambda g: g, lambda g: json.dumps(g)[1:-1], lambda g: json.dumps(json.dumps(g)[1:-1])[1:-1],
              lambda g: quote(g, safe=""), quote_plus, html.escape]
    b64 = base64.b64encode(f"Bearer {key}".encode()).decode()[12:-4]
    return {shape(g) for g in grams for shape in shapes} | {b64[i:i + GRAM] for i in range(len(b64) - GRAM + 1)}


class Leaky:
    """Answers every request by ``plan[model]`` (one answer kind per request, in turn), putting the
    keys in them: the Authorization header as sent, and every key seen so far or ``known``."""

    def __init__(self, plans: dict[str, list[str]], known: list[str]) -> None:
        self.plans = plans
        self.seen: list[str] = list(known)
        self.count: Counter[str] = Counter()
        self.kinds: Counter[str] = Counter()
        self.batches = FakeBatches(self.batch_line, self.batch_course)

    def leak(self, request: Request) -> str:
        auth = request.headers.get("authorization", "")
        if auth.startswith("Bearer ") and auth[7:] not in self.seen:
            self.seen.append(auth[7:])
        parts = [f"you sent {auth}"]
        for key in self.seen:
            bearer = f"Bearer {key}"
            parts += [f"json={json.dumps(bearer)}", f"url={quote(key, safe='')}", f"form={quote_plus(key)}",
                      f"b64={base64.b64encode(bearer.encode()).decode()}", f"html={html.escape(key)}",
                      f"cut={key[:13]}", f"tail={key[-11:]}"]
        return " | ".join(parts)

    def headers(self, request: Request) -> dict[str, str]:
        return {"X-Echo-Authorization": request.headers.get("authorization", "")}

    def answer(self, request: Request) -> Reply:
        leak = self.leak(request)
        if "finetune" in self.plans and ("/fine_tuning/" in request.path or request.path == "/v1/files"):
            return self.finetune_answer(request, leak)
        if "/batches" in request.path or "/files" in request.path:
            return self.batch_answer(request, leak)
        body = request.json()
        plan = self.plans[body["model"]]
        kind = plan[self.count[body["model"]] % len(plan)]
        self.count[body["model"]] += 1
        self.kinds[kind] += 1
        return self.reply(kind, body, leak, chat=request.path.endswith("/chat/completions"))

    def reply(self, kind: str, body: dict[str, Any], leak: str, *, chat: bool = False) -> Reply:
        if kind == "valid_200":
            return json_reply({**self.valid(body, leak, chat), "id": f"cmpl-{leak}", "system_fingerprint": leak})
        return {
            "json_400": lambda: json_reply({"error": {"message": f"rejected: {leak}", "type": "invalid_request_error",
                                                      "param": None, "code": None}}, 400),
            "json_401": lambda: json_reply({"error": {"message": f"Incorrect API key provided: {leak}",
                                                      "type": "invalid_request_error", "code": "invalid_api_key"}}, 401),
            "detail_422": lambda: json_reply({"detail": [{"loc": ["body", "prompt"], "msg": f"invalid: {leak}",
                                                          "type": "value_error", "input": leak}]}, 422),
            "text_400": lambda: (400, "text/html", f"<html><body><h1>Bad request</h1><pre>{leak}</pre></body></html>".encode()),
            "text_403": lambda: (403, "text/plain", f"Forbidden for {leak}".encode()),
            "text_500": lambda: (500, "text/plain", ("x" * 70 + leak).encode()),  # the key across byte 80
            "malformed_200": lambda: json_reply({"id": leak, "choices": [{"text": leak, "logprobs": {
                "tokens": [leak], "token_logprobs": [0.5], "top_logprobs": [{leak: 0.5}]}}]}),
            "text_200": lambda: (200, "text/plain", ("y" * 75 + leak).encode()),
        }[kind]()

    @staticmethod
    def valid(body: dict[str, Any], leak: str, chat: bool) -> dict[str, Any]:
        """A well-formed answer for the request's mode, one of its tokens holding the keys too."""
        if chat:
            top = [{"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in ((" the", -0.1), (f" {leak}", -3.0))]
            return {"model": body["model"], "choices": [{"index": 0, "message": {"role": "assistant", "content": " the"},
                                                         "logprobs": {"content": [{**top[0], "top_logprobs": top}]},
                                                         "finish_reason": "length"}]}
        if "prompt_logprobs" in body:  # vLLM
            bpe = gpt2()
            ids = bpe.encode(body["prompt"])
            entries = [None] + [{str(t): {"logprob": -1.0, "rank": 1, "decoded_token": bpe.api_tokens([t])[0]}} for t in ids[1:]]
            return {"model": body["model"], "choices": [{"index": 0, "text": " the", "prompt_logprobs": entries,
                                                         "prompt_token_ids": ids}]}
        if body.get("echo"):
            return echo_response(body["model"], body["prompt"], generate=max(1, body.get("max_tokens") or 0))
        return json.loads(next_token_response(body["model"], {" the": -0.5, " a": -1.5, f" {leak}": -3.0}))

    # The Batch API: big's batch completes with leaky lines; tuned's cannot be read; untuned's fails
    # with a leaky error; extra's cannot be created.
    def batch_answer(self, request: Request, leak: str) -> Reply:
        if request.method == "POST" and request.path.endswith("/batches"):
            model = json.loads(self.batches.files[request.json()["input_file_id"]].splitlines()[0])["body"]["model"]
            if model == "extra":
                return self.reply("detail_422", {}, leak)
        if request.method == "GET" and "/batches/" in request.path:
            self.batches.failure = f"line 1: {leak}"
            self.batches.extra_output = (f"not JSON: {leak}\n".encode(),)
        return self.batches.handle(request) or json_reply({"error": {"message": "no route"}}, 404)

    def batch_course(self, batch: dict[str, Any]) -> Any:
        if batch["model"] == "tuned":
            return 500, "text/plain", f"upstream error for {self.seen}".encode()
        return {"big": "completed", "untuned": "failed"}[batch["model"]]

    def batch_line(self, custom_id: str, body: dict[str, Any]) -> dict[str, Any]:
        leak = " | ".join(self.seen)
        kind = int(custom_id.rsplit("-", 1)[1]) % 4
        if kind == 0:
            return {"response": {"status_code": 200, "body": {**self.valid(body, leak, False), "system_fingerprint": leak}},
                    "error": None}
        if kind == 1:
            return {"response": {"status_code": 400, "body": {"error": {"message": f"rejected: {leak}"}}}, "error": None}
        if kind == 2:
            return {"response": {"status_code": 422, "body": {"detail": [{"loc": ["body"], "msg": leak, "type": "x"}]}},
                    "error": None}
        return {"response": None, "error": {"code": "server_error", "message": leak}}

    # Fine-tuning: plans["finetune"][0] says where it goes wrong.
    def finetune_answer(self, request: Request, leak: str) -> Reply:
        how = self.plans["finetune"][0]
        if request.path == "/v1/files":
            return self.reply("json_401", {}, leak) if how == "upload_401" else json_reply({
                "id": "file-1", "object": "file", "bytes": 1, "created_at": 1, "filename": "train.jsonl",
                "purpose": "fine-tune", "status": "processed"})
        job = {"id": "ftjob-1", "object": "fine_tuning.job", "model": "small", "created_at": 1, "status": "running",
               "training_file": "file-1", "fine_tuned_model": None, "error": None, "hyperparameters": {"n_epochs": 1},
               "organization_id": "org", "result_files": [], "seed": 0, "trained_tokens": None,
               "validation_file": None, "finished_at": None}
        if request.method == "POST":
            return self.reply("detail_422", {}, leak) if how == "create_422" else json_reply(job)
        if how == "retrieve_500":
            return self.reply("text_500", {}, leak)
        if how == "failed":
            return json_reply({**job, "status": "failed", "error": {"message": f"bad file\n{leak}", "code": leak}})
        return json_reply({**job, "status": "succeeded", "fine_tuned_model": f"ft:small:{leak}", "trained_tokens": 10})


def serve(leaky: Leaky) -> HttpServer:
    return HttpServer(leaky.answer, headers=leaky.headers)


def check_nothing_leaked(root: Path, printed: str, keys: dict[str, str], server: HttpServer) -> None:
    """No key, in any shape, nor 8 characters of one, in any file under ``root`` or in ``printed``."""
    sent = {r.headers.get("authorization") for r in server.requests}
    assert sent & {f"Bearer {k}" for k in keys.values()}, "no key was sent: the check would prove nothing"
    texts = {"stdout and stderr": printed.encode("utf-8", "surrogateescape")}
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            texts[str(path)] = gzip.decompress(data) if path.name.endswith(".gz") else data
    for name, key in keys.items():
        for needle in needles(key):
            found = [where for where, data in texts.items() if needle.encode() in data]
            assert not found, f"{name}'s {needle!r} in {found}"


def run(capfd, *args: Any) -> tuple[int, str, str]:
    status = main([str(a) for a in args])
    out, err = capfd.readouterr()
    return status, out, err


def one_error(err: str, command: str) -> str:
    """The one error line of ``approxft COMMAND`` in ``err`` (no traceback, nothing else)."""
    errors = [line for line in err.splitlines() if "error:" in line or "Traceback" in line or "exception" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith(f"approxft {command}: error: "), err
    return errors[0]


ERRORS_AND_ANSWERS = ["json_400", "detail_422", "text_500", "text_400", "malformed_200", "text_200", "valid_200"]


@pytest.mark.parametrize("mode", ["echo", "next_token", "chat", "prompt_logprobs"])
def test_collect_never_shows_a_key(manifest, capfd, tmp_path, keys, mode):
    path, _ = manifest
    leaky = Leaky({"big": ERRORS_AND_ANSWERS, "tuned": ["json_401"], "untuned": ["text_403"], "extra": ["valid_200"]},
                  known=[keys["OPENAI_API_KEY"]])
    with serve(leaky) as server:
        roles = {"big": {"api_key_env": "APPROXFT_KEY_A", "mode": mode},
                 "tuned": {"api_key_env": "APPROXFT_KEY_A", "mode": mode},
                 "untuned": {"api_key_env": "APPROXFT_KEY_B", "mode": mode},
                 "extra": {"api_key_env": "APPROXFT_KEY_B", "mode": mode}}
        models = config(tmp_path / "models.toml", server.url, roles, retries=0, concurrency=2)
        status, out, err = run(capfd, "collect", "--models", models, "--corpus", path, "--out", path.parent)
        check_nothing_leaked(tmp_path, out + err, keys, server)
    assert status == 1 and "Traceback" not in err and "exception" not in err.lower()
    assert set(leaky.kinds) == set(ERRORS_AND_ANSWERS) | {"json_401", "text_403"}
    summary = json.loads(out)["roles"]
    assert "AuthenticationError (401): Incorrect API key provided: you sent Bearer ***" in summary["tuned"]["main"]["fatal"]
    assert "PermissionDeniedError (403): Forbidden for you sent Bearer ***" in summary["untuned"]["main"]["fatal"]
    big = [json.loads(line) for line in (path.parent / "raw" / "big.jsonl").read_text().splitlines()]
    messages = {line["error"]["code"]: line["error"]["message"] for line in big if line["error"]}
    assert messages["http_422"].startswith("body.prompt: invalid: you sent Bearer *** | json=")  # the detail, cut
    assert any(f.endswith(messages["http_422"]) for f in summary["big"]["main"]["failures"])
    assert re.search(r"big main: \d+ of \d+ requests not collected \(\d+ failed, first: request-[\w-]+: \w+: ", err)
    extra = [json.loads(line) for line in (path.parent / "raw" / "extra.jsonl").read_text().splitlines()]
    stored = [line["response"]["body"] for line in extra if not line["error"]]
    assert stored and all(body["system_fingerprint"].startswith("you sent Bearer ***") for body in stored)


def test_collect_in_batch_mode_never_shows_a_key(manifest, capfd, tmp_path, keys):
    path, _ = manifest
    leaky = Leaky({}, known=[keys["OPENAI_API_KEY"]])
    with serve(leaky) as server:
        roles = {"big": {"api_key_env": "APPROXFT_KEY_A", "mode": "batch"},
                 "tuned": {"api_key_env": "APPROXFT_KEY_A", "mode": "batch"},
                 "untuned": {"api_key_env": "APPROXFT_KEY_B", "mode": "batch"},
                 "extra": {"api_key_env": "APPROXFT_KEY_B", "mode": "batch"}}
        models = config(tmp_path / "models.toml", server.url, roles, retries=0, poll_seconds=0.05)
        status, out, err = run(capfd, "collect", "--models", models, "--corpus", path, "--out", path.parent)
        check_nothing_leaked(tmp_path, out + err, keys, server)
    assert status == 1 and "Traceback" not in err and "exception" not in err.lower()
    summary = json.loads(out)["roles"]
    assert summary["big"]["main"]["completed"] > 0 and summary["big"]["main"]["failed"] > 0
    assert "its status cannot be read (HTTP 500: upstream error for [" in summary["tuned"]["main"]["fatal"]
    assert "ended failed (line 1: line 1: you sent Bearer ***" in summary["untuned"]["main"]["fatal"]
    assert summary["extra"]["main"]["fatal"].startswith("Batch API: HTTP 422: body.prompt: invalid: you sent Bearer ***")
    assert (path.parent / "raw" / "tuned.batch.json").exists()  # kept for a rerun


def test_collect_with_the_server_tokenizer_never_shows_a_key(tmp_path, capfd, keys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Once upon a time there was a king.\n\nThe fox ran into the wood.\n", encoding="utf-8")
    leaky = Leaky({"big": ["text_400"]}, known=[keys["OPENAI_API_KEY"]])
    with serve(leaky) as server:
        roles = {"big": {"api_key_env": "APPROXFT_KEY_A"}, "tuned": {}, "untuned": {}}
        models = config(tmp_path / "models.toml", server.url, roles, retries=0)
        status, out, err = run(capfd, "collect", "--models", models, "--corpus", corpus, "--out", tmp_path / "run",
                               "--tokenizer", "server")
        check_nothing_leaked(tmp_path, out + err, keys, server)
    assert status == 1
    assert "server tokenization via" in one_error(err, "collect") and "HTTP 400: <html><body>" in err


def generate_files(tmp_path: Path, url: str) -> tuple[Path, Path]:
    roles = {"big": {"api_key_env": "APPROXFT_KEY_A"}, "tuned": {"api_key_env": "APPROXFT_KEY_A"},
             "untuned": {"api_key_env": "APPROXFT_KEY_B"}}
    models = config(tmp_path / "models.toml", url, roles, retries=0, logprobs=3)
    tuned = tmp_path / "tuned.json"
    tuned.write_text(json.dumps({"best": {"weights": [1.0, 1.0, -1.0], "estimator": "zipf-tail"}}))
    return models, tuned


@pytest.mark.parametrize("kind", ["json_401", "detail_422", "text_500", "text_400", "malformed_200", "text_200", "valid_200"])
def test_generate_never_shows_a_key(tmp_path, capfd, keys, kind):
    leaky = Leaky({"big": ["valid_200"], "tuned": [kind], "untuned": ["valid_200"]}, known=[keys["OPENAI_API_KEY"]])
    with serve(leaky) as server:
        models, tuned = generate_files(tmp_path, server.url)
        status, out, err = run(capfd, "generate", "--models", models, "--params", tuned, "--prompt", "Once upon a time",
                               "--max-tokens", 3, "--seed", 1, "--transcript", tmp_path / "gen.json")
        check_nothing_leaked(tmp_path, out + err, keys, server)
    if kind == "valid_200":
        assert status == 0, err
        transcript = json.loads((tmp_path / "gen.json").read_text())
        assert any("***" in token for step in transcript["steps"] for token, _ in step["lists"]["big"])
        return
    assert status == 1
    line = one_error(err, "generate")
    if kind == "detail_422":
        assert "HTTP 422: body.prompt: invalid: you sent Bearer *** |" in line
    if kind == "json_401":
        assert "HTTP 401: Incorrect API key provided: you sent Bearer ***" in line


@pytest.mark.parametrize("how", ["upload_401", "create_422", "retrieve_500", "failed", "succeeded"])
def test_finetune_openai_never_shows_a_key(tmp_path, capfd, keys, how):
    train = tmp_path / "train.jsonl"
    train.write_text('{"prompt": "", "completion": " Once upon a time"}\n', encoding="utf-8")
    leaky = Leaky({"finetune": [how]}, known=[keys["OPENAI_API_KEY"]])
    with serve(leaky) as server:
        status, out, err = run(capfd, "finetune", "openai", train, "--model", "small", "--base-url", server.url,
                               "--api-key-env", "APPROXFT_KEY_A", "--poll-seconds", 0.01)
        check_nothing_leaked(tmp_path, out + err, keys, server)
    if how == "succeeded":
        assert status == 0 and out.startswith("ft:small:you sent Bearer ***"), err
        return
    assert status == 1 and out == ""
    line = one_error(err, "finetune")
    expected = {"upload_401": "the API refused: HTTP 401: Incorrect API key provided: you sent Bearer ***",
                "create_422": "the API refused: HTTP 422: body.prompt: invalid: you sent Bearer ***",
                "retrieve_500": "the API refused: HTTP 500: xxxxxxxxxx",
                "failed": "fine-tuning job ftjob-1 failed: bad file you sent Bearer ***"}[how]
    assert expected in line, line


# The one boundary, by itself.

def test_every_openai_client_is_made_by_the_one_redacting_factory():
    """A later call site cannot bypass redaction: no module but ingest/server_text.py constructs
    an openai client (``OpenAI(`` / ``AsyncOpenAI(``)."""
    root = Path(__file__).resolve().parents[1]
    offenders = []
    for package in ("ingest", "engine", "bench"):
        for source in (root / package).rglob("*.py"):
            text = source.read_text(encoding="utf-8")
            if source.relative_to(root).as_posix() != "ingest/server_text.py" and re.search(r"\b(Async)?OpenAI\(", text):
                offenders.append(str(source))
    assert not offenders, offenders


def test_redaction_masks_every_shape_and_any_run_of_8_characters(monkeypatch):
    from ingest import server_text

    key = unusual_key("K")
    monkeypatch.setenv("OPENAI_API_KEY", key)
    text = (f"a {key} b {json.dumps(key)} c {quote(key, safe='')} d {key[5:17]} e {key[-8:]} "
            f"f {base64.urlsafe_b64encode(('xy' + key).encode()).decode()} g {key[:7]}.")
    masked = server_text.redact(text)
    assert not any(needle in masked for needle in needles(key)), masked
    assert masked.startswith("a *** b \"***\" c *** d *** e *** f ") and masked.endswith(f" g {key[:7]}.")  # 7 left alone

    # A JSON body: each string masked and the body written again, so it still parses; keys too.
    body = json.dumps({"error": {"message": f"bad {key}", "nested": json.dumps({"auth": key})}, key: [1.5, None]}).encode()
    parsed = json.loads(server_text.redact_bytes(body))
    assert parsed == {"error": {"message": "bad ***", "nested": '{"auth": "***"}'}, "***": [1.5, None]}
    clean = json.dumps({"choices": [{"text": "Once upon a time"}]}).encode()
    assert server_text.redact_bytes(clean) == clean  # no key: the bytes as they came


def test_a_short_placeholder_key_is_masked_whole_in_errors_only(monkeypatch):
    from ingest import server_text

    monkeypatch.setenv("OPENAI_API_KEY", "EMPTY")
    assert server_text.redact("Bearer EMPTY is wrong, EMPTYING", error=True) == "Bearer *** is wrong, EMPTYING"
    assert server_text.redact("EMPTY", error=False) == "EMPTY"  # a successful answer's text is left as it is


@pytest.mark.parametrize("body, message", [
    ({"detail": [{"loc": ["body", "messages", 0, "content"], "msg": "Field required", "type": "missing"},
                 {"loc": ["query", "n"], "msg": "Input should be a valid integer", "type": "int_parsing"}]},
     "body.messages.0.content: Field required (missing); query.n: Input should be a valid integer (int_parsing)"),
    ({"detail": "Not Found"}, "Not Found"),
    ({"error": {"message": "max_tokens is too large", "type": "invalid_request_error"}}, "max_tokens is too large"),
    ({"object": "error", "message": "The model `x` does not exist.", "type": "NotFoundError", "code": 404},
     "The model `x` does not exist."),
    ({"error": "Input validation error: `logprobs` must be <= 5"}, "Input validation error: `logprobs` must be <= 5"),
    ({"error": {"message": "bad\nrequest", "detail": {"field": "prompt"}}}, 'bad request; {"field": "prompt"}'),
    ({"unexpected": [1, 2]}, '{"unexpected": [1, 2]}'),
])
def test_error_bodies_become_one_line_with_their_detail(body, message):
    from ingest.server_text import body_message

    assert body_message(body) == message


def test_a_server_error_is_one_line_with_its_status_and_detail(capfd):
    """Through the real client: FastAPI's 422, and a non-JSON 502 body of 1,000 characters."""
    import openai

    from ingest.server_text import MESSAGE_LIMIT, openai_client, server_error

    answers = iter([json_reply({"detail": [{"loc": ["body", "prompt"], "msg": "Field required", "type": "missing"}]}, 422),
                    (502, "text/html", ("<html>\n" + "z" * 1000).encode())])
    with HttpServer(lambda request: next(answers)) as server:
        client = openai_client(api_key=None, asynchronous=False, base_url=server.url, max_retries=0)
        messages = []
        for _ in range(2):
            with pytest.raises(openai.APIStatusError) as caught:
                client.completions.create(model="m", prompt="p")
            messages.append(server_error(caught.value))
    assert messages[0] == "HTTP 422: body.prompt: Field required (missing)"
    assert messages[1].startswith("HTTP 502: <html> zzz") and "\n" not in messages[1]
    assert len(messages[1]) == len("HTTP 502: ") + MESSAGE_LIMIT and messages[1].endswith("…")
