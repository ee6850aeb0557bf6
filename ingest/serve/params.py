"""What a completions or chat request asks, read and checked once where it enters ``approxft
serve``: every field of a bad request is answered with a 400 naming it (``RequestError``), before
any model runs.

Completions (``/v1/completions``): ``model``, ``prompt`` (a string, token ids, or a list of
either), ``echo``, ``logprobs`` (top-k, 0 up to the vocabulary size), ``max_tokens`` (0 allowed),
``temperature`` (0 = greedy, up to 2), ``n``, ``stop``, ``seed``, ``stream``,
``stream_options.include_usage``, and vLLM's ``prompt_logprobs``/``return_token_ids``.
Chat (``/v1/chat/completions``): ``messages`` (their contents joined by newlines, no chat
template), ``logprobs``, ``top_logprobs``, ``max_tokens``/``max_completion_tokens``, and the same
``temperature``, ``n``, ``stop``, ``seed``, ``stream``. Sampling options that ``serve`` does not
implement (``top_p``, penalties, ``logit_bias``, ``best_of``) are refused unless neutral, so that a
sample is never silently other than what was asked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from ingest.errors import shown
from ingest.serve.errors import RequestError, bad_request
from ingest.serve.model import LocalModel
from ingest.values import finite_number, is_integer, is_token_id

INT64 = (-(2**63), 2**63 - 1)


@dataclass(frozen=True)
class Limits:
    """Bounds on one request (``approxft serve --max-...``)."""

    max_body_bytes: int = 32 * 2**20
    max_prompts: int = 256
    max_n: int = 16
    max_stops: int = 16


@dataclass(frozen=True)
class Sampling:
    """How each choice is generated: ``n`` samples of up to ``max_tokens`` tokens after a prompt,
    at ``temperature`` (0 = greedy), cut before the first of ``stops``; ``seed`` makes the draws
    reproducible."""

    max_tokens: int
    temperature: float
    n: int
    stops: tuple[str, ...]
    seed: int | None


@dataclass(frozen=True)
class Completion:
    """One ``/v1/completions`` request: token ids of each prompt, what to score and show."""

    model: LocalModel
    prompts: list[list[int]]
    sampling: Sampling
    echo: bool
    logprobs: int | None
    prompt_logprobs: int | None
    return_token_ids: bool
    stream: bool
    include_usage: bool


@dataclass(frozen=True)
class Chat:
    """One ``/v1/chat/completions`` request: the prompt's ids (the messages' contents, one per
    line) and the top-k of each generated token (``None``: no logprobs)."""

    model: LocalModel
    prompt: list[int]
    sampling: Sampling
    top_logprobs: int | None
    stream: bool
    include_usage: bool


def find_model(models: Mapping[str, LocalModel], body: Any) -> LocalModel:
    """The model a request body names; 400 for a body that is not an object, 404 for no such model."""
    if not isinstance(body, Mapping):
        raise bad_request("the request body must be a JSON object")
    name = body.get("model")
    if not isinstance(name, str):
        raise bad_request(f"model must be a string naming one of: {', '.join(models)}", "model")
    if name not in models:
        raise RequestError(HTTPStatus.NOT_FOUND, f"The model '{name}' does not exist", param="model", code="model_not_found")
    return models[name]


def parse_completion(models: Mapping[str, LocalModel], body: Any, limits: Limits) -> Completion:
    """A checked ``/v1/completions`` request."""
    model = find_model(models, body)
    vocab = model.vocab_size
    stream, include_usage = _stream(body)
    prompt_k = integer(body, "prompt_logprobs", None, 0, vocab)
    if stream and prompt_k is not None:
        raise bad_request("prompt_logprobs cannot be streamed", "prompt_logprobs")
    prompts = _prompts(body.get("prompt"), model, limits)
    sampling = _sampling(body, max_tokens=integer(body, "max_tokens", 16, 0, model.max_context), limits=limits)
    for ids in prompts:
        check_context(model, ids, sampling.max_tokens)
    return Completion(
        model=model,
        prompts=prompts,
        sampling=sampling,
        echo=flag(body, "echo", False),
        logprobs=integer(body, "logprobs", None, 0, vocab),
        prompt_logprobs=prompt_k,
        return_token_ids=flag(body, "return_token_ids", False),
        stream=stream,
        include_usage=include_usage,
    )


def parse_chat(models: Mapping[str, LocalModel], body: Any, limits: Limits) -> Chat:
    """A checked ``/v1/chat/completions`` request."""
    model = find_model(models, body)
    stream, include_usage = _stream(body)
    prompt = model.encode(message_text(body.get("messages")))
    if not prompt:
        raise bad_request("messages hold no text: the prompt is empty", "messages")
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    sampling = _sampling(body, max_tokens=integer(body, name, 16, 0, model.max_context), limits=limits)
    check_context(model, prompt, sampling.max_tokens)
    k = integer(body, "top_logprobs", 0, 0, model.vocab_size)
    return Chat(
        model=model,
        prompt=prompt,
        sampling=sampling,
        top_logprobs=k if flag(body, "logprobs", False) else None,
        stream=stream,
        include_usage=include_usage,
    )


def message_text(messages: Any) -> str:
    """The prompt of a chat request: each message's content (a string, or a list of text parts),
    one per line."""
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list of {role, content}", "messages")
    lines = []
    for index, message in enumerate(messages):
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, list) and all(isinstance(p, Mapping) and isinstance(p.get("text"), str) for p in content):
            content = "".join(p["text"] for p in content)
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str) or not isinstance(content, str):
            raise bad_request(f"messages[{index}] must be {{role: string, content: string or text parts}}", "messages")
        lines.append(content)
    return "\n".join(lines)


def check_context(model: LocalModel, ids: list[int], max_tokens: int) -> None:
    """400 when a prompt and its completion do not fit the model's context."""
    if len(ids) + max_tokens > model.max_context:
        raise RequestError(
            HTTPStatus.BAD_REQUEST,
            f"This model's maximum context length is {model.max_context} tokens, however you requested "
            f"{len(ids) + max_tokens} tokens ({len(ids)} in your prompt; {max_tokens} for the completion)",
            param="prompt",
            code="context_length_exceeded",
        )


