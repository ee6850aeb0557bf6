"""``models.toml``: which model plays which role, where it is served, and how to ask it.

    [defaults]                    # optional, applies to every role
    base_url = "http://127.0.0.1:8000/v1"
    concurrency = 4               # requests in flight per role
    rpm = 600                     # requests per minute per role
    retries = 5                   # tries after the first on 429 / 5xx / timeouts / connection errors
    timeout = 60.0                # seconds per request
    backoff = 1.0                 # first retry delay, seconds (doubles each time, capped at 60)

    [models.big]
    model = "davinci-002"
    base_url = "https://api.openai.com/v1"
    api_key_env = "OPENAI_API_KEY"   # the NAME of the variable; the key itself never goes in a file
    mode = "echo"                     # echo | prompt_logprobs | chat | next_token | batch
    max_tokens = 1                    # echo: 0 or 1; unset, a probe decides (ingest.collect.probe)
    price_per_mtok = 2.0              # USD per million prompt tokens, for the cost estimate
    context_tokens = 512              # next_token: tokens of context sent per position
    positions_per_request = 0         # next_token: positions sampled per request (0 = all)
    poll_seconds = 30                 # batch mode: seconds between status checks
    batch_timeout = 93600             # batch mode: seconds a batch may take from its creation (26 h)
    calibration_k = 20                # --calibration-k all: this role's top-K lists instead (an API that caps k)

Roles ``big``, ``tuned`` and ``untuned`` are required; any other role is an extra reference.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ingest.errors import IngestError

REQUIRED_ROLES = ("big", "tuned", "untuned")
MODES = ("echo", "prompt_logprobs", "chat", "next_token", "batch")
_ROLE_KEYS = {
    "model": str, "base_url": str, "api_key_env": str, "mode": str, "max_tokens": int, "logprobs": int,
    "concurrency": int, "rpm": (int, float), "retries": int, "timeout": (int, float), "backoff": (int, float),
    "price_per_mtok": (int, float), "context_tokens": int, "chat_max_tokens": int, "poll_seconds": (int, float),
    "batch_timeout": (int, float), "positions_per_request": int, "calibration_k": int,
}


@dataclass(frozen=True)
class RoleConfig:
    """How to collect one role's log-probabilities."""

    role: str
    model: str
    base_url: str
    api_key_env: str | None = None
    """Name of the environment variable holding the key; None for a server that needs none."""
    mode: str = "echo"
    max_tokens: int | None = None
    """echo: tokens generated after the prompt, 0 or 1 (dropped at ingest); None = decided by a
    probe of the endpoint (``ingest.collect.probe``), 1 in batch mode."""
    logprobs: int | None = None
    """top-k per position; None = the manifest's ``params.logprobs``."""
    concurrency: int = 4
    rpm: float = 600.0
    retries: int = 5
    timeout: float = 60.0
    backoff: float = 1.0
    price_per_mtok: float | None = None
    context_tokens: int = 512
    """next_token mode: tokens of context sent before each scored position."""
    positions_per_request: int = 0
    """next_token mode: positions sampled per request (0 = every position); the others are
    stored unobserved."""
    chat_max_tokens: int = 64
    """chat mode: tokens generated (and scored) per request."""
    poll_seconds: float = 30.0
    """batch mode: seconds between status checks."""
    batch_timeout: float = 26 * 3600.0
    """batch mode: seconds a batch may take from its creation before the role stops waiting
    (OpenAI's completion window is 24 h; 2 h of margin)."""
    calibration_k: int | None = None
    """``--calibration-k all``: ask this role for top-K lists instead of its whole distribution
    (an endpoint that caps k, e.g. a big model behind an API beside the small pair served
    locally); the sample then holds both kinds, as ``approxft calibrate`` takes them."""


def read_config(path: str | Path) -> list[RoleConfig]:
    """Parse and validate ``models.toml``; IngestError names the file and the field at fault."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise IngestError(f"cannot be read: {err.strerror}", file=str(path)) from None
    except tomllib.TOMLDecodeError as err:
        raise IngestError(f"is not valid TOML: {err}", file=str(path)) from None
    defaults = data.get("defaults", {})
    models = data.get("models")
    if not isinstance(models, dict) or not models:
        raise IngestError("missing: a [models.<role>] table per role", file=str(path), field="models")
    for role in REQUIRED_ROLES:
        if role not in models:
            raise IngestError(f"missing: roles {', '.join(REQUIRED_ROLES)} are required", file=str(path), field=f"models.{role}")
    roles = []
    for role, table in models.items():
        if not isinstance(table, dict):
            raise IngestError("is not a table", file=str(path), field=f"models.{role}")
        merged: dict[str, Any] = {**defaults, **table}
        for key, value in merged.items():
            field = f"models.{role}.{key}" if key in table else f"defaults.{key}"
            kind = _ROLE_KEYS.get(key)
            if kind is None:
                raise IngestError(f"is not a known setting ({', '.join(sorted(_ROLE_KEYS))})", file=str(path), field=field)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise IngestError(f"is {value!r}, of the wrong type", file=str(path), field=field)
        for key in ("model", "base_url"):
            if key not in merged:
                raise IngestError("missing", file=str(path), field=f"models.{role}.{key}")
        if merged.get("mode", "echo") not in MODES:
            raise IngestError(f"is {merged['mode']!r}: expected one of {', '.join(MODES)}", file=str(path), field=f"models.{role}.mode")
        if merged.get("max_tokens", 0) not in (0, 1):
            raise IngestError("must be 0 or 1 (echo scoring)", file=str(path), field=f"models.{role}.max_tokens")
        for key in ("concurrency", "rpm", "timeout", "context_tokens", "chat_max_tokens", "poll_seconds", "batch_timeout",
                    "calibration_k"):
            if key in merged and not merged[key] > 0:
                raise IngestError(f"is {merged[key]}, not positive", file=str(path), field=f"models.{role}.{key}")
        if not math.isfinite(merged.get("batch_timeout", 0)):
            raise IngestError("must be a finite number of seconds", file=str(path), field=f"models.{role}.batch_timeout")
        if merged.get("positions_per_request", 0) < 0:
            raise IngestError("must be >= 0", file=str(path), field=f"models.{role}.positions_per_request")
        if merged.get("logprobs") is not None and merged["logprobs"] < 0:
            raise IngestError("must be >= 0", file=str(path), field=f"models.{role}.logprobs")
        if "price_per_mtok" in merged and not (math.isfinite(merged["price_per_mtok"]) and merged["price_per_mtok"] >= 0):
            raise IngestError("must be a finite non-negative number", file=str(path), field=f"models.{role}.price_per_mtok")
        roles.append(RoleConfig(role=role, **merged))
    return roles
