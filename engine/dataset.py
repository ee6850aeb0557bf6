"""The Python API for batch evaluation: open a store, build blends, evaluate weight vectors.

    >>> import engine
    >>> ds = engine.open_dataset("store/")
    >>> ds.model_report("grimm-big").splits["test"].perplexity
    554.95...
    >>> blend = ds.blend(big="grimm-big", tuned="grimm-small-tuned", untuned="grimm-small")
    >>> report = blend.evaluate([1.0, 1.0, -1.0])
    >>> report.splits["test"].perplexity  # an estimate: report.estimator names how it was made
    >>> ds.blend(["grimm-big", "grimm-small-tuned", "grimm-small", "grimm-big-tuned"]).evaluate([1, 1, -1, 0.5])

The estimator defaults to ``Dataset.default_estimator``: ``calibrated-tail`` where the store has a
calibration fit for the blend's models (``approxft calibrate``), ``zipf-tail`` otherwise.

``Blend`` is the one route from evaluation, tuning and the CLI to the kernels (``engine.kernels``):
everything here is orchestration over them; no Python loop touches positions.
"""

from __future__ import annotations

import sys
from functools import cached_property
from pathlib import Path
from typing import Sequence

import numpy as np
import polars as pl

from ingest import open_store
from ingest.deep_sample import holds_full
from ingest.prepare.bpe import GPT2_VOCAB_SIZE
from ingest.store import Store

from .blend import Blend
from .bootstrap import DocumentSums
from .calibration.fit_file import FitRecord, calibrate, read_fit
from .calibration.full import (
    FullSample,
    read_full_sample,
    store_full_sample,
    stored_full_sample,
)
from .calibration.sample import CalibrationSample, store_sample
from .candidates import MissingDrops, UnionCandidates
from .correction import CORRECTED, CorrectedBlend, corrected_name
from .estimators import ESTIMATORS, Estimator, default_estimator, get_estimator
from .matrix_cache import MatrixSource
from .params import ROLES
from .report import BY_CONTEXT_SCHEMA, Figures, Report, bucket_labels, context_buckets
from .streaming import StreamingBlend
from .terms import blend_models, require_terms

__all__ = ["Dataset", "open_dataset"]

def open_dataset(path: str | Path, *, streaming: bool = False) -> "Dataset":
    """Open a store written by ``approxft ingest`` for evaluation; ``streaming``: its blends run
    shard by shard, one shard's matrix in memory at a time (``engine.streaming``)."""
    return Dataset(open_store(path), streaming=streaming)