def integer(body: Mapping[str, Any], name: str, default: Any, low: int, high: int) -> Any:
    """An integer field in ``low..high`` (``default`` when absent or null); booleans are not integers."""
    value = body.get(name)
    if value is None:
        return default
    if not is_integer(value) or not low <= value <= high:
        raise bad_request(f"{name} must be an integer in {low}..{high}, got {shown(value)}", name)
    return value


def flag(body: Mapping[str, Any], name: str, default: bool) -> bool:
    """A boolean field (``default`` when absent or null)."""
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad_request(f"{name} must be true or false, got {shown(value)}", name)
    return value


def _number(body: Mapping[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    x = finite_number(value)
    if x is None or not low <= x <= high:
        raise bad_request(f"{name} must be a number in [{low:g}, {high:g}], got {shown(value)}", name)
    return x


def _stream(body: Mapping[str, Any]) -> tuple[bool, bool]:
    """``stream`` and ``stream_options.include_usage``."""
    stream = flag(body, "stream", False)
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not stream:
        raise bad_request("stream_options is only allowed with stream: true", "stream_options")
    if not isinstance(options, Mapping):
        raise bad_request("stream_options must be an object", "stream_options")
    return stream, flag(options, "include_usage", False)


#: Sampling options serve does not implement, with the value that means "off".
_NEUTRAL = {"top_p": 1, "frequency_penalty": 0, "presence_penalty": 0, "logit_bias": {}, "suffix": ""}


def _sampling(body: Mapping[str, Any], *, max_tokens: int, limits: Limits) -> Sampling:
    for name, neutral in _NEUTRAL.items():
        if body.get(name) is not None and body[name] != neutral:
            raise bad_request(f"{name} is not supported by approxft serve (only {neutral!r})", name)
    n = integer(body, "n", 1, 1, limits.max_n)
    integer(body, "best_of", n, n, n)  # only best_of = n: every sample is returned
    return Sampling(
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        n=n,
        stops=_stops(body.get("stop"), limits),
        seed=integer(body, "seed", None, *INT64),
    )


def _stops(stop: Any, limits: Limits) -> tuple[str, ...]:
    stops = [stop] if isinstance(stop, str) else stop
    if stops is None:
        return ()
    if not isinstance(stops, list) or len(stops) > limits.max_stops or not all(isinstance(s, str) and s for s in stops):
        raise bad_request(f"stop must be a non-empty string or a list of at most {limits.max_stops} of them", "stop")
    return tuple(stops)


def _prompts(prompt: Any, model: LocalModel, limits: Limits) -> list[list[int]]:
    """Token ids of each prompt: a string, a list of token ids, or a list of either."""
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(map(is_integer, prompt))):
        prompt = [prompt]
    if not isinstance(prompt, list) or not prompt:
        raise bad_request("prompt must be a string, a list of token ids, or a non-empty list of either", "prompt")
    if len(prompt) > limits.max_prompts:
        raise bad_request(f"at most {limits.max_prompts} prompts per request, got {len(prompt)}", "prompt")
    out = []
    for index, one in enumerate(prompt):
        if isinstance(one, str):
            ids = model.encode(one)
        elif isinstance(one, list) and all(map(is_integer, one)):
            ids = check_ids(model, one, f"prompt[{index}]", "prompt")
        else:
            raise bad_request(f"prompt[{index}] must be a string or a list of integer token ids", "prompt")
        if not ids:
            raise bad_request(f"prompt[{index}] is empty", "prompt")
        out.append(list(ids))
    return out


def check_ids(model: LocalModel, ids: list[int], name: str, param: str) -> list[int]:
    """``ids`` (integers), each a token id of ``model``; else a 400 naming ``param``."""
    if not all(is_token_id(t, model.vocab_size) for t in ids):
        raise bad_request(f"{name} has a token id outside 0..{model.vocab_size - 1}", param)
    return ids
