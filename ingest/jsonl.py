"""JSON lines files, plain or gzip (told apart by the magic bytes, not the name), read as a
stream: a file is never held in memory whole, only a chunk of it and the lines it completes.

A gzip file may hold several members: appending to a .gz file adds one, and the raw log of a
full-distribution calibration sample (``ingest.collect.rawlog``) is one member per record.

Gzip is inflated by ISA-L (``isal``, about 3 times zlib's speed, the same bytes); a file that
ISA-L does not read to the end of a whole member (corrupt, truncated, trailing bytes) is read
again by zlib, so that what it yields and the error it raises are zlib's, as they always were.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, BinaryIO, TypeVar

import numpy as np
import orjson
from isal import isal_zlib

from ingest.errors import IngestError
from ingest.json_scan import read_each_strictly
from ingest.json_scan import read_strictly as _read_strictly

_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 22
"""Bytes read at a time, once a file's first reads (``_chunks``) have grown to it."""
_FIRST_CHUNK = 1 << 16


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
        if not gzipped:
            yield from _plain_lines(f, extent)
            return
        given = 0  # the number of the last line yielded
        try:
            for given, line in _gzip_lines(f, path, extent, isal_zlib):
                yield given, line
        except _NotClean:
            f.seek(0)
            yield from ((number, line) for number, line in _gzip_lines(f, path, extent, zlib) if number > given)


def parse_json(line: bytes, *, file: str, number: int, scanned: bool | None = None) -> Any:
    """One line's JSON value (``loads_unique``, ``scanned`` passed on); malformed JSON, or an
    object that repeats a key, is an IngestError at that line (naming the field)."""
    try:
        return loads_unique(line, scanned=scanned)
    except IngestError as err:
        raise err.located(file=file, line=number) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        problem = err.msg if isinstance(err, json.JSONDecodeError) else "not UTF-8"
        where = f" at column {err.colno}" if isinstance(err, json.JSONDecodeError) else ""
        raise IngestError(f"malformed JSON ({problem}{where})", file=file, line=number) from None


def loads_unique(data: bytes | bytearray | str, *, scanned: bool | None = None) -> Any:
    """The JSON value of ``data``, as ``json.loads``, but an object that repeats a key (which
    ``json.loads`` would silently resolve to its last value) is an IngestError naming the
    object's field (``choices[0].logprobs.top_logprobs[3]``; none for the top level) and the key.

    Every JSON text approxft takes in goes through this: lines read from files (``parse_json``)
    and the answers ``collect`` stores, so that a repeated key is seen where it enters.

    Fast path: ``orjson`` parses (with the scan below about twice the standard library's
    speed) but keeps a repeated key's last value silently and reads an integer past 64 bits as a
    float, so ``_read_strictly`` scans the same bytes for objects two of whose keys decode to the
    same string and for integers of 19 digits or more. Text that orjson refuses (malformed, or
    what only ``json`` reads: NaN, Infinity, 1e400, lone surrogates), or that the scan flags, is
    read again by the standard library (``_loads_strict``), which gives the value, or the very
    error, that it always gave. ``scanned``: the scan's answer for ``data`` where the caller has it
    already (``read_json_lines`` scans lines ahead, on another thread).

    Raises:
        IngestError: a repeated key.
        json.JSONDecodeError: malformed JSON.
        UnicodeDecodeError: bytes that are not UTF-8 (or UTF-16/32 as ``json.loads`` detects).
    """
    try:
        value = orjson.loads(data)
        text = data.encode() if isinstance(data, str) else data
    except (orjson.JSONDecodeError, UnicodeEncodeError):
        return _loads_strict(data)
    if scanned if scanned is not None else _read_strictly(np.frombuffer(text, dtype=np.uint8)):
        return _loads_strict(data)
    return value


def _loads_strict(data: bytes | str) -> Any:
    """``loads_unique`` by the standard library: ``json.loads`` with a hook that sees each
    object's pairs as written."""
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
    """``(1-based line number, JSON value)`` for each non-blank line (``read_lines``, streamed;
    ``parse_json``'s values and errors).

    The lines are read, inflated and scanned (``ingest.json_scan.read_strictly``) on a second
    thread, at most ``_AHEAD`` batches of about ``_BATCH`` bytes ahead, while this one parses them:
    ISA-L and the scan release the GIL, so on two free cores they take no time of their own.
    Every line and every error comes in the file's order, as from a plain loop (an error of the
    reading, a broken gzip stream say, after the lines before it)."""
    file = str(path)
    for batch in _ahead(lambda: _scanned_batches(path, extent), _AHEAD):
        for number, line, scanned in batch:
            yield number, parse_json(line, file=file, number=number, scanned=scanned)


_BATCH = 1 << 20
"""Bytes of lines scanned in one call (a batch ends with the line that reaches them): a thread
that gives up the GIL waits for it again (up to the interpreter's switch interval, 5 ms, while
the parser holds it), so once per batch, not per line."""
_FIRST_BATCH = 1 << 16
_AHEAD = 2
"""Batches ``read_json_lines`` reads ahead of the parser: what it holds stays a few MB, however
long the file."""


