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

from ingest.errors import IngestError
from ingest.tokens import api_token, token_bytes

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
            f"needs prompt_token_ids with one id per entry (vLLM: return_token_ids=true), got {ids!r:.60}",
            field="choices[0].prompt_token_ids",
        )
    names: dict[int, str] = {}
    for i, entry in enumerate(entries):
        if entry is None:
            continue
        if not isinstance(entry, Mapping):
            raise IngestError("is not an object", field=f"{field}[{i}]")
        for key, value in entry.items():
            if not isinstance(value, Mapping) or not isinstance(value.get("logprob"), (int, float)):
                raise IngestError("has no numeric logprob", field=f"{field}[{i}][{key!r}]")
            names[int(key)] = _vllm_token(int(key), value.get("decoded_token"), id_names)
    # The first token is named by the prompt alone (never by other entries), so that every
    # model's file names it alike; it is not scored.
    tokens = [_first_token(ids, names, prompt, id_names)] + [names[t] for t in ids[1:]] if ids else []
    token_lps: list[float | None] = []
    tops: list[dict[str, float] | None] = []
    for i, (entry, token_id) in enumerate(zip(entries, ids, strict=True)):
        if entry is None:
            if i:
                raise IngestError("is null after the first token", field=f"{field}[{i}]")
            token_lps.append(None)
            tops.append(None)
            continue
        actual = entry.get(str(token_id))
        if actual is None:
            raise IngestError(f"does not hold the actual token id {token_id}", field=f"{field}[{i}]")
        token_lps.append(actual["logprob"])
        ranked = sorted(entry.items(), key=lambda kv: kv[1].get("rank", 0))
        # Ranks are 1-based; the actual token is an extra entry only when it ranks below the
        # others (rank > entries), otherwise it is one of the top entries.
        k = len(entry) - (actual.get("rank", 0) > len(entry))
        tops.append({names[int(key)]: value["logprob"] for key, value in ranked[:k]})
    usage = {"prompt_tokens": len(ids)}
    return {"model": body.get("model"), "choices": [{"logprobs": {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops}}], "usage": usage}


def _vllm_token(token_id: int, decoded: Any, id_names: Sequence[str] | None) -> str:
    """A vLLM token's API string: from ``id_names``, else ``decoded_token``; without either, or
    for a partial character (U+FFFD), named by its id."""
    if id_names is not None and 0 <= token_id < len(id_names):
        return id_names[token_id]
    if isinstance(decoded, str) and "\ufffd" not in decoded:
        return decoded
    return f"<|id:{token_id}|>"


def _first_token(ids: list[int], names: Mapping[int, str], prompt: str | None, id_names: Sequence[str] | None) -> str:
    """The first prompt token, which no entry names: the text the prompt has before the rest."""
    if id_names is not None and 0 <= ids[0] < len(id_names):
        return id_names[ids[0]]
    rest = "".join(names[t] for t in ids[1:])
    if prompt is not None and "<|id:" not in rest and prompt.endswith(rest) and len(prompt) > len(rest):
        return prompt[: len(prompt) - len(rest)]
    return f"<|id:{ids[0]}|>"


def _chat(body: Mapping[str, Any], prompt: str | None, id_names: Sequence[str] | None) -> Mapping[str, Any]:
    content = _choice(body)["logprobs"]["content"]
    field = "choices[0].logprobs.content"
    if not isinstance(content, list):
        raise IngestError("is not a list", field=field)
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
        tops.append({_chat_token(t, f"{field}[{i}].top_logprobs[{j}]"): t.get("logprob") for j, t in enumerate(top)})
    text = b"".join(token_bytes(t) for t in tokens).decode("utf-8", errors="replace")
    logprobs = {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops}
    return {"model": body.get("model"), "choices": [{"text": text, "logprobs": logprobs}], "usage": {"prompt_tokens": len(tokens)}}


def _chat_token(item: Mapping[str, Any], field: str) -> str:
    """The API string of a chat token, from its ``bytes`` where given (they are exact)."""
    raw = item.get("bytes")
    if raw is not None:
        if not isinstance(raw, list) or not all(isinstance(b, int) and 0 <= b < 256 for b in raw):
            raise IngestError("is not a list of byte values", field=f"{field}.bytes")
        return api_token(bytes(raw))
    token = item.get("token")
    if not isinstance(token, str):
        raise IngestError("missing (and no bytes)", field=f"{field}.token")
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
