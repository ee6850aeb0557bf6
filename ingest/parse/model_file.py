"""One model's response file, read against the manifest: line i answers manifest request i (or
the request its ``custom_id`` names), checked, and matched where out of order, by content."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from ingest.errors import IngestError
from ingest.jsonl import read_json_lines
from ingest.manifest import Manifest
from ingest.parse.batch_lines import is_wrapped, unwrap
from ingest.parse.completions import Completion, parse_completion
from ingest.parse.formats import detect_format, to_completions
from ingest.parse.matching import Spelling, match_by_content, request_texts
from ingest.tokens import Vocabulary


@dataclass(frozen=True)
class ModelResponses:
    """R responses of one model, concatenated. Token ids index ``vocab``.

    T = prompt tokens in all, n = scored positions (T minus one per non-empty request),
    m = observed top-k entries. Log-probs are natural logs, NaN = not observed.
    """

    name: str
    source: Path
    lines: np.ndarray
    """int64 (R,): 1-based line of each request's response."""
    vocab: list[str]
    """Token strings of the ids below."""
    token_ids: np.ndarray
    """int32 (T,): every request's prompt tokens, request after request."""
    token_starts: np.ndarray
    """int64 (R+1,): request r's tokens are ``token_ids[token_starts[r]:token_starts[r+1]]``."""
    target_lp: np.ndarray
    """float32 (n,): exact log-prob of each scored token."""
    top_ids: np.ndarray
    """int32 (m,): observed top-k ids, per position by log-prob descending."""
    top_lp: np.ndarray
    """float32 (m,)."""
    top_counts: np.ndarray
    """int32 (n,): entries of ``top_ids`` per scored position."""
    list_sizes: np.ndarray
    """int32 (n,): see ``Completion.list_sizes``."""
    actual_lowest: np.ndarray
    """bool (n,): see ``Completion.actual_lowest``."""
    quirks: dict[str, int]
    """What reading the file tolerated, by ``ingest.quirks.QUIRKS`` name (those of the top-k
    tables, which need k, aside)."""

    def with_vocabulary(self, vocab: Vocabulary) -> ModelResponses:
        """The same responses with ids in ``vocab`` (adding this file's new tokens to it)."""
        remap = vocab.ids(self.vocab)
        return dataclasses.replace(
            self, vocab=vocab.tokens, token_ids=remap[self.token_ids], top_ids=remap[self.top_ids]
        )


