"""Validation where responses enter, for every format, through ingest_responses: JSON objects
that repeat a key, empty token strings, vLLM ranks, ids and names, chat token lists. Each error
is one line naming the file, line and field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ingest import IngestError, ingest_responses, open_store
from ingest.parse.formats import to_completions
from tests.helpers import run_cli
from tests.ingest.synthetic import (
    TOKENS,
    as_chat,
    dataset,
    manifest,
    response,
    write_jsonl,
)


def lines_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def ingest_fails(files: list[Path], requests: Path, tmp_path: Path, message: str, **kw) -> None:
    with pytest.raises(IngestError, match=message) as err:
        ingest_responses(files, requests=requests, out=tmp_path / "store", **kw)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "store").exists()


def test_a_repeated_key_is_an_error_naming_file_line_and_field(tmp_path):
    files, requests = dataset(tmp_path)
    text = files[1].read_text().splitlines()
    # Line 3's list at position 2 holds " o20" and " o21": write the second under the first's name.
    assert text[2].count('" o21"') == 1
    text[2] = text[2].replace('" o21"', '" o20"')
    files[1].write_text("\n".join(text) + "\n")
    ingest_fails(files, requests, tmp_path, r"big\.jsonl line 3: field 'choices\[0\]\.logprobs\.top_logprobs\[2\]' "
                 r"repeats the key ' o20': a JSON object holds each key once")


def test_a_repeated_key_in_the_manifest_or_at_the_top_of_a_line(tmp_path):
    files, requests = dataset(tmp_path)
    lines = requests.read_text().splitlines()
    lines[1] = lines[1].replace('"split": "val"', '"split": "val", "split": "test"')
    requests.write_text("\n".join(lines) + "\n")
    ingest_fails(files, requests, tmp_path, r"requests\.jsonl line 2: repeats the key 'split'")


def test_empty_tokens_are_errors_and_chat_s_own_empty_prompt_token_is_not(tmp_path):
    files, requests = dataset(tmp_path)
    records = lines_of(files[1])
    records[0]["choices"][0]["logprobs"]["tokens"][0] = ""
    write_jsonl(files[1], records)
    ingest_fails(files, requests, tmp_path,
                 r"big\.jsonl line 1: field 'choices\[0\]\.logprobs\.tokens\[0\]' is empty: a prompt token spells")
    records[0]["choices"][0]["logprobs"]["tokens"][0] = "A"
    records[2]["choices"][0]["logprobs"]["tokens"][3] = ""
    write_jsonl(files[1], records)
    ingest_fails(files, requests, tmp_path,
                 r"big\.jsonl line 3: field 'choices\[0\]\.logprobs\.tokens\[3\]' is empty: a scored token spells")
    # Chat: the converter represents the prompt by an empty unscored token of its own.
    chat = [as_chat(response(t, "chat")) for t in TOKENS]
    store = open_store(ingest_responses([write_jsonl(tmp_path / "chat.jsonl", chat)], requests=requests, out=tmp_path / "s"))
    assert store.n_positions == 6 and store.vocab["token"].to_list()[0] == ""
    chat[2]["choices"][0]["logprobs"]["content"][1]["top_logprobs"][0]["bytes"] = []
    ingest_fails([write_jsonl(tmp_path / "chat.jsonl", chat)], requests, tmp_path,
                 r"chat\.jsonl line 3: field 'choices\[0\]\.logprobs\.content\[1\]\.top_logprobs\[0\]\.bytes' is empty")


def test_chat_lists_hold_each_token_once(tmp_path):
    requests = manifest(tmp_path)
    chat = [as_chat(response(t, "chat")) for t in TOKENS]
    top = chat[0]["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    top[1] = dict(top[0])
    ingest_fails([write_jsonl(tmp_path / "chat.jsonl", chat)], requests, tmp_path,
                 r"chat\.jsonl line 1: field 'choices\[0\]\.logprobs\.content\[0\]\.top_logprobs\[1\]' lists ' o10' a second time")
    del chat[0]["choices"][0]["logprobs"]
    ingest_fails([write_jsonl(tmp_path / "chat.jsonl", chat)], requests, tmp_path,
                 r"chat\.jsonl line 1: field 'choices\[0\]\.logprobs\.content' missing or not a list", format="chat")


# vLLM prompt_logprobs: token ids, ranks and decoded names.
def as_vllm(body: dict[str, Any], ids: dict[str, int]) -> dict[str, Any]:
    """A legacy echo response in vLLM's shape (ids from ``ids``, new tokens numbered as met):
    per position the top entries by rank, the actual token added below them when it is not one."""
    lp = body["choices"][0]["logprobs"]
    token_ids = [ids.setdefault(t, len(ids)) for t in lp["tokens"]]
    entries: list[Any] = [None]
    for p in range(1, len(token_ids)):
        top = sorted(lp["top_logprobs"][p].items(), key=lambda kv: -kv[1])
        entry = {str(ids.setdefault(t, len(ids))): {"logprob": v, "rank": r, "decoded_token": t} for r, (t, v) in enumerate(top, 1)}
        entry.setdefault(str(token_ids[p]), {"logprob": lp["token_logprobs"][p], "rank": 1000, "decoded_token": lp["tokens"][p]})
        entries.append(entry)
    choice = {"index": 0, "text": "!", "prompt_logprobs": entries, "prompt_token_ids": token_ids}
    return {"object": "text_completion", "model": body["model"], "choices": [choice]}


@pytest.fixture
def vllm(tmp_path) -> tuple[list[dict[str, Any]], Path, np.ndarray]:
    """vLLM-shaped responses of the synthetic requests, their manifest, and the legacy store's
    target values (what every variant below must reproduce)."""
    requests = manifest(tmp_path)
    legacy = [response(t, "v") for t in TOKENS]
    reference = open_store(ingest_responses([write_jsonl(tmp_path / "v.jsonl", legacy)], requests=requests, out=tmp_path / "ref"))
    ids: dict[str, int] = {}
    return [as_vllm(b, ids) for b in legacy], requests, reference.target_lp("v")


def entry(bodies: list[dict[str, Any]], line: int, position: int) -> dict[str, Any]:
    """Line ``line``'s entry at ``position`` (line 1, position 2: ids 6 and 7 listed, 2 the actual token)."""
    return bodies[line - 1]["choices"][0]["prompt_logprobs"][position]


