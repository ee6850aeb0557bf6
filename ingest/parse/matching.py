"""Responses matched to manifest requests by content: a response's prompt tokens must spell its
request's prompt (``params.prompt``, else the manifest's ``tokens``). A line out of manifest order
is matched to the one request whose prompt it spells; a line that spells no request's prompt, or
several identical ones, is an error. Pure functions."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ingest.errors import IngestError
from ingest.manifest import Manifest
from ingest.tokens import holds_id_token, token_bytes


def request_texts(manifest: Manifest) -> list[bytes | None]:
    """Per request, the UTF-8 text its response's prompt tokens must spell; None where the
    manifest has neither the prompt text nor the tokens."""
    return [
        prompt.encode("utf-8") if isinstance(prompt := params.get("prompt"), str)
        else b"".join(map(token_bytes, tokens)) if tokens is not None else None
        for params, tokens in zip(manifest.params, manifest.tokens, strict=True)
    ]


@dataclass(frozen=True)
class Spelling:
    """What a response's tokens spell: ``text`` (its prompt tokens), ``first`` (the first token's
    byte length, which a start-of-text token adds), ``generated`` (the tokens after the prompt,
    which a request with ``max_tokens`` >= 1 adds). None when they cannot be checked."""

    text: bytes
    first: int
    generated: bytes = b""

    @classmethod
    def of(cls, tokens: Sequence[str], generated: Sequence[str] = ()) -> Spelling | None:
        pieces = list(map(token_bytes, tokens))
        text = b"".join(pieces)
        first = len(pieces[0]) if pieces else 0
        # A token ``ingest.parse.formats`` knows by its id only spells nothing.
        return None if holds_id_token(text[first:]) else cls(text, first, b"".join(map(token_bytes, generated)))

    def fits(self, expected: bytes) -> str | None:
        """``"prompt"`` if the tokens spell ``expected``, ``"start_token"`` if they do after a
        first token of their own, else None."""
        if self.text == expected:
            return "prompt"
        return "start_token" if self.first and self.text[self.first :] == expected else None

    def owners(self, owners: dict[bytes, list[int]], lengths: list[int]) -> set[int]:
        """The requests (``owners``: text -> rows, ``lengths``: their texts' lengths) whose text
        the prompt tokens spell; failing that, whose text all the tokens begin with (without
        ``usage.prompt_tokens``, where the prompt ends is read from the request's own prompt, so
        a line read for another request may be cut in the wrong place)."""
        found = owners.get(self.text) or owners.get(self.text[self.first :])
        if found:
            return set(found)
        spelled = self.text + self.generated
        return {r for start in {0, self.first} for n in lengths for r in owners.get(spelled[start : start + n], [])}


@dataclass(frozen=True)
class Match:
    """Which request each line answers, and how many lines were checked how."""

    request_of_line: list[int]
    """(L,) the manifest row each line answers."""
    moved: list[int]
    """Lines (indices) matched to another request than their place gave them."""
    start_token: int
    """Lines whose tokens spell their prompt after a first token of their own."""
    order_only: int
    """Lines whose request has no text to check them against."""
    unspellable: int
    """Lines whose tokens spell nothing to check."""


def match_by_content(
    spellings: Sequence[Spelling | None],
    texts: Sequence[bytes | None],
    *,
    numbers: Sequence[int],
    request_index: Sequence[int],
    file: str,
    by: str,
    reread: Callable[[int, int], Spelling | None],
) -> Match:
    """Line i answers request i (by its place, or its ``custom_id``: ``by`` says which) unless
    its tokens spell another request's prompt, and that one alone.

    ``spellings``: per line (L,), None where its tokens cannot be checked; ``texts``: per request
    (L,), ``request_texts``; ``numbers``: each line's 1-based line number in ``file``;
    ``reread(i, r)``: line i read again with request r's parameters (its spelling), for a line
    that moves to request r: it must spell r's prompt then.
    """
    fits = ["order_only" if t is None else "unspellable" if s is None else s.fits(t)
            for s, t in zip(spellings, texts, strict=True)]
    wrong = [i for i, f in enumerate(fits) if f is None]
    request_of_line = list(range(len(fits)))
    if wrong:
        owners: dict[bytes, list[int]] = {}
        for r, text in enumerate(texts):
            if text is not None:
                owners.setdefault(text, []).append(r)
        lengths = sorted({len(text) for text in owners})
        held = {i: numbers[i] for i in range(len(fits)) if fits[i] is not None}  # request row -> its line
        for i in wrong:
            spelled = spellings[i]  # not None: a line with nothing to check is never wrong
            found = sorted(spelled.owners(owners, lengths))
            expected = f"request_index {request_index[i]} by {by}"
            if not found:
                raise IngestError(f"its tokens spell none of the manifest's prompts ({expected})", file=file, line=numbers[i])
            if len(found) > 1:
                several = ", ".join(str(request_index[r]) for r in found)
                raise IngestError(f"its tokens spell the prompts of several requests (request_index {several}; "
                                  f"{expected}): cannot tell which it answers", file=file, line=numbers[i])
            r = found[0]
            if r in held:
                raise IngestError(f"its tokens spell the prompt of request_index {request_index[r]} ({expected}), "
                                  f"which line {held[r]} answers", file=file, line=numbers[i])
            again = reread(i, r)
            fits[i] = again.fits(texts[r]) if again is not None else None
            if fits[i] is None:
                raise IngestError(f"its prompt tokens do not spell the prompt of request_index {request_index[r]} "
                                  f"once read with that request's parameters ({expected})", file=file, line=numbers[i])
            held[r] = numbers[i]
            request_of_line[i] = r
    return Match(request_of_line, wrong, fits.count("start_token"), fits.count("order_only"), fits.count("unspellable"))
