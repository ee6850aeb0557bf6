"""``ShownText`` (stop sequences over token bytes) and ``encode_json`` (JSON in pieces), on their own."""

from __future__ import annotations

import json

import pytest

from ingest.serve.encoding import PIECE, encode_json
from ingest.serve.text import ShownText


def generated(pieces: list[bytes], stops: list[str], prompt: list[bytes] = ()) -> ShownText:
    text = ShownText(stops)
    for raw in prompt:
        text.add(raw)
    text.start_generating()
    for raw in pieces:
        text.add(raw)
        if text.stopped:
            break
    text.finish()
    return text


def test_a_stop_across_two_tokens_cuts_inside_the_first():
    text = generated([b"ab", b"cd", b"ef"], ["bc"])
    assert text.text == "a" and text.stopped
    assert [text.shown(i) for i in range(len(text.offsets))] == [True, False]  # "cd" never shows


def test_a_character_split_across_tokens_appears_once_whole():
    text = generated([b"\xe2\x80", b"\x9cx"], [])
    assert text.text == "\u201cx" and text.offsets == [0, 0]
    cut = generated([b"\xe2\x80", b"\x9cx"], ["x"])
    assert cut.text == "\u201c" and cut.shown(0) and cut.shown(1)  # the token completing the quote shows


def test_an_unfinished_character_at_the_end_is_replaced():
    assert generated([b"a\xe2\x80"], []).text == "a\ufffd"


def test_text_that_could_begin_a_stop_is_held_back_until_settled():
    text = ShownText(["abc"])
    text.start_generating()
    text.add(b"xab")
    assert text.settled() == 1  # "ab" may still become "abc"
    text.add(b"d")
    assert text.settled() == 2 and not text.stopped
    text.finish()
    assert text.settled() == 4


def test_stops_are_not_searched_in_the_prompt():
    text = generated([b" and", b" more"], ["stop"], prompt=[b"stop", b" here"])
    assert text.text == "stop here and more" and not text.stopped


NESTED = {"choices": [{"logprobs": {"top": [None] + [{f"t{i}": -i / 7 for i in range(PIECE + 5)} for _ in range(3)]}}],
          "chat": [[{"token": "a", "bytes": [1, 2], "logprob": float("-inf")}] * (2 * PIECE + 1)], "é": "\u2028"}


@pytest.mark.parametrize("value", [1, "x", None, [], {}, {"a": [1, {"b": 2.5}]}, list(range(3 * PIECE)), NESTED],
                         ids=["int", "str", "null", "list", "dict", "small", "long list", "nested"])
def test_json_in_pieces_is_json_dumps(value):
    assert encode_json(value) == json.dumps(value).encode()
