"""Evaluating a store larger than memory: a blend whose kernels run shard by shard.

``StreamingBlend`` holds no candidate matrix. Each figure runs the kernels over one shard's
matrix at a time (read back from the store's cache, or built and cached:
``engine.matrix_cache.shard_matrix``) and adds up their sums. Its memory is one shard's matrix
(two for a moment: each shard's but the last is copied ``engine.blend.continued``, so that its
last positions take the kernel path they take in the whole matrix and every position's NLL is
the in-memory blend's bit for bit) plus the per-position metadata every evaluation keeps (split,
context, documents, the positions table: about 140 bytes per position, 1.35 GB at 10M positions;
``bench.scale``). Sums are added shard by shard, so they equal the in-memory figures within
1e-12 relative (the order of the additions differs). Shards with no position a figure counts
are not read. Under a plausibility mask (``engine.masked_blend``) the source masks each shard's
matrix as it is read, before it is continued (masking drops columns past a matrix's last run,
so the other order would lose the padding).

``approxft eval --stream`` and ``approxft tune --stream`` (``open_dataset(path,
streaming=True)``) use it. Every figure reads the shards again: Newton's few passes stream well,
TPE's hundreds of trials do not.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .blend import Blend, Positions, continued
from .candidates import CandidateMatrix
from .matrix_cache import MatrixSource

__all__ = ["StreamingBlend"]


class StreamingBlend(Blend):
    """A ``Blend`` over a store's shards, one shard's matrix in memory at a time.

    Attributes:
        source: how each shard's matrix is made (``engine.matrix_cache.MatrixSource``), masked
            where the source has a mask.
    """

    def __init__(self, dataset: Positions, models: tuple[str, ...], source: MatrixSource):
        super().__init__(dataset, models, matrix=None)
        self.source = source

    @property
    def estimator(self) -> str:
        return self.source.estimator

    def _chunks(self, group: np.ndarray) -> Iterator[tuple[slice, CandidateMatrix]]:
        """Each shard's matrix with the store rows it covers, skipping shards ``group`` leaves out."""
        store = self.dataset.store
        for i, shard in enumerate(store.shards):
            rows = slice(shard.start, shard.stop)
            if shard.stop > shard.start and (group[rows] >= 0).any():
                matrix = self.source.shard(store, i)
                yield rows, matrix if shard.stop == store.n_positions else continued(matrix)
