"""``RayBlend``: a blend whose kernels run on Ray workers, each over its part of the positions.

Every figure a blend reports is a sum over positions (NLL sums per cell, and the gradient and
Hessian for Newton), so each worker runs the same kernels over its part and the driver adds the
parts up, in worker order. A trial sends the weight vectors ``(B, N)`` to every worker and gets
back ``(n_groups, B)`` sums from each; the group arrays it reads (the tuning split, the report's
cells, the bootstrap's documents) go to the workers once, through the object store.

Positions are dealt to the workers in chunks, round robin (``assignment``), so every split is
spread over all of them: tuning reads one split, and contiguous ranges would leave most workers
idle. For an unsharded store, the driver builds the candidate matrix and sends each worker its
part; for a sharded one (a ``StreamingBlend``), the chunks are the store's shards, each worker
reads its own (``engine.distributed.worker.ShardPart``), and the driver holds no matrix.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import ray
from ray.exceptions import RayError, RayTaskError

from ingest.store import Store

from ..blend import Blend, continued
from ..candidates import CandidateMatrix
from ..positions import Grouping
from .errors import ClusterError
from .worker import GROUPS_KEPT

__all__ = ["CHUNK_POSITIONS", "RayBlend", "assignment", "shard_assignment", "worker_part"]

CHUNK_POSITIONS = 65_536
"""The most positions per chunk dealt to a worker (fewer on a small store: each worker gets at
least ``SPREAD`` chunks, so that each split is spread evenly)."""
SPREAD = 16


def assignment(n: int, workers: int) -> list[np.ndarray]:
    """The store rows of each worker: int64 ``(n_w,)`` ascending, chunks of consecutive positions
    dealt round robin; workers that would get none are left out (a store smaller than the
    cluster)."""
    size = max(1, min(CHUNK_POSITIONS, -(-n // (workers * SPREAD))))
    chunk = np.arange(n, dtype=np.int64) // size
    rows = [np.flatnonzero(chunk % workers == w) for w in range(workers)]
    return [r for r in rows if r.size]


def shard_assignment(store: Store, workers: int) -> list[tuple[int, ...]]:
    """The shards each worker reads: shards with positions dealt round robin, in order; workers
    that would get none are left out (fewer shards than workers)."""
    full = [i for i, shard in enumerate(store.shards) if shard.stop > shard.start]
    return [tuple(full[w::workers]) for w in range(min(workers, len(full)))]


def worker_part(matrix: CandidateMatrix, rows: np.ndarray) -> CandidateMatrix:
    """The candidate matrix of a worker's ``rows`` (``assignment``), ``continued`` unless it holds
    the matrix's last position: every position then takes the same kernel path as in the whole
    matrix, so its NLL is the same to the bit."""
    part = matrix.take(rows)
    return part if rows[-1] == matrix.outside.size - 1 else continued(part)


class RayBlend(Blend):
    """A blend evaluated on Ray workers (``engine.distributed.Cluster.distribute`` makes one).

    Its NLL sums, gradients and Hessians are those of the blend it was made from, added up over
    the workers' parts: each position's NLL is the same to the bit (``worker_part``), and the sums
    are the same within 1e-12 relative (the kernels add fixed blocks of positions in order; here
    each worker's blocks are other ones, and their sums are added afterwards: another rounding). ``nll`` and
    ``nll_frame`` (per position) still run in this process, as ``blend`` runs them (over the
    driver's matrix, or shard by shard).

    Attributes:
        rows: each worker's store rows (``assignment``); None where the workers read their own
            shards (``parts``: ``ShardPart``s).
        parts: what each worker was made from: an object-store reference to its matrix part, or
            the shards it reads (held: a restarted worker is made again from it).
        workers: the Ray actors (``engine.distributed.worker.BlendWorker``), one per part.
        restarts: how often Ray restarts a worker that died before a call fails.
    """

    def __init__(self, blend: Blend, rows: list[np.ndarray] | None, parts: list, workers: list, *,
                 restarts: int):
        super().__init__(blend.dataset, blend.models, blend.matrix)
        self._local = blend
        self.rows = rows
        self.workers = workers
        self.restarts = restarts
        self.parts = parts
        self._groups: OrderedDict[tuple, tuple[Grouping, list[ray.ObjectRef | None]]] = OrderedDict()

    @property
    def estimator(self) -> str:
        return self._local.estimator

    def _chunks(self, grouping: Grouping):
        return self._local._chunks(grouping)

    def take(self, rows: np.ndarray) -> CandidateMatrix:
        return self._local.take(rows)

    def _group_parts(self, grouping: Grouping) -> list[list[ray.ObjectRef] | Grouping | None]:
        """What each worker is told of ``grouping``'s cells: the grouping itself where workers read
        their own shards (each makes its cells from its shards' positions: the driver holds nothing
        per position), else a reference to its part of the driver's store-wide array
        (``Dataset.groups``) in the object store, put there once per grouping, or None where it
        counts none of the worker's positions (that worker is not asked)."""
        if self.rows is None:
            return [grouping] * len(self.workers)
        key = grouping.key
        if key in self._groups:
            self._groups.move_to_end(key)
            return self._groups[key][1]
        group = self.dataset.groups(grouping)
        parts = []
        for rows in self.rows:
            mine = np.ascontiguousarray(group[rows], dtype=np.int32)
            parts.append([ray.put(mine)] if (mine >= 0).any() else None)  # a list: see engine.distributed.worker
        self._groups[key] = (grouping, parts)  # the grouping is held, so the id in a rows_of key is not reused
        if len(self._groups) > GROUPS_KEPT:
            self._groups.popitem(last=False)
        return parts

    def _calls(self, method: str, weights: np.ndarray, grouping: Grouping, *rest) -> list:
        """``worker.method(weights, its part of the grouping's cells, *rest)`` of every worker that
        counts a position of ``grouping``, gathered in worker order."""
        calls = [getattr(w, method).remote(weights, part, *rest)
                 for w, part in zip(self.workers, self._group_parts(grouping), strict=True) if part is not None]
        try:
            return ray.get(calls)
        except RayTaskError as err:
            raise err.cause from None  # the kernels' own error (e.g. ValueError), as in one process
        except RayError as err:
            raise ClusterError(f"a Ray worker was lost and not brought back after {self.restarts} restarts "
                               f"({type(err).__name__}); the call was not completed") from None

    def _sums(self, weights: np.ndarray, grouping: Grouping) -> np.ndarray:
        out = np.zeros((grouping.size(self.dataset.layout), weights.shape[0]))
        for part in self._calls("sums", np.ascontiguousarray(weights, dtype=np.float64), grouping, out.shape[0]):
            out += part
        return out

    def _grad_hess(self, weights: np.ndarray, grouping: Grouping) -> tuple[float, np.ndarray, np.ndarray]:
        total, grad, hess = 0.0, 0.0, 0.0
        for t, g, h in self._calls("grad_hess", weights, grouping):
            total, grad, hess = total + t, grad + g, hess + h
        return total, grad, hess
