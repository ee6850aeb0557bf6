"""``/v1/completions``: the whole response, or its server-sent chunks (``stream``), in OpenAI's
legacy completions shapes. Choice ``p * n + j`` is sample ``j`` of prompt ``p``."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from ingest.serve.choices import (
    Choice,
    PromptRun,
    completion_logprobs,
    response_head,
    usage,
    vllm_prompt_logprobs,
)
from ingest.serve.generation import random_source
from ingest.serve.params import Completion


def answer_completion(req: Completion, lock: threading.Lock) -> dict[str, Any]:
    """The response to one non-streamed request."""
    choices = []
    generated = 0
    generator = random_source(req.sampling.seed)
    for p, prompt in enumerate(req.prompts):
        run = _run(req, prompt, lock, generator)
        for _ in run.run():
            pass
        extras: dict[str, Any] = {}
        if req.prompt_logprobs is not None:
            extras["prompt_logprobs"] = vllm_prompt_logprobs(req.model, run.sampler.prompt_logprobs(), prompt, req.prompt_logprobs)
        if req.return_token_ids:
            extras["prompt_token_ids"] = list(prompt)
        for j, choice in enumerate(run.choices):
            choices.append({**_choice(req, choice, p * req.sampling.n + j), **extras})
            generated += choice.generated
    return {**_head(req), "choices": choices, "usage": _usage(req, generated)}


def stream_completion(req: Completion, lock: threading.Lock) -> Iterator[dict[str, Any]]:
    """The chunks of one streamed request: each choice's text (and logprobs) as it settles, its
    ``finish_reason`` in its last chunk, then the usage chunk if asked."""
    head = _head(req)
    if req.include_usage:
        head["usage"] = None
    generated = 0
    generator = random_source(req.sampling.seed)
    for p, prompt in enumerate(req.prompts):
        run = _run(req, prompt, lock, generator)
        for _ in run.run():
            for j, choice in enumerate(run.choices):
                chunk = _choice(req, choice, p * req.sampling.n + j)
                if chunk["text"] or chunk["finish_reason"] or (chunk["logprobs"] and chunk["logprobs"]["tokens"]):
                    yield {**head, "choices": [chunk]}
        generated += sum(c.generated for c in run.choices)
    if req.include_usage:
        yield {**head, "choices": [], "usage": _usage(req, generated)}


def _run(req: Completion, prompt: list[int], lock: threading.Lock, generator: Any) -> PromptRun:
    """Prompts draw one after another from the request's ``generator``: a seed fixes them all."""
    return PromptRun(req.model, prompt, req.sampling, lock=lock, generator=generator, k=req.logprobs, echo=req.echo)


def _choice(req: Completion, choice: Choice, index: int) -> dict[str, Any]:
    """What ``choice`` adds since it was last taken; its finish reason once finished."""
    text, tokens, offsets = choice.take()
    logprobs = None if req.logprobs is None else completion_logprobs(req.model, tokens, offsets)
    finish = choice.finish_reason if choice.text.finished else None
    return {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish}


def _head(req: Completion) -> dict[str, Any]:
    return response_head("cmpl", "text_completion", req.model)


def _usage(req: Completion, generated: int) -> dict[str, int]:
    return usage(sum(len(p) for p in req.prompts), generated)
