"""The HTTP side of ``approxft serve``, on a threading stdlib server: OpenAI's ``/v1/models``,
``/v1/completions``, ``/v1/chat/completions`` (JSON, or server-sent events with ``stream``),
``/v1/files``, ``/v1/batches``, and vLLM's ``/tokenize``, ``/detokenize``, ``/tokenizer_info``.

Every request gets an answer: a bad one a 4xx with OpenAI's ``{"error": {...}}`` body (a body
without a valid ``Content-Length``, over ``Limits.max_body_bytes``, not JSON, or not an object; an
unknown route; a wrong method), and an unexpected failure a 500 of the same shape, never a dropped
connection. A body that was not read closes the connection after the answer.
"""

from __future__ import annotations

import json
import re
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from ingest.serve.batch_api import BatchService
from ingest.serve.completer import Completer
from ingest.serve.encoding import encode_json
from ingest.serve.errors import RequestError, bad_request
from ingest.serve.model import LocalModel
from ingest.serve.params import Limits

_LENGTH = re.compile(r"[0-9]+")


class _Handler(BaseHTTPRequestHandler):
    completer: Completer
    batches: BatchService
    protocol_version = "HTTP/1.1"
    timeout = 60  # seconds a socket read or write may wait (a client that stops sending)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:  # noqa: N802
        self._dispatch("PATCH")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        path = url.path.rstrip("/")
        self._body_read = False
        allowed: tuple[str, ...] = ()
        try:
            allowed, action = _route(path)
            if method not in allowed:
                raise RequestError(HTTPStatus.METHOD_NOT_ALLOWED, f"{method} is not allowed on {path} (only {', '.join(allowed)})")
            answer = action(self, path, dict(parse_qsl(url.query)))
            if isinstance(answer, bytes):
                self._send_bytes(HTTPStatus.OK, answer, "application/jsonl")
            elif isinstance(answer, dict):
                self._send(HTTPStatus.OK, answer)
            else:
                self._send_stream(answer)
        except RequestError as err:
            self._send(err.status, err.body(), allow=allowed if err.status == HTTPStatus.METHOD_NOT_ALLOWED else ())
        except TimeoutError:
            self._send(HTTPStatus.REQUEST_TIMEOUT, RequestError(HTTPStatus.REQUEST_TIMEOUT, "the request body did not arrive in time").body())
        except (BrokenPipeError, ConnectionResetError):  # the client left before its answer
            self.close_connection = True
        except Exception as err:  # noqa: BLE001 (answered, and logged with its traceback)
            traceback.print_exc(file=sys.stderr)
            message = f"internal error: {type(err).__name__}"
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, RequestError(HTTPStatus.INTERNAL_SERVER_ERROR, message).body())

    def body(self) -> bytes:
        """The request body, read once ``Content-Length`` is checked."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "chunked request bodies are not supported: send Content-Length")
        values = self.headers.get_all("Content-Length") or []
        if not values:
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required")
        if len(set(values)) > 1 or not _LENGTH.fullmatch(values[0].strip()):
            raise bad_request(f"Content-Length must be one non-negative integer, got {', '.join(values)[:40]!r}")
        digits = values[0].strip()
        limit = self.completer.limits.max_body_bytes
        if len(digits) > 18 or int(digits) > limit:
            raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the body is {digits[:24]} bytes, over this server's limit of {limit}")
        length = int(digits)
        payload = self.rfile.read(length)
        if len(payload) < length:
            raise bad_request(f"the body ended after {len(payload)} of {length} bytes")
        self._body_read = True
        return payload

    def json_body(self) -> Any:
        """The request body as JSON (an object is checked where it is used)."""
        payload = self.body()
        try:
            return json.loads(payload)
        except (ValueError, RecursionError) as err:  # not UTF-8, not JSON, a number too long, nested too deep
            raise bad_request(f"the body is not JSON: {str(err)[:80] or type(err).__name__}") from None

    def _send(self, status: HTTPStatus, payload: dict[str, Any], allow: tuple[str, ...] = ()) -> None:
        headers = {"Allow": ", ".join(allow)} if allow else {}
        self._send_bytes(status, encode_json(payload), "application/json", headers)

    def _send_bytes(self, status: HTTPStatus, data: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        if self._unread_body():
            self.close_connection = True  # the unread body would be taken for the next request
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _unread_body(self) -> bool:
        """Whether the request declared a body that was not read."""
        headers = getattr(self, "headers", None)
        if headers is None or getattr(self, "_body_read", False):
            return False
        return bool(headers.get("Transfer-Encoding")) or headers.get("Content-Length", "0").strip() not in ("", "0")

    def _send_stream(self, chunks: Iterator[dict[str, Any]]) -> None:
        """Server-sent events, chunked: ``data: {json}`` per chunk, then ``data: [DONE]``. A failure
        once the stream has begun is sent as a last ``data: {"error": ...}`` event."""
        self._chunked = self.request_version == "HTTP/1.1"  # HTTP/1.0: the end of the stream is the end of the connection
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        if self._chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.close_connection = True
            self.send_header("Connection", "close")
        self.end_headers()
        try:
            try:
                for chunk in chunks:
                    self._write_event(encode_json(chunk))
            except OSError:
                raise
            except Exception as err:  # noqa: BLE001 (the status line is gone: report it in the stream)
                traceback.print_exc(file=sys.stderr)
                self._write_event(encode_json(RequestError(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error: {type(err).__name__}").body()))
            self._write_event(b"[DONE]")
            if self._chunked:
                self.wfile.write(b"0\r\n\r\n")
        except OSError:  # the client left, or stopped reading: stop generating
            self.close_connection = True
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    def _write_event(self, data: bytes) -> None:
        event = b"data: " + data + b"\n\n"
        self.wfile.write(f"{len(event):x}\r\n".encode() + event + b"\r\n" if self._chunked else event)
        self.wfile.flush()

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (a malformed request line, headers too long, an unknown method)
        in the same JSON shape."""
        status = HTTPStatus(code)
        if self.request_version == "HTTP/0.9":  # the request line did not parse: answer in HTTP/1.1
            self.request_version = "HTTP/1.1"
        self.close_connection = True
        self._body_read = False
        self._send(status, RequestError(status, message or status.phrase).body())

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        print(f"approxft serve: {self.address_string()} {format % args}", file=sys.stderr)


