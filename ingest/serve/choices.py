"""Choices: the samples after one prompt, built step by step from ``generation.Sampler`` (outside the
model lock), and their log-probabilities in each API's shape: legacy completions (``tokens``,
``token_logprobs``, ``top_logprobs`` by token string, ``text_offset``), chat (``content`` items
with ``bytes``), and vLLM's ``prompt_logprobs`` (by token id, with ``rank``).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ingest.serve.generation import Sampler
from ingest.serve.model import LocalModel
from ingest.serve.params import Sampling
from ingest.serve.text import ShownText


@dataclass
class Scored:
    """One shown token: its id, its log-probability (None: a first token, which nothing predicts),
    its top-k (ids, values) by value descending (None: not asked), and whether it was generated."""

    id: int
    logprob: float | None
    top: tuple[list[int], list[float]] | None
    generated: bool


class Choice:
    """One sample: the tokens shown (an echoed prompt, then generated ones), its text, and what of
    both has been handed out (``take``)."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.text = ShownText(stops)
        self.tokens: list[Scored] = []
        self.generated = 0
        self._taken_text = 0
        self._taken_tokens = 0

    @property
    def finish_reason(self) -> str:
        return "stop" if self.text.stopped else "length"

    def add(self, model: LocalModel, scored: Scored) -> None:
        self.tokens.append(scored)
        self.generated += scored.generated
        self.text.add(model.token_raw[scored.id])

    def take(self) -> tuple[str, list[Scored], list[int]]:
        """What is settled and not yet taken: text, tokens, and their offsets in the text."""
        end = self.text.settled()
        delta = self.text.text[self._taken_text : end]
        self._taken_text = max(self._taken_text, end)
        start = self._taken_tokens
        while self._taken_tokens < len(self.tokens) and self.text.shown(self._taken_tokens):
            self._taken_tokens += 1
        return delta, self.tokens[start : self._taken_tokens], self.text.offsets[start : self._taken_tokens]


class PromptRun:
    """The ``sampling.n`` choices after one prompt, drawn from ``generator`` (``random_source``).
    ``k``: top-k of each shown token (None: no logprobs); ``echo``: the prompt's tokens are shown
    first."""

    def __init__(self, model: LocalModel, prompt: list[int], sampling: Sampling, *, lock: threading.Lock,
                 generator: Any, k: int | None, echo: bool) -> None:
        self.model = model
        self.prompt = prompt
        self.sampling = sampling
        self.k = k
        self.echo = echo
        self.sampler = Sampler(model, prompt, n=sampling.n, temperature=sampling.temperature, generator=generator, lock=lock)
        self.choices = [Choice(sampling.stops) for _ in range(sampling.n)]

    def run(self) -> Iterator[None]:
        """Advance the choices: once with the prompt shown, then once per generated token; every
        choice is finished after the last."""
        if self.echo:
            shown = self._prompt_tokens()
            for choice in self.choices:
                for scored in shown:
                    choice.add(self.model, scored)
        for choice in self.choices:
            choice.text.start_generating()
        yield
        for step in self.sampler.steps(self.sampling.max_tokens):
            tokens = step.tokens.tolist()
            for row, choice in enumerate(self.choices):
                if not choice.text.stopped:
                    choice.add(self.model, self._scored(tokens[row], step.logprobs[row]))
            if all(c.text.stopped for c in self.choices):
                break
            yield
        for choice in self.choices:
            choice.text.finish()
        yield

    def _scored(self, token: int, row: Any) -> Scored:
        """A generated token, drawn from ``row`` (V,) float32."""
        import torch

        top = None
        if self.k is not None:
            values, ids = torch.topk(row, self.k)
            top = (ids.tolist(), values.tolist())
        return Scored(token, float(row[token]), top, generated=True)

    def _prompt_tokens(self) -> list[Scored]:
        """The prompt's tokens, scored (the first has no value) when logprobs are asked."""
        if self.k is None:
            return [Scored(t, None, None, generated=False) for t in self.prompt]
        import torch

        lp = self.sampler.prompt_logprobs()[:-1]
        actual = torch.tensor(self.prompt[1:], dtype=torch.long)
        values = lp.gather(1, actual[:, None])[:, 0].tolist()
        top_values, top_ids = torch.topk(lp, self.k, dim=-1)
        first = Scored(self.prompt[0], None, None, generated=False)
        return [first] + [
            Scored(t, v, (i, tv), generated=False)
            for t, v, i, tv in zip(self.prompt[1:], values, top_ids.tolist(), top_values.tolist(), strict=True)
        ]


def response_head(prefix: str, kind: str, model: LocalModel) -> dict[str, Any]:
    """What a response (or each chunk of a stream) starts with: a fresh ``id`` (``prefix-<hex>``),
    ``object`` ``kind``, ``created`` and ``model``."""
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()), "model": model.name}


def usage(prompt_tokens: int, generated: int) -> dict[str, int]:
    """A response's ``usage``: tokens in the prompts, generated, and both."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": generated, "total_tokens": prompt_tokens + generated}


def completion_logprobs(model: LocalModel, tokens: list[Scored], offsets: list[int], *, add_generated: bool = True) -> dict[str, Any]:
    """Legacy completions' ``logprobs``. ``add_generated``: like OpenAI, a generated token outside
    the top-k is added to its list."""
    strings = model.token_strings
    tops: list[dict[str, float] | None] = []
    for s in tokens:
        if s.top is None:
            tops.append(None)
            continue
        top = dict(zip([strings[i] for i in s.top[0]], s.top[1], strict=True))
        if add_generated and s.generated:
            top.setdefault(strings[s.id], s.logprob)  # type: ignore[arg-type]
        tops.append(top)
    return {
        "tokens": [strings[s.id] for s in tokens],
        "token_logprobs": [s.logprob for s in tokens],
        "top_logprobs": tops,
        "text_offset": offsets,
    }


def chat_logprobs(model: LocalModel, tokens: list[Scored]) -> dict[str, Any]:
    """Chat's ``logprobs``: ``content`` items with the token's text, value, exact bytes and top-k."""
    def item(token_id: int, value: float | None) -> dict[str, Any]:
        raw = model.token_raw[token_id]
        return {"token": raw.decode("utf-8", errors="replace"), "logprob": value, "bytes": list(raw)}

    return {"content": [
        {**item(s.id, s.logprob), "top_logprobs": [item(i, v) for i, v in zip(*s.top, strict=True)] if s.top else []}
        for s in tokens
    ]}


def vllm_prompt_logprobs(model: LocalModel, lp: Any, prompt: list[int], k: int) -> list[dict[str, dict[str, Any]] | None]:
    """vLLM's ``prompt_logprobs``: None for the first token, then per token its top-k and itself by
    id (``logprob``, 1-based ``rank``, ``decoded_token``). ``lp``: (P, V) from ``Sampler``."""
    import torch

    def item(token_id: int, value: float, rank: int) -> dict[str, Any]:
        return {"logprob": value, "rank": rank, "decoded_token": model.token_raw[token_id].decode("utf-8", errors="replace")}

    out: list[dict[str, dict[str, Any]] | None] = [None]
    for pos in range(1, len(prompt)):
        row, actual = lp[pos - 1], prompt[pos]
        values, ids = torch.topk(row, k)
        entry = {str(i): item(i, v, r) for r, (i, v) in enumerate(zip(ids.tolist(), values.tolist(), strict=True), start=1)}
        if str(actual) not in entry:
            entry[str(actual)] = item(actual, float(row[actual]), int((row > row[actual]).sum()) + 1)
        out.append(entry)
    return out
