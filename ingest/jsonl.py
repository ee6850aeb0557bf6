"""JSON lines files, plain or gzip (told apart by the magic bytes, not the name), read as a
stream: a file is never held in memory whole, only a chunk of it and the lines it completes.

A gzip file may hold several members: appending to a .gz file adds one, and the raw log of a
full-distribution calibration sample (``ingest.collect.rawlog``) is one member per record.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ingest.errors import IngestError

_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 22


@dataclass
class Extent:
    """How much of a file holds whole records, filled in by ``read_lines(path, extent=...)``.

    Attributes:
        complete: bytes from the start of the file that end on a whole line (plain) or a whole
            gzip member (gzip).
        size: the file's size in bytes; ``size - complete`` bytes are a partial tail.
    """

    complete: int = 0
    size: int = 0

    @property
    def partial(self) -> bool:
        return self.size > self.complete


def read_lines(path: str | Path, *, extent: Extent | None = None) -> Iterator[tuple[int, bytes]]:
    """The non-blank lines of a JSONL file as ``(1-based line number, bytes)``, streamed.

    Without ``extent``, a truncated or corrupt gzip stream is an IngestError at the line where
    it breaks off, and a plain file's last line needs no newline. With one (reading a file that a
    killed writer may have cut short), the partial tail (a plain file's bytes after its last
    newline, a gzip file's truncated last member) is left out, not an error, and ``extent`` says,
    once the lines are exhausted, where the whole part ends.
    """
    path = Path(path)
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed below, also when the caller stops early)
    except OSError as err:
        raise IngestError(f"cannot be read: {err.strerror}", file=str(path)) from None
    with f:
        gzipped = f.read(2) == _GZIP_MAGIC
        f.seek(0)
        yield from (_gzip_lines(f, path, extent) if gzipped else _plain_lines(f, extent))


def parse_json(line: bytes, *, file: str, number: int) -> Any:
    """One line's JSON value (``loads_unique``); malformed JSON, or an object that repeats a key,
    is an IngestError at that line (naming the field)."""
    try:
        return loads_unique(line)
    except IngestError as err:
        raise err.located(file=file, line=number) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        problem = err.msg if isinstance(err, json.JSONDecodeError) else "not UTF-8"
        where = f" at column {err.colno}" if isinstance(err, json.JSONDecodeError) else ""
        raise IngestError(f"malformed JSON ({problem}{where})", file=file, line=number) from None


def loads_unique(data: bytes | str) -> Any:
    """The JSON value of ``data``, as ``json.loads``, but an object that repeats a key (which
    ``json.loads`` would silently resolve to its last value) is an IngestError naming the
    object's field (``choices[0].logprobs.top_logprobs[3]``; none for the top level) and the key.

    Every JSON text approxft takes in goes through this: lines read from files (``parse_json``)
    and the answers ``collect`` stores, so that a repeated key is seen where it enters.

    Raises:
        IngestError: a repeated key.
        json.JSONDecodeError: malformed JSON.
        UnicodeDecodeError: bytes that are not UTF-8 (or UTF-16/32 as ``json.loads`` detects).
    """
    try:
        return json.loads(data, object_pairs_hook=_unique_keys)
    except _RepeatedKey:
        field, key = next(_repeats(json.loads(data, object_pairs_hook=_Pairs), ""))
        raise IngestError(f"repeats the key {key!r}: a JSON object holds each key once", field=field or None) from None


class _RepeatedKey(Exception):
    """A JSON object repeats a key (which one, and where, is found on the slow path)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Called for every object of every line read: one dict and one length comparison.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _RepeatedKey
    return obj


class _Pairs(list):
    """An object's ``(key, value)`` pairs as written, repeats kept."""


def _repeats(node: Any, path: str) -> Iterator[tuple[str, str]]:
    """``(path of the object, key)`` for each object under ``node`` that repeats a key, in
    document order; paths read like ``choices[0].logprobs.top_logprobs[3]``."""
    if isinstance(node, _Pairs):
        seen: set[str] = set()
        repeated = next((k for k, _ in node if k in seen or seen.add(k)), None)
        if repeated is not None:
            yield path, repeated
        for key, value in node:
            yield from _repeats(value, f"{path}.{key}" if path else key)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _repeats(value, f"{path}[{i}]")


def read_json_lines(path: str | Path, *, extent: Extent | None = None) -> Iterator[tuple[int, Any]]:
    """``(1-based line number, JSON value)`` for each non-blank line (``read_lines``, streamed)."""
    for number, line in read_lines(path, extent=extent):
        yield number, parse_json(line, file=str(path), number=number)


class _Lines:
    """Splits a byte stream into numbered non-blank lines."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.number = 0

    def complete(self) -> Iterator[tuple[int, bytes]]:
        """The buffer's whole lines (a partial last one stays buffered)."""
        cut = self.buffer.rfind(b"\n") + 1
        if cut:
            lines = bytes(self.buffer[:cut]).split(b"\n")[:-1]
            del self.buffer[:cut]
            for line in lines:
                self.number += 1
                if line.strip():
                    yield self.number, line

    def rest(self) -> Iterator[tuple[int, bytes]]:
        """A last line without a newline."""
        if self.buffer.strip():
            self.number += 1
            yield self.number, bytes(self.buffer)
        self.buffer.clear()


def _plain_lines(f: BinaryIO, extent: Extent | None) -> Iterator[tuple[int, bytes]]:
    lines, read = _Lines(), 0
    while chunk := f.read(_CHUNK):
        read += len(chunk)
        lines.buffer += chunk
        yield from lines.complete()
    if extent is None:
        yield from lines.rest()
    else:
        extent.complete, extent.size = read - len(lines.buffer), read


def _gzip_lines(f: BinaryIO, path: Path, extent: Extent | None) -> Iterator[tuple[int, bytes]]:
    """Lines of a gzip file of one or more members; with ``extent``, a member's lines come only
    once the member is whole, so that a truncated last member gives none."""
    lines = _Lines()
    stream = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    read = member_start = fed = 0  # bytes read; where the current member starts; its bytes fed so far
    while chunk := f.read(_CHUNK):
        read += len(chunk)
        while chunk:
            try:
                lines.buffer += stream.decompress(chunk)
            except zlib.error as err:
                raise IngestError(f"corrupt gzip stream ({err}) at or after this line", file=str(path),
                                  line=_next_line(lines)) from None
            if not stream.eof:
                fed += len(chunk)
                if extent is None:
                    yield from lines.complete()
                break
            chunk = stream.unused_data
            member_start = read - len(chunk)
            fed = 0
            stream = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            yield from lines.complete()
    if fed:  # the file ends inside a member
        if extent is None:
            raise IngestError("gzip stream truncated (the file ends inside this line)", file=str(path),
                              line=_next_line(lines))
        lines.buffer.clear()
        extent.complete, extent.size = member_start, read
        return
    yield from lines.rest()
    if extent is not None:
        extent.complete = extent.size = read


def _next_line(lines: _Lines) -> int:
    return lines.number + lines.buffer.count(b"\n") + 1
