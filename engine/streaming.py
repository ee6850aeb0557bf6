"""Evaluating a store larger than memory: a blend whose kernels run shard by shard.

``StreamingBlend`` holds no candidate matrix. Each figure runs the kernels over one shard's
matrix at a time (read back from the store's cache, or built and cached:
``engine.matrix_cache.shard_matrix``) and adds up their sums. Its memory is one shard's matrix
(two for a moment: each shard's but the last is copied ``engine.blend.continued``, so that its
last positions take the kernel path they take in the whole matrix and every position's NLL is
the in-memory blend's bit for bit) plus one shard's positions' arrays (split, context, document,
cells: ``engine.positions``, read from the shard as each figure reaches it) and the store-wide
layout (per split, bucket and document, nothing per position); so it does not grow with the store
(``bench.scale``). Sums are added shard by shard, so they equal the in-memory figures within
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
from .positions import Grouping, rows_of

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

    def take(self, rows: np.ndarray) -> CandidateMatrix:
        """The candidate matrix of store rows ``rows`` (int64, ascending) alone, taken from each
        shard's matrix that holds some of them."""
        rows = np.asarray(rows, dtype=np.int64)
        taken = [m.take(rows[(rows >= index.start) & (rows < index.stop)] - index.start)
                 for index, m, _ in self._chunks(rows_of(rows))]
        return CandidateMatrix.concatenate(taken, n_positions=rows.size, n_rows=taken[0].values.shape[0],
                                           n_columns=sum(m.values.shape[1] for m in taken))

    def _chunks(self, grouping: Grouping) -> Iterator[tuple[slice, CandidateMatrix, np.ndarray]]:
        """Each shard's matrix with the store rows it covers and their cells under ``grouping``
        (from the shard's positions alone), skipping shards ``grouping`` leaves out."""
        store = self.dataset.store
        for i, shard in enumerate(store.shards):
            if shard.stop == shard.start:
                continue
            part = self.dataset.part(i)
            group = part.grouped(grouping)
            if (group >= 0).any():
                matrix = self.source.shard(store, i)
                yield part.rows, matrix if shard.stop == store.n_positions else continued(matrix), group
