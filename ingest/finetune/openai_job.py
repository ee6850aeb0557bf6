"""Fine-tuning through an OpenAI-compatible API: upload the training file, create the job, poll
it to the end.

The flow is the one OpenAI documents: ``files.create(purpose="fine-tune")``,
``fine_tuning.jobs.create(training_file=..., model=...)``, then ``fine_tuning.jobs.retrieve``
until the status is ``succeeded``, ``failed`` or ``cancelled``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ingest.finetune.training_file import read_training_texts
from ingest.server_text import one_line, openai_client, server_error

__all__ = ["FineTuneFailed", "TERMINAL", "run_openai_finetune", "finetune_openai"]

TERMINAL = ("succeeded", "failed", "cancelled")


class FineTuneFailed(ValueError):
    """The job ended ``failed`` or ``cancelled``; the message carries the service's error."""


def _error_text(job: Any) -> str:
    error = getattr(job, "error", None)
    if error is None:
        return "no error given"
    message = getattr(error, "message", None) or (error.get("message") if isinstance(error, dict) else None)
    code = getattr(error, "code", None) or (error.get("code") if isinstance(error, dict) else None)
    return one_line(f"{message or error}" + (f" ({code})" if code else ""))


def run_openai_finetune(
    client: Any,
    training_file: str | Path,
    *,
    model: str,
    suffix: str | None = None,
    poll_seconds: float = 10.0,
    progress: Callable[[str], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Upload ``training_file``, fine-tune ``model`` on it, wait; return the fine-tuned model's name.

    Args:
        client: an ``openai.OpenAI`` client (or anything with its ``files`` and
            ``fine_tuning.jobs`` methods).
        progress: called with one line per status change (and per new job event).

    Raises:
        FineTuneFailed: the job ended ``failed`` or ``cancelled``.
    """
    say = progress or (lambda line: None)
    with open(training_file, "rb") as f:
        uploaded = client.files.create(file=f, purpose="fine-tune")
    say(f"uploaded {training_file} as {uploaded.id}")
    extra = {"suffix": suffix} if suffix else {}
    job = client.fine_tuning.jobs.create(training_file=uploaded.id, model=model, **extra)
    say(f"created job {job.id} ({job.status}) for {model}")
    status = job.status
    start = time.monotonic()
    while job.status not in TERMINAL:
        sleep(poll_seconds)
        job = client.fine_tuning.jobs.retrieve(job.id)
        if job.status != status:
            status = job.status
            trained = getattr(job, "trained_tokens", None)
            say(f"job {job.id}: {status} after {time.monotonic() - start:.0f} s"
                + (f", {trained} tokens trained" if trained else ""))
    if job.status != "succeeded":
        raise FineTuneFailed(f"fine-tuning job {job.id} {job.status}: {_error_text(job)}")
    if not job.fine_tuned_model:
        raise FineTuneFailed(f"fine-tuning job {job.id} succeeded without naming the fine-tuned model")
    return job.fine_tuned_model


def finetune_openai(
    training_file: str | Path,
    *,
    model: str,
    base_url: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    suffix: str | None = None,
    poll_seconds: float = 10.0,
    progress: Callable[[str], None] | None = None,
) -> str:
    """``run_openai_finetune`` with an ``openai.OpenAI`` client for ``base_url`` (the client's
    default, OpenAI, where None), its key read from the variable named ``api_key_env``; the
    training file is checked before anything is uploaded.

    Raises:
        ValueError: the file is not a training file, the key is not set (for OpenAI itself), the
            API refused (its message), or the job failed.
    """
    import openai

    read_training_texts(training_file)
    key = os.environ.get(api_key_env)
    if key is None and base_url is None:
        raise ValueError(f"the API key variable {api_key_env} is not set")
    client = openai_client(api_key=key, asynchronous=False, base_url=base_url, max_retries=2)
    try:
        return run_openai_finetune(client, training_file, model=model, suffix=suffix, poll_seconds=poll_seconds,
                                   progress=progress)
    except openai.APIError as err:
        raise ValueError(f"the API refused: {server_error(err)}") from None