def read_model_responses(
    path: str | Path, manifest: Manifest, *, format: str | None = None, id_names: Sequence[str] | None = None  # noqa: A002
) -> ModelResponses:
    """Parse a model's JSONL (plain or gzip) file; IngestError names file, line and field.

    Lines are response bodies in manifest order, or Batch-API-shaped lines (Batch output,
    ``approxft collect`` raw files) in any order, matched to requests by ``custom_id``. Where the
    manifest has the prompt text or tokens, each response's prompt tokens must spell its
    request's prompt; a line out of place is matched to the request it spells, when only one
    (``ingest.parse.matching``). Each body is read by the format ``format`` names (see
    ``ingest.parse.formats``), detected per line when None; ``id_names`` names the tokens of
    formats keyed by token id.

    The file is streamed: each line is parsed as it is read and only what it gives is kept (its
    JSON body too only where it must be read again for another request; next-token lines whole,
    see ``unwrap``), so that memory grows with the positions, not with the file. Errors come in
    the order of a full read: every line's JSON first, then the lines' count, then the lines.
    """
    path = Path(path)
    file = str(path)
    texts = request_texts(manifest)
    prompts, tops = Vocabulary(), Vocabulary()  # the lines' prompt and listed tokens, as read

    def read(body: Any, r: int, number: int) -> tuple[Completion, Spelling | None]:
        """A line's body read for request r, and what it spells (None: nothing to check it against)."""
        completion, name, tokens = _read(body, manifest.params[r], format, id_names, file, number)
        checkable = texts[r] is not None and name != "chat"
        return completion, Spelling.of(completion.tokens, tokens[len(completion.tokens):]) if checkable else None

    def digest(number: int, body: Any, r: int) -> _Line:
        """What is kept of a line as it is read for request r: its body only where its tokens
        do not spell r's prompt (to be read again for the request they spell)."""
        try:
            completion, spelling = read(body, r, number)
        except IngestError as err:  # raised once every line is read: the order of the errors is kept
            return _Line(error=err)
        misplaced = spelling is not None and spelling.fits(texts[r]) is None
        return _Line.of(completion, spelling, body if misplaced else None, prompts, tops)

    quirks: dict[str, int] = {}
    with closing(read_json_lines(path)) as reading:  # closed also on an error: its reading thread stops
        first = next(reading, None)
        records = chain([first], reading) if first is not None else iter(())
        wrapped = first is not None and is_wrapped(first[1])
        if wrapped:
            lines, quirks = unwrap(records, manifest.request_index.tolist(), tokens=manifest.tokens, file=file,
                                   digest=digest)
        else:
            lines = [(number, digest(number, body, i) if i < len(manifest) else None)
                     for i, (number, body) in enumerate(records)]
    if len(lines) != len(manifest):
        at = lines[len(manifest)][0] if len(lines) > len(manifest) else (lines[-1][0] + 1 if lines else 1)
        raise IngestError(
            f"{len(lines)} responses, but the manifest {manifest.path} has {len(manifest)} requests "
            "(one response per request, in its order)",
            file=file,
            line=at,
        )
    for _, line in lines:
        if line.error is not None:
            raise line.error
    numbers = [number for number, _ in lines]
    parsed = [line for _, line in lines]

    def reread(i: int, r: int) -> Spelling | None:
        completion, spelling = read(parsed[i].body, r, numbers[i])
        parsed[i] = _Line.of(completion, spelling, None, prompts, tops)
        return spelling

    match = match_by_content([line.spelling for line in parsed], texts, numbers=numbers,
                             request_index=manifest.request_index.tolist(), file=file,
                             by="its custom_id" if wrapped else "its place in the file", reread=reread)
    line_of_row = np.empty(len(manifest), dtype=np.int64)
    line_of_row[match.request_of_line] = np.arange(len(manifest))
    rows = [parsed[i] for i in line_of_row]
    completions = [line.completion for line in rows]
    numbers = [numbers[i] for i in line_of_row]
    # As one Vocabulary would number them: the prompt tokens of all rows first, then the listed ones.
    vocab = Vocabulary()
    token_ids = _renumbered(_concat([line.token_ids for line in rows], np.int32), prompts, vocab)
    top_ids = _renumbered(_concat([line.top_ids for line in rows], np.int32), tops, vocab)
    n_tokens = np.array([line.token_ids.size for line in rows], dtype=np.int64)
    quirks |= {
        "order_only": match.order_only,
        "unspellable": match.unspellable,
        "by_content": len(match.moved),
        "start_token": match.start_token,
        "generated": sum(c.generated for c in completions),
        "unobserved": sum(c.unobserved for c in completions),
        "resorted": sum(c.resorted for c in completions),
        "unnamed": sum(c.unnamed for c in completions),
    }
    return ModelResponses(
        name=_model_name(path, completions, numbers),
        source=path,
        lines=np.array(numbers, dtype=np.int64),
        vocab=vocab.tokens,
        token_ids=token_ids,
        token_starts=np.concatenate([[0], np.cumsum(n_tokens)]),
        target_lp=_concat([c.target_lp for c in completions], np.float32),
        top_ids=top_ids,
        top_lp=_concat([c.top_lp for c in completions], np.float32),
        top_counts=_concat([c.top_counts for c in completions], np.int32),
        list_sizes=_concat([c.list_sizes for c in completions], np.int32),
        actual_lowest=_concat([c.actual_lowest for c in completions], np.bool_),
        quirks=quirks,
    )


