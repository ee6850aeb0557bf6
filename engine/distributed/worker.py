"""``BlendWorker``: one Ray actor's part of a blend's candidate matrix, and the kernels over it.
The part is sent by the driver, or read by the worker itself: whole shards of a sharded store
(``ShardPart``), whose positions it then reads too, making each figure's cells itself.

Each call returns sums over the worker's positions only; the driver adds them up
(``engine.distributed.blend.RayBlend``). A plain class, which ``Cluster`` makes a Ray actor.

A call names its cells by an object reference to the worker's part of the driver's array, wrapped
in a list (Ray resolves a bare reference on every call, which costs about half a millisecond), or,
for a worker that reads its own shards, by the ``engine.positions.Grouping`` itself; the worker
fetches or makes each array once and keeps the last ``GROUPS_KEPT``. A restarted worker does so
again.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, replace

import numba
import numpy as np
import ray

from ingest import open_store

from ..candidates import CandidateMatrix
from ..kernels import READ_AHEAD, blend_nll_grad_hess, blend_nll_sums
from ..matrix_cache import MatrixSource, assemble
from ..positions import Grouping, Layout, PositionsPart, token_bytes

__all__ = ["BlendWorker", "GROUPS_KEPT", "ShardPart"]

GROUPS_KEPT = 8
"""Group arrays a worker (and the driver's object store) keeps: a tune reads three (tuning
split, report cells, document cells), an evaluation two."""


@dataclass(frozen=True)
class ShardPart:
    """The shards of a sharded store that one worker reads itself, from the store's folder (which
    every node must see: a shared filesystem), through the store's blend cache."""

    source: MatrixSource
    shards: tuple[int, ...]
    """Shard indices, ascending."""
    layout: Layout
    """The store's layout (``engine.positions``): how the worker numbers its positions' cells."""

    def load(self) -> CandidateMatrix:
        """The matrix of these shards' positions, in order (each under the source's mask, if it
        has one), followed by ``READ_AHEAD`` zero columns unless it ends with the store's last
        shard (as ``engine.blend.continued``): every position's NLL is then the in-memory blend's
        to the bit."""
        store = open_store(self.source.path)
        last = store.shards[self.shards[-1]].stop == store.n_positions
        return assemble(lambda: (self.source.shard(store, i) for i in self.shards), trailing=0 if last else READ_AHEAD)

    def cells(self, grouping: Grouping) -> np.ndarray:
        """int32 ``(n_part,)``: ``grouping``'s cells of these shards' positions, in order, from
        their positions tables (one shard's at a time)."""
        store = open_store(self.source.path)
        sizes = token_bytes(store)
        return np.concatenate([grouping.of(PositionsPart.of_shard(store, i, self.layout, sizes)) for i in self.shards])


class BlendWorker:
    """The kernels over one part of a candidate matrix.

    Args:
        part: the matrix of the positions this worker holds (``CandidateMatrix.take`` of its rows,
            in store order), or the shards it reads itself; every ``group`` it is given names the
            matching part of a store-wide array, or (``ShardPart``) the grouping it makes its own from.
    """

    def __init__(self, part: CandidateMatrix | ShardPart):
        self.shards = part if isinstance(part, ShardPart) else None
        if isinstance(part, ShardPart):
            self.part = part.load()
        else:
            # Arrays from the object store (and arguments) are read-only, and the kernels'
            # signatures take writable ones: the worker keeps its own copy.
            self.part = replace(part, offsets=part.offsets.copy(), values=part.values.copy(),
                                outside=part.outside.copy())
        self._groups: OrderedDict[bytes | tuple, np.ndarray] = OrderedDict()
        numba.set_num_threads(1)  # one Ray CPU per worker: its kernels run on one thread

    def _group(self, group: list[ray.ObjectRef] | Grouping) -> np.ndarray:
        """The int32 ``(n_part,)`` array ``group``'s one reference names, fetched once (a writable
        copy), or the one this worker makes of its shards for a grouping."""
        key = group.key if isinstance(group, Grouping) else group[0].binary()
        if key not in self._groups:
            self._groups[key] = self.shards.cells(group) if isinstance(group, Grouping) else np.array(ray.get(group[0]))
            if len(self._groups) > GROUPS_KEPT:
                self._groups.popitem(last=False)
        self._groups.move_to_end(key)
        return self._groups[key]

    def pid(self) -> int:
        """This worker's process id."""
        return os.getpid()

    def sums(self, weights: np.ndarray, group: list[ray.ObjectRef] | Grouping, n_groups: int) -> np.ndarray:
        """float64 ``(n_groups, B)``: NLL sums per group over this part, for weights ``(B, N)``
        (``engine.kernels.blend_nll_sums``); ``group``: ``[reference]`` to int32 ``(n_part,)``, or
        a grouping (``ShardPart``)."""
        m = self.part
        return blend_nll_sums(m.offsets, m.values, m.row_weights(np.array(weights)), m.outside, m.outside_nll,
                              self._group(group), n_groups)

    def grad_hess(self, weights: np.ndarray, group: list[ray.ObjectRef] | Grouping) -> tuple[float, np.ndarray, np.ndarray]:
        """Total NLL over this part's positions with ``group >= 0``, its gradient ``(N,)`` and
        Hessian ``(N, N)`` for weights ``(N,)`` (``engine.kernels.blend_nll_grad_hess``)."""
        m = self.part
        return blend_nll_grad_hess(m.offsets, m.values, m.row_weights(np.array(weights))[0], m.outside, m.outside_nll,
                                   self._group(group), n_deriv=m.n_models)
