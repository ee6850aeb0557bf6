"""Stored models' exact figures, from their exact target log-probabilities, added up part by part
(``engine.dataset.Dataset.parts``: the whole store in memory, or one shard at a time). Positions
whose target value was not observed (next-token collection, the actual token outside the top-k)
are left out and counted."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from .bootstrap import DocumentSums
from .positions import Layout, PositionsPart
from .report import Report

__all__ = ["model_document_sums", "model_report", "unobserved_targets"]


def model_report(parts: Iterable[PositionsPart], layout: Layout, model: str) -> Report:
    """``model``'s exact figures per split and context bucket (its ``estimator`` is None)."""
    n = layout.n_groups
    sums, positions, n_bytes = np.zeros(n), np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    for part in parts:
        lp = part.store.target_lp(model)
        seen = ~np.isnan(lp)
        group = part.group[seen]
        sums += np.bincount(group, weights=-lp[seen].astype(np.float64), minlength=n)
        positions += np.bincount(group, minlength=n)
        n_bytes += np.bincount(group, weights=part.target_bytes[seen], minlength=n).astype(np.int64)
    splits, by_context = layout.figures(sums, positions, n_bytes)
    return Report(name=model, estimator=None, weights=None, splits=splits, by_context=by_context)


def model_document_sums(parts: Iterable[PositionsPart], layout: Layout, models: Sequence[str]) -> DocumentSums:
    """``models``' exact NLL sums per document and context bucket (``engine.bootstrap``)."""
    n = layout.n_document_cells
    nll, positions = np.zeros((len(models), n)), np.zeros((len(models), n), dtype=np.int64)
    for part in parts:
        for f, model in enumerate(models):
            lp = part.store.target_lp(model)
            seen = ~np.isnan(lp)
            nll[f] += np.bincount(part.document_cells[seen], weights=-lp[seen].astype(np.float64), minlength=n)
            positions[f] += np.bincount(part.document_cells[seen], minlength=n)
    shape = (len(models), layout.documents.height, layout.n_buckets)
    return DocumentSums(cell_nll=nll.reshape(shape), cell_positions=positions.reshape(shape),
                        split=layout.document_split, splits=layout.splits)


def unobserved_targets(parts: Iterable[PositionsPart], models: Sequence[str]) -> dict[str, int]:
    """Per model, how many positions have no exact target log-probability."""
    counts = dict.fromkeys(models, 0)
    for part in parts:
        for model in models:
            counts[model] += int(np.isnan(part.store.target_lp(model)).sum())
    return counts
