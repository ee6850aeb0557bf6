"""A response file is streamed (``ingest.parse.model_file``): each line is parsed and reduced to
arrays as it is read, so memory does not grow with the JSON; the store and the errors are those
of a whole-file read."""

from __future__ import annotations

import json
import random
import tracemalloc

import pyarrow.parquet as pq
import pytest

from ingest import IngestError, ingest_responses
from ingest.manifest import read_manifest
from ingest.parse.batch_lines import request_id
from ingest.parse.model_file import read_model_responses
from tests.ingest.synthetic import TOKENS, manifest, response, write_jsonl

PADDING = 1 << 19
"""Bytes of JSON per line that ingest reads and drops (a long ``choices[0].text``)."""


def reading_peak(tmp_path, lines: int) -> int:
    """Peak bytes traced while reading a file of ``lines`` padded lines."""
    requests = manifest(tmp_path, n=lines)
    bodies = [response(TOKENS[r % 3], "m") for r in range(lines)]
    for body in bodies:
        body["choices"][0]["text"] = "x" * PADDING
    path = write_jsonl(tmp_path / "m.jsonl", bodies)
    assert path.stat().st_size > lines * PADDING
    parsed = read_manifest(requests)
    tracemalloc.start()
    try:
        responses = read_model_responses(path, parsed)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert responses.lines.tolist() == list(range(1, lines + 1))
    return peak


def test_a_file_is_streamed_not_held(tmp_path):
    """Four times the lines (48 MB more JSON) and the peak memory of reading stays where it was
    (the old reader held every line's parsed body until the last was read)."""
    few = reading_peak(tmp_path, 16)
    many = reading_peak(tmp_path, 64)
    assert many - few < 12 * PADDING, f"reading 48 more lines held {(many - few) / 2**20:.1f} MB more"


def stored(store, name):
    return pq.read_table(store / name)


@pytest.mark.parametrize("wrapped", [False, True])
def test_lines_out_of_order_give_the_store_of_lines_in_order(tmp_path, wrapped):
    """Lines read out of request order (moved by content, by custom_id, or answered twice) number
    their tokens as a read in request order does: the same vocabulary and top-k ids."""
    requests = manifest(tmp_path, content="prompt")
    ordered = [response(t, "m", k=3) for t in TOKENS]
    reference = ingest_responses([write_jsonl(tmp_path / "ordered.jsonl", ordered)], requests=requests, out=tmp_path / "ref")
    order = [2, 0, 1]
    if wrapped:
        def line(r, body):
            return {"custom_id": request_id(r), "response": {"status_code": 200, "body": body}, "error": None}
        decoy = response(["Z", " y", " x"], "m", k=3)  # a first answer to request 2, replaced by the later line
        lines = [line(2, decoy)] + [line(r, ordered[r]) for r in order]
    else:
        lines = [ordered[r] for r in order]
    store = ingest_responses([write_jsonl(tmp_path / "m.jsonl", lines)], requests=requests, out=tmp_path / "s")
    for name in ("vocab.parquet", "candidates.parquet", "topk_m.parquet", "positions.parquet"):
        assert stored(store, name).equals(stored(reference, name)), name


def test_errors_come_in_the_order_of_a_whole_file_read(tmp_path):
    """Malformed JSON anywhere is reported before a bad response on an earlier line, and a count
    of lines that does not match the manifest before it too."""
    requests = manifest(tmp_path)
    bad = response(TOKENS[0], "m")
    bad["choices"][0]["logprobs"]["token_logprobs"][2] = 0.5
    good = [response(t, "m") for t in TOKENS]
    with pytest.raises(IngestError, match=r"m\.jsonl line 3: malformed JSON"):
        ingest_responses([write_jsonl(tmp_path / "m.jsonl", [bad, good[1], "{"])], requests=requests, out=tmp_path / "s")
    with pytest.raises(IngestError, match=r"m\.jsonl line 4: 4 responses, but the manifest"):
        ingest_responses([write_jsonl(tmp_path / "m.jsonl", [bad, *good[1:], good[0]])], requests=requests, out=tmp_path / "s")
    with pytest.raises(IngestError, match=r"m\.jsonl line 1: field 'choices\[0\]\.logprobs\.token_logprobs\[2\]' is 0\.5"):
        ingest_responses([write_jsonl(tmp_path / "m.jsonl", [bad, *good[1:]])], requests=requests, out=tmp_path / "s")


def test_a_shuffled_batch_file_is_read_as_its_requests_order(tmp_path):
    """Batch lines in a random order, with failed lines between them."""
    requests = manifest(tmp_path, content="tokens")
    bodies = [response(t, "m", k=4) for t in TOKENS]
    reference = ingest_responses([write_jsonl(tmp_path / "ordered.jsonl", bodies)], requests=requests, out=tmp_path / "ref")
    lines = [{"custom_id": request_id(r), "response": {"status_code": 200, "body": b}, "error": None} for r, b in enumerate(bodies)]
    lines += [{"custom_id": request_id(r), "response": {"status_code": 500, "body": {}}, "error": {"message": "x"}} for r in range(3)]
    random.Random(5).shuffle(lines)
    store = ingest_responses([write_jsonl(tmp_path / "m.jsonl", [json.dumps(x) for x in lines])], requests=requests,
                             out=tmp_path / "s")
    for name in ("vocab.parquet", "candidates.parquet", "topk_m.parquet"):
        assert stored(store, name).equals(stored(reference, name)), name
