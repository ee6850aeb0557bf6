"""Send one role's jobs through ``openai.AsyncOpenAI`` (``ingest.server_text.openai_client``):
bounded concurrency, a requests-per-minute limit, retries with exponential backoff on 429 / 5xx /
timeouts / connection errors, an immediate stop on errors retrying cannot fix (401, 403, 404,
``insufficient_quota``, an endpoint that caps k where the whole distribution was asked), and
every outcome appended to the role's raw file as it arrives.

A role also stops early, with the server's own message, when its first ``EARLY_STOP`` finished
requests of a run (all of them, where fewer are sent) all failed the same way: the same code and
the same message once its numbers are set aside (a server that gives no logprobs, a model that
rejects every request with one 4xx); sending the rest would only fail them too.

Echo's ``max_tokens`` is the role's, decided before the run (``models.toml``, else
``ingest.collect.probe``); ``exchange`` is the one request-with-retries that the probes and
``--verify`` share with the run.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import openai

from ingest.collect.config import RoleConfig
from ingest.collect.jobs import Job, capped, capped_message, check_response
from ingest.collect.progress import Progress
from ingest.collect.rawlog import RawLog, failure_record, success_record
from ingest.errors import IngestError
from ingest.jsonl import loads_unique
from ingest.server_text import openai_client, server_message

_COMPLETIONS_ARGS = {"model", "prompt", "echo", "logprobs", "max_tokens", "temperature", "seed"}
_CHAT_ARGS = {"model", "messages", "logprobs", "top_logprobs", "max_tokens", "temperature", "seed"}
_MAX_BACKOFF = 60.0
_NUMBER = re.compile(r"\d+(?:\.\d+)?")

EARLY_STOP = 8
"""A run's first ``min(EARLY_STOP, pending)`` finished requests of a role, all failed the same
way, stop the role."""


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
    """The first 20 requests that failed in this run, each ``<custom id>: <code>: <message>``."""


@dataclass(frozen=True)
class Reply:
    """How one request ended: the response's JSON as the server wrote it (``payload``: a dict,
    or a string saying why it cannot be stored, ``_post``), or a failure (``code``, redacted ``message``, HTTP
    ``status``); ``fatal`` says why no other request of the role can succeed either."""

    payload: Any = None
    code: str | None = None
    message: str = ""
    status: int | None = None
    fatal: str | None = None

    @property
    def failed(self) -> bool:
        return self.code is not None


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


def open_client(role: RoleConfig, api_key: str | None) -> openai.AsyncOpenAI:
    """The role's client; retries are ``exchange``'s, not the client's."""
    return openai_client(api_key=api_key, base_url=role.base_url, max_retries=0, timeout=role.timeout)


async def exchange(client: openai.AsyncOpenAI, role: RoleConfig, job: Job, *,
                   limiter: _RateLimiter | None = None, retries: int | None = None) -> Reply:
    """Send ``job`` until it is answered or fails for good: 429 / 5xx / timeouts / connection
    errors are retried ``retries`` times (default ``role.retries``) with backoff (a probe asks
    once: a 500 or a timeout is its answer). Never raises for a server's errors; their messages
    come redacted (``ingest.server_text``)."""
    retries = role.retries if retries is None else retries
    attempt = 0
    while True:
        if limiter is not None:
            await limiter.wait()
        wait = 0.0
        try:
            return Reply(payload=await _post(client, job.endpoint, job.body))
        except openai.BadRequestError as err:
            message = server_message(err)
            if job.full is not None and "logprobs" in message:
                refused = capped_message(job, f"the server refused: {message}")
                return Reply(code="capped_logprobs", message=refused, status=err.status_code, fatal=refused)
            return Reply(code="bad_request", message=message, status=err.status_code)
        except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as err:
            message = server_message(err)
            name = type(err).__name__
            return Reply(code=name, message=message, status=err.status_code, fatal=f"{name} ({err.status_code}): {message}")
        except openai.RateLimitError as err:
            message = server_message(err)
            if err.code == "insufficient_quota" or "insufficient_quota" in message:
                return Reply(code="insufficient_quota", message=message, status=429, fatal=f"insufficient_quota: {message}")
            problem: tuple[str, str, int | None] = ("rate_limited", message, 429)
            wait = _retry_after(err)
        except openai.APIStatusError as err:
            message = server_message(err)
            if err.status_code < 500:
                return Reply(code=f"http_{err.status_code}", message=message, status=err.status_code)
            problem = ("server_error", message, err.status_code)
        except openai.APITimeoutError:
            problem = ("timeout", f"no response within {role.timeout:g} s", None)
        except openai.APIConnectionError as err:
            problem = ("connection_error", f"cannot reach {role.base_url}: {err}", None)
        if attempt >= retries:
            fatal = problem[1] if problem[0] == "connection_error" else None
            return Reply(code=problem[0], message=f"{problem[1]} (after {attempt + 1} tries)", status=problem[2], fatal=fatal)
        backoff = min(_MAX_BACKOFF, role.backoff * 2**attempt) * (1 + random.random() / 4)
        await asyncio.sleep(max(backoff, wait))
        attempt += 1


