"""A full-distribution sample of a blend, stored with the store: what the sampled correction
(``engine.correction``) measures the base estimator against.

``approxft collect --calibration N --calibration-k all`` gathers every model's whole next-token
distribution at N positions (``ingest.deep_sample``: ``full``); ``approxft calibrate`` copies those
files into ``STORE/calibration/<big>+<tuned>+<untuned>.full/`` (``store_full_sample``, atomically:
a temporary folder renamed into place) beside the ``calibrated-tail`` fit. ``read_full_sample``
lines the rows up with the store (``engine.calibration.sample.line_up``) and compresses them for
the kernels (``engine.calibration.cells``).

A model of the sample may be known by its top-K lists only (a big model behind an API that caps
k, the small pair local). Its tokens beyond K then take its remaining probability mass in
proportion to the last full model's probabilities of them (``fill_tail``, ``tail_proxy``: the untuned small
model, of the same family as the others; the target keeps the exact value echo scoring gives),
and ``partial`` names it, so every figure made with the sample says that this shape is assumed,
not measured. Chosen by measurement on the testbed (``python -m bench.correction``, the big
model at top 20): this assumption put the figures about 10% low (median), which the interval
does not cover; leaving those tokens out of the normalizer instead put them 87% low.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ingest.deep_sample import (
    TOKEN_STRINGS,
    DeepLists,
    read_deep_lists,
    read_token_strings,
)
from ingest.store import CALIBRATION_DIR, Store

from ..candidates import CandidateMatrix
from .cells import CELL_NATS, cell_runs
from .fit_file import model_key
from .sample import CalibrationError, line_up, sample_targets

__all__ = ["FULL_SAMPLE", "FullSample", "cells_matrix", "fill_tail", "tail_proxy", "read_full_sample", "store_full_sample", "stored_full_sample"]

FULL_SAMPLE = "full-distribution sample"
"""What a matrix of a ``FullSample`` is called (``CandidateMatrix.estimator``)."""
_CHUNK_CELLS = 1 << 24
"""Positions x vocabulary entries compressed per step (about 200 MB of float32 for 3 models)."""


@dataclass(frozen=True)
class FullSample:
    """Whole next-token distributions of a blend's models at n store positions, as cells.

    Attributes:
        models: the store's model names, in blend order.
        rows: int64 ``(n,)``, the store rows sampled, ascending.
        matrix: the kernels' input at those rows (``engine.calibration.cells``): run i is row
            ``rows[i]``, the target first, then its cells; ``n_models`` rows plus a log-count row.
        partial: ``{model: K}`` for the models known by their top-K lists only.
        described: which positions the sample covers, in words.
    """

    models: tuple[str, ...]
    rows: np.ndarray
    matrix: CandidateMatrix
    partial: dict[str, int]
    described: str

    @property
    def n_positions(self) -> int:
        return int(self.rows.size)

    def take(self, index: np.ndarray, described: str) -> "FullSample":
        """The sample's positions ``index`` (int ascending, into ``rows``) alone, ``described`` so."""
        index = np.asarray(index, dtype=np.int64)
        return FullSample(models=self.models, rows=self.rows[index], matrix=self.matrix.take(index),
                          partial=self.partial, described=described)

    def leaves_out(self) -> str | None:
        """What the sample's exact side leaves out, in words (None: nothing)."""
        if not self.partial:
            return None
        proxy = self.models[tail_proxy([m not in self.partial for m in self.models])]
        return "; ".join(f"the error of {m}'s probabilities beyond its top {k} at the sampled positions (its remaining "
                         f"mass spread in proportion to {proxy}'s)" for m, k in self.partial.items())


