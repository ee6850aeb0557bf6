"""What to send: one ``Job`` per request, built from the manifest for a role's mode (pure), and
the check that a response answers its request.

Modes: ``echo`` / ``batch`` (score the chunk: ``echo=True, logprobs=k, max_tokens`` 0 or 1),
``prompt_logprobs`` (vLLM), ``chat`` (score the text a chat model generates after the chunk),
``next_token`` (per position, or per sampled position, send up to ``context_tokens`` preceding
tokens, as ids or as text (``ingest.collect.contexts``), and ask for one token's top-k), and
calibration (next-token requests with K entries, or the whole vocabulary, at positions sampled by
split and context length).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ingest.collect.config import RoleConfig
from ingest.collect.contexts import ContextPrompts
from ingest.errors import IngestError
from ingest.manifest import Manifest
from ingest.parse.batch_lines import request_id, requestable_positions
from ingest.parse.completions import check_top_list, parse_completion
from ingest.parse.formats import to_completions
from ingest.sampling import stratified_sample
from ingest.tokens import token_bytes


@dataclass(frozen=True)
class ManifestRequest:
    """One line of ``requests.jsonl`` as collection needs it (``read_requests``)."""

    index: int
    prompt: str
    logprobs: int
    tokens: list[str] | None
    """The preparing tokenizer's token strings (needed by next_token and calibration)."""
    split: str | None = None
    """``val`` / ``test``: calibration positions are drawn per split."""
    tokenizer: str | None = None
    """The name of the tokenizer that prepared ``tokens`` (``gpt2``), None where the line names
    none."""
    line: int | None = None
    """The manifest line it was read from, for messages."""


@dataclass(frozen=True)
class Job:
    custom_id: str
    endpoint: str
    """``completions`` or ``chat``."""
    body: dict[str, Any]
    prompt_tokens: int
    """Tokens sent (an estimate where the server tokenizes), for progress and cost."""
    expect_text: str | None = None
    """echo: the text the response's prompt tokens must spell."""
    at: tuple[int, int] | None = None
    """next-token: the (request index, position) it predicts."""
    full: int | None = None
    """calibration with ``--calibration-k all``: the vocabulary size V, the distinct tokens the
    response's list must hold (fewer: an endpoint that caps k, see ``capped``)."""


def read_requests(manifest: Manifest) -> list[ManifestRequest]:
    """The requests of a manifest ``ingest.manifest`` has validated (the one check, so that collect
    never sends what ingest would refuse), each of which collection needs to have the prompt text
    (``params.prompt``) and k (``params.logprobs``).

    Raises:
        IngestError: a line without one of them, naming the file, line and field.
    """
    out = []
    for i, params in enumerate(manifest.params):
        for name, what in (("prompt", "the prompt text"), ("logprobs", "k, the entries of each top-k list")):
            if params.get(name) is None:
                raise IngestError(f"missing: collection needs {what}", file=str(manifest.path), line=manifest.line[i],
                                  field=f"params.{name}")
        out.append(ManifestRequest(index=int(manifest.request_index[i]), prompt=params["prompt"], logprobs=params["logprobs"],
                                   tokens=manifest.tokens[i], split=manifest.split[i], tokenizer=manifest.tokenizer[i],
                                   line=manifest.line[i]))
    return out


def role_jobs(role: RoleConfig, requests: Sequence[ManifestRequest], contexts: ContextPrompts = ContextPrompts()) -> list[Job]:
    """Every request of ``role``'s mode, in manifest order; next-token contexts sent as
    ``contexts`` says (positions whose text context re-tokenizes otherwise left out)."""
    if role.mode == "next_token":
        return [job for r in requests
                for job in next_token_jobs(role, r, role.logprobs or r.logprobs, wanted_positions(role, r), contexts,
                                           window=role.context_tokens)]
    return [chunk_job(role, r) for r in requests]


