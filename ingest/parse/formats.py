"""Response formats, by name: each turns one response body into the legacy-completions shape
that ``ingest.parse.completions.parse_completion`` reads, so every format lands in the same store.

- ``completions``: legacy completions with ``echo=True, logprobs=k`` (``choices[0].logprobs.tokens``).
- ``vllm-prompt-logprobs``: vLLM's ``choices[0].prompt_logprobs``: per prompt token (the first is
  null) a dict of token id -> ``{logprob, rank, decoded_token}`` that holds the top-k and the
  actual token; the actual ids come from ``prompt_token_ids`` (in the choice or the response).
- ``chat``: chat completions ``choices[0].logprobs.content``: per generated token ``token``,
  ``logprob``, ``bytes``, ``top_logprobs``. Token strings and text are rebuilt from the bytes; the
  prompt is represented by one unscored empty token, so every generated token is a scored position.

Batch API output lines (and ``approxft collect``'s raw files, which share their shape) wrap a body
as ``{"custom_id", "response": {"status_code", "body"}, "error"}``; ``ingest.parse.model_file`` unwraps them.
All functions here are pure.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ingest.errors import IngestError, shown
from ingest.tokens import api_token, holds_id_token, id_token, token_bytes
from ingest.values import is_integer, is_token_id, number

#: (body, prompt text or None, API string per token id or None) -> legacy-shaped body.
Converter = Callable[[Mapping[str, Any], "str | None", "Sequence[str] | None"], Mapping[str, Any]]


def detect_format(body: Any) -> str:
    """The format of one response body (IngestError when none fits)."""
    choice = _choice(body)
    if "prompt_logprobs" in choice and choice["prompt_logprobs"] is not None:
        return "vllm-prompt-logprobs"
    logprobs = choice.get("logprobs")
    if isinstance(logprobs, Mapping) and "content" in logprobs:
        return "chat"
    return "completions"


def to_completions(
    body: Any, format: str | None = None, *, prompt: str | None = None, id_names: Sequence[str] | None = None  # noqa: A002
) -> Mapping[str, Any]:
    """``body`` in the legacy-completions shape; ``format`` None detects it.

    Formats that key tokens by id (vLLM) name them by ``id_names`` (the API string of every id,
    e.g. the GPT-2 vocabulary) when given, which is exact; otherwise by the server's decoded text,
    the first prompt token by what ``prompt`` has before the others.
    """
    name = format or detect_format(body)
    try:
        convert = FORMATS[name]
    except KeyError:
        raise IngestError(f"is {name!r}: expected one of {', '.join(FORMATS)}", field="format") from None
    return convert(body, prompt, id_names)


def _choice(body: Any) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise IngestError(f"is a JSON {type(body).__name__}, not an object", field="response")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
        raise IngestError("missing or not a non-empty list of objects", field="choices")
    return choices[0]


def _completions(body: Mapping[str, Any], prompt: str | None, id_names: Sequence[str] | None) -> Mapping[str, Any]:
    # The parser checks every scored token; the first, unscored, one is the server's here too
    # (chat's converter writes its own empty one).
    logprobs = _choice(body).get("logprobs")
    tokens = logprobs.get("tokens") if isinstance(logprobs, Mapping) else None
    if isinstance(tokens, list) and tokens and tokens[0] == "":
        raise IngestError("is empty: a prompt token spells at least one byte", field="choices[0].logprobs.tokens[0]")
    return body


def _vllm_prompt_logprobs(body: Mapping[str, Any], prompt: str | None, id_names: Sequence[str] | None) -> Mapping[str, Any]:
    choice = _choice(body)
    entries = choice["prompt_logprobs"]
    ids = choice.get("prompt_token_ids", body.get("prompt_token_ids"))
    field = "choices[0].prompt_logprobs"
    if not isinstance(entries, list):
        raise IngestError("is not a list", field=field)
    if not isinstance(ids, list) or len(ids) != len(entries):
        raise IngestError(
            f"needs prompt_token_ids with one id per entry (vLLM: return_token_ids=true), got {shown(ids)}",
            field="choices[0].prompt_token_ids",
        )
    for i, token_id in enumerate(ids):
        if not is_token_id(token_id):
            raise IngestError(f"is {shown(token_id)}, not a token id", field=f"choices[0].prompt_token_ids[{i}]")
    names = _VllmNames(id_names)
    token_lps: list[float | None] = []
    tops: list[dict[str, float] | None] = []
    for i, (entry, token_id) in enumerate(zip(entries, ids, strict=True)):
        if entry is None:
            if i:
                raise IngestError("is null after the first token", field=f"{field}[{i}]")
            token_lps.append(None)
            tops.append(None)
            continue
        if not isinstance(entry, Mapping):
            raise IngestError("is not an object", field=f"{field}[{i}]")
        listed = _vllm_entries(entry, names, f"{field}[{i}]")
        actual = listed.get(token_id)
        if actual is None:
            raise IngestError(f"does not hold the actual token id {token_id}", field=f"{field}[{i}]")
        token_lps.append(actual[0])
        ranks = [rank for _, rank in listed.values()]
        if None in ranks:
            # Without every rank the values order the list, and the parser takes an actual token
            # that is the lowest entry for one appended below the top k (as legacy lists).
            kept = list(listed)
        else:
            # Ranks are 1-based; the actual token is an extra entry only when it ranks below the
            # others (rank > entries), otherwise it is one of the top entries.
            extra = actual[1] > len(listed)
            kept = sorted((t for t in listed if not (extra and t == token_id)), key=lambda t: listed[t][1])
        tops.append({names.name(t): listed[t][0] for t in kept})
    # The first token is named by the prompt alone (never by other entries), so that every
    # model's file names it alike; it is not scored.
    tokens = [names.first(ids, prompt)] + [names.name(t) for t in ids[1:]] if ids else []
    usage = {"prompt_tokens": len(ids)}
    return {"model": body.get("model"), "choices": [{"logprobs": {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops}}], "usage": usage}


def _vllm_entries(entry: Mapping[str, Any], names: _VllmNames, field: str) -> dict[int, tuple[Any, int | None]]:
    """One position's entries as ``{token id: (logprob, rank or None)}``, their names recorded."""
    out: dict[int, tuple[Any, int | None]] = {}
    for key, value in entry.items():
        where = f"{field}[{key!r}]"
        if not (isinstance(key, str) and key.isascii() and key.isdigit()):
            raise IngestError("is not a token id", field=where)
        if not isinstance(value, Mapping):
            raise IngestError(f"is {shown(value)}: has no numeric logprob", field=where)
        if number(value.get("logprob")) is None:
            raise IngestError(f"has no numeric logprob (logprob is {shown(value.get('logprob'))})", field=where)
        rank = value.get("rank")
        if rank is not None and not (is_integer(rank) and rank >= 1):
            raise IngestError(f"is {shown(rank)}, not a 1-based rank (an integer, or null where unknown)", field=f"{where}.rank")
        token_id = int(key)
        names.add(token_id, value.get("decoded_token"), where)
        out[token_id] = (value["logprob"], rank)
    return out