def _scanned_batches(path: str | Path, extent: Extent | None) -> Iterator[list[tuple[int, bytes, bool]]]:
    """``read_lines`` in lists of lines of ``_FIRST_BATCH`` bytes, doubling up to ``_BATCH`` (the
    parser has the first line soon), each line with ``read_strictly``'s answer for it; an error
    of the reading comes after the lines read before it."""
    batch: list[tuple[int, bytes]] = []
    size, limit = 0, _FIRST_BATCH
    error: Exception | None = None
    try:
        for item in read_lines(path, extent=extent):
            batch.append(item)
            size += len(item[1])
            if size >= limit:
                yield _scanned(batch)
                batch, size, limit = [], 0, min(2 * limit, _BATCH)
    except Exception as err:  # noqa: BLE001 (raised below, after the lines before it)
        error = err
    if batch:
        yield _scanned(batch)
    if error is not None:
        raise error


def _scanned(batch: list[tuple[int, bytes]]) -> list[tuple[int, bytes, bool]]:
    """Each line of ``batch`` with ``read_strictly``'s answer, all in one call."""
    lines = [line for _, line in batch]
    ends = np.cumsum(np.fromiter(map(len, lines), dtype=np.int64, count=len(lines)))
    strict = read_each_strictly(np.frombuffer(b"".join(lines), dtype=np.uint8), ends)
    return [(number, line, bool(answer)) for (number, line), answer in zip(batch, strict, strict=True)]


_T = TypeVar("_T")


def _ahead(items: Callable[[], Iterator[_T]], depth: int) -> Iterator[_T]:
    """The items of the iterator ``items()``, made on a second thread up to ``depth`` ahead of
    the consumer; an exception raised making them is raised here in its place. When the
    consumer stops early, the thread stops after the item it is making (and closes ``items()``)."""
    slots: queue.Queue[tuple[bool, Any]] = queue.Queue(depth)
    stop = threading.Event()

    def make() -> None:
        made = items()
        try:
            for item in made:
                slots.put((False, item))
                if stop.is_set():
                    return
            slots.put((True, None))
        except BaseException as err:  # noqa: BLE001 (raised in the consumer's thread)
            slots.put((True, err))
        finally:
            made.close()

    thread = threading.Thread(target=make, name="approxft-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            end, item = slots.get()
            if end:
                if item is not None:
                    raise item
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # a maker waiting on a full queue: make room, so that it sees stop
            with contextlib.suppress(queue.Empty):
                slots.get(timeout=0.01)


class _Lines:
    """Splits a byte stream into numbered non-blank lines."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.number = 0

    def complete(self) -> Iterator[tuple[int, bytes]]:
        """The buffer's whole lines (a partial last one stays buffered)."""
        cut = self.buffer.rfind(b"\n") + 1
        if cut:
            with memoryview(self.buffer) as whole:  # one copy of the complete part, not two
                lines = bytes(whole[:cut]).split(b"\n")[:-1]
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


def _chunks(f: BinaryIO) -> Iterator[bytes]:
    """``f``'s bytes in chunks of ``_FIRST_CHUNK``, doubling up to ``_CHUNK``: a file's first
    lines come without waiting for 4 MB of it to be read and inflated (``read_json_lines``'
    parser waits for them)."""
    size = min(_FIRST_CHUNK, _CHUNK)
    while chunk := f.read(size):
        yield chunk
        size = min(2 * size, _CHUNK)


def _plain_lines(f: BinaryIO, extent: Extent | None) -> Iterator[tuple[int, bytes]]:
    lines, read = _Lines(), 0
    for chunk in _chunks(f):
        read += len(chunk)
        lines.buffer += chunk
        yield from lines.complete()
    if extent is None:
        yield from lines.rest()
    else:
        extent.complete, extent.size = read - len(lines.buffer), read


class _NotClean(Exception):
    """ISA-L did not read a gzip file to the end of a whole member (it is read again by zlib)."""


def _gzip_lines(f: BinaryIO, path: Path, extent: Extent | None, inflate: ModuleType) -> Iterator[tuple[int, bytes]]:
    """Lines of a gzip file of one or more members, inflated by ``inflate`` (``zlib`` or
    ``isal_zlib``; with the latter, whatever would be an error, or a partial tail, raises
    ``_NotClean`` instead, and the lines of a chunk come once the next one is inflated); with
    ``extent``, a member's lines come only once the member is whole, so that a truncated last
    member gives none."""
    lines = _Lines()
    stream = inflate.decompressobj(wbits=16 + zlib.MAX_WBITS)
    read = member_start = fed = 0  # bytes read; where the current member starts; its bytes fed so far
    for chunk in _chunks(f):
        read += len(chunk)
        while chunk:
            try:
                inflated = stream.decompress(chunk)
            except isal_zlib.error:
                raise _NotClean from None
            except zlib.error as err:
                raise IngestError(f"corrupt gzip stream ({err}) at or after this line", file=str(path),
                                  line=_next_line(lines)) from None
            early = extent is None and not stream.eof  # lines given before their member is whole
            if early and inflate is not zlib:
                # ISA-L checks a member's trailer once it has all 8 bytes, zlib its 4-byte checksum
                # first: a chunk's lines wait for the next chunk, so that no line comes that zlib
                # would not have given before its error.
                yield from lines.complete()
            lines.buffer += inflated
            if not stream.eof:
                fed += len(chunk)
                if early and inflate is zlib:
                    yield from lines.complete()
                break
            chunk = stream.unused_data
            member_start = read - len(chunk)
            fed = 0
            stream = inflate.decompressobj(wbits=16 + zlib.MAX_WBITS)
            yield from lines.complete()
    if fed and inflate is not zlib:  # ISA-L takes trailing bytes for a truncated member; zlib may not
        raise _NotClean
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
