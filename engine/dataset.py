"""The Python API for batch evaluation: open a store, build blends, evaluate weight vectors.

    >>> import engine
    >>> ds = engine.open_dataset("store/")
    >>> ds.model_report("grimm-big").splits["test"].perplexity
    554.95...
    >>> blend = ds.blend(big="grimm-big", tuned="grimm-small-tuned", untuned="grimm-small")
    >>> report = blend.evaluate([1.0, 1.0, -1.0])
    >>> report.splits["test"].perplexity  # an estimate: report.estimator names how it was made

The estimator defaults to ``Dataset.default_estimator``: ``calibrated-tail`` where the store has a
calibration fit for the blend's models (``approxft calibrate``), ``zipf-tail`` otherwise.

``Blend`` is the one route from evaluation, tuning and the CLI to the kernels (``engine.kernels``):
everything here is orchestration over them; no Python loop touches positions.
"""

from __future__ import annotations

import sys
from functools import cached_property
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import polars as pl

from ingest import open_store
from ingest.prepare.bpe import GPT2_VOCAB_SIZE
from ingest.store import Store

from .calibration.fit_file import FitRecord, calibrate, read_fit
from .calibration.sample import CalibrationSample, store_sample
from .candidates import CandidateMatrix, MissingDrops, UnionCandidates
from .estimators import ESTIMATORS, Estimator, default_estimator, get_estimator
from .kernels import LANES, blend_nll, blend_nll_grad_hess, blend_nll_sums
from .params import ROLES
from .report import BY_CONTEXT_SCHEMA, Figures, Report, bucket_labels, context_buckets

__all__ = ["Dataset", "Blend", "open_dataset", "BATCH"]

BATCH = LANES
"""Weight vectors that fill one kernel pass (the kernels' vector lanes): a batched pass over
``BATCH`` of them costs about as much as ten single ones."""


def open_dataset(path: str | Path) -> "Dataset":
    """Open a store written by ``approxft ingest`` for evaluation."""
    return Dataset(open_store(path))


