"""Estimators: how a blend's missing values and unlisted mass are filled from top-k data.

Each estimator is a module with a ``NAME``, a docstring stating its assumptions, and
``build(UnionCandidates) -> CandidateMatrix``. The registry below is the one place that lists
them; ``approxft eval --estimator NAME`` and the Python API look names up here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..candidates import CandidateMatrix, UnionCandidates
from . import seed, union_kth_tail, zipf_tail

__all__ = ["Estimator", "ESTIMATORS", "DEFAULT_ESTIMATOR", "get_estimator"]


@dataclass(frozen=True)
class Estimator:
    """A named estimator.

    Attributes:
        name: registry name.
        summary: the first line of its assumptions.
        assumptions: the full statement (the module docstring).
        build: ``UnionCandidates -> CandidateMatrix``.
    """

    name: str
    summary: str
    assumptions: str
    build: Callable[[UnionCandidates], CandidateMatrix]


def _from_module(module) -> Estimator:
    doc = (module.__doc__ or "").strip()
    return Estimator(name=module.NAME, summary=doc.splitlines()[0], assumptions=doc, build=module.build)


ESTIMATORS: dict[str, Estimator] = {e.name: e for e in map(_from_module, (union_kth_tail, zipf_tail, seed))}
DEFAULT_ESTIMATOR = union_kth_tail.NAME


def get_estimator(name: str) -> Estimator:
    """Look up an estimator by name; ``ValueError`` listing the known names otherwise."""
    try:
        return ESTIMATORS[name]
    except KeyError:
        raise ValueError(f"unknown estimator {name!r}; known: {', '.join(ESTIMATORS)}") from None
