"""Every bad request gets a 4xx with OpenAI's JSON error body naming the parameter, and the server
answers the next good request: sent with raw http.client (no client-side checks in the way)."""

from __future__ import annotations

import json
import socket
from urllib.parse import urlsplit

import pytest

from tests.ingest.serve.conftest import LIMITS, MODEL, post_json, raw_request

GOOD = {"model": MODEL, "prompt": "Hello", "max_tokens": 2}


def body(**fields) -> bytes:
    """A completions body: GOOD with ``fields`` changed (a value None removes the field)."""
    merged = {**GOOD, **fields}
    return json.dumps({k: v for k, v in merged.items() if v is not None}).encode()


def chat(**fields) -> bytes:
    merged = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, **fields}
    return json.dumps({k: v for k, v in merged.items() if v is not None}).encode()


# (name, method, path, body, headers (None: a correct Content-Length), status, param)
CASES = [
    ("not JSON", "POST", "/v1/completions", b"{nope", None, 400, None),
    ("not UTF-8", "POST", "/v1/completions", b"\xff\xfe{}", None, 400, None),
    ("a JSON array", "POST", "/v1/completions", b"[1, 2]", None, 400, None),
    ("a JSON string", "POST", "/v1/chat/completions", b'"hi"', None, 400, None),
    ("nested too deep", "POST", "/v1/completions", b"[" * 50_000, None, 400, None),
    ("a 5000-digit number", "POST", "/v1/completions", b'{"max_tokens": ' + b"9" * 5000 + b"}", None, 400, None),
    ("no model", "POST", "/v1/completions", body(model=None), None, 400, "model"),
    ("unknown model", "POST", "/v1/completions", body(model="nope"), None, 404, "model"),
    ("no prompt", "POST", "/v1/completions", body(prompt=None), None, 400, "prompt"),
    ("empty prompt", "POST", "/v1/completions", body(prompt=""), None, 400, "prompt"),
    ("[[]]", "POST", "/v1/completions", body(prompt=[[]]), None, 400, "prompt"),
    ("[]", "POST", "/v1/completions", body(prompt=[]), None, 400, "prompt"),
    ("boolean token ids", "POST", "/v1/completions", body(prompt=[True, False]), None, 400, "prompt"),
    ("a token id past the vocabulary", "POST", "/v1/completions", body(prompt=[50257]), None, 400, "prompt"),
    ("a negative token id", "POST", "/v1/completions", body(prompt=[[5, -1]]), None, 400, "prompt"),
    ("a float token id", "POST", "/v1/completions", body(prompt=[1.5]), None, 400, "prompt"),
    ("an object prompt", "POST", "/v1/completions", body(prompt={"a": 1}), None, 400, "prompt"),
    ("too many prompts", "POST", "/v1/completions", body(prompt=["a"] * (LIMITS.max_prompts + 1)), None, 400, "prompt"),
    ("NaN temperature", "POST", "/v1/completions", b'{"model": "tiny", "prompt": "x", "temperature": NaN}', None, 400, "temperature"),
    ("infinite temperature", "POST", "/v1/completions", b'{"model": "tiny", "prompt": "x", "temperature": Infinity}', None, 400, "temperature"),
    ("negative temperature", "POST", "/v1/completions", body(temperature=-0.5), None, 400, "temperature"),
    ("string temperature", "POST", "/v1/completions", body(temperature="hot"), None, 400, "temperature"),
    ("a 10^400 temperature", "POST", "/v1/completions", body(temperature=10**400), None, 400, "temperature"),
    ("a chat 10^400 temperature", "POST", "/v1/chat/completions", chat(temperature=-(10**400)), None, 400, "temperature"),
    ("a 10^400 token id", "POST", "/v1/completions", body(prompt=[5, 10**400]), None, 400, "prompt"),
    ("a 10^400 max_tokens", "POST", "/v1/completions", body(max_tokens=10**400), None, 400, "max_tokens"),
    ("a 2^80 seed", "POST", "/v1/completions", body(seed=2**80), None, 400, "seed"),
    ("a float seed", "POST", "/v1/completions", body(seed=1.5), None, 400, "seed"),
    ("negative max_tokens", "POST", "/v1/completions", body(max_tokens=-1), None, 400, "max_tokens"),
    ("boolean max_tokens", "POST", "/v1/completions", body(max_tokens=True), None, 400, "max_tokens"),
    ("huge max_tokens", "POST", "/v1/completions", body(max_tokens=10**12), None, 400, "max_tokens"),
    ("past the context", "POST", "/v1/completions", body(prompt=[1] * 250, max_tokens=10), None, 400, "prompt"),
    ("logprobs past the vocabulary", "POST", "/v1/completions", body(logprobs=50258), None, 400, "logprobs"),
    ("negative logprobs", "POST", "/v1/completions", body(logprobs=-1), None, 400, "logprobs"),
    ("n = 0", "POST", "/v1/completions", body(n=0), None, 400, "n"),
    ("n over the limit", "POST", "/v1/completions", body(n=LIMITS.max_n + 1), None, 400, "n"),
    ("string n", "POST", "/v1/completions", body(n="2"), None, 400, "n"),
    ("too many stops", "POST", "/v1/completions", body(stop=list("abcdef")), None, 400, "stop"),
    ("an empty stop", "POST", "/v1/completions", body(stop=""), None, 400, "stop"),
    ("a numeric stop", "POST", "/v1/completions", body(stop=[1]), None, 400, "stop"),
    ("string echo", "POST", "/v1/completions", body(echo="yes"), None, 400, "echo"),
    ("string stream", "POST", "/v1/completions", body(stream="yes"), None, 400, "stream"),
    ("stream_options without stream", "POST", "/v1/completions", body(stream_options={"include_usage": True}), None, 400, "stream_options"),
    ("streamed prompt_logprobs", "POST", "/v1/completions", body(stream=True, prompt_logprobs=1), None, 400, "prompt_logprobs"),
    ("top_p", "POST", "/v1/completions", body(top_p=0.5), None, 400, "top_p"),
    ("best_of", "POST", "/v1/completions", body(best_of=3), None, 400, "best_of"),
    ("chat without messages", "POST", "/v1/chat/completions", chat(messages=None), None, 400, "messages"),
    ("chat message without content", "POST", "/v1/chat/completions", chat(messages=[{"role": "user"}]), None, 400, "messages"),
    ("chat with only empty text", "POST", "/v1/chat/completions", chat(messages=[{"role": "user", "content": ""}]), None, 400, "messages"),
    ("chat top_logprobs past the vocabulary", "POST", "/v1/chat/completions", chat(logprobs=True, top_logprobs=10**9), None, 400, "top_logprobs"),
    ("chat NaN temperature", "POST", "/v1/chat/completions", b'{"model": "tiny", "messages": [], "temperature": NaN}', None, 400, "messages"),
    ("tokenize a number", "POST", "/tokenize", b'{"prompt": 5}', None, 400, "prompt"),
    ("tokenize neither prompt nor messages", "POST", "/tokenize", b"{}", None, 400, "prompt"),
    ("detokenize booleans", "POST", "/detokenize", b'{"tokens": [true]}', None, 400, "tokens"),
    ("detokenize past the vocabulary", "POST", "/detokenize", b'{"tokens": [99999999]}', None, 400, "tokens"),
    ("detokenize a 10^400 id", "POST", "/detokenize", b'{"tokens": [1' + b"0" * 400 + b"]}", None, 400, "tokens"),
    ("a batch for another endpoint", "POST", "/v1/batches", b'{"endpoint": "/v1/embeddings", "input_file_id": "x"}', None, 400, "endpoint"),
    ("a batch of an unknown file", "POST", "/v1/batches", b'{"endpoint": "/v1/completions", "input_file_id": "x"}', None, 404, "file_id"),
    ("an upload that is not multipart", "POST", "/v1/files", b"{}", None, 400, None),
    ("non-numeric Content-Length", "POST", "/v1/completions", b"", {"Content-Length": "abc"}, 400, None),
    ("negative Content-Length", "POST", "/v1/completions", b"", {"Content-Length": "-5"}, 400, None),
    ("two Content-Lengths", "POST", "/v1/completions", b"{}", {"Content-Length": "2, 3"}, 400, None),
    ("huge Content-Length", "POST", "/v1/completions", b"", {"Content-Length": "9" * 40}, 413, None),
    ("Content-Length over the limit", "POST", "/v1/completions", b"", {"Content-Length": str(LIMITS.max_body_bytes + 1)}, 413, None),
    ("no Content-Length", "POST", "/v1/completions", b"", {}, 411, None),
    ("a chunked body", "POST", "/v1/completions", b"0\r\n\r\n", {"Transfer-Encoding": "chunked"}, 411, None),
    ("unknown route", "POST", "/v1/embeddings", body(), None, 404, None),
    ("unknown GET route", "GET", "/", None, {}, 404, None),
    ("GET on completions", "GET", "/v1/completions", None, {}, 405, None),
    ("POST on models", "POST", "/v1/models", b"{}", None, 405, None),
    ("DELETE on models", "DELETE", "/v1/models", None, {}, 405, None),
    ("PUT on tokenize", "PUT", "/tokenize", b"{}", None, 405, None),
    ("an unknown batch", "GET", "/v1/batches/batch_nope", None, {}, 404, "batch_id"),
]