@pytest.mark.parametrize("rank", ["null", "missing"])
def test_vllm_without_ranks_is_ordered_by_value(vllm, tmp_path, rank):
    bodies, requests, expected = vllm
    for value in entry(bodies, 1, 2).values():
        if rank == "null":
            value["rank"] = None
        else:
            del value["rank"]
    store = open_store(ingest_responses([write_jsonl(tmp_path / "v.jsonl", bodies)], requests=requests, out=tmp_path / "s"))
    np.testing.assert_array_equal(store.target_lp("v"), expected)
    assert store.k == {"v": 2}
    ids, _ = store.topk("v")
    assert (ids >= 0).all() and store.quirks["v"]["appended"] == 1  # position 2's actual token, now in its list


@pytest.mark.parametrize(("edit", "field", "problem"), [
    (lambda e: e["6"].update(rank="2"), r"\[2\]\['6'\]\.rank", r"is '2', not a 1-based rank"),
    (lambda e: e["6"].update(rank=1.5), r"\[2\]\['6'\]\.rank", r"is 1\.5, not a 1-based rank"),
    (lambda e: e["6"].update(rank=True), r"\[2\]\['6'\]\.rank", r"is True, not a 1-based rank"),
    (lambda e: e["6"].update(rank=0), r"\[2\]\['6'\]\.rank", r"is 0, not a 1-based rank"),
    (lambda e: e.update({"x7": e.pop("6")}), r"\[2\]\['x7'\]", r"is not a token id"),
    (lambda e: e["6"].update(logprob=None), r"\[2\]\['6'\]", r"has no numeric logprob"),
    (lambda e: e["6"].update(decoded_token=e["7"]["decoded_token"]), r"\[2\]\['7'\]\.decoded_token",
     r"decodes to ' o21', as does token id 6: name tokens exactly with --token-strings"),
])
def test_vllm_entries_that_are_not_vllm_s(vllm, tmp_path, edit, field, problem):
    bodies, requests, _ = vllm
    edit(entry(bodies, 1, 2))
    ingest_fails([write_jsonl(tmp_path / "v.jsonl", bodies)], requests, tmp_path,
                 rf"v\.jsonl line 1: field 'choices\[0\]\.prompt_logprobs{field}' {problem}")


