"""How next-token contexts are sent (``ingest.collect.contexts``): ids of the manifest's tokens,
or text that starts on a character boundary and is dropped where it re-tokenizes otherwise."""

from __future__ import annotations

import pytest

from ingest.collect.contexts import TEXT, TOKEN_IDS, UNCHECKED, ContextPrompts
from ingest.errors import IngestError
from ingest.prepare.bpe import gpt2
from ingest.prepare.tokenizer import local_token_ids, local_tokenizer

GPT2 = ContextPrompts(local_token_ids("gpt2"), local_tokenizer("gpt2"), "gpt2")


def test_ids_text_and_dropped_contexts():
    bpe = gpt2()
    # A chunk that begins inside "“" (its last byte), then text ending in "\n", "\n".
    tokens = ["bytes:\\x9c", "Hi", " there", ".", "\n", "\n", "The", " end"]
    assert bpe.api_tokens(bpe.encode("Hi there.\n\nThe end")) == ["Hi", " there", ".", "\n", "\n", "The", " end"]
    positions = [1, 2, 5, 6, 7]
    by_ids = GPT2.contexts(tokens, positions, None, request=0)
    assert GPT2.kind == TOKEN_IDS
    assert [(p, sent) for p, _, sent in by_ids] == [(1, 1), (2, 2), (5, 5), (6, 6), (7, 7)]
    assert by_ids[-1][1] == [bpe.vocab_bytes.index(b"\x9c"), *bpe.encode("Hi there.\n\nThe")]
    text = GPT2.as_text()
    assert text.kind == TEXT
    by_text = {p: (prompt, sent) for p, prompt, sent in text.contexts(tokens, positions, None, request=0)}
    assert by_text[1] == (None, 0)  # nothing but a partial character before it: no text to send
    assert by_text[2] == ("Hi", 1) and by_text[5] == ("Hi there.\n", 4)
    assert by_text[6] == (None, 5)  # "Hi there.\n\n" re-tokenizes to one "\n\n": dropped
    assert by_text[7] == ("Hi there.\n\nThe", 6)
    assert text.contexts(tokens, [7], 2, request=0) == [(7, "\nThe", 2)]  # the last 2 tokens
    unchecked = ContextPrompts()
    assert unchecked.kind == UNCHECKED
    assert [prompt for _, prompt, _ in unchecked.contexts(tokens, [6], None, request=0)] == ["Hi there.\n\n"]


def test_a_token_that_is_not_the_tokenizers_is_one_clear_error():
    with pytest.raises(IngestError, match=r"request 4: token '<\|im_start\|>' is not a token of gpt2, the manifest's tokenizer"):
        GPT2.contexts(["<|im_start|>", "Hi"], [1], None, request=4)
