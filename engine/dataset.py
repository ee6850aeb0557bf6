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
from typing import Iterator, Sequence

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
from .model_figures import model_document_sums, model_report, unobserved_targets
from .params import ROLES
from .positions import (
    CELLS,
    DOCUMENTS,
    LAYOUT_COLUMNS,
    Grouping,
    Layout,
    PositionsPart,
    count,
    token_bytes,
    tuning,
)
from .report import Figures, Report
from .streaming import StreamingBlend
from .terms import blend_models, require_terms

__all__ = ["Dataset", "open_dataset"]

def open_dataset(path: str | Path, *, streaming: bool = False) -> "Dataset":
    """Open a store written by ``approxft ingest`` for evaluation; ``streaming``: its blends run
    shard by shard, one shard's matrix in memory at a time (``engine.streaming``)."""
    return Dataset(open_store(path), streaming=streaming)


class Dataset:
    """A store plus what every evaluation reads of its positions.

    In memory (the default), every position's arrays are read when it is opened (``whole``:
    split, context, target bytes, cells); a streamed dataset keeps only the store-wide ``layout``
    and reads the arrays one shard at a time (``parts``), so its memory does not grow with the
    store (what needs them all at once makes ``whole`` on first use: Ray's driver, the sampled
    correction, the bounds, per-position output).

    Attributes:
        store: the opened store.
        streaming: whether its blends run shard by shard (``engine.streaming.StreamingBlend``).
    """

    def __init__(self, store: Store, *, streaming: bool = False):
        self.store = store
        self.streaming = streaming
        self._blends: dict[tuple[str, ...], Blend] = {}
        self._full: dict[tuple[str, ...], FullSample | None] = {}
        self._counts: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        _ = self.layout if streaming else self.whole  # read (and checked) when opened

    @cached_property
    def layout(self) -> Layout:
        """The store-wide numbering of cells (``engine.positions.Layout``): from the positions
        table's columns in memory, or from each shard's in turn for a streamed dataset."""
        if not self.streaming:
            return Layout.of([self.store.position_columns(LAYOUT_COLUMNS)])
        return Layout.of(self.store.shard(i).position_columns(LAYOUT_COLUMNS) for i in range(len(self.store.shards)))

    @cached_property
    def whole(self) -> PositionsPart:
        """Every position's arrays at once."""
        return PositionsPart(self.store, slice(0, self.store.n_positions), self.layout, self._token_bytes)

    def parts(self) -> Iterator[PositionsPart]:
        """The positions' arrays part by part: ``whole`` in memory; each non-empty shard's in turn
        for a streamed dataset (one in memory at a time)."""
        if not self.streaming:
            yield self.whole
        else:
            yield from (self.part(i) for i, shard in enumerate(self.store.shards) if shard.stop > shard.start)

    def part(self, index: int) -> PositionsPart:
        """Shard ``index``'s positions' arrays (read again on each call)."""
        return PositionsPart.of_shard(self.store, index, self.layout, self._token_bytes)

    @cached_property
    def _token_bytes(self) -> np.ndarray:
        return token_bytes(self.store)

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
        return self.store.n_positions

    @property
    def splits(self) -> list[str]:
        """Split names, in order of first appearance."""
        return self.layout.splits

    @property
    def n_buckets(self) -> int:
        return self.layout.n_buckets

    @property
    def n_groups(self) -> int:
        return self.layout.n_groups

    def groups(self, grouping: Grouping) -> np.ndarray:
        """int32 ``(n,)``: ``grouping``'s cell of every position (``engine.positions``)."""
        return self.whole.grouped(grouping)

    def counts(self, grouping: Grouping) -> tuple[np.ndarray, np.ndarray]:
        """int64 ``(cells,)`` twice: the positions ``grouping`` counts in each cell and their
        targets' UTF-8 bytes, added up part by part (``engine.positions.count``; kept, but for ``rows_of``)."""
        if grouping.rows is not None:
            return count(self.parts(), grouping, self.layout)
        if grouping.key not in self._counts:
            self._counts[grouping.key] = count(self.parts(), grouping, self.layout)
        return self._counts[grouping.key]

    def split_mask(self, split: str) -> np.ndarray:
        """bool ``(n,)``: positions of one split; ``ValueError`` naming the splits otherwise."""
        return self.whole.split_code == self._split_index(split)

    def _split_index(self, split: str) -> int:
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r}; the store has: {', '.join(self.splits)}")
        return self.splits.index(split)

    def require_model(self, name: str) -> str:
        """Return ``name`` if the store holds that model; ``ValueError`` listing them otherwise."""
        if name not in self.store.models:
            raise ValueError(f"unknown model {name!r}; the store holds: {', '.join(self.store.models)}")
        return name

    def require_blend(self, models: Sequence[str]) -> tuple[str, ...]:
        """``models`` (in term order) if they make a blend of the store's models (``engine.terms``)."""
        return require_terms(models, self.store.models)

    @property
    def documents_per_split(self) -> dict[str, int]:
        """How many documents each split has."""
        split = self.layout.document_split
        return {name: int((split == s).sum()) for s, name in enumerate(self.splits)}

    def document_sums(self, nll: np.ndarray) -> DocumentSums:
        """``DocumentSums`` of F figures from their NLL per (document, bucket) cell, float64 ``(F, cells)``,
        and the positions the blend's ``DOCUMENTS`` grouping counts in each."""
        shape = (nll.shape[0], self.layout.documents.height, self.n_buckets)
        positions = np.broadcast_to(self.counts(DOCUMENTS)[0].reshape(shape[1:]), shape)
        return DocumentSums(cell_nll=nll.reshape(shape), cell_positions=positions, split=self.layout.document_split,
                            splits=self.splits)

    def model_document_sums(self, models: Sequence[str]) -> DocumentSums:
        """Stored models' exact per-document and per-bucket NLL sums (``engine.model_figures``)."""
        return model_document_sums(self.parts(), self.layout, [self.require_model(m) for m in models])

    def tuning_count(self, split: str, min_context: int = 1) -> int:
        """How many positions tuning reads (``engine.positions.tuning``).

        Raises:
            ValueError: unknown split, or no such position.
        """
        self._split_index(split)
        count = int(self.counts(tuning(split, min_context))[0][0])
        if not count:
            raise ValueError(f"split {split!r} has no position with at least {min_context} tokens of context")
        return count

    def tuning_positions(self, split: str, min_context: int = 1) -> tuple[np.ndarray, int]:
        """int32 ``(n,)``, 0 for the positions tuning reads and -1 elsewhere, and how many they are
        (``tuning_count``, whose errors it raises)."""
        count = self.tuning_count(split, min_context)
        return self.groups(tuning(split, min_context)), count

    def report(self, nll_sums: np.ndarray) -> tuple[dict[str, Figures], pl.DataFrame]:
        """Figures per split and per (split, context bucket) (``Layout.figures``) from NLL sums per
        cell, float64 ``(n_groups,)``, over every position."""
        return self.layout.figures(nll_sums, *self.counts(CELLS))

    def model_report(self, model: str) -> Report:
        """A stored model's exact figures (``engine.model_figures``)."""
        return model_report(self.parts(), self.layout, self.require_model(model))

    def target_outside_topk(self, model: str) -> np.ndarray:
        """bool ``(n,)``: True where the actual token is not in ``model``'s top-k list."""
        _, rank = self.store.union_columns((self.require_model(model),))
        return rank[0, self.store.offsets()[:-1]] < 0

    def unobserved_targets(self) -> dict[str, int]:
        """Per model, how many positions have no exact target log-probability."""
        return unobserved_targets(self.parts(), self.models)

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