class _VllmNames:
    """The API string of each token id a vLLM response lists: from ``id_names`` (exact) where
    given, else its ``decoded_token``; named by its id (``<|id:N|>``) where neither spells it
    (no text, empty text, or a partial character, U+FFFD). Two ids may not share a name."""

    def __init__(self, id_names: Sequence[str] | None) -> None:
        self.id_names = id_names
        self.names: dict[int, str] = {}
        self.owner: dict[str, int] = {}

    def add(self, token_id: int, decoded: Any, field: str) -> None:
        if token_id in self.names:
            return
        name = self._spelled(token_id, decoded) or id_token(token_id)
        other = self.owner.setdefault(name, token_id)
        if other != token_id:
            raise IngestError(
                f"decodes to {name!r}, as does token id {other}: name tokens exactly with --token-strings "
                "(or vLLM's --return-tokens-as-token-ids)",
                field=f"{field}.decoded_token",
            )
        self.names[token_id] = name

    def name(self, token_id: int) -> str:
        return self.names[token_id]

    def first(self, ids: list[int], prompt: str | None) -> str:
        """The first prompt token, which no entry names: the text the prompt has before the rest."""
        spelled = self._spelled(ids[0], None)
        if spelled:
            return spelled
        rest = "".join(self.names[t] for t in ids[1:])
        if prompt is not None and not holds_id_token(rest) and prompt.endswith(rest) and len(prompt) > len(rest):
            return prompt[: len(prompt) - len(rest)]
        return id_token(ids[0])

    def _spelled(self, token_id: int, decoded: Any) -> str | None:
        if self.id_names is not None and token_id < len(self.id_names):
            return self.id_names[token_id] or None
        if isinstance(decoded, str) and decoded and "\ufffd" not in decoded:
            return decoded
        return None


