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
    splits: list[str]
    split_code: np.ndarray
    n_positions: int
    group: np.ndarray
    n_groups: int
    n_buckets: int
    documents: tuple[np.ndarray, np.ndarray]
    document_cells: np.ndarray

    def tuning_positions(self, split: str, min_context: int = 1) -> tuple[np.ndarray, int]: ...

    def report(self, nll_sums: np.ndarray, group: np.ndarray) -> tuple[dict[str, Figures], pl.DataFrame]: ...


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

    def _chunks(self, group: np.ndarray) -> Iterator[tuple[slice | np.ndarray, CandidateMatrix]]:
        """The candidate matrix of the positions ``group`` counts (>= 0), in chunks: ``(index, m)``
        where ``index`` selects the store rows that ``m``'s runs are. Here one chunk: the whole
        matrix, every row (the kernels skip the positions a group of -1 leaves out)."""
        yield slice(None), self.matrix

    def _sums(self, weights: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
        """float64 ``(n_groups, B)``: NLL sums per group for weights ``(B, N)``."""
        out = np.zeros((n_groups, weights.shape[0]))
        for index, m in self._chunks(group):
            out += blend_nll_sums(m.offsets, m.values, m.row_weights(weights), m.outside, m.outside_nll,
                                  np.ascontiguousarray(group[index]), n_groups)
        return out

    def _grad_hess(self, weights: np.ndarray, group: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """Total NLL over the positions ``group`` counts (>= 0), with its gradient float64 ``(N,)``
        and Hessian float64 ``(N, N)``, for weights ``(N,)``."""
        total, grad, hess = 0.0, 0.0, 0.0
        for index, m in self._chunks(group):
            t, g, h = blend_nll_grad_hess(m.offsets, m.values, m.row_weights(weights)[0], m.outside, m.outside_nll,
                                          np.ascontiguousarray(group[index]), n_deriv=m.n_models)
            total, grad, hess = total + t, grad + g, hess + h
        return total, grad, hess

    def nll(self, weights: Sequence[float] | np.ndarray, rows: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Per-position NLL, nats: float64 ``(B, len(rows))`` for weights ``(B, N)`` (``(len(rows),)``
        for ``(N,)``) at store rows ``rows`` (default: every position, in store order)."""
        w = np.asarray(weights, dtype=np.float64)
        n = self.dataset.n_positions
        rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
        group = np.full(n, -1, dtype=np.int32)
        group[rows] = 0
        out = np.empty((np.atleast_2d(w).shape[0], n))
        for index, m in self._chunks(group):
            out[:, index] = blend_nll(m.offsets, m.values, m.row_weights(w), m.outside, m.outside_nll)
        out = out[:, rows]
        return out[0] if w.ndim == 1 else out

    def document_sums(self, weights: Sequence[float] | np.ndarray) -> DocumentSums:
        """Per-document and per-bucket NLL sums for weights ``(B, N)`` (``engine.bootstrap``), one
        kernel pass; a subclass's figure may add to them (``CorrectedBlend``: the bootstrap adds its
        shift)."""
        ds = self.dataset
        split, cells = ds.documents[1], ds.document_cells
        w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
        nll = self._sums(w, cells, split.size * ds.n_buckets).T.reshape(w.shape[0], split.size, ds.n_buckets)
        positions = np.bincount(cells, minlength=split.size * ds.n_buckets).reshape(split.size, ds.n_buckets)
        return DocumentSums(cell_nll=nll, cell_positions=np.broadcast_to(positions, nll.shape), split=split,
                            splits=ds.splits)

    def tuning_group(self, split: str, min_context: int = 1) -> np.ndarray:
        """int32 ``(n,)``: 0 for the positions of ``split`` with at least ``min_context`` tokens of
        context, -1 elsewhere (``Dataset.tuning_positions``).

        Raises:
            ValueError: unknown split, or no such position.
        """
        return self.dataset.tuning_positions(split, min_context)[0]

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
        group, count = self.dataset.tuning_positions(split, min_context)
        w = np.asarray(weights, dtype=np.float64)
        mean = self._sums(np.atleast_2d(w), group, 1)[0] / count
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
        group, count = self.dataset.tuning_positions(split, min_context)
        total, grad, hess = self._grad_hess(np.asarray(weights, dtype=np.float64), group)
        return total / count, grad / count, hess / count

    def evaluate(self, weights: Sequence[float] | np.ndarray) -> Report | list[Report]:
        """Figures per split and per context-length bucket, in one kernel pass.

        Args:
            weights: float ``(N,)`` for one report, or ``(B, N)`` for a list of B reports.
        """
        ds = self.dataset
        w = np.asarray(weights, dtype=np.float64)
        sums = self._sums(np.atleast_2d(w), ds.group, ds.n_groups)  # (G, B)
        reports = []
        for b, wb in enumerate(np.atleast_2d(w)):
            splits, by_context = ds.report(sums[:, b], ds.group)
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
