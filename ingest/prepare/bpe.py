"""GPT-2's byte-level BPE, loaded offline from ``encoder.json`` + ``vocab.bpe`` (``data/gpt2``).

Text is split by GPT-2's pattern into pieces, each piece's UTF-8 bytes are mapped to printable
characters (``bytes_to_unicode``), and merges are applied lowest rank first. Token strings are
given as the OpenAI API writes them (``api_token``): the token's text when its bytes are valid
UTF-8 on their own, else ``bytes:\\xNN...``.
"""

from __future__ import annotations

import json
from functools import lru_cache
from itertools import pairwise
from pathlib import Path

from ingest.tokens import api_token

try:  # the exact pattern needs Unicode classes; ``regex`` comes with transformers and tiktoken
    import regex as _re

    _PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
except ImportError:  # stdlib approximation: letters = [^\W\d_], numbers = decimal digits
    import re as _re

    _PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+"""

#: The GPT-2 vocabulary shipped with the repository.
GPT2_DIR = Path(__file__).resolve().parents[2] / "data" / "gpt2"

GPT2_VOCAB_SIZE = 50257
"""Tokens in the GPT-2 vocabulary (``len(gpt2())``; the size estimators assume for a store that
does not record its own)."""

END_OF_TEXT = "<|endoftext|>"
"""GPT-2's end-of-text token, its last id (``GPT2_VOCAB_SIZE - 1``): between documents of a
training stream, and the token that ends a generation."""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (256 entries)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


class ByteBPE:
    """A byte-level BPE tokenizer: ``encode`` text -> ids, ``token_bytes`` per id."""

    def __init__(self, encoder: dict[str, int], merges: list[tuple[str, str]]) -> None:
        self._encoder = encoder
        self._ranks = {pair: rank for rank, pair in enumerate(merges)}
        byte_map = bytes_to_unicode()
        self._byte_char = [byte_map[b] for b in range(256)]
        char_byte = {c: b for b, c in byte_map.items()}
        self.vocab_bytes: list[bytes] = [b""] * len(encoder)
        """(V,) raw bytes of every token id."""
        for token, index in encoder.items():
            self.vocab_bytes[index] = bytes(char_byte[c] for c in token)
        self._split = _re.compile(_PATTERN)
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def load(cls, directory: str | Path = GPT2_DIR) -> ByteBPE:
        """Read ``encoder.json`` and ``vocab.bpe`` from ``directory`` (no network)."""
        directory = Path(directory)
        encoder = json.loads((directory / "encoder.json").read_text(encoding="utf-8"))
        lines = (directory / "vocab.bpe").read_text(encoding="utf-8").splitlines()
        merges = [tuple(line.split(" ")) for line in lines[1:] if line and not line.startswith("#version")]
        return cls(encoder, merges)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.vocab_bytes)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (int, each < len(self))."""
        ids: list[int] = []
        for piece in self._split.findall(text):
            cached = self._cache.get(piece)
            if cached is None:
                mapped = "".join(self._byte_char[b] for b in piece.encode("utf-8"))
                cached = self._cache[piece] = [self._encoder[t] for t in self._merge(mapped)]
            ids.extend(cached)
        return ids

    def decode(self, ids: list[int]) -> str:
        """The text of ``ids`` (invalid UTF-8 replaced)."""
        return b"".join(self.vocab_bytes[i] for i in ids).decode("utf-8", errors="replace")

    def api_tokens(self, ids: list[int]) -> list[str]:
        """The API's token strings of ``ids``."""
        return [api_token(self.vocab_bytes[i]) for i in ids]

    def _merge(self, word: str) -> list[str]:
        parts = list(word)
        while len(parts) > 1:
            pairs = [(self._ranks.get(pair, len(self._ranks)), i) for i, pair in enumerate(pairwise(parts))]
            rank, i = min(pairs)
            if rank == len(self._ranks):
                break
            first, second = parts[i], parts[i + 1]
            merged: list[str] = []
            j = 0
            while j < len(parts):
                if j < len(parts) - 1 and parts[j] == first and parts[j + 1] == second:
                    merged.append(first + second)
                    j += 2
                else:
                    merged.append(parts[j])
                    j += 1
            parts = merged
        return parts


@lru_cache(maxsize=2)
def gpt2(directory: str = str(GPT2_DIR)) -> ByteBPE:
    """The GPT-2 tokenizer from ``directory``, loaded once."""
    return ByteBPE.load(directory)
