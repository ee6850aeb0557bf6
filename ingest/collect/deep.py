"""The deep sample of a collection: the calibration requests' answers at sampled positions (raw
``<role>.calibration.jsonl``, or ``<role>.calibration.jsonl.gz`` for whole distributions) as a
deep sample folder (``ingest.deep_sample``), one ``<role>.npz`` per role with ``request`` and
``position`` naming its rows.

Top-K answers become ``ids``/``lp`` lists over the tokens they use. Whole distributions
(``--calibration-k all``) become ``full`` rows over the manifest tokenizer's vocabulary, whose
token strings in id order are ``token_strings.json``: each record is read from the raw log as a
stream, checked, and turned into its uint16 row (V x 2 bytes) at once, so that a role holds
its rows and nothing of the JSON (about 1.5 MB per record for GPT-2's 50,257 tokens).
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ingest.collect.jobs import ManifestRequest
from ingest.collect.rawlog import is_success
from ingest.deep_sample import (
    FULL_MASS_TOLERANCE,
    DeepLists,
    quantize_full,
    write_deep_sample,
)
from ingest.errors import IngestError
from ingest.jsonl import read_json_lines
from ingest.prepare.tokenizer import tokenizer_vocabulary

__all__ = ["manifest_vocabulary", "write_deep"]

_ID = re.compile(r"calibration-(\d+)-(\d+)")
_TOP = "choices[0].logprobs.top_logprobs[0]"
_TOKEN_ID = "token_id:"
"""vLLM's name for a token under ``--return-tokens-as-token-ids``: ``token_id:<id>``."""


def manifest_vocabulary(requests: Sequence[ManifestRequest], *, file: str, fallback: str | None = None) -> list[str]:
    """(V,) the token strings, in id order, of the tokenizer that prepared a manifest (its
    requests' ``tokenizer``, e.g. ``gpt2`` -> 50,257 strings): the columns of whole
    distributions. A manifest whose lines name none (prepared before approxft recorded it) takes
    ``fallback``'s (``--tokenizer``) where every token of its lines is one of that tokenizer's.

    Raises:
        IngestError: a line names no tokenizer (and the fallback's vocabulary lacks one of the
            manifest's tokens), or another one than the first line, or the tokenizer's
            vocabulary is not known (``ingest.prepare.tokenizer.tokenizer_vocabulary``).
    """
    first: dict[str | None, int | None] = {}  # tokenizer name -> first line naming it
    for r in requests:
        first.setdefault(r.tokenizer, r.line)
    if set(first) == {None} and fallback is not None:
        vocabulary = tokenizer_vocabulary(fallback)
        known = set(vocabulary)
        for r in requests:
            missing = next((t for t in r.tokens or () if t not in known), None)
            if missing is not None:
                raise IngestError(f"names no tokenizer, and holds {missing!r}, which is not one of --tokenizer "
                                  f"{fallback}'s {len(vocabulary)} tokens: prepare the corpus again with its tokenizer",
                                  file=file, line=r.line, field="tokens")
        return vocabulary
    if None in first or not first:
        raise IngestError("missing: --calibration-k all needs the name of the tokenizer that prepared the manifest "
                          "(approxft prepare and collect record it: prepare the corpus again, e.g. --tokenizer gpt2)",
                          file=file, line=first.get(None, 1), field="tokenizer")
    if len(first) > 1:
        raise IngestError(f"names {len(first)} tokenizers ({', '.join(map(str, first))}): one manifest, one tokenizer",
                          file=file, line=max(line or 0 for line in first.values()), field="tokenizer")
    try:
        return tokenizer_vocabulary(next(iter(first)))  # type: ignore[arg-type]
    except IngestError as err:
        raise err.located(file=file, line=1) from None


