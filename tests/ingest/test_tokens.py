"""Token strings -> raw bytes, and the shared vocabulary."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.errors import IngestError
from ingest.tokens import Vocabulary, bytes_token, holds_id_token, id_token, token_bytes


def test_escaped_bytes_decode():
    assert token_bytes("bytes:\\xe2\\x80") == b"\xe2\x80"
    assert len("bytes:\\xe2\\x80") == 14
    assert token_bytes("bytes:\\x20\\xE2\\x80") == b" \xe2\x80"
    assert token_bytes("bytes:\\x99") == b"\x99"


@pytest.mark.parametrize("text", ["hello", " the", "\n", "’", "bytes:", "bytes: x", "bytes:\\x9", "bytes:\\xe2y"])
def test_anything_else_is_utf8_text(text):
    assert token_bytes(text) == text.encode("utf-8")


@given(st.binary(min_size=1))
def test_bytes_token_round_trip(raw):
    token = bytes_token(raw)
    assert token.startswith("bytes:") and token.isascii()
    assert token_bytes(token) == raw


@given(st.text().filter(lambda s: not s.startswith("bytes:")))
def test_text_token_round_trip(text):
    try:
        expected = text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates are not text
        return
    assert token_bytes(text) == expected


def test_vocabulary_ids_in_first_seen_order():
    vocab = Vocabulary()
    assert vocab.ids(["b", "a", "b"]).tolist() == [0, 1, 0]
    ids = vocab.ids(["c", "a"])
    assert ids.dtype == np.int32 and ids.tolist() == [2, 1]
    assert vocab.tokens == ["b", "a", "c"] and len(vocab) == 3
    assert vocab.ids([]).shape == (0,)
    table = vocab.table()
    assert table.column("id").to_pylist() == [0, 1, 2]
    assert table.column("bytes").to_pylist() == [b"b", b"a", b"c"]


def test_vocabulary_rejects_lone_surrogates():
    vocab = Vocabulary()
    vocab.ids(["\ud83d"])
    with pytest.raises(IngestError, match="not valid Unicode"):
        vocab.table()


def test_a_token_known_by_its_id_only():
    assert id_token(50257) == "<|id:50257|>"
    assert holds_id_token(id_token(7)) and holds_id_token("ab" + id_token(0) + "c")
    assert holds_id_token(b"x" + id_token(12).encode()) and not holds_id_token(b"<|id:|>")
    assert not holds_id_token("<|id:x|>") and not holds_id_token("<|endoftext|>")
