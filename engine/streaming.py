"""Evaluating a store larger than memory: a blend whose kernels run shard by shard.

``StreamingBlend`` holds no candidate matrix. Each figure runs the kernels over one shard's
matrix at a time (read back from the store's cache, or built and cached:
``engine.matrix_cache.shard_matrix``) and adds up their sums, so its memory is one shard's matrix
and the per-position metadata every evaluation keeps (split, context, document: about 50 bytes
per position), whatever the store's size. Per-position NLL is the in-memory blend's bit for bit;
each shard's but the last is ``engine.blend.continued`` for that (a copy: two of its matrices
in memory for a moment). Sums are added shard by shard, so they equal the in-memory figures
within 1e-12 relative (the order of the additions differs). Shards with no position a figure counts are not read.

``approxft eval --stream`` and ``approxft tune --stream`` (``open_dataset(path,
streaming=True)``) use it; every figure reads the shards again, so tuning streams many passes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from ingest.store import Store

from .blend import Blend, Positions, continued
from .candidates import CandidateMatrix
from .matrix_cache import shard_matrix

__all__ = ["StreamingBlend"]


class StreamingBlend(Blend):
    """A ``Blend`` over a store's shards, one shard's matrix in memory at a time.

    Args:
        build: fills the matrix of a store's shard (``Store.shard``) for the blend's estimator.
        key: that matrix's cache key (``engine.matrix_cache.cache_key``).
        estimator: the estimator's name.
    """

    def __init__(self, dataset: Positions, models: tuple[str, ...], *, build: Callable[[Store], CandidateMatrix],
                 key: Callable[[Store], str], estimator: str):
        super().__init__(dataset, models, matrix=None)
        self._build, self._key, self._estimator = build, key, estimator

    @property
    def estimator(self) -> str:
        return self._estimator

    def _chunks(self, group: np.ndarray) -> Iterator[tuple[slice, CandidateMatrix]]:
        """Each shard's matrix with the store rows it covers, skipping shards ``group`` leaves out."""
        store = self.dataset.store
        for i, shard in enumerate(store.shards):
            rows = slice(shard.start, shard.stop)
            if shard.stop > shard.start and (group[rows] >= 0).any():
                matrix = shard_matrix(store, i, self._build, self._key)
                yield rows, matrix if shard.stop == store.n_positions else continued(matrix)
