"""ingest.jsonl.read_json_lines reads, inflates and scans lines on a second thread: the values,
the errors and their order are a plain loop's (``read_lines`` then ``parse_json``), the thread
stops when the reader stops early, and the scan it runs before orjson has seen a line is safe
on any bytes."""

from __future__ import annotations

import gzip
import json
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.errors import IngestError
from ingest.json_scan import read_strictly
from ingest.jsonl import Extent, parse_json, read_json_lines, read_lines


def plain_loop(path, extent=None) -> tuple[list, str | None]:
    """(values read, the error's message or None) as a loop without a second thread gives them."""
    values = []
    try:
        for number, line in read_lines(path, extent=extent):
            values.append((number, parse_json(line, file=str(path), number=number)))
    except IngestError as err:
        return values, str(err)
    return values, None


def read_ahead(path, extent=None) -> tuple[list, str | None]:
    values = []
    try:
        values.extend(read_json_lines(path, extent=extent))
    except IngestError as err:
        return values, str(err)
    return values, None


def readers() -> int:
    return sum(t.name == "approxft-read-ahead" for t in threading.enumerate())


LINES = [json.dumps({"n": i, "lp": {"a": -0.5 * i, "b": -1.0}}).encode() for i in range(100)]
CASES = {
    "whole": b"\n".join(LINES) + b"\n",
    "malformed line 40": b"\n".join(LINES[:39] + [b'{"n": '] + LINES[40:]),
    "a repeated key on line 7": b"\n".join(LINES[:6] + [b'{"n": 1, "n": 2}'] + LINES[7:]),
    "a long integer": b"\n".join(LINES[:3] + [b'{"n": 123456789012345678901234567890}'] + LINES[4:]),
}


@pytest.mark.parametrize("zipped", [False, True])
@pytest.mark.parametrize("case", list(CASES))
def test_values_and_errors_are_a_plain_loops(tmp_path, monkeypatch, case, zipped):
    monkeypatch.setattr("ingest.jsonl._CHUNK", 64)
    monkeypatch.setattr("ingest.jsonl._FIRST_BATCH", len(LINES[50]))  # batches of a line, then 2, then 3
    monkeypatch.setattr("ingest.jsonl._BATCH", 3 * len(LINES[50]))
    monkeypatch.setattr("ingest.jsonl._AHEAD", 2)  # the reader waits on a full queue
    path = tmp_path / ("m.jsonl.gz" if zipped else "m.jsonl")
    path.write_bytes(gzip.compress(CASES[case]) if zipped else CASES[case])
    got = read_ahead(path)
    assert got == plain_loop(path)
    assert (got[1] is None) == (case in ("whole", "a long integer"))
    if case == "a long integer":
        assert got[0][3][1]["n"] == 123456789012345678901234567890  # read exactly, by the standard library


def test_a_malformed_line_comes_before_a_later_broken_gzip_stream(tmp_path, monkeypatch):
    monkeypatch.setattr("ingest.jsonl._CHUNK", 64)
    data = gzip.compress(CASES["malformed line 40"])
    path = tmp_path / "m.jsonl.gz"
    path.write_bytes(data[:-30])  # the reading thread meets the truncation long before the parser
    values, error = read_ahead(path)
    assert (values, error) == plain_loop(path)
    assert error.startswith(f"{path} line 40: malformed JSON") and len(values) == 39


def test_an_extent_is_filled_through_the_thread(tmp_path):
    members = [gzip.compress(line + b"\n") for line in LINES[:5]]
    path = tmp_path / "log.jsonl.gz"
    path.write_bytes(b"".join(members)[:-7])
    ours, theirs = Extent(), Extent()
    assert read_ahead(path, ours) == plain_loop(path, theirs)
    assert (ours.complete, ours.size) == (theirs.complete, theirs.size)
    assert (ours.complete, ours.size) == (sum(map(len, members[:4])), path.stat().st_size)


def test_the_thread_stops_when_the_reader_stops_early(tmp_path, monkeypatch):
    monkeypatch.setattr("ingest.jsonl._FIRST_BATCH", len(LINES[50]))
    monkeypatch.setattr("ingest.jsonl._BATCH", 2 * len(LINES[50]))
    monkeypatch.setattr("ingest.jsonl._AHEAD", 1)
    path = tmp_path / "m.jsonl"
    path.write_bytes(CASES["whole"])
    before = readers()
    values = read_json_lines(path)
    assert next(values) == (1, json.loads(LINES[0]))
    assert readers() == before + 1
    values.close()
    assert readers() == before


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=64),
                 st.lists(st.sampled_from([b"{", b"}", b"[", b"]", b'"', b"\\", b"\\u", b"\\ud83d", b":", b",",
                                           b"a", b"1", b" "]), max_size=40).map(b"".join)))
def test_the_scan_is_safe_on_any_bytes(text):
    # Cut-off escapes, unmatched braces, more keys than valid JSON's bytes allow: an answer
    # (True: read by the standard library, which gives the error), never a read past the bytes.
    assert read_strictly(np.frombuffer(text, dtype=np.uint8)) in (True, False)


@pytest.mark.parametrize("broken", [b'{"a\\', b'{"a\\u12', b'["\\ud83d\\u', b"}", b"{" * 100, b'"":' * 40])
def test_what_valid_json_cannot_hold_is_read_strictly(broken):
    assert read_strictly(np.frombuffer(broken, dtype=np.uint8))
