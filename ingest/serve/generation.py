"""The forward passes of ``approxft serve``: score a prompt, then draw ``n`` samples after it one
token at a time (one batch of ``n`` rows, the prompt's key/value cache reused).

``lock`` is held for each forward pass only, so that other requests' passes interleave with a
long generation and no request holds the model while its response is built or encoded.
Log-probabilities are natural logs of the untempered distribution, float32.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ingest.serve.model import LocalModel


@dataclass
class Step:
    """One generated token per row: ``tokens`` (n,) int64 ids, drawn from ``logprobs`` (n, V)."""

    tokens: Any
    logprobs: Any


def random_source(seed: int | None) -> Any:
    """The ``torch.Generator`` of one request: seeded, or from fresh entropy."""
    import torch

    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


class Sampler:
    """``n`` samples after ``prompt`` (token ids) from ``model``, drawn from ``generator``."""

    def __init__(self, model: LocalModel, prompt: list[int], *, n: int, temperature: float, generator: Any,
                 lock: threading.Lock) -> None:
        self._model = model
        self._prompt = prompt
        self._n = n
        self._temperature = temperature
        self._lock = lock
        self._generator = generator
        self._cache = _cache_argument(model.model)
        self._logits: Any = None  # (P, V) after each prompt prefix
        self._past: Any = None
        self._prompt_lp: Any = None

    def prompt_logprobs(self) -> Any:
        """(P, V) float32: row p is the distribution of the token after ``prompt[:p + 1]``."""
        import torch

        self._run_prompt()
        if self._prompt_lp is None:
            self._prompt_lp = torch.log_softmax(self._logits, dim=-1)
        return self._prompt_lp

    def steps(self, max_tokens: int) -> Iterator[Step]:
        """Up to ``max_tokens`` steps; stop iterating early to stop generating (no pass is wasted)."""
        import torch

        if max_tokens == 0:
            return
        self._run_prompt()
        logits = self._logits[-1].expand(self._n, -1)
        past = _repeat_rows(self._past, self._n)
        for step in range(max_tokens):
            logprobs = torch.log_softmax(logits, dim=-1)
            if self._temperature == 0:
                tokens = torch.argmax(logits, dim=-1)
            else:
                probs = torch.softmax(logits / self._temperature, dim=-1)
                tokens = torch.multinomial(probs, 1, generator=self._generator)[:, 0]
            yield Step(tokens=tokens, logprobs=logprobs)
            if step + 1 < max_tokens:
                with torch.no_grad(), self._lock:
                    out = self._model.model(tokens[:, None], use_cache=True, **{self._cache: past})
                logits, past = out.logits[:, -1].float(), getattr(out, self._cache)

    def _run_prompt(self) -> None:
        import torch

        if self._logits is not None:
            return
        with torch.no_grad(), self._lock:
            out = self._model.model(torch.tensor([self._prompt]), use_cache=True)
        self._logits, self._past = out.logits[0].float(), getattr(out, self._cache)


def _cache_argument(module: Any) -> str:
    """The name of the key/value cache, in and out of ``module``'s forward: ``past_key_values``
    (transformers 4), ``cache`` (later)."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def _repeat_rows(past: Any, n: int) -> Any:
    """A key/value cache of batch 1 repeated for ``n`` rows (a transformers Cache, or the legacy
    tuple of per-layer tensors)."""
    if n == 1:
        return past
    if hasattr(past, "batch_repeat_interleave"):
        past.batch_repeat_interleave(n)
        return past
    return tuple(tuple(t.repeat_interleave(n, dim=0) for t in layer) for layer in past)
