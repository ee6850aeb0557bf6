"""A blend written out: its terms, each a stored model and its weight.

    >>> parse_blend("grimm-big + 1.0*grimm-small-tuned - 1.0*grimm-small")
    (Term(model='grimm-big', weight=1.0), Term(model='grimm-small-tuned', weight=1.0), Term(model='grimm-small', weight=-1.0))

The text form (``approxft eval --blend``) is terms joined by `` + `` or `` - `` (the operator
between spaces, so that model names may hold ``-`` and ``+``), each ``MODEL`` (weight 1) or
``WEIGHT*MODEL``; a leading ``-`` negates the first term. ``parse_term`` reads the other form,
``MODEL=WEIGHT`` (``--term``). Whether the models exist is the dataset's to say
(``Dataset.require_blend``).
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple, Sequence

from .params import ROLES

__all__ = ["Term", "parse_blend", "parse_term", "format_blend", "terms_models", "terms_weights", "blend_models", "require_terms"]


class Term(NamedTuple):
    """One model of a blend and its weight (natural-log scale: ``weight · lp_model``)."""

    model: str
    weight: float


_OPERATOR = re.compile(r"\s+([+-])\s+")


def parse_blend(text: str) -> tuple[Term, ...]:
    """The terms of ``"MODEL + W*MODEL - W*MODEL ..."``, in order.

    Raises:
        ValueError: an empty term, a weight that is not a finite number, or a term without a
            model; the message names the term.
    """
    body = text.strip()
    sign = 1.0
    if body[:1] in "+-" and body[1:2].isspace():
        sign, body = (-1.0 if body[0] == "-" else 1.0), body[1:].lstrip()
    pieces = _OPERATOR.split(body)
    signs = [sign] + [-1.0 if op == "-" else 1.0 for op in pieces[1::2]]
    terms = []
    for i, (s, piece) in enumerate(zip(signs, pieces[::2], strict=True)):
        weight, model = _weighted(piece, f"term {i + 1} ({piece.strip()!r}) of --blend {text!r}")
        terms.append(Term(model, s * weight))
    return tuple(terms)


def _weighted(piece: str, where: str) -> tuple[float, str]:
    """``(weight, model)`` of ``"W*MODEL"`` or ``"MODEL"``."""
    piece = piece.strip()
    if not piece:
        raise ValueError(f"{where}: empty; write MODEL, W*MODEL, joined by ' + ' or ' - '")
    if any(c.isspace() for c in piece):
        raise ValueError(f"{where}: holds a space; write MODEL or W*MODEL, joined by ' + ' or ' - '")
    number, star, model = piece.partition("*")
    if not star:
        return 1.0, piece
    return _finite(number.strip(), where), _model(model.strip(), where)


def parse_term(text: str) -> Term:
    """``"grimm-big=1.5"`` -> ``Term("grimm-big", 1.5)`` (``--term``); ValueError naming it otherwise."""
    model, sep, weight = text.rpartition("=")
    where = f"--term {text!r}"
    if not sep:
        raise ValueError(f"{where}: expected MODEL=WEIGHT")
    return Term(_model(model.strip(), where), _finite(weight.strip(), where))


def _model(name: str, where: str) -> str:
    if not name:
        raise ValueError(f"{where}: no model named")
    return name


def _finite(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{where}: weight {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{where}: weight {text!r} is not finite")
    return value


def format_blend(models: Sequence[str], weights: Sequence[float]) -> str:
    """The text form ``parse_blend`` reads: ``"grimm-big + grimm-small-tuned - grimm-small"``."""
    out = []
    for i, (m, w) in enumerate(zip(models, weights, strict=True)):
        sign = "-" if w < 0 else "+"
        body = m if abs(w) == 1 else f"{abs(w):g}*{m}"
        out.append((f"{sign} " if sign == "-" else "") + body if i == 0 else f"{sign} {body}")
    return " ".join(out)


def terms_models(terms: Sequence[Term]) -> tuple[str, ...]:
    """The models of ``terms``, in order."""
    return tuple(t.model for t in terms)


def terms_weights(terms: Sequence[Term]) -> list[float]:
    """The weights of ``terms``, in order."""
    return [t.weight for t in terms]


def blend_models(models: Sequence[str] | None = None, *, big: str | None = None, tuned: str | None = None,
                 untuned: str | None = None) -> tuple[str, ...]:
    """A blend's models in term order: ``models``, or the three roles' shorthand ``(big, tuned,
    untuned)``; ``ValueError`` where both or neither are given."""
    roles = (big, tuned, untuned)
    if models is not None:
        if any(r is not None for r in roles):
            raise ValueError("give a blend's models, or big, tuned and untuned, not both")
        return tuple(models)
    if any(r is None for r in roles):
        raise ValueError("a blend needs its models (or big, tuned and untuned: all three)")
    return roles  # type: ignore[return-value]


def require_terms(models: Sequence[str], known: Sequence[str]) -> tuple[str, ...]:
    """``models`` (a blend's, in term order) if there is at least one, each is ``known`` (the
    store's) and none is in two terms; ``ValueError`` naming the term otherwise."""
    models = tuple(models)
    if not models:
        raise ValueError("a blend needs at least one model")
    three = len(models) == len(ROLES)
    for i, m in enumerate(models):
        if m not in known:
            raise ValueError(f"term {i + 1}{f' ({ROLES[i]})' if three else ''}: unknown model {m!r}; the store holds: "
                             f"{', '.join(known)}")
        if m in models[:i] and three:
            raise ValueError(f"{m} plays two roles ({ROLES[models.index(m)]} and {ROLES[i]}); a blend needs three "
                             "different models")
        if m in models[:i]:
            raise ValueError(f"{m} is in two terms (terms {models.index(m) + 1} and {i + 1}); give each model once, "
                             "with the sum of its weights")
    return models
