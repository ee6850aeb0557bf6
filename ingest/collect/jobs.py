"""What to send: one ``Job`` per request, built from the manifest for a role's mode (pure), and
the check that a response answers its request.

Modes: ``echo`` / ``batch`` (score the chunk: ``echo=True, logprobs=k, max_tokens`` 0 or 1),
``prompt_logprobs`` (vLLM), ``chat`` (score the text a chat model generates after the chunk),
``next_token`` (per position, or per sampled position, send up to ``context_tokens`` preceding
tokens as text and ask for one token's top-k), and calibration (next-token requests with K entries at sampled positions).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ingest.collect.config import RoleConfig
from ingest.errors import IngestError
from ingest.parse.batch_lines import request_id, requestable_positions
from ingest.parse.completions import parse_completion
from ingest.parse.formats import to_completions
from ingest.tokens import token_bytes


@dataclass(frozen=True)
class ManifestRequest:
    """One line of ``requests.jsonl`` as collection needs it."""

    index: int
    prompt: str
    logprobs: int
    tokens: list[str] | None
    """The preparing tokenizer's token strings (needed by next_token and calibration)."""


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


def read_requests(records: Sequence[tuple[int, Any]], *, file: str) -> list[ManifestRequest]:
    """The manifest lines collection reads (``params.prompt`` and ``params.logprobs`` required)."""
    out = []
    for number, record in records:
        params = record.get("params") if isinstance(record, Mapping) else None
        if not isinstance(params, Mapping) or not isinstance(params.get("prompt"), str):
            raise IngestError("missing: collection needs the prompt text", file=file, line=number, field="params.prompt")
        k = params.get("logprobs")
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise IngestError(f"is {k!r}, not a non-negative integer", file=file, line=number, field="params.logprobs")
        tokens = record.get("tokens")
        if tokens is not None and not (isinstance(tokens, list) and all(isinstance(t, str) for t in tokens)):
            raise IngestError("is not a list of strings", file=file, line=number, field="tokens")
        out.append(ManifestRequest(index=record["request_index"], prompt=params["prompt"], logprobs=k, tokens=tokens))
    return out


def role_jobs(role: RoleConfig, requests: Sequence[ManifestRequest]) -> list[Job]:
    """Every request of ``role``'s mode, in manifest order."""
    if role.mode == "next_token":
        return [
            job for r in requests for job in _next_token_jobs(role, r, role.logprobs or r.logprobs, sampled_positions(role, r))
        ]
    return [_chunk_job(role, r) for r in requests]


def _chunk_job(role: RoleConfig, r: ManifestRequest) -> Job:
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
    body = {"model": role.model, "prompt": r.prompt, "echo": True, "logprobs": k, "max_tokens": role.max_tokens}
    return Job(request_id(r.index), "completions", body, n, expect_text=r.prompt)


def sampled_positions(role: RoleConfig, r: ManifestRequest) -> list[int] | None:
    """next_token: the positions of request ``r`` to ask, ``role.positions_per_request`` of the
    requestable ones drawn at random (seeded by the request, the same for every role), sorted;
    None = all of them."""
    if not role.positions_per_request or r.tokens is None:
        return None
    allowed = requestable_positions(r.tokens)
    return sorted(random.Random(r.index).sample(allowed, min(role.positions_per_request, len(allowed))))


def _next_token_jobs(role: RoleConfig, r: ManifestRequest, k: int, positions: Sequence[int] | None = None) -> list[Job]:
    if r.tokens is None:
        raise IngestError(
            f"request {r.index} has no tokens in the manifest: next-token mode needs a local tokenizer (gpt2, tiktoken)",
            field="tokens",
        )
    raw = [token_bytes(t) for t in r.tokens]
    allowed = requestable_positions(r.tokens)
    wanted = allowed if positions is None else [p for p in positions if p in set(allowed)]
    jobs = []
    for p in wanted:
        start = max(0, p - role.context_tokens)
        # The context must start on a character boundary too: drop leading continuation bytes.
        context = b"".join(raw[start:p]).decode("utf-8", errors="ignore")
        body = {"model": role.model, "prompt": context, "max_tokens": 1, "logprobs": k, "temperature": 0}
        jobs.append(Job(request_id(r.index, p), "completions", body, p - start))
    return jobs


def calibration_jobs(role: RoleConfig, requests: Sequence[ManifestRequest], *, n: int, k: int, seed: int = 0) -> list[Job]:
    """Next-token requests with ``k`` entries at ``n`` positions drawn at random (seeded, the same
    for every role) among all requestable positions; custom ids ``calibration-<i>-<p>``."""
    candidates = [(r, p) for r in requests for p in (requestable_positions(r.tokens) if r.tokens else [])]
    if requests and not candidates:
        raise IngestError("needs token strings in the manifest (prepare with a local tokenizer)", field="calibration")
    chosen = sorted(random.Random(seed).sample(range(len(candidates)), min(n, len(candidates))))
    jobs = []
    for i in chosen:
        r, p = candidates[i]
        job = _next_token_jobs(role, r, k, [p])[0]
        jobs.append(Job(f"calibration-{r.index}-{p}", job.endpoint, job.body, job.prompt_tokens))
    return jobs


def check_response(job: Job, body: Any) -> str | None:
    """Why ``body`` does not answer ``job`` (None when it does): it must parse, and an echo
    response's prompt tokens must spell the prompt."""
    try:
        legacy = to_completions(body)
        if job.custom_id.startswith("calibration-") or "-position-" in job.custom_id:
            top = legacy["choices"][0]["logprobs"]["top_logprobs"]
            if not top or not isinstance(top[0], Mapping):
                return "field 'choices[0].logprobs.top_logprobs[0]' missing"
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
