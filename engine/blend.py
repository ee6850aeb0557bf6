"""``Blend``: models of a dataset (any number) blended under one estimator, the one route from
evaluation, tuning and the CLI to the kernels (``engine.kernels``). ``Dataset.blend`` makes them."""

from __future__ import annotations

from dataclasses import replace
from typing import Iterator, Protocol, Sequence

import numpy as np
import polars as pl

from ingest.store import Store

from .bootstrap import DocumentSums
from .candidates import CandidateMatrix
from .kernels import LANES, READ_AHEAD, blend_nll, blend_nll_grad_hess, blend_nll_sums
from .positions import (
    CELLS,
    DOCUMENTS,
    Grouping,
    Layout,
    PositionsPart,
    rows_of,
    tuning,
)
from .report import Figures, Report

__all__ = ["Blend", "BATCH", "Positions", "continued"]

BATCH = LANES
"""Weight vectors that fill one kernel pass (the kernels' vector lanes): a batched pass over
``BATCH`` of them costs about as much as ten single ones."""


def continued(matrix: CandidateMatrix) -> CandidateMatrix:
    """``matrix`` followed by ``READ_AHEAD`` columns of zeros (a copy): its last positions then
    take the kernel path they take with more positions after them (only a matrix's last runs
    take the exact one), so a part of a larger matrix gives each position's NLL to the bit."""
    return replace(matrix, values=np.pad(matrix.values, ((0, 0), (0, READ_AHEAD))))


class Positions(Protocol):
    """What a blend reads of its dataset (``engine.dataset.Dataset``, which makes blends)."""

    store: Store
    layout: Layout
    n_positions: int

    def groups(self, grouping: Grouping) -> np.ndarray: ...

    def part(self, index: int) -> PositionsPart: ...

    def tuning_count(self, split: str, min_context: int = 1) -> int: ...

    def document_sums(self, nll: np.ndarray) -> DocumentSums: ...

    def report(self, nll_sums: np.ndarray) -> tuple[dict[str, Figures], pl.DataFrame]: ...


