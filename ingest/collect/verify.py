"""``collect --verify N``: a cross-check that catches servers whose log-probabilities are not what
they seem, before a role's collection. Nothing in a single response reveals them.

N positions are drawn from the manifest (``jobs.calibration_positions``: stratified by split and
context length, seeded), and each is scored twice by the role's endpoint: by the echo request of
its chunk (the role's own request: echo, batch or prompt_logprobs mode), and by a next-token
request whose context is every token before it (sent as ``ingest.collect.contexts`` decides). An
honest server gives the same distribution both ways. The check refuses, naming the position and
the two values, when

- the echo's tokens are not those the manifest's tokenizer gives the chunk's text (the server
  tokenizes differently, so its positions are not the manifest's);
- the actual token's value, or a token's value in both top-k lists, differs by more than the
  tolerance (an echo shifted by one position, llama-cpp-python's known bug; a temperature
  applied to the values of one of them);
- a token one list has lies above the other list's lowest entry by more than the tolerance,
  while that list (of k entries) leaves it out.

A position whose context is not the manifest's tokens in one of the two requests is not compared
(counted as skipped): a text context that the manifest's tokenizer re-tokenizes otherwise, or a
chunk whose text does (a chunk cut between "\n" and "\n" ends in one "\n\n" token, by any server
with GPT-2's tokenizer). The tolerance (``VERIFY_TOLERANCE`` by default) allows for float rounding and
for the small differences of batched GPU inference in reduced precision.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ingest.collect.config import RoleConfig
from ingest.collect.contexts import ContextPrompts
from ingest.collect.jobs import (
    Job,
    ManifestRequest,
    calibration_positions,
    check_response,
    chunk_job,
    next_token_jobs,
)
from ingest.collect.runner import exchange, open_client
from ingest.errors import IngestError
from ingest.parse.completions import Completion, parse_completion
from ingest.parse.formats import to_completions
from ingest.prepare.tokenizer import tokenizer_vocabulary
from ingest.tokens import api_token, token_bytes

VERIFY_TOLERANCE = 0.1
"""Largest difference, nats, between a value scored by echo and by a next-token request."""

VERIFIABLE_MODES = ("echo", "batch", "prompt_logprobs")
"""Modes with an echo request to compare with (next_token and chat have none)."""


@dataclass(frozen=True)
class Verification:
    """The outcome of ``--verify`` for one role (JSON-ready: ``asdict``)."""

    positions: int
    """N asked."""
    seed: int
    tolerance: float
    logprobs: int
    """k of the lists compared."""
    compared: int
    skipped: int
    """Positions whose text context re-tokenizes into other tokens (not compared)."""
    largest_difference: float
    """The largest difference between a value both requests gave (the actual token's, or a token
    in both lists), nats, over the positions compared."""
    passed: bool
    failure: str | None = None

    def passed_with(self, recorded: Mapping[str, Any] | None) -> bool:
        """Whether ``recorded`` (an earlier outcome) passed a check with these settings."""
        keys = ("positions", "seed", "tolerance", "logprobs")
        return recorded is not None and recorded.get("passed") is True and all(recorded.get(key) == getattr(self, key) for key in keys)

    def json(self) -> dict[str, Any]:
        return asdict(self)


def verify_k(role: RoleConfig, requests: Sequence[ManifestRequest]) -> int:
    """k of the lists compared: the role's, else the manifest's (at least 1, so that the actual
    token's value has a list to be checked against)."""
    return max(1, role.logprobs if role.logprobs is not None else max((r.logprobs for r in requests), default=1))


def planned(role: RoleConfig, requests: Sequence[ManifestRequest], *, n: int, seed: int = 0,
            tolerance: float = VERIFY_TOLERANCE) -> Verification:
    """A check's settings, before it runs (to compare with a recorded one: ``passed_with``)."""
    return Verification(n, seed, tolerance, verify_k(role, requests), 0, 0, 0.0, False)


def top_list(body: Mapping[str, Any], k: int) -> dict[str, float]:
    """The ``k`` highest entries of a next-token response's first top-k list."""
    return _highest(to_completions(body)["choices"][0]["logprobs"]["top_logprobs"][0], k)


def _highest(top: Mapping[str, float], k: int) -> dict[str, float]:
    return dict(sorted(top.items(), key=lambda kv: -kv[1])[:k])


def list_mismatch(a: Mapping[str, float], b: Mapping[str, float], k: int, tolerance: float) -> str | None:
    """Why two top-``k`` lists of one distribution cannot both be right (None when they can): a
    token in both whose values differ by more than ``tolerance``, or a token in one above the
    other's lowest entry by more than ``tolerance`` though the other (holding k entries) leaves it
    out. ``a`` is the echo's, ``b`` the next-token request's."""
    for token in a.keys() & b.keys():
        if abs(a[token] - b[token]) > tolerance:
            return f"echo gives {token!r} {a[token]:.4f}, the next-token request {b[token]:.4f}"
    for mine, other, name, other_name in ((a, b, "echo", "next-token request"), (b, a, "next-token request", "echo")):
        if len(other) < k:
            continue
        floor = min(other.values())
        for token, value in mine.items():
            if token not in other and value > floor + tolerance:
                return (f"the {name} gives {token!r} {value:.4f}, which the {other_name}'s top-{k} list leaves out "
                        f"(its lowest entry: {floor:.4f})")
    return None


def actual_mismatch(token: str, value: float, b: Mapping[str, float], k: int, tolerance: float) -> str | None:
    """Why the actual ``token``'s echo ``value`` contradicts the next-token list ``b``."""
    if token in b:
        if abs(value - b[token]) > tolerance:
            return f"echo gives the actual token {token!r} {value:.4f}, the next-token request {b[token]:.4f}"
        return None
    if len(b) >= k and b and value > min(b.values()) + tolerance:
        return (f"echo gives the actual token {token!r} {value:.4f}, which the next-token request's top-{k} list "
                f"leaves out (its lowest entry: {min(b.values()):.4f})")
    return None


def _echo_lists(completion: Completion, k: int) -> list[dict[str, float]]:
    """(s,) the echo's top-``k`` list per scored position (index p - 1 for position p)."""
    ends = np.cumsum(completion.top_counts)
    starts = ends - completion.top_counts
    return [_highest(dict(zip(completion.top_tokens[s:e], completion.top_lp[s:e].tolist(), strict=True)), k)
            for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]


def _difference(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    return max((abs(a[t] - b[t]) for t in a.keys() & b.keys()), default=0.0)


def _diagnosis(lists: Sequence[Mapping[str, float]], p: int, b: Mapping[str, float], k: int, tolerance: float) -> str:
    """What the disagreement at position ``p`` looks like: the echo's list of a neighbouring
    position matching (a shift), or the values scaled (a temperature)."""
    for neighbour, how in ((p + 1, "the echo's list at the next position"), (p - 1, "the echo's list at the previous position")):
        if 1 <= neighbour <= len(lists) and lists[neighbour - 1] and list_mismatch(lists[neighbour - 1], b, k, tolerance) is None:
            return f"; the next-token list matches {how}: the echo is shifted by one position (llama-cpp-python's known bug)"
    common = sorted(lists[p - 1].keys() & b.keys())
    if len(common) >= 2:
        x = np.array([lists[p - 1][t] for t in common])
        y = np.array([b[t] for t in common])
        x, y = x - x.mean(), y - y.mean()
        if float(x @ x) > 0:
            slope = float(x @ y / (x @ x))
            if abs(slope - 1) > 0.02 and math.isfinite(slope):
                return (f"; the next-token values are the echo's scaled by {slope:.3g}: a temperature applied to "
                        "the log-probabilities of one of them")
    return ""


async def verify_role(role: RoleConfig, requests: Sequence[ManifestRequest], contexts: ContextPrompts, *, n: int,
                      seed: int = 0, tolerance: float = VERIFY_TOLERANCE, api_key: str | None) -> Verification:
    """Score ``n`` positions by echo and by next-token requests; the outcome (never raises for a
    server's answers: a request that fails fails the check, saying why).

    Raises:
        IngestError: the manifest has no token strings, or ``role``'s mode has no echo.
    """
    if role.mode not in VERIFIABLE_MODES:
        raise IngestError(f"{role.mode} mode has no echo request to compare with", field="--verify")
    picks = calibration_positions(requests, n=n, seed=seed)
    k = verify_k(role, requests)
    by_request: dict[int, tuple[ManifestRequest, list[int]]] = {}
    for r, p in picks:
        by_request.setdefault(r.index, (r, []))[1].append(p)
    id_names = _id_names(contexts.tokenizer) if role.mode == "prompt_logprobs" else None
    client = open_client(role, api_key)
    gate = asyncio.Semaphore(role.concurrency)

    async def send(job: Job) -> dict[str, Any] | str:
        """The answer to ``job``, or why there is none."""
        async with gate:
            reply = await exchange(client, role, job)
        if reply.failed:
            return f"{reply.code}: {reply.message}"
        if not isinstance(reply.payload, dict):
            return f"the response body is {reply.payload}"
        return check_response(job, reply.payload) or reply.payload

    def outcome(compared: int, skipped: int, largest: float, failure: str | None) -> Verification:
        return Verification(n, seed, tolerance, k, compared, skipped, largest, failure is None, failure)

    try:
        compared = skipped = 0
        largest = 0.0
        for r, positions in by_request.values():
            echo = chunk_job(role, r)
            nexts = {job.at[1]: job for job in next_token_jobs(role, r, k, positions, contexts, window=None,  # type: ignore[index]
                                                                  custom_id="verify-{index}-{p}")}
            answers = await asyncio.gather(send(echo), *(send(job) for job in nexts.values()))
            for job, answer in zip([echo, *nexts.values()], answers, strict=True):
                if isinstance(answer, str):
                    what = "echo request" if job is echo else f"next-token request for position {job.at[1]}"  # type: ignore[index]
                    return outcome(compared, skipped, largest, f"the {what} of request {r.index} failed: {answer}")
            try:  # read with the manifest tokenizer's names for vLLM's ids, which the run's check has not used
                legacy = to_completions(answers[0], prompt=r.prompt, id_names=id_names)
                completion = parse_completion(legacy, max_tokens=echo.body.get("max_tokens"), prompt=r.prompt)
            except IngestError as err:
                return outcome(compared, skipped, largest, f"the echo request of request {r.index} cannot be read: {err}")
            mismatch = _tokenization(r, completion.tokens, contexts)
            if mismatch is not None:
                return outcome(compared, skipped, largest, mismatch)
            lists = _echo_lists(completion, k)
            for p in positions:
                if p not in nexts or completion.tokens[: p + 1] != r.tokens[: p + 1]:  # type: ignore[index]
                    skipped += 1  # a context that re-tokenizes otherwise (as text, or as the chunk's text)
                    continue
                b = top_list(answers[1 + list(nexts).index(p)], k)
                problem = (actual_mismatch(r.tokens[p], float(completion.target_lp[p - 1]), b, k, tolerance)  # type: ignore[index]
                           or list_mismatch(lists[p - 1], b, k, tolerance))
                if problem is not None:
                    where = f"request {r.index} position {p} (tolerance {tolerance:g} nats)"
                    return outcome(compared, skipped, largest, f"{where}: {problem}{_diagnosis(lists, p, b, k, tolerance)}")
                compared += 1
                largest = max(largest, _difference({**lists[p - 1], r.tokens[p]: float(completion.target_lp[p - 1])}, b))  # type: ignore[index]
        return outcome(compared, skipped, largest, None)
    finally:
        await client.close()


def _id_names(tokenizer: str | None) -> list[str] | None:
    """The token string of every id of ``tokenizer``, to name vLLM's id-keyed tokens (None where
    it is not known here: then the server's decoded text names them)."""
    try:
        return tokenizer_vocabulary(tokenizer) if tokenizer is not None else None
    except IngestError:
        return None


def _tokenization(r: ManifestRequest, server: Sequence[str], contexts: ContextPrompts) -> str | None:
    """Why the server's echo tokens of ``r`` are not the manifest tokenizer's tokens of its text
    (the manifest's own where the tokenizer is not known here); None when they are."""
    raw = [token_bytes(t) for t in server]
    expected = contexts.retokenize(r.prompt) if contexts.retokenize is not None else [token_bytes(t) for t in r.tokens or []]
    if raw == expected:
        return None
    at = next((i for i, (a, b) in enumerate(zip(raw, expected)) if a != b), min(len(raw), len(expected)))
    theirs = repr(server[at]) if at < len(server) else "nothing (it ends)"
    ours = repr(api_token(expected[at])) if at < len(expected) else "nothing (it ends)"
    name = f"the manifest's tokenizer ({contexts.tokenizer})" if contexts.retokenize is not None else "the manifest"
    return (f"request {r.index} position {at}: the server's echo has token {theirs} where {name} has {ours}: the server "
            "tokenizes the text differently, so its positions are not the manifest's (prepare the corpus with the "
            "model's own tokenizer, or --tokenizer server)")
