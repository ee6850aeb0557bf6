"""Blended generation: ask every model for the next token's top-k, blend, sample, append, repeat.

Each step sends the prompt plus the text generated so far to every model of the blend at once
(legacy completions, ``max_tokens=1``, ``logprobs=k``, ``echo=False``, ``temperature=0``), each
at the ``models.toml`` entry that serves it (by model name), and reads each model's top-k list
for the next token (an entry a server adds past the k-th, the token it generated itself, is
dropped). ``engine.generation.next_token.blend_next_token`` blends the lists with the tuned
weights through the estimator's own ``build``, as evaluation does, restricted by the blend's
plausibility mask where it has one, and one uniform draw from a seeded ``numpy`` Generator picks
the token (``engine.generation.sampling``).
The transcript records every step's lists, so ``engine.generation.transcript.replay`` re-derives
the tokens offline; with the same lists and seed it gives the same tokens.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ingest.collect.config import RoleConfig, read_config
from ingest.errors import IngestError, one_line, shown
from ingest.jsonl import loads_unique
from ingest.parse.completions import check_top_list
from ingest.parse.formats import to_completions
from ingest.prepare.bpe import END_OF_TEXT, GPT2_VOCAB_SIZE
from ingest.tokens import token_bytes
from ingest.values import MAX_VOCAB_SIZE

from ..candidates import MissingDrops
from ..dataset import open_dataset
from ..estimators import get_estimator
from ..params import ROLES
from .sampling import SAMPLING_NOTE
from .step import step_record
from .transcript import TRANSCRIPT_FORMAT, TRANSCRIPT_VERSION
from .tuned import TunedBlend, read_tuned

__all__ = [
    "Setup", "setup", "parse_next_token", "parse_echo_tokens", "generate", "run_generation", "DEFAULT_K",
]

DEFAULT_K = 5
"""Top-k asked of each model where neither ``--logprobs`` nor models.toml says (OpenAI's most for
legacy completions)."""


@dataclass(frozen=True)
class Setup:
    """What a generation needs, read and checked before any request is sent.

    Attributes:
        endpoints: model -> the ``models.toml`` entry that serves it, for every model of the
            blend, in term order.
        tuned: the blend to sample from (its models named).
        vocab_size: the tokenizer's vocabulary size the estimator assumes.
        calibration: the calibration fit ``calibrated-tail`` needs (None for the others).
        k: top-k asked of each model.
        notes: warnings for the user (e.g. a tuned file that does not name its models).
    """

    endpoints: dict[str, RoleConfig]
    tuned: TunedBlend
    vocab_size: int
    calibration: MissingDrops | None
    k: int
    notes: tuple[str, ...]


def setup(config: str | Path, params: str | Path, *, store: str | Path | None = None,
          vocab_size: int | None = None, logprobs: int | None = None) -> Setup:
    """Read ``models.toml`` and the tuned blend, find the entry that serves each of the blend's
    models (by model name; a blend file that names none is the roles big, tuned and untuned, in
    that order), and take the vocabulary size and calibration fit from ``store`` where given.

    Raises:
        ValueError, IngestError: a file is unreadable or malformed, ``models.toml`` serves not
            every model of the blend, or its estimator needs a calibration fit and no store with
            one for these models is given.
    """
    entries = read_config(config)
    tuned = read_tuned(params)
    notes = []
    if tuned.models is None:
        roles = {e.role: e.model for e in entries}
        tuned = replace(tuned, models=tuple(roles[r] for r in ROLES))
        notes.append(f"{params} does not name its models; make sure it was tuned for "
                     f"{', '.join(f'{r}={m}' for r, m in zip(ROLES, tuned.models, strict=True))}")
    if tuned.corrected:
        notes.append(f"{params} was tuned under the sampled correction (corrected:{tuned.estimator}); generation "
                     f"samples from its base estimator, {tuned.estimator} (the correction shifts a split's mean NLL, "
                     "not a next-token distribution)")
    served: dict[str, RoleConfig] = {}
    for entry in entries:
        served.setdefault(entry.model, entry)
    missing = [m for m in tuned.models if m not in served]
    if missing:
        raise ValueError(f"{params} was tuned for other models: {config} serves no {', '.join(map(repr, missing))} "
                         f"(it serves {', '.join(map(repr, served))})")
    estimator = get_estimator(tuned.estimator)
    calibration = None
    if store is not None:
        ds = open_dataset(store)
        vocab_size = ds.vocab_size if vocab_size is None else vocab_size
        fit = ds.calibration(list(tuned.models))
        # Through its JSON form, as the transcript records it, so a replay sees the same numbers.
        calibration = MissingDrops.from_json(fit.to_json()) if fit is not None else None
    if estimator.needs_calibration and calibration is None:
        raise ValueError(f"estimator {estimator.name} needs a calibration fit for {', '.join(tuned.models)} (in this "
                         "order): pass --store STORE with one (approxft calibrate)")
    endpoints = {m: served[m] for m in tuned.models}
    if logprobs is None:
        logprobs = endpoints[tuned.models[0]].logprobs or DEFAULT_K
    return Setup(endpoints=endpoints, tuned=tuned, vocab_size=GPT2_VOCAB_SIZE if vocab_size is None else vocab_size,
                 calibration=calibration, k=logprobs, notes=tuple(notes))


def parse_next_token(response: Any, *, model: str, k: int) -> dict[str, float]:
    """The next token's top-k ``{token: natural-log probability}`` of a completions response
    (a dict), at most ``k`` entries, highest first. The response is read as ingest reads one
    (``ingest.parse.formats.to_completions``) and its list checked as ingest checks every list
    (``ingest.parse.completions.check_top_list``), each value needed: so a transcript holds only
    lists its replay accepts.

    Raises:
        ValueError: naming the model and the field at fault.
    """
    choices = response.get("choices") if isinstance(response, Mapping) else None
    if not isinstance(choices, list) or not choices:
        raise ValueError(f"{model}: the response has no choices[0].logprobs")
    try:
        logprobs = to_completions(response)["choices"][0].get("logprobs")
        tops = logprobs.get("top_logprobs") if isinstance(logprobs, Mapping) else None
        if not isinstance(tops, list) or not tops or not tops[0]:
            raise ValueError(f"{model}: the endpoint returned no top logprobs (does it support logprobs on completions?)")
        top = check_top_list(tops[0], field="choices[0].logprobs.top_logprobs[0]", unobserved=False)
    except IngestError as err:
        raise ValueError(f"{model}: {err}") from None
    return dict(sorted(top.items(), key=lambda kv: -kv[1])[:k])


def parse_echo_tokens(response: Any, *, model: str) -> list[str]:
    """The prompt's tokens from an echo response with one generated token (the last, dropped)."""
    try:
        tokens = response["choices"][0]["logprobs"]["tokens"]
    except (KeyError, IndexError, TypeError):
        raise ValueError(f"{model}: the echo response has no choices[0].logprobs.tokens") from None
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise ValueError(f"{model}: the echo response's choices[0].logprobs.tokens is {shown(tokens)}, not a list of strings")
    return tokens[:-1]


