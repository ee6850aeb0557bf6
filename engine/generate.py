"""Blended generation: ask every model for the next token's top-k, blend, sample, append, repeat.

Each step sends the prompt plus the text generated so far to the big, tuned and untuned models at
once (legacy completions, ``max_tokens=1``, ``logprobs=k``, ``echo=False``, ``temperature=0``)
and reads each model's top-k list for the next token (an entry a server adds past the k-th, the
token it generated itself, is dropped). ``engine.next_token.blend_next_token`` blends the lists
with the tuned weights through the estimator's own ``build``, as evaluation does. Pseudo-tokens
(the estimator's tail mass) are never sampled: the real tokens' probabilities are renormalized,
then temperature and top-p apply, and one uniform draw from a seeded ``numpy`` Generator picks
the token. The transcript records every step's lists, so ``replay`` re-derives the tokens
offline; with the same lists and seed it gives the same tokens.

Sampling order is the real tokens by blended probability, descending (ties: candidate order);
the draw ``u`` picks the first token whose cumulative probability exceeds ``u``.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ingest.tokens import token_bytes

from .estimators.calibrated_tail import MissingDrops
from .next_token import blend_next_token

__all__ = [
    "TunedBlend", "read_tuned", "parse_next_token", "parse_echo_tokens", "sampling_probs", "draw",
    "generate", "replay", "TRANSCRIPT_FORMAT",
]

ROLES = ("big", "tuned", "untuned")
TRANSCRIPT_FORMAT = "approxft-generation"
END_OF_TEXT = "<|endoftext|>"
"""A sampled token that ends generation (GPT-2's end of text), not added to the text."""
TOP_SHOWN = 10
"""Blended candidates recorded per step (with each model's values)."""
SAMPLING_NOTE = ("pseudo-tokens (the estimator's mass outside the listed tokens) are never sampled: "
                 "the real tokens' blended probabilities are renormalized, then temperature and top-p apply")


@dataclass(frozen=True)
class TunedBlend:
    """The blend ``approxft tune --format json`` (``best``) or ``approxft eval`` (``blend``) found."""

    weights: tuple[float, float, float]
    estimator: str
    models: dict[str, str] | None
    """role -> model name, where the file records them."""


def read_tuned(path: str | Path) -> TunedBlend:
    """Read the blend from a tune (``best``) or eval (``blend``) JSON file; ValueError naming the
    file and field at fault."""
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot be read as JSON ({err})") from None
    block = payload.get("best") if isinstance(payload, dict) else None
    block = block if isinstance(block, dict) else (payload.get("blend") if isinstance(payload, dict) else None)
    if not isinstance(block, dict):
        raise ValueError(f"{path}: no 'best' (approxft tune --format json) or 'blend' (approxft eval --format json) object")
    weights = block.get("weights")
    if not (isinstance(weights, list) and len(weights) == 3 and all(isinstance(w, (int, float)) for w in weights)
            and all(math.isfinite(w) for w in weights)):
        raise ValueError(f"{path}: field 'weights' must be three finite numbers, got {weights!r}")
    estimator = block.get("estimator")
    if not isinstance(estimator, str):
        raise ValueError(f"{path}: field 'estimator' missing")
    models = block.get("models")
    if models is not None and not (isinstance(models, dict) and all(isinstance(models.get(r), str) for r in ROLES)):
        raise ValueError(f"{path}: field 'models' must map big, tuned and untuned to model names, got {models!r}")
    return TunedBlend(weights=tuple(float(w) for w in weights), estimator=estimator,
                      models={r: models[r] for r in ROLES} if models else None)


def check_models(tuned: TunedBlend, config_models: Mapping[str, str], path: str) -> None:
    """ValueError where ``tuned`` names models other than the config's (role by role)."""
    if tuned.models is None:
        return
    wrong = [f"{r}: {tuned.models[r]!r} tuned, {config_models[r]!r} configured" for r in ROLES
             if tuned.models[r] != config_models[r]]
    if wrong:
        raise ValueError(f"{path} was tuned for other models ({'; '.join(wrong)})")


def parse_next_token(response: Any, *, role: str, k: int) -> dict[str, float]:
    """The next token's top-k ``{token: natural-log probability}`` of a completions response
    (a dict), at most ``k`` entries, highest first."""
    try:
        logprobs = response["choices"][0]["logprobs"]
    except (KeyError, IndexError, TypeError):
        raise ValueError(f"{role}: the response has no choices[0].logprobs") from None
    tops = logprobs.get("top_logprobs") if isinstance(logprobs, dict) else None
    if not tops or not isinstance(tops[0], dict) or not tops[0]:
        raise ValueError(f"{role}: the endpoint returned no top logprobs (does it support logprobs on completions?)")
    items = sorted(((str(t), float(v)) for t, v in tops[0].items()), key=lambda kv: -kv[1])[:k]
    if not all(math.isfinite(v) or v == -math.inf for _, v in items):
        raise ValueError(f"{role}: a top logprob is not a number")
    return dict(items)


def parse_echo_tokens(response: Any, *, role: str) -> list[str]:
    """The prompt's tokens from an echo response with one generated token (the last, dropped)."""
    try:
        tokens = response["choices"][0]["logprobs"]["tokens"]
    except (KeyError, IndexError, TypeError):
        raise ValueError(f"{role}: the echo response has no choices[0].logprobs.tokens") from None
    return [str(t) for t in tokens[:-1]]


def sampling_probs(logprob: np.ndarray, *, temperature: float, top_p: float) -> np.ndarray:
    """Sampling probabilities float64 ``(n,)`` from blended log-probabilities of the real tokens:
    renormalized over them, sharpened by ``temperature`` (0: the most probable token), cut to the
    smallest set holding ``top_p`` of the mass."""
    finite = np.isfinite(logprob)
    if not finite.any():
        raise ValueError("no candidate has a finite blended probability")
    p = np.zeros(logprob.size)
    if temperature == 0:
        p[int(np.argmax(np.where(finite, logprob, -np.inf)))] = 1.0
        return p
    scaled = np.where(finite, logprob / temperature, -np.inf)
    p = np.exp(scaled - scaled.max())
    p /= p.sum()
    if top_p < 1:
        order = np.argsort(-p, kind="stable")
        keep = np.searchsorted(np.cumsum(p[order]), top_p) + 1
        p[order[keep:]] = 0.0
        p /= p.sum()
    return p


def draw(p: np.ndarray, u: float) -> int:
    """The token index that uniform ``u`` in [0, 1) picks from ``p`` (descending order, stable)."""
    order = np.argsort(-p, kind="stable")
    cum = np.cumsum(p[order])
    return int(order[min(int(np.searchsorted(cum, u * cum[-1], side="right")), p.size - 1)])


@dataclass
class _Run:
    """One generation's state: its text's bytes, tokens and step records."""

    rng: np.random.Generator
    raw: bytes = b""
    tokens: list[str] | None = None
    steps: list[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        self.tokens, self.steps = [], []


def _step(lists: dict[str, dict[str, float]], *, blend: TunedBlend | None, temperature: float, top_p: float,
          u: float, vocab_size: int, calibration: MissingDrops | None) -> dict[str, Any]:
    """One step's record: the lists, the blended top candidates, the sampled token."""
    if blend is None:  # the big model alone: its own list, renormalized like the blend's
        tokens = list(lists["big"])
        logprob = np.array([lists["big"][t] for t in tokens])
        pseudo = max(0.0, 1.0 - float(np.exp(logprob).sum()))
        estimator = None
    else:
        nt = blend_next_token([lists[r] for r in ROLES], blend.weights, blend.estimator,
                              vocab_size=vocab_size, calibration=calibration)
        tokens, logprob, pseudo, estimator = nt.tokens, nt.logprob, nt.pseudo_mass, nt.estimator
    p = sampling_probs(logprob, temperature=temperature, top_p=top_p)
    chosen = draw(p, u)
    shown = np.argsort(-np.where(np.isfinite(logprob), logprob, -np.inf), kind="stable")[:TOP_SHOWN]
    top = [{"token": tokens[i], "blend_logprob": float(logprob[i]) if np.isfinite(logprob[i]) else None,
            "p_sample": float(p[i]), **{r: lists[r].get(tokens[i]) for r in lists}} for i in shown]
    return {"lists": {r: [[t, v] for t, v in lst.items()] for r, lst in lists.items()}, "estimator": estimator,
            "pseudo_mass": pseudo, "u": u, "token": tokens[chosen], "p_token": float(p[chosen]), "top": top}


def _advance(run: _Run, record: dict[str, Any]) -> bool:
    """Append the step's token; False when it ends the text."""
    run.steps.append(record)
    token = record["token"]
    run.tokens.append(token)
    if token == END_OF_TEXT:
        return False
    run.raw += token_bytes(token)
    return True


def _text(prompt: str, raw: bytes) -> str:
    return prompt + raw.decode("utf-8", errors="replace")


async def _ask(client: Any, model: str, prompt: str, k: int) -> dict[str, Any]:
    response = await client.completions.create(model=model, prompt=prompt, max_tokens=1, logprobs=k,
                                               echo=False, temperature=0)
    return response.model_dump()


async def _check_tokenizers(clients: Mapping[str, Any], models: Mapping[str, str], prompt: str) -> None:
    """Every model must split the prompt into the same token strings."""
    answers = await asyncio.gather(*(clients[r].completions.create(
        model=models[r], prompt=prompt, max_tokens=1, logprobs=0, echo=True, temperature=0) for r in clients))
    split = {r: parse_echo_tokens(a.model_dump(), role=r) for r, a in zip(clients, answers, strict=True)}
    first = next(iter(split))
    for r, tokens in split.items():
        if tokens != split[first]:
            at = next((i for i, (a, b) in enumerate(zip(tokens, split[first], strict=False)) if a != b),
                      min(len(tokens), len(split[first])))
            raise ValueError(
                f"tokenizer mismatch: {first} ({models[first]}) splits the prompt into {len(split[first])} tokens, "
                f"{r} ({models[r]}) into {len(tokens)}; they first differ at token {at} "
                f"({split[first][at:at + 1]} vs {tokens[at:at + 1]}); a blend needs one vocabulary")


def make_clients(roles: Mapping[str, Any]) -> dict[str, Any]:
    """``openai.AsyncOpenAI`` per role (``RoleConfig``); the key from the role's ``api_key_env``."""
    import openai

    clients = {}
    for r, role in roles.items():
        key = None
        if role.api_key_env is not None:
            key = os.environ.get(role.api_key_env)
            if not key:
                raise ValueError(f"models.{r}: environment variable {role.api_key_env} (api_key_env) is not set")
        clients[r] = openai.AsyncOpenAI(api_key=key or "unused", base_url=role.base_url,
                                        max_retries=role.retries, timeout=role.timeout)
    return clients


async def generate(
    clients: Mapping[str, Any],
    models: Mapping[str, str],
    blend: TunedBlend,
    prompt: str,
    *,
    max_tokens: int,
    k: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    compare: bool = False,
    vocab_size: int = 50257,
    calibration: MissingDrops | None = None,
    on_token: Callable[[str, str], None] | None = None,
) -> dict[str, Any]:
    """Generate up to ``max_tokens`` tokens from the blend (and, with ``compare``, from the big
    model alone with the same seed); returns the transcript (a JSON-able dict).

    ``on_token(which, token)`` is called as each token is chosen (``which``: ``blend``/``big``).
    """
    if not prompt:
        raise ValueError("the prompt is empty: the models need some text to continue")
    if max_tokens < 1:
        raise ValueError(f"--max-tokens must be positive, got {max_tokens}")
    if not temperature >= 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature} and {top_p}")
    await _check_tokenizers(clients, models, prompt)
    runs = {"blend": _Run(np.random.default_rng(seed))}
    if compare:
        runs["big"] = _Run(np.random.default_rng(seed))
    live = dict(runs)
    for _ in range(max_tokens):
        if not live:
            break
        asks = [(name, r) for name in live for r in (ROLES if name == "blend" else ("big",))]
        answers = await asyncio.gather(*(_ask(clients[r], models[r], _text(prompt, live[name].raw), k)
                                         for name, r in asks))
        got: dict[str, dict[str, dict[str, float]]] = {}
        for (name, r), answer in zip(asks, answers, strict=True):
            got.setdefault(name, {})[r] = parse_next_token(answer, role=r, k=k)
        for name in list(live):
            run = live[name]
            record = _step(got[name], blend=blend if name == "blend" else None, temperature=temperature,
                           top_p=top_p, u=float(run.rng.random()), vocab_size=vocab_size, calibration=calibration)
            going = _advance(run, record)
            if on_token:
                on_token(name, record["token"])
            if not going:
                del live[name]
    transcript = {
        "format": TRANSCRIPT_FORMAT, "version": 1, "prompt": prompt,
        "models": dict(models), "weights": list(blend.weights), "estimator": blend.estimator,
        "calibration": calibration.to_json() if calibration is not None else None,
        "vocab_size": vocab_size, "k": k, "max_tokens": max_tokens, "temperature": temperature, "top_p": top_p,
        "seed": seed, "sampling": SAMPLING_NOTE,
        "text": _text(prompt, runs["blend"].raw)[len(prompt):], "tokens": runs["blend"].tokens,
        "steps": runs["blend"].steps,
    }
    if compare:
        transcript["compare"] = {"model": models["big"], "text": _text(prompt, runs["big"].raw)[len(prompt):],
                                 "tokens": runs["big"].tokens, "steps": runs["big"].steps}
    return transcript


def replay(transcript: Mapping[str, Any]) -> dict[str, list[str]]:
    """Re-derive the tokens of a transcript from its recorded lists and seed, without any server:
    ``{"blend": tokens[, "big": tokens]}``. Equal to the transcript's own tokens when generation
    is deterministic."""
    if transcript.get("format") != TRANSCRIPT_FORMAT:
        raise ValueError(f"not an approxft generation transcript (format {transcript.get('format')!r})")
    blend = TunedBlend(weights=tuple(transcript["weights"]), estimator=transcript["estimator"], models=None)
    calibration = MissingDrops.from_json(transcript["calibration"]) if transcript.get("calibration") else None
    out = {}
    parts = [("blend", transcript["steps"])] + ([("big", transcript["compare"]["steps"])] if "compare" in transcript else [])
    for name, steps in parts:
        rng = np.random.default_rng(transcript["seed"])
        tokens = []
        for step in steps:
            lists = {r: {t: float(v) for t, v in lst} for r, lst in step["lists"].items()}
            record = _step(lists, blend=blend if name == "blend" else None, temperature=transcript["temperature"],
                           top_p=transcript["top_p"], u=float(rng.random()), vocab_size=transcript["vocab_size"],
                           calibration=calibration)
            tokens.append(record["token"])
        out[name] = tokens
    return out