def test_vllm_token_ids_must_be_ids(vllm, tmp_path):
    bodies, requests, _ = vllm
    bodies[2]["choices"][0]["prompt_token_ids"][1] = None
    ingest_fails([write_jsonl(tmp_path / "v.jsonl", bodies)], requests, tmp_path,
                 r"v\.jsonl line 3: field 'choices\[0\]\.prompt_token_ids\[1\]' is None, not a token id")


def test_vllm_empty_decoded_text_names_the_token_by_its_id(vllm, tmp_path):
    # vLLM decodes special tokens (e.g. end of text) as "": such a token is named by its id.
    bodies, requests, expected = vllm
    e = entry(bodies, 3, 1)
    e["99"] = {"logprob": -9.0, "rank": 3, "decoded_token": ""}
    legacy = to_completions(bodies[2])
    assert legacy["choices"][0]["logprobs"]["top_logprobs"][1]["<|id:99|>"] == -9.0
    store = open_store(ingest_responses([write_jsonl(tmp_path / "v.jsonl", bodies)], requests=requests, out=tmp_path / "s"))
    assert "<|id:99|>" in store.vocab["token"].to_list() and "" not in store.vocab["token"].to_list()
    np.testing.assert_array_equal(store.target_lp("v"), expected)


HUGE = 10**400  # json.loads reads a 401-digit integer exactly: float() of it overflows


def test_a_number_too_large_for_a_float_is_one_error_line_through_the_cli(vllm, tmp_path, capsys):
    """In every format and field where a value enters, through ``approxft ingest``: one line
    naming file, line and field, exit 1, no store; never a traceback (OverflowError)."""
    bodies, requests, _ = vllm
    legacy = [response(t, "m") for t in TOKENS]
    chat = [as_chat(response(t, "chat")) for t in TOKENS]
    cases = {  # file -> (its lines, edited), the field the error names
        "top.jsonl": (lambda: legacy[2]["choices"][0]["logprobs"]["top_logprobs"][2].update({" o21": -HUGE}),
                      legacy, "choices[0].logprobs.top_logprobs[2][' o21']"),
        "target.jsonl": (lambda: legacy[2]["choices"][0]["logprobs"]["token_logprobs"].__setitem__(1, HUGE),
                         legacy, "choices[0].logprobs.token_logprobs[1]"),
        "usage.jsonl": (lambda: legacy[2]["usage"].update(prompt_tokens=HUGE), legacy, "usage.prompt_tokens"),
        "vllm.jsonl": (lambda: entry(bodies, 1, 2)["6"].update(logprob=-HUGE), bodies, "choices[0].prompt_logprobs[2]['6']"),
        "chat.jsonl": (lambda: chat[0]["choices"][0]["logprobs"]["content"][0].update(logprob=-HUGE),
                       chat, "choices[0].logprobs.token_logprobs[1]"),
    }
    for name, (edit, lines, field) in cases.items():
        original = json.loads(json.dumps(lines))
        edit()
        path = write_jsonl(tmp_path / name, lines)
        lines[:] = original
        done = run_cli(capsys, "ingest", path, "--requests", requests, "--out", tmp_path / "store")
        assert done.returncode == 1 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, (name, done.stderr)
        assert done.stderr.startswith(f"approxft ingest: error: {path} line "), (name, done.stderr)
        assert f"field '{field}' " in done.stderr and "0000…" in done.stderr, (name, done.stderr)
        assert not (tmp_path / "store").exists()
