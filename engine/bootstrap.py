"""Intervals over documents: how much a figure depends on which documents were scored.

A split's perplexity is ``exp(sum of NLL / positions)`` over its documents. Positions of one
document are not independent (a story that is easy for one model is easy all through), so the
bootstrap resamples whole documents: each of R resamples draws the split's D documents with
replacement (multinomial counts ``c``, ``(R, D)``) and recomputes ``exp(c . nll / c . positions)``;
the 2.5% and 97.5% quantiles are the 95% interval (percentile bootstrap). With few documents (the
testbed has 16 per split) the interval is rough and tends to be too narrow; it says so in words
wherever it is printed, with the count.

A paired difference (a tuned blend against the small tuned model alone, say) draws the same
documents for both figures in each resample, so the documents' shared difficulty cancels.

A figure's per-document sums may come from another source than the figure itself: a corrected
blend's (``engine.correction``) per-position NLL is its base estimator's, and its figure the base
mean plus the sampled correction; the bootstrap then adds that split's constant shift
``figure - base`` to every resample. Everything is one matrix product per split and context
bucket: 1,000 resamples of a figure's splits and buckets take about 4 ms on the Grimm store
(``python -m bench.correction`` times them).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import polars as pl

from .report import Report

__all__ = ["RESAMPLES", "DocumentSums", "PairedDifference", "with_document_intervals", "paired_difference"]

RESAMPLES = 1000
SEED = 0
"""Every interval of a run draws the same resamples (a figure's interval is reproducible)."""


@dataclass(frozen=True)
class DocumentSums:
    """Per-document NLL sums of F figures' per-position sources, per context-length bucket.

    Attributes:
        cell_nll: float64 ``(F, D, n_buckets)``: total NLL per document and bucket, nats.
        cell_positions: int64 ``(F, D, n_buckets)``: positions counted there.
        split: int32 ``(D,)``: each document's split code (``Dataset.splits``).
        splits: the split names.
    """

    cell_nll: np.ndarray
    cell_positions: np.ndarray
    split: np.ndarray
    splits: list[str]

    @property
    def nll(self) -> np.ndarray:
        """float64 ``(F, D)``: total NLL per document."""
        return self.cell_nll.sum(axis=2)

    @property
    def positions(self) -> np.ndarray:
        """int64 ``(F, D)``: positions counted per document."""
        return self.cell_positions.sum(axis=2)

    def row(self, f: int) -> "DocumentSums":
        """Figure ``f`` alone."""
        return DocumentSums(self.cell_nll[f : f + 1], self.cell_positions[f : f + 1], self.split, self.splits)

    @staticmethod
    def stack(*parts: "DocumentSums") -> "DocumentSums":
        """The figures of ``parts`` (of one dataset's documents), in order."""
        return DocumentSums(np.concatenate([p.cell_nll for p in parts]),
                            np.concatenate([p.cell_positions for p in parts]), parts[0].split, parts[0].splits)


def _counts(n_docs: int, resamples: int, seed: int) -> np.ndarray:
    """float64 ``(R, n_docs)``: how often each document is drawn in each resample."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_docs, np.full(n_docs, 1.0 / n_docs), size=resamples).astype(np.float64)


def _resampled(nll: np.ndarray, positions: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """float64 ``(R, F)``: each figure's mean NLL over resampled documents (``nll``, ``positions``
    ``(F, D)``, ``counts`` ``(R, D)``)."""
    return (counts @ nll.T) / np.maximum(counts @ positions.T, 1)


def _interval(nll: np.ndarray, positions: np.ndarray, counts: np.ndarray, figure_nll: float) -> tuple[float, float]:
    """The 95% perplexity interval of a figure of mean NLL ``figure_nll`` whose source has
    per-document sums ``nll`` and ``positions`` ``(D,)``, over the resamples ``counts``."""
    means = _resampled(nll[None], positions[None], counts)[:, 0] + figure_nll - nll.sum() / positions.sum()
    lo, hi = np.quantile(means, [0.025, 0.975])
    return math.exp(lo), math.exp(hi)


def with_document_intervals(reports: Sequence[Report], sums: DocumentSums, *, resamples: int = RESAMPLES,
                            seed: int = SEED) -> list[Report]:
    """``reports`` with their 95% bootstrap intervals over documents: each split's in
    ``documents``, each (split, bucket)'s in ``by_context`` (``docs_lo``, ``docs_hi``).

    Args:
        reports: F reports, in the order of ``sums``' figures.
        sums: the per-document sums of their per-position sources.
    """
    splits = [(s, name, sums.split == s) for s, name in enumerate(sums.splits)]
    counts = {s: _counts(int(docs.sum()), resamples, seed) for s, _, docs in splits
              if docs.sum() >= 2}  # one document: nothing to resample
    out = []
    for f, report in enumerate(reports):
        documents, bands = {}, {}
        for s, name, docs in splits:
            if s not in counts:
                continue
            nll, positions = sums.cell_nll[f][docs], sums.cell_positions[f][docs]  # (D_s, n_buckets)
            documents[name] = _interval(nll.sum(axis=1), positions.sum(axis=1), counts[s], report.splits[name].mean_nll)
            for row in report.by_context.filter(pl.col("split") == name).iter_rows(named=True):
                b = int(row["context_lo"]).bit_length() - 1
                bands[name, b] = _interval(nll[:, b], positions[:, b], counts[s], math.log(row["perplexity"]))
        keys = [(r["split"], int(r["context_lo"]).bit_length() - 1) for r in report.by_context.iter_rows(named=True)]
        by_context = report.by_context.with_columns(
            pl.Series("docs_lo", [bands.get(k, (None, None))[0] for k in keys], dtype=pl.Float64),
            pl.Series("docs_hi", [bands.get(k, (None, None))[1] for k in keys], dtype=pl.Float64))
        out.append(dataclasses.replace(report, documents=documents, by_context=by_context))
    return out


@dataclass(frozen=True)
class PairedDifference:
    """``a - b`` in a split's perplexity, with its paired 95% bootstrap interval over documents."""

    split: str
    delta: float
    lo: float
    hi: float
    documents: int


def paired_difference(a: Report, b: Report, sums: DocumentSums, split: str, *, resamples: int = RESAMPLES,
                      seed: int = SEED) -> PairedDifference:
    """Perplexity of ``a`` minus that of ``b`` on ``split``, the same documents drawn for both.

    Args:
        sums: two figures' per-document sums: ``a``'s source first, then ``b``'s.
    """
    s = sums.splits.index(split)
    docs = sums.split == s
    means = _resampled(sums.nll[:, docs], sums.positions[:, docs], _counts(int(docs.sum()), resamples, seed))
    shift = [r.splits[split].mean_nll - sums.nll[f, docs].sum() / sums.positions[f, docs].sum()
             for f, r in enumerate((a, b))]
    diff = np.exp(means[:, 0] + shift[0]) - np.exp(means[:, 1] + shift[1])
    lo, hi = np.quantile(diff, [0.025, 0.975])
    return PairedDifference(split, a.splits[split].perplexity - b.splits[split].perplexity, float(lo), float(hi),
                            int(docs.sum()))
