"""One model's response file, read against the manifest: line i answers manifest request i (or
the request its ``custom_id`` names), checked, and matched where out of order, by content."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ingest.errors import IngestError
from ingest.jsonl import parse_json, read_lines
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
    """
    path = Path(path)
    file = str(path)
    records = [(number, parse_json(line, file=file, number=number)) for number, line in read_lines(path)]
    quirks: dict[str, int] = {}
    wrapped = bool(records) and is_wrapped(records[0][1])
    if wrapped:
        lines, quirks = unwrap(records, manifest.request_index.tolist(), tokens=manifest.tokens, file=file)
    else:
        lines = records
    if len(lines) != len(manifest):
        at = lines[len(manifest)][0] if len(lines) > len(manifest) else (lines[-1][0] + 1 if lines else 1)
        raise IngestError(
            f"{len(lines)} responses, but the manifest {manifest.path} has {len(manifest)} requests "
            "(one response per request, in its order)",
            file=file,
            line=at,
        )
    numbers = [number for number, _ in lines]
    texts = request_texts(manifest)

    def read(i: int, r: int) -> tuple[Completion, Spelling | None]:
        """Line i read for request r, and what it spells (None: nothing to check it against)."""
        completion, name, tokens = _read(lines[i][1], manifest.params[r], format, id_names, file, numbers[i])
        checkable = texts[r] is not None and name != "chat"
        return completion, Spelling.of(completion.tokens, tokens[len(completion.tokens):]) if checkable else None

    parsed = [read(i, i) for i in range(len(lines))]

    def reread(i: int, r: int) -> Spelling | None:
        parsed[i] = read(i, r)
        return parsed[i][1]

    match = match_by_content([s for _, s in parsed], texts, numbers=numbers, request_index=manifest.request_index.tolist(),
                             file=file, by="its custom_id" if wrapped else "its place in the file", reread=reread)
    line_of_row = np.empty(len(manifest), dtype=np.int64)
    line_of_row[match.request_of_line] = np.arange(len(manifest))
    completions = [parsed[i][0] for i in line_of_row]
    numbers = [numbers[i] for i in line_of_row]
    vocab = Vocabulary()
    token_ids = vocab.ids([t for c in completions for t in c.tokens])
    top_ids = vocab.ids([t for c in completions for t in c.top_tokens])
    n_tokens = np.array([len(c.tokens) for c in completions], dtype=np.int64)
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
