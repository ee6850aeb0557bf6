"""Estimators: how a blend's missing values and unlisted mass are filled from top-k data.

The estimator contract, which every module listed in ``ESTIMATORS`` keeps:

- ``NAME``: the registry name (``approxft eval --estimator NAME``);
- the module docstring: its assumptions, first line a one-line summary;
- ``build(UnionCandidates) -> CandidateMatrix``: the filled matrix the kernels evaluate;
- ``slots(UnionCandidates) -> list[list[int]]``: for generation, which slots of a one-position
  matrix that ``build`` makes hold each input candidate (slot 0 is the target's; slots no
  candidate holds are pseudo-tokens standing for unlisted mass, never sampled);
- ``NEEDS_CALIBRATION = True`` (optional, default False): ``build`` and ``slots`` read the
  dataset's calibration fit from ``UnionCandidates.calibration``.

The registry below is the one place that lists them; the CLI, the Python API and generation look
names up here, and ``default_estimator`` picks one where none is named. ``bounds`` is not an
estimator (no single matrix serves every weight vector): it bounds the NLL per position.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Callable

from ..candidates import CandidateMatrix, UnionCandidates
from . import calibrated_tail, prototype, spread_tail, union_kth_tail, zipf_tail

__all__ = ["Estimator", "ESTIMATORS", "CALIBRATED_ESTIMATOR", "FALLBACK_ESTIMATOR", "default_estimator", "get_estimator"]


@dataclass(frozen=True)
class Estimator:
    """A named estimator (the contract above).

    Attributes:
        name: registry name.
        summary: the first line of its assumptions.
        assumptions: the full statement (the module docstring).
        build: ``UnionCandidates -> CandidateMatrix``.
        slots: ``UnionCandidates -> list[list[int]]``, generation's slot map of ``build``'s run.
        needs_calibration: whether ``build`` needs the dataset's calibration fit for the blend's
            models (``UnionCandidates.calibration``, written by ``approxft calibrate``).
    """

    name: str
    summary: str
    assumptions: str
    build: Callable[[UnionCandidates], CandidateMatrix]
    slots: Callable[[UnionCandidates], list[list[int]]]
    needs_calibration: bool = False


def _from_module(module: ModuleType) -> Estimator:
    doc = (module.__doc__ or "").strip()
    return Estimator(name=module.NAME, summary=doc.splitlines()[0], assumptions=doc, build=module.build,
                     slots=module.slots, needs_calibration=getattr(module, "NEEDS_CALIBRATION", False))


ESTIMATORS: dict[str, Estimator] = {
    e.name: e for e in map(_from_module, (calibrated_tail, zipf_tail, spread_tail, union_kth_tail, prototype))
}
CALIBRATED_ESTIMATOR = calibrated_tail.NAME
"""The default where the dataset has a calibration fit for the blend's models: the smallest error
at k = 20 on the deep grid and against the exact proxy-tuning figure (``python -m bench.estimators``,
README "Estimators")."""
FALLBACK_ESTIMATOR = zipf_tail.NAME
"""The default without a calibration fit: the smallest error of the estimators that need none
(``python -m bench.estimators``)."""


def default_estimator(*, calibrated: bool) -> str:
    """The estimator a blend gets when none is named: ``CALIBRATED_ESTIMATOR`` where the dataset
    has a calibration fit for the blend's models (``calibrated``), ``FALLBACK_ESTIMATOR`` otherwise.
    ``Dataset.default_estimator`` answers it for a store."""
    return CALIBRATED_ESTIMATOR if calibrated else FALLBACK_ESTIMATOR


def get_estimator(name: str) -> Estimator:
    """Look up an estimator by name; ``ValueError`` listing the known names otherwise."""
    try:
        return ESTIMATORS[name]
    except KeyError:
        raise ValueError(f"unknown estimator {name!r}; known: {', '.join(ESTIMATORS)}") from None
