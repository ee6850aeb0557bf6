"""What an evaluation reports: metrics of a slice, a model's or a blend's report, and their JSON.

Corpus perplexity is ``exp(total NLL / positions)`` over all scored positions of a slice, never
a mean of per-chunk perplexities; bits per byte divides the same total, converted to bits, by
the UTF-8 bytes of the scored tokens. Natural logs throughout.

``report_json`` and ``blend_json`` are the one JSON form of a report and of a blend (``approxft
eval`` and ``approxft tune`` print it; ``approxft generate`` reads it back).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from .params import ROLES

__all__ = ["EXACT", "Z95", "t95", "NO_INTERVAL", "Figures", "Report", "BY_CONTEXT_SCHEMA", "context_buckets", "bucket_labels",
           "report_json", "blend_json", "gap_closed"]


@dataclass(frozen=True)
class Figures:
    """Metrics of one slice (a split, a context-length bucket, ...).

    Attributes:
        positions: scored positions in the slice.
        nll_sum: their total negative log-likelihood, nats.
        n_bytes: UTF-8 bytes of their target tokens.
    """

    positions: int
    nll_sum: float
    n_bytes: int

    @property
    def mean_nll(self) -> float:
        """Mean NLL per position, nats (NaN for an empty slice)."""
        return self.nll_sum / self.positions if self.positions else math.nan

    @property
    def perplexity(self) -> float:
        """``exp(mean NLL)``; NaN for an empty slice, inf where the NLL is infinite."""
        m = self.mean_nll
        return math.exp(m) if m < 709.0 else (math.inf if m == m else math.nan)

    @property
    def bits_per_byte(self) -> float:
        """Total NLL in bits divided by the target tokens' UTF-8 bytes (NaN without bytes)."""
        return self.nll_sum / (math.log(2) * self.n_bytes) if self.n_bytes else math.nan

    def as_dict(self) -> dict[str, float | int]:
        return {
            "positions": self.positions,
            "perplexity": self.perplexity,
            "mean_nll": self.mean_nll,
            "bits_per_byte": self.bits_per_byte,
        }


def context_buckets(context: np.ndarray) -> np.ndarray:
    """Context-length bucket of each position: ``floor(log2(context))``.

    Args:
        context: int ``(n,)``, tokens of context (>= 1).

    Returns:
        int32 ``(n,)``: 0 for context 1, 1 for 2-3, 2 for 4-7, ...
    """
    c = np.asarray(context, dtype=np.int64)
    if c.size and c.min() < 1:
        raise ValueError("context lengths must be >= 1")
    return (np.floor(np.log2(np.maximum(c, 1)))).astype(np.int32)


def bucket_labels(n_buckets: int) -> list[tuple[int, int]]:
    """Inclusive ``(lo, hi)`` context lengths of buckets ``0 .. n_buckets-1``."""
    return [(1 << b, (1 << (b + 1)) - 1) for b in range(n_buckets)]


EXACT = "exact (full vocabulary)"
"""The ``estimator`` of a blend report computed over the full vocabulary from the models
themselves (``engine.oracle``): exact, not an estimate."""

Z95 = 1.959963984540054
"""The standard normal's 97.5% quantile: a 95% two-sided interval."""


