"""``/v1/chat/completions``: the whole response, or its server-sent chunks (``stream``: a first
chunk with the role, content deltas, a last one with ``finish_reason``), in OpenAI's chat shapes.
The reply's logprobs are ``content`` items; a generated token is not added to its top-k list."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from ingest.serve.choices import Choice, PromptRun, chat_logprobs, response_head, usage
from ingest.serve.generation import random_source
from ingest.serve.params import Chat


def answer_chat(req: Chat, lock: threading.Lock) -> dict[str, Any]:
    """The response to one non-streamed request."""
    run = _run(req, lock)
    for _ in run.run():
        pass
    choices = []
    for index, choice in enumerate(run.choices):
        text, tokens, _ = choice.take()
        choices.append({"index": index, "message": {"role": "assistant", "content": text},
                        "logprobs": _logprobs(req, tokens), "finish_reason": choice.finish_reason})
    return {**_head(req, "chat.completion"), "choices": choices, "usage": _usage(req, run.choices)}


def stream_chat(req: Chat, lock: threading.Lock) -> Iterator[dict[str, Any]]:
    """The chunks of one streamed request, then the usage chunk if asked."""
    head = _head(req, "chat.completion.chunk")
    if req.include_usage:
        head["usage"] = None
    run = _run(req, lock)
    for index in range(len(run.choices)):
        yield {**head, "choices": [_delta(index, {"role": "assistant", "content": ""}, None, None)]}
    for _ in run.run():
        for index, choice in enumerate(run.choices):
            text, tokens, _ = choice.take()
            if text or tokens:
                yield {**head, "choices": [_delta(index, {"content": text}, _logprobs(req, tokens), None)]}
    for index, choice in enumerate(run.choices):
        yield {**head, "choices": [_delta(index, {}, None, choice.finish_reason)]}
    if req.include_usage:
        yield {**head, "choices": [], "usage": _usage(req, run.choices)}


def _run(req: Chat, lock: threading.Lock) -> PromptRun:
    return PromptRun(req.model, req.prompt, req.sampling, lock=lock, generator=random_source(req.sampling.seed),
                     k=req.top_logprobs, echo=False)


def _delta(index: int, delta: dict[str, Any], logprobs: Any, finish: str | None) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}


def _logprobs(req: Chat, tokens: list[Any]) -> dict[str, Any] | None:
    return None if req.top_logprobs is None else chat_logprobs(req.model, tokens)


def _head(req: Chat, kind: str) -> dict[str, Any]:
    return response_head("chatcmpl", kind, req.model)


def _usage(req: Chat, choices: list[Choice]) -> dict[str, int]:
    return usage(len(req.prompt), sum(c.generated for c in choices))
