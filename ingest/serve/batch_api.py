"""The Batch API side of ``approxft serve``: ``/v1/files`` (upload, content) and ``/v1/batches``
(create, retrieve), enough for ``approxft collect``'s batch mode to run offline.

A batch runs in a background thread, line by line, through the same ``Completer`` as direct
requests (``stream`` is refused there); its output and error files hold Batch-API-shaped lines. A
line that is not a request, is refused (4xx) or fails (500) becomes an error line and the batch
goes on; a batch always ends, ``completed`` (or ``failed``, with its ``errors``, should the thread
itself break). Everything lives in memory.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import traceback
import uuid
from email.parser import BytesParser
from email.policy import HTTP
from http import HTTPStatus
from typing import Any, Protocol

from ingest.serve.errors import RequestError


class _Completer(Protocol):
    def complete(self, body: Any, *, streaming: bool = True) -> Any: ...


class BatchService:
    """In-memory files and batches over a completer (``RequestError`` from it becomes an error line)."""

    def __init__(self, completer: _Completer) -> None:
        self._completer = completer
        self._files: dict[str, tuple[dict[str, Any], bytes]] = {}
        self._batches: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def upload(self, payload: bytes, content_type: str) -> dict[str, Any]:
        """``POST /v1/files`` (multipart form: ``file``, ``purpose``)."""
        message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + payload)
        if not message.is_multipart():
            raise RequestError(HTTPStatus.BAD_REQUEST, "expected a multipart/form-data upload")
        fields: dict[str, tuple[str | None, bytes]] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            fields[str(name)] = (part.get_filename(), part.get_payload(decode=True) or b"")
        if "file" not in fields:
            raise RequestError(HTTPStatus.BAD_REQUEST, "the upload has no 'file' field", param="file")
        filename, data = fields["file"]
        purpose = fields.get("purpose", (None, b"batch"))[1].decode("utf-8", errors="replace")
        return self._store(data, filename or "upload.jsonl", purpose)

    def content(self, file_id: str) -> bytes:
        """``GET /v1/files/{id}/content``."""
        with self._lock:
            found = self._files.get(file_id)
        if found is None:
            raise RequestError(HTTPStatus.NOT_FOUND, f"No such File object: {file_id}", param="file_id")
        return found[1]

    def create(self, body: Any) -> dict[str, Any]:
        """``POST /v1/batches``: start the batch in the background; its object at once."""
        if not isinstance(body, dict):
            raise RequestError(HTTPStatus.BAD_REQUEST, "the request body must be a JSON object")
        if body.get("endpoint") != "/v1/completions":
            raise RequestError(HTTPStatus.BAD_REQUEST, "only endpoint /v1/completions is supported", param="endpoint")
        if not isinstance(body.get("input_file_id"), str):
            raise RequestError(HTTPStatus.BAD_REQUEST, "input_file_id must be a string", param="input_file_id")
        lines = self.content(body["input_file_id"]).splitlines()
        batch = {
            "id": f"batch_{uuid.uuid4().hex}",
            "object": "batch",
            "endpoint": body["endpoint"],
            "input_file_id": body["input_file_id"],
            "completion_window": body.get("completion_window", "24h"),
            "status": "in_progress",
            "created_at": int(time.time()),
            "output_file_id": None,
            "error_file_id": None,
            "errors": None,
            "request_counts": {"total": sum(1 for line in lines if line.strip()), "completed": 0, "failed": 0},
        }
        with self._lock:
            self._batches[batch["id"]] = batch
        threading.Thread(target=self._run, args=(batch, lines), daemon=True).start()
        return dict(batch)

    def retrieve(self, batch_id: str) -> dict[str, Any]:
        """``GET /v1/batches/{id}``."""
        with self._lock:
            batch = self._batches.get(batch_id)
            if batch is None:
                raise RequestError(HTTPStatus.NOT_FOUND, f"No such Batch object: {batch_id}", param="batch_id")
            return json.loads(json.dumps(batch))

    def _store(self, data: bytes, filename: str, purpose: str) -> dict[str, Any]:
        meta = {
            "id": f"file-{uuid.uuid4().hex}",
            "object": "file",
            "bytes": len(data),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
        }
        with self._lock:
            self._files[meta["id"]] = (meta, data)
        return meta

    def _run(self, batch: dict[str, Any], lines: list[bytes]) -> None:
        """Answer every line; the batch ends ``completed``, or ``failed`` if the loop itself broke
        (a line that fails, however, is an error line: the batch goes on)."""
        output: list[str] = []
        errors: list[str] = []
        failure = "the batch thread stopped"
        try:
            for number, line in enumerate(lines):
                if line.strip():
                    record, completed = self._line(number, line)
                    (output if completed else errors).append(record)
                    with self._lock:
                        batch["request_counts"]["completed" if completed else "failed"] += 1
            failure = None
        except Exception as err:  # noqa: BLE001 (the batch fails with its reason, never stays in_progress)
            traceback.print_exc(file=sys.stderr)
            failure = f"internal error: {type(err).__name__}"
        finally:
            out_meta = self._store("".join(r + "\n" for r in output).encode(), "output.jsonl", "batch_output")
            err_meta = self._store("".join(r + "\n" for r in errors).encode(), "errors.jsonl", "batch_output") if errors else None
            with self._lock:
                batch["output_file_id"] = out_meta["id"]
                batch["error_file_id"] = err_meta["id"] if err_meta else None
                if failure is None:
                    batch["status"] = "completed"
                    batch["completed_at"] = int(time.time())
                else:
                    batch["status"] = "failed"
                    batch["failed_at"] = int(time.time())
                    batch["errors"] = {"object": "list", "data": [{"code": "server_error", "message": failure, "line": None}]}

    def _line(self, number: int, line: bytes) -> tuple[str, bool]:
        """Input line ``number`` (0-based) answered: its output or error record, and whether it
        succeeded. A line that is not a batch request, or that the completer refuses or fails on
        (a 500, logged), is an error record."""
        try:
            request = json.loads(line)
            custom_id = request["custom_id"]
            body = request["body"]
        except (ValueError, RecursionError, KeyError, TypeError):  # not UTF-8, not JSON, no custom_id or body
            return json.dumps({"id": f"batch_req_{number}", "custom_id": None, "response": None,
                               "error": {"code": "invalid_request", "message": f"line {number + 1} is not a batch request"}}), False
        try:
            answer = self._completer.complete(body, streaming=False)
            response = {"status_code": 200, "request_id": uuid.uuid4().hex, "body": answer}
        except RequestError as err:
            response = {"status_code": int(err.status), "request_id": uuid.uuid4().hex, "body": err.body()}
        except Exception as err:  # noqa: BLE001 (answered as a 500 line, and logged with its traceback)
            traceback.print_exc(file=sys.stderr)
            error = RequestError(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error: {type(err).__name__}")
            response = {"status_code": int(error.status), "request_id": uuid.uuid4().hex, "body": error.body()}
        record = json.dumps({"id": f"batch_req_{number}", "custom_id": custom_id, "response": response, "error": None})
        return record, response["status_code"] == 200
