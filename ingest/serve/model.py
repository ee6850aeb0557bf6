"""What ``approxft serve`` answers with: local Hugging Face causal LMs behind OpenAI-compatible
completions (HTTP in ``ingest.serve.http``, the Batch API in ``ingest.serve.batch_api``). Needs the
``local`` extra (torch, transformers), imported lazily.

Supported request fields: ``model``, ``prompt`` (a string, a list of token ids, or a list of
either), ``echo``, ``logprobs`` (top-k, 0 up to the vocabulary size: the full distribution),
``max_tokens`` (0 allowed), ``temperature`` (0 = greedy), ``seed``, and vLLM's
``prompt_logprobs``/``return_token_ids``. ``/v1/chat/completions`` takes ``messages`` (their
contents joined by newlines, no chat template), ``logprobs``, ``top_logprobs``, ``max_tokens``. Log-probabilities are natural
logs of the untempered distribution, float32 values. Token strings are what OpenAI writes: the
token's text, or ``bytes:\\xNN...`` when its bytes are not valid UTF-8 on their own.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

from ingest.prepare.bpe import bytes_to_unicode
from ingest.tokens import api_token, token_bytes

INSTALL_HINT = "approxft serve needs torch and transformers: pip install 'approxft[local]'"


class RequestError(Exception):
    """A bad request: answered with an OpenAI-style error body."""

    def __init__(self, status: HTTPStatus, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": str(self), "type": kind, "param": self.param, "code": self.code}}


@dataclass
class LocalModel:
    """One loaded model: its name, the torch module, the tokenizer, and each id's API string."""

    name: str
    model: Any
    tokenizer: Any
    token_strings: list[str]
    """(V,) API token string of every id."""
    max_context: int


