"""The tuned blend generation samples from: read from ``approxft tune --format json`` (``best``)
or ``approxft eval --format json`` (``blend``), the JSON objects of ``engine.report.blend_json``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ingest.errors import shown
from ingest.values import finite_number

from ..estimators import get_estimator
from ..params import ROLES

__all__ = ["TunedBlend", "read_tuned", "tuned_blend", "check_models"]


@dataclass(frozen=True)
class TunedBlend:
    """The blend ``approxft tune --format json`` (``best``) or ``approxft eval`` (``blend``) found."""

    weights: tuple[float, float, float]
    estimator: str
    models: dict[str, str] | None
    """role -> model name, where the file records them."""


def read_tuned(path: str | Path) -> TunedBlend:
    """Read the blend from a tune (``best``) or eval (``blend``) JSON file; ValueError naming the
    file and field at fault."""
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # not UTF-8, not JSON, an integer of over 4300 digits
        raise ValueError(f"{path}: cannot be read as JSON ({err})") from None
    block = payload.get("best") if isinstance(payload, dict) else None
    block = block if isinstance(block, dict) else (payload.get("blend") if isinstance(payload, dict) else None)
    if not isinstance(block, dict):
        raise ValueError(f"{path}: no 'best' (approxft tune --format json) or 'blend' (approxft eval --format json) object")
    try:
        return tuned_blend(block)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def tuned_blend(block: Mapping[str, Any]) -> TunedBlend:
    """The blend a JSON object records: ``weights`` (three finite numbers), ``estimator`` (a
    registered name) and, optionally, ``models`` (role -> model name); ValueError naming the field."""
    terms = block.get("terms")
    if isinstance(terms, list) and len(terms) != len(ROLES):
        raise ValueError(f"field 'terms': generation blends three models (big, tuned, untuned), this blend has {len(terms)}")
    if block.get("mask"):
        raise ValueError("field 'mask': generation does not apply a plausibility mask; tune a blend without one")
    weights = block.get("weights")
    values = [finite_number(w) for w in weights] if isinstance(weights, list) and len(weights) == 3 else []
    if len(values) != 3 or None in values:
        raise ValueError(f"field 'weights' must be three finite numbers, got {shown(weights)}")
    estimator = block.get("estimator")
    if not isinstance(estimator, str):
        raise ValueError(f"field 'estimator' must be an estimator's name, got {shown(estimator)}")
    try:
        get_estimator(estimator)
    except ValueError as err:
        raise ValueError(f"field 'estimator': {err}") from None
    models = block.get("models")
    if models is not None and not (isinstance(models, dict) and all(isinstance(models.get(r), str) for r in ROLES)):
        raise ValueError(f"field 'models' must map big, tuned and untuned to model names, got {shown(models)}")
    return TunedBlend(weights=tuple(values), estimator=estimator,
                      models={r: models[r] for r in ROLES} if models else None)


def check_models(tuned: TunedBlend, config_models: Mapping[str, str], path: str) -> None:
    """ValueError where ``tuned`` names models other than the config's (role by role)."""
    if tuned.models is None:
        return
    wrong = [f"{r}: {tuned.models[r]!r} tuned, {config_models[r]!r} configured" for r in ROLES
             if tuned.models[r] != config_models[r]]
    if wrong:
        raise ValueError(f"{path} was tuned for other models ({'; '.join(wrong)})")
