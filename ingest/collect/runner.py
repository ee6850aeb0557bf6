"""Send one role's jobs through ``openai.AsyncOpenAI``: bounded concurrency, a requests-per-minute
limit, retries with exponential backoff on 429 / 5xx / timeouts / connection errors, an immediate
stop on errors retrying cannot fix (401, 403, 404, ``insufficient_quota``, an endpoint that caps
k where the whole distribution was asked), and every outcome appended to the role's raw file as
it arrives.

Echo scoring asks ``max_tokens=0`` unless configured otherwise; a server that rejects it (OpenAI)
is asked ``max_tokens=1`` from then on, and ingest drops the generated token.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import openai

from ingest.collect.config import RoleConfig
from ingest.collect.jobs import Job, capped, capped_message, check_response
from ingest.collect.progress import Progress
from ingest.collect.rawlog import RawLog, failure_record, success_record
from ingest.server_text import openai_client, server_message

_COMPLETIONS_ARGS = {"model", "prompt", "echo", "logprobs", "max_tokens", "temperature", "seed"}
_CHAT_ARGS = {"model", "messages", "logprobs", "top_logprobs", "max_tokens", "temperature", "seed"}
_MAX_BACKOFF = 60.0


@dataclass
class RoleOutcome:
    """What happened to one role in this run."""

    role: str
    model: str
    total: int
    already_done: int
    completed: int = 0
    failed: int = 0
    tokens: int = 0
    fatal: str | None = None
    failures: list[str] = field(default_factory=list)
    """custom ids that failed in this run (first 20)."""


class _RateLimiter:
    """Spaces request starts at least ``60 / rpm`` seconds apart."""

    def __init__(self, rpm: float) -> None:
        self._interval = 60.0 / rpm
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        async with self._lock:
            now = time.monotonic()
            delay = self._next - now
            self._next = max(now, self._next) + self._interval
        if delay > 0:
            await asyncio.sleep(delay)


class _Fatal(Exception):
    """An error no retry can fix: the role stops."""


async def run_role(role: RoleConfig, jobs: Sequence[Job], log: RawLog, *, api_key: str | None, label: str | None = None) -> RoleOutcome:
    """Send the jobs of ``role`` not yet in ``log``; return the tally (never raises for a
    server's errors: they are recorded in ``log`` and the outcome)."""
    pending = [job for job in jobs if job.custom_id not in log.completed]
    outcome = RoleOutcome(role=role.role, model=role.model, total=len(jobs), already_done=len(jobs) - len(pending))
    progress = Progress(label or role.role, total=len(jobs), done=outcome.already_done, price_per_mtok=role.price_per_mtok)
    if not pending:
        progress.show(final=True)
        return outcome
    client = openai_client(api_key=api_key, base_url=role.base_url, max_retries=0, timeout=role.timeout)
    limiter = _RateLimiter(role.rpm)
    queue: asyncio.Queue[Job] = asyncio.Queue()
    for job in pending:
        queue.put_nowait(job)
    state = {"max_tokens": role.max_tokens}

    def fail(job: Job, code: str, message: str, status: int | None = None) -> None:
        log.append(failure_record(job.custom_id, code, message, status))
        outcome.failed += 1
        if len(outcome.failures) < 20:
            outcome.failures.append(f"{job.custom_id}: {code}: {message}")
        progress.update(ok=False)

    async def send(job: Job) -> None:
        attempt = 0
        while True:
            await limiter.wait()
            wait = 0.0
            body = dict(job.body)
            if body.get("echo") and body.get("max_tokens") == 0:
                body["max_tokens"] = state["max_tokens"]
            try:
                payload = await _post(client, job.endpoint, body)
            except openai.BadRequestError as err:
                if body.get("max_tokens") == 0 and body.get("echo") and "max_tokens" in str(err):
                    state["max_tokens"] = 1  # the server rejects 0: generate one token, dropped at ingest
                    continue
                if job.full is not None and "logprobs" in server_message(err):
                    refused = capped_message(job, f"the server refused: {server_message(err)}")
                    fail(job, "capped_logprobs", refused, err.status_code)
                    raise _Fatal(refused) from None
                fail(job, "bad_request", server_message(err), err.status_code)
                return
            except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as err:
                fail(job, type(err).__name__, server_message(err), err.status_code)
                raise _Fatal(f"{type(err).__name__} ({err.status_code}): {server_message(err)}") from None
            except openai.RateLimitError as err:
                if err.code == "insufficient_quota" or "insufficient_quota" in server_message(err):
                    fail(job, "insufficient_quota", server_message(err), 429)
                    raise _Fatal(f"insufficient_quota: {server_message(err)}") from None
                problem: tuple[str, str, int | None] = ("rate_limited", server_message(err), 429)
                wait = _retry_after(err)
            except openai.APIStatusError as err:
                if err.status_code < 500:
                    fail(job, f"http_{err.status_code}", server_message(err), err.status_code)
                    return
                problem = ("server_error", server_message(err), err.status_code)
            except openai.APITimeoutError:
                problem = ("timeout", f"no response within {role.timeout:g} s", None)
            except openai.APIConnectionError as err:
                problem = ("connection_error", f"cannot reach {role.base_url}: {err}", None)
            else:
                reason = check_response(job, payload) if isinstance(payload, dict) else f"the response body is {payload}"
                short = capped(job, payload) if reason is None else None
                if short is not None:  # every other request would come back as short: stop the role
                    fail(job, "capped_logprobs", short, 200)
                    raise _Fatal(short)
                if reason is None:
                    log.append(success_record(job.custom_id, payload))
                    outcome.completed += 1
                    outcome.tokens += job.prompt_tokens
                    progress.update(ok=True, tokens=job.prompt_tokens)
                else:
                    fail(job, "invalid_response", reason, 200)
                return
            if attempt >= role.retries:
                fail(job, problem[0], f"{problem[1]} (after {attempt + 1} tries)", problem[2])
                if problem[0] == "connection_error":
                    raise _Fatal(problem[1])
                return
            backoff = min(_MAX_BACKOFF, role.backoff * 2**attempt) * (1 + random.random() / 4)
            await asyncio.sleep(max(backoff, wait))
            attempt += 1

    async def worker() -> None:
        while not queue.empty():
            await send(queue.get_nowait())

    workers = [asyncio.create_task(worker()) for _ in range(min(role.concurrency, len(pending)))]
    try:
        await asyncio.gather(*workers)
    except _Fatal as err:
        outcome.fatal = str(err)
    finally:  # stop the other workers (a fatal answer, a raw log that cannot be written) and collect their ends
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        await client.close()
        progress.show(final=True)
    return outcome


async def _post(client: openai.AsyncOpenAI, endpoint: str, body: dict[str, Any]) -> Any:
    """Send ``body`` to ``endpoint``; the response's JSON as the server wrote it (unknown fields
    such as vLLM's ``prompt_logprobs`` kept), or a string when it is not JSON."""
    known = _CHAT_ARGS if endpoint == "chat" else _COMPLETIONS_ARGS
    args = {k: v for k, v in body.items() if k in known}
    extra = {k: v for k, v in body.items() if k not in known}
    create = client.chat.completions.with_raw_response.create if endpoint == "chat" else client.completions.with_raw_response.create
    raw = await create(**args, extra_body=extra or None)
    try:
        return json.loads(raw.content)
    except (json.JSONDecodeError, UnicodeDecodeError):  # recorded as an invalid response
        return f"not JSON: {raw.content[:80]!r}"  # cut after openai_client redacted the whole body


def _retry_after(err: openai.APIStatusError) -> float:
    """Seconds a 429 asks to wait (``Retry-After``), capped; 0 when it does not say."""
    try:
        return min(_MAX_BACKOFF, float(err.response.headers.get("retry-after", 0)))
    except ValueError:
        return 0.0
