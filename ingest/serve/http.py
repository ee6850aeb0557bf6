"""The HTTP side of ``approxft serve``: ``/v1/models``, ``/v1/completions``,
``/v1/chat/completions``, ``/v1/files``, ``/v1/batches`` on a threading stdlib server."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ingest.serve.batch_api import BatchError, BatchService
from ingest.serve.model import Completer, LocalModel, RequestError


class _Handler(BaseHTTPRequestHandler):
    completer: Completer
    batches: BatchService
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path.rstrip("/")
        try:
            if path == "/v1/models":
                self._send(HTTPStatus.OK, self.completer.list_models())
            elif path.startswith("/v1/batches/"):
                self._send(HTTPStatus.OK, self.batches.retrieve(path.removeprefix("/v1/batches/")))
            elif path.startswith("/v1/files/") and path.endswith("/content"):
                self._send_bytes(HTTPStatus.OK, self.batches.content(path.split("/")[3]), "application/jsonl")
            else:
                self._not_found()
        except BatchError as err:
            self._send(err.status, RequestError(err.status, str(err)).body())

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        payload = self.rfile.read(length)
        path = self.path.rstrip("/")
        try:
            if path == "/v1/files":
                self._send(HTTPStatus.OK, self.batches.upload(payload, self.headers.get("Content-Type", "")))
                return
            if path not in ("/v1/completions", "/v1/chat/completions", "/v1/batches"):
                self._not_found()
                return
            try:
                body = json.loads(payload)
            except (json.JSONDecodeError, UnicodeDecodeError):
                self._send(HTTPStatus.BAD_REQUEST, RequestError(HTTPStatus.BAD_REQUEST, "the body is not JSON").body())
                return
            if path == "/v1/batches":
                self._send(HTTPStatus.OK, self.batches.create(body))
            elif path == "/v1/chat/completions":
                self._send(HTTPStatus.OK, self.completer.chat(body))
            else:
                self._send(HTTPStatus.OK, self.completer.complete(body))
        except RequestError as err:
            self._send(err.status, err.body())
        except BatchError as err:
            self._send(err.status, RequestError(err.status, str(err)).body())

    def _not_found(self) -> None:
        self._send(HTTPStatus.NOT_FOUND, RequestError(HTTPStatus.NOT_FOUND, f"no route {self.path}").body())

    def _send(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
        self._send_bytes(status, json.dumps(payload).encode("utf-8"), "application/json")

    def _send_bytes(self, status: HTTPStatus, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        print(f"approxft serve: {self.address_string()} {format % args}", file=sys.stderr)


def make_server(models: Sequence[LocalModel], *, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    """A threading HTTP server answering for ``models`` (call ``serve_forever``)."""
    completer = Completer(models)
    handler = type("Handler", (_Handler,), {"completer": completer, "batches": BatchService(completer, RequestError)})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server