def _chat(body: Mapping[str, Any], prompt: str | None, id_names: Sequence[str] | None) -> Mapping[str, Any]:
    logprobs = _choice(body).get("logprobs")
    content = logprobs.get("content") if isinstance(logprobs, Mapping) else None
    field = "choices[0].logprobs.content"
    if not isinstance(content, list):
        raise IngestError("missing or not a list", field=field)
    # The prompt is one unscored token with no text: chat scores the tokens it generates.
    tokens = [""]
    token_lps: list[float | None] = [None]
    tops: list[dict[str, float] | None] = [None]
    for i, item in enumerate(content):
        if not isinstance(item, Mapping):
            raise IngestError("is not an object", field=f"{field}[{i}]")
        tokens.append(_chat_token(item, f"{field}[{i}]"))
        token_lps.append(item.get("logprob"))
        top = item.get("top_logprobs") or []
        if not isinstance(top, list):
            raise IngestError("is not a list", field=f"{field}[{i}].top_logprobs")
        listed: dict[str, Any] = {}
        for j, t in enumerate(top):
            where = f"{field}[{i}].top_logprobs[{j}]"
            if not isinstance(t, Mapping):
                raise IngestError("is not an object", field=where)
            token = _chat_token(t, where)
            if token in listed:
                raise IngestError(f"lists {token!r} a second time: a list holds each token once", field=where)
            listed[token] = t.get("logprob")
        tops.append(listed)
    text = b"".join(token_bytes(t) for t in tokens).decode("utf-8", errors="replace")
    logprobs = {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops}
    return {"model": body.get("model"), "choices": [{"text": text, "logprobs": logprobs}], "usage": {"prompt_tokens": len(tokens)}}


def _chat_token(item: Mapping[str, Any], field: str) -> str:
    """The API string of a chat token, from its ``bytes`` where given (they are exact)."""
    raw = item.get("bytes")
    if raw is not None:
        if not isinstance(raw, list) or not all(is_integer(b) and 0 <= b < 256 for b in raw):
            raise IngestError("is not a list of byte values", field=f"{field}.bytes")
        if not raw:
            raise IngestError("is empty: a token spells at least one byte", field=f"{field}.bytes")
        return api_token(bytes(raw))
    token = item.get("token")
    if not isinstance(token, str):
        raise IngestError("missing (and no bytes)", field=f"{field}.token")
    if not token:
        raise IngestError("is empty: a token spells at least one byte", field=f"{field}.token")
    return token


def load_token_strings(spec: str) -> list[str]:
    """The API string of every token id: ``gpt2`` (the bundled vocabulary) or a JSON list file."""
    if spec == "gpt2":
        from ingest.prepare.tokenizer import tokenizer_vocabulary

        return tokenizer_vocabulary(spec)
    try:
        strings = json.loads(Path(spec).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise IngestError(f"cannot be read as a JSON list: {err}", file=spec) from None
    if not isinstance(strings, list) or not all(isinstance(t, str) for t in strings):
        raise IngestError("is not a JSON list of strings", file=spec)
    return strings


#: Format name -> converter to the legacy-completions shape.
FORMATS: dict[str, Converter] = {
    "completions": _completions,
    "vllm-prompt-logprobs": _vllm_prompt_logprobs,
    "chat": _chat,
}