def write_deep(raw_files: Mapping[str, Path], requests: Sequence[ManifestRequest], out: Path, *,
               sample: Collection[tuple[int, int]], vocabulary: Sequence[str] | None = None,
               listed: Collection[str] = ()) -> list[Path]:
    """Write ``out/<role>.npz`` for each role's calibration raw file and ``out/token_strings.json``,
    all together or none (``ingest.deep_sample.write_deep_sample``); a role's rows are the
    positions of ``sample`` (``(request index, position)``, the run's draw) its file answers,
    sorted by (request, position): answers to an earlier run's draw (another N or seed) are left out.

    Without ``vocabulary``, each role has ``ids``/``lp`` lists and the actual token's value is its
    list entry's (NaN where the list misses it). With it (the manifest tokenizer's (V,) token
    strings), each role has ``full`` (uint16 ``(n, V)``) and ``target_lp`` the actual token's
    float32 value, and token_strings.json is ``vocabulary``; but the roles in ``listed`` (asked
    for top-K lists: an endpoint that caps k) have lists whose ids index ``vocabulary``.

    Raises:
        IngestError, naming the raw file, line and field: a custom id that is not a calibration
            one, a missing list; for whole distributions, a token not among ``vocabulary``
            (another tokenizer), a token missing, a value that is NaN, +inf or positive, or a
            total probability off by more than ``FULL_MASS_TOLERANCE``.
    """
    tokens_of = {r.index: r.tokens for r in requests}
    if vocabulary is not None:
        index = {token: i for i, token in enumerate(vocabulary)}
        full = ((role, _top_lists(path, sample, tokens_of, index, fixed=True) if role in listed
                 else _full_lists(path, sample, tokens_of, index)) for role, path in raw_files.items())
        return write_deep_sample(out, full, vocabulary)
    vocab: dict[str, int] = {}
    lists = [(role, _top_lists(path, sample, tokens_of, vocab)) for role, path in raw_files.items()]
    return write_deep_sample(out, lists, list(vocab))


def _answers(path: Path, sample: Collection[tuple[int, int]]) -> Iterator[tuple[int, tuple[int, int], Mapping[str, Any]]]:
    """``(line, (request, position), top list)`` of each successful record of a ``sample``
    position, streamed."""
    for number, record in read_json_lines(path):
        if not is_success(record):
            continue
        match = _ID.fullmatch(str(record.get("custom_id")))
        if match is None:
            raise IngestError("is not calibration-<i>-<p>", file=str(path), line=number, field="custom_id")
        key = int(match.group(1)), int(match.group(2))
        if key not in sample:
            continue
        try:
            top = record["response"]["body"]["choices"][0]["logprobs"]["top_logprobs"][0]
        except (KeyError, IndexError, TypeError):
            raise IngestError("missing", file=str(path), line=number, field=_TOP) from None
        if not isinstance(top, Mapping):
            raise IngestError("is not an object of token -> log-probability", file=str(path), line=number, field=_TOP)
        yield number, key, top


def _actual(tokens_of: Mapping[int, list[str] | None], key: tuple[int, int]) -> str | None:
    tokens = tokens_of.get(key[0])
    return tokens[key[1]] if tokens is not None and key[1] < len(tokens) else None


def _named(keys: Sequence[tuple[int, int]]) -> dict[str, np.ndarray]:
    return {"request": np.array([key[0] for key in keys], dtype=np.int32),
            "position": np.array([key[1] for key in keys], dtype=np.int32)}


def _top_lists(path: Path, sample: Collection[tuple[int, int]], tokens_of: Mapping[int, list[str] | None],
               vocab: dict[str, int], *, fixed: bool = False) -> DeepLists:
    """A role's top-K lists; ids index ``vocab``, which grows with the tokens seen, or with
    ``fixed`` (the manifest tokenizer's vocabulary, beside whole distributions) must hold them."""
    answers = {key: (number, top) for number, key, top in _answers(path, sample)}
    keys = sorted(answers)
    k = max((len(answers[key][1]) for key in keys), default=0)
    ids = np.full((len(keys), k), -1, dtype=np.int32)
    lp = np.full((len(keys), k), -np.inf, dtype=np.float32)
    target_lp = np.full(len(keys), np.nan, dtype=np.float32)
    for row, key in enumerate(keys):
        number, top = answers[key]
        ranked = sorted(top.items(), key=lambda kv: -kv[1])
        if fixed:
            columns = [_column(token, vocab) for token, _ in ranked]
            if min(columns, default=0) < 0:
                raise IngestError(f"lists {ranked[columns.index(-1)][0]!r}, which is not one of the {len(vocab)} tokens "
                                  "of the manifest's tokenizer (a model with another tokenizer?)", file=str(path),
                                  line=number, field=_TOP)
            ids[row, : len(ranked)] = columns
        else:
            ids[row, : len(ranked)] = [vocab.setdefault(token, len(vocab)) for token, _ in ranked]
        lp[row, : len(ranked)] = [value for _, value in ranked]
        actual = _actual(tokens_of, key)
        if actual in top:
            target_lp[row] = top[actual]
    return DeepLists(ids=ids, lp=lp, target_lp=target_lp, **_named(keys))


