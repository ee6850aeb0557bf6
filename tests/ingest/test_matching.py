"""Responses matched to manifest requests by content: where the manifest has each request's prompt
text or tokens, a line out of manifest order is stored under the request whose prompt it spells
(and counted), never under its place's; a line that spells none, or several alike, is an error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ingest import IngestError, Store, ingest_responses, open_store
from tests.ingest.synthetic import (
    TOKENS,
    as_chat,
    manifest,
    response,
    text,
    write_jsonl,
)

# Four requests whose positions differ: the third scores nothing; the first has 3 positions, the
# second 3, the fourth 1.
REQUESTS = [TOKENS[0], TOKENS[2], TOKENS[1], ["Q", " r"]]


def four(tmp_path: Path, content: str | None) -> Path:
    """A manifest of ``REQUESTS`` (splits val, val, test, test), with ``content`` as in
    ``synthetic.manifest``."""
    lines = []
    for r, tokens in enumerate(REQUESTS):
        line: dict[str, Any] = {"request_index": 10 * r, "split": "val" if r < 2 else "test", "story": f"S{r}",
                                "params": {"echo": True, "max_tokens": 0, "logprobs": 2}}
        if content == "prompt":
            line["params"]["prompt"] = text(tokens)
        elif content == "tokens":
            line["tokens"] = tokens
        lines.append(line)
    return write_jsonl(tmp_path / "requests.jsonl", lines)


def stored(store: Store) -> list[tuple[Any, ...]]:
    """Per position: request, position, split, target token, target value."""
    pos = store.positions
    tokens = store.vocab["token"].to_list()
    return list(zip(pos["request"], pos["position"], pos["split"], [tokens[t] for t in pos["target"]],
                    store.target_lp("m").tolist(), strict=True))


@pytest.fixture
def ordered(tmp_path) -> list[tuple[Any, ...]]:
    """The store of the responses in manifest order."""
    out = tmp_path / "ordered"
    out.mkdir()
    files = [write_jsonl(out / "m.jsonl", [response(t, "m") for t in REQUESTS])]
    return stored(open_store(ingest_responses(files, requests=four(out, None), out=out / "store")))


@pytest.mark.parametrize("content", ["prompt", "tokens"])
def test_lines_out_of_order_are_matched_by_content(tmp_path, ordered, content):
    order = [3, 0, 2, 1]  # line i answers request order[i]
    files = [write_jsonl(tmp_path / "m.jsonl", [response(REQUESTS[r], "m") for r in order])]
    store = open_store(ingest_responses(files, requests=four(tmp_path, content), out=tmp_path / "s"))
    assert stored(store) == ordered
    assert store.quirks["m"]["by_content"] == 3 and store.quirks["m"]["order_only"] == 0
    # In order, nothing moves and every line is checked.
    write_jsonl(files[0], [response(t, "m") for t in REQUESTS])
    store = open_store(ingest_responses(files, requests=four(tmp_path, content), out=tmp_path / "s"))
    assert stored(store) == ordered and store.quirks["m"]["by_content"] == 0


def test_without_content_line_order_is_all_there_is(tmp_path, ordered):
    order = [1, 0, 2, 3]
    files = [write_jsonl(tmp_path / "m.jsonl", [response(REQUESTS[r], "m") for r in order])]
    store = open_store(ingest_responses(files, requests=four(tmp_path, None), out=tmp_path / "s"))
    assert stored(store) != ordered  # stored as the lines come: nothing tells otherwise
    assert store.quirks["m"]["order_only"] == 4 and store.quirks["m"]["by_content"] == 0


def test_batch_lines_whose_custom_id_and_content_disagree_go_by_content(tmp_path, ordered):
    ids = [30, 20, 10, 0]  # each line's custom_id names another request than the one it answers
    lines = [{"custom_id": f"request-{i}", "response": {"status_code": 200, "body": response(t, "m")}, "error": None}
             for i, t in zip(ids, REQUESTS, strict=True)]
    files = [write_jsonl(tmp_path / "m.jsonl", lines)]
    store = open_store(ingest_responses(files, requests=four(tmp_path, "prompt"), out=tmp_path / "s"))
    assert stored(store) == ordered and store.quirks["m"]["by_content"] == 4


def test_generated_tokens_are_cut_by_the_matched_request_s_prompt(tmp_path, ordered):
    # No usage: the request's prompt text (by text_offset) tells where generation starts, so a
    # line out of order is read again with the prompt of the request it spells.
    records = []
    for r in [1, 0, 2, 3]:
        body = response(REQUESTS[r] + [" gen"], "m")
        del body["usage"]
        records.append(body)
    requests = four(tmp_path, "prompt")
    lines = [json.loads(line) for line in requests.read_text().splitlines()]
    for line in lines:
        line["params"]["max_tokens"] = 1
    write_jsonl(requests, lines)
    store = open_store(ingest_responses([write_jsonl(tmp_path / "m.jsonl", records)], requests=requests, out=tmp_path / "s"))
    assert stored(store) == ordered
    assert store.quirks["m"]["by_content"] == 2 and store.quirks["m"]["generated"] == 4


def test_a_start_of_text_token_before_the_prompt(tmp_path):
    bodies = [response(["<s>"] + t, "m") for t in REQUESTS]
    store = open_store(ingest_responses([write_jsonl(tmp_path / "m.jsonl", bodies)], requests=four(tmp_path, "prompt"),
                                        out=tmp_path / "s"))
    assert store.quirks["m"]["start_token"] == 4 and store.n_positions == 4 + 4 + 1 + 2  # every prompt token scored


@pytest.mark.parametrize(("case", "message"), [
    ("spells nothing", r"m\.jsonl line 2: its tokens spell none of the manifest's prompts "
                       r"\(request_index 10 by its place in the file\)"),
    ("more than the prompt", r"m\.jsonl line 1: its prompt tokens do not spell the prompt of request_index 0 once "
                             r"read with that request's parameters \(request_index 0 by its place in the file\)"),
    ("answered twice", r"m\.jsonl line 3: its tokens spell the prompt of request_index 10 \(request_index 20 by its "
                       r"place in the file\), which line 2 answers"),
    ("identical prompts", r"m\.jsonl line 2: its tokens spell the prompts of several requests \(request_index 0, 30; "
                          r"request_index 10 by its place in the file\): cannot tell which it answers"),
])
def test_lines_that_no_request_or_several_fit(tmp_path, case, message):
    requests = REQUESTS
    if case == "spells nothing":
        order = [REQUESTS[0], ["Z"] + REQUESTS[1][1:], REQUESTS[2], REQUESTS[3]]
    elif case == "more than the prompt":  # usage.prompt_tokens counts a token the prompt does not have
        order = [REQUESTS[0] + [" z"], REQUESTS[1], REQUESTS[2], REQUESTS[3]]
    elif case == "answered twice":
        order = [REQUESTS[0], REQUESTS[1], REQUESTS[1], REQUESTS[3]]
    else:
        requests = [REQUESTS[0], REQUESTS[1], REQUESTS[2], REQUESTS[0]]  # requests 0 and 30 alike
        order = [REQUESTS[0], REQUESTS[0], REQUESTS[2], REQUESTS[1]]
    manifest_path = four(tmp_path, "prompt")
    lines = [json.loads(line) for line in manifest_path.read_text().splitlines()]
    for line, tokens in zip(lines, requests, strict=True):
        line["params"]["prompt"] = text(tokens)
    write_jsonl(manifest_path, lines)
    with pytest.raises(IngestError, match=message):
        ingest_responses([write_jsonl(tmp_path / "m.jsonl", [response(t, "m") for t in order])],
                         requests=manifest_path, out=tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_chat_responses_spell_generated_text_and_are_not_checked(tmp_path):
    requests = manifest(tmp_path, content="prompt")
    chat = [as_chat(response(t, "m")) for t in TOKENS]
    store = open_store(ingest_responses([write_jsonl(tmp_path / "m.jsonl", chat)], requests=requests, out=tmp_path / "s"))
    assert store.quirks["m"]["unspellable"] == 3 and store.quirks["m"]["order_only"] == 0
    np.testing.assert_array_equal(store.positions["request"].to_numpy(), [0, 0, 0, 2, 2, 2])