class _FirstFailures:
    """The first ``min(EARLY_STOP, pending)`` finished requests of a run: whether they all failed
    the same way (code, and message with its numbers set aside)."""

    def __init__(self, pending: int) -> None:
        self.size = min(EARLY_STOP, pending)
        self.seen: list[tuple[str, str] | None] = []

    def finished(self, failure: tuple[str, str] | None) -> str | None:
        """Count one finished request (``(code, message)``, None for a success); the message to
        stop with once the first requests are all in and all failed alike."""
        if len(self.seen) >= self.size:
            return None
        self.seen.append(None if failure is None else (failure[0], _NUMBER.sub("N", failure[1])))
        if len(self.seen) < self.size or None in self.seen or len(set(self.seen)) != 1:
            return None
        code, message = failure  # type: ignore[misc]
        return f"the first {self.size} requests all failed the same way ({code}): {message}"


async def run_role(role: RoleConfig, jobs: Sequence[Job], log: RawLog, *, api_key: str | None, label: str | None = None,
                   answered: Mapping[str, Reply] | None = None) -> RoleOutcome:
    """Send the jobs of ``role`` not yet in ``log``; return the tally (never raises for a
    server's errors: they are recorded in ``log`` and the outcome). ``answered``: replies
    already had for some of them by custom id (a probe's), taken as if this run had sent them."""
    answered = answered or {}
    pending = [job for job in jobs if job.custom_id not in log.completed]
    outcome = RoleOutcome(role=role.role, model=role.model, total=len(jobs), already_done=len(jobs) - len(pending))
    progress = Progress(label or role.role, total=len(jobs), done=outcome.already_done, price_per_mtok=role.price_per_mtok)
    if not pending:
        progress.show(final=True)
        return outcome
    client = open_client(role, api_key)
    limiter = _RateLimiter(role.rpm)
    queue: asyncio.Queue[Job] = asyncio.Queue()
    for job in pending:
        if job.custom_id not in answered:
            queue.put_nowait(job)
    first = _FirstFailures(len(pending))

    def fail(job: Job, code: str, message: str, status: int | None = None) -> str | None:
        log.append(failure_record(job.custom_id, code, message, status))
        outcome.failed += 1
        if len(outcome.failures) < 20:
            outcome.failures.append(f"{job.custom_id}: {code}: {message}")
        progress.update(ok=False)
        return first.finished((code, message))

    def stop(message: str) -> NoReturn:
        """Stop the role: no worker takes another job from here on."""
        outcome.fatal = message
        raise _Fatal(message)

    def settle(job: Job, reply: Reply) -> None:
        if reply.failed:
            alike = fail(job, reply.code, reply.message, reply.status)  # type: ignore[arg-type]
            if reply.fatal or alike:
                stop(reply.fatal or alike)
            return
        payload = reply.payload
        reason = check_response(job, payload) if isinstance(payload, dict) else f"the response body is {payload}"
        short = capped(job, payload) if reason is None else None
        if short is not None:  # every other request would come back as short: stop the role
            fail(job, "capped_logprobs", short, 200)
            stop(short)
        if reason is not None:
            alike = fail(job, "invalid_response", reason, 200)
            if alike:
                stop(alike)
            return
        log.append(success_record(job.custom_id, payload))
        outcome.completed += 1
        outcome.tokens += job.prompt_tokens
        progress.update(ok=True, tokens=job.prompt_tokens)
        first.finished(None)

    async def worker() -> None:
        while not queue.empty() and outcome.fatal is None:  # a stop ends every worker, not only its own
            job = queue.get_nowait()
            settle(job, await exchange(client, role, job, limiter=limiter))

    workers: list[asyncio.Task[None]] = []
    try:
        for job in pending:
            if job.custom_id in answered:
                settle(job, answered[job.custom_id])
        workers = [asyncio.create_task(worker()) for _ in range(min(role.concurrency, queue.qsize()))]
        await asyncio.gather(*workers)
    except _Fatal:
        pass  # outcome.fatal says why (stop)
    finally:  # stop the other workers (a fatal answer, a raw log that cannot be written) and collect their ends
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        await client.close()
        progress.show(final=True)
    return outcome


async def _post(client: openai.AsyncOpenAI, endpoint: str, body: dict[str, Any]) -> Any:
    """Send ``body`` to ``endpoint``; the response's JSON as the server wrote it (unknown fields
    such as vLLM's ``prompt_logprobs`` kept), or a string saying why it cannot be stored: not
    JSON, or an object that repeats a key (``loads_unique``: storing the parsed body would keep
    only the last value, and ingest could never tell)."""
    known = _CHAT_ARGS if endpoint == "chat" else _COMPLETIONS_ARGS
    args = {k: v for k, v in body.items() if k in known}
    extra = {k: v for k, v in body.items() if k not in known}
    create = client.chat.completions.with_raw_response.create if endpoint == "chat" else client.completions.with_raw_response.create
    raw = await create(**args, extra_body=extra or None)
    try:
        return loads_unique(raw.content)
    except IngestError as err:
        return f"ambiguous: {err}"
    except (json.JSONDecodeError, UnicodeDecodeError):
        return f"not JSON: {raw.content[:80]!r}"  # recorded as an invalid response; cut after openai_client redacted the whole body


def _retry_after(err: openai.APIStatusError) -> float:
    """Seconds a 429 asks to wait (``Retry-After``), capped; 0 when it does not say."""
    try:
        return min(_MAX_BACKOFF, float(err.response.headers.get("retry-after", 0)))
    except ValueError:
        return 0.0
