"""The array bundles that sit between the store and the kernels.

``UnionCandidates`` is what the store holds for one blend's models: every position's candidate
run (target first, then the union of all stored models' top-k lists), with each model's value
where the data has one, and the dataset's calibration fit for them (``MissingDrops``, where it
has one). An estimator turns it into a ``CandidateMatrix``: a complete, filled matrix the blend
kernels consume, plus how blend weights map onto its rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ingest.errors import shown
from ingest.store import Store
from ingest.values import finite_number, is_integer

__all__ = ["UnionCandidates", "CandidateMatrix", "MissingDrops"]


@dataclass(frozen=True)
class MissingDrops:
    """Fitted joint distributions of how far below their k-th values the missing values lie: the
    ``calibrated-tail`` estimator's calibration fit (``engine.calibration.fit``), stored with the
    store (``engine.calibration.fit_file``).

    Attributes:
        k: the list length the fit is for.
        drop: float64 ``(2**M, Q, M)``; for a token listed by exactly the models in bitmask
            ``mask``, node q's drop ``D`` (nats, >= 0) for each model (0 for listing models).
        log_weight: float64 ``(2**M, Q)``; natural-log node probabilities (each mask's row sums
            to one; -inf marks an unused node).
    """

    k: int
    drop: np.ndarray
    log_weight: np.ndarray

    def to_json(self) -> dict:
        return {"k": self.k, "drop": np.round(self.drop, 4).tolist(),
                "weight": np.round(np.exp(self.log_weight), 6).tolist()}

    @classmethod
    def from_json(cls, d: Any) -> "MissingDrops":
        """The fit ``to_json`` wrote; ValueError naming the field where ``d`` is not one."""
        if not isinstance(d, Mapping):
            raise ValueError(f"is {type(d).__name__}, not an object with k, drop and weight")
        k = d.get("k")
        if not is_integer(k) or k < 1:
            raise ValueError(f"field 'k' is {shown(k)}, not a positive integer")
        drop, w = _finite_array(d.get("drop"), 3), _finite_array(d.get("weight"), 2)
        if drop is None or w is None:
            raise ValueError("fields 'drop' and 'weight' must be nested lists of finite numbers")
        if drop.ndim != 3 or drop.shape[0] != 1 << drop.shape[2] or w.shape != drop.shape[:2]:
            raise ValueError(f"fields 'drop' {drop.shape} and 'weight' {w.shape} are not (2**M, Q, M) and (2**M, Q)")
        if not (np.isfinite(drop) & (drop >= 0)).all():
            raise ValueError("field 'drop' must hold finite drops >= 0")
        sums = w.sum(axis=1)
        # A mask's nodes are a distribution (rounded to 6 digits), or unused (all zero).
        if not ((w >= 0) & (w <= 1)).all() or not (np.isclose(sums, 1, atol=1e-4) | (sums == 0)).all():
            raise ValueError("field 'weight' must hold node probabilities, each row summing to 1 (or 0: unused)")
        with np.errstate(divide="ignore"):
            return cls(k=k, drop=drop, log_weight=np.log(w))


def _finite_array(value: Any, ndim: int) -> np.ndarray | None:
    """float64 array of ``value``: lists nested ``ndim`` deep, rectangular, of finite numbers
    (``ingest.values.finite_number``: no booleans, no numeric strings, no integer too large for a
    float); None where it is not one."""
    def leaves(v: Any, depth: int) -> Any:
        if depth == 0:
            x = finite_number(v)
            if x is None:
                raise ValueError("not a finite number")
            return x
        if not isinstance(v, list):
            raise ValueError("not a list")
        return [leaves(item, depth - 1) for item in v]

    try:
        return np.array(leaves(value, ndim), dtype=np.float64)
    except ValueError:  # a leaf not a finite number, lists not nested deep enough, or ragged
        return None


@dataclass(frozen=True)
class UnionCandidates:
    """Observed data for the models of one blend, in CSR layout over positions.

    Attributes:
        offsets: uint64 ``(n + 1,)``; position ``i`` owns candidates ``offsets[i]:offsets[i+1]``,
            and its first candidate is the actual (target) token.
        lp: float32 ``(M, C)``, model-major (rows in blend order: big, tuned, untuned); the
            model's natural-log probability of the candidate, NaN where the data has none. The
            target's value is its exact log-probability (echo scoring).
        rank: int16 ``(M, C)``; the candidate's 0-based rank in that model's top-k list, -1 when
            it is not in the list (the target can have a value without a rank).
        k: int64 ``(M,)``; each model's list length.
        vocab_size: the tokenizer's vocabulary size V (how many tokens share the unlisted mass).
        calibration: the dataset's calibration fit for these models in this order (written by
            ``approxft calibrate``), or None where it has none; estimators that need one
            (``Estimator.needs_calibration``) read it.
    """

    offsets: np.ndarray
    lp: np.ndarray
    rank: np.ndarray
    k: np.ndarray
    vocab_size: int
    calibration: MissingDrops | None = None

    @property
    def n_positions(self) -> int:
        return int(self.offsets.size - 1)

    @classmethod
    def from_store(cls, store: Store, models: Sequence[str], *, vocab_size: int,
                   calibration: MissingDrops | None) -> "UnionCandidates":
        """What ``store`` (or one of its shards, ``Store.shard``) holds for ``models``, in that order."""
        lp, rank = store.union_columns(models)
        return cls(offsets=store.offsets(), lp=lp, rank=rank, k=np.array([store.k[m] for m in models], dtype=np.int64),
                   vocab_size=vocab_size, calibration=calibration)


@dataclass(frozen=True)
class CandidateMatrix:
    """A filled candidate matrix: the kernels' input for one estimator and one set of models.

    Attributes:
        offsets: uint64 ``(n + 1,)``; the target is slot 0 of its run unless ``outside[i]``.
        values: float32 ``(R, C)`` C-contiguous, finite or -inf. Rows ``0..M-1`` are the models'
            (filled) log-probabilities; any further rows are fixed terms added to every score
            with weight 1 (e.g. a log-multiplicity for pseudo-tokens that stand for many tokens).
        outside: bool ``(n,)``; True where the estimator's support excludes the target.
        outside_nll: the NLL (nats) charged at such positions, whatever the weights.
        n_models: M, the number of weighted rows.
        estimator: the name of the estimator that built it.
    """

    offsets: np.ndarray
    values: np.ndarray
    outside: np.ndarray
    outside_nll: float
    n_models: int
    estimator: str

    @classmethod
    def with_target_inside(cls, offsets: np.ndarray, values: np.ndarray, *, n_models: int, estimator: str) -> "CandidateMatrix":
        """A matrix whose support holds every position's target (nothing is ``outside``)."""
        return cls(
            offsets=offsets,
            values=values,
            outside=np.zeros(offsets.size - 1, dtype=np.bool_),
            outside_nll=0.0,
            n_models=n_models,
            estimator=estimator,
        )

    @classmethod
    def concatenate(cls, parts: "Iterable[CandidateMatrix]", *, n_positions: int, n_columns: int, n_rows: int,
                    trailing: int = 0) -> "CandidateMatrix":
        """One matrix of consecutive positions' matrices, taken one at a time into arrays made
        once (the memory beyond the result is one part's): a position's run and figures are
        those of its part, since every estimator fills each position from its own data alone.

        Args:
            parts: the matrices, in position order, each of ``n_rows`` rows, under one estimator,
                each's runs ending at its last column (none ``engine.blend.continued``: runs
                cannot skip columns).
            n_positions, n_columns: their totals (positions, candidate slots).
            trailing: zero columns after the last part's (``engine.blend.continued``'s, made
                here without a second copy).
        """
        offsets = np.zeros(n_positions + 1, dtype=np.uint64)
        values = np.empty((n_rows, n_columns + trailing), dtype=np.float32)
        values[:, n_columns:] = 0.0
        outside = np.empty(n_positions, dtype=np.bool_)
        shared, at, column = None, 0, 0  # shared: (n_models, estimator, outside_nll) of every part
        for part in parts:
            n, c = part.outside.size, part.values.shape[1]
            shared = shared or (part.n_models, part.estimator, part.outside_nll)
            if (part.values.shape[0], part.n_models, part.estimator, part.outside_nll) != (n_rows, *shared):
                raise ValueError("parts of one matrix must share their rows, estimator and outside NLL")
            if int(part.offsets[-1]) != c:
                raise ValueError(f"a part's runs end at column {int(part.offsets[-1])} of its {c}: parts cannot skip columns")
            offsets[at + 1 : at + n + 1] = part.offsets[1:] + np.uint64(column)
            values[:, column : column + c] = part.values
            outside[at : at + n] = part.outside
            at, column = at + n, column + c
            del part  # before the next is made: one part in memory at a time
        if shared is None or (at, column) != (n_positions, n_columns):
            raise ValueError(f"the parts hold {at} positions and {column} slots, not {n_positions} and {n_columns}")
        return cls(offsets=offsets, values=values, outside=outside, outside_nll=shared[2], n_models=shared[0],
                   estimator=shared[1])

    def run_scores(self, i: int, weights: np.ndarray) -> np.ndarray:
        """float64 ``(hi - lo,)``: the blend score ``sum_r w[r] * values[r, c]`` of every slot of
        run ``i`` for one weight vector ``(M,)``, a zero weight times -inf counting as 0, as in the
        kernels (``engine.kernels``); NaN, silently, where terms of -inf and +inf meet (a slot
        impossible under a positively and a negatively weighted model): the caller judges it. A
        slot's blended log-probability is its score minus the log-sum-exp over the run."""
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        row_w = self.row_weights(np.asarray(weights, dtype=np.float64))[0]
        values = self.values[:, lo:hi].astype(np.float64)
        with np.errstate(invalid="ignore"):
            terms = row_w[:, None] * values
            terms[(row_w[:, None] == 0) & np.isinf(values)] = 0.0
            return terms.sum(axis=0)

    def take(self, rows: np.ndarray) -> "CandidateMatrix":
        """The matrix of positions ``rows`` only (int ``(r,)``), in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        lo = self.offsets[rows].astype(np.int64)
        lengths = self.offsets[rows + 1].astype(np.int64) - lo
        offsets = np.zeros(rows.size + 1, dtype=np.uint64)
        np.cumsum(lengths, out=offsets[1:])
        columns = np.repeat(lo - offsets[:-1].astype(np.int64), lengths) + np.arange(int(offsets[-1]))
        return CandidateMatrix(offsets=offsets, values=np.ascontiguousarray(self.values[:, columns]),
                               outside=self.outside[rows].copy(), outside_nll=self.outside_nll,
                               n_models=self.n_models, estimator=self.estimator)

    def row_weights(self, weights: np.ndarray) -> np.ndarray:
        """Map blend weights ``(B, M)`` to kernel row weights ``(B, R)`` float64.

        Fixed rows get weight 1.
        """
        w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
        if w.shape[1] != self.n_models:
            raise ValueError(f"weights must have {self.n_models} columns, got shape {w.shape}")
        extra = self.values.shape[0] - self.n_models
        if extra == 0:
            return np.ascontiguousarray(w)
        return np.ascontiguousarray(np.hstack([w, np.ones((w.shape[0], extra))]))
