"""ingest.jsonl.read_lines inflates gzip with ISA-L, and a file that ISA-L does not read to the
end of a whole member is read again by zlib: lines, extents and errors are zlib's, whatever the
damage. ``by_zlib`` below is the reference: the same reader with zlib alone (the code before ISA-L)."""

from __future__ import annotations

import gzip
import zlib

import pytest

from ingest.errors import IngestError
from ingest.jsonl import Extent, _gzip_lines, read_lines

LINES = [b'{"n": %d, "pad": "%s"}\n' % (i, b"x" * (37 * i % 500)) for i in range(60)]
WHOLE = gzip.compress(b"".join(LINES[:30]), mtime=0) + gzip.compress(b"\n\n\n" + b"".join(LINES[30:]), mtime=0)
FIRST = len(gzip.compress(b"".join(LINES[:30]), mtime=0))

DAMAGES = {
    "whole": WHOLE,
    "a wrong checksum": WHOLE[:-8] + bytes([WHOLE[-8] ^ 1]) + WHOLE[-7:],
    "a wrong length": WHOLE[:-1] + bytes([WHOLE[-1] ^ 1]),
    "a corrupt first member": WHOLE[:FIRST - 8] + bytes([WHOLE[FIRST - 8] ^ 1]) + WHOLE[FIRST - 7:],
    "trailing zeros": WHOLE + b"\0\0\0\0",  # ISA-L waits for more of a member here; zlib refuses it
    "trailing text": WHOLE + b"xyz",
    "truncated": WHOLE[:-20],
    "cut in the second member's header": WHOLE[:FIRST + 5],
}


def outcome(lines, extent: Extent | None) -> tuple:
    """(lines read, the error's message or None, extent's fields or None)."""
    read, error = [], None
    try:
        read.extend(lines)
    except IngestError as err:
        error = str(err)
    return read, error, None if extent is None else (extent.complete, extent.size)


def by_zlib(path, extent: Extent | None):
    with open(path, "rb") as f:
        yield from _gzip_lines(f, path, extent, zlib)


@pytest.mark.parametrize("chunk", [7, 1 << 22])
@pytest.mark.parametrize("with_extent", [False, True])
@pytest.mark.parametrize("damage", list(DAMAGES))
def test_lines_extents_and_errors_are_zlibs(tmp_path, monkeypatch, damage, with_extent, chunk):
    monkeypatch.setattr("ingest.jsonl._CHUNK", chunk)  # the damage inside a chunk, or not
    path = tmp_path / "m.jsonl.gz"
    path.write_bytes(DAMAGES[damage])
    ours, reference = (Extent() if with_extent else None), (Extent() if with_extent else None)
    got = outcome(read_lines(path, extent=ours), ours)
    assert got == outcome(by_zlib(path, reference), reference)
    if damage == "whole":
        assert got[0] == [(i + 1 + 3 * (i >= 30), line[:-1]) for i, line in enumerate(LINES)] and got[1] is None
    elif "wrong" in damage and not with_extent:
        assert "incorrect" in got[1] and "check" in got[1]  # zlib's wording, not ISA-L's