def load_model(directory: str | Path, name: str | None = None) -> LocalModel:
    """Load a causal LM and its tokenizer from ``directory`` (offline); float32, eval mode."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise RuntimeError(INSTALL_HINT) from None
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: model directory not found")
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True, dtype=torch.float32)
    model.eval()
    vocab_size = model.get_output_embeddings().weight.shape[0]
    max_context = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", 2048)
    return LocalModel(
        name=name or directory.name,
        model=model,
        tokenizer=tokenizer,
        token_strings=_token_strings(tokenizer, vocab_size),
        max_context=int(max_context),
    )


def _token_strings(tokenizer: Any, vocab_size: int) -> list[str]:
    """API strings per id: byte-level vocabularies map back through GPT-2's byte table; others
    decode each id on its own."""
    char_byte = {c: b for b, c in bytes_to_unicode().items()}
    pieces = tokenizer.convert_ids_to_tokens(list(range(min(vocab_size, len(tokenizer)))))
    strings = []
    for index, piece in enumerate(pieces):
        if piece is not None and all(c in char_byte for c in piece):
            strings.append(api_token(bytes(char_byte[c] for c in piece)))
        else:
            strings.append(tokenizer.decode([index]))
    # Output rows beyond the tokenizer (padded embeddings) still need names.
    strings.extend(f"<|id:{i}|>" for i in range(len(strings), vocab_size))
    return strings


class Completer:
    """Answers completion requests for a set of loaded models, one forward pass at a time."""

    def __init__(self, models: Sequence[LocalModel]) -> None:
        self.models = {m.name: m for m in models}
        self._lock = threading.Lock()

    def list_models(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": name, "object": "model", "created": 0, "owned_by": "approxft"} for name in self.models],
        }

    def _model(self, body: Any) -> LocalModel:
        if not isinstance(body, Mapping):
            raise RequestError(HTTPStatus.BAD_REQUEST, "the request body must be a JSON object")
        model = self.models.get(body.get("model"))  # type: ignore[arg-type]
        if model is None:
            raise RequestError(
                HTTPStatus.NOT_FOUND, f"The model '{body.get('model')}' does not exist", param="model", code="model_not_found"
            )
        return model

    def chat(self, body: Any) -> dict[str, Any]:
        """The response to one ``/v1/chat/completions`` body: the messages' contents, one per
        line, are the prompt (no chat template); ``logprobs``/``top_logprobs`` score the reply."""
        model = self._model(body)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
            isinstance(m, Mapping) and isinstance(m.get("content"), str) for m in messages
        ):
            raise RequestError(HTTPStatus.BAD_REQUEST, "messages must be a non-empty list of {role, content}", param="messages")
        k = _option(body, "top_logprobs", int, 0) if _option(body, "logprobs", bool, False) else None
        if k is not None and not 0 <= k <= len(model.token_strings):
            raise RequestError(HTTPStatus.BAD_REQUEST, f"top_logprobs must be in 0..{len(model.token_strings)}", param="top_logprobs")
        max_tokens = _option(body, "max_completion_tokens", int, None) or _option(body, "max_tokens", int, 16)
        temperature = float(_option(body, "temperature", (int, float), 1.0))
        ids = model.tokenizer.encode("\n".join(m["content"] for m in messages), add_special_tokens=False)
        _check_context(model, ids, max_tokens)
        with self._lock:
            choice = _choice(model, ids, 0, echo=False, k=k, max_tokens=max_tokens, temperature=temperature,
                             seed=_option(body, "seed", int, None), add_generated=False)
        logprobs = choice["logprobs"]
        content = None
        if logprobs is not None:
            content = [
                {**_chat_token(token, value), "top_logprobs": [_chat_token(t, v) for t, v in top.items()]}
                for token, value, top in zip(logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"], strict=True)
            ]
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model.name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": choice["text"]},
                         "logprobs": None if content is None else {"content": content}, "finish_reason": "length"}],
            "usage": {"prompt_tokens": len(ids), "completion_tokens": max_tokens, "total_tokens": len(ids) + max_tokens},
        }

    def complete(self, body: Any) -> dict[str, Any]:
        """The response to one ``/v1/completions`` body; RequestError for a bad one."""
        model = self._model(body)
        echo = _option(body, "echo", bool, False)
        k = _option(body, "logprobs", int, None)
        if k is not None and not 0 <= k <= len(model.token_strings):
            raise RequestError(HTTPStatus.BAD_REQUEST, f"logprobs must be in 0..{len(model.token_strings)}", param="logprobs")
        max_tokens = _option(body, "max_tokens", int, 16)
        if max_tokens < 0:
            raise RequestError(HTTPStatus.BAD_REQUEST, "max_tokens must be >= 0", param="max_tokens")
        temperature = float(_option(body, "temperature", (int, float), 1.0))
        seed = _option(body, "seed", int, None)
        prompt_k = _option(body, "prompt_logprobs", int, None)
        if prompt_k is not None and not 0 <= prompt_k <= len(model.token_strings):
            raise RequestError(HTTPStatus.BAD_REQUEST, f"prompt_logprobs must be in 0..{len(model.token_strings)}", param="prompt_logprobs")
        return_ids = _option(body, "return_token_ids", bool, False)
        prompts = _prompts(body.get("prompt"), model)
        choices = []
        usage = {"prompt_tokens": 0, "completion_tokens": 0}
        with self._lock:
            for index, ids in enumerate(prompts):
                _check_context(model, ids, max_tokens)
                choices.append(_choice(model, ids, index, echo=echo, k=k, max_tokens=max_tokens, temperature=temperature,
                                       seed=seed, prompt_k=prompt_k, return_token_ids=return_ids))
                usage["prompt_tokens"] += len(ids)
                usage["completion_tokens"] += max_tokens
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model.name,
            "choices": choices,
            "usage": usage,
        }


def _check_context(model: LocalModel, ids: list[int], max_tokens: int) -> None:
    if len(ids) + max_tokens > model.max_context:
        raise RequestError(
            HTTPStatus.BAD_REQUEST,
            f"This model's maximum context length is {model.max_context} tokens, however you requested "
            f"{len(ids) + max_tokens} tokens ({len(ids)} in your prompt; {max_tokens} for the completion)",
            param="prompt",
            code="context_length_exceeded",
        )


def _chat_token(token: str, value: float) -> dict[str, Any]:
    """A chat ``logprobs.content`` item: the token's text, value, and exact bytes."""
    raw = token_bytes(token)
    return {"token": raw.decode("utf-8", errors="replace"), "logprob": value, "bytes": list(raw)}


def _option(body: Mapping[str, Any], name: str, kind: type | tuple[type, ...], default: Any) -> Any:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise RequestError(HTTPStatus.BAD_REQUEST, f"{name} has the wrong type: {value!r}", param=name)
    return value


