"""The raw responses file: append-only JSON lines, one per finished request, fsynced as written.

Each line has the shape of an OpenAI Batch API output line, so the same reader ingests both:

    {"custom_id": "request-7", "response": {"status_code": 200, "body": {...}}, "error": null}
    {"custom_id": "request-8", "response": null, "error": {"code": "timeout", "message": "..."}}

A request is complete when a line with its ``custom_id`` has status 200 and no error; a rerun
sends only the others. A run killed while writing leaves at most a partial last line, which
``RawLog`` cuts off when it opens the file, so the file is always valid JSONL.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
from pathlib import Path
from typing import Any


def is_success(record: Any) -> bool:
    """Whether a raw line records a successful response."""
    response = record.get("response") if isinstance(record, dict) else None
    return (
        isinstance(response, dict)
        and response.get("status_code") == 200
        and isinstance(response.get("body"), dict)
        and not record.get("error")
    )


class RawLog:
    """Append records to ``path``; ``completed`` holds the custom ids already answered."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.completed: set[str] = set()
        self._file = open(self.path, "ab")  # noqa: SIM115 (held open for the run, closed by close())
        try:
            # One writer per file: a second run at the same time would send everything twice.
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise ValueError(f"{self.path}: another approxft collect is writing this file") from None
        self._recover()

    def _recover(self) -> None:
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            print(f"approxft collect: {self.path}: dropping a partial last line (an interrupted write)", file=sys.stderr)
            self._file.truncate(end)
            os.fsync(self._file.fileno())
        self.completed = completed_ids(self.path, data[:end])

    def append(self, record: dict[str, Any]) -> None:
        """Write one record as one line, flushed and fsynced before returning."""
        self._file.write(json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        if is_success(record):
            self.completed.add(record["custom_id"])

    def close(self) -> None:
        self._file.close()


def completed_ids(path: Path, data: bytes | None = None) -> set[str]:
    """Custom ids with a successful line in the raw file (``data``: its bytes, when read
    already); a partial last line is ignored. Reads only: safe while a run writes the file."""
    if data is None:
        data = path.read_bytes() if path.exists() else b""
    completed = set()
    for number, line in enumerate(data[: data.rfind(b"\n") + 1].split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f"{path} line {number}: malformed JSON in the raw file; move it aside to restart") from None
        if is_success(record):
            completed.add(record["custom_id"])
    return completed


def success_record(custom_id: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"custom_id": custom_id, "response": {"status_code": 200, "body": body}, "error": None}


def failure_record(custom_id: str, code: str, message: str, status_code: int | None = None) -> dict[str, Any]:
    response = None if status_code is None else {"status_code": status_code, "body": None}
    return {"custom_id": custom_id, "response": response, "error": {"code": code, "message": message}}