def t95(df: float) -> float:
    """Student's t 97.5% quantile with ``df`` degrees of freedom (a 95% two-sided interval of a
    mean of ``df + 1`` values): the Cornish-Fisher expansion about ``Z95`` (Abramowitz and Stegun
    26.7.5), within 1% of the exact quantile from ``df`` = 2 and 1e-4 from ``df`` = 10."""
    z = Z95
    terms = ((z**3 + z) / 4, (5 * z**5 + 16 * z**3 + 3 * z) / 96, (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384,
             (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160)
    return z + sum(g / df ** (i + 1) for i, g in enumerate(terms))

EXACT_KIND = "exact: computed from the data's exact values, no estimator error"
NO_INTERVAL = ("none: an estimate from top-k data alone, whose error nothing here measures (no full-distribution "
               "sample for these models: approxft collect --calibration N --calibration-k all, then approxft calibrate)")
"""``Report.interval_kind`` of an estimate without a full-distribution sample."""

BY_CONTEXT_SCHEMA = {
    "split": pl.String,
    "context_lo": pl.Int32,
    "context_hi": pl.Int32,
    "positions": pl.Int64,
    "perplexity": pl.Float64,
    "bits_per_byte": pl.Float64,
    "lo": pl.Float64,
    "hi": pl.Float64,
    "docs_lo": pl.Float64,
    "docs_hi": pl.Float64,
}
"""Columns of ``Report.by_context``: one row per (split, context-length bucket); ``lo``/``hi``:
the perplexity's 95% interval where the report has one (the estimator's, ``interval``), and
``docs_lo``/``docs_hi`` its bootstrap interval over documents where computed
(``engine.bootstrap``); null elsewhere."""


@dataclass(frozen=True)
class Report:
    """Figures of one model, or of one blend weight vector.

    Attributes:
        name: the model's name, or ``"blend"``.
        estimator: ``None`` for a model's exact figures; for a blend, the estimator that
            produced them (estimates), or ``EXACT`` for the oracle's exact figures.
        weights: ``None`` for a model; a blend's float64 ``(N,)``, one weight per model.
        splits: ``{split: Figures}``.
        by_context: one row per (split, context-length bucket), ``BY_CONTEXT_SCHEMA``.
        interval: ``{split: (lo, hi)}``, the perplexity's 95% interval from the estimator's
            uncertainty (the sampled correction, ``engine.correction``), for the splits that have one.
        interval_kind: what ``interval`` covers, or why there is none (default: exact for a
            model's or the oracle's figures, ``NO_INTERVAL`` for other estimates).
        documents: ``{split: (lo, hi)}``, the 95% bootstrap interval over documents
            (``engine.bootstrap``), where computed: how much the figure depends on which
            documents were scored, on top of ``interval``.
    """

    name: str
    estimator: str | None
    weights: np.ndarray | None
    splits: dict[str, Figures]
    by_context: pl.DataFrame
    interval: dict[str, tuple[float, float] | None] = field(default_factory=dict)
    interval_kind: str = ""
    documents: dict[str, tuple[float, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.interval_kind:
            exact = self.estimator in (None, EXACT)
            object.__setattr__(self, "interval_kind", EXACT_KIND if exact else NO_INTERVAL)
            if exact:
                object.__setattr__(self, "interval", {s: (f.perplexity, f.perplexity) for s, f in self.splits.items()})

    @property
    def is_estimate(self) -> bool:
        return self.estimator not in (None, EXACT)


def _finite_or_none(x: float) -> float | None:
    # JSON has no inf/NaN: an undefined figure is null, never a made-up number.
    return x if math.isfinite(x) else None


def _pair(x: tuple[float, float] | None) -> list[float | None] | None:
    return None if x is None else [_finite_or_none(float(v)) for v in x]


def report_json(report: Report) -> dict[str, Any]:
    """``{split: perplexity}`` plus ``interval_kind`` and a ``details`` block with every figure per
    split: its ``interval`` (``[lo, hi]`` or null) and ``documents_interval`` where computed."""
    out: dict[str, Any] = {s: _finite_or_none(f.perplexity) for s, f in report.splits.items()}
    out["interval_kind"] = report.interval_kind
    out["details"] = {
        s: {**{k: (_finite_or_none(v) if isinstance(v, float) else v) for k, v in f.as_dict().items()},
            "interval": _pair(report.interval.get(s)),
            **({"documents_interval": _pair(report.documents[s])} if s in report.documents else {})}
        for s, f in report.splits.items()
    }
    return out


def blend_json(report: Report, *, models: Sequence[str], parametrization: str,
               params: Mapping[str, float] | None) -> dict[str, Any]:
    """A blend's JSON object: ``terms`` (each model, in order, with its weight), its models by role
    where it has three (``models``; null otherwise), its parameters, weights and estimator, and its
    figures (``report_json``); ``estimate`` is true but for the oracle's exact figures."""
    return {
        "terms": [{"model": m, "weight": w} for m, w in zip(models, report.weights.tolist(), strict=True)],
        "models": dict(zip(ROLES, models, strict=True)) if len(models) == len(ROLES) else None,
        "parametrization": parametrization,
        "params": None if params is None else dict(params),
        "weights": report.weights.tolist(),
        "estimator": report.estimator,
        "estimate": report.is_estimate,
        **report_json(report),
    }


def gap_closed(value: float, start: float, goal: float) -> tuple[float, float]:
    """How far perplexity ``value`` lies from ``start`` (0) towards ``goal`` (1), in perplexity and
    in log-perplexity: ``((start - value) / (start - goal), (log start - log value) / (log start -
    log goal))``."""
    return (start - value) / (start - goal), (math.log(start) - math.log(value)) / (math.log(start) - math.log(goal))