def _prompts(prompt: Any, model: LocalModel) -> list[list[int]]:
    """Token ids of each prompt in the request."""
    def ids(one: Any) -> list[int]:
        if isinstance(one, str):
            return model.tokenizer.encode(one, add_special_tokens=False)
        if isinstance(one, list) and all(isinstance(t, int) and 0 <= t < len(model.token_strings) for t in one):
            return list(one)
        raise RequestError(HTTPStatus.BAD_REQUEST, "prompt must be a string, token ids, or a list of them", param="prompt")

    if isinstance(prompt, list) and prompt and not all(isinstance(t, int) for t in prompt):
        return [ids(p) for p in prompt]
    if prompt is None or prompt == []:
        raise RequestError(HTTPStatus.BAD_REQUEST, "prompt is required", param="prompt")
    return [ids(prompt)]


def _choice(
    model: LocalModel,
    prompt: list[int],
    index: int,
    *,
    echo: bool,
    k: int | None,
    max_tokens: int,
    temperature: float,
    seed: int | None,
    add_generated: bool = True,
    prompt_k: int | None = None,
    return_token_ids: bool = False,
) -> dict[str, Any]:
    """One choice: generate ``max_tokens`` tokens after ``prompt``, then score what is shown.
    ``add_generated``: like legacy OpenAI completions, add a generated token outside the top-k
    to its list (chat does not). ``prompt_k``: also vLLM's ``prompt_logprobs`` (token-id keys,
    ``logprob``/``rank``/``decoded_token``, the actual token included)."""
    import torch

    generator = torch.Generator().manual_seed(seed if seed is not None else int.from_bytes(uuid.uuid4().bytes[:4], "little"))
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(max_tokens):
            logits = model.model(torch.tensor([ids])).logits[0, -1].float()
            if temperature == 0:
                ids.append(int(torch.argmax(logits)))
            else:
                probs = torch.softmax(logits / temperature, dim=-1)
                ids.append(int(torch.multinomial(probs, 1, generator=generator)))
        lp = torch.log_softmax(model.model(torch.tensor([ids])).logits[0].float(), dim=-1) if ids else None
    shown = 0 if echo else len(prompt)
    tokens = [model.token_strings[i] for i in ids[shown:]]
    raw = [token_bytes(t) for t in tokens]
    text = b"".join(raw).decode("utf-8", errors="replace")
    if k is None:
        logprobs = None
    else:
        token_lps: list[float | None] = []
        tops: list[dict[str, float] | None] = []
        for pos in range(shown, len(ids)):
            if pos == 0:
                token_lps.append(None)
                tops.append(None)
                continue
            row = lp[pos - 1]  # type: ignore[index]
            token_lps.append(float(row[ids[pos]]))
            values, top_ids = torch.topk(row, k) if k else (row[:0], torch.zeros(0, dtype=torch.long))
            top = dict(zip((model.token_strings[i] for i in top_ids.tolist()), values.tolist(), strict=True))
            if add_generated and pos >= len(prompt):
                top.setdefault(model.token_strings[ids[pos]], float(row[ids[pos]]))
            tops.append(top)
        logprobs = {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops, "text_offset": _offsets(raw)}
    choice = {"text": text, "index": index, "logprobs": logprobs, "finish_reason": "length"}
    if prompt_k is not None:
        choice["prompt_logprobs"] = [None] + [_vllm_entry(model, lp[pos - 1], prompt[pos], prompt_k) for pos in range(1, len(prompt))]  # type: ignore[index]
    if return_token_ids:
        choice["prompt_token_ids"] = list(prompt)
    return choice


def _vllm_entry(model: LocalModel, row: Any, actual: int, k: int) -> dict[str, dict[str, Any]]:
    """One position of vLLM's ``prompt_logprobs``: the top-k and the actual token by id."""
    import torch

    def item(token_id: int, value: float, rank: int) -> dict[str, Any]:
        decoded = token_bytes(model.token_strings[token_id]).decode("utf-8", errors="replace")
        return {"logprob": value, "rank": rank, "decoded_token": decoded}

    values, top_ids = torch.topk(row, k)
    entry = {str(i): item(i, v, r) for r, (i, v) in enumerate(zip(top_ids.tolist(), values.tolist(), strict=True), start=1)}
    if str(actual) not in entry:
        entry[str(actual)] = item(actual, float(row[actual]), int((row > row[actual]).sum()) + 1)
    return entry


def _offsets(raw: list[bytes]) -> list[int]:
    """Character offset of each token in the text (a token starting inside a character counts
    from that character's start)."""
    offsets = []
    prefix = b""
    for piece in raw:
        offsets.append(len(prefix.decode("utf-8", errors="ignore")))
        prefix += piece
    return offsets
