"""OpenAI's Batch API for echo scoring (half price, within 24 h): upload the pending requests as
JSONL (``custom_id``, ``method``, ``url``, ``body``), create a batch, poll it, and append its output
and error lines to the raw file, each checked like a direct response.

The batch id (and when it was created) is kept in ``<raw>.batch.json`` until the batch has ended
and its output is stored, so a rerun resumes polling the same batch instead of paying for a
second one. Polling never goes on forever: the role stops with one message naming the batch when

- it ends ``failed``, ``expired`` or ``cancelled``: what it answered is stored, and a rerun sends
  the rest in a new batch;
- the server no longer knows it (404), or its status cannot be read (after the client's retries):
  the id stays, so that a rerun resumes it (or, where it is gone, the user deletes the file);
- it has not ended ``batch_timeout`` seconds after it was created (models.toml; 26 h by default,
  OpenAI's 24 h completion window and a margin): the id stays, so that a rerun resumes it (with a
  larger ``batch_timeout``) or the user can cancel it.

Batch requests ask ``max_tokens=1`` (OpenAI rejects 0); ingest drops the generated token.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import openai

from ingest.atomic import write_text_atomic
from ingest.collect.config import RoleConfig
from ingest.collect.jobs import Job, check_response
from ingest.collect.progress import Progress
from ingest.collect.rawlog import RawLog, failure_record, is_success, success_record
from ingest.collect.runner import RoleOutcome
from ingest.errors import IngestError
from ingest.jsonl import loads_unique
from ingest.server_text import body_message, one_line, openai_client, server_error

_ENDED = {"completed", "failed", "expired", "cancelled"}


class _Stop(Exception):
    """The role stops; the message says why and what a rerun does."""


def batch_input(jobs: Sequence[Job]) -> bytes:
    """The Batch API input file for ``jobs`` (pure)."""
    lines = []
    for job in jobs:
        body = {**job.body, "max_tokens": max(1, job.body.get("max_tokens", 1))}
        lines.append(json.dumps({"custom_id": job.custom_id, "method": "POST", "url": "/v1/completions", "body": body}))
    return ("\n".join(lines) + "\n").encode("utf-8")


async def run_batch(role: RoleConfig, jobs: Sequence[Job], log: RawLog, *, api_key: str | None) -> RoleOutcome:
    """Collect ``role``'s pending jobs through one batch, its status read every
    ``role.poll_seconds``; errors are recorded, not raised."""
    pending = [job for job in jobs if job.custom_id not in log.completed]
    outcome = RoleOutcome(role=role.role, model=role.model, total=len(jobs), already_done=len(jobs) - len(pending))
    if not pending:
        return outcome
    progress = Progress(role.role, total=len(jobs), done=outcome.already_done, price_per_mtok=role.price_per_mtok)
    state = log.path.with_suffix(".batch.json")
    client = openai_client(api_key=api_key, base_url=role.base_url, max_retries=role.retries, timeout=role.timeout)
    batch_id = None
    try:
        batch_id, created = await _start(client, role, pending, state)
        batch = await _wait(client, role, batch_id, created, state, progress)
        by_id = {job.custom_id: job for job in pending}
        unreadable = 0
        for file_id in (batch.output_file_id, batch.error_file_id):
            if file_id:
                content = await client.files.content(file_id)
                unreadable += _store_lines(content.content, by_id, log, outcome)
        state.unlink(missing_ok=True)
        left = len(pending) - outcome.completed
        problems = []
        if batch.status != "completed":
            problems.append(f"batch {batch_id} ended {batch.status}{_errors(batch)}: {outcome.completed} of "
                            f"{len(pending)} requests answered and stored")
        if unreadable:
            problems.append(f"{unreadable} lines of batch {batch_id}'s output are not JSON records")
        if problems and left:
            problems.append(f"a rerun sends the other {left} in a new batch")
        outcome.fatal = "; ".join(problems) or None
    except _Stop as err:
        outcome.fatal = str(err)
    except openai.OpenAIError as err:
        kept = f"; batch {batch_id} stays in {state}, so a rerun resumes it" if batch_id else ""
        outcome.fatal = f"Batch API: {server_error(err)}{kept}"
    finally:
        await client.close()
        progress.show(final=True)
    return outcome


async def _start(client: Any, role: RoleConfig, pending: Sequence[Job], state: Path) -> tuple[str, float | None]:
    """The batch to wait for and when it was created (None: not recorded): the one ``state``
    names, else a new one for ``pending`` (recorded in ``state`` at once)."""
    if state.exists():
        try:
            saved = json.loads(state.read_text(encoding="utf-8"))
            created = saved.get("created_at")
            return str(saved["batch_id"]), None if created is None else float(created)
        except (ValueError, KeyError, TypeError, AttributeError):
            raise _Stop(f"{state}: not a batch state file (batch_id, created_at): delete it to send the pending "
                        "requests in a new batch") from None
    upload = await client.files.create(file=(f"{role.role}.jsonl", batch_input(pending)), purpose="batch")
    batch = await client.batches.create(input_file_id=upload.id, endpoint="/v1/completions", completion_window="24h")
    created = time.time()
    write_text_atomic(state, json.dumps({"batch_id": batch.id, "created_at": created}))
    return batch.id, created


async def _wait(client: Any, role: RoleConfig, batch_id: str, created: float | None, state: Path, progress: Progress) -> Any:
    """Poll the batch until it has ended; ``_Stop`` when it is gone, cannot be read, or is past
    ``role.batch_timeout`` (from ``created``, else the batch's own ``created_at``)."""
    done_before = progress.done
    while True:
        try:
            batch = await client.batches.retrieve(batch_id)
        except openai.NotFoundError as err:
            raise _Stop(f"batch {batch_id} is not known at {role.base_url} ({server_error(err)}); its id stays in {state}: "
                        "delete that file to send the pending requests in a new batch") from None
        except openai.OpenAIError as err:
            raise _Stop(f"batch {batch_id}: its status cannot be read ({server_error(err)}); its id stays in {state}, "
                        "so a rerun resumes it") from None
        if batch.request_counts is not None:
            progress.done = done_before + batch.request_counts.completed
            progress.errors = batch.request_counts.failed
        progress.show()
        if batch.status in _ENDED:
            return batch
        if created is None:
            created = float(batch.created_at or time.time())
        waited = time.time() - created
        if waited >= role.batch_timeout:
            raise _Stop(f"batch {batch_id} is still {batch.status} {waited / 3600:.2f} h after it was created, past "
                        f"batch_timeout = {role.batch_timeout:g} s; its id stays in {state}: a rerun resumes it (raise "
                        f"batch_timeout in models.toml to wait longer), or cancel it (POST {role.base_url}/batches/"
                        f"{batch_id}/cancel)")
        await asyncio.sleep(min(role.poll_seconds, role.batch_timeout - waited))


def _errors(batch: Any) -> str:
    """A failed batch's own errors (input file validation), for its message."""
    data = getattr(getattr(batch, "errors", None), "data", None) or []
    texts = [f"line {e.line}: {e.message}" if getattr(e, "line", None) else str(e.message) for e in data[:3]]
    return f" ({one_line('; '.join(texts))})" if texts else ""


def _store_lines(content: bytes, jobs: dict[str, Job], log: RawLog, outcome: RoleOutcome) -> int:
    """Append the output lines answering ``jobs``; the number of lines that are no answer at all.
    A line that repeats a key (``loads_unique``) is that request's invalid response: stored, its
    body would keep only the last value."""
    unreadable = 0
    for line in content.splitlines():
        if not line.strip():
            continue
        repeated = None
        try:
            record = loads_unique(line)
        except IngestError as err:
            record, repeated = json.loads(line), err  # read for its custom_id only
        except ValueError:
            unreadable += 1
            continue
        if not isinstance(record, dict):
            unreadable += 1
            continue
        job = jobs.get(record.get("custom_id"))
        if job is None:
            continue
        if repeated is not None:
            record = failure_record(job.custom_id, "invalid_response", f"the output line is ambiguous: {repeated}", 200)
        elif is_success(record):
            reason = check_response(job, record["response"]["body"])
            if reason is None:
                log.append(success_record(job.custom_id, record["response"]["body"]))
                outcome.completed += 1
                outcome.tokens += job.prompt_tokens
                continue
            record = failure_record(job.custom_id, "invalid_response", reason, 200)
        else:
            record = failure_record(job.custom_id, "batch_error", *_line_error(record))
        log.append(record)
        outcome.failed += 1
    return unreadable


def _line_error(record: dict[str, Any]) -> tuple[str, int | None]:
    """A failed batch line's message and HTTP status: its response's error body, or its error."""
    response = record.get("response")
    if isinstance(response, dict) and isinstance(response.get("body"), dict):
        status = response.get("status_code")
        return body_message(response["body"]), status if isinstance(status, int) else None
    error = record.get("error")
    return (body_message({"error": error}) if isinstance(error, dict) else one_line(json.dumps(record))), None
