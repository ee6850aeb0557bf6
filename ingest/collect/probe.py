"""Server quirks decided by asking the server, once per endpoint (the answers are recorded in
``raw/<role>.endpoint.json``, ``ingest.collect.endpoint``, and reused by reruns).

- Echo's ``max_tokens``: the first chunk's echo request with ``max_tokens=0``; where that fails
  (any status: OpenAI answers 400, ``transformers serve`` 500) or generates anyway
  (llama-cpp-python reads 0 as "no limit": ``usage.completion_tokens`` above 0, or text or
  tokens past the prompt), ``max_tokens=1``, whose token ingest drops. A ``max_tokens`` in
  models.toml skips the probe.
- Next-token contexts: a context of the manifest's first chunk sent as token ids of the
  manifest's tokenizer, and as text; ids are used where the server answers both and gives the
  same list for them (a server that reads ids in another vocabulary answers for other tokens),
  else text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from ingest.collect.config import RoleConfig
from ingest.collect.contexts import TEXT, TOKEN_IDS, ContextPrompts
from ingest.collect.jobs import (
    Job,
    ManifestRequest,
    check_response,
    chunk_job,
    next_token_jobs,
)
from ingest.collect.runner import Reply, exchange, open_client
from ingest.collect.verify import VERIFY_TOLERANCE, list_mismatch, top_list
from ingest.parse.batch_lines import requestable_positions
from ingest.tokens import token_bytes


class ProbeFailed(Exception):
    """The token-id probe met an error no retry fixes (401, 404, a server that is down): the
    role stops."""


def generated(body: dict, prompt: str) -> bool:
    """Whether an echo response carries tokens past its prompt: ``usage.completion_tokens``
    above 0, or text or tokens spelling more than the prompt."""
    usage = body.get("usage")
    if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int) and usage["completion_tokens"] > 0:
        return True
    try:
        choice = body["choices"][0]
        text = choice.get("text")
        tokens = (choice.get("logprobs") or {}).get("tokens") or []
        spelled = b"".join(token_bytes(t) for t in tokens if isinstance(t, str))
    except (KeyError, IndexError, TypeError, AttributeError):
        return False
    size = len(prompt.encode("utf-8"))
    return (isinstance(text, str) and len(text.encode("utf-8")) > size) or len(spelled) > size


@dataclass(frozen=True)
class EchoProbe:
    """What the max_tokens probe found: ``max_tokens`` to send, ``seen`` (what the server
    answered), ``decided`` (False: neither 0 nor 1 was answered, so 1, which every echoing server
    takes, is sent this run and the probe asked again by the next), and the ``reply`` to
    ``job`` to keep as that request's own: the answer to the request as the run sends it, its
    failure after the run's retries, or an error no retry fixes."""

    max_tokens: int
    seen: str
    job: Job
    reply: Reply | None = None
    decided: bool = True


async def probe_echo_max_tokens(role: RoleConfig, request: ManifestRequest, *, api_key: str | None) -> EchoProbe:
    """How ``role``'s echo requests set ``max_tokens``, asked with ``request``'s echo."""
    job = chunk_job(role, request)
    client = open_client(role, api_key)
    try:
        zero = await exchange(client, role, _with(job, 0), retries=0)
        if zero.fatal:
            return EchoProbe(1, f"max_tokens=0 answered {_failure(zero)}", job, zero, decided=False)
        if not zero.failed and isinstance(zero.payload, dict) and not generated(zero.payload, request.prompt):
            return EchoProbe(0, "max_tokens=0 answered without generating", job, zero)
        seen = (f"max_tokens=0 answered {_failure(zero)}" if zero.failed or not isinstance(zero.payload, dict)
                else "max_tokens=0 generated tokens past the prompt (read as no limit)")
        one = await exchange(client, role, _with(job, 1))
        if one.failed or not isinstance(one.payload, dict):
            return EchoProbe(1, f"{seen}, and max_tokens=1 answered {_failure(one)}", job, one, decided=False)
        return EchoProbe(1, f"{seen}; max_tokens=1 answered", job, one)
    finally:
        await client.close()


async def probe_context_prompts(role: RoleConfig, requests: Sequence[ManifestRequest], contexts: ContextPrompts, *,
                                api_key: str | None) -> tuple[str, str]:
    """``(token ids | text, what was seen)``: how ``role``'s next-token contexts are sent
    (``contexts`` has the manifest tokenizer's ids and re-tokenizer).

    Raises:
        ProbeFailed: an error no retry fixes.
    """
    found = _probe_context(role, requests, contexts)
    if found is None:
        return TEXT, "no context of the manifest re-tokenizes into its own tokens to compare with"
    by_ids, by_text = found
    k = by_ids.body["logprobs"]
    client = open_client(role, api_key)
    try:
        ids = await exchange(client, role, by_ids)
        if ids.fatal:
            raise ProbeFailed(ids.fatal)
        if ids.failed or not isinstance(ids.payload, dict) or check_response(by_ids, ids.payload):
            why = _failure(ids) if ids.failed or not isinstance(ids.payload, dict) else check_response(by_ids, ids.payload)
            return TEXT, f"token ids answered {why}"
        text = await exchange(client, role, by_text)
        if text.fatal:
            raise ProbeFailed(text.fatal)
        if text.failed or not isinstance(text.payload, dict) or check_response(by_text, text.payload):
            return TOKEN_IDS, "token ids answered; text did not"
        mismatch = list_mismatch(top_list(text.payload, k), top_list(ids.payload, k), k, VERIFY_TOLERANCE)
        if mismatch is not None:
            return TEXT, f"token ids and text of one context answered differently (ids read as other tokens?): {mismatch}"
        return TOKEN_IDS, f"token ids and text of one context ({by_ids.prompt_tokens} tokens) answered alike"
    finally:
        await client.close()


def _probe_context(role: RoleConfig, requests: Sequence[ManifestRequest], contexts: ContextPrompts) -> tuple[Job, Job] | None:
    """The probe's two requests: the longest context of the first chunk with tokens whose text
    re-tokenizes into the manifest's tokens, as ids and as text."""
    for r in requests:
        if not r.tokens:
            continue
        k = max(1, role.logprobs if role.logprobs is not None else r.logprobs)
        for p in reversed(requestable_positions(r.tokens)):
            by_text = next_token_jobs(role, r, k, [p], contexts.as_text(), window=None, custom_id="probe-{index}-{p}")
            if by_text:
                return next_token_jobs(role, r, k, [p], contexts, window=None, custom_id="probe-{index}-{p}")[0], by_text[0]
        return None
    return None


def _with(job: Job, max_tokens: int) -> Job:
    return replace(job, body={**job.body, "max_tokens": max_tokens})


def _failure(reply: Reply) -> str:
    if not reply.failed:
        return f"with a body that is {reply.payload}"
    return f"HTTP {reply.status}: {reply.message}" if reply.status else f"{reply.code}: {reply.message}"
