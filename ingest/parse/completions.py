"""Parse one legacy-completions response made with ``echo=True, logprobs=k``: a pure function.

Echo semantics: ``tokens`` are the prompt's tokens and the first one is not scored (the first
entries of ``token_logprobs`` and ``top_logprobs`` are null). The token at 0-based index ``p``
is predicted from ``p`` tokens of context; ``p = 1 .. n-1`` are the scored positions.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np

from ingest.errors import IngestError

#: A log-probability at or below this is a "not observed" placeholder (servers write -9999 or
#: -inf-like finite numbers), never a value. -inf itself is a real log-probability (zero mass).
SENTINEL_LP = -9999.0

LP_TOLERANCE = 1e-4
"""Largest log-probability accepted above 0, nats (float rounding of a certain token); beyond it
a value is not a log-probability."""

_LOGPROBS = "choices[0].logprobs"


@dataclass(frozen=True)
class Completion:
    """One echo-scored prompt. Log-probabilities are natural logs; NaN means not observed.

    n = number of prompt tokens (a token generated after the prompt is removed), s = max(n-1, 0)
    scored positions, m = observed top-k entries in all.
    """

    model: str | None
    tokens: list[str]
    """(n,) prompt token strings as the API wrote them."""
    target_lp: np.ndarray
    """float32 (s,): exact log-prob of ``tokens[1:]`` (from ``token_logprobs``), NaN = not observed."""
    top_tokens: list[str]
    """(m,) every scored position's observed top-k tokens, by log-prob descending, concatenated."""
    top_lp: np.ndarray
    """float32 (m,): their log-probs (finite or -inf)."""
    top_counts: np.ndarray
    """int32 (s,): observed top-k entries per scored position (sums to m)."""
    list_sizes: np.ndarray
    """int32 (s,): entries per ``top_logprobs`` list as returned, not counting the actual token
    where it is the list's lowest entry (OpenAI appends it when it is outside the top k): the
    evidence for k when nothing else gives it."""


def parse_completion(
    response: Mapping[str, Any], *, max_tokens: int | None = None, prompt: str | None = None
) -> Completion:
    """Parse one response dict; raise IngestError naming the field at fault.

    Which tokens belong to the prompt: ``usage.prompt_tokens`` when present; otherwise the
    tokens whose ``text_offset`` lies before the end of ``prompt`` (the request's prompt text)
    when it is given; otherwise all of them, which is only safe when the request did not
    generate (``max_tokens`` 0 or unknown).
    """
    logprobs = _logprobs(response)
    tokens = _list(logprobs, "tokens")
    token_lps = _list(logprobs, "token_logprobs")
    top = _list(logprobs, "top_logprobs")
    text_offset = _list(logprobs, "text_offset") if logprobs.get("text_offset") is not None else None
    for name, values in (("token_logprobs", token_lps), ("top_logprobs", top), ("text_offset", text_offset)):
        if values is not None and len(values) != len(tokens):
            raise IngestError(
                f"has {len(values)} entries but tokens has {len(tokens)}", field=f"{_LOGPROBS}.{name}"
            )
    for i, token in enumerate(tokens):
        if not isinstance(token, str):
            raise IngestError(f"is {token!r}, not a string", field=f"{_LOGPROBS}.tokens[{i}]")

    n = _prompt_tokens(response, len(tokens), text_offset, max_tokens=max_tokens, prompt=prompt)
    tokens = tokens[:n]
    try:
        target_lp = _observed(_floats(token_lps[1:n]))
    except _NotALogProb as bad:
        raise IngestError(bad.problem, field=f"{_LOGPROBS}.token_logprobs[{bad.index + 1}]") from None
    top_tokens, top_lp, top_counts, list_sizes = _top_lists(top[1:n], tokens)
    model = response.get("model")
    if model is not None and not isinstance(model, str):
        raise IngestError(f"is {model!r}, not a string", field="model")
    return Completion(
        model=model,
        tokens=tokens,
        target_lp=target_lp.astype(np.float32),
        top_tokens=top_tokens,
        top_lp=top_lp.astype(np.float32),
        top_counts=top_counts,
        list_sizes=list_sizes,
    )


def _logprobs(response: Mapping[str, Any]) -> Mapping[str, Any]:
    if not isinstance(response, Mapping):
        raise IngestError(f"is a JSON {type(response).__name__}, not an object", field="response")
    choices = response.get("choices")
    if choices is None:
        raise IngestError("missing", field="choices")
    if not isinstance(choices, list) or not choices:
        raise IngestError("is not a non-empty list", field="choices")
    if not isinstance(choices[0], Mapping):
        raise IngestError("is not an object", field="choices[0]")
    logprobs = choices[0].get("logprobs")
    if logprobs is None:
        raise IngestError("missing", field=_LOGPROBS)
    if not isinstance(logprobs, Mapping):
        raise IngestError("is not an object", field=_LOGPROBS)
    return logprobs


