"""Next-token response files (``request-<i>-position-<p>`` lines, as ``approxft collect`` writes
them in next_token mode), through ``approxft ingest``: each line's list is checked where it is
read, so that an error names that line and the field as it is in the file."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from ingest import open_store
from tests.helpers import run_cli
from tests.ingest.synthetic import write_jsonl

TOKENS = [["A", " b", " c", " d"], ["G", " h", "bytes:\\xe2\\x80", "bytes:\\x99"]]
LIST = "response.body.choices[0].logprobs.top_logprobs[0]"


def answer(model: str, top: Any) -> dict[str, Any]:
    """A legacy next-token completion whose list is ``top``."""
    logprobs = {"tokens": ["x"], "token_logprobs": [-1.0], "top_logprobs": [top], "text_offset": [0]}
    return {"model": model, "choices": [{"text": "x", "index": 0, "logprobs": logprobs, "finish_reason": "length"}]}


def lines(model: str = "m") -> list[dict[str, Any]]:
    """One line per position whose context is whole characters (request 1's position 3 is not):
    the actual token at -(p + 1), another token above it."""
    out = []
    for i, tokens in enumerate(TOKENS):
        for p in (1, 2, 3) if i == 0 else (1, 2):
            top = {f" o{i}{p}": -0.5, tokens[p]: -(p + 1.0)}
            out.append({"id": f"b{i}{p}", "custom_id": f"request-{i}-position-{p}",
                        "response": {"status_code": 200, "body": answer(model, top)}, "error": None})
    return out


@pytest.fixture
def requests(tmp_path) -> Path:
    return write_jsonl(tmp_path / "requests.jsonl", [
        {"request_index": i, "split": "val", "story": "S0", "tokens": t, "params": {"logprobs": 2}} for i, t in enumerate(TOKENS)])


def ingest(capsys, tmp_path: Path, requests: Path, records: list[Any]):
    path = write_jsonl(tmp_path / "m.jsonl", records)
    return path, run_cli(capsys, "ingest", path, "--requests", requests, "--out", tmp_path / "store")


def test_next_token_lines_are_assembled_per_request(tmp_path, requests, capsys):
    _, done = ingest(capsys, tmp_path, requests, lines())
    assert done.returncode == 0, done.stderr
    store = open_store(tmp_path / "store")
    values = store.target_lp("m").tolist()
    assert values[:5] == [-2.0, -3.0, -4.0, -2.0, -3.0] and math.isnan(values[5])  # request 1, position 3: not asked


def _list(records: list[Any], line: int) -> dict[str, Any]:
    return records[line - 1]["response"]["body"]["choices"][0]["logprobs"]["top_logprobs"]


@pytest.mark.parametrize(("edit", "field", "problem"), [
    (lambda r: _list(r, 3)[0].update({" o03": 0.7}), f"{LIST}[' o03']", "is 0.7, above 0: not a log-probability"),
    (lambda r: _list(r, 3)[0].update({" o03": -(10**400)}), f"{LIST}[' o03']", "is -10000000000000000000000000000000000000…, not a number"),
    (lambda r: _list(r, 3)[0].update({" o03": True}), f"{LIST}[' o03']", "is True, not a number"),
    (lambda r: _list(r, 3)[0].update({" o03": math.log(0.6), " z": math.log(0.6)}), LIST, "holds probability 1.21832, more than 1"),
    (lambda r: _list(r, 3).__setitem__(0, [" d", -4.0]), LIST, "is [' d', -4.0], not an object"),
    (lambda r: _list(r, 3).clear(), LIST, "missing"),
    (lambda r: r[2]["response"]["body"].update(model="other"), "response.body.model",
     "is 'other' but line 1 has 'm': one model per file"),
])
def test_an_error_names_its_own_line_and_field(tmp_path, requests, capsys, edit, field, problem):
    records = lines()
    edit(records)
    path, done = ingest(capsys, tmp_path, requests, records)
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith(f"approxft ingest: error: {path} line 3: field '{field}' {problem}"), done.stderr
    assert not (tmp_path / "store").exists()


def test_sampled_positions_are_integers(tmp_path, requests, capsys):
    records = [line for line in lines() if line["custom_id"] != "request-0-position-1"]
    plan = {"id": "p", "custom_id": "request-0-positions", "response": {"status_code": 200, "body": {"positions": [2, 3]}},
            "error": None}
    _, done = ingest(capsys, tmp_path, requests, [plan, *records])
    assert done.returncode == 0, done.stderr
    assert math.isnan(open_store(tmp_path / "store").target_lp("m")[0])  # position 1: not sampled
    plan["response"]["body"]["positions"] = [True, 2, 3]  # true is not position 1
    path, done = ingest(capsys, tmp_path, requests, [plan, *records])
    assert done.returncode == 1 and done.stderr.startswith(
        f"approxft ingest: error: {path} line 1: field 'response.body.positions' is not a list of positions in 1..3"), done.stderr