class Blend:
    """Models of a dataset blended under one estimator; weights are one per model, in order.

    Every figure comes from the kernels over the estimator's candidate matrix; a subclass may
    build that matrix chunk by chunk instead (``engine.oracle.Oracle``: the whole vocabulary), or
    run the kernels elsewhere and add up their sums (``_sums``, ``_grad_hess``:
    ``engine.distributed.RayBlend``, on Ray workers).

    Attributes:
        dataset: the dataset.
        models: the model names, in term order (N of them; big, tuned, untuned for the roles).
        matrix: the estimator's filled candidate matrix.
    """

    def __init__(self, dataset: Positions, models: tuple[str, ...], matrix: CandidateMatrix | None):
        self.dataset = dataset
        self.models = models
        self.matrix = matrix

    @property
    def estimator(self) -> str:
        """The name of what makes the figures (``Report.estimator``)."""
        return self.matrix.estimator

    def _chunks(self, grouping: Grouping) -> Iterator[tuple[slice | np.ndarray, CandidateMatrix, np.ndarray]]:
        """The candidate matrix of the positions ``grouping`` counts, in chunks: ``(index, m,
        group)`` where ``index`` selects the store rows that ``m``'s runs are and ``group`` is their
        int32 cells (-1: left out). Here one chunk: the whole matrix, every row (the kernels skip
        the positions left out)."""
        yield slice(None), self.matrix, self.dataset.groups(grouping)

    def _sums(self, weights: np.ndarray, grouping: Grouping) -> np.ndarray:
        """float64 ``(cells, B)``: NLL sums per cell of ``grouping`` for weights ``(B, N)``."""
        out = np.zeros((grouping.size(self.dataset.layout), weights.shape[0]))
        for _, m, group in self._chunks(grouping):
            out += blend_nll_sums(m.offsets, m.values, m.row_weights(weights), m.outside, m.outside_nll,
                                  np.ascontiguousarray(group), out.shape[0])
        return out

    def _grad_hess(self, weights: np.ndarray, grouping: Grouping) -> tuple[float, np.ndarray, np.ndarray]:
        """Total NLL over the positions ``grouping`` counts, with its gradient float64 ``(N,)``
        and Hessian float64 ``(N, N)``, for weights ``(N,)``."""
        total, grad, hess = 0.0, 0.0, 0.0
        for _, m, group in self._chunks(grouping):
            t, g, h = blend_nll_grad_hess(m.offsets, m.values, m.row_weights(weights)[0], m.outside, m.outside_nll,
                                          np.ascontiguousarray(group), n_deriv=m.n_models)
            total, grad, hess = total + t, grad + g, hess + h
        return total, grad, hess

    def take(self, rows: np.ndarray) -> CandidateMatrix:
        """The candidate matrix of store rows ``rows`` (int64, ascending) alone."""
        return self.matrix.take(rows)

    def nll(self, weights: Sequence[float] | np.ndarray, rows: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Per-position NLL, nats: float64 ``(B, len(rows))`` for weights ``(B, N)`` (``(len(rows),)``
        for ``(N,)``) at store rows ``rows`` (default: every position, in store order)."""
        w = np.asarray(weights, dtype=np.float64)
        n = self.dataset.n_positions
        rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
        out = np.empty((np.atleast_2d(w).shape[0], n))
        for index, m, _ in self._chunks(rows_of(rows)):
            out[:, index] = blend_nll(m.offsets, m.values, m.row_weights(w), m.outside, m.outside_nll)
        out = out[:, rows]
        return out[0] if w.ndim == 1 else out

    def document_sums(self, weights: Sequence[float] | np.ndarray) -> DocumentSums:
        """Per-document and per-bucket NLL sums for weights ``(B, N)`` (``engine.bootstrap``), one
        kernel pass; a subclass's figure may add to them (``CorrectedBlend``: the bootstrap adds its
        shift)."""
        w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
        return self.dataset.document_sums(self._sums(w, DOCUMENTS).T)

    def tuning_count(self, split: str, min_context: int = 1) -> int:
        """How many positions tuning reads: those of ``split`` with at least ``min_context``
        tokens of context (``Dataset.tuning_count``).

        Raises:
            ValueError: unknown split, or no such position.
        """
        return self.dataset.tuning_count(split, min_context)

    def mean_nll(self, weights: Sequence[float] | np.ndarray, *, split: str, min_context: int = 1) -> np.ndarray:
        """Mean NLL over one split's positions with at least ``min_context`` tokens of context.

        The fast path for tuning: one kernel pass for all weight vectors, nothing per position
        is written out.

        Args:
            weights: float ``(B, N)`` or ``(N,)``.

        Returns:
            float64 ``(B,)`` (a 0-d array for ``(N,)`` weights).

        Raises:
            ValueError: the split has no position with that much context.
        """
        count = self.dataset.tuning_count(split, min_context)
        w = np.asarray(weights, dtype=np.float64)
        mean = self._sums(np.atleast_2d(w), tuning(split, min_context))[0] / count
        return mean[0] if w.ndim == 1 else mean

    def mean_nll_grad_hess(self, weights: Sequence[float] | np.ndarray, *, split: str, min_context: int = 1
                           ) -> tuple[float, np.ndarray, np.ndarray]:
        """Mean NLL over the same positions as ``mean_nll``, with its gradient and Hessian in the
        blend weights, in one kernel pass (Newton's step).

        Args:
            weights: float ``(N,)``.

        Returns:
            ``(mean NLL, gradient float64 (N,), Hessian float64 (N, N))``, nats.
        """
        count = self.dataset.tuning_count(split, min_context)
        total, grad, hess = self._grad_hess(np.asarray(weights, dtype=np.float64), tuning(split, min_context))
        return total / count, grad / count, hess / count

    def evaluate(self, weights: Sequence[float] | np.ndarray) -> Report | list[Report]:
        """Figures per split and per context-length bucket, in one kernel pass.

        Args:
            weights: float ``(N,)`` for one report, or ``(B, N)`` for a list of B reports.
        """
        ds = self.dataset
        w = np.asarray(weights, dtype=np.float64)
        sums = self._sums(np.atleast_2d(w), CELLS)  # (G, B)
        reports = []
        for b, wb in enumerate(np.atleast_2d(w)):
            splits, by_context = ds.report(sums[:, b])
            reports.append(
                Report(name="blend", estimator=self.estimator, weights=wb.copy(), splits=splits, by_context=by_context)
            )
        return reports[0] if w.ndim == 1 else reports

    def nll_frame(self, weights: Sequence[float] | np.ndarray) -> pl.DataFrame:
        """Per-position NLL for one weight vector ``(N,)`` beside the positions table's keys.

        Returns:
            polars DataFrame: ``request``, ``position``, ``split``, ``document``, ``target``, ``nll``.
        """
        keys = self.dataset.store.positions.select("request", "position", "split", "document", "target")
        return keys.with_columns(pl.Series("nll", self.nll(np.asarray(weights, dtype=np.float64).reshape(len(self.models)))))
