"""How a next-token request sends its context (``next_token`` mode, calibration, ``--verify``):
the manifest's own tokens as ids of its tokenizer, where the endpoint takes ids (a probe decides,
``ingest.collect.probe``), else as text.

Text is tokenized again by the server, and not always into the same tokens: under GPT-2's BPE a
context ending in "\\n", "\\n" comes back as one "\\n\\n" token, and a window cut inside a word
re-tokenizes differently; the answer is then the top-k list of another context. With the
manifest's local tokenizer at hand, such a context is re-tokenized here first and its position
dropped (not asked, counted, left unobserved in the store) when the tokens differ. Without one
(a manifest prepared by the server's tokenizer) text is sent unchecked.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ingest.errors import IngestError
from ingest.parse.batch_lines import requestable_positions
from ingest.prepare.corpus import TokenBytes
from ingest.tokens import token_bytes

TOKEN_IDS = "token ids"
TEXT = "text"
UNCHECKED = "text (unchecked: no local tokenizer)"


@dataclass(frozen=True)
class ContextPrompts:
    """The prompt of a next-token request: ``token_id`` (raw bytes -> id of the manifest's
    tokenizer) to send ids, else text, checked where ``retokenize`` (the manifest's tokenizer,
    text -> tokens' bytes) is given."""

    token_id: Callable[[bytes], int | None] | None = None
    retokenize: TokenBytes | None = None
    tokenizer: str | None = None
    """The manifest tokenizer's name, for messages."""

    @property
    def kind(self) -> str:
        """``token ids``, ``text`` or ``text (unchecked: ...)``, as the collect summary says."""
        return TOKEN_IDS if self.token_id is not None else TEXT if self.retokenize is not None else UNCHECKED

    def as_text(self) -> ContextPrompts:
        """The same, sending text (checked where a tokenizer is known)."""
        return ContextPrompts(None, self.retokenize, self.tokenizer)

    def contexts(self, tokens: Sequence[str], positions: Sequence[int], window: int | None,
                 *, request: int) -> list[tuple[int, str | list[int] | None, int]]:
        """``(p, prompt, tokens sent)`` for each of ``positions`` (requestable ones: the tokens
        before them end on a character boundary): the last ``window`` tokens before ``p`` (all of
        them for None), as ids, or as text starting on a character boundary; prompt None = a text
        context that re-tokenizes into other tokens, or is empty (dropped).

        Raises:
            IngestError: a manifest token that is no token of the tokenizer (ids).
        """
        raw = [token_bytes(t) for t in tokens]
        # Where a text context may begin: a token that starts a character (a chunk may begin inside one).
        first = b"".join(raw[:1])[:1]
        starts = [0] * (not first or first[0] & 0xC0 != 0x80) + requestable_positions(tokens)
        out: list[tuple[int, str | list[int] | None, int]] = []
        for p in positions:
            start = 0 if window is None else max(0, p - window)
            if self.token_id is not None:
                ids = [self.token_id(piece) for piece in raw[start:p]]
                if None in ids:
                    bad = tokens[start + ids.index(None)]
                    raise IngestError(f"request {request}: token {bad!r} is not a token of {self.tokenizer}, the "
                                      "manifest's tokenizer", field="tokens")
                out.append((p, ids, p - start))  # type: ignore[arg-type]
                continue
            start = starts[bisect_left(starts, start)]
            text = b"".join(raw[start:p]).decode("utf-8")
            if not text or (self.retokenize is not None and self.retokenize(text) != raw[start:p]):
                out.append((p, None, p - start))
            else:
                out.append((p, text, p - start))
        return out