class Dataset:
    """A store plus the per-position metadata every evaluation needs.

    Attributes:
        store: the opened store.
        splits: split names, in order of first appearance.
        split_code: int32 ``(n,)``, index into ``splits`` per position.
        context: int32 ``(n,)``, tokens of context per position (>= 1).
        target_bytes: int64 ``(n,)``, UTF-8 bytes of each position's target token.
    """

    def __init__(self, store: Store):
        self.store = store
        pos = store.positions
        self.splits: list[str] = pos.get_column("split").unique(maintain_order=True).to_list()
        codes = {s: i for i, s in enumerate(self.splits)}
        self.split_code = pos.get_column("split").replace_strict(codes, return_dtype=pl.Int32).to_numpy()
        self.context = pos.get_column("position").to_numpy().astype(np.int32)
        token_bytes = store.vocab.get_column("bytes").bin.size().to_numpy().astype(np.int64)
        self.target_bytes = token_bytes[pos.get_column("target").to_numpy()]
        self._bucket = context_buckets(self.context) if self.context.size else np.zeros(0, np.int32)
        self._blends: dict[tuple[str, str, str, str], Blend] = {}
        self._tuning: dict[tuple[str, int], tuple[np.ndarray, int]] = {}

    @cached_property
    def vocab_size(self) -> int:
        """The tokenizer's vocabulary size from the store; GPT-2's 50,257 (with a warning on
        stderr) for a store ingested without ``--vocab-size``."""
        if self.store.vocab_size is not None:
            return self.store.vocab_size
        print(
            f"approxft: {self.store.path} does not record the vocabulary size; estimators assume "
            f"{GPT2_VOCAB_SIZE:,} (GPT-2). Re-ingest with --vocab-size to set it.",
            file=sys.stderr,
        )
        return max(GPT2_VOCAB_SIZE, self.store.vocab.height)

    @property
    def models(self) -> list[str]:
        return list(self.store.models)

    @property
    def n_positions(self) -> int:
        return int(self.context.size)

    @cached_property
    def n_buckets(self) -> int:
        return int(self._bucket.max()) + 1 if self._bucket.size else 0

    def require_model(self, name: str) -> str:
        """Return ``name`` if the store holds that model; ``ValueError`` listing them otherwise."""
        if name not in self.store.models:
            raise ValueError(f"unknown model {name!r}; the store holds: {', '.join(self.store.models)}")
        return name

    def split_mask(self, split: str) -> np.ndarray:
        """bool ``(n,)``: positions of one split; ``ValueError`` naming the splits otherwise."""
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r}; the store has: {', '.join(self.splits)}")
        return self.split_code == self.splits.index(split)

    @cached_property
    def group(self) -> np.ndarray:
        """int32 ``(n,)``: each position's (split, context bucket) cell, ``split * n_buckets + bucket``."""
        return (self.split_code * self.n_buckets + self._bucket).astype(np.int32)

    @property
    def n_groups(self) -> int:
        return len(self.splits) * self.n_buckets

    def tuning_positions(self, split: str, min_context: int = 1) -> tuple[np.ndarray, int]:
        """The positions tuning reads: int32 ``(n,)``, 0 for the positions of ``split`` with at
        least ``min_context`` tokens of context and -1 elsewhere, and how many they are (cached).

        Raises:
            ValueError: unknown split, or no such position.
        """
        key = (split, min_context)
        if key not in self._tuning:
            keep = self.split_mask(split) & (self.context >= min_context)
            if not keep.any():
                raise ValueError(f"split {split!r} has no position with at least {min_context} tokens of context")
            self._tuning[key] = (np.where(keep, 0, -1).astype(np.int32), int(np.count_nonzero(keep)))
        return self._tuning[key]

    def report(self, nll_sums: np.ndarray, group: np.ndarray) -> tuple[dict[str, Figures], pl.DataFrame]:
        """Figures per split and per (split, context bucket) from per-cell NLL sums.

        Args:
            nll_sums: float64 ``(n_groups,)``, total NLL per cell.
            group: int32 ``(n,)``, the cell of each position counted, -1 for positions left out.

        Returns:
            ``({split: Figures}, by_context)`` where ``by_context`` has one row per non-empty cell:
            ``split``, ``context_lo``, ``context_hi`` (inclusive), ``positions``, ``perplexity``,
            ``bits_per_byte``.
        """
        kept = group >= 0
        counts = np.bincount(group[kept], minlength=self.n_groups)
        n_bytes = np.bincount(group[kept], weights=self.target_bytes[kept], minlength=self.n_groups)
        cells = [Figures(int(c), float(s), int(b)) for c, s, b in zip(counts, nll_sums, n_bytes, strict=True)]
        n_b = self.n_buckets
        splits: dict[str, Figures] = {}
        rows = []
        for s, name in enumerate(self.splits):
            mine = cells[s * n_b : (s + 1) * n_b]
            splits[name] = Figures(
                sum(f.positions for f in mine), sum(f.nll_sum for f in mine), sum(f.n_bytes for f in mine)
            )
            rows += [
                (name, lo, hi, f.positions, f.perplexity, f.bits_per_byte)
                for (lo, hi), f in zip(bucket_labels(n_b), mine, strict=True)
                if f.positions
            ]
        by_context = pl.DataFrame(rows, schema=BY_CONTEXT_SCHEMA, orient="row")
        return splits, by_context

    def model_report(self, model: str) -> "Report":
        """A stored model's exact figures, from its exact target log-probabilities.

        Positions whose target value was not observed are left out (``unobserved_targets``
        counts them).
        """
        lp = self.store.target_lp(self.require_model(model))
        group = np.where(np.isnan(lp), -1, self.group).astype(np.int32)
        kept = group >= 0
        sums = np.bincount(group[kept], weights=-lp[kept].astype(np.float64), minlength=self.n_groups)
        splits, by_context = self.report(sums, group)
        return Report(name=model, estimator=None, weights=None, splits=splits, by_context=by_context)

    def target_outside_topk(self, model: str) -> np.ndarray:
        """bool ``(n,)``: True where the actual token is not in ``model``'s top-k list."""
        _, rank = self.store.union_columns((self.require_model(model),))
        return rank[0, self.store.offsets()[:-1]] < 0

    def unobserved_targets(self) -> dict[str, int]:
        """Per model, how many positions have no exact target log-probability."""
        return {m: int(np.isnan(self.store.target_lp(m)).sum()) for m in self.store.models}

    def calibration(self, models: Sequence[str]) -> MissingDrops | None:
        """The store's calibration fit for ``models`` (in blend order), None where it has none
        (read on each call: ``approxft calibrate`` may add one while the dataset is open).

        Raises:
            StoreError: the fit's file is malformed or for another k.
        """
        return read_fit(self.store, [self.require_model(m) for m in models])

    def calibrate(self, deep: str | Path, *, models: Sequence[str], files: Sequence[str]) -> FitRecord:
        """Fit ``calibrated-tail`` for ``models`` (big, tuned, untuned) on a deep sample and store
        the fit with the store (``engine.calibration.fit_file.calibrate``); ``files``: each
        model's ``.npz`` in the folder ``deep``."""
        return calibrate(self.store, deep, models=[self.require_model(m) for m in models], files=files,
                         vocab_size=self.vocab_size)

    def calibration_sample(self, deep: str | Path, *, models: Sequence[str], files: Sequence[str]
                           ) -> tuple[CalibrationSample, str]:
        """A deep sample lined up with this dataset's positions for ``models``, and which
        positions it covers (``engine.calibration.sample.store_sample``)."""
        return store_sample(self.store, deep, models=[self.require_model(m) for m in models], files=files,
                            vocab_size=self.vocab_size)

    def default_estimator(self, *, big: str, tuned: str, untuned: str) -> str:
        """The estimator a blend of these models gets when none is named: ``calibrated-tail``
        where the store has a calibration fit for them, ``zipf-tail`` otherwise
        (``engine.estimators.default_estimator``)."""
        return default_estimator(calibrated=self.calibration((big, tuned, untuned)) is not None)

    def usable_estimators(self, *, big: str, tuned: str, untuned: str) -> list[str]:
        """Registry names that can run on a blend of these models: all but those that need a
        calibration fit the store lacks."""
        calibrated = self.calibration((big, tuned, untuned)) is not None
        return [name for name, e in ESTIMATORS.items() if calibrated or not e.needs_calibration]

    def blend(self, *, big: str, tuned: str, untuned: str, estimator: str | None = None) -> "Blend":
        """The blend of three stored models under a named estimator (built once, then cached).

        Args:
            estimator: a registry name; None: ``default_estimator`` for these models.

        Raises:
            ValueError: unknown model or estimator, or an estimator that needs a calibration fit
                the store lacks (the message says how to make one).
        """
        models = (self.require_model(big), self.require_model(tuned), self.require_model(untuned))
        est = get_estimator(estimator or self.default_estimator(big=big, tuned=tuned, untuned=untuned))
        key = (*models, est.name)
        if key not in self._blends:
            data = self.union_candidates(models)
            if est.needs_calibration and data.calibration is None:
                raise ValueError(self._no_calibration(est, models))
            self._blends[key] = Blend(self, models, est.build(data))
        return self._blends[key]

    def _no_calibration(self, est: Estimator, models: tuple[str, str, str]) -> str:
        roles = " ".join(f"--{r} {m}=FILE" for r, m in zip(ROLES, models, strict=True))
        return (
            f"estimator {est.name!r} needs a calibration fit for {', '.join(models)}, and {self.store.path} has none; "
            f"fit one on a deep sample with `approxft calibrate {self.store.path} --deep DIR {roles}`, "
            "or choose another estimator"
        )

    def union_candidates(self, models: Sequence[str]) -> UnionCandidates:
        """The observed candidates of a blend of ``models`` (in blend order), as estimators take
        them, with the store's calibration fit for them where it has one."""
        lp, rank = self.store.union_columns([self.require_model(m) for m in models])
        return UnionCandidates(
            offsets=self.store.offsets(),
            lp=lp,
            rank=rank,
            k=np.array([self.store.k[m] for m in models], dtype=np.int64),
            vocab_size=self.vocab_size,
            calibration=self.calibration(models),
        )