def read_full_sample(store: Store, deep: str | Path, *, models: Sequence[str], files: Sequence[str]) -> FullSample:
    """Read a deep sample with at least one full distribution, line it up with ``store`` and
    compress it for the kernels.

    Args:
        store: the store the sample is of.
        deep: the sample's folder.
        models: the store's model names, in blend order.
        files: each model's ``.npz`` in ``deep``, in the same order.

    Raises:
        IngestError: a file is missing or malformed (``ingest.deep_sample.read_deep_lists``).
        CalibrationError: no model has a full distribution, the full ones differ in size, or
            the sample does not line up with the store.
    """
    deep = Path(deep)
    paths = [deep / f for f in files]
    parts = [read_deep_lists(p) for p in paths]
    sizes = {p.full.shape[1] for p in parts if p.is_full}
    if not sizes:
        raise CalibrationError(f"{deep}: no file holds a full distribution (collect with --calibration-k all)")
    if len(sizes) > 1:
        raise CalibrationError(f"{deep}: the full distributions differ in size ({sorted(sizes)}): other tokenizers?")
    n_vocab = sizes.pop()
    strings = read_token_strings(deep / TOKEN_STRINGS)
    if len(strings) < n_vocab:
        raise CalibrationError(f"{deep / TOKEN_STRINGS}: {len(strings)} tokens, the full distributions have {n_vocab}")
    rows, picks, described = line_up(store, deep, models=models, paths=paths, parts=parts)
    target, _ = sample_targets(store, rows, strings)
    if int(target.max(initial=0)) >= n_vocab:
        bad = int(np.argmax(target >= n_vocab))
        raise CalibrationError(f"{deep / TOKEN_STRINGS}: the actual token at store row {int(rows[bad])} is not among "
                               f"the {n_vocab} tokens of the full distributions: another tokenizer?")
    for path, part in zip(paths, parts, strict=True):
        if not part.is_full and int(part.ids.max(initial=-1)) >= n_vocab:
            raise CalibrationError(f"{path}: its lists use token ids past the {n_vocab} of the full distributions")
    order = np.argsort(rows, kind="stable")
    rows, picks, target = rows[order], [pick[order] for pick in picks], target[order]
    known = [store.target_lp(m)[rows] for m in models]  # echo scoring's exact target values
    per = max(1, _CHUNK_CELLS // n_vocab)
    proxy = tail_proxy([part.is_full for part in parts])

    def chunks():
        for s in range(0, rows.size, per):
            lp = np.stack([_dense(part, pick[s : s + per], n_vocab, target[s : s + per], value[s : s + per])
                           for part, pick, value in zip(parts, picks, known, strict=True)])
            for m, part in enumerate(parts):
                if not part.is_full:
                    fill_tail(lp, m, proxy)
            yield lp, target[s : s + per]

    matrix = cells_matrix(chunks(), n_models=len(models))
    partial = {m: int(p.ids.shape[1]) for m, p in zip(models, parts, strict=True) if not p.is_full}
    return FullSample(models=tuple(models), rows=rows.astype(np.int64), matrix=matrix, partial=partial,
                      described=described)


def cells_matrix(chunks: Iterable[tuple[np.ndarray, np.ndarray]], *, n_models: int) -> CandidateMatrix:
    """A ``FullSample``'s matrix from its positions' distributions, chunk by chunk.

    Args:
        chunks: ``(lp, target)`` per chunk of positions, in sample order: float32 ``(M, p, V)``
            natural-log values (NaN where a model has none; the target's always set) and int64
            ``(p,)`` the actual tokens' indexes into V.
        n_models: M.
    """
    lengths, values = [], []
    for lp, target in chunks:
        n, v = cell_runs(lp, target, CELL_NATS)
        lengths.append(n)
        values.append(v)
    offsets = np.zeros(sum(n.size for n in lengths) + 1, dtype=np.uint64)
    np.cumsum(np.concatenate(lengths), out=offsets[1:])
    return CandidateMatrix.with_target_inside(offsets, np.ascontiguousarray(np.hstack(values)), n_models=n_models,
                                              estimator=FULL_SAMPLE)


def tail_proxy(full: Sequence[bool]) -> int:
    """The model whose probabilities shape a partial model's tail (``fill_tail``): the last of
    those with a full distribution (``full``: per model, in blend order), the untuned small one."""
    return max(m for m, is_full in enumerate(full) if is_full)


def fill_tail(lp: np.ndarray, m: int, proxy: int) -> None:
    """In place: model ``m``'s unknown values (NaN) in float32 ``lp`` ``(M, p, V)`` take, at each
    position, its probability mass left over by its known ones, spread over those tokens in
    proportion to model ``proxy``'s probabilities of them (which must all be known)."""
    unknown = np.isnan(lp[m])
    known = np.where(unknown, np.float32(-np.inf), lp[m])
    rest = np.maximum(1.0 - np.exp(known.astype(np.float64)).sum(axis=1), 1e-12)  # (p,)
    share = np.where(unknown, np.exp(lp[proxy].astype(np.float64)), 0.0).sum(axis=1)
    scale = (np.log(rest) - np.log(np.maximum(share, 1e-300))).astype(np.float32)[:, None]
    lp[m] = np.where(unknown, lp[proxy] + scale, lp[m])


def _dense(part: DeepLists, rows: np.ndarray, n_vocab: int, target: np.ndarray, target_lp: np.ndarray) -> np.ndarray:
    """float32 ``(len(rows), V)``: a model's values at sample ``rows``, NaN where it has none; a
    model known by its lists takes the target's value ``target_lp`` (the store's) at ``target``."""
    if part.is_full:
        return part.full_lp(rows)
    out = np.full((rows.size, n_vocab), np.nan, dtype=np.float32)
    ids, lp = part.ids[rows], part.lp[rows].astype(np.float32)
    listed = (ids >= 0) & np.isfinite(lp)
    out[np.nonzero(listed)[0], ids[listed]] = lp[listed]
    out[np.arange(rows.size), target] = target_lp
    return out


def full_sample_dir(store_path: str | Path, models: Sequence[str]) -> Path:
    """``STORE/calibration/<big>+<tuned>+<untuned>.full``."""
    return Path(store_path) / CALIBRATION_DIR / (model_key(models) + ".full")


def store_full_sample(store: Store, deep: str | Path, *, models: Sequence[str], files: Sequence[str]) -> None:
    """Copy a full-distribution sample's files into the store, replacing any earlier sample of
    these models only once the new one is complete (the caller has checked it with
    ``read_full_sample``: the stored files are byte copies of those read)."""
    deep = Path(deep)
    final = full_sample_dir(store.path, models)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".full-", dir=final.parent))
    try:
        for role, name in enumerate(files):
            shutil.copyfile(deep / name, staging / f"{role}.npz")
        shutil.copyfile(deep / TOKEN_STRINGS, staging / TOKEN_STRINGS)
        old = final.with_name(final.name + ".old")
        if final.exists():
            final.rename(old)
        staging.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def stored_full_sample(store: Store, models: Sequence[str]) -> FullSample | None:
    """The store's full-distribution sample of ``models`` (in blend order), None where it has none."""
    folder = full_sample_dir(store.path, models)
    if not folder.is_dir():
        return None
    return read_full_sample(store, folder, models=models, files=[f"{i}.npz" for i in range(len(models))])
