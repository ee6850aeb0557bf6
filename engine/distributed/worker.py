"""``BlendWorker``: one Ray actor's part of a blend's candidate matrix, and the kernels over it.

Each call returns sums over the worker's positions only; the driver adds them up
(``engine.distributed.blend.RayBlend``). A plain class: ``Cluster`` makes it a Ray actor, and a
test can run it in process.
"""

from __future__ import annotations

import os
from dataclasses import replace

import numba
import numpy as np

from ..candidates import CandidateMatrix
from ..kernels import blend_nll_grad_hess, blend_nll_sums

__all__ = ["BlendWorker"]


class BlendWorker:
    """The kernels over one part of a candidate matrix.

    Args:
        part: the matrix of the positions this worker holds (``CandidateMatrix.take`` of its rows,
            in store order); every ``group`` it is given is the matching part of a store-wide one.
    """

    def __init__(self, part: CandidateMatrix):
        # Arrays from the object store are read-only, and the kernels' signatures take writable
        # ones: the worker keeps its own copy.
        self.part = replace(part, offsets=part.offsets.copy(), values=part.values.copy(), outside=part.outside.copy())
        numba.set_num_threads(1)  # one Ray CPU per worker: its kernels run on one thread

    def pid(self) -> int:
        """This worker's process id."""
        return os.getpid()

    def sums(self, weights: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
        """float64 ``(n_groups, B)``: NLL sums per group over this part, for weights ``(B, 3)``
        (``engine.kernels.blend_nll_sums``); ``group``: int32 ``(n_part,)``."""
        m = self.part
        return blend_nll_sums(m.offsets, m.values, m.row_weights(weights), m.outside, m.outside_nll, group.copy(),
                              n_groups)

    def grad_hess(self, weights: np.ndarray, group: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """Total NLL over this part's positions with ``group >= 0``, its gradient ``(3,)`` and
        Hessian ``(3, 3)`` for weights ``(3,)`` (``engine.kernels.blend_nll_grad_hess``)."""
        m = self.part
        return blend_nll_grad_hess(m.offsets, m.values, m.row_weights(weights)[0], m.outside, m.outside_nll,
                                   group.copy(), n_deriv=m.n_models)
