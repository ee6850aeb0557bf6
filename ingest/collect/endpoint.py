"""What a run learned about a role's endpoint, kept in ``raw/<role>.endpoint.json`` so that a
rerun reuses it instead of asking again: echo's ``max_tokens`` and how next-token contexts are
sent (``ingest.collect.probe``), and the outcome of ``--verify`` (``ingest.collect.verify``).

    {"base_url": "http://127.0.0.1:8000/v1", "model": "small",
     "echo_max_tokens": 0, "echo_probe": "max_tokens=0 generated nothing",
     "context_prompts": "token ids", "context_probe": "...",
     "verify": {"positions": 8, "seed": 0, "tolerance": 0.1, "logprobs": 5, "passed": true, ...}}

The record belongs to one endpoint (``base_url`` and ``model``): a role pointed elsewhere starts a
fresh one. It is replaced atomically (a temporary file, then a rename).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ingest.atomic import write_text_atomic
from ingest.collect.config import RoleConfig
from ingest.collect.contexts import TEXT, TOKEN_IDS
from ingest.errors import IngestError


@dataclass
class EndpointRecord:
    """A role's endpoint as probed and verified; None = not known yet."""

    base_url: str
    model: str
    echo_max_tokens: int | None = None
    echo_probe: str | None = None
    """What the max_tokens probe saw."""
    context_prompts: str | None = None
    """``token ids`` or ``text`` (``ingest.collect.contexts``)."""
    context_probe: str | None = None
    """What the token-id probe saw."""
    verify: dict[str, Any] | None = field(default=None)
    """The last ``--verify``: its settings, ``passed``, and the failure's message."""

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(asdict(self), indent=1) + "\n")


def endpoint_path(raw_dir: Path, role: str) -> Path:
    return raw_dir / f"{role}.endpoint.json"


def load_record(path: Path, role: RoleConfig) -> EndpointRecord:
    """The record at ``path`` where it is ``role``'s endpoint's, else a fresh one.

    Raises:
        IngestError: the file is not a record, or one of its fields has the wrong type (edited
            by hand?), naming the file and the field: what it holds is sent to the server as it
            is, so it is refused rather than guessed at.
    """
    fresh = EndpointRecord(base_url=role.base_url, model=role.model)
    if not path.exists():
        return fresh
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise TypeError(f"a JSON {type(data).__name__}, not an object")
        record = EndpointRecord(**data)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError) as err:
        raise IngestError(f"is not an endpoint record ({err}): {_MOVE_ASIDE}", file=str(path)) from None
    for name, (valid, what) in _FIELDS.items():
        value = getattr(record, name)
        if not valid(value):
            raise IngestError(f"is {value!r:.60}, not {what}: {_MOVE_ASIDE}", file=str(path), field=name)
    return record if (record.base_url, record.model) == (role.base_url, role.model) else fresh


def _text_or_none(value: Any) -> bool:
    return value is None or isinstance(value, str)


_MOVE_ASIDE = "move the file aside to probe the endpoint again"
_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "base_url": (lambda v: isinstance(v, str), "a URL"),
    "model": (lambda v: isinstance(v, str), "a model name"),
    "echo_max_tokens": (lambda v: v is None or (type(v) is int and v in (0, 1)), "0 or 1 (or null: not probed yet)"),
    "echo_probe": (_text_or_none, "a text (or null)"),
    "context_prompts": (lambda v: v in (None, TOKEN_IDS, TEXT), f"{TOKEN_IDS!r} or {TEXT!r} (or null: not probed yet)"),
    "context_probe": (_text_or_none, "a text (or null)"),
    "verify": (lambda v: v is None or isinstance(v, dict), "an object (or null)"),
}
"""Each field's check and, for messages, what it must hold: a rerun sends what the record says."""