@pytest.mark.parametrize("name, method, path, payload, headers, status, param", CASES, ids=[c[0] for c in CASES])
def test_a_bad_request_gets_a_4xx_json_error_naming_the_parameter(base_url, name, method, path, payload, headers, status, param):
    if headers is None:
        headers = {"Content-Type": "application/json", "Content-Length": str(len(payload))}
    got, answer_headers, answer = raw_request(base_url, method, path, payload, headers)
    assert got == status, answer
    assert answer_headers["content-type"] == "application/json"
    error = json.loads(answer)["error"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error" and error["message"]
    if status == 405:
        assert answer_headers["allow"] in ("GET", "POST")


def test_the_server_still_answers_after_every_bad_request(base_url):
    for _, method, path, payload, headers, _, _ in CASES:
        if headers is None:
            headers = {"Content-Length": str(len(payload))}
        raw_request(base_url, method, path, payload, headers)
    status, answer = post_json(base_url, "/v1/completions", GOOD)
    assert status == 200 and answer["usage"]["completion_tokens"] == 2


def test_errors_name_what_was_wrong(base_url):
    status, answer = post_json(base_url, "/v1/completions", {**GOOD, "prompt": [1] * 250, "max_tokens": 10})
    assert answer["error"]["code"] == "context_length_exceeded"
    assert "maximum context length is 256 tokens" in answer["error"]["message"]
    status, answer = post_json(base_url, "/v1/completions", {**GOOD, "seed": 2**80})
    assert answer["error"]["message"].startswith("seed must be an integer in -9223372036854775808..9223372036854775807")
    status, answer = post_json(base_url, "/v1/completions", {**GOOD, "prompt": [[3], []]})
    assert answer["error"]["message"] == "prompt[1] is empty"
    status, answer = post_json(base_url, "/v1/completions", {**GOOD, "temperature": 10**400})
    assert status == 400 and answer["error"]["message"] == "temperature must be a number in [0, 2], got 100000000000000000000000000000000000000…"
    status, answer = post_json(base_url, "/v1/completions", {**GOOD, "prompt": [[3], [7, -1]]})
    assert answer["error"]["message"] == "prompt[1] has a token id outside 0..50256"
    status, answer = post_json(base_url, "/detokenize", {"tokens": [3, 50257]})
    assert answer["error"]["message"] == "tokens has a token id outside 0..50256"


def _socket(base_url):
    url = urlsplit(base_url)
    return socket.create_connection((url.hostname, url.port), timeout=30)


def test_a_body_shorter_than_its_content_length_is_answered(base_url):
    with _socket(base_url) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"model\"")
        sock.shutdown(socket.SHUT_WR)
        answer = sock.makefile("rb").read()
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"the body ended after 8 of 100 bytes" in payload


def test_a_malformed_request_line_gets_a_json_error(base_url):
    with _socket(base_url) as sock:
        sock.sendall(b"NOT A REQUEST LINE AT ALL\r\n\r\n")
        answer = sock.makefile("rb").read()
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert json.loads(payload)["error"]["message"].startswith("Bad request")


def test_a_batch_line_cannot_stream(base_url, tiny_model):
    from ingest.serve.completer import Completer
    from ingest.serve.errors import RequestError

    with pytest.raises(RequestError, match="stream is not supported here"):
        Completer([tiny_model]).complete({**GOOD, "stream": True}, streaming=False)
