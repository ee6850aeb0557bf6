"""Plausibility masks: per position, restrict a blend's support by a rule on one model's values.

Two rules, as the published methods use them:

- ``top-p`` (DExperts' filter on the base model): keep the most probable candidates of the
  model whose cumulative probability first reaches ``p`` (of the run's mass), most probable
  first, ties in run order (``p = 1`` keeps every candidate, those of probability 0 too);
- ``relative`` (contrastive decoding's plausibility constraint): keep the candidates with
  ``lp_model >= max lp_model + log alpha``.

A mask depends on one model's values only, never on the blend weights, so it is applied once to
an estimator's candidate matrix (``apply_mask``) and the masked matrix is then evaluated, batched
over weight vectors, by the same kernels: the dropped candidates are removed from each run (their
probability is 0), and where the target itself is dropped its NLL is infinite whatever the
weights (the position is ``outside`` the masked matrix with
an NLL of +inf, unread by the kernels; where the estimator already charges its own NLL outside its
support, the prototype, the target keeps its slot with a -inf fixed term, and the kernels' NLL is
+inf, or NaN where the blend gives every kept candidate probability 0 as well: its finite fills
never do). ``MaskedMatrix.target_outside`` says where; a floor
(``floor``: the NLL charged there instead, as the prototype charged 30 nats for a target outside
its support) makes such positions ``outside`` the matrix and is reported as such.

A mask is applied run by run, and the masked matrix's rows and outside NLL depend on the
estimator's kind alone (``_charges_outside``), never on which positions it holds: masking each
shard of a store and putting the parts together gives the masked matrix of the whole, slot for
slot (``engine.streaming``, ``engine.distributed``).

A candidate standing for several tokens (an estimator's pseudo-token: its fixed rows hold the
log of how many) is kept or dropped whole: for ``top-p`` it weighs its whole mass, for
``relative`` its per-token value decides. What an unlisted token's value is (below the k-th
listed one) is the estimator's assumption, so a threshold under the k-th value keeps or drops
unlisted tokens as the estimator's fill says.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numba as nb
import numpy as np

from ingest.errors import shown
from ingest.jit import EXACT, EXACT_PARALLEL
from ingest.values import finite_number

from .blocks import BLOCKS, block_positions, longest_run
from .candidates import CandidateMatrix

__all__ = ["MASK_RULES", "Mask", "MaskedMatrix", "apply_mask", "keep_slots"]

MASK_RULES = ("top-p", "relative")
_TOP_P, _RELATIVE = 0, 1


@dataclass(frozen=True)
class Mask:
    """A mask rule on one model of a blend.

    Attributes:
        rule: ``top-p`` or ``relative`` (``MASK_RULES``).
        model: the model whose values decide (a model of the blend).
        value: ``p`` in (0, 1] for ``top-p``; ``alpha`` in (0, 1] for ``relative``.
    """

    rule: str
    model: str
    value: float

    def __post_init__(self) -> None:
        if self.rule not in MASK_RULES:
            raise ValueError(f"mask {self.describe()}: unknown rule {self.rule!r}; known: {', '.join(MASK_RULES)}")
        name = "top_p" if self.rule == "top-p" else "alpha"
        if not (math.isfinite(self.value) and 0.0 < self.value <= 1.0):
            raise ValueError(f"mask {self.describe()}: {name} must be in (0, 1], got {self.value:g}")

    def describe(self) -> str:
        """``top-p:grimm-big=0.9``: the form ``--mask`` takes."""
        return f"{self.rule}:{self.model}={self.value:g}"

    def to_json(self) -> dict[str, Any]:
        """``{"rule", "model", "value"}``, as reports and transcripts record it."""
        return {"rule": self.rule, "model": self.model, "value": self.value}

    @classmethod
    def from_json(cls, block: Any) -> "Mask":
        """The mask ``to_json`` wrote (other keys, such as a report's floor and counts, ignored);
        ValueError saying what is wrong."""
        rule = block.get("rule") if isinstance(block, Mapping) else None
        model = block.get("model") if isinstance(block, Mapping) else None
        value = finite_number(block.get("value")) if isinstance(block, Mapping) else None
        if not isinstance(rule, str) or not isinstance(model, str) or not model or value is None:
            raise ValueError(f"must hold a rule, a model and a finite value, got {shown(block)}")
        return cls(rule, model, value)

    def term(self, models: tuple[str, ...]) -> int:
        """The mask model's row among ``models``; ValueError naming it where it is not one."""
        if self.model not in models:
            raise ValueError(f"mask {self.describe()}: {self.model!r} is not a model of the blend ({', '.join(models)})")
        return models.index(self.model)


@dataclass(frozen=True)
class MaskedMatrix:
    """A candidate matrix restricted by a mask.

    Attributes:
        matrix: the masked matrix (the kernels' input).
        target_outside: bool ``(n,)``; where the mask drops the target.
        floor: the NLL charged there (the positions are ``outside`` the matrix), or None: the
            NLL is infinite there.
    """

    matrix: CandidateMatrix
    target_outside: np.ndarray
    floor: float | None


@nb.njit(**EXACT_PARALLEL)
def _keep(offsets, values, row, n_models, rule, value, keep):
    """Fill ``keep`` bool (C,): whether each slot passes the rule on ``values[row]``; the fixed
    rows ``n_models..`` add each slot's log-multiplicity (``top-p`` weighs the slot's mass)."""
    n = offsets.size - 1
    longest = longest_run(offsets)
    for block in nb.prange(BLOCKS):
        order = np.empty(longest, dtype=np.int64)
        key = np.empty(longest, dtype=np.float32)
        mass = np.empty(longest)
        lo, hi = block_positions(block, n)
        for i in range(lo, hi):
            _keep_run(values, np.int64(offsets[i]), np.int64(offsets[i + 1]), row, n_models, rule, value, keep,
                      order, key, mass)


@nb.njit(**EXACT)
def _keep_run(values, a, b, row, n_models, rule, value, keep, order, key, mass):
    """``_keep`` for the run ``a:b``; ``order`` int64, ``key`` float32 and ``mass`` float64
    scratch (>= b - a)."""
    if b <= a:
        return
    top = -np.inf
    for c in range(a, b):
        if values[row, c] > top:
            top = values[row, c]
    if top == -np.inf or (rule == _TOP_P and value >= 1.0):  # nothing to rank by, or nothing to drop
        for c in range(a, b):
            keep[c] = True
        return
    if rule == _RELATIVE:
        cut = top + math.log(value)
        for c in range(a, b):
            keep[c] = values[row, c] >= cut
        return
    total = 0.0
    for j in range(b - a):
        v = np.float64(values[row, a + j]) - top
        for r in range(n_models, values.shape[0]):
            v += values[r, a + j]
        mass[j] = math.exp(v)
        total += mass[j]
        # Insertion sort, most probable first, ties in run order (stable): runs are short.
        x = values[row, a + j]
        k = j
        while k > 0 and key[k - 1] < x:
            order[k] = order[k - 1]
            key[k] = key[k - 1]
            k -= 1
        order[k] = j
        key[k] = x
    seen = 0.0
    for j in range(b - a):
        keep[a + order[j]] = seen < value * total
        seen += mass[order[j]]


@nb.njit(**EXACT_PARALLEL)
def _compact(offsets, values, hold, new_offsets, out):
    """Copy the slots ``hold`` keeps of every run into ``out`` at ``new_offsets``."""
    n = offsets.size - 1
    for block in nb.prange(BLOCKS):
        lo, hi = block_positions(block, n)
        for i in range(lo, hi):
            j = np.int64(new_offsets[i])
            for c in range(np.int64(offsets[i]), np.int64(offsets[i + 1])):
                if hold[c]:
                    for r in range(values.shape[0]):
                        out[r, j] = values[r, c]
                    j += 1


def keep_slots(matrix: CandidateMatrix, rule: str, row: int, value: float) -> np.ndarray:
    """bool ``(C,)``: the slots of ``matrix`` that ``rule`` keeps on row ``row`` (a model's)."""
    keep = np.zeros(matrix.values.shape[1], dtype=np.bool_)
    if not 0 <= row < matrix.n_models:
        raise ValueError(f"row {row} is not one of the matrix's {matrix.n_models} models")
    _keep(matrix.offsets, matrix.values, row, matrix.n_models, MASK_RULES.index(rule), float(value), keep)
    return keep


def _charges_outside(matrix: CandidateMatrix) -> bool:
    """Whether ``matrix``'s estimator charges an NLL of its own where the target is outside its
    support (the prototype's 30 nats): it sets an outside NLL, or has positions outside. Decided
    by the estimator, not by the positions a part of a store holds (a shard of the prototype's
    may have none outside)."""
    return matrix.outside_nll != 0.0 or bool(matrix.outside.any())


def apply_mask(matrix: CandidateMatrix, models: tuple[str, ...], mask: Mask, *, floor: float | None = None
               ) -> MaskedMatrix:
    """``matrix`` (of a blend of ``models``) with the slots ``mask`` drops removed.

    Args:
        floor: None: a dropped target keeps its slot with a -inf fixed term (NLL +inf); a
            number >= 0: positions whose target is dropped are ``outside`` with that NLL.

    Raises:
        ValueError: the mask's model is not in the blend, a negative or non-finite floor, or a
            floor on a matrix that already charges another NLL outside its support.
    """
    row = mask.term(models)
    if floor is not None and not (math.isfinite(floor) and floor >= 0):
        raise ValueError(f"mask floor must be a finite NLL >= 0 (nats), got {floor:g}")
    own = _charges_outside(matrix)
    if floor is not None and own and matrix.outside_nll != floor:
        raise ValueError(f"mask floor {floor:g}: estimator {matrix.estimator!r} already charges {matrix.outside_nll:g} "
                         "nats where the target is outside its support; give that floor or none")
    keep = keep_slots(matrix, mask.rule, row, mask.value)
    # The target is slot 0 of every non-empty run but those already outside the support.
    inside = (matrix.offsets[1:] > matrix.offsets[:-1]) & ~matrix.outside
    first = matrix.offsets[:-1][inside].astype(np.int64)
    target_outside = np.zeros(inside.size, dtype=np.bool_)
    target_outside[inside] = ~keep[first]
    hold = keep.copy()
    hold[first] = True  # the target's slot stays: -inf below, or the position is outside
    # A dropped target costs the floor, or +inf: positions outside the matrix, which the kernels
    # do not read. Where the matrix already charges its own NLL outside (the prototype's), an
    # infinite one is a -inf fixed term on the target's slot instead (below).
    charge = floor if floor is not None else (None if own else np.inf)
    outside = matrix.outside | target_outside if charge is not None else matrix.outside.copy()
    held = np.concatenate([[0], np.cumsum(hold, dtype=np.int64)])
    offsets = held[matrix.offsets.astype(np.int64)].astype(np.uint64)
    values = np.empty((matrix.values.shape[0], int(offsets[-1])), dtype=np.float32)
    _compact(matrix.offsets, matrix.values, hold, offsets, values)
    if charge is None:
        # A fixed row of zeros where the matrix has none, whether or not a target drops in it
        # (every part of a store then has the same rows), and -inf on each dropped target's slot.
        if values.shape[0] == matrix.n_models:
            values = np.vstack([values, np.zeros((1, values.shape[1]), dtype=np.float32)])
        values[-1, offsets[:-1][target_outside].astype(np.int64)] = -np.inf
    masked = CandidateMatrix(offsets=offsets, values=np.ascontiguousarray(values), outside=outside,
                             outside_nll=matrix.outside_nll if charge is None else charge,
                             n_models=matrix.n_models, estimator=matrix.estimator)
    return MaskedMatrix(matrix=masked, target_outside=target_outside, floor=floor)
