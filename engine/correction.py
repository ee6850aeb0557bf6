"""The sampled correction: a top-k estimate made exact in expectation by a full-distribution
sample, with a confidence interval.

For a split's positions P and a base estimator's per-position NLL ``b_i(w)``, the corrected
mean NLL is

    mean_{i in P} b_i(w)  +  mean_{i in S} (e_i(w) - b_i(w))

where S is the sample's positions in P and ``e_i`` the exact NLL from the models' whole
distributions there (``engine.calibration.full``). The sample's positions are drawn with about
equal probability within a split (``approxft collect --calibration``: stratified, proportional
allocation), so the second term is an unbiased estimate of the base estimator's mean error, and
its standard error ``sd(e - b) / sqrt(|S|) * sqrt(1 - |S|/|P|)`` times Student's t quantile
(|S| - 1 degrees of freedom) gives a 95% interval. It is exact in expectation for any base
estimator; a better base only narrows the interval (``calibrated-tail`` the narrowest on the
testbed: ``python -m bench.correction``). Where a model of the sample has top-K lists only, its
tail beyond K is assumed (``engine.calibration.full.fill_tail``) and the interval says that it
does not cover that assumption's error.

Everything runs through the blend kernels, batched over weight vectors: one pass of the base
estimator over the split (as any trial), and one over the sample's cells and the base's own
runs at the sampled positions; the gradient and Hessian add up the same way (Newton).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import polars as pl

from .blend import Blend
from .calibration.full import FullSample
from .candidates import CandidateMatrix
from .kernels import blend_nll, blend_nll_grad_hess
from .positions import Grouping
from .report import Figures, Report, t95

__all__ = ["CORRECTED", "CorrectedBlend", "UpperEnd", "corrected_name"]

CORRECTED = "corrected"
"""``--estimator corrected``: the store's default top-k estimator plus the sampled correction
(``corrected:NAME`` for another base)."""


def corrected_name(base: str) -> str:
    """The ``Report.estimator`` of a corrected blend: ``"corrected:<base>"``."""
    return f"{CORRECTED}:{base}"


class CorrectedBlend(Blend):
    """A blend's base estimate plus the sampled correction over a full-distribution sample.

    Its ``mean_nll``, ``mean_nll_grad_hess`` and ``evaluate`` are corrected; ``nll`` and
    ``nll_frame`` (per position) stay the base estimator's: the correction is a mean over the
    sample, not a per-position figure.

    Attributes:
        base: the blend whose estimate is corrected.
        sample: the full-distribution sample of the blend's models.
    """

    def __init__(self, base: Blend, sample: FullSample):
        super().__init__(base.dataset, base.models, base.matrix)
        self.base = base
        self.sample = sample
        self._base_at_sample = base.take(sample.rows)
        self._sides: dict[tuple[str, int], tuple[tuple[CandidateMatrix, CandidateMatrix], int]] = {}

    @property
    def estimator(self) -> str:
        return corrected_name(self.base.estimator)

    def interval_kind(self) -> str:
        """What the interval covers, in words (``Report.interval_kind``)."""
        kind = (f"95% interval of the sampled correction over {self.sample.n_positions} positions with the models' "
                f"whole distributions ({self.sample.described}): the estimator's error, not the spread over documents")
        left = self.sample.leaves_out()
        return kind + (f"; it leaves out {left}" if left else "")

    def _sums(self, weights: np.ndarray, grouping: Grouping) -> np.ndarray:
        return self.base._sums(weights, grouping)  # the base's route (e.g. its Ray workers)

    # -- the sample's side ------------------------------------------------------------------------

    def differences(self, weights: np.ndarray, sides: tuple[CandidateMatrix, CandidateMatrix] | None = None
                    ) -> np.ndarray:
        """float64 ``(B, s)``: exact minus base NLL at each sampled position, for weights ``(B, 3)``;
        ``sides``: the (cells, base) matrices of some of them (default: all, in sample order)."""
        w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
        cells, base = sides or (self.sample.matrix, self._base_at_sample)
        exact = blend_nll(cells.offsets, cells.values, cells.row_weights(w), cells.outside, cells.outside_nll)
        approx = blend_nll(base.offsets, base.values, base.row_weights(w), base.outside, base.outside_nll)
        return exact - approx

    def _tuning_side(self, split: str, min_context: int) -> tuple[tuple[CandidateMatrix, CandidateMatrix], int]:
        """The (cells, base) matrices of the sampled positions that tuning on ``split`` with
        ``min_context`` counts (cached: every trial reads them), and how many positions it counts.

        Raises:
            ValueError: fewer than 2 sampled positions there.
        """
        key = (split, min_context)
        if key not in self._sides:
            group, count = self.dataset.tuning_positions(split, min_context)
            kept = np.flatnonzero(group[self.sample.rows] >= 0)
            if kept.size < 2:
                raise ValueError(f"the full-distribution sample has {kept.size} positions in split {split!r} "
                                 f"with at least {min_context} tokens of context; the correction needs 2 or more")
            self._sides[key] = ((self.sample.matrix.take(kept), self._base_at_sample.take(kept)), count)
        return self._sides[key]

    @staticmethod
    def _mean_half(d: np.ndarray, population: int) -> tuple[np.ndarray, np.ndarray]:
        """Mean and 95% half-width ``(B,)`` of differences ``(B, s)`` drawn from ``population``
        positions: Student's t quantile with s - 1 degrees of freedom times the standard error
        (finite-population corrected); NaN with fewer than 2."""
        s = d.shape[1]
        mean = d.mean(axis=1) if s else np.full(d.shape[0], np.nan)
        if s < 2:
            return mean, np.full(d.shape[0], np.nan)
        se = d.std(axis=1, ddof=1) / math.sqrt(s) * math.sqrt(max(0.0, 1.0 - s / population))
        return mean, t95(s - 1) * se

    def _correction(self, weights: np.ndarray, split: str, min_context: int) -> tuple[np.ndarray, np.ndarray]:
        """Mean difference and its 95% half-width ``(B,)`` over the positions tuning counts."""
        sides, count = self._tuning_side(split, min_context)
        return self._mean_half(self.differences(weights, sides), count)

    # -- the Objective tuners take ----------------------------------------------------------------

    def mean_nll(self, weights: Sequence[float] | np.ndarray, *, split: str, min_context: int = 1) -> np.ndarray:
        w = np.asarray(weights, dtype=np.float64)
        mean, _ = self._correction(np.atleast_2d(w), split, min_context)
        out = self.base.mean_nll(np.atleast_2d(w), split=split, min_context=min_context) + mean
        return out[0] if w.ndim == 1 else out

    def mean_nll_upper(self, weights: Sequence[float] | np.ndarray, *, split: str, min_context: int = 1) -> np.ndarray:
        """float64 ``(B,)``: the upper end of the 95% interval of the corrected mean NLL."""
        w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
        mean, half = self._correction(w, split, min_context)
        return self.base.mean_nll(w, split=split, min_context=min_context) + mean + half

    def mean_nll_grad_hess(self, weights: Sequence[float] | np.ndarray, *, split: str, min_context: int = 1
                           ) -> tuple[float, np.ndarray, np.ndarray]:
        w = np.asarray(weights, dtype=np.float64)
        total, grad, hess = self.base.mean_nll_grad_hess(w, split=split, min_context=min_context)
        sides, _ = self._tuning_side(split, min_context)
        n = sides[0].outside.size
        every = np.zeros(n, dtype=np.int32)
        for sign, m in zip((1.0, -1.0), sides, strict=True):
            t, g, h = blend_nll_grad_hess(m.offsets, m.values, m.row_weights(w)[0], m.outside, m.outside_nll, every,
                                          n_deriv=m.n_models)
            total, grad, hess = total + sign * t / n, grad + sign * g / n, hess + sign * h / n
        return total, grad, hess

    # -- reports ----------------------------------------------------------------------------------

    def evaluate(self, weights: Sequence[float] | np.ndarray) -> Report | list[Report]:
        """The base reports, corrected per split and per (split, context bucket), each figure with
        its 95% interval (a bucket with fewer than 2 sampled positions takes its split's
        correction and has no interval of its own)."""
        ds = self.dataset
        w = np.asarray(weights, dtype=np.float64)
        base_reports = self.base.evaluate(np.atleast_2d(w))
        d = self.differences(np.atleast_2d(w))  # (B, s)
        cell_of = ds.whole.group[self.sample.rows]
        split_of = ds.whole.split_code[self.sample.rows]
        reports = []
        for b, report in enumerate(base_reports):
            splits, intervals, shift = {}, {}, {}
            for s, name in enumerate(ds.splits):
                fig = report.splits[name]
                mean, half = self._mean_half(d[b : b + 1, split_of == s], fig.positions)
                shift[name] = float(mean[0])
                splits[name] = Figures(fig.positions, fig.nll_sum + fig.positions * shift[name], fig.n_bytes)
                intervals[name] = _ppl_interval(splits[name].mean_nll, float(half[0]))
            rows = []
            for row in report.by_context.iter_rows(named=True):
                s, bucket = ds.splits.index(row["split"]), int(math.log2(row["context_lo"]))
                here = cell_of == s * ds.n_buckets + bucket
                mean, half = self._mean_half(d[b : b + 1, here], row["positions"])
                m, e = (float(mean[0]), float(half[0])) if here.sum() >= 2 else (shift[row["split"]], math.nan)
                nll = math.log(row["perplexity"]) + m
                lo, hi = _ppl_interval(nll, e) if math.isfinite(e) else (None, None)
                rows.append({**row, "perplexity": math.exp(nll), "bits_per_byte": row["bits_per_byte"] * nll / math.log(row["perplexity"]),
                             "lo": lo, "hi": hi})
            by_context = pl.DataFrame(rows, schema=report.by_context.schema, orient="row") if rows else report.by_context
            reports.append(Report(name=report.name, estimator=self.estimator, weights=report.weights, splits=splits,
                                  by_context=by_context, interval=intervals, interval_kind=self.interval_kind()))
        return reports[0] if w.ndim == 1 else reports


def _ppl_interval(mean_nll: float, half: float) -> tuple[float, float] | None:
    """The 95% perplexity interval of a mean NLL with 95% half-width ``half`` (None without one)."""
    if not math.isfinite(half):
        return None
    return math.exp(mean_nll - half), math.exp(mean_nll + half)


class UpperEnd:
    """A corrected blend as an ``Objective`` whose mean NLL is its interval's upper end
    (``approxft tune --objective upper``; TPE only: the upper end has no Hessian from the kernels)."""

    def __init__(self, blend: CorrectedBlend):
        self.blend = blend
        self.dataset = blend.dataset
        self.models = blend.models

    @property
    def estimator(self) -> str:
        return self.blend.estimator + " (upper end)"

    def tuning_count(self, split: str, min_context: int = 1) -> int:
        return self.blend.tuning_count(split, min_context)

    def mean_nll(self, weights: Sequence[float] | np.ndarray, *, split: str, min_context: int = 1) -> np.ndarray:
        w = np.asarray(weights, dtype=np.float64)
        out = self.blend.mean_nll_upper(np.atleast_2d(w), split=split, min_context=min_context)
        return out[0] if w.ndim == 1 else out

    def mean_nll_grad_hess(self, weights, *, split, min_context=1):
        raise ValueError("--objective upper needs --method tpe: the interval's upper end has no Hessian")