@dataclass(frozen=True)
class _Line:
    """One line as read for its request: parsed, or the error to raise once all are read."""

    completion: Completion | None = None
    """Its token strings left out (``token_ids``, ``top_ids`` number them)."""
    spelling: Spelling | None = None
    body: Any = None
    """The JSON body, kept only for a line to be read again for another request."""
    error: IngestError | None = None
    token_ids: np.ndarray | None = None
    """int32 (n,): ``Completion.tokens`` in the prompt-token vocabulary of the file."""
    top_ids: np.ndarray | None = None
    """int32 (m,): ``Completion.top_tokens`` in the listed-token vocabulary of the file."""

    @classmethod
    def of(cls, completion: Completion, spelling: Spelling | None, body: Any, prompts: Vocabulary, tops: Vocabulary) -> _Line:
        """``completion`` with its token strings numbered in ``prompts`` and ``tops`` (a file's
        lines hold a few thousand distinct tokens, but millions of strings)."""
        return cls(dataclasses.replace(completion, tokens=[], top_tokens=[]), spelling, body,
                   token_ids=prompts.ids(completion.tokens), top_ids=tops.ids(completion.top_tokens))


def _renumbered(ids: np.ndarray, read: Vocabulary, vocab: Vocabulary) -> np.ndarray:
    """``ids`` (int32 (N,), of ``read``'s tokens) as ids of ``vocab``, which gains their tokens in
    the order of their first occurrence in ``ids`` (not in ``read``'s order: lines are read out
    of request order, again, or replaced)."""
    if ids.size == 0:
        return ids
    seen_max = np.maximum.accumulate(ids)
    if ids[0] == 0 and seen_max[-1] == len(read) - 1 and (ids[1:] <= seen_max[:-1] + 1).all():
        order = np.arange(len(read))  # each new id one past those before it: first seen in order already
    else:
        unique, first = np.unique(ids, return_index=True)
        order = unique[np.argsort(first)]
    tokens = read.tokens
    remap = np.empty(len(read), dtype=np.int32)
    remap[order] = vocab.ids([tokens[j] for j in order])
    return remap[ids]


def _read(
    body: Any, params: dict[str, Any], format: str | None, id_names: Sequence[str] | None, file: str, number: int  # noqa: A002
) -> tuple[Completion, str, list[str]]:
    """One line's body parsed for a request with ``params``, its format's name, and all its
    tokens (those generated after the prompt too)."""
    try:
        name = format or detect_format(body)
        legacy = to_completions(body, name, prompt=params.get("prompt"), id_names=id_names)
        completion = parse_completion(legacy, max_tokens=params.get("max_tokens"), prompt=params.get("prompt"))
        return completion, name, legacy["choices"][0]["logprobs"]["tokens"]
    except IngestError as err:
        raise err.located(file=file, line=number) from None


def _concat(arrays: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(arrays).astype(dtype, copy=False) if arrays else np.zeros(0, dtype)


def _model_name(path: Path, completions: list[Completion], numbers: list[int]) -> str:
    """The responses' ``model`` field, the same on every line; the file's stem when absent."""
    names = {c.model for c in completions}
    if len(names) > 1:
        first = completions[0].model
        at = next(i for i, c in enumerate(completions) if c.model != first)
        other = completions[at].model
        raise IngestError(
            f"{'missing' if other is None else f'is {other!r}'} but line {numbers[0]} "
            f"{'has none' if first is None else f'has {first!r}'}: one model per file",
            file=str(path),
            line=numbers[at],
            field="model",
        )
    name = names.pop() if names else None
    if name is None:
        name = path.name.removesuffix(".gz").removesuffix(".jsonl")
    if not name:
        line = numbers[0] if numbers else None
        raise IngestError("is empty: a model needs a name", file=str(path), line=line, field="model")
    return name
