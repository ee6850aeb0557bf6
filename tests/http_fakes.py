"""A real HTTP server on 127.0.0.1 for tests, whose every answer a test function decides: the
real openai client talks to it over real sockets (no mocks)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Request:
    """One request as it came in (header names in lower case)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


Reply = tuple[int, str, bytes]
"""(status, content type, body)."""


def json_reply(payload: Any, status: int = 200) -> Reply:
    return status, "application/json", json.dumps(payload).encode()


class HttpServer:
    """Serves ``answer(request)`` for every request; ``requests`` holds what came in, in order.
    Use as a context manager (shut down and closed on exit)."""

    def __init__(self, answer: Callable[[Request], Reply], *, headers: Callable[[Request], dict[str, str]] | None = None) -> None:
        self.requests: list[Request] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def handle(self) -> None:
                try:
                    super().handle()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client went away (a role stopped, its requests in flight cancelled)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                request = Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                                  self.rfile.read(length))
                outer.requests.append(request)
                status, kind, data = answer(request)
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers(request) if headers else {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _handle  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> HttpServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class FakeBatches:
    """OpenAI's files and batches endpoints, in memory (``handle``; None for other paths).

    ``course(batch)`` decides what each retrieve answers: a status (``in_progress``, ``completed``,
    ``failed``, ``expired``, ``cancelled``...), or a ``Reply`` to answer instead (an error);
    ``batch["polls"]`` counts the retrieves before this one. When a batch ends, its output holds
    ``answer(custom_id, body)`` (an output line's ``response`` and ``error``) for every input line
    (``completed``) or the first half (``expired``, ``cancelled``; the rest get ``batch_expired``
    error lines), plus ``extra_output`` lines as they are; ``failed`` has ``failure`` as its errors.
    """

    def __init__(self, answer: Callable[[str, dict[str, Any]], dict[str, Any]], course: Callable[[dict[str, Any]], Any],
                 *, failure: str = "the input file is invalid", extra_output: tuple[bytes, ...] = ()) -> None:
        self.answer, self.course, self.failure, self.extra_output = answer, course, failure, extra_output
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.created: list[str] = []

    def handle(self, request: Request) -> Reply | None:
        path = request.path.split("?")[0]
        if request.method == "POST" and path == "/v1/files":
            lines = [line for line in request.body.split(b"\n") if line.startswith(b'{"custom_id"')]
            file_id = f"file-{len(self.files)}"
            self.files[file_id] = b"\n".join(lines) + b"\n"
            return json_reply({"id": file_id, "object": "file", "bytes": len(request.body), "created_at": 1,
                               "filename": "input.jsonl", "purpose": "batch", "status": "processed"})
        if request.method == "POST" and path == "/v1/batches":
            body = request.json()
            lines = [json.loads(line) for line in self.files[body["input_file_id"]].splitlines()]
            batch_id = f"batch_{len(self.batches)}"
            self.batches[batch_id] = {"id": batch_id, "lines": lines, "model": lines[0]["body"]["model"], "polls": 0,
                                      "created_at": 1, "status": "validating", "output_file_id": None,
                                      "error_file_id": None, "errors": None}
            self.created.append(batch_id)
            return json_reply(self._public(self.batches[batch_id]))
        if request.method == "GET" and path.startswith("/v1/batches/"):
            batch = self.batches.get(path.rsplit("/", 1)[1])
            if batch is None:
                return json_reply({"error": {"message": "No such Batch object", "type": "invalid_request_error"}}, 404)
            step = self.course(batch)
            batch["polls"] += 1
            if not isinstance(step, str):
                return step
            if step != batch["status"] and step in ("completed", "failed", "expired", "cancelled"):
                self._end(batch, step)
            batch["status"] = step
            return json_reply(self._public(batch))
        if request.method == "GET" and path.startswith("/v1/files/") and path.endswith("/content"):
            return 200, "application/octet-stream", self.files[path.split("/")[3]]
        return None

    def _end(self, batch: dict[str, Any], status: str) -> None:
        lines = batch["lines"]
        answered = [] if status == "failed" else lines if status == "completed" else lines[: len(lines) // 2]
        out = [json.dumps({"id": f"r{i}", "custom_id": line["custom_id"], **self.answer(line["custom_id"], line["body"])})
               for i, line in enumerate(answered)]
        errors = [json.dumps({"id": f"e{i}", "custom_id": line["custom_id"], "response": None,
                              "error": {"code": "batch_expired", "message": "This request could not be executed before "
                                        "the completion window expired."}})
                  for i, line in enumerate(lines[len(answered):]) if status != "failed"]
        if status == "failed":
            batch["errors"] = {"object": "list", "data": [{"code": "invalid_request", "message": self.failure,
                                                           "param": None, "line": 1}]}
        else:
            batch["output_file_id"] = f"file-{len(self.files)}"
            self.files[batch["output_file_id"]] = "".join(f"{line}\n" for line in out).encode() + b"".join(self.extra_output)
            if errors:
                batch["error_file_id"] = f"file-{len(self.files)}"
                self.files[batch["error_file_id"]] = "".join(f"{line}\n" for line in errors).encode()

    @staticmethod
    def _public(batch: dict[str, Any]) -> dict[str, Any]:
        done = len(batch["lines"]) if batch["status"] == "completed" else 0
        return {"id": batch["id"], "object": "batch", "endpoint": "/v1/completions", "input_file_id": "file-0",
                "completion_window": "24h", "status": batch["status"], "created_at": batch["created_at"],
                "output_file_id": batch["output_file_id"], "error_file_id": batch["error_file_id"],
                "errors": batch["errors"],
                "request_counts": {"total": len(batch["lines"]), "completed": done, "failed": 0}}