def _list(logprobs: Mapping[str, Any], name: str) -> list[Any]:
    values = logprobs.get(name)
    if values is None:
        raise IngestError("missing", field=f"{_LOGPROBS}.{name}")
    if not isinstance(values, list):
        raise IngestError("is not a list", field=f"{_LOGPROBS}.{name}")
    return values


def _prompt_tokens(
    response: Mapping[str, Any],
    n_tokens: int,
    text_offset: list[Any] | None,
    *,
    max_tokens: int | None,
    prompt: str | None,
) -> int:
    """How many leading tokens are the prompt's: servers that reject ``max_tokens=0`` are called
    with 1 and append the token they generate."""
    usage = response.get("usage")
    if isinstance(usage, Mapping) and usage.get("prompt_tokens") is not None:
        n = usage["prompt_tokens"]
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= n_tokens:
            raise IngestError(f"is {n!r}, but the response has {n_tokens} tokens", field="usage.prompt_tokens")
        return n
    if prompt is not None:
        if text_offset is None:
            raise IngestError(
                "missing (no usage.prompt_tokens either): cannot tell the prompt's tokens from generated ones",
                field=f"{_LOGPROBS}.text_offset",
            )
        for i, offset in enumerate(text_offset):
            if not isinstance(offset, int) or isinstance(offset, bool):
                raise IngestError(f"is {offset!r}, not an integer", field=f"{_LOGPROBS}.text_offset[{i}]")
        # Generated text starts where the prompt ends; offsets are non-decreasing character counts.
        return bisect_left(text_offset, len(prompt))
    if max_tokens:
        raise IngestError(
            f"missing and the request has max_tokens={max_tokens}: cannot tell the prompt's tokens "
            "from generated ones (the manifest's params.prompt would tell)",
            field="usage.prompt_tokens",
        )
    return n_tokens


class _NotALogProb(Exception):
    """values[index] cannot be a log-probability; the caller names the field."""

    def __init__(self, index: int, problem: str) -> None:
        super().__init__(problem)
        self.index = index
        self.problem = problem


def _floats(values: list[Any]) -> np.ndarray:
    """float64 array of JSON numbers, null -> NaN; raise _NotALogProb for a non-number, or a
    value above ``LP_TOLERANCE`` (+inf included)."""
    try:
        array = np.array(values, dtype=np.float64)
    except (TypeError, ValueError):
        for i, value in enumerate(values):
            if value is not None and not isinstance(value, (int, float)):
                raise _NotALogProb(i, f"is {value!r}, not a number") from None
        raise
    above = array > LP_TOLERANCE
    if above.any():
        i = int(np.flatnonzero(above)[0])
        raise _NotALogProb(i, f"is {values[i]!r}, above 0: not a log-probability (tolerance {LP_TOLERANCE:g})")
    return array


def _observed(lp: np.ndarray) -> np.ndarray:
    """``lp`` with "not observed" placeholders (NaN, or finite and <= SENTINEL_LP) as NaN."""
    return np.where(np.isfinite(lp) & (lp <= SENTINEL_LP), np.nan, lp)


def _top_lists(
    top: list[Any], tokens: list[str]
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Flatten ``top_logprobs[1:n]``: observed entries only, sorted by log-prob descending."""
    for i, entry in enumerate(top, start=1):
        if not isinstance(entry, dict):
            raise IngestError(f"is {entry!r}, not an object", field=f"{_LOGPROBS}.top_logprobs[{i}]")
    keys: list[str] = list(chain.from_iterable(top))
    values = list(chain.from_iterable(map(dict.values, top)))
    sizes = list(map(len, top))
    n_scored = len(top)
    size = np.array(sizes, dtype=np.int64)
    try:
        lp = _observed(_floats(values))
    except _NotALogProb as bad:
        i = int(np.searchsorted(np.cumsum(size), bad.index, side="right"))
        field = f"{_LOGPROBS}.top_logprobs[{i + 1}][{keys[bad.index]!r}]"
        raise IngestError(bad.problem, field=field) from None
    seen = ~np.isnan(lp)
    position = np.repeat(np.arange(n_scored), size)
    # Servers usually send each list sorted and complete: then there is nothing to reorder.
    in_order = (lp[1:] <= lp[:-1]) | (position[1:] != position[:-1])
    if not (seen.all() and in_order.all()):
        # Per position: observed first, then log-prob descending; lexsort is stable, so ties
        # keep the server's order.
        order = np.lexsort((-lp, ~seen, position))
        order = order[seen[order]]
        keys = [keys[j] for j in order]
        lp = lp[order]
    counts = np.bincount(position[seen], minlength=n_scored).astype(np.int32)
    # The lowest observed entry of each list: is it the actual token?
    lowest = np.maximum(np.cumsum(counts) - 1, 0).tolist()
    appended = np.zeros(n_scored, dtype=bool)
    if keys:
        appended[:] = [keys[j] == t for j, t in zip(lowest, tokens[1:], strict=True)]
        appended &= counts > 0
    return keys, lp, counts, (size - appended).astype(np.int32)