@dataclass
class _Run:
    """One generation's state: its text's bytes, tokens and step records."""

    rng: np.random.Generator
    raw: bytes = b""
    tokens: list[str] | None = None
    steps: list[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        self.tokens, self.steps = [], []


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


def _body(content: bytes, model: str) -> dict[str, Any]:
    """A completions answer's JSON object as the server wrote it, as ingest reads it (the openai
    client's models would coerce its values: false to 0.0, "-2" to -2.0); ValueError where the
    answer is not a JSON object."""
    try:
        answer = loads_unique(content)
    except IngestError as err:  # a repeated key: which value the server meant is unknown
        raise ValueError(f"{model}: the answer is ambiguous: {err}") from None
    except ValueError:  # not UTF-8, not JSON
        answer = None
    if not isinstance(answer, dict):
        raise ValueError(f"{model}: the answer is not a JSON object: {one_line(content.decode('utf-8', 'replace'), 80)}")
    return answer


async def _ask(client: Any, model: str, prompt: str, k: int, *, echo: bool = False) -> dict[str, Any]:
    """One completion's answer (``_body``): the next token's top-``k`` after ``prompt``, or with
    ``echo`` the prompt's own tokens too."""
    raw = await client.completions.with_raw_response.create(model=model, prompt=prompt, max_tokens=1, logprobs=k,
                                                             echo=echo, temperature=0)
    return _body(raw.content, model)


async def _check_tokenizers(clients: Mapping[str, Any], prompt: str) -> None:
    """Every model (``clients``: model -> its client) must split the prompt into the same token strings."""
    answers = await asyncio.gather(*(_ask(clients[m], m, prompt, 0, echo=True) for m in clients))
    split = {m: parse_echo_tokens(a, model=m) for m, a in zip(clients, answers, strict=True)}
    first = next(iter(split))
    for m, tokens in split.items():
        if tokens != split[first]:
            at = next((i for i, (a, b) in enumerate(zip(tokens, split[first], strict=False)) if a != b),
                      min(len(tokens), len(split[first])))
            raise ValueError(
                f"tokenizer mismatch: {first} splits the prompt into {len(split[first])} tokens, "
                f"{m} into {len(tokens)}; they first differ at token {at} "
                f"({split[first][at:at + 1]} vs {tokens[at:at + 1]}); a blend needs one vocabulary")


def make_clients(endpoints: Mapping[str, RoleConfig]) -> dict[str, Any]:
    """``openai.AsyncOpenAI`` per model (``endpoints``: model -> its ``models.toml`` entry),
    answers redacted (``ingest.server_text.openai_client``); the key from the entry's ``api_key_env``."""
    from ingest.server_text import openai_client

    clients = {}
    for m, role in endpoints.items():
        key = None
        if role.api_key_env is not None:
            key = os.environ.get(role.api_key_env)
            if not key:
                raise ValueError(f"models.{role.role}: environment variable {role.api_key_env} (api_key_env) is not set")
        clients[m] = openai_client(api_key=key, base_url=role.base_url, max_retries=role.retries, timeout=role.timeout)
    return clients


async def generate(
    clients: Mapping[str, Any],
    blend: TunedBlend,
    prompt: str,
    *,
    max_tokens: int,
    k: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    compare: bool = False,
    vocab_size: int = GPT2_VOCAB_SIZE,
    calibration: MissingDrops | None = None,
    on_token: Callable[[str, str], None] | None = None,
) -> dict[str, Any]:
    """Generate up to ``max_tokens`` tokens from the blend (``clients``: each of its models ->
    its client) and, with ``compare``, from its first term's model alone (the big model) with the
    same seed; returns the transcript (a JSON-able dict).

    ``on_token(which, token)`` is called as each token is chosen (``which``: ``blend``/``compare``).
    """
    if not prompt:
        raise ValueError("the prompt is empty: the models need some text to continue")
    if max_tokens < 1:
        raise ValueError(f"--max-tokens must be positive, got {max_tokens}")
    if not temperature >= 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature} and {top_p}")
    if k < 1 or vocab_size < 1 or seed < 0:
        raise ValueError(f"need --logprobs >= 1, --vocab-size >= 1 and --seed >= 0, got {k}, {vocab_size} and {seed}")
    if vocab_size > MAX_VOCAB_SIZE:
        raise ValueError(f"--vocab-size must be at most {MAX_VOCAB_SIZE} (token ids are int32), got {shown(vocab_size)}")
    await _check_tokenizers(clients, prompt)
    asked = {"blend": blend.models, "compare": blend.models[:1]}
    runs = {"blend": _Run(np.random.default_rng(seed))}
    if compare:
        runs["compare"] = _Run(np.random.default_rng(seed))
    live = dict(runs)
    for _ in range(max_tokens):
        if not live:
            break
        asks = [(name, m) for name in live for m in asked[name]]
        answers = await asyncio.gather(*(_ask(clients[m], m, _text(prompt, live[name].raw), k) for name, m in asks))
        got: dict[str, dict[str, dict[str, float]]] = {}
        for (name, m), answer in zip(asks, answers, strict=True):
            got.setdefault(name, {})[m] = parse_next_token(answer, model=m, k=k)
        for name in list(live):
            run = live[name]
            record = step_record(got[name], blend=blend if name == "blend" else None, temperature=temperature,
                                 top_p=top_p, u=float(run.rng.random()), vocab_size=vocab_size, calibration=calibration)
            going = _advance(run, record)
            if on_token:
                on_token(name, record["token"])
            if not going:
                del live[name]
    transcript = {
        "format": TRANSCRIPT_FORMAT, "version": TRANSCRIPT_VERSION, "prompt": prompt, **blend.to_json(),
        "calibration": calibration.to_json() if calibration is not None else None,
        "vocab_size": vocab_size, "k": k, "max_tokens": max_tokens, "temperature": temperature, "top_p": top_p,
        "seed": seed, "sampling": SAMPLING_NOTE,
        "text": _text(prompt, runs["blend"].raw)[len(prompt):], "tokens": runs["blend"].tokens,
        "steps": runs["blend"].steps,
    }
    if compare:
        transcript["compare"] = {"model": blend.models[0], "text": _text(prompt, runs["compare"].raw)[len(prompt):],
                                 "tokens": runs["compare"].tokens, "steps": runs["compare"].steps}
    return transcript


def run_generation(
    setup: Setup,
    prompt: str,
    *,
    max_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    compare: bool = False,
    on_token: Callable[[str, str], None] | None = None,
) -> dict[str, Any]:
    """``generate`` over the endpoints of ``setup`` (clients made and closed here); the transcript.

    Raises:
        ValueError: bad options, a tokenizer mismatch, or an endpoint that refused (its message).
    """
    import openai

    from ingest.server_text import server_error

    async def main() -> dict[str, Any]:
        clients = make_clients(setup.endpoints)
        try:
            return await generate(clients, setup.tuned, prompt, max_tokens=max_tokens, k=setup.k,
                                  temperature=temperature, top_p=top_p, seed=seed, compare=compare,
                                  vocab_size=setup.vocab_size, calibration=setup.calibration, on_token=on_token)
        finally:
            for c in clients.values():
                await c.close()

    try:
        return asyncio.run(main())
    except openai.APIError as err:
        where = f" ({err.request.url})" if getattr(err, "request", None) is not None else ""
        raise ValueError(f"an endpoint{where} failed: {server_error(err)}") from None
