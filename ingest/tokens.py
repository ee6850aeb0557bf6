"""Token strings as the API returns them, their raw bytes, and one vocabulary for all models."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from ingest.errors import IngestError
from ingest.store import VOCAB_SCHEMA

#: OpenAI writes a token whose bytes are not valid UTF-8 on their own as this prefix followed by
#: every byte escaped, e.g. the 16-character string ``bytes:\xe2\x80``.
BYTES_PREFIX = "bytes:"
_ESCAPED_BYTES = re.compile(r"(?:\\x[0-9a-fA-F]{2})+")


#: A token known by its id only (no text spells it: vLLM's padded or undecodable ids, a model's
#: output rows past its tokenizer) is named ``<|id:N|>``.
_ID_TOKEN = re.compile(r"<\|id:(\d+)\|>")
_ID_TOKEN_BYTES = re.compile(_ID_TOKEN.pattern.encode())


def id_token(token_id: int) -> str:
    """The name of a token known by its id only: ``<|id:N|>``."""
    return f"<|id:{token_id}|>"


def holds_id_token(text: str | bytes) -> bool:
    """Whether ``text`` (a token's string, or tokens' text or bytes joined) holds an ``id_token``
    name: then it does not spell the text those tokens stand for."""
    pattern = _ID_TOKEN_BYTES if isinstance(text, bytes) else _ID_TOKEN
    return pattern.search(text) is not None


def token_bytes(token: str) -> bytes:
    """The raw bytes of an API token string.

    ``bytes:\\xNN...`` decodes to the escaped bytes; any other string (including one that merely
    starts with ``bytes:``) is text and encodes as UTF-8.
    """
    if token.startswith(BYTES_PREFIX):
        escaped = token[len(BYTES_PREFIX) :]
        if _ESCAPED_BYTES.fullmatch(escaped):
            return bytes.fromhex(escaped.replace("\\x", ""))
    return token.encode("utf-8")


def bytes_token(raw: bytes) -> str:
    """The API's string for a token given by its raw bytes, every byte escaped (``bytes:\\xNN..``)."""
    return BYTES_PREFIX + "".join(f"\\x{b:02x}" for b in raw)


def api_token(raw: bytes) -> str:
    """The OpenAI API's string for a token with bytes ``raw``: its text where the bytes are valid
    UTF-8 on their own, else ``bytes_token``."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return bytes_token(raw)


class _FirstSeen(dict[str, int]):
    """A dict that gives an unseen key the next id, so lookups run in C."""

    def __missing__(self, token: str) -> int:
        new_id = self[token] = len(self)
        return new_id


class Vocabulary:
    """Token strings dictionary-encoded as int32 ids ``0..V-1`` in first-seen order, after
    ``tokens`` (a store's vocabulary, which an append extends), which keep ids ``0..len-1``."""

    def __init__(self, tokens: Sequence[str] = ()) -> None:
        self._ids = _FirstSeen((token, i) for i, token in enumerate(tokens))

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def tokens(self) -> list[str]:
        """The token string of every id, (V,)."""
        return list(self._ids)

    def ids(self, tokens: Sequence[str]) -> np.ndarray:
        """int32 (len(tokens),) ids of ``tokens``, adding tokens not seen before."""
        return np.fromiter(map(self._ids.__getitem__, tokens), dtype=np.int32, count=len(tokens))

    def table(self) -> pa.Table:
        """The vocab table: ``id`` int32, ``token`` string (as the API wrote it), ``bytes`` binary."""
        tokens = self.tokens
        for token in tokens:
            try:
                token.encode("utf-8")
            except UnicodeEncodeError:
                # json.loads accepts lone surrogates ("\ud83d"); Arrow strings cannot hold them.
                raise IngestError(f"token {token!r} is not valid Unicode text") from None
        return pa.table(
            [
                pa.array(np.arange(len(tokens), dtype=np.int32)),
                pa.array(tokens, pa.string()),
                pa.array([token_bytes(t) for t in tokens], pa.binary()),
            ],
            schema=VOCAB_SCHEMA,
        )