class Dataset:
    """A store plus the per-position metadata every evaluation needs.

    Attributes:
        store: the opened store.
        streaming: whether its blends run shard by shard (``engine.streaming.StreamingBlend``).
        splits: split names, in order of first appearance.
        split_code: int32 ``(n,)``, index into ``splits`` per position.
        context: int32 ``(n,)``, tokens of context per position (>= 1).
        target_bytes: int64 ``(n,)``, UTF-8 bytes of each position's target token.
    """

    def __init__(self, store: Store, *, streaming: bool = False):
        self.store = store
        self.streaming = streaming
        pos = store.positions
        self.splits: list[str] = pos.get_column("split").unique(maintain_order=True).to_list()
        codes = {s: i for i, s in enumerate(self.splits)}
        self.split_code = pos.get_column("split").replace_strict(codes, return_dtype=pl.Int32).to_numpy()
        self.context = pos.get_column("position").to_numpy().astype(np.int32)
        token_bytes = store.vocab.get_column("bytes").bin.size().to_numpy().astype(np.int64)
        self.target_bytes = token_bytes[pos.get_column("target").to_numpy()]
        self._bucket = context_buckets(self.context) if self.context.size else np.zeros(0, np.int32)
        self._blends: dict[tuple[str, ...], Blend] = {}
        self._full: dict[tuple[str, ...], FullSample | None] = {}
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
    def fingerprint(self) -> str:
        """The store's content hash (``ingest.store.Store.fingerprint``): what a study records to
        refuse resuming on other data."""
        return self.store.fingerprint

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

    def require_blend(self, models: Sequence[str]) -> tuple[str, ...]:
        """``models`` (in term order) if they make a blend of the store's models (``engine.terms``)."""
        return require_terms(models, self.store.models)

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

    @cached_property
    def documents(self) -> tuple[np.ndarray, np.ndarray]:
        """The documents the bootstrap resamples (``engine.bootstrap``): int32 ``(n,)`` each
        position's document, and int32 ``(D,)`` each document's split code; a document is a
        (split, document name) pair of the positions table."""
        keys = self.store.positions.select(pl.col("split"), pl.col("document").cast(pl.String))
        code = keys.select(pl.struct("split", "document").rank("dense") - 1).to_series().to_numpy().astype(np.int32)
        split = np.zeros(int(code.max()) + 1 if code.size else 0, dtype=np.int32)
        split[code] = self.split_code
        return code, split

    @cached_property
    def document_cells(self) -> np.ndarray:
        """int32 ``(n,)``: each position's (document, context bucket) cell, ``document * n_buckets
        + bucket``: what the bootstrap's per-document sums are kept by."""
        return (self.documents[0] * self.n_buckets + self._bucket).astype(np.int32)

    @property
    def documents_per_split(self) -> dict[str, int]:
        """How many documents each split has."""
        split = self.documents[1]
        return {name: int((split == s).sum()) for s, name in enumerate(self.splits)}

    def model_document_sums(self, models: Sequence[str]) -> DocumentSums:
        """Stored models' exact per-document and per-bucket NLL sums (``engine.bootstrap``);
        positions whose target value was not observed are left out, as in ``model_report``."""
        split = self.documents[1]
        n = split.size * self.n_buckets
        cells = self.document_cells
        lp = np.stack([self.store.target_lp(self.require_model(m)) for m in models]).astype(np.float64)
        seen = ~np.isnan(lp)
        nll = np.stack([np.bincount(cells[k], weights=-x[k], minlength=n) for x, k in zip(lp, seen, strict=True)])
        positions = np.stack([np.bincount(cells[k], minlength=n) for k in seen])
        shape = (len(models), split.size, self.n_buckets)
        return DocumentSums(cell_nll=nll.reshape(shape), cell_positions=positions.reshape(shape), split=split,
                            splits=self.splits)

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
                (name, lo, hi, f.positions, f.perplexity, f.bits_per_byte, None, None, None, None)
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

    def calibrate(self, deep: str | Path, *, models: Sequence[str], files: Sequence[str]
                  ) -> tuple[FitRecord | None, FullSample | None]:
        """Fit ``calibrated-tail`` for ``models`` (a blend's, in term order) on a deep sample and store
        the fit with the store (``engine.calibration.fit_file.calibrate``); where the sample holds
        full distributions, store it too, for the sampled correction
        (``engine.calibration.full``). Everything is checked before anything is written.
        ``files``: each model's ``.npz`` in the folder ``deep``.

        Returns:
            The fit, None where a full sample's model is known by lists no deeper than the
            store's k (no fit can be made: the correction then runs over the store's fit if
            any, else ``zipf-tail``), and the full sample (None for lists only).
        """
        models = list(self.require_blend(models))
        full = None
        if any(holds_full(Path(deep) / f) for f in files):
            full = read_full_sample(self.store, deep, models=models, files=files)
        shallow = full is not None and any(k <= self.store.k[m] for m, k in full.partial.items())
        fit = None if shallow else calibrate(self.store, deep, models=models, files=files, vocab_size=self.vocab_size)
        if full is not None:
            store_full_sample(self.store, deep, models=models, files=files)
        if full is None:
            self._full.pop(tuple(models), None)  # read again on next use: a sample stored earlier may remain
        else:
            self._full[tuple(models)] = full
        self._blends.clear()
        return fit, full

    def full_sample(self, models: Sequence[str]) -> FullSample | None:
        """The store's full-distribution sample of ``models`` (in blend order), compressed for
        the kernels once, or None where it has none."""
        key = tuple(self.require_model(m) for m in models)
        if key not in self._full:
            self._full[key] = stored_full_sample(self.store, key)
        return self._full[key]

    def calibration_sample(self, deep: str | Path, *, models: Sequence[str], files: Sequence[str]
                           ) -> tuple[CalibrationSample, str]:
        """A deep sample lined up with this dataset's positions for ``models``, and which
        positions it covers (``engine.calibration.sample.store_sample``)."""
        return store_sample(self.store, deep, models=[self.require_model(m) for m in models], files=files,
                            vocab_size=self.vocab_size)

    def default_estimator(self, models: Sequence[str] | None = None, *, big: str | None = None,
                          tuned: str | None = None, untuned: str | None = None) -> str:
        """The estimator a blend of these models (in term order, or by role) gets when none is
        named: the sampled correction over the best top-k estimator where the store has a
        full-distribution sample of them, else ``calibrated-tail`` where it has a calibration fit,
        ``zipf-tail`` otherwise (``engine.estimators.default_estimator``)."""
        models = blend_models(models, big=big, tuned=tuned, untuned=untuned)
        base = self._base_estimator(models)
        return corrected_name(base) if self.full_sample(models) is not None else base

    def _base_estimator(self, models: Sequence[str]) -> str:
        """The best top-k estimator the store allows for ``models``: ``calibrated-tail`` with a
        calibration fit, ``zipf-tail`` without (``engine.estimators.default_estimator``)."""
        return default_estimator(calibrated=self.calibration(models) is not None)

    def usable_estimators(self, models: Sequence[str] | None = None, *, big: str | None = None,
                          tuned: str | None = None, untuned: str | None = None) -> list[str]:
        """Names that can run on a blend of these models: the registry's, but those that need a
        calibration fit the store lacks, then each of them corrected where the store has a
        full-distribution sample. ``models``: in term order, or by role."""
        models = blend_models(models, big=big, tuned=tuned, untuned=untuned)
        calibrated = self.calibration(models) is not None
        names = [name for name, e in ESTIMATORS.items() if calibrated or not e.needs_calibration]
        if self.full_sample(models) is not None:
            names = [corrected_name(n) for n in names] + names
        return names

    def blend(self, models: Sequence[str] | None = None, *, big: str | None = None, tuned: str | None = None,
              untuned: str | None = None, estimator: str | None = None) -> Blend:
        """The blend of stored models under a named estimator (built once, then cached); its
        weights are one per model, in the order of ``models``.

        Args:
            models: the models, in term order; or ``big``, ``tuned`` and ``untuned`` instead (the
                three roles' shorthand: ``models=(big, tuned, untuned)``).
            estimator: a registry name; ``corrected`` or ``corrected:NAME`` for the sampled
                correction over the default or a named base (``engine.correction``); None:
                ``default_estimator`` for these models.

        Raises:
            ValueError: unknown model or estimator, a model in two terms, an estimator that needs a calibration fit
                the store lacks, or a correction without a full-distribution sample (the
                message says how to make one).
        """
        models = self.require_blend(blend_models(models, big=big, tuned=tuned, untuned=untuned))
        name = estimator or self.default_estimator(models)
        if name == CORRECTED or name.startswith(CORRECTED + ":"):
            base = name.partition(":")[2] or self._base_estimator(models)
            sample = self.full_sample(models)
            if sample is None:
                raise ValueError(
                    f"estimator {name!r} needs a full-distribution sample of {', '.join(models)}, and {self.store.path} "
                    "has none; collect one with `approxft collect --calibration N --calibration-k all` and store it "
                    f"with `approxft calibrate {self.store.path} --deep DIR ...`")
            key = (*models, corrected_name(base))
            if key not in self._blends:
                self._blends[key] = CorrectedBlend(self.blend(models, estimator=base), sample)
            return self._blends[key]
        est = get_estimator(name)
        key = (*models, est.name)
        if key not in self._blends:
            source = self._source(est, models)
            self._blends[key] = (StreamingBlend(self, models, source) if self.streaming
                                 else Blend(self, models, source.matrix(self.store)))
        return self._blends[key]

    def _source(self, est: Estimator, models: tuple[str, ...]) -> MatrixSource:
        """How ``est``'s matrix of ``models`` is made (``engine.matrix_cache``).

        Raises:
            ValueError: ``est`` needs a calibration fit for ``models`` that the store lacks.
        """
        fit = self.calibration(models) if est.needs_calibration else None
        if est.needs_calibration and fit is None:
            raise ValueError(self._no_calibration(est, models))
        return MatrixSource(path=self.store.path, models=models, estimator=est.name, vocab_size=self.vocab_size,
                            calibration=fit)

    def _no_calibration(self, est: Estimator, models: tuple[str, ...]) -> str:
        flags = zip(ROLES, models, strict=True) if len(models) == len(ROLES) else (("model", m) for m in models)
        files = " ".join(f"--{flag} {m}=FILE" for flag, m in flags)
        return (
            f"estimator {est.name!r} needs a calibration fit for {', '.join(models)} (in this order), and "
            f"{self.store.path} has none; fit one on a deep sample with `approxft calibrate {self.store.path} "
            f"--deep DIR {files}`, or choose another estimator"
        )

    def union_candidates(self, models: Sequence[str]) -> UnionCandidates:
        """The observed candidates of a blend of ``models`` (in blend order), as estimators take
        them, with the store's calibration fit for them where it has one."""
        return UnionCandidates.from_store(self.store, [self.require_model(m) for m in models],
                                          vocab_size=self.vocab_size, calibration=self.calibration(models))

    def _union(self, part: Store, models: Sequence[str], fit: MissingDrops | None) -> UnionCandidates:
        """``union_candidates`` of the store or one of its shards (``part``), with ``fit``."""
        lp, rank = part.union_columns(models)
        return UnionCandidates(offsets=part.offsets(), lp=lp, rank=rank,
                               k=np.array([self.store.k[m] for m in models], dtype=np.int64),
                               vocab_size=self.vocab_size, calibration=fit)
