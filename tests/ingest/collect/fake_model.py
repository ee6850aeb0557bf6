"""A made-up language model over GPT-2's vocabulary behind ``FakeServer``: honest by default (its
echo and its next-token answers are one distribution per context), or misbehaving like real
servers do, one knob per quirk. No weights: each context's distribution is drawn from a generator
seeded by its token ids, so every answer can be recomputed here."""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from ingest.prepare.bpe import GPT2_VOCAB_SIZE, gpt2
from ingest.tokens import token_bytes
from tests.ingest.collect.fake_server import error_body

NO_LIMIT_TOKENS = 12
"""Tokens a ``zero="no limit"`` server generates for ``max_tokens=0`` (to the end of its context)."""


@lru_cache(maxsize=4096)
def log_probs(context: tuple[int, ...]) -> np.ndarray:
    """float64 (V,): the model's next-token log-probabilities after ``context`` (GPT-2 ids)."""
    seed = zlib.crc32(np.asarray(context, dtype=np.int32).tobytes())
    logits = np.random.default_rng(seed).standard_normal(GPT2_VOCAB_SIZE) * 2.0
    return logits - np.logaddexp.reduce(logits)


def tempered(lp: np.ndarray, temperature: float) -> np.ndarray:
    scaled = lp / temperature
    return scaled - np.logaddexp.reduce(scaled)


def top(lp: np.ndarray, k: int) -> dict[str, float]:
    """The ``k`` most likely tokens of ``lp`` by API string."""
    ids = np.argsort(-lp, kind="stable")[:k]
    return dict(zip(gpt2().api_tokens(ids.tolist()), lp[ids].tolist(), strict=True))


def byte_ids(text: str) -> list[int]:
    """Another tokenizer over the same vocabulary: one token per UTF-8 byte."""
    encoder = {raw: i for i, raw in enumerate(gpt2().vocab_bytes)}
    return [encoder[bytes([b])] for b in text.encode("utf-8")]


@dataclass
class FakeModel:
    """What a server does. Honest unless told otherwise:

    - ``shift``: echo gives position i the list of position i + 1 (llama-cpp-python's bug);
    - ``byte_tokens``: the server tokenizes text one byte per token (not the manifest's GPT-2 BPE);
    - ``temperature``: next-token answers hold log-probabilities of the tempered distribution;
    - ``ids``: token-id prompts accepted (else 400);
    - ``zero``: what ``max_tokens=0`` does: ``ok``, ``500`` (transformers serve), ``400`` (OpenAI)
      or ``no limit`` (llama-cpp-python generates to the end of its context);
    - ``logprobs``: False answers without log-probabilities.
    """

    shift: bool = False
    byte_tokens: bool = False
    temperature: float | None = None
    ids: bool = True
    zero: str = "ok"
    logprobs: bool = True

    def tokenize(self, text: str) -> list[int]:
        return byte_ids(text) if self.byte_tokens else gpt2().encode(text)

    def answer(self, body: dict[str, Any]) -> tuple[int, bytes]:
        prompt = body["prompt"]
        if isinstance(prompt, list):
            if not self.ids:
                return 400, error_body("prompt must be a string")
            ids = list(prompt)
        else:
            ids = self.tokenize(prompt)
        k = body.get("logprobs") or 0
        max_tokens = body.get("max_tokens", 16)
        if body.get("echo") and max_tokens == 0:
            if self.zero in ("400", "500"):
                return int(self.zero), error_body("max_tokens must be at least 1")
            if self.zero == "no limit":
                max_tokens = NO_LIMIT_TOKENS
        generated: list[int] = []
        for _ in range(max_tokens):
            generated.append(int(np.argmax(log_probs(tuple(ids + generated)))))
        shown = ids + generated if body.get("echo") else generated
        start = 0 if body.get("echo") else len(ids)
        token_lps: list[float | None] = []
        tops: list[dict[str, float] | None] = []
        full = ids + generated
        for pos in range(start, len(full)):
            if pos == 0:
                token_lps.append(None)
                tops.append(None)
                continue
            context = full[: pos + 1] if self.shift and body.get("echo") else full[:pos]
            lp = log_probs(tuple(context))
            if self.temperature is not None and not body.get("echo"):
                lp = tempered(lp, self.temperature)
            token_lps.append(float(lp[full[pos]]))
            tops.append(top(lp, k))
        tokens = gpt2().api_tokens(shown)
        text = b"".join(token_bytes(t) for t in tokens).decode("utf-8", errors="replace")
        offsets = np.cumsum([0] + [len(token_bytes(t)) for t in tokens[:-1]]).tolist() if tokens else []
        logprobs = {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops, "text_offset": offsets}
        choice = {"text": text, "index": 0, "logprobs": logprobs if self.logprobs else None, "finish_reason": "length"}
        usage = {"prompt_tokens": len(ids), "completion_tokens": len(generated), "total_tokens": len(ids) + len(generated)}
        return 200, json.dumps({"model": body["model"], "choices": [choice], "usage": usage}).encode()


def behaviour(models: dict[str, FakeModel]):  # noqa: ANN201
    """A ``FakeServer`` behaviour answering each model name as ``models`` says (honest where
    not named)."""
    honest = FakeModel()
    return lambda model, index, body: models.get(model, honest).answer(body)
