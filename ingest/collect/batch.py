"""OpenAI's Batch API for echo scoring (half price, within 24 h): upload the pending requests as
JSONL (``custom_id``, ``method``, ``url``, ``body``), create a batch, poll it, and append its output
and error lines to the raw file, each checked like a direct response.

The batch id is kept in ``<raw>.batch.json`` until its output is stored, so a rerun resumes
polling the same batch instead of paying for a second one. Batch requests ask ``max_tokens=1``
(OpenAI rejects 0); ingest drops the generated token.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import openai

from ingest.atomic import write_text_atomic
from ingest.collect.config import RoleConfig
from ingest.collect.jobs import Job, check_response
from ingest.collect.progress import Progress
from ingest.collect.rawlog import RawLog, failure_record, is_success, success_record
from ingest.collect.runner import RoleOutcome, redact

_DONE = {"completed", "failed", "expired", "cancelled"}


def batch_input(jobs: Sequence[Job]) -> bytes:
    """The Batch API input file for ``jobs`` (pure)."""
    lines = []
    for job in jobs:
        body = {**job.body, "max_tokens": max(1, job.body.get("max_tokens", 1))}
        lines.append(json.dumps({"custom_id": job.custom_id, "method": "POST", "url": "/v1/completions", "body": body}))
    return ("\n".join(lines) + "\n").encode("utf-8")


async def run_batch(
    role: RoleConfig, jobs: Sequence[Job], log: RawLog, *, api_key: str | None, poll_seconds: float = 30.0
) -> RoleOutcome:
    """Collect ``role``'s pending jobs through one batch; errors are recorded, not raised."""
    pending = [job for job in jobs if job.custom_id not in log.completed]
    outcome = RoleOutcome(role=role.role, model=role.model, total=len(jobs), already_done=len(jobs) - len(pending))
    if not pending:
        return outcome
    progress = Progress(role.role, total=len(jobs), done=outcome.already_done, price_per_mtok=role.price_per_mtok)
    state = log.path.with_suffix(".batch.json")
    client = openai.AsyncOpenAI(api_key=api_key or "unused", base_url=role.base_url, max_retries=role.retries, timeout=role.timeout)
    try:
        if state.exists():
            batch_id = json.loads(state.read_text())["batch_id"]
        else:
            upload = await client.files.create(file=(f"{role.role}.jsonl", batch_input(pending)), purpose="batch")
            batch = await client.batches.create(input_file_id=upload.id, endpoint="/v1/completions", completion_window="24h")
            batch_id = batch.id
            write_text_atomic(state, json.dumps({"batch_id": batch_id}))
        while True:
            batch = await client.batches.retrieve(batch_id)
            if batch.request_counts is not None:
                progress.done = outcome.already_done + batch.request_counts.completed
                progress.errors = batch.request_counts.failed
            progress.show()
            if batch.status in _DONE:
                break
            await asyncio.sleep(poll_seconds)
        by_id = {job.custom_id: job for job in pending}
        for file_id in (batch.output_file_id, batch.error_file_id):
            if file_id:
                content = await client.files.content(file_id)
                _store_lines(content.content, by_id, log, outcome, api_key)
        if batch.status != "completed":
            outcome.fatal = f"batch {batch_id} ended {batch.status}"
        state.unlink(missing_ok=True)
    except openai.OpenAIError as err:
        outcome.fatal = f"Batch API: {redact(str(err), api_key)}"
    finally:
        await client.close()
        progress.show(final=True)
    return outcome


def _store_lines(content: bytes, jobs: dict[str, Job], log: RawLog, outcome: RoleOutcome, api_key: str | None) -> None:
    for line in content.splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        job = jobs.get(record.get("custom_id"))
        if job is None:
            continue
        if is_success(record):
            reason = check_response(job, record["response"]["body"])
            if reason is None:
                log.append(success_record(job.custom_id, record["response"]["body"]))
                outcome.completed += 1
                outcome.tokens += job.prompt_tokens
                continue
            record = failure_record(job.custom_id, "invalid_response", reason, 200)
        else:
            detail = json.dumps(record.get("error") or record.get("response"))
            record = failure_record(job.custom_id, "batch_error", redact(detail, api_key))
        log.append(record)
        outcome.failed += 1