def _full_lists(path: Path, sample: Collection[tuple[int, int]], tokens_of: Mapping[int, list[str] | None],
                index: Mapping[str, int]) -> DeepLists:
    """A role's whole distributions: one uint16 row per record, made as the record is read."""
    rows: dict[tuple[int, int], tuple[np.ndarray, float]] = {}
    for number, key, top in _answers(path, sample):
        lp = _full_row(top, index, file=str(path), line=number)
        actual = _actual(tokens_of, key)
        column = index.get(actual) if actual is not None else None
        rows[key] = quantize_full(lp), float(lp[column]) if column is not None else math.nan
    keys = sorted(rows)
    full = np.empty((len(keys), len(index)), dtype=np.uint16)
    target_lp = np.empty(len(keys), dtype=np.float32)
    for i, key in enumerate(keys):
        full[i], target_lp[i] = rows.pop(key)  # each row freed as it is copied
    return DeepLists(ids=None, lp=None, target_lp=target_lp, full=full, **_named(keys))


def _full_row(top: Mapping[str, Any], index: Mapping[str, int], *, file: str, line: int) -> np.ndarray:
    """float64 ``(V,)``: one response's whole distribution by token id, checked."""
    n_vocab = len(index)
    columns = np.fromiter((_column(token, index) for token in top), dtype=np.int64, count=len(top))
    if (columns < 0).any():
        token = list(top)[int(np.argmax(columns < 0))]
        raise IngestError(f"lists {token!r}, which is not one of the {n_vocab} tokens of the manifest's tokenizer "
                          "(a model with another tokenizer?)", file=file, line=line, field=_TOP)
    try:
        values = np.fromiter(top.values(), dtype=np.float64, count=len(top))
    except (TypeError, ValueError):
        raise IngestError("holds a value that is not a number", file=file, line=line, field=_TOP) from None
    bad = np.flatnonzero(~(values <= 0))  # NaN, +inf and positive values
    if bad.size:
        token = list(top)[int(bad[0])]
        raise IngestError(f"{token!r}: {float(values[bad[0]])!r} is not a log-probability", file=file, line=line, field=_TOP)
    lp = np.full(n_vocab, np.nan)
    lp[columns] = values
    missing = np.flatnonzero(np.isnan(lp))
    if missing.size:
        raise IngestError(f"lists {n_vocab - missing.size} of the {n_vocab} tokens, not the whole distribution "
                          f"(e.g. token {int(missing[0])} is missing)", file=file, line=line, field=_TOP)
    top_value = lp.max()
    mass = math.exp(top_value) * float(np.exp(lp - top_value).sum())
    if not abs(mass - 1) <= FULL_MASS_TOLERANCE:
        raise IngestError(f"total probability {mass:.6g}, off by more than {FULL_MASS_TOLERANCE:g} (not a normalized "
                          "distribution; move the raw file aside to collect it again)", file=file, line=line, field=_TOP)
    return lp


def _column(token: str, index: Mapping[str, int]) -> int:
    """The id of a response's token: its string's, or vLLM's ``token_id:<id>``; -1 if neither."""
    column = index.get(token)
    if column is not None:
        return column
    if token.startswith(_TOKEN_ID) and token[len(_TOKEN_ID):].isdigit():
        column = int(token[len(_TOKEN_ID):])
        return column if column < len(index) else -1
    return -1
