"""JSON lines files, plain or gzip (told apart by the magic bytes, not the name)."""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ingest.errors import IngestError

_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 22


def read_lines(path: str | Path) -> list[tuple[int, bytes]]:
    """The non-blank lines of a JSONL file as ``(1-based line number, bytes)``.

    A gzip file may hold several members (appending to a .gz file adds one); a truncated or
    corrupt stream is an IngestError at the line where it breaks off.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise IngestError(f"cannot be read: {err.strerror}", file=str(path)) from None
    text = _gunzip(path, raw) if raw.startswith(_GZIP_MAGIC) else raw
    return [(number, line) for number, line in enumerate(text.split(b"\n"), start=1) if line.strip()]


def parse_json(line: bytes, *, file: str, number: int) -> Any:
    """One line's JSON value; malformed JSON is an IngestError at that line."""
    try:
        return json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        problem = err.msg if isinstance(err, json.JSONDecodeError) else "not UTF-8"
        where = f" at column {err.colno}" if isinstance(err, json.JSONDecodeError) else ""
        raise IngestError(f"malformed JSON ({problem}{where})", file=file, line=number) from None


def read_json_lines(path: str | Path) -> Iterator[tuple[int, Any]]:
    """``(1-based line number, JSON value)`` for each non-blank line."""
    for number, line in read_lines(path):
        yield number, parse_json(line, file=str(path), number=number)


def _gunzip(path: Path, raw: bytes) -> bytes:
    parts: list[bytes] = []
    while raw:
        stream = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        rest = b""
        # In chunks, so that a corrupt stream still tells how far it got.
        for start in range(0, len(raw), _CHUNK):
            try:
                parts.append(stream.decompress(raw[start : start + _CHUNK]))
            except zlib.error as err:
                raise IngestError(
                    f"corrupt gzip stream ({err}) at or after this line", file=str(path), line=_next_line(parts)
                ) from None
            if stream.eof:
                rest = stream.unused_data + raw[start + _CHUNK :]
                break
        if not stream.eof:
            raise IngestError(
                "gzip stream truncated (the file ends inside this line)", file=str(path), line=_next_line(parts)
            )
        raw = rest
    return b"".join(parts)


def _next_line(parts: list[bytes]) -> int:
    return sum(part.count(b"\n") for part in parts) + 1
