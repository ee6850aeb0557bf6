"""The raw responses file: append-only JSON lines, one per finished request, fsynced as written.

Each line has the shape of an OpenAI Batch API output line, so the same reader ingests both:

    {"custom_id": "request-7", "response": {"status_code": 200, "body": {...}}, "error": null}
    {"custom_id": "request-8", "response": null, "error": {"code": "timeout", "message": "..."}}

A request is complete when a line with its ``custom_id`` has status 200 and no error; a rerun
sends only the others. A run killed while writing leaves at most a partial last line, which
``RawLog`` cuts off when it opens the file, so the file is always valid JSONL.

A record is written whole or not at all (``ingest.atomic.append_whole``): where a write fails (a
full disk, an I/O error), the file is cut back to its last whole line and the run stops with
``RawLogError`` naming the file. One run at a time writes a run folder (``run_lock``) and each raw
file (``ingest.atomic.locked`` on the file).

A file named ``*.gz`` (the raw log of whole next-token distributions, about 1.5 MB of JSON per
record) is gzip, one member per record, each fsynced as written: a killed run leaves at most a
truncated last member, cut off the same way. ``ingest.jsonl`` reads both kinds, streamed.
"""

from __future__ import annotations

import gzip
import json
import os
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from ingest.atomic import append_whole, cut_torn_tail, locked
from ingest.errors import IngestError
from ingest.jsonl import Extent, read_json_lines

GZIP_LEVEL = 6
"""zlib level of a compressed raw log's members."""
LOCK_FILE = ".collect.lock"
"""The run folder's lock (``run_lock``), holding the pid of the run that writes the folder."""


class RawLogError(OSError):
    """A raw log cannot be written (a full disk, an I/O error); the file holds every whole line
    written before."""


@contextmanager
def run_lock(folder: str | Path) -> Iterator[None]:
    """Hold ``folder`` for one collection run: a second run into it while this one lasts is
    refused at once (ValueError naming the folder and the running pid)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    with locked(path, blocking=False, create=True) as fd:
        if fd is None:
            pid = path.read_text().strip() or "unknown"
            raise ValueError(f"{folder}: another approxft collect is running in this folder (pid {pid}); "
                             "wait for it to end, or stop it")
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield


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
    """Append records to ``path`` (gzip members where its name ends in ``.gz``); ``completed``
    holds the custom ids already answered."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.compressed = self.path.name.endswith(".gz")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.completed: set[str] = set()
        # Held for the run, released by close(). One writer per file: a second run at the same
        # time would send everything twice.
        self._held = ExitStack()
        fd = self._held.enter_context(locked(self.path, blocking=False, create=True))
        if fd is None:
            self._held.close()
            raise ValueError(f"{self.path}: another approxft collect is writing this file")
        self._fd = fd
        try:
            self._recover()
        except BaseException:
            self._held.close()
            raise

    def _recover(self) -> None:
        extent = Extent()
        self.completed = completed_ids(self.path, extent=extent)
        if extent.partial:
            what = "a truncated last gzip member" if self.compressed else "a partial last line"
            print(f"approxft collect: {self.path}: dropping {what} ({extent.size - extent.complete} bytes, "
                  "an interrupted write)", file=sys.stderr)
            cut_torn_tail(self._fd, end=extent.complete)

    def append(self, record: dict[str, Any]) -> None:
        """Write one record as one line (one gzip member), fsynced before returning.

        Raises:
            RawLogError: the write failed; the file is cut back to the records before this one.
        """
        data = json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n"
        if self.compressed:
            data = gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0)
        try:
            append_whole(self._fd, data)
        except OSError as err:
            raise RawLogError(f"{self.path}: cannot append a response ({err.strerror or err}); every record before it "
                              "is intact: make room and rerun to resume") from None
        if is_success(record):
            self.completed.add(record["custom_id"])

    def close(self) -> None:
        self._held.close()


def completed_ids(path: Path, *, extent: Extent | None = None) -> set[str]:
    """Custom ids with a successful line in the raw file, read as a stream; a partial tail (a
    partial last line, a truncated last gzip member) is ignored, and ``extent`` says where it
    starts. Reads only: safe while a run writes the file."""
    if not path.exists():
        return set()
    completed = set()
    try:
        for _, record in read_json_lines(path, extent=extent or Extent()):
            if is_success(record):
                completed.add(record["custom_id"])
    except IngestError as err:
        raise IngestError(f"{err.problem}; move the raw file aside to restart", file=err.file, line=err.line,
                          field=err.field) from None
    return completed


def success_record(custom_id: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"custom_id": custom_id, "response": {"status_code": 200, "body": body}, "error": None}


def failure_record(custom_id: str, code: str, message: str, status_code: int | None = None) -> dict[str, Any]:
    response = None if status_code is None else {"status_code": status_code, "body": None}
    return {"custom_id": custom_id, "response": response, "error": {"code": code, "message": message}}