def chunk_job(role: RoleConfig, r: ManifestRequest) -> Job:
    """The request scoring ``r``'s whole chunk in ``role``'s mode (echo, batch, prompt_logprobs,
    chat)."""
    k = role.logprobs if role.logprobs is not None else r.logprobs
    n = len(r.tokens) if r.tokens is not None else max(1, len(r.prompt) // 4)
    if role.mode == "chat":
        body = {
            "model": role.model,
            "messages": [{"role": "user", "content": r.prompt}],
            "logprobs": True,
            "top_logprobs": k,
            "max_tokens": role.chat_max_tokens,
            "temperature": 0,
            "seed": 0,
        }
        return Job(request_id(r.index), "chat", body, n)
    if role.mode == "prompt_logprobs":
        body = {"model": role.model, "prompt": r.prompt, "max_tokens": 1, "prompt_logprobs": k, "return_token_ids": True}
        return Job(request_id(r.index), "completions", body, n)
    max_tokens = 1 if role.mode == "batch" and role.max_tokens is None else role.max_tokens
    body = {"model": role.model, "prompt": r.prompt, "echo": True, "logprobs": k, "max_tokens": max_tokens}
    return Job(request_id(r.index), "completions", body, n, expect_text=r.prompt)


def sampled_positions(role: RoleConfig, r: ManifestRequest) -> list[int] | None:
    """next_token: the positions of request ``r`` to ask, ``role.positions_per_request`` of the
    requestable ones drawn at random (seeded by the request, the same for every role), sorted;
    None = all of them."""
    if not role.positions_per_request or r.tokens is None:
        return None
    allowed = requestable_positions(r.tokens)
    return sorted(random.Random(r.index).sample(allowed, min(role.positions_per_request, len(allowed))))


def wanted_positions(role: RoleConfig, r: ManifestRequest) -> list[int]:
    """next_token: the positions of request ``r`` to ask (sampled, else every requestable one)."""
    sampled = sampled_positions(role, r)
    return sampled if sampled is not None else requestable_positions(r.tokens or [])


def next_token_jobs(role: RoleConfig, r: ManifestRequest, k: int, positions: Sequence[int], contexts: ContextPrompts,
                    *, window: int | None, custom_id: str | None = None) -> list[Job]:
    """One next-token request (``max_tokens=1, logprobs=k, temperature=0``) per requestable one
    of ``positions``, the context as ``contexts`` sends it: the last ``window`` tokens (all of
    them for None); a dropped context has no job.
    ``custom_id``: a format with ``{index}`` and ``{p}`` (default ``request-<i>-position-<p>``)."""
    if r.tokens is None:
        raise IngestError(
            f"request {r.index} has no tokens in the manifest: next-token mode needs a local tokenizer (gpt2, tiktoken)",
            field="tokens",
        )
    allowed = set(requestable_positions(r.tokens))
    wanted = [p for p in positions if p in allowed]
    jobs = []
    for p, prompt, sent in contexts.contexts(r.tokens, wanted, window, request=r.index):
        if prompt is None:
            continue
        body = {"model": role.model, "prompt": prompt, "max_tokens": 1, "logprobs": k, "temperature": 0}
        name = request_id(r.index, p) if custom_id is None else custom_id.format(index=r.index, p=p)
        jobs.append(Job(name, "completions", body, sent, at=(r.index, p)))
    return jobs


def calibration_jobs(role: RoleConfig, requests: Sequence[ManifestRequest], *, n: int, k: int, seed: int = 0,
                     full: bool = False, contexts: ContextPrompts = ContextPrompts()) -> list[Job]:
    """Next-token requests with ``k`` entries (``full``: k is the vocabulary size, and a response
    must list every token) at the positions ``calibration_positions`` draws (but those whose
    text context ``contexts`` drops); custom ids ``calibration-<i>-<p>``, in manifest order."""
    jobs = []
    for r, p in calibration_positions(requests, n=n, seed=seed):
        for job in next_token_jobs(role, r, k, [p], contexts, window=role.context_tokens, custom_id="calibration-{index}-{p}"):
            jobs.append(replace(job, full=k if full else None))
    return jobs


def calibration_positions(requests: Sequence[ManifestRequest], *, n: int, seed: int = 0) -> list[tuple[ManifestRequest, int]]:
    """``min(n, N)`` of the N requestable positions ``(request, p)``, stratified, sorted by
    (request index, p); the same for every role (it depends on the manifest and ``seed`` only).

    Strata are (split, context bucket), bucket b holding the positions with p tokens of context,
    p in [2^b, 2^(b+1)) (``floor(log2 p)``, as ``engine.report.context_buckets``). Allocation is
    proportional: a stratum of N_h positions gets n * N_h / N, rounded by largest remainder (ties
    to the earlier stratum), so that the strata sum to n and every position has about the
    same probability n / N of being drawn (``ingest.sampling``). The engine's sampled correction
    takes the sample's simple mean per split, which this keeps unbiased, while no split or
    context length is left out by chance. Within a stratum the positions are a simple random
    sample (seeded).

    Raises:
        IngestError: the manifest has no token strings (prepared with a server tokenizer).
    """
    candidates = [(r, p) for r in requests for p in (requestable_positions(r.tokens) if r.tokens else [])]
    if requests and not candidates:
        raise IngestError("needs token strings in the manifest (prepare with a local tokenizer)", field="calibration")
    splits = {r.split or "" for r in requests}
    code = {s: i for i, s in enumerate(sorted(splits))}
    # One label per (split, bucket): 64 buckets per split hold any position below 2^64.
    strata = np.array([code[r.split or ""] * 64 + p.bit_length() - 1 for r, p in candidates], dtype=np.int64)
    chosen = [candidates[i] for i in stratified_sample(strata, n, seed)]
    return sorted(chosen, key=lambda pick: (pick[0].index, pick[1]))


VLLM_FULL_FLAGS = "--max-logprobs -1 --return-tokens-as-token-ids"
"""vLLM server flags for whole distributions: no cap on logprobs (-1: up to the vocabulary), and
tokens named ``token_id:<id>``, since decoded strings collide (byte tokens decode alike)."""


def capped(job: Job, body: Any) -> str | None:
    """For a whole-distribution request (``job.full``), why ``body`` is not one: fewer distinct
    tokens than the vocabulary (an endpoint that caps k); None when it lists them all, or for
    any other job. ``body`` must have passed ``check_response``."""
    if job.full is None:
        return None
    listed = len(to_completions(body)["choices"][0]["logprobs"]["top_logprobs"][0])
    return None if listed >= job.full else capped_message(job, f"got {listed} distinct tokens back")


def capped_message(job: Job, outcome: str) -> str:
    """The one error for an endpoint that does not give whole distributions: what was asked,
    ``outcome`` (what came back), and how to get them."""
    return (f"asked logprobs={job.full} (the whole vocabulary of the manifest's tokenizer, --calibration-k all) and "
            f"{outcome}: this endpoint caps k (OpenAI at 20; vLLM at its --max-logprobs, 20 by default). Whole "
            "distributions need a server that lists every token: approxft serve, or vLLM started with "
            f"{VLLM_FULL_FLAGS}; or collect top-K lists (--calibration-k K)")


def check_response(job: Job, body: Any) -> str | None:
    """Why ``body`` does not answer ``job`` (None when it does): it must parse, and an echo
    response's prompt tokens must spell the prompt."""
    try:
        legacy = to_completions(body)
        if job.at is not None:  # a next-token request: its one list, checked as ingest will check it
            top = legacy["choices"][0]["logprobs"]["top_logprobs"]
            if not top:
                return "field 'choices[0].logprobs.top_logprobs[0]' missing"
            check_top_list(top[0], field="choices[0].logprobs.top_logprobs[0]")
            return None
        parsed = parse_completion(legacy, max_tokens=job.body.get("max_tokens"), prompt=job.expect_text)
    except IngestError as err:
        return str(err)
    except (KeyError, IndexError, TypeError):
        return "field 'choices[0].logprobs' missing or malformed"
    if job.expect_text is not None:
        spelled = b"".join(token_bytes(t) for t in parsed.tokens)
        expected = job.expect_text.encode("utf-8")
        if spelled != expected:
            shared = min(len(spelled), len(expected))
            at = next((i for i in range(shared) if spelled[i] != expected[i]), shared)
            return f"the response's tokens do not spell the prompt (they differ at byte {at} of {len(expected)})"
    return None