class Blend:
    """Three models of a dataset blended under one estimator.

    Every figure comes from the kernels over the estimator's candidate matrix; a subclass may
    build that matrix chunk by chunk instead (``engine.oracle.Oracle``: the whole vocabulary).

    Attributes:
        dataset: the dataset.
        models: (big, tuned, untuned) model names.
        matrix: the estimator's filled candidate matrix.
    """

    def __init__(self, dataset: Dataset, models: tuple[str, str, str], matrix: CandidateMatrix | None):
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
        """float64 ``(n_groups, B)``: NLL sums per group for weights ``(B, 3)``."""
        out = np.zeros((n_groups, weights.shape[0]))
        for index, m in self._chunks(group):
            out += blend_nll_sums(m.offsets, m.values, m.row_weights(weights), m.outside, m.outside_nll,
                                  np.ascontiguousarray(group[index]), n_groups)
        return out

    def nll(self, weights: Sequence[float] | np.ndarray, rows: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Per-position NLL, nats: float64 ``(B, len(rows))`` for weights ``(B, 3)`` (``(len(rows),)``
        for ``(3,)``) at store rows ``rows`` (default: every position, in store order)."""
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
            weights: float ``(B, 3)`` or ``(3,)``.

        Returns:
            float64 ``(B,)`` (a 0-d array for ``(3,)`` weights).

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
            weights: float ``(3,)``.

        Returns:
            ``(mean NLL, gradient float64 (3,), Hessian float64 (3, 3))``, nats.
        """
        group, count = self.dataset.tuning_positions(split, min_context)
        w = np.asarray(weights, dtype=np.float64)
        total, grad, hess = 0.0, 0.0, 0.0
        for index, m in self._chunks(group):
            t, g, h = blend_nll_grad_hess(m.offsets, m.values, m.row_weights(w)[0], m.outside, m.outside_nll,
                                          np.ascontiguousarray(group[index]), n_deriv=m.n_models)
            total, grad, hess = total + t, grad + g, hess + h
        return total / count, grad / count, hess / count

    def evaluate(self, weights: Sequence[float] | np.ndarray) -> Report | list[Report]:
        """Figures per split and per context-length bucket, in one kernel pass.

        Args:
            weights: float ``(3,)`` for one report, or ``(B, 3)`` for a list of B reports.
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
        """Per-position NLL for one weight vector ``(3,)`` beside the positions table's keys.

        Returns:
            polars DataFrame: ``request``, ``position``, ``split``, ``document``, ``target``, ``nll``.
        """
        keys = self.dataset.store.positions.select("request", "position", "split", "document", "target")
        return keys.with_columns(pl.Series("nll", self.nll(np.asarray(weights, dtype=np.float64).reshape(3))))
