"""The tuned blend generation samples from: read from ``approxft tune --format json`` (``best``)
or ``approxft eval --format json`` (``blend``), the JSON objects of ``engine.report.blend_json``.

A blend is its terms (each model and its weight, in order: ``terms``), its estimator and, where
it was tuned under one, its plausibility mask (``mask``: rule, model, value). A blend tuned under
the sampled correction (``corrected:<base>``, ``engine.correction``) samples from its base
estimator: the correction shifts a split's mean NLL, it is no next-token distribution. A file without
``terms`` (written before blends had any number of models) gives three ``weights`` and, where
it names them, the models by role (``models``: big, tuned, untuned, in that order).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ingest.errors import shown
from ingest.values import finite_number

from ..correction import CORRECTED
from ..estimators import get_estimator
from ..masks import Mask
from ..params import ROLES

__all__ = ["TunedBlend", "read_tuned", "tuned_blend"]


@dataclass(frozen=True)
class TunedBlend:
    """The blend ``approxft tune --format json`` (``best``) or ``approxft eval`` (``blend``) found.

    Attributes:
        weights: one per term, in term order.
        estimator: a registered estimator's name (the base of a corrected one).
        models: the terms' models, in order; None where the file does not name them (three
            weights: the roles big, tuned and untuned of ``models.toml``, in that order).
        mask: the plausibility mask the blend was tuned under, or None.
    """

    weights: tuple[float, ...]
    estimator: str
    models: tuple[str, ...] | None
    mask: Mask | None = None
    corrected: bool = False
    """Whether the file's estimator was ``corrected:<estimator>`` (generation uses the base)."""

    def __post_init__(self) -> None:
        if self.models is not None and len(self.models) != len(self.weights):
            raise ValueError(f"{len(self.models)} models for {len(self.weights)} weights")

    def to_json(self) -> dict[str, Any]:
        """``terms``, ``weights``, ``estimator`` and ``mask`` (null without one): what
        ``tuned_blend`` reads back (the models must be named)."""
        return {"terms": [{"model": m, "weight": w} for m, w in zip(self.models, self.weights, strict=True)],
                "weights": list(self.weights), "estimator": self.estimator,
                "mask": None if self.mask is None else self.mask.to_json()}


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
    """The blend a JSON object records: ``terms`` (each ``{"model", "weight"}``) or three
    ``weights`` with, optionally, ``models`` (role -> model name); ``estimator`` (a registered
    name); ``mask`` (optional). ValueError naming the field at fault."""
    weights = block.get("weights")
    values = [finite_number(w) for w in weights] if isinstance(weights, list) else []
    if "terms" in block and block["terms"] is not None:
        models, from_terms = _terms(block["terms"])
        if weights is not None and values != from_terms:
            raise ValueError(f"field 'weights' is {shown(weights)}, not the weights of field 'terms' {shown(from_terms)}")
        values = from_terms
    else:
        if len(values) != len(ROLES) or None in values:
            raise ValueError(f"field 'weights' must be three finite numbers (or give field 'terms'), got {shown(weights)}")
        models = block.get("models")
        if models is not None and not (isinstance(models, dict) and all(isinstance(models.get(r), str) for r in ROLES)):
            raise ValueError(f"field 'models' must map big, tuned and untuned to model names, got {shown(models)}")
        models = tuple(models[r] for r in ROLES) if models else None
    estimator = block.get("estimator")
    base = estimator.removeprefix(f"{CORRECTED}:") if isinstance(estimator, str) else None
    if not isinstance(estimator, str):
        raise ValueError(f"field 'estimator' must be an estimator's name, got {shown(estimator)}")
    try:
        get_estimator(base)
    except ValueError as err:
        raise ValueError(f"field 'estimator': {err}") from None
    mask = _mask(block.get("mask"))
    if mask is not None:
        if models is None:
            raise ValueError("field 'mask': a masked blend must name its models (field 'terms')")
        try:
            mask.term(models)
        except ValueError as err:
            raise ValueError(f"field 'mask': {err}") from None
    return TunedBlend(weights=tuple(values), estimator=base, models=models, mask=mask, corrected=base != estimator)


def _terms(terms: Any) -> tuple[tuple[str, ...], list[float]]:
    """The models and weights of field ``terms``: a non-empty list of ``{"model": name,
    "weight": finite number}``, each model once."""
    if not isinstance(terms, list) or not terms:
        raise ValueError(f"field 'terms' must be a non-empty list of {{\"model\", \"weight\"}} objects, got {shown(terms)}")
    models, weights = [], []
    for i, term in enumerate(terms):
        model = term.get("model") if isinstance(term, Mapping) else None
        weight = finite_number(term.get("weight")) if isinstance(term, Mapping) else None
        if not isinstance(model, str) or not model or weight is None:
            raise ValueError(f"field 'terms[{i}]' must be {{\"model\": name, \"weight\": finite number}}, got {shown(term)}")
        if model in models:
            raise ValueError(f"field 'terms[{i}]': {model!r} is in two terms")
        models.append(model)
        weights.append(weight)
    return tuple(models), weights


def _mask(block: Any) -> Mask | None:
    """The mask of field ``mask`` (its ``floor`` and counts concern evaluation only), or None."""
    if block is None:
        return None
    try:
        return Mask.from_json(block)
    except ValueError as err:
        raise ValueError(f"field 'mask': {err}") from None
