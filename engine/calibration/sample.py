"""A deep sample lined up with a store for one blend's models: what calibration fits on and what
``bench.estimators`` measures estimators on.

A calibration sample holds, for ``n`` positions of a dataset and each blend model, the model's
top-K list (K in the hundreds or thousands, far deeper than the k the store holds) and its exact
log-probability of the actual token. ``data/grimm/deep/`` is one (K = 1000, n = 2000); its file
format is ``ingest.deep_sample``'s.

- ``store_sample`` reads a deep sample and matches its rows to the store's positions.
- ``CalibrationSample.union(k)`` truncates every list to its first ``k`` entries and lays the
  positions out as ``UnionCandidates`` with ingest's own union layout (``ingest.union``), exactly
  as the store holds top-k data, so any estimator can run at k and at the full depth K.

Natural logs throughout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ingest.deep_sample import (
    TOKEN_STRINGS,
    DeepLists,
    read_deep_lists,
    read_token_strings,
)
from ingest.store import Store
from ingest.union import union_candidates

from ..candidates import UnionCandidates

__all__ = ["CalibrationError", "CalibrationSample", "store_sample", "line_up", "sample_targets", "IMPLICIT_SPLIT"]

IMPLICIT_SPLIT = "val"
"""A sample without ``request``/``position`` arrays covers the first n scored positions of this split."""
LIST_DEPTH = 1000
"""Entries taken from the head of a full distribution where a calibration sample needs lists."""
LINE_UP_TOLERANCE = 0.01
"""Largest median |deep target value - store's target value| (nats) of a sample that belongs to
the store. Separate API calls differ by float noise; another position or model differs by nats."""


class CalibrationError(ValueError):
    """A deep sample does not fit the store, or cannot be fitted; one line naming the file."""


@dataclass(frozen=True)
class CalibrationSample:
    """Deep top-K lists of M models at n positions (models in blend order: big, tuned, untuned).

    Attributes:
        ids: int64 ``(M, n, K)``; token ids in the sample's numbering, each row sorted by
            log-probability, descending.
        lp: float32 ``(M, n, K)``; the models' natural-log probabilities of ``ids``.
        target: int64 ``(n,)``; the actual token's id.
        target_lp: float32 ``(M, n)``; each model's exact log-probability of the actual token.
        vocab_size: the tokenizer's vocabulary size V (at least every id used, plus one).
    """

    ids: np.ndarray
    lp: np.ndarray
    target: np.ndarray
    target_lp: np.ndarray
    vocab_size: int

    @property
    def n_positions(self) -> int:
        return int(self.target.size)

    @property
    def depth(self) -> int:
        return int(self.ids.shape[2])

    def subset(self, rows: np.ndarray, depth: int | None = None) -> "CalibrationSample":
        """The sample restricted to ``rows`` (indices into positions) and the first ``depth``
        entries of each list."""
        d = self.depth if depth is None else depth
        return CalibrationSample(
            ids=np.ascontiguousarray(self.ids[:, rows, :d]),
            lp=np.ascontiguousarray(self.lp[:, rows, :d]),
            target=self.target[rows],
            target_lp=np.ascontiguousarray(self.target_lp[:, rows]),
            vocab_size=self.vocab_size,
        )

    def union(self, k: int) -> UnionCandidates:
        """The positions as top-``k`` data: target first, then the union of the models' first
        ``k`` entries in first-seen order (model by model), values NaN where a model has none."""
        if not 1 <= k <= self.depth:
            raise ValueError(f"k must be in 1..{self.depth}, got {k}")
        layout = union_candidates(self.target.astype(np.int32), self.target_lp,
                                  [ids[:, :k].astype(np.int32) for ids in self.ids], [lp[:, :k] for lp in self.lp],
                                  n_vocab=self.vocab_size)
        n_models = self.ids.shape[0]
        return UnionCandidates(offsets=layout.offsets, lp=layout.lp, rank=layout.rank,
                               k=np.full(n_models, k, dtype=np.int64), vocab_size=self.vocab_size)


def store_sample(
    store: Store, deep: str | Path, *, models: Sequence[str], files: Sequence[str], vocab_size: int
) -> tuple[CalibrationSample, str]:
    """A deep sample as a ``CalibrationSample`` of the store's positions, and which positions it covers.

    Rows are matched to store positions by ``line_up``. Token ids stay in the sample's
    numbering; targets are mapped into it through ``token_strings.json`` (``sample_targets``).
    Lists are truncated to the shortest full one; a full distribution gives its first
    ``LIST_DEPTH`` entries.

    Args:
        store: the store the sample is of.
        deep: the deep sample's folder.
        models: the store's model names, in blend order.
        files: each model's ``.npz``, relative to ``deep`` (or absolute), in the same order.
        vocab_size: the tokenizer's vocabulary size (the sample's is at least this).

    Raises:
        IngestError: a file is missing or malformed.
        CalibrationError: the sample does not line up with the store (its target values differ
            from the store's, or its positions are not the store's).
    """
    deep = Path(deep)
    paths = [deep / f for f in files]
    parts = [read_deep_lists(p) for p in paths]
    strings = read_token_strings(deep / TOKEN_STRINGS)
    rows, picks, described = line_up(store, deep, models=models, paths=paths, parts=parts)
    heads = [p.top(LIST_DEPTH if p.is_full else p.ids.shape[1]) for p in parts]
    ids = [i[pick] for (i, _), pick in zip(heads, picks, strict=True)]
    depth = min(int((i >= 0).sum(axis=1).min()) for i in ids)
    if any(int(i.max(initial=-1)) >= len(strings) for i in ids):
        raise CalibrationError(f"{deep / TOKEN_STRINGS}: has {len(strings)} tokens, the lists use higher ids")
    target_lp = np.stack([p.target_lp[pick].astype(np.float32) for p, pick in zip(parts, picks, strict=True)])
    target, fresh = sample_targets(store, rows, strings)
    sample = CalibrationSample(
        ids=np.stack([i[:, :depth] for i in ids]),
        lp=np.stack([lp[pick][:, :depth].astype(np.float32) for (_, lp), pick in zip(heads, picks, strict=True)]),
        target=target,
        target_lp=target_lp,
        vocab_size=max(fresh, vocab_size),
    )
    return sample, described


def sample_targets(store: Store, rows: np.ndarray, strings: Sequence[str]) -> tuple[np.ndarray, int]:
    """int64 ``(len(rows),)``: the actual token at store ``rows`` as an id into a deep sample's
    token strings (a target they lack gets an id of its own past them), and how many ids that
    numbering then has."""
    token = store.vocab.get_column("token").to_list()
    deep_id = {s: i for i, s in enumerate(strings)}
    target = np.empty(rows.size, dtype=np.int64)
    fresh = len(strings)
    for j, t in enumerate(store.positions.get_column("target").to_numpy()[rows]):
        target[j] = deep_id.get(token[t], -1)
        if target[j] < 0:  # in no deep list: any id of its own will do
            target[j] = fresh
            fresh += 1
    return target, fresh


def _position_key(request: np.ndarray, position: np.ndarray) -> np.ndarray:
    return (np.asarray(request, dtype=np.int64) << 32) | np.asarray(position, dtype=np.int64)


def line_up(store: Store, deep: Path, *, models: Sequence[str], paths: Sequence[Path], parts: Sequence[DeepLists]
            ) -> tuple[np.ndarray, list[np.ndarray], str]:
    """Match the rows of a deep sample's files to the store's positions.

    Rows are matched by ``request``/``position`` where every file has them (positions all files
    answer), else taken as the first n scored ``val`` positions; each file's target values must
    agree with the store's model (``LINE_UP_TOLERANCE``).

    Returns:
        ``(rows, picks, described)``: int64 store rows ``(n,)``, each file's row for each of them,
        and which positions they are, in words.

    Raises:
        CalibrationError: the sample does not line up with the store.
    """
    positions = store.positions
    explicit = [p.names_positions for p in parts]
    if all(explicit):
        store_key = _position_key(positions.get_column("request").to_numpy(), positions.get_column("position").to_numpy())
        keys = [_position_key(p.request, p.position) for p in parts]
        common = keys[0]
        for other in keys[1:]:
            common = np.intersect1d(common, other)
        common = np.unique(common)
        if common.size == 0:
            raise CalibrationError(f"{deep}: the files have no position in common")
        order = np.argsort(store_key, kind="stable")
        at = np.searchsorted(store_key, common, sorter=order)
        found = (at < store_key.size) & (store_key[order[np.minimum(at, store_key.size - 1)]] == common)
        if not found.all():
            raise CalibrationError(f"{deep}: {int((~found).sum())} sampled positions are not in the store {store.path}")
        rows = order[at]
        picks = []
        for key in keys:
            sorter = np.argsort(key, kind="stable")
            picks.append(sorter[np.searchsorted(key, common, sorter=sorter)])
        described = f"{common.size} positions named by request/position"
    elif not any(explicit):
        n = parts[0].n_positions
        for path, part in zip(paths, parts, strict=True):
            if part.n_positions != n:
                raise CalibrationError(f"{path}: {part.n_positions} rows, {paths[0].name} has {n}")
        split = positions.get_column("split").to_numpy()
        if IMPLICIT_SPLIT not in split:
            raise CalibrationError(f"{deep}: the sample covers the first {n} {IMPLICIT_SPLIT} positions, "
                                   f"and the store has no {IMPLICIT_SPLIT} split")
        rows = np.flatnonzero(split == IMPLICIT_SPLIT)[:n]
        if rows.size < n:
            raise CalibrationError(f"{deep}: the sample covers the first {n} {IMPLICIT_SPLIT} positions, "
                                   f"the store has {rows.size}")
        picks = [np.arange(n)] * len(parts)
        described = f"the first {n} scored positions of the {IMPLICIT_SPLIT} split"
    else:
        raise CalibrationError(f"{deep}: some files name their positions (request, position) and some do not")

    target_lp = np.stack([p.target_lp[pick].astype(np.float32) for p, pick in zip(parts, picks, strict=True)])
    for model, path, deep_lp in zip(models, paths, target_lp, strict=True):
        stored = store.target_lp(model)[rows]
        both = np.isfinite(stored) & np.isfinite(deep_lp)
        if both.any():
            gap = float(np.median(np.abs(stored[both] - deep_lp[both])))
            if gap > LINE_UP_TOLERANCE:
                raise CalibrationError(
                    f"{path}: its target log-probabilities differ from {model}'s in the store (median {gap:.3g} "
                    f"nats over {described}): a sample of another model or dataset?"
                )
    return rows, picks, described