Action = Callable[[_Handler, str, dict[str, str]], Any]

_ROUTES: dict[str, tuple[tuple[str, ...], Action]] = {
    "/v1/models": (("GET",), lambda h, path, q: h.completer.list_models()),
    "/v1/completions": (("POST",), lambda h, path, q: h.completer.complete(h.json_body())),
    "/v1/chat/completions": (("POST",), lambda h, path, q: h.completer.chat(h.json_body())),
    "/v1/files": (("POST",), lambda h, path, q: h.batches.upload(h.body(), h.headers.get("Content-Type", ""))),
    "/v1/batches": (("POST",), lambda h, path, q: h.batches.create(h.json_body())),
    "/tokenize": (("POST",), lambda h, path, q: h.completer.tokenize(h.json_body())),
    "/detokenize": (("POST",), lambda h, path, q: h.completer.detokenize(h.json_body())),
    "/tokenizer_info": (("GET",), lambda h, path, q: h.completer.tokenizer_info(q)),
}
_PREFIX_ROUTES: list[tuple[str, str, tuple[str, ...], Action]] = [
    ("/v1/batches/", "", ("GET",), lambda h, path, q: h.batches.retrieve(path.removeprefix("/v1/batches/"))),
    ("/v1/files/", "/content", ("GET",), lambda h, path, q: h.batches.content(path.split("/")[3])),
]


def _route(path: str) -> tuple[tuple[str, ...], Action]:
    """The methods a path allows and what answers it; 404 for an unknown path."""
    if path in _ROUTES:
        return _ROUTES[path]
    for prefix, suffix, methods, action in _PREFIX_ROUTES:
        if path.startswith(prefix) and path.endswith(suffix) and path.count("/") == prefix.count("/") + suffix.count("/"):
            return methods, action
    raise RequestError(HTTPStatus.NOT_FOUND, f"no route {path or '/'}")


def make_server(models: Sequence[LocalModel], *, host: str = "127.0.0.1", port: int = 8000, limits: Limits = Limits()) -> ThreadingHTTPServer:
    """A threading HTTP server answering for ``models`` within ``limits`` (call ``serve_forever``)."""
    completer = Completer(models, limits)
    handler = type("Handler", (_Handler,), {"completer": completer, "batches": BatchService(completer)})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server
