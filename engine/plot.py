"""Perplexity against context length: the data first, then the drawing.

``context_curves`` builds the table behind the plot (test it, not pixels); ``draw_context_plot``
renders it with matplotlib, imported lazily so evaluation never pays for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import polars as pl

from .report import Report

__all__ = ["context_curves", "draw_context_plot", "draw_search_history"]


def context_curves(reports: Sequence[tuple[str, Report]], *, split: str) -> pl.DataFrame:
    """One row per (curve, context bucket) of one split.

    Args:
        reports: ``(label, report)`` pairs; a blend's label should name its estimator.
        split: the split to plot.

    Returns:
        polars DataFrame: ``label``, ``estimate`` (bool), ``context_lo``, ``context_hi``,
        ``positions``, ``perplexity``, ``lo``, ``hi`` (the bucket's estimator interval) and
        ``docs_lo``, ``docs_hi`` (its bootstrap interval over documents), null where the report
        has none.
    """
    frames = [
        r.by_context.filter(pl.col("split") == split)
        .select("context_lo", "context_hi", "positions", "perplexity", "lo", "hi", "docs_lo", "docs_hi")
        .with_columns(pl.lit(label).alias("label"), pl.lit(r.is_estimate).alias("estimate"))
        for label, r in reports
    ]
    return pl.concat(frames).select("label", "estimate", "context_lo", "context_hi", "positions", "perplexity",
                                    "lo", "hi", "docs_lo", "docs_hi")


def _save(fig, path: Path) -> Path:
    """Write ``fig`` as PNG to a temporary name, then rename: a failed draw leaves nothing."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    tmp.replace(path)
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw_search_history(history, path: str | Path, *, title: str, reference: dict[str, float] | None = None) -> Path:
    """Optimization history: each trial's perplexity and the best so far.

    Args:
        history: float ``(trials,)``, mean NLL per complete trial, in trial order (nats).
        reference: optional horizontal lines ``{label: perplexity}``.
    """
    import numpy as np

    plt = _pyplot()
    ppl = np.exp(np.asarray(history, dtype=np.float64))
    fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
    ax.plot(np.arange(1, ppl.size + 1), ppl, ".", alpha=0.5, label="trial")
    ax.plot(np.arange(1, ppl.size + 1), np.minimum.accumulate(ppl), "-", label="best so far")
    for label, value in (reference or {}).items():
        ax.axhline(value, linestyle="--", linewidth=1, color="gray")
        ax.annotate(label, (1, value), fontsize=8, va="bottom")
    ax.set_yscale("log")
    # Early random trials can be astronomically bad; keep the axis on the interesting range.
    top = float(np.quantile(ppl, 0.9)) * 1.5
    bottom = min([float(ppl.min()), *(reference or {}).values()]) / 1.1
    ax.set_ylim(bottom, top)
    above = int(np.count_nonzero(ppl > top))
    if above:
        ax.annotate(f"{above} trials above the axis", (0.99, 0.98), xycoords="axes fraction", ha="right", va="top", fontsize=8)
    ax.set_xlabel("trial")
    ax.set_ylabel("val perplexity (estimate)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, Path(path))


def draw_context_plot(curves: pl.DataFrame, path: str | Path, *, title: str, bands: Sequence[str] = ()) -> Path:
    """Draw ``context_curves`` output to a PNG (log-log axes; dashed lines are estimates). The
    curves labelled in ``bands`` get their 95% intervals as shaded bands: the estimator's where
    the curve has one (darker), and the bootstrap's over documents (lighter, hatched edge).

    The file is written to a temporary name and renamed, so a failed draw leaves nothing behind.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
    for (label, estimate), curve in curves.group_by(["label", "estimate"], maintain_order=True):
        mid = ((curve["context_lo"] * curve["context_hi"]) ** 0.5).to_list()
        line, = ax.plot(mid, curve["perplexity"].to_list(), marker="o", linestyle="--" if estimate else "-",
                        label=label)
        if label not in bands:
            continue
        for lo, hi, alpha in (("lo", "hi", 0.3), ("docs_lo", "docs_hi", 0.12)):
            band = curve.filter(pl.col(lo).is_not_null())
            if band.height:
                ax.fill_between(((band["context_lo"] * band["context_hi"]) ** 0.5).to_list(), band[lo].to_list(),
                                band[hi].to_list(), color=line.get_color(), alpha=alpha, linewidth=0)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("tokens of context (bucket: 1, 2-3, 4-7, ...)")
    ax.set_ylabel("perplexity (exp mean NLL per bucket)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, Path(path))
